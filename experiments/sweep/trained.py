"""A model of a finished sweep, read back from its workdir: :func:`load`.

    model = trained.load("runs/sinusoid", cell="outliers_0.3", method="tor_multitask", seed=0)
    y = model.predict(x)          # the inference head, in label units
    x_test, labels = model.test_split()

The sweep keeps every teacher's and student's checkpoints (``checkpoints/<cell>/``, the
whole population of seeds in one); this module finds the one of a (cell, method) from the
workdir's config and teacher store, restores it (verified, like a resume), checks that its
fit had finished, and takes the seed's member out. ``method="teacher"`` is the cell's
teacher (the mean of its fold teachers where there are folds).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from experiments import tasks
from experiments.report import report
from experiments.sweep import cell as cells
from experiments.sweep import resume, sweep
from experiments.sweep.validation import TEACHER, cell_name, seeds, train_config, validate
from kd_regression import (
    distill,
    export,
    loop,
    models,
    sharding,
    store_format,
    teacher_store,
    train,
)
from kd_regression.methods import get_method
from kd_regression.trainer import Trainer

__all__ = ["LoadError", "Trained", "load"]


class LoadError(ValueError):
    """A (workdir, cell, method, seed) that has no finished model; the message lists what
    the workdir has."""


@dataclasses.dataclass
class Trained:
    """One member (seed) of a trained population, in inference mode."""

    workdir: str
    cell: str  # as given (a level 0 of any noise model is the same run)
    fold: int | None
    method: str  # "teacher" for the cell's teacher
    seed: int
    config: ml_collections.ConfigDict
    task: tasks.Task
    model_fn: Callable  # the task's model builder, as the sweep trained it
    states: list  # one member's inference state (a teacher with folds: one per fold)
    heads: tuple[str, ...]
    inference_head: str
    checkpoint_dir: str
    step: int
    parameters: int  # of one member (fold teachers: all of them)
    rows: dict[str, dict]  # head -> its results.jsonl row
    fingerprint: dict  # what it was trained from: the teacher store's fingerprint, its checkpoint

    @property
    def has_depthwise(self) -> bool:
        """Whether the model has depthwise convolutions (the MobileNet-like student), so
        that ``depthwise`` applies."""
        make = self.model_fn
        return getattr(make, "func", None) is models.image_regressor and make.args[0] == "mobilenet"

    @functools.cached_property
    def fn(self) -> Callable[[jax.Array], dict[str, jax.Array]]:
        """``x -> every head`` in target units, as trained."""
        return self.function()

    @functools.cached_property
    def _jitted(self) -> Callable:
        return jax.jit(self.fn)

    def function(self, depthwise: str | None = None) -> Callable:
        """``x -> every head``; ``depthwise`` (image models): run depthwise convolutions as
        ``"conv"`` (one grouped convolution) or ``"taps"`` (shifted multiply-adds, the
        default on XLA's CPU) instead of as trained; the same parameters and function."""
        make = self.model_fn
        if depthwise is not None and self.has_depthwise:
            make = functools.partial(make, depthwise=depthwise)
        graphdef = nnx.graphdef(nnx.eval_shape(lambda: make(rngs=nnx.Rngs(0))))
        fns = [export.inference_fn(graphdef, s) for s in self.states]
        if len(fns) == 1:
            return fns[0]
        # Fold teachers: the teacher's prediction is their mean (as teachers.Teacher's).
        head = models.MAIN_HEAD
        return lambda x: {head: jnp.mean(jnp.stack([f(x)[head] for f in fns]), axis=0)}

    def outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every head's output on ``x`` ``[n, ...]``, in target units (jitted, in batches)."""
        return export.run_batched(self._jitted, np.asarray(x, np.float32))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The inference head's prediction on ``x``, in label units (e.g. degrees)."""
        return self.task.from_target(self.outputs(x)[self.inference_head])

    def test_split(self) -> tuple[np.ndarray, np.ndarray]:
        """The test inputs (as the model takes them) and the labels it was scored on, in
        the task's label space, as :meth:`metrics` takes them (a user's file: standardised,
        while :meth:`predict` gives the file's units)."""
        x, labels = self.task.splits(self.config.dataset, self.seed, self.fold)["test"]
        return np.asarray(x, np.float32), np.asarray(labels)

    def metrics(self, outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """The task's test metrics of one head's ``outputs`` (target units), as in
        results.jsonl."""
        values = self.task.metrics(np.asarray(outputs)[None], np.asarray(labels)[None])
        return {k: float(v[0]) for k, v in values.items()}


def load(workdir: str, *, cell: str, method: str, seed: int) -> Trained:
    """The model ``method`` (or ``"teacher"``) of ``cell`` and ``seed`` in a workdir of
    :func:`experiments.sweep.sweep.run`, from its checkpoint. A cell not finished (not in
    results.jsonl), an unknown method or seed, or a missing or unfinished checkpoint is a
    :class:`LoadError` naming what exists."""
    workdir = os.path.abspath(workdir)
    if not os.path.isdir(workdir):
        what = "no such directory" if not os.path.exists(workdir) else "not a directory"
        raise LoadError(f"{workdir}: {what}; --workdir is the directory of a finished sweep")
    config = _config(workdir)
    rows = _rows(workdir, cell, method, seed)
    task = tasks.get_task(config.dataset.name, config)
    loss_cfg = validate(config)
    _check_inputs(workdir, task, config)
    # The cell by its name, as the sweep names it (a level printed with :g is not parsed back).
    named = next(c for c in sweep.cells(config, task.folds(config.dataset)) if c.name == cell)
    ran = sweep.ran_as(config, named)  # level 0 runs once per fold
    checkpoints = os.path.join(workdir, cells.CHECKPOINTS, ran.name)
    store = _store(os.path.join(workdir, cells.STORES, ran.name))
    if method == TEACHER and config.teacher.get("predictions"):
        raise LoadError(
            f"the teacher of {workdir} was given as predictions "
            f"({config.teacher.predictions}): there is no teacher model to load"
        )
    role, method_name, two_heads, dirs, constants = _checkpoints_of(
        checkpoints, config, task, ran, method, store, loss_cfg
    )
    trainer = Trainer(
        task.model_fn(config[role], two_heads),
        method_name,
        train_config(config, role),
        loss_cfg,
        mesh=sharding.make_mesh(1),
        population=task.population,
    )
    member = seeds(config).index(seed)
    states, step = [], 0
    for d in dirs:
        state, step = _restore(d, trainer, config, role, constants, checkpoints)
        states.append(jax.tree.map(lambda a: a[member], state))
    heads = (models.LABEL_HEAD, models.TEACHER_HEAD) if two_heads else (models.MAIN_HEAD,)
    head = config.inference_head if two_heads else models.MAIN_HEAD
    size = sum(int(np.size(p)) for p in jax.tree.leaves([s.params for s in states]))
    fingerprint = {
        "teacher_store": store.manifest["fingerprint"],
        "checkpoint_dirs": [os.path.relpath(d, workdir) for d in dirs],
    }
    return Trained(
        workdir,
        cell,
        named.fold,
        method,
        seed,
        config,
        task,
        trainer.model_fn,
        states,
        heads,
        head,
        dirs[0],
        step,
        size,
        rows,
        fingerprint,
    )


def _checkpoints_of(checkpoints: str, config, task, ran, method: str, store, loss_cfg):
    """(role, method name, two heads?, checkpoint dirs, constants of its train state) of
    ``method`` (or the teacher) in the cell ``ran``, keyed as the sweep keyed them."""
    if method == TEACHER:
        role, method_name, two_heads = TEACHER, config.teacher.method, False
        base = cells.teacher_checkpoint_dir(checkpoints, cells.teacher_spec(config, task, ran))
        folds = config.teacher.folds
        dirs = [f"{base}-fold{j}" for j in range(folds)] if folds else [base]
        constants = None  # a teacher trains without them
    else:
        role, method_name = "student", method
        two_heads = get_method(method).two_heads
        constants = distill.store_constants(store, loss_cfg)  # in its train state
        spec = cells.student_spec(config, store.manifest["fingerprint"], constants)
        n = len(seeds(config))
        for k, v in cells.method_constants(ran, method).items():  # the oracle's noise rate
            constants[k] = np.full(n, v, np.float32)
        dirs = [cells.student_checkpoint_dir(checkpoints, method, spec)]
    return role, method_name, two_heads, dirs, constants


def _config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, resume.CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except FileNotFoundError:
        raise LoadError(
            f"{workdir} is not a workdir of a sweep (no {resume.CONFIG_FILE})"
        ) from None
    except ValueError as e:
        raise LoadError(f"{path} is damaged: {e}") from e
    return ml_collections.ConfigDict(resume.with_new_keys(values))


def _check_inputs(workdir: str, task, config) -> None:
    """The data files must be as they were: the export is checked, and scored, on the test
    split the model was scored on."""
    try:
        resume.check_same_inputs(workdir, resume.inputs_of(task, config))
    except ValueError as e:
        raise LoadError(
            f"the data of {workdir} have changed since its sweep ran ({e}); put the files "
            "back as they were to load its models"
        ) from e


def _rows(workdir: str, cell: str, method: str, seed: int) -> dict[str, dict]:
    """The results.jsonl rows of (cell, method, seed) by head; a LoadError lists what is
    there when there are none."""
    path = os.path.join(workdir, resume.RESULTS)
    every = report.load_rows(path) if os.path.exists(path) else []
    name = lambda r: cell_name(r["noise"], float(r["level"]), r.get("fold"))  # noqa: E731
    finished = sorted({name(r) for r in every})
    if cell not in finished:
        raise LoadError(
            f"{workdir} has no finished cell {cell!r} (in {resume.RESULTS}): "
            f"{', '.join(finished) or 'none yet'}"
        )
    in_cell = [r for r in every if name(r) == cell]
    methods = sorted({r["method"] for r in in_cell})
    if method not in methods:
        raise LoadError(f"cell {cell} of {workdir} has no method {method!r}: {', '.join(methods)}")
    found = sorted({r["seed"] for r in in_cell if r["method"] == method})
    if seed not in found:
        raise LoadError(
            f"cell {cell} of {workdir} has no seed {seed} of {method}: {', '.join(map(str, found))}"
        )
    return {r["head"]: r for r in in_cell if r["method"] == method and r["seed"] == seed}


def _store(directory: str) -> teacher_store.TeacherStore:
    """The cell's committed teacher store, opened as made (its checksums verified)."""
    manifest = os.path.join(directory, store_format.MANIFEST)
    if not os.path.exists(manifest):
        raise LoadError(f"no complete teacher store in {directory} (no {store_format.MANIFEST})")
    return teacher_store.open_store(directory, store_format.read_json(manifest)["fingerprint"])


def _restore(directory, trainer, config, role, constants, checkpoints):
    """(the population's state, its step) of a finished fit's checkpoint."""
    if not os.path.isdir(directory):
        have = sorted(os.listdir(checkpoints)) if os.path.isdir(checkpoints) else []
        raise LoadError(
            f"no checkpoint {os.path.basename(directory)} in {checkpoints} (made by another "
            f"config or deleted?): {', '.join(have) or 'none'}"
        )
    keys = jnp.stack([jax.random.fold_in(jax.random.key(s), 0) for s in seeds(config)])
    _, template = train.init_population(trainer.model_fn, trainer.tx, keys, constants)
    restored = loop.load_trained(directory, template, name=os.path.basename(directory))
    if restored is None:
        raise LoadError(f"no usable checkpoint in {directory} (damaged: see the warnings)")
    step, state, stopped = restored
    total = train_config(config, role).num_steps  # sized from the data where passes is set
    if step != total and not stopped:
        raise LoadError(
            f"{directory}: the latest usable checkpoint is of step {step} of {total}: the "
            "final one is missing or damaged (see any warning above)"
        )
    return state, step
