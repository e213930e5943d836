"""The sinusoid toy of the paper: x in [-1, 1], y a sine; tiny MLPs, one vmapped program
for all seeds."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from experiments.tasks.base import Splits, Task
from kd_regression import models, train
from kd_regression.datasets import sinusoid


class SinusoidTask(Task):
    name = "sinusoid"
    version = sinusoid.VERSION
    population = "vmap"  # tiny MLPs: one vmapped program for all seeds
    model_keys = ("hidden",)
    fits_points = 400  # points of the x grid drawn in fits.png

    def _grid(self) -> np.ndarray:
        return np.linspace(-1, 1, self.fits_points, dtype=np.float32)[:, None]

    def fits_grid(self, config, kind, level):
        # Level 0 runs once for all noise models (see the sweep), so it draws for any.
        if (kind == config.fits_noise or level == 0) and np.isclose(level, config.fits_level):
            return self._grid()
        return None

    def fits_data(self, config, data):
        ds = config.dataset
        grid = self._grid()[:, 0]
        return {
            "x_train": data["x_train"][0, :, 0],
            "y_train": data["y_train"][0, :, 0],
            "corrupted": data["corrupted"][0],
            "clean": sinusoid.function(grid, amplitude=ds.amplitude, frequency=ds.frequency),
        }

    def train_size(self, ds: ml_collections.ConfigDict) -> int:
        return ds.train_size

    def splits(self, ds: ml_collections.ConfigDict, seed: int, fold=None) -> Splits:
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

    def label_range(self, ds: ml_collections.ConfigDict, splits: Splits) -> tuple:
        return sinusoid.label_range(amplitude=ds.amplitude, margin=ds.outlier_margin)

    def to_target(self, labels: np.ndarray) -> np.ndarray:
        return np.asarray(labels, np.float32)

    def from_target(self, targets):
        return np.asarray(targets, np.float32)

    def deployment(self, ds):
        return {
            "input": "x as it is: float32 [batch, 1], drawn from [-1, 1]; no normalisation",
            "targets": "y, the sinusoid's value (label units)",
            "to_label": "label = target",
        }

    def model_fn(self, part: ml_collections.ConfigDict, two_heads: bool) -> Callable[..., Any]:
        return functools.partial(models.mlp, 1, list(part.hidden), 1, two_heads=two_heads)

    def metrics(self, pred: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
        return train.regression_metrics(pred, labels)
