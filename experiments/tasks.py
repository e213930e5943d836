"""The regression tasks the sweep runs: data, label space, models and test metrics per dataset.

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
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from kd_regression import models, train
from kd_regression.datasets import faces, mpiigaze, multipie, sinusoid

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


def _unit(images: np.ndarray) -> np.ndarray:
    """uint8 images as float32 in [0, 1], the models' input."""
    return images.astype(np.float32) / 255.0


def _fraction(ds: ml_collections.ConfigDict, key: str) -> float:
    value = ds[key]
    if not 0 < value < 1:
        raise ValueError(f"dataset.{key}={value} must be in (0, 1)")
    return value


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=2)
def _mpiigaze(data_dir: str | None, manual_dir: str | None) -> tuple[dict, str]:
    data = mpiigaze.load(data_dir, manual_dir)
    return data, _digest(data)


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
        _fraction(ds, "validation_fraction")
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
                _unit(data["image"][idx]),
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


@functools.lru_cache(maxsize=2)
def _multipie(data_dir, manual_dir, image_size, illuminations) -> tuple[dict, str]:
    kw = {"image_size": image_size, "illuminations": illuminations}
    data = {s: multipie.load(data_dir, manual_dir, s, **kw) for s in ("train", "test")}
    return data, _digest({f"{s}/{k}": v for s, d in data.items() for k, v in d.items()})


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
        _fraction(ds, "validation_fraction")
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
            name: (_unit(d["image"][idx]), d["yaw"][idx, None].astype(np.float32))
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


TASKS = {task.name: task for task in (SinusoidTask(), FacesTask(), MpiiGazeTask(), MultiPieTask())}


def get_task(name: str, config: ml_collections.ConfigDict | None = None) -> Task:
    """The task ``name``; bound to ``config`` when given (a user's data: its models)."""
    from experiments import arrays_task  # imports this module

    known = {**TASKS, arrays_task.TASK.name: arrays_task.TASK}
    if name not in known:
        raise ValueError(f"dataset.name={name!r} is not one of {sorted(known)}")
    return known[name] if config is None else known[name].bind(config)
