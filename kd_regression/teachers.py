"""A teacher as the student's stages use it: one trained here (:class:`Teacher`, from
:func:`kd_regression.distill.train_teacher`), or one trained elsewhere
(:class:`GivenTeacher`, from :func:`given_teacher`: its predictions, or a callable), with
the population helpers both share (one seed, or a leading seed axis ``[S, ...]``)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Sequence

import jax
import numpy as np

from kd_regression import loop, train
from kd_regression.models import MAIN_HEAD
from kd_regression.trainer import Trainer

Seeds = int | Sequence[int]


def population(seeds: Seeds) -> tuple[list[int], bool]:
    """The seeds as a list, and whether the caller's arrays have no seed axis."""
    if np.ndim(seeds) == 0:
        return [int(seeds)], True
    return [int(s) for s in seeds], False


def stacked(single: bool, *arrays):
    return tuple(None if a is None else (np.asarray(a)[None] if single else a) for a in arrays)


def predict_members(predict: Callable[[np.ndarray], np.ndarray], xs) -> np.ndarray:
    """``predict`` (a model trained elsewhere) on each member's inputs of ``[S, n, ...]``."""
    return np.stack([np.asarray(predict(member), np.float32) for member in xs])


@dataclasses.dataclass
class Teacher:
    """A trained teacher population, or its ``k`` out-of-fold teachers.

    ``folds``: ``[S, n]``, each training example's fold (None without folds); ``x_train``
    the inputs it was trained on, ``[S, n, ...]``.
    """

    trainer: Trainer
    states: list[train.TrainState]
    results: list[loop.FitResult]
    folds: np.ndarray | None
    x_train: np.ndarray
    seeds: list[int]
    single: bool

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The teacher's prediction on ``x`` (with fold teachers, their mean)."""
        (x,) = stacked(self.single, x)
        outs = [self.trainer.predict(t, x)[MAIN_HEAD] for t in self.states]
        mean = np.mean(outs, axis=0)
        return mean[0] if self.single else mean

    def training_predictions(self, index: np.ndarray | None = None) -> np.ndarray:
        """Predictions on training rows ``index`` (default: all), ``[S, len, d]``: each from
        the teacher that never saw the row when there are folds (out-of-fold)."""
        index = np.arange(self.x_train.shape[1]) if index is None else index
        x = self.x_train[:, index]
        outs = [self.trainer.predict(t, x)[MAIN_HEAD] for t in self.states]
        if self.folds is None:
            return outs[0]
        picked = np.take_along_axis(np.stack(outs, -1), self.folds[:, index, None, None], -1)
        return picked[..., 0]

    @functools.cached_property
    def _params_digest(self) -> str:
        h = hashlib.sha256()
        for leaf in jax.tree.leaves(jax.device_get([t.params for t in self.states])):
            h.update(np.ascontiguousarray(leaf).tobytes())
        return h.hexdigest()[:16]

    def params_digest(self) -> str:
        """A digest of the parameters, computed once (a trained teacher does not change;
        the store's fingerprint and the students' checkpoint keys both ask for it)."""
        return self._params_digest


@dataclasses.dataclass
class GivenTeacher:
    """A teacher the library did not train: its predictions on the training rows, ``[S,
    n, d]``, and optionally a function ``x -> predictions`` for other inputs.

    ``folds``: ``[S, n]`` each row's fold when the predictions are out-of-fold, else None.
    Use it wherever a :class:`Teacher` goes (:func:`kd_regression.distill.store_predictions`,
    :func:`kd_regression.distill.train_student`);
    made by :func:`given_teacher`.
    """

    predictions: np.ndarray
    predict_fn: Callable[[np.ndarray], np.ndarray] | None
    folds: np.ndarray | None
    seeds: list[int]
    single: bool

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.predict_fn is None:
            raise ValueError(
                "this teacher was given as predictions on its training rows only; give "
                "predict= to given_teacher for predictions on other inputs"
            )
        (x,) = stacked(self.single, x)
        out = predict_members(self.predict_fn, x)
        return out[0] if self.single else out

    def training_predictions(self, index: np.ndarray | None = None) -> np.ndarray:
        return self.predictions if index is None else self.predictions[:, index]

    def params_digest(self) -> str:
        """What stands for a trained teacher's parameters: the predictions' bytes, and the
        fold ids' (other folds: other out-of-fold predictions, though equal in value)."""
        h = hashlib.sha256(str(self.predictions.shape).encode())
        h.update(np.ascontiguousarray(self.predictions, np.float32).tobytes())
        if self.folds is not None:
            h.update(np.ascontiguousarray(self.folds, np.int64).tobytes())
        return h.hexdigest()[:16]


def given_teacher(
    predictions: np.ndarray | None = None,
    *,
    x: np.ndarray | None = None,
    predict: Callable[[np.ndarray], np.ndarray] | None = None,
    folds: np.ndarray | None = None,
    seeds: Seeds = 0,
) -> GivenTeacher:
    """A teacher trained elsewhere (any framework), as predictions or as a callable.

    ``predictions``: its outputs on the training inputs, in target units (``[n, d]``, or
    ``[S, n, d]`` for a population); or ``predict`` (``x -> [len(x), d]``) with the
    training inputs ``x``, from which they are computed. ``folds``: each row's fold id, if
    the predictions are out-of-fold (recorded in the store's fingerprint).
    """
    seed_list, single = population(seeds)
    if predictions is None:
        if predict is None or x is None:
            raise ValueError("give the teacher's predictions, or predict= and x=")
        predictions = predict_members(predict, *stacked(single, x))
    else:
        (predictions,) = stacked(single, np.asarray(predictions, np.float32))
    if predictions.ndim != 3 or predictions.shape[0] != len(seed_list):
        raise ValueError(
            f"teacher predictions of shape {predictions.shape[int(single) :]}: must be [n, d] "
            f"(or [S, n, d] for {len(seed_list)} seeds)"
        )
    if not np.isfinite(predictions).all():
        row = int(np.argmax(~np.isfinite(predictions).all(axis=(0, 2))))
        raise ValueError(f"teacher predictions: NaN or inf at row {row}")
    if folds is not None:
        (folds,) = stacked(single, np.asarray(folds))
        folds = np.broadcast_to(folds, predictions.shape[:2])
    return GivenTeacher(predictions, predict, folds, seed_list, single)
