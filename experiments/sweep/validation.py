"""The sweep's config, checked before any work: keys, values, models, memory.

Each error names the config key and what is allowed. Values that belong to a library
layer are checked there and only named here: a training section by
:class:`kd_regression.trainer.TrainConfig`, the loss options by
:class:`kd_regression.methods.LossConfig`, the batch's split over devices and processes by
:func:`kd_regression.sharding.check_batch_size`.
"""

from __future__ import annotations

import difflib
import importlib
import math
import os

import jax
import ml_collections
import optax
from absl import logging

from experiments import tasks
from experiments.report import paired
from experiments.report.paired import TEACHER
from kd_regression import models, noise, sharding, train
from kd_regression.methods import (
    METHODS,
    NOISE_RATE,
    LossConfig,
    check_teacher_method,
    get_method,
)
from kd_regression.trainer import TrainConfig

MAX_SEED = 2**32 - 1
# Train states a seed holds at once, at least: the state and the best state, and the host
# copies of both an asynchronous checkpoint save makes.
STATE_COPIES = 4
# Keys the code reads with a default: a config may leave them out.
OPTIONAL_KEYS = (
    "teacher.eval_every",
    "teacher.patience",
    "student.eval_every",
    "student.patience",
    # Report options (a workdir of a version before them has none).
    "report.paired_references",
    "report.robust_baselines",
    "loss.threshold_nu",  # the 'mixture' rule's (LossConfig's default for an older workdir)
    "student.passes",  # your own data's (an older workdir's: num_steps alone)
    "teacher.passes",
)
# Keys of config.teacher / config.student that the sweep reads and training does not: the
# method, the model's sizes, a teacher given as predictions and its out-of-fold layout.
SWEEP_PART_KEYS = ("method", "hidden", "model", "folds", "predictions", "columns", "fold_key")
NOISE_LEVELS = {  # noise model: (is the level valid, what is allowed)
    "none": (lambda v: v == 0.0, "0 (the labels as they are)"),
    "outliers": (lambda v: 0.0 <= v <= 1.0, "a rate in [0, 1]"),
    "gaussian": (lambda v: math.isfinite(v) and v >= 0, "a finite sigma >= 0"),
}


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def cell_name(kind: str, level: float, fold=None) -> str:
    """A cell's name, and its directory under checkpoints/ and teacher_store/."""
    return f"{kind}_{level:g}" if fold is None else f"fold{fold}/{kind}_{level:g}"


def seeds(config: ml_collections.ConfigDict) -> list[int]:
    return [config.seed + s for s in range(config.num_seeds)]


def train_config(config: ml_collections.ConfigDict, part: str) -> TrainConfig:
    """``config.teacher`` / ``config.student`` as the library's training config.

    A part with ``passes`` (your own data's teacher and student) trains
    max(``num_steps``, ⌈``passes`` · training rows / ``batch_size``⌉) steps: its schedule
    grows with the data instead of stopping after a few passes over a large file.
    """
    values = {**config[part].to_dict(), "steps_per_call": config.steps_per_call}
    passes = values.pop("passes", None)
    if passes is not None:
        if not passes >= 0:
            raise ValueError(f"{part}.passes={passes}: must be >= 0 (0: num_steps alone)")
        rows = tasks.get_task(config.dataset.name, config).train_size(config.dataset)
        by_data = math.ceil(passes * rows / max(values["batch_size"], 1))
        values["num_steps"] = max(values["num_steps"], by_data)
    try:
        return TrainConfig.from_dict(values, ignore=SWEEP_PART_KEYS)
    except ValueError as e:
        raise ValueError(f"{part}.{e}") from None


def check_keys(config: ml_collections.ConfigDict) -> None:
    """Every key is one the shipped config of the same dataset has (a misspelt key would
    otherwise be ignored silently), and none of those is missing."""
    module = f"experiments.configs.{config.dataset.name}"
    known = set(flatten(importlib.import_module(module).get_config().to_dict()))
    known |= set(OPTIONAL_KEYS)
    given = set(flatten(config.to_dict()))
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


class ConfigError(ValueError):
    """A mistake in the config (or in the files it names), found before any work.

    The command line prints its message as one line and exits with status 2.
    """


def validate(config: ml_collections.ConfigDict) -> LossConfig:
    """Checks the config before any work; returns the parsed loss config.

    Every problem is a :class:`ConfigError` (a ``ValueError``) with the original error as
    its cause: the message names the key, file, array or row, and what is allowed.
    """
    try:
        return _validate(config)
    except ConfigError:
        raise
    except (ValueError, TypeError, OSError) as e:
        raise ConfigError(str(e)) from e


def _validate(config: ml_collections.ConfigDict) -> LossConfig:
    task = tasks.get_task(config.dataset.name, config)
    check_keys(config)
    task.validate(config.dataset)
    given = task.teacher_predictions(config.teacher)  # a teacher file: read and checked
    if given is not None and config.teacher.folds:
        raise ValueError(
            f"teacher.folds={config.teacher.folds}: no teacher is trained when one is given "
            "as a file (teacher.predictions); give out-of-fold predictions with "
            "teacher.fold_key instead"
        )
    roles = ("student",) if given is not None else (TEACHER, "student")  # what trains
    _check_seeds(config)
    _check_methods(config)
    _check_oracle(config, task)
    _check_noise(config)
    _check_parts(config, task, roles)
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
    _check_report(config)
    loss_cfg = LossConfig.from_dict(config.loss.to_dict())
    _check_memory(config, task, _check_models(config, task, roles))
    return loss_cfg


def report_options(config: ml_collections.ConfigDict) -> dict:
    """summary.md's paired comparisons: ``references`` and ``robust`` (empty without a
    ``report`` section: a workdir of an earlier version)."""
    report = config.get("report") or {}
    return {
        "references": tuple(report.get("paired_references", ())),
        "robust": tuple(report.get("robust_baselines", ())),
    }


def _check_report(config: ml_collections.ConfigDict) -> None:
    options = report_options(config)
    for key, names in (
        ("paired_references", options["references"]),
        ("robust_baselines", options["robust"]),
    ):
        allowed = [*METHODS, *([paired.BEST_ROBUST] if key == "paired_references" else [])]
        for name in names:
            if name not in allowed:
                raise ValueError(f"report.{key}: {name!r} is not one of {', '.join(allowed)}")


def _check_seeds(config: ml_collections.ConfigDict) -> None:
    if config.num_seeds < 1:
        raise ValueError(f"num_seeds must be >= 1, got {config.num_seeds}")
    last = config.seed + config.num_seeds - 1
    if not 0 <= config.seed <= last <= MAX_SEED:
        # JAX's keys take the seed modulo 2**32: seed 2**32 would silently be seed 0 again.
        raise ValueError(
            f"seed={config.seed}, num_seeds={config.num_seeds}: the seeds seed .. seed + "
            f"num_seeds - 1 must lie in [0, {MAX_SEED}]"
        )


def _check_methods(config: ml_collections.ConfigDict) -> None:
    for i, name in enumerate(config.methods):
        if name not in METHODS:
            # --config.methods=(a,b) is read as one string: each name needs its quotes.
            hint = " (quote each name: --config.methods=\"('a','b')\")" if "," in name else ""
            raise ValueError(
                f"methods[{i}]={name!r}: not a method{hint}; the methods: {sorted(METHODS)}"
            )
    check_teacher_method(config.teacher.method, "teacher.method")
    if len(set(config.methods)) != len(config.methods):
        raise ValueError(f"methods={list(config.methods)}: a method is listed twice")


def _check_oracle(config: ml_collections.ConfigDict, task) -> None:
    """An oracle method needs the true fraction of corrupted labels: known only where the
    task's labels are clean and every corruption is the experiment's own."""
    oracles = [m for m in config.methods if NOISE_RATE in METHODS[m].constants]
    if oracles and not task.labels_known_clean:
        raise ValueError(
            f"methods: {', '.join(oracles)} needs the true fraction of corrupted labels, "
            f"unknown for dataset {config.dataset.name!r}, whose labels are not known to be "
            "clean (their own errors come on top of any injected); remove it from methods"
        )


def _check_noise(config: ml_collections.ConfigDict) -> None:
    # A noise model with no levels is not run ('()' turns off a shipped config's model).
    if not any(list(config.noise[kind]) for kind in config.noise):
        raise ValueError(f"noise: no noise model; give levels for any of {noise.NOISE_KINDS}")
    for kind in config.noise:
        names = [cell_name(kind, float(level)) for level in config.noise[kind]]
        if len(set(names)) != len(names):  # the same cell (and directory) twice
            raise ValueError(
                f"noise.{kind}={list(config.noise[kind])}: a level is listed twice (levels "
                "are told apart by their value to 6 significant digits)"
            )
        if kind not in noise.NOISE_KINDS:
            raise ValueError(f"noise.{kind}: not a noise model; allowed {noise.NOISE_KINDS}")
        ok, allowed = NOISE_LEVELS.get(kind, (lambda v: True, ""))
        for i, level in enumerate(config.noise[kind]):
            if not ok(float(level)):
                raise ValueError(f"noise.{kind}[{i}]={level}: must be {allowed}")


def _check_parts(config: ml_collections.ConfigDict, task, roles: tuple[str, ...]) -> None:
    """The training sections of ``roles`` (the teacher's only when one is trained), and the
    devices they split over."""
    devices = jax.device_count()
    if not 0 <= config.num_devices <= devices:
        raise ValueError(
            f"num_devices={config.num_devices}: 0 (every device) or 1..{devices} (devices seen)"
        )
    if config.steps_per_call < 1:  # a top-level key, though TrainConfig holds it
        raise ValueError(f"steps_per_call={config.steps_per_call}: must be >= 1")
    mesh = sharding.make_mesh(config.num_devices or None)
    n_train = task.train_size(config.dataset)
    for part in roles:
        c = train_config(config, part)
        if part == "student" and c.patience is not None:
            raise ValueError(
                f"student.patience={c.patience}: the sweep's students do not stop early (their "
                "losses need the teacher on the validation split, which is not made); size "
                "their schedule with student.num_steps (or student.passes on your own data)"
            )
        if c.batch_size > n_train:
            raise ValueError(
                f"{part}.batch_size={c.batch_size} must be in [1, {n_train}] (training examples)"
            )
        try:
            sharding.check_batch_size(c.batch_size, mesh)
        except ValueError as e:
            raise ValueError(f"{part}.{e}, or set num_devices") from None


def _check_models(
    config: ml_collections.ConfigDict, task, roles: tuple[str, ...]
) -> dict[str, int]:
    """Builds the teacher and student abstractly (shapes only, no arrays), so a size that
    cannot be built is refused before any training. Returns the bytes of one member's
    train state, per role."""
    state_bytes = {}
    two_heads = sorted({get_method(m).two_heads for m in config.methods})
    for role, heads in ((TEACHER, [False]), ("student", two_heads)):
        if role not in roles:
            continue
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
    teacher_bytes = state_bytes.get(TEACHER, 0)  # none when the teacher is given as a file
    states = STATE_COPIES * (teachers * teacher_bytes + state_bytes["student"])
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
