"""What every task gives the sweep (data, label space, models and test metrics), and the
helpers the image tasks share.

Label noise is applied in a task's *label space* (the sinusoid's y; angles in degrees for
the image tasks), then labels become regression *targets* (the same y; (sin θ, cos θ) for
faces; gaze (pitch, yaw) in radians; Multi-PIE yaw / 90°). Losses, the teacher and TOR's
residuals work on targets; test metrics compare predictions with the clean labels in label
space (RMSE / MAE of y; errors in degrees).

A task with *folds* (MPIIGaze: leave one person out) runs the whole sweep once per fold;
``folds`` returns ``[None]`` for the others.
"""

from __future__ import annotations

import functools
import hashlib

import ml_collections
import numpy as np

from kd_regression import models

Splits = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (inputs, clean labels [n, k])


class Task:
    """Defaults of a task without folds, whose data the config alone determines."""

    population = "loop"
    metric = ("rmse", "test RMSE")  # (results.jsonl field, its name) for summary and plot
    not_in_fingerprint: tuple[str, ...] = ()  # dataset.* keys a cell's results ignore
    model_keys: tuple[str, ...] = ("model",)  # teacher.* / student.* keys of the model's sizes

    # Whether the labels the task starts from are clean, so that TOR's precision and recall
    # can be scored where no noise was injected (a user's file: not known).
    labels_known_clean = True

    def bind(self, config: ml_collections.ConfigDict) -> Task:
        """The task for one config (a task whose models depend on its data holds them)."""
        return self

    def validate(self, ds: ml_collections.ConfigDict) -> None:
        """Raises ValueError naming a ``dataset.*`` key with an impossible value."""

    def test_labels_clean(self, ds: ml_collections.ConfigDict) -> bool:
        """Whether the test split's labels are clean (the metrics' reference)."""
        return True

    def teacher_predictions(self, teacher: ml_collections.ConfigDict):
        """A teacher given as predictions (``teacher.predictions``), or None: train one."""
        return None

    def folds(self, ds: ml_collections.ConfigDict) -> list:
        return [None]

    def content_digest(self, ds: ml_collections.ConfigDict) -> str | None:
        """A digest of data read from disk (None: the config determines the data)."""
        return None

    def from_target(self, targets: np.ndarray) -> np.ndarray:
        """A model's outputs ``[..., d]`` as labels ``[..., k]`` in the units a user reads
        them, what a deployed model's user computes from its outputs: the inverse of
        ``to_target`` (a user's file: the file's units, its label space being the
        standardised labels)."""
        raise NotImplementedError(f"{type(self).__name__}.from_target")

    def deployment(self, ds: ml_collections.ConfigDict) -> dict:
        """For an exported model's metadata: its ``input`` (the normalisation the task
        applies before the model), its ``targets`` and ``to_label`` (how to get the label
        back), as sentences; a task may add arrays (a user's data: the statistics)."""
        raise NotImplementedError(f"{type(self).__name__}.deployment")

    def fits_grid(self, config: ml_collections.ConfigDict, kind: str, level: float):
        """The inputs ``[m, ...]`` on which fits.png draws this cell's models, or None."""
        return None

    def fits_data(self, config: ml_collections.ConfigDict, data: dict) -> dict:
        """What fits.png draws behind the models: seed 0's training data, the clean curve."""
        return {}


def image_model(m: ml_collections.ConfigDict, in_channels: int, out: int, two_heads: bool):
    return functools.partial(
        models.image_regressor,
        m.trunk,
        in_channels,
        tuple(m.widths),
        out,
        two_heads=two_heads,
        stem=m.stem,
        stem_stride=m.stem_stride,
        blocks_per_stage=m.blocks_per_stage,
    )


def unit_images(images: np.ndarray) -> np.ndarray:
    """uint8 images as float32 in [0, 1], the models' input."""
    return images.astype(np.float32) / 255.0


def check_fraction(ds: ml_collections.ConfigDict, key: str) -> float:
    value = ds[key]
    if not 0 < value < 1:
        raise ValueError(f"dataset.{key}={value} must be in (0, 1)")
    return value


def digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()[:16]
