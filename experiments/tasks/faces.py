"""Face roll from scikit-image's bundled LFW crops: (sin θ, cos θ) targets, angular error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from experiments.tasks.base import Splits, Task, image_model
from kd_regression.datasets import faces


class FacesTask(Task):
    name = "faces"
    version = faces.VERSION
    # A vmapped convolution over a population is a grouped convolution, ~3.5x slower on
    # CPU than the same steps one seed at a time (measured): run seeds in turn.
    population = "loop"

    def train_size(self, ds: ml_collections.ConfigDict) -> int:
        return round(ds.fractions[0] * faces.NUM_FACES) * ds.rotations_per_face

    def splits(self, ds: ml_collections.ConfigDict, seed: int, fold=None) -> Splits:
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

    def label_range(self, ds: ml_collections.ConfigDict, splits: Splits) -> tuple:
        # An annotation error here is an angle anywhere in the range the data spans.
        return (-ds.max_angle, ds.max_angle)

    def to_target(self, labels: np.ndarray) -> np.ndarray:
        return faces.angle_to_target(labels)

    def from_target(self, targets):
        return faces.target_to_angle(targets)[..., None].astype(np.float32)

    def deployment(self, ds):
        return {
            "input": "a grey face crop, float32 [batch, 25, 25, 1] in [0, 1] (uint8 pixel / "
            "255), outside the inscribed disc set to 0",
            "targets": "(sin θ, cos θ) of the roll θ",
            "to_label": "θ = degrees(atan2(target[0], target[1])), in degrees",
        }

    def model_fn(self, part: ml_collections.ConfigDict, two_heads: bool) -> Callable[..., Any]:
        return image_model(part.model, 1, 2, two_heads)

    def metrics(self, pred: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
        """Angular error in degrees between predicted and true roll, over examples."""
        err = faces.angular_error(faces.target_to_angle(pred), np.asarray(labels)[..., 0])
        return {"rmse": np.sqrt(np.mean(err**2, axis=-1)), "mae": np.mean(err, axis=-1)}
