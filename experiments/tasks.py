"""The regression tasks the sweep runs: data, label space, models and test metrics per dataset.

Label noise is applied in a task's *label space* (the sinusoid's y; the face's angle in
degrees), then labels become regression *targets* (the same y; (sin θ, cos θ) for faces).
Losses, the teacher and TOR's residuals work on targets; test metrics compare predictions
with the clean labels in label space (RMSE / MAE of y; angular error in degrees).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from kd_regression import models, train
from kd_regression.datasets import faces, sinusoid

Splits = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (inputs, clean labels [n, k])


class SinusoidTask:
    name = "sinusoid"
    version = sinusoid.VERSION
    population = "vmap"  # tiny MLPs: one vmapped program for all seeds
    draws_fits = True

    def train_size(self, ds: ml_collections.ConfigDict) -> int:
        return ds.train_size

    def splits(self, ds: ml_collections.ConfigDict, seed: int) -> Splits:
        out = {}
        for name in sinusoid.SPLITS:
            split = sinusoid.load(
                name,
                size=ds[f"{name}_size"],
                seed=seed,
                amplitude=ds.amplitude,
                frequency=ds.frequency,
            )
            out[name] = (split.x, split.y)
        return out

    def label_range(self, ds: ml_collections.ConfigDict) -> tuple[float, float]:
        return sinusoid.label_range(amplitude=ds.amplitude, margin=ds.outlier_margin)

    def to_target(self, labels: np.ndarray) -> np.ndarray:
        return np.asarray(labels, np.float32)

    def model_fn(self, part: ml_collections.ConfigDict, two_heads: bool) -> Callable[..., Any]:
        return functools.partial(models.mlp, 1, list(part.hidden), 1, two_heads=two_heads)

    def metrics(self, pred: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
        return train.regression_metrics(pred, labels)


class FacesTask:
    name = "faces"
    version = faces.VERSION
    # A vmapped convolution over a population is a grouped convolution, ~3.5x slower on
    # CPU than the same steps one seed at a time (measured): run seeds in turn.
    population = "loop"
    draws_fits = False

    def train_size(self, ds: ml_collections.ConfigDict) -> int:
        return round(ds.fractions[0] * faces.NUM_FACES) * ds.rotations_per_face

    def splits(self, ds: ml_collections.ConfigDict, seed: int) -> Splits:
        out = {}
        for name in faces.SPLITS:
            split = faces.load(
                name,
                seed=seed,
                rotations_per_face=ds.rotations_per_face,
                max_angle=ds.max_angle,
                fractions=tuple(ds.fractions),
            )
            out[name] = (split.x, split.angle[:, None])
        return out

    def label_range(self, ds: ml_collections.ConfigDict) -> tuple[float, float]:
        # An annotation error here is an angle anywhere in the range the data spans.
        return (-ds.max_angle, ds.max_angle)

    def to_target(self, labels: np.ndarray) -> np.ndarray:
        return faces.angle_to_target(labels)

    def model_fn(self, part: ml_collections.ConfigDict, two_heads: bool) -> Callable[..., Any]:
        m = part.model
        return functools.partial(
            models.image_regressor,
            m.trunk,
            1,
            tuple(m.widths),
            2,
            two_heads=two_heads,
            stem=m.stem,
            stem_stride=m.stem_stride,
            blocks_per_stage=m.blocks_per_stage,
        )

    def metrics(self, pred: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
        """Angular error in degrees between predicted and true roll, over examples."""
        err = faces.angular_error(faces.target_to_angle(pred), np.asarray(labels)[..., 0])
        return {"rmse": np.sqrt(np.mean(err**2, axis=-1)), "mae": np.mean(err, axis=-1)}


TASKS = {task.name: task for task in (SinusoidTask(), FacesTask())}


def get_task(name: str):
    if name not in TASKS:
        raise ValueError(f"dataset.name={name!r} is not one of {sorted(TASKS)}")
    return TASKS[name]
