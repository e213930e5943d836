"""The noise sweep: for every noise model, level and seed, a teacher and one student per method.

One *cell* is a (noise model, level) pair. Within a cell every seed is a member of one
population: data, noise, teacher and students of all seeds train in one vmapped, jitted
program, and each method's train step is compiled once for the whole sweep (the per-cell
loss constants δ and η live in the train state, so they do not trigger recompilation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import importlib
import json
import math
import os
import time
import zlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh

from experiments import report, tasks
from kd_regression import (
    input_pipeline,
    interrupts,
    losses,
    models,
    noise,
    sharding,
    teacher_store,
    train,
)
from kd_regression.datasets import sinusoid
from kd_regression.fileio import (
    DirectoryLock,
    DirectoryLockedError,
    atomic_write,
    atomic_write_text,
)
from kd_regression.methods import LossConfig, get_method

TEACHER = report.TEACHER
# Where data are read from, not what they are: left out of the teacher's fingerprint.
DATA_PATHS = ("data_dir", "manual_dir")
FIT_GRID = 400  # points of the x grid drawn in fits.png
RESULTS = "results.jsonl"
CONFIG_FILE = "config.json"
FITS_FILE = "fits.npz"  # the arrays of fits.png, so a resumed sweep can draw it again
FAILURE_FILE = "failure.json"  # why the last run stopped (non-finite training), if it did
MAX_SEED = 2**32 - 1
# Train states a seed holds at once, at least: the state and the best state, and the host
# copies of both an asynchronous checkpoint save makes.
STATE_COPIES = 4
# Keys the code reads with a default: a config may leave them out.
OPTIONAL_KEYS = ("teacher.eval_every", "teacher.patience", "student.eval_every", "student.patience")
# How a sweep runs, not what it computes: a resumed sweep may change these.
RUN_KEYS = ("num_devices", "steps_per_call", "dataset.data_dir", "dataset.manual_dir")


def _check_keys(config: ml_collections.ConfigDict) -> None:
    """Every key is one the shipped config of the same dataset has (a misspelt key would
    otherwise be ignored silently), and none of those is missing."""
    module = f"experiments.configs.{config.dataset.name}"
    known = set(_flatten(importlib.import_module(module).get_config().to_dict()))
    known |= set(OPTIONAL_KEYS)
    given = set(_flatten(config.to_dict()))
    checked = lambda k: not k.startswith("noise.")  # noqa: E731  (noise models: see below)
    for key in sorted(k for k in given - known if checked(k)):
        section, _, leaf = key.rpartition(".")
        prefix = f"{section}." if section else ""
        names = sorted({k[len(prefix) :].split(".")[0] for k in known if k.startswith(prefix)})
        close = difflib.get_close_matches(leaf, names, n=1)
        raise ValueError(
            f"unknown config key {key}"
            + (f" (did you mean {prefix}{close[0]}?)" if close else "")
            + f"; the keys {'of ' + section if section else 'at the top level'} are: "
            + ", ".join(names)
        )
    for key in sorted(k for k in known - given if checked(k) and k not in OPTIONAL_KEYS):
        raise ValueError(f"config key {key} is missing (see {module.replace('.', '/')}.py)")


def validate(config: ml_collections.ConfigDict) -> LossConfig:
    """Checks the config before any work; returns the parsed loss config."""
    task = tasks.get_task(config.dataset.name)
    _check_keys(config)
    task.validate(config.dataset)
    if config.num_seeds < 1:
        raise ValueError(f"num_seeds must be >= 1, got {config.num_seeds}")
    last = config.seed + config.num_seeds - 1
    if not 0 <= config.seed <= last <= MAX_SEED:
        # JAX's keys take the seed modulo 2**32: seed 2**32 would silently be seed 0 again.
        raise ValueError(
            f"seed={config.seed}, num_seeds={config.num_seeds}: the seeds seed .. seed + "
            f"num_seeds - 1 must lie in [0, {MAX_SEED}]"
        )
    for name in config.methods:
        get_method(name)
    teacher_method = get_method(config.teacher.method)
    if teacher_method.needs_teacher or teacher_method.two_heads:
        raise ValueError(
            f"teacher.method={config.teacher.method!r} must be a no-teacher, one-head method "
            "(scratch_l2, scratch_l1, scratch_huber)"
        )
    if not list(config.noise):
        raise ValueError(f"noise: no noise model; give levels for any of {noise.NOISE_KINDS}")
    if len(set(config.methods)) != len(config.methods):
        raise ValueError(f"methods={list(config.methods)}: a method is listed twice")
    for kind in config.noise:
        names = [_cell_name(kind, float(level)) for level in config.noise[kind]]
        if len(set(names)) != len(names):  # the same cell (and directory) twice
            raise ValueError(
                f"noise.{kind}={list(config.noise[kind])}: a level is listed twice (levels "
                "are told apart by their value to 6 significant digits)"
            )
        if kind not in noise.NOISE_KINDS:
            raise ValueError(f"noise.{kind}: not a noise model; allowed {noise.NOISE_KINDS}")
        if not list(config.noise[kind]):
            raise ValueError(f"noise.{kind}: empty list of levels")
        for i, level in enumerate(config.noise[kind]):
            ok, allowed = {
                "outliers": (0.0 <= float(level) <= 1.0, "a rate in [0, 1]"),
                "gaussian": (math.isfinite(float(level)) and level >= 0, "a finite sigma >= 0"),
            }.get(kind, (True, ""))
            if not ok:
                raise ValueError(f"noise.{kind}[{i}]={level}: must be {allowed}")
    devices = jax.device_count()
    if not 0 <= config.num_devices <= devices:
        raise ValueError(
            f"num_devices={config.num_devices}: 0 (every device) or 1..{devices} (devices seen)"
        )
    split_over = config.num_devices or devices
    n_train = task.train_size(config.dataset)
    for part in ("teacher", "student"):
        c = config[part]
        for key, ok, allowed in (
            ("learning_rate", math.isfinite(c.learning_rate) and c.learning_rate > 0, "> 0"),
            ("num_steps", c.num_steps >= 1, ">= 1"),
            ("checkpoint_every", c.checkpoint_every >= 1, ">= 1"),
            ("eval_every", c.get("eval_every", 1) >= 1, ">= 1"),
            ("patience", c.get("patience") is None or c.patience >= 1, "None (off) or >= 1"),
        ):
            if not ok:
                raise ValueError(f"{part}.{key}={c.get(key)}: must be {allowed}")
        if not 1 <= c.batch_size <= n_train:
            raise ValueError(
                f"{part}.batch_size={c.batch_size} must be in [1, {n_train}] (training examples)"
            )
        # Every step's batch is split evenly over the devices (and over the processes).
        for n, what in ((split_over, "devices"), (jax.process_count(), "processes")):
            if c.batch_size % n:
                raise ValueError(
                    f"{part}.batch_size={c.batch_size} does not split over {n} {what}: use a "
                    f"multiple of {n}, or set num_devices"
                )
    if config.store.chunk_rows < 1 or config.store.parity_sample < 0:
        raise ValueError(
            f"store.chunk_rows={config.store.chunk_rows} (must be >= 1), store.parity_sample="
            f"{config.store.parity_sample} (must be >= 0)"
        )
    if config.teacher.folds < 0 or config.teacher.folds == 1:
        raise ValueError(f"teacher.folds={config.teacher.folds}: 0 (off) or k >= 2")
    if config.store.on_mismatch not in ("recompute", "fail"):
        raise ValueError(f"store.on_mismatch={config.store.on_mismatch!r}: 'recompute' or 'fail'")
    if config.inference_head not in (models.LABEL_HEAD, models.TEACHER_HEAD):
        raise ValueError(f"inference_head={config.inference_head!r}: 'label' or 'teacher'")
    if config.steps_per_call < 1:
        raise ValueError(f"steps_per_call={config.steps_per_call}: must be >= 1")
    loss_cfg = LossConfig.from_dict(config.loss.to_dict())
    _check_memory(config, task, _check_models(config, task))
    return loss_cfg


def _check_models(config: ml_collections.ConfigDict, task) -> dict[str, int]:
    """Builds the teacher and student abstractly (shapes only, no arrays), so a size that
    cannot be built is refused before any training. Returns the bytes of one member's
    train state, per role."""
    state_bytes = {}
    two_heads = sorted({get_method(m).two_heads for m in config.methods})
    for role, heads in ((TEACHER, [False]), ("student", two_heads)):
        part = config[role]
        keys = ", ".join(f"{role}.{k}={_short_value(part[k])}" for k in task.model_keys)
        for two in heads:
            model_fn = task.model_fn(part, two)
            try:
                state = jax.eval_shape(
                    lambda f=model_fn: train.init_state(f, optax.adam(1.0), jax.random.key(0))[1]
                )
            except Exception as e:
                raise ValueError(
                    f"{keys}: the {role} model cannot be built ({type(e).__name__}: {e})"
                ) from e
            nbytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state))
            state_bytes[role] = max(state_bytes.get(role, 0), nbytes)
    return state_bytes


def _short_value(value) -> str:
    return repr(value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value)


def _check_memory(config: ml_collections.ConfigDict, task, state_bytes: dict[str, int]) -> None:
    """Refuses a population that cannot fit in this machine's memory, before any work.

    The estimate is a lower bound: one seed's data splits twice (each seed's, then the
    stacked population's copy), and ``STATE_COPIES`` copies of each train state; it leaves
    out activations, the teacher store and the libraries themselves.
    """
    splits = task.splits(config.dataset, config.seed, task.folds(config.dataset)[0])
    data = sum(x.nbytes + y.nbytes for x, y in splits.values())
    teachers = max(1, config.teacher.folds)
    states = STATE_COPIES * (teachers * state_bytes[TEACHER] + state_bytes["student"])
    per_seed = 2 * data + states
    need = per_seed * config.num_seeds
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise ValueError(
            f"num_seeds={config.num_seeds}: the population needs at least {_gib(need)} of "
            f"memory ({per_seed / 2**20:.3g} MiB per seed: {data / 2**20:.3g} MiB of data, "
            f"held twice, and {states / 2**20:.3g} MiB of train states), more than this "
            f"machine's {_gib(have)}; at most about {have // per_seed} seeds fit"
        )
    logging.info(
        "population of %d seeds: at least %s of memory (estimate; machine: %s)",
        config.num_seeds,
        _gib(need),
        _gib(have),
    )


def _gib(n: float) -> str:
    gib = n / 2**30
    return f"{gib:.3g} GiB" if gib < 1000 else f"{gib:,.0f} GiB"


def _cell_data(
    config: ml_collections.ConfigDict, kind: str, level: float, fold=None
) -> dict[str, np.ndarray]:
    """Population-stacked splits ``[S, n, ...]``: inputs, noisy train/val targets, the
    corruption mask, and the clean test labels (label space, for the metrics)."""
    task = tasks.get_task(config.dataset.name)
    out: dict[str, list] = {}
    for seed in _seeds(config):
        splits = task.splits(config.dataset, seed, fold)
        label_range = task.label_range(config.dataset, splits)
        # The noise key depends on the seed, model, level (and fold) only; the data do not
        # change with the level, so a column of the summary is the same examples, noisier.
        stream = f"{kind}:{level}" if fold is None else f"{kind}:{level}:fold{fold}"
        key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(stream.encode()))
        k_train, k_val = jax.random.split(key)
        noisy = {}
        for name, k in (("train", k_train), ("validation", k_val)):
            noisy[name] = noise.add_label_noise(
                k, splits[name][1], kind=kind, level=level, label_range=label_range
            )
        row = {
            "x_train": splits["train"][0],
            "y_train": task.to_target(np.asarray(noisy["train"].labels)),
            "corrupted": np.asarray(noisy["train"].corrupted),
            "x_val": splits["validation"][0],
            "y_val": task.to_target(np.asarray(noisy["validation"].labels)),
            "x_test": splits["test"][0],
            "labels_test": splits["test"][1],
        }
        for k, v in row.items():
            out.setdefault(k, []).append(v)
    return {k: np.stack(v) for k, v in out.items()}


def _digest(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _params_digest(params) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(params)):
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()[:16]


def _looped(fn: Callable, in_shardings=None, out_sharding=None) -> Callable:
    """``fn`` over a population one member at a time, stacked like its vmapped version.

    ``in_shardings`` / ``out_sharding``: where a member's arguments and the stacked results
    are placed (a data-parallel ``fn`` takes a replicated state and a split batch).
    """
    take = jax.jit(lambda tree, i: jax.tree.map(lambda a: a[i], tree), out_shardings=in_shardings)
    stack = jax.jit(
        lambda *trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees), out_shardings=out_sharding
    )

    def run(*args):
        members = jax.tree.leaves(args[0])[0].shape[0]
        return stack(*(fn(*take(args, i)) for i in range(members)))

    return run


class _Programs:
    """Jitted, vmapped train and predict functions, built once per (role, method).

    The train step is data-parallel over ``mesh`` (state replicated, each batch split
    along its example axis); prediction and evaluation run on one local device, on
    :func:`sharding.local_copy` of the state.
    """

    def __init__(self, config, loss_cfg: LossConfig, mesh: Mesh):
        self.config, self.loss_cfg, self.mesh = config, loss_cfg, mesh
        self._cache: dict = {}

    def get(self, role: str, method_name: str):
        key = (role, method_name)
        if key not in self._cache:
            part = self.config.teacher if role == TEACHER else self.config.student
            method = get_method(method_name)
            task = tasks.get_task(self.config.dataset.name)
            model_fn = task.model_fn(part, method.two_heads)
            tx = optax.adam(part.learning_rate)
            graphdef = train.init_state(model_fn, tx, jax.random.key(0))[0]
            fns = (
                train.make_train_step(graphdef, tx, method, self.loss_cfg),
                train.make_predict_fn(graphdef),
                train.make_eval_step(graphdef, method, self.loss_cfg),
            )
            mesh = self.mesh
            multi = train.make_multi_step(fns[0])
            if task.population == "vmap":  # batches [P, B, ...], blocks [P, K, B, ...]
                step = sharding.data_parallel(jax.vmap(fns[0]), mesh, axis=1)
                multi = sharding.data_parallel(jax.vmap(multi), mesh, axis=2)
                predict, evaluate = (jax.jit(jax.vmap(f)) for f in fns[1:])
            else:
                rep = sharding.replicated(mesh)
                step, multi = (
                    _looped(
                        sharding.data_parallel(f, mesh, axis=axis),
                        in_shardings=(rep, sharding.batch_sharding(mesh, axis)),
                        out_sharding=rep,
                    )
                    for f, axis in ((fns[0], 0), (multi, 1))
                )
                predict, evaluate = (_looped(jax.jit(f)) for f in fns[1:])
            self._cache[key] = (model_fn, tx, step, multi, predict, evaluate)
        return self._cache[key]


def _seeds(config: ml_collections.ConfigDict) -> list[int]:
    return [config.seed + s for s in range(config.num_seeds)]


def _fit(programs, role, method_name, data, constants, stream, writer, name, checkpoint_dir):
    """Trains one population; member ``s`` is seed ``config.seed + s`` in every respect.

    Initialisation key ``fold_in(key(seed), stream)`` and shuffle seed ``seed``, so a row
    of results.jsonl is reproduced by a run with that seed alone (``--config.seed=...
    --config.num_seeds=1``), up to float rounding (populations of different sizes are
    different programs); ``stream`` separates teachers, folds and students.
    """
    config = programs.config
    part = config.teacher if role == TEACHER else config.student
    model_fn, tx, step, multi, predict, evaluate = programs.get(role, method_name)
    keys = jnp.stack([jax.random.fold_in(jax.random.key(v), stream) for v in _seeds(config)])
    _, state = train.init_population(model_fn, tx, keys, constants)
    arrays = {"x": data["x_train"], "y": data["y_train"]}
    if "teacher" in data:
        arrays["teacher"] = data["teacher"]
    eval_fn = None
    if role == TEACHER:  # early stopping on the noisy validation split
        val = {"x": jnp.asarray(data["x_val"]), "y": jnp.asarray(data["y_val"])}

        def eval_fn(state):
            return evaluate(sharding.local_copy(state), val)["loss"]

    result = train.fit(
        state,
        step,
        lambda start: input_pipeline.batches(
            arrays,
            batch_size=part.batch_size,
            seed=_seeds(config),
            start_step=start,
            population=config.num_seeds,
            rows=sharding.process_rows(part.batch_size),  # this process's part of a batch
        ),
        num_steps=part.num_steps,
        eval_fn=eval_fn,
        eval_every=part.get("eval_every", part.num_steps),
        patience=part.get("patience"),
        writer=writer,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=part.checkpoint_every,
        log_every=max(1, part.num_steps // 10),
        name=name,
        mesh=programs.mesh,
        batch_axis=1,
        multi_step=multi,
        steps_per_call=config.steps_per_call,
    )
    return result._replace(state=sharding.local_copy(result.state)), predict


def _rows(method, head, kind, level, config, pred, labels, extra=None, fold=None):
    metrics = tasks.get_task(config.dataset.name).metrics(pred, labels)
    rows = []
    for s in range(config.num_seeds):
        row = {
            "method": method,
            "head": head,
            "noise": kind,
            "level": float(level),
            "seed": _seeds(config)[s],
            **({} if fold is None else {"fold": fold}),
            "rmse": float(metrics["rmse"][s]),
            "mae": float(metrics["mae"][s]),
        }
        # JSON has no NaN: an undefined score (e.g. precision with nothing rejected) is null.
        row.update(
            {k: None if math.isnan(v) else v for k, v in (extra[s] if extra else {}).items()}
        )
        rows.append(row)
    return rows


def _train_teachers(config, programs, data, spec, writer, workdir, cell):
    """The teacher population, or with ``teacher.folds = k >= 2`` one per fold.

    Returns (states, folds, predict): ``folds`` is ``[S, n]`` (each training example's fold,
    a per-seed random balanced assignment) or ``None``.
    """
    k = config.teacher.folds
    # Checkpoints are keyed by what determines the teacher: a changed config never resumes.
    ckpt = os.path.join(workdir, "checkpoints", cell, f"teacher-{_digest(spec)}")
    if k == 0:
        result, predict = _fit(
            programs,
            TEACHER,
            config.teacher.method,
            data,
            None,
            1,
            writer,
            f"{cell}/teacher",
            checkpoint_dir=ckpt,
        )
        return [result.state], None, predict
    n = data["x_train"].shape[1]
    folds = np.stack(
        [np.random.default_rng([seed, 17]).permutation(n) % k for seed in _seeds(config)]
    )
    states = []
    for j in range(k):
        # Every seed holds out the same number of rows, so the folds stack into one population.
        keep = [np.flatnonzero(folds[s] != j) for s in range(config.num_seeds)]
        fold_data = {
            **data,
            "x_train": np.stack([data["x_train"][s, i] for s, i in enumerate(keep)]),
            "y_train": np.stack([data["y_train"][s, i] for s, i in enumerate(keep)]),
        }
        result, predict = _fit(
            programs,
            TEACHER,
            config.teacher.method,
            fold_data,
            None,
            100 + j,
            writer,
            f"{cell}/teacher_fold{j}",
            checkpoint_dir=f"{ckpt}-fold{j}",
        )
        states.append(result.state)
    return states, folds, predict


def _compute_store(directory, predict, **kwargs) -> teacher_store.TeacherStore:
    """:func:`teacher_store.compute` by every process, each writing its own chunk ranges
    (predictions on its local devices); process 0 commits, then all open the store."""
    index, count = jax.process_index(), jax.process_count()
    store = teacher_store.compute(
        directory, predict, process_index=index, process_count=count, **kwargs
    )
    if count == 1:
        return store
    sharding.barrier(f"store-written:{directory}")
    if index == 0 and store is None:  # the ranges of the others are done now: commit
        teacher_store.compute(directory, predict, **kwargs)
    sharding.barrier(f"store-committed:{directory}")
    return teacher_store.open_store(directory, kwargs["fingerprint"], shape=kwargs["out_shape"])


def _cell_name(kind: str, level: float, fold=None) -> str:
    """The cell's directory name under checkpoints/ and teacher_store/."""
    return f"{kind}_{level:g}" if fold is None else f"fold{fold}/{kind}_{level:g}"


def run_cell(
    config: ml_collections.ConfigDict,
    loss_cfg: LossConfig,
    programs: _Programs,
    kind: str,
    level: float,
    workdir: str,
    writer,
    fold=None,
) -> tuple[list[dict], dict | None]:
    """Teacher, store, and every student for one (noise model, level[, fold]); returns
    rows, fits."""
    interrupts.check()  # a signal whose exception a library swallowed (TF's import does)
    cell = _cell_name(kind, level, fold)
    t0 = time.time()
    data = _cell_data(config, kind, level, fold)
    teacher_cfg = {k: v for k, v in config.teacher.to_dict().items() if k != "checkpoint_every"}
    task = tasks.get_task(config.dataset.name)
    ignored = (*DATA_PATHS, *task.not_in_fingerprint)
    dataset = {k: v for k, v in config.dataset.to_dict().items() if k not in ignored}
    dataset["version"] = task.version
    digest = task.content_digest(config.dataset)
    if digest is not None:
        dataset["content_sha256"] = digest
    spec = {  # everything the teacher depends on, and nothing else
        "dataset": dataset,
        "noise": {"kind": kind, "level": level, **({} if fold is None else {"fold": fold})},
        "seeds": _seeds(config),
        "teacher": teacher_cfg,
        "teacher_loss": {"huber_delta": config.loss.huber_delta}
        if config.teacher.method == "scratch_huber"
        else {},
    }
    teachers, folds, teacher_predict = _train_teachers(
        config, programs, data, spec, writer, workdir, cell
    )

    def predict_train_rows(index: np.ndarray) -> np.ndarray:
        """The stored teacher output for training examples ``index``: ``[S, len, 1]``."""
        x = data["x_train"][:, index]
        outs = [train.predict(teacher_predict, t, x, population=True)["main"] for t in teachers]
        if folds is None:
            return outs[0]
        # Out-of-fold: each example's prediction comes from the teacher that never saw it.
        return np.take_along_axis(np.stack(outs, -1), folds[:, index, None, None], -1)[..., 0]

    def statistics(predictions: np.ndarray) -> dict:
        y, t = jnp.asarray(data["y_train"]), jnp.asarray(predictions)
        stats = {}
        for rule in losses.THRESHOLD_METHODS:
            if rule == "fixed" and loss_cfg.threshold_value is None:
                continue
            rule_cfg = dataclasses.replace(loss_cfg, threshold_method=rule)
            per_seed = jax.vmap(lambda y, t, c=rule_cfg: train.loss_constants(y, t, c))(y, t)
            stats[f"threshold_{rule}"] = per_seed["threshold"]
            stats["eta"] = per_seed["eta"]
        return {k: np.asarray(v).tolist() for k, v in stats.items()}

    fingerprint = {
        **spec,
        "split": "train",
        "out_of_fold": folds is not None,
        "teacher_params_sha256": _params_digest([t.params for t in teachers]),
        "statistics_config": {
            "k": loss_cfg.threshold_k,
            "q": loss_cfg.threshold_q,
            "value": loss_cfg.threshold_value,
        },
    }
    store_dir = os.path.join(workdir, "teacher_store", cell)
    if config.store.on_mismatch == "fail":
        try:
            teacher_store.open_store(store_dir, fingerprint)
        except teacher_store.StoreNotFoundError:
            pass  # nothing there yet: compute it
    store = _compute_store(
        store_dir,
        predict_train_rows,
        fingerprint=fingerprint,
        out_shape=data["y_train"].shape,
        statistics=statistics,
        chunk_rows=config.store.chunk_rows,
    )
    if config.store.parity_sample:
        teacher_store.parity_check(
            store, predict_train_rows, sample_size=config.store.parity_sample
        )
    # One process holds the whole store; with several, each reads its own rows of each batch.
    data["teacher"] = store.load() if jax.process_count() == 1 else store
    constants = {
        "threshold": np.asarray(store.statistics[f"threshold_{loss_cfg.threshold_method}"]),
        "eta": np.asarray(store.statistics["eta"]),
    }
    t_teacher = time.time() - t0

    def teacher_mean(x: np.ndarray) -> np.ndarray:
        """The teacher of the results; with out-of-fold teachers, their mean prediction."""
        outs = [train.predict(teacher_predict, t, x, population=True)["main"] for t in teachers]
        return np.mean(outs, axis=0)

    t_test = teacher_mean(data["x_test"])
    rows = _rows(
        TEACHER, models.MAIN_HEAD, kind, level, config, t_test, data["labels_test"], fold=fold
    )
    rejected = np.asarray(
        jax.vmap(lambda y, t, d: losses.outlier_mask(y, t, threshold=d))(
            data["y_train"], np.asarray(data["teacher"][...]), constants["threshold"]
        )
    )
    detection = [
        noise.detection_scores(rejected[s], data["corrupted"][s]) for s in range(config.num_seeds)
    ]

    fits = None
    # Level 0 runs once for all noise models (see run), so it draws fits for any of them.
    if (
        task.draws_fits
        and (kind == config.fits_noise or level == 0)
        and np.isclose(level, config.fits_level)
    ):
        grid = np.linspace(-1, 1, FIT_GRID, dtype=np.float32)[:, None]
        grid_p = np.broadcast_to(grid, (config.num_seeds, *grid.shape))
        fits = {
            "noise": kind,
            "level": level,
            "grid": grid[:, 0],
            "x_train": data["x_train"][0, :, 0],
            "y_train": data["y_train"][0, :, 0],
            "corrupted": data["corrupted"][0],
            "clean": sinusoid.function(
                grid[:, 0], amplitude=config.dataset.amplitude, frequency=config.dataset.frequency
            ),
            TEACHER: teacher_mean(grid_p)[0, :, 0],
        }

    for name in config.methods:
        t1 = time.time()
        method = get_method(name)
        student_spec = {
            "teacher_store": fingerprint,
            # The δ and η a student trains with, as read from the store: a store whose
            # statistics changed (even one edited and re-hashed) never resumes old students.
            "loss_constants": {k: np.asarray(v).tolist() for k, v in constants.items()},
            "student": config.student.to_dict(),
            "method": name,
            "loss": config.loss.to_dict(),
        }
        result, predict = _fit(
            programs,
            "student",
            name,
            data,
            constants,
            2,  # the same initialisation stream for every method
            writer,
            f"{cell}/{name}",
            checkpoint_dir=os.path.join(
                workdir, "checkpoints", cell, f"{name}-{_digest(student_spec)}"
            ),
        )
        heads = train.predict(predict, result.state, data["x_test"], population=True)
        extra = detection if name in ("tor", "tor_multitask") else None
        for head, pred in heads.items():
            rows += _rows(name, head, kind, level, config, pred, data["labels_test"], extra, fold)
        if fits is not None and name in ("scratch_l2", "tor_multitask"):
            grid_heads = train.predict(predict, result.state, grid_p, population=True)
            head = config.inference_head if method.two_heads else models.MAIN_HEAD
            fits[name] = grid_heads[head][0, :, 0]
        logging.info("%s/%s: %.1fs", cell, name, time.time() - t1)
    logging.info("cell %s: teacher %.1fs, total %.1fs", cell, t_teacher, time.time() - t0)
    return rows, fits


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_same_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Results in ``workdir`` belong to one config: refuse to mix another's rows in."""
    path = os.path.join(workdir, CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            old = _flatten(json.load(f))
    except FileNotFoundError:
        raise ValueError(
            f"{workdir} holds {RESULTS} but no {CONFIG_FILE}, so which config made them is "
            "unknown: use a new --workdir"
        ) from None
    except ValueError as e:
        raise ValueError(f"{path} is damaged ({e}): use a new --workdir") from e
    new = _flatten(json.loads(config.to_json_best_effort()))
    absent = "<absent>"
    changed = [
        f"{k}: {old.get(k, absent)!r} -> {new.get(k, absent)!r}"
        for k in sorted(set(old) | set(new))
        if k not in RUN_KEYS and old.get(k, absent) != new.get(k, absent)
    ]
    if changed:
        raise ValueError(
            f"{workdir} holds the results of another config ({'; '.join(changed)}): rerun "
            "with the same config to resume it, or use a new --workdir, or move "
            f"{RESULTS} away (checkpoints and stores the configs share are then reused)"
        )


def _finished_cells(workdir: str, config: ml_collections.ConfigDict) -> dict[tuple, list[dict]]:
    """The cells whose rows are all in ``workdir``'s results.jsonl, by (fold, noise, level).

    results.jsonl is rewritten whole (atomically) after each cell, so a cell is either in it
    completely or not at all; a cell with missing or repeated rows (an edited file) is
    recomputed, never duplicated.
    """
    path = os.path.join(workdir, RESULTS)
    rows = report.load_rows(path) if os.path.exists(path) else []
    if not rows:
        return {}
    _check_same_config(workdir, config)
    heads = {TEACHER: [models.MAIN_HEAD]}
    for name in config.methods:
        two = get_method(name).two_heads
        heads[name] = [models.LABEL_HEAD, models.TEACHER_HEAD] if two else [models.MAIN_HEAD]
    expected = sorted((m, h, s) for m, hs in heads.items() for h in hs for s in _seeds(config))
    cells: dict[tuple, list[dict]] = {}
    for i, r in enumerate(rows):
        try:
            cells.setdefault((r.get("fold"), r["noise"], float(r["level"])), []).append(r)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: row {i + 1} has no valid noise or level ({e!r})") from e
    done = {}
    for cell, cell_rows in cells.items():
        if sorted((r.get("method"), r.get("head"), r.get("seed")) for r in cell_rows) == expected:
            done[cell] = cell_rows
        else:
            logging.warning(
                "%s: cell %s has %d of %d rows: recomputed",
                path,
                _cell_name(cell[1], cell[2], cell[0]),
                len(cell_rows),
                len(expected),
            )
    return done


def _save_fits(path: str, fits: dict) -> None:
    atomic_write(path, lambda f: np.savez(f, **{k: np.asarray(v) for k, v in fits.items()}))


def _load_fits(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with np.load(path) as z:
        return {k: z[k].item() if z[k].ndim == 0 else z[k] for k in z.files}


def _remove_temporaries(workdir: str) -> None:
    """Temporary files of writes a killed run left unfinished (their targets are intact)."""
    ours = (RESULTS, CONFIG_FILE, FITS_FILE, FAILURE_FILE, *report.OUTPUTS)
    for name in os.listdir(workdir):
        if any(name.startswith(f"{target}.tmp") for target in ours):
            logging.info("removing %s, left by an interrupted write", name)
            os.remove(os.path.join(workdir, name))


def _check_writable(workdir: str) -> None:
    """Before any work: a workdir that cannot be written fails now, not after an hour."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write-test-{jax.process_index()}")
        atomic_write_text(probe, "")
        os.remove(probe)
    except OSError as e:
        raise OSError(e.errno, f"workdir {workdir} is not writable: {e}") from e


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """Runs the whole sweep and writes results.jsonl, summary.md and the figures.

    Rerun with the same config and workdir, it resumes: cells already in results.jsonl are
    skipped, and an unfinished teacher or student continues from its last checkpoint. The
    run holds ``workdir``'s lock throughout: a second run there fails at once.
    """
    loss_cfg = validate(config)
    # Absolute and normalised once: tensorstore refuses paths with ".." parts, and a
    # relative path would change meaning if anything changed the working directory.
    workdir = os.path.abspath(workdir)
    lock = _lock(workdir)
    try:
        return _run_locked(config, loss_cfg, workdir)
    except interrupts.Interrupted as e:
        e.where = e.where or "start-up (before the first cell)"
        raise
    finally:
        if lock is not None:
            lock.release()


def _lock(workdir: str) -> DirectoryLock | None:
    """Process 0 takes the workdir's lock for the whole run (its other processes share it);
    every process stops if it cannot be had."""
    lock, problem = None, None
    if sharding.is_primary():
        try:
            lock = DirectoryLock(workdir)
        except DirectoryLockedError as e:
            problem = e
        except OSError as e:
            raise OSError(e.errno, f"workdir {workdir} is not writable: {e}") from e
    text = "locked" if problem is None else "refused"  # the others take process 0's word
    try:
        sharding.check_agreement(text, f"whether process 0 holds the lock of {workdir}")
    except Exception:
        if problem is not None:
            raise problem from None
        raise
    if problem is not None:
        raise problem
    return lock


def _run_locked(config: ml_collections.ConfigDict, loss_cfg: LossConfig, workdir: str):
    primary = sharding.is_primary()  # the one process that writes shared files
    _check_writable(workdir)
    done = _finished_cells(workdir, config)
    sharding.check_agreement(repr(sorted(done, key=repr)), f"the finished cells in {workdir}")
    results_path = os.path.join(workdir, RESULTS)
    fits_path = os.path.join(workdir, FITS_FILE)
    if primary:
        _remove_temporaries(workdir)
        stale = [FAILURE_FILE] + ([] if done else [FITS_FILE, "fits.png"])  # of earlier runs
        for name in stale:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(workdir, name))
        atomic_write_text(os.path.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=2))
    writer = train.make_writer(os.path.join(workdir, "logs"))
    mesh = sharding.make_mesh(config.num_devices or None)
    logging.info("data-parallel over %d devices (%d processes)", mesh.size, jax.process_count())
    programs = _Programs(config, loss_cfg, mesh)
    rows: list[dict] = []
    fits = _load_fits(fits_path) if done else None
    t0 = time.time()
    task = tasks.get_task(config.dataset.name)
    folds = task.folds(config.dataset)
    setup = (
        f"Teacher: {config.teacher.method}, "
        + (
            f"out-of-fold predictions from {config.teacher.folds} fold teachers"
            if config.teacher.folds
            else "predictions on its own training split"
        )
        + f"; TOR threshold: {loss_cfg.threshold_method}."
    )
    if folds != [None]:
        setup += (
            f" {len(folds)} folds (test people {folds}): each seed's number is its mean over "
            "the folds; mean and standard error are then over seeds."
        )
    try:
        for fold in folds:
            clean_rows = None  # level 0 is the same run under every noise model: run it once
            for kind in config.noise:
                for level in map(float, config.noise[kind]):
                    finished = done.get((fold, kind, level))
                    if finished is not None:
                        cell_rows, cell_fits = finished, None
                        name = _cell_name(kind, level, fold)
                        logging.info("cell %s: in %s already, skipped", name, RESULTS)
                    elif level == 0.0 and clean_rows is not None:
                        cell_rows, cell_fits = [{**r, "noise": kind} for r in clean_rows], None
                    else:
                        try:
                            cell_rows, cell_fits = run_cell(
                                config, loss_cfg, programs, kind, level, workdir, writer, fold
                            )
                        except interrupts.Interrupted as e:
                            e.where = e.where or f"cell {_cell_name(kind, level, fold)}"
                            raise
                    if level == 0.0:
                        clean_rows = cell_rows
                    rows += cell_rows
                    if primary and cell_fits is not None:  # before the rows that mark it done
                        _save_fits(fits_path, cell_fits)
                    fits = cell_fits or fits
                    if primary and finished is None:
                        text = "".join(json.dumps(r) + "\n" for r in rows)
                        atomic_write_text(results_path, text)  # rows of finished cells only
    except train.NonFiniteError as e:
        if primary:  # the report of what finished, and of what went bad
            failure = {
                "fit": e.name,
                "step": e.step,
                "metrics": e.metrics,
                "members": e.members,
                "last_good_checkpoint": e.checkpoint_dir,
                "last_good_step": e.checkpoint_step,
                "error": str(e),
            }
            atomic_write_text(
                os.path.join(workdir, FAILURE_FILE), json.dumps(failure, indent=2) + "\n"
            )
            atomic_write_text(
                os.path.join(workdir, "summary.md"),
                report.summary_markdown(rows, setup=setup, metric=task.metric, failure=str(e)),
            )
        raise
    except BaseException:
        # The error on its way out is what the user must see: closing the metric writers
        # (which may fail on the same full disk) must not replace it.
        with contextlib.suppress(Exception):
            writer.close()
        raise
    writer.close()
    elapsed = time.time() - t0
    if primary:
        report.write_all(rows, fits, workdir, elapsed_s=elapsed, setup=setup, metric=task.metric)
        print(f"sweep finished in {elapsed:.1f}s; results in {workdir}", flush=True)
    return rows
