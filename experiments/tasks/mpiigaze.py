"""MPIIGaze gaze from the user's copy: leave one person out, angular error in degrees."""

from __future__ import annotations

import functools

import numpy as np

from experiments.tasks.base import Task, check_fraction, digest, image_model, unit_images
from kd_regression.datasets import mpiigaze


@functools.lru_cache(maxsize=2)
def _mpiigaze(data_dir: str | None, manual_dir: str | None) -> tuple[dict, str]:
    data = mpiigaze.load(data_dir, manual_dir)
    return data, digest(data)


class MpiiGazeTask(Task):
    """MPIIGaze gaze (pitch, yaw), leave one person out; one fold per test person.

    Labels are (pitch, yaw) in degrees (noise is added in degrees); targets in radians.
    The validation split (early stopping of the teacher) is ``dataset.validation_fraction``
    of the 14 training people's examples, drawn per seed (our choice). The model sees the
    eye image only; the head pose is stored but not used (our choice).
    """

    name = "mpiigaze"
    version = f"mpii_gaze-{mpiigaze.MpiiGaze.VERSION}"
    not_in_fingerprint = ("test_people",)  # a teacher's fold is in its fingerprint itself
    metric = ("mae", "mean angular error (degrees)")

    def _data(self, ds):
        return _mpiigaze(ds.data_dir, ds.manual_dir)

    def validate(self, ds):
        check_fraction(ds, "validation_fraction")
        people = list(ds.test_people)
        if not people or len(set(people)) != len(people):
            raise ValueError(f"dataset.test_people={people}: a non-empty list without repeats")
        for p in people:
            if not 0 <= p < mpiigaze.NUM_PEOPLE:
                raise ValueError(
                    f"dataset.test_people={people}: people are 0..{mpiigaze.NUM_PEOPLE - 1}"
                )

    def folds(self, ds):
        return list(ds.test_people)

    def content_digest(self, ds):
        return self._data(ds)[1]

    def _indices(self, ds, seed: int, fold: int) -> dict[str, np.ndarray]:
        person = self._data(ds)[0]["person"]
        pool = np.flatnonzero(person != fold)
        order = np.random.default_rng([seed, fold, 31]).permutation(pool.size)
        n_val = max(1, round(ds.validation_fraction * pool.size))
        return {
            "train": np.sort(pool[order[n_val:]]),
            "validation": np.sort(pool[order[:n_val]]),
            "test": np.flatnonzero(person == fold),
        }

    def train_size(self, ds):
        return min(self._indices(ds, 0, f)["train"].size for f in self.folds(ds))

    def splits(self, ds, seed, fold=None):
        data = self._data(ds)[0]
        out = {}
        for name, idx in self._indices(ds, seed, fold).items():
            out[name] = (
                unit_images(data["image"][idx]),
                np.degrees(data["gaze"][idx]).astype(np.float32),
            )
        return out

    def label_range(self, ds, splits):
        # An annotation error is a direction anywhere in the span of the training labels.
        y = np.concatenate([splits["train"][1], splits["validation"][1]])
        return (y.min(axis=0), y.max(axis=0))

    def to_target(self, labels):
        return np.radians(labels).astype(np.float32)

    def from_target(self, targets):
        return np.degrees(targets).astype(np.float32)

    def deployment(self, ds):
        return {
            "input": "a normalized grey eye image, float32 [batch, 36, 60, 1] in [0, 1] "
            "(uint8 pixel / 255), as MPIIGaze's Data/Normalized files hold them",
            "targets": "gaze (pitch, yaw) in radians, in the normalized camera frame",
            "to_label": "(pitch, yaw) in degrees = degrees(target)",
        }

    def model_fn(self, part, two_heads):
        return image_model(part.model, 1, 2, two_heads)

    def metrics(self, pred, labels):
        """Angle in degrees between predicted and true 3-D gaze directions."""
        err = mpiigaze.angular_error(np.asarray(pred), np.radians(labels))
        return {"rmse": np.sqrt(np.mean(err**2, axis=-1)), "mae": np.mean(err, axis=-1)}
