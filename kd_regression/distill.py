"""The method as four calls: train a teacher, store its predictions, train a student, predict.

    teacher = train_teacher(x, y, model_fn, TrainConfig(...), validation=(x_val, y_val))
    store = store_predictions(teacher, directory, y=y)   # δ and η computed once, on disk
    student = train_student(x, y, store, model_fn, "tor_multitask", TrainConfig(...))
    y_hat = student.predict(x_test)

Every call takes one seed (arrays ``[n, ...]``) or a *population* of seeds (arrays with a
leading seed axis ``[S, n, ...]``), trained together in one vmapped program (or one seed
after another: ``population="loop"``). Member ``s`` is seed ``seeds[s]`` in every respect:
its initialisation key is ``fold_in(key(seed), stream)`` and its shuffle seed ``seed``, so
a member's numbers are those of a run with that seed alone, up to float rounding.

The paper's sweep (``experiments/``) is these calls over noise models, levels and seeds.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kd_regression import loop, sharding, teacher_store, train
from kd_regression.methods import LossConfig, check_teacher_method, get_method, loss_constants
from kd_regression.models import LABEL_HEAD, MAIN_HEAD
from kd_regression.teachers import (
    GivenTeacher,
    Seeds,
    Teacher,
    given_teacher,
    population,
    predict_members,
    stacked,
)
from kd_regression.thresholds import THRESHOLD_METHODS
from kd_regression.trainer import TrainConfig, Trainer

__all__ = [
    "GivenTeacher",
    "Student",
    "Teacher",
    "given_teacher",
    "loss_statistics",
    "store_constants",
    "store_fingerprint",
    "store_predictions",
    "train_student",
    "train_teacher",
]

# Initialisation streams: fold_in(key(seed), stream) starts each model of a seed, so the
# teacher, each fold teacher and the students never share an initialisation, and every
# student method starts from the same one.
TEACHER_STREAM = 1
STUDENT_STREAM = 2
FOLD_TEACHER_STREAM = 100  # + fold j
FOLD_ASSIGNMENT_STREAM = 17  # the k-fold assignment: rng([seed, 17]).permutation(n) % k


def _trainer(model_fn, method, config, loss_config) -> Trainer:
    if model_fn is None or config is None:
        raise ValueError("give model_fn and config (a TrainConfig), or a trainer")
    return Trainer(model_fn, method, config, loss_config)


def train_teacher(
    x: np.ndarray,
    y: np.ndarray,
    model_fn: Callable[..., Any] | None = None,
    config: TrainConfig | None = None,
    *,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    method: str = "scratch_l2",
    seeds: Seeds = 0,
    folds: int = 0,
    loss_config: LossConfig | None = None,
    trainer: Trainer | None = None,
    checkpoint_dir: str | None = None,
    writer: Any = None,
    name: str = "teacher",
) -> Teacher:
    """Trains the teacher on ``(x, y)`` with early stopping on ``validation``.

    ``folds = k >= 2``: ``k`` teachers, each on the other ``k - 1`` folds of a per-seed
    random balanced assignment, so every training example has a prediction from a teacher
    that never saw it (out-of-fold; checkpoints in ``checkpoint_dir-fold{j}``). ``method``:
    a one-head method without a teacher (``scratch_l2``, ``scratch_l1``, ``scratch_huber``).
    ``trainer``: a :class:`Trainer` to reuse (its model, method and config) instead of
    ``model_fn``, ``config``, ``method`` and ``loss_config``.
    """
    seed_list, single = population(seeds)
    x, y = stacked(single, x, y)
    trainer = trainer or _trainer(model_fn, method, config, loss_config)
    check_teacher_method(trainer.method.name)
    val = None
    if validation is not None:
        val = dict(zip(("x", "y"), stacked(single, *validation), strict=True))
    fit = functools.partial(
        trainer.fit, seeds=seed_list, validation=val, writer=writer, constants=None
    )
    if folds == 0:
        result = fit(
            {"x": x, "y": y}, stream=TEACHER_STREAM, checkpoint_dir=checkpoint_dir, name=name
        )
        return Teacher(trainer, [result.state], [result], None, x, seed_list, single)
    if folds == 1 or folds < 0:
        raise ValueError(f"folds={folds}: 0 (off) or k >= 2")
    n = x.shape[1]
    assignment = np.stack(
        [
            np.random.default_rng([s, FOLD_ASSIGNMENT_STREAM]).permutation(n) % folds
            for s in seed_list
        ]
    )
    results = []
    for j in range(folds):
        # Every seed holds out the same number of rows, so the folds stack into one population.
        keep = [np.flatnonzero(assignment[s] != j) for s in range(len(seed_list))]
        arrays = {
            "x": np.stack([x[s, i] for s, i in enumerate(keep)]),
            "y": np.stack([y[s, i] for s, i in enumerate(keep)]),
        }
        ckpt = None if checkpoint_dir is None else f"{checkpoint_dir}-fold{j}"
        results.append(
            fit(arrays, stream=FOLD_TEACHER_STREAM + j, checkpoint_dir=ckpt, name=f"{name}_fold{j}")
        )
    return Teacher(trainer, [r.state for r in results], results, assignment, x, seed_list, single)


def loss_statistics(y: np.ndarray, predictions: np.ndarray, loss_config: LossConfig) -> dict:
    """TOR's δ under every threshold rule (``threshold_<rule>``) and AIL's η, per seed, from
    the labels and teacher predictions ``[S, n, d]`` of a whole training split."""
    y, t = jnp.asarray(y), jnp.asarray(predictions)
    stats = {}
    for rule in THRESHOLD_METHODS:
        if rule == "fixed" and loss_config.threshold_value is None:
            continue
        rule_cfg = dataclasses.replace(loss_config, threshold_method=rule)
        per_seed = jax.vmap(lambda y, t, c=rule_cfg: loss_constants(y, t, c))(y, t)
        stats[f"threshold_{rule}"] = per_seed["threshold"]
        stats["eta"] = per_seed["eta"]
    return {k: np.asarray(v).tolist() for k, v in stats.items()}


def store_fingerprint(
    teacher: Teacher | GivenTeacher, fingerprint: Mapping[str, Any] | None, loss_config: LossConfig
) -> dict[str, Any]:
    """What :func:`store_predictions` fingerprints a store with: ``fingerprint`` (what the
    teacher depends on), the teacher's parameters, folds and the threshold settings."""
    return {
        **(fingerprint or {}),
        "split": "train",
        "out_of_fold": teacher.folds is not None,
        "teacher_params_sha256": teacher.params_digest(),
        "statistics_config": {
            "k": loss_config.threshold_k,
            "q": loss_config.threshold_q,
            "value": loss_config.threshold_value,
            "nu": loss_config.threshold_nu,
        },
    }


def store_constants(store: teacher_store.TeacherStore, loss_config: LossConfig) -> dict:
    """The loss constants a student trains with, per seed, as the store holds them: TOR's
    δ under ``loss_config.threshold_method`` and AIL's η."""
    stats = store.statistics
    return {
        "threshold": np.asarray(stats[f"threshold_{loss_config.threshold_method}"]),
        "eta": np.asarray(stats["eta"]),
    }


def store_predictions(
    teacher: Teacher | GivenTeacher,
    directory: str,
    *,
    y: np.ndarray,
    loss_config: LossConfig | None = None,
    fingerprint: Mapping[str, Any] | None = None,
    chunk_rows: int = teacher_store.DEFAULT_CHUNK_ROWS,
    parity_sample: int = 64,
    on_mismatch: str = "recompute",
) -> teacher_store.TeacherStore:
    """The teacher's predictions on its training rows, in a fingerprinted store with δ and η.

    ``y``: the training labels the teacher was trained on (δ and η are statistics of its
    residuals). The store's fingerprint is ``fingerprint`` (what the teacher depends on)
    plus the teacher's parameter digest, whether it is out-of-fold and the threshold
    settings: a complete store with the same fingerprint is reused, another recomputed
    (``on_mismatch="fail"``: refused). ``parity_sample`` rows are recomputed and compared.
    With several processes, each writes its share of the chunks and process 0 commits.
    """
    loss_config = loss_config or LossConfig()
    (y,) = stacked(teacher.single, y)
    fingerprint = store_fingerprint(teacher, fingerprint, loss_config)
    if on_mismatch == "fail":
        try:
            teacher_store.open_store(directory, fingerprint)
        except teacher_store.StoreNotFoundError:
            pass  # nothing there yet: compute it
    elif on_mismatch != "recompute":
        raise ValueError(f"on_mismatch={on_mismatch!r}: 'recompute' or 'fail'")
    store = _compute_store(
        directory,
        teacher.training_predictions,
        fingerprint=fingerprint,
        out_shape=y.shape,  # the teacher predicts the targets
        statistics=lambda predictions: loss_statistics(y, predictions, loss_config),
        chunk_rows=chunk_rows,
    )
    if parity_sample:
        teacher_store.parity_check(store, teacher.training_predictions, sample_size=parity_sample)
    return store


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


@dataclasses.dataclass
class Student:
    """A trained student population: ``predict`` gives the inference head's output."""

    trainer: Trainer
    state: train.TrainState
    result: loop.FitResult
    constants: dict[str, np.ndarray]  # the δ and η it trained with, per seed
    seeds: list[int]
    single: bool
    inference_head: str = LABEL_HEAD

    def heads(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every head's output on ``x``."""
        (x,) = stacked(self.single, x)
        out = self.trainer.predict(self.state, x)
        return {k: v[0] for k, v in out.items()} if self.single else out

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The prediction: the inference head of a two-head student, else its only head."""
        head = self.inference_head if self.trainer.method.two_heads else MAIN_HEAD
        return self.heads(x)[head]


def _teacher_inputs(teacher, x, y, loss_config: LossConfig, single: bool):
    """(the batch's ``teacher`` array or store, the loss constants δ and η per seed)."""
    if isinstance(teacher, teacher_store.TeacherStore):
        constants = store_constants(teacher, loss_config)
        # One process holds the whole store; with several, each reads its own batch rows.
        return (teacher.load() if jax.process_count() == 1 else teacher), constants
    if isinstance(teacher, (Teacher, GivenTeacher)):
        predictions = teacher.training_predictions()
    elif callable(teacher):  # a model trained elsewhere, x -> predictions
        predictions = predict_members(teacher, x)
    else:
        (predictions,) = stacked(single, teacher)
    per_seed = jax.vmap(lambda y, t: loss_constants(y, t, loss_config))(
        jnp.asarray(y), jnp.asarray(predictions)
    )
    return np.asarray(predictions), {k: np.asarray(v) for k, v in per_seed.items()}


def _method_constants(method, given: Mapping[str, Any] | None, n: int) -> dict:
    """The constants ``method`` needs beyond δ and η (``Method.constants``), one per seed."""
    given = dict(given or {})
    missing = [k for k in method.constants if k not in given]
    if missing:
        raise ValueError(
            f"method={method.name!r} needs method_constants {missing} (e.g. the known noise "
            "rate of an oracle), a number or one per seed"
        )
    unused = sorted(set(given) - set(method.constants))
    if unused:
        raise ValueError(f"method={method.name!r} takes no method_constants {unused}")
    out = {}
    for k, v in given.items():
        v = np.asarray(v, np.float32)
        if v.shape not in ((), (n,)):
            raise ValueError(f"method_constants[{k!r}]: shape {v.shape}, want () or ({n},)")
        out[k] = np.broadcast_to(v, (n,)).copy()
    return out


def train_student(
    x: np.ndarray,
    y: np.ndarray,
    teacher: teacher_store.TeacherStore | Teacher | GivenTeacher | np.ndarray | Callable | None,
    model_fn: Callable[..., Any] | None,
    method: str,
    config: TrainConfig | None = None,
    *,
    loss_config: LossConfig | None = None,
    seeds: Seeds = 0,
    inference_head: str = LABEL_HEAD,
    trainer: Trainer | None = None,
    checkpoint_dir: str | None = None,
    writer: Any = None,
    name: str | None = None,
    method_constants: Mapping[str, Any] | None = None,
) -> Student:
    """Trains a student with ``method`` on ``(x, y)`` and the teacher's predictions.

    ``teacher``: a store from :func:`store_predictions` (δ and η read from it), a
    :class:`Teacher` or :class:`GivenTeacher`, its predictions on ``x`` as an array, or a
    model trained elsewhere as a callable ``x -> predictions`` (δ and η computed here);
    None for the methods without a teacher. ``model_fn`` is called with
    ``two_heads=True`` for a two-head method (``tor_multitask``). ``trainer``: a
    :class:`Trainer` of this method to reuse instead of ``model_fn``, ``config`` and
    ``loss_config``. ``method_constants``: the further per-dataset constants the method needs
    (``Method.constants``: ``small_loss_oracle``'s ``noise_rate``), scalars or one per seed.
    """
    seed_list, single = population(seeds)
    x, y = stacked(single, x, y)
    method_ = get_method(method)
    if trainer is None:
        two = method_.two_heads and model_fn is not None
        fn = functools.partial(model_fn, two_heads=True) if two else model_fn
        trainer = _trainer(fn, method_, config, loss_config)
    elif trainer.method.name != method_.name:
        raise ValueError(f"method={method!r} but the trainer is {trainer.method.name!r}'s")
    arrays, constants = {"x": x, "y": y}, {}
    if teacher is not None:
        arrays["teacher"], constants = _teacher_inputs(teacher, x, y, trainer.loss_config, single)
    elif method_.needs_teacher:
        raise ValueError(f"method={method!r} needs a teacher's predictions")
    constants = {**constants, **_method_constants(method_, method_constants, len(seed_list))}
    result = trainer.fit(
        arrays,
        seeds=seed_list,
        stream=STUDENT_STREAM,  # the same initialisation for every method
        constants=constants or None,
        checkpoint_dir=checkpoint_dir,
        writer=writer,
        name=name or method,
    )
    return Student(trainer, result.state, result, constants, seed_list, single, inference_head)
