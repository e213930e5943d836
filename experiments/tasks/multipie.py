"""Multi-PIE head yaw from the user's copy: test subjects 201–346, yaw error in degrees."""

from __future__ import annotations

import functools

import numpy as np

from experiments.tasks.base import Task, check_fraction, digest, image_model, unit_images
from kd_regression.datasets import multipie


@functools.lru_cache(maxsize=2)
def _multipie(data_dir, manual_dir, image_size, illuminations) -> tuple[dict, str]:
    kw = {"image_size": image_size, "illuminations": illuminations}
    data = {s: multipie.load(data_dir, manual_dir, s, **kw) for s in ("train", "test")}
    return data, digest({f"{s}/{k}": v for s, d in data.items() for k, v in d.items()})


class MultiPieTask(Task):
    """Multi-PIE head yaw in degrees (13 cameras, −90°…+90°); targets yaw / 90°.

    Test: the ``test`` subjects (201–346); validation: ``dataset.validation_fraction`` of
    the training subjects, drawn per seed (our choice); the rest train.
    """

    name = "multipie"
    version = f"multi_pie-{multipie.MultiPie.VERSION}"
    metric = ("mae", "mean absolute yaw error (degrees)")

    def _data(self, ds):
        return _multipie(
            ds.data_dir, ds.manual_dir, ds.image_size, tuple(int(i) for i in ds.illuminations)
        )

    def validate(self, ds):
        check_fraction(ds, "validation_fraction")
        multipie.config(ds.image_size, ds.illuminations)  # raises on a bad size or shot

    def content_digest(self, ds):
        return self._data(ds)[1]

    def _train_validation(self, ds, seed):
        subject = self._data(ds)[0]["train"]["subject"]
        people = np.unique(subject)
        if people.size < 2:
            raise ValueError(
                f"Multi-PIE in {ds.data_dir} has {people.size} training subject(s): at least "
                "2 are needed to hold some out for validation"
            )
        n_val = min(people.size - 1, max(1, round(ds.validation_fraction * people.size)))
        held = np.random.default_rng([seed, 37]).choice(people, n_val, replace=False)
        val = np.isin(subject, held)
        return np.flatnonzero(~val), np.flatnonzero(val)

    def train_size(self, ds):
        return self._train_validation(ds, 0)[0].size

    def splits(self, ds, seed, fold=None):
        data = self._data(ds)[0]
        train_idx, val_idx = self._train_validation(ds, seed)
        parts = {
            "train": (data["train"], train_idx),
            "validation": (data["train"], val_idx),
            "test": (data["test"], np.arange(data["test"]["index"].size)),
        }
        return {
            name: (unit_images(d["image"][idx]), d["yaw"][idx, None].astype(np.float32))
            for name, (d, idx) in parts.items()
        }

    def label_range(self, ds, splits):
        return (-multipie.MAX_YAW, multipie.MAX_YAW)

    def to_target(self, labels):
        return (np.asarray(labels, np.float32) / multipie.MAX_YAW).astype(np.float32)

    def from_target(self, targets):
        return (np.asarray(targets, np.float32) * multipie.MAX_YAW).astype(np.float32)

    def deployment(self, ds):
        size = ds.image_size
        return {
            "input": f"an RGB face crop, float32 [batch, {size}, {size}, 3] in [0, 1] "
            "(uint8 pixel / 255): the photograph centre-cropped to a square, resized bilinearly",
            "targets": f"head yaw / {multipie.MAX_YAW:g}",
            "to_label": f"yaw in degrees = {multipie.MAX_YAW:g} · target",
        }

    def model_fn(self, part, two_heads):
        return image_model(part.model, 3, 1, two_heads)

    def metrics(self, pred, labels):
        err = np.abs(np.asarray(pred)[..., 0] * multipie.MAX_YAW - np.asarray(labels)[..., 0])
        return {"rmse": np.sqrt(np.mean(err**2, axis=-1)), "mae": np.mean(err, axis=-1)}
