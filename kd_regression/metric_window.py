"""The metrics of the steps since the last log, and the guard that stops on a non-finite step.

A train step returns its metrics on the device; :class:`MetricWindow` keeps them there
until a log, an evaluation or a checkpoint needs them, then copies them to the host once
and checks every step's ``finite`` flag, so that no log, evaluation or checkpoint ever
follows a step that went NaN or infinite (:class:`NonFiniteError`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging

from kd_regression.checkpoints import Checkpoints, CheckpointWriteError, checkpoint_words

_CHECKED = ("loss", "grad_norm")  # the metrics whose finiteness a train step checks


VALIDATION = "validation loss"  # NonFiniteError.metrics of an evaluation that was not finite


class NonFiniteError(FloatingPointError):
    """:func:`kd_regression.loop.fit` stopped: a step's loss or gradient was NaN or infinite,
    or an evaluation's validation loss.

    The update of the members that went bad was not applied at that step (see
    :func:`kd_regression.train.make_train_step`), and no state from that step on was
    checkpointed: the last good checkpoint (if any) is the latest one on disk, kept as it was.

    Attributes:
      name: ``fit``'s ``name``.
      step: the first step (1-based: the state's step after it) that was not finite.
      metrics: which went bad: ``["loss"]``, ``["grad_norm"]`` or both, over ``members``;
        ``["validation loss"]`` for an evaluation (then the steps were finite).
      members: the population members that went bad (indices on the leading population
        axis; ``[0]`` for a state without one).
      checkpoint_dir: ``fit``'s ``checkpoint_dir`` (absolute), or None.
      checkpoint_step: the step of the last good checkpoint there, or None if none.
    """

    def __init__(
        self,
        name: str,
        step: int,
        metrics: list[str],
        members: list[int],
        checkpoint_dir: str | None = None,
        checkpoint_step: int | None = None,
        detail: str = "",
    ):
        self.name, self.step, self.metrics, self.members = name, step, metrics, members
        self.checkpoint_dir, self.checkpoint_step = checkpoint_dir, checkpoint_step
        self._detail = detail
        what = " and ".join(metrics) or "loss or gradient"
        if VALIDATION in metrics:  # the step was finite: the validation data is suspect
            then = (
                "the training steps were finite (a validation label or input of an extreme size?)"
            )
        else:
            then = "parameters were left at their last finite values"
        super().__init__(
            f"{name}: non-finite {what} at step {step}{detail}; {then}; last good checkpoint: "
            f"{checkpoint_words(checkpoint_dir, checkpoint_step)}"
        )

    def __reduce__(self):
        args = (self.name, self.step, self.metrics, self.members, self.checkpoint_dir)
        return type(self), (*args, self.checkpoint_step, self._detail)


class MetricWindow:
    """Per-step metrics since the last log: device copies pending, host copies checked.

    ``axis`` is the step axis of a block's metrics (a population's ``[P, k]`` has 1);
    ``ckpt``, if any, is the fit's checkpoints, named in a :class:`NonFiniteError`.
    """

    def __init__(self, name: str, axis: int, ckpt: Checkpoints | None = None):
        self._name, self._axis, self._ckpt = name, axis, ckpt
        self._pending: list[tuple[dict, int | None]] = []  # device metrics, steps per call
        self._host: list[dict] = []  # per-step host copies, checked finite

    def add(self, metrics: dict, steps: int | None) -> None:
        """One call's metrics: a single step's (``steps=None``) or a block's of ``steps``."""
        self._pending.append((metrics, steps))

    def check(self, step: int) -> None:
        """Copies the pending metrics to the host and raises :class:`NonFiniteError` if any
        step up to ``step`` (the state's step now) was not finite."""
        for metrics, k in jax.device_get(self._pending):
            if k is None:
                self._host.append(metrics)
            else:
                self._host += [
                    {key: np.take(v, i, axis=self._axis) for key, v in metrics.items()}
                    for i in range(k)
                ]
        self._pending.clear()
        bad = _first_non_finite(self._host, step - len(self._host) + 1)
        if bad is not None:
            self._raise(bad)

    def check_validation(self, step: int, val: np.ndarray) -> None:
        """Raises :class:`NonFiniteError` if the validation loss ``val`` (scalar or ``[P]``)
        at ``step`` is not finite, while the training loss was: early stopping would never
        see an improvement and silently keep the first state it was shown (a validation
        label or input of an extreme size overflows the loss)."""
        val = np.asarray(val, np.float64)
        bad = ~np.isfinite(val.reshape(-1))
        if bad.any():
            self._raise(
                {
                    "step": step,
                    "metrics": [VALIDATION],
                    "members": np.flatnonzero(bad).tolist(),
                    "population": val.ndim > 0,
                    "values": {VALIDATION: val.reshape(-1)[bad].tolist()},
                }
            )

    def summary(self, step: int) -> dict[str, float]:
        """The means of the window's metrics (checked first); the window starts anew."""
        self.check(step)
        keys = [k for k in self._host[0] if k != "finite"]
        out = {k: float(np.mean([np.mean(m[k]) for m in self._host])) for k in keys}
        self._host = []
        return out

    def _raise(self, bad: Mapping[str, Any]):
        ckpt = self._ckpt
        try:
            if ckpt is not None:  # so that the last good checkpoint named is complete
                ckpt.finish()
        except CheckpointWriteError:
            # Both went wrong: the non-finite step is raised (naming the checkpoint
            # before the failed one), the failed save logged.
            logging.exception("%s: a checkpoint save failed before a non-finite step", self._name)
        raise NonFiniteError(
            self._name,
            bad["step"],
            bad["metrics"],
            bad["members"],
            None if ckpt is None else ckpt.directory,
            None if ckpt is None else ckpt.good_step,
            _detail(bad),
        )


def _first_non_finite(host: list[dict], first_step: int) -> dict[str, Any] | None:
    """The first step of a window of per-step host metrics that was not finite, or None.

    ``finite`` (from the step) says whether a step went bad; which of ``loss`` and
    ``grad_norm`` did is read from their values, over the members that went bad.
    """
    for i, m in enumerate(host):
        finite = np.asarray(m["finite"])
        if finite.all():
            continue
        bad = ~finite.reshape(-1)
        values = {
            key: np.asarray(m[key], np.float64).reshape(-1)[bad] for key in _CHECKED if key in m
        }
        return {
            "step": first_step + i,
            "metrics": [key for key, v in values.items() if not np.isfinite(v).all()],
            "members": np.flatnonzero(bad).tolist(),
            "population": finite.ndim > 0,
            "values": {key: v.tolist() for key, v in values.items()},
        }
    return None


def _detail(bad: Mapping[str, Any]) -> str:
    """`` (loss nan, grad_norm 0.5)``, or with members ``[1]: loss [nan], ...``."""
    if bad["population"]:
        values = ", ".join(
            f"{k} [{', '.join(f'{x:.6g}' for x in v)}]" for k, v in bad["values"].items()
        )
        return f" (population members {bad['members']}: {values})"
    return " (" + ", ".join(f"{k} {v[0]:.6g}" for k, v in bad["values"].items()) + ")"
