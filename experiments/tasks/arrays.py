"""The sweep on a user's own data (``dataset.name = "arrays"``): a file, its splits, its
units, and optionally a teacher's predictions made by any framework.

Label space is the *standardised* labels: each output minus its mean, over its standard
deviation, both from the training split's labels as the file gives them (ours). So label
noise is in standard deviations of each output (Gaussian σ = 0.5: half a standard
deviation; outliers: uniform over the training labels' range), the targets are the same
numbers, and the metrics turn predictions back into the file's units. Vector inputs are
standardised likewise (training split statistics); uint8 images are scaled to [0, 1],
float images used as they are.

The file's own labels may hold errors we cannot see (the real case): with nothing
injected, there is no corruption mask, so TOR's precision and recall are null; with
injected noise they are scored against the injected corruption only.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import ml_collections
import numpy as np

from experiments.tasks.base import Task, image_model
from kd_regression import models
from kd_regression.datasets import arrays
from kd_regression.datasets.arrays import DataError


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: a cache key
class Prepared:
    """A user's data ready for the sweep: splits in label space and the units' statistics."""

    splits: dict[str, tuple[np.ndarray, np.ndarray]]  # x (model input), standardised labels
    rows: dict[str, np.ndarray | None]  # each split's rows of the source's train rows
    y_mean: np.ndarray  # [k]
    y_std: np.ndarray  # [k]
    x_scale: tuple[np.ndarray, np.ndarray] | None  # vector inputs' (mean, std) [d]; images None
    names: tuple[str, ...]
    digest: str
    n_source: int  # rows of the source's train split (a teacher file has one per row)

    @property
    def image(self) -> bool:
        return self.splits["train"][0].ndim == 4


@dataclasses.dataclass(frozen=True)
class GivenTeacher:
    """A teacher's predictions from a file, in label space: on the training split, on the
    test split (None if the file has none), and each training row's fold (or None)."""

    train: np.ndarray
    test: np.ndarray | None
    folds: np.ndarray | None
    fingerprint: dict


def _columns(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip())


def _stamp(path: str) -> tuple:
    """A file's size and modification time: part of a cache key, so that a file changed
    while the process runs is read again (a tfds name has none)."""
    try:
        st = os.stat(path)
    except OSError:
        return ()
    return (st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _prepare(path, stamp, inputs, targets, data_dir, tfds_splits, seed, fractions) -> Prepared:
    del stamp  # the cache key only
    data = arrays.load(
        path, inputs=inputs, targets=targets, data_dir=data_dir, tfds_splits=tfds_splits
    )
    x_all, y_all = data.splits["train"]
    picked = arrays.split_rows(
        len(x_all), have=tuple(data.splits), fractions=dict(fractions), seed=seed
    )
    raw, rows = {}, {}
    for split in arrays.SPLITS:
        if split in picked:
            raw[split] = (x_all[picked[split]], y_all[picked[split]])
            rows[split] = picked[split]
        else:
            raw[split], rows[split] = data.splits[split], None
    y_mean, y_std = _statistics(raw["train"][1], f"{path}: the targets {data.target_names}")
    x_scale = None
    if raw["train"][0].ndim == 2:
        x_scale = _statistics(raw["train"][0], f"{path}: the inputs", constant_ok=True)
    splits = {
        s: (_inputs(x, x_scale), ((y - y_mean) / y_std).astype(np.float32))
        for s, (x, y) in raw.items()
    }
    return Prepared(
        splits, rows, y_mean, y_std, x_scale, data.target_names, data.digest, len(x_all)
    )


def _statistics(a: np.ndarray, what: str, constant_ok: bool = False):
    """Per-column mean and standard deviation of the training split (float64 sums)."""
    mean = a.mean(axis=0, dtype=np.float64)
    std = a.std(axis=0, dtype=np.float64)
    if not constant_ok and (std == 0).any():
        raise DataError(
            f"{what}: output {int(np.argmax(std == 0))} is constant on the training split"
        )
    std = np.where(std > 0, std, 1.0)  # a constant input column: centred, not scaled
    return mean.astype(np.float32), std.astype(np.float32)


def _inputs(x: np.ndarray, scale) -> np.ndarray:
    """Vectors (``scale``: their statistics) standardised; uint8 images to [0, 1]."""
    if scale is not None:
        return ((x - scale[0]) / scale[1]).astype(np.float32)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    return x.astype(np.float32)


class ArraysTask(Task):
    name = "arrays"
    version = "1"
    model_keys = ("hidden", "model")
    metric = ("rmse", "test RMSE (the file's units)")
    # The file's content digest stands for it: a moved file is the same data. Whether the
    # test labels are clean changes the summary's words only.
    not_in_fingerprint = ("path", "test_labels_clean")
    labels_known_clean = False

    def __init__(self, config: ml_collections.ConfigDict | None = None):
        self._config = config

    def bind(self, config):
        return ArraysTask(config)

    def validate(self, ds):
        if not ds.path:
            raise ValueError(
                "dataset.path is empty: give the data, e.g. --config.dataset.path=data.npz "
                "(or .csv / .parquet with dataset.inputs and dataset.targets, or tfds:NAME)"
            )
        for key in ("validation_fraction", "test_fraction"):
            if not 0 < ds[key] < 1:
                raise ValueError(f"dataset.{key}={ds[key]} must be in (0, 1)")
        if ds.validation_fraction + ds.test_fraction >= 1:
            raise ValueError(
                f"dataset.validation_fraction + dataset.test_fraction = "
                f"{ds.validation_fraction + ds.test_fraction:g} leaves no training rows"
            )
        self.data(ds)

    def data(self, ds=None) -> Prepared:
        if ds is None:
            if self._config is None:
                raise RuntimeError("the arrays task's data: bind it to a config first")
            ds = self._config.dataset
        fractions = (("validation", ds.validation_fraction), ("test", ds.test_fraction))
        return _prepare(
            ds.path,
            _stamp(ds.path),
            _columns(ds.inputs),
            _columns(ds.targets),
            ds.data_dir,
            _columns(ds.tfds_splits),
            ds.seed,
            fractions,
        )

    @property
    def population(self):
        # Small MLPs train fastest as one vmapped program; CNNs one seed at a time (see
        # FacesTask).
        return "loop" if self.data().image else "vmap"

    def content_digest(self, ds):
        return self.data(ds).digest

    def test_labels_clean(self, ds) -> bool:
        return bool(ds.test_labels_clean)

    def train_size(self, ds):
        return len(self.data(ds).splits["train"][0])

    def splits(self, ds, seed, fold=None):
        return dict(self.data(ds).splits)

    def label_range(self, ds, splits):
        y = splits["train"][1]
        return (y.min(axis=0), y.max(axis=0))

    def to_target(self, labels):
        return np.asarray(labels, np.float32)

    def from_target(self, targets):
        data = self.data()
        return (np.asarray(targets, np.float32) * data.y_std + data.y_mean).astype(np.float32)

    def deployment(self, ds):
        data = self.data(ds)
        names = ", ".join(data.names)
        out = {
            "targets": f"the outputs ({names}) standardised with the training split's "
            "statistics: (y - target_mean) / target_std",
            "to_label": "y = target · target_std + target_mean, per output (the file's units)",
            "target_mean": data.y_mean.tolist(),
            "target_std": data.y_std.tolist(),
        }
        if data.x_scale is None:
            x = data.splits["train"][0]
            out["input"] = (
                f"an image, float32 [batch, {', '.join(map(str, x.shape[1:]))}]: uint8 pixels "
                "/ 255, other types as they are in the file"
            )
        else:
            out["input"] = (
                "the input columns standardised with the training split's statistics: "
                "(x - input_mean) / input_std (a constant column: std 1)"
            )
            out["input_mean"], out["input_std"] = (a.tolist() for a in data.x_scale)
        return out

    def model_fn(self, part, two_heads):
        data = self.data()
        x, y = data.splits["train"]
        if data.image:
            return image_model(part.model, x.shape[-1], y.shape[1], two_heads)
        # A section of this config: the teacher's or the student's (None: our default size).
        teacher = part is self._config.teacher
        hidden = part.hidden or default_hidden(teacher, x.shape[1])
        return functools.partial(
            models.mlp, x.shape[1], list(hidden), y.shape[1], two_heads=two_heads
        )

    def metrics(self, pred, labels):
        """RMSE and MAE in the file's units: overall, and per output when there are several."""
        data = self.data()
        err = (np.asarray(pred, np.float64) - np.asarray(labels, np.float64)) * data.y_std
        out = {
            "rmse": np.sqrt(np.mean(err**2, axis=(-2, -1))),
            "mae": np.mean(np.abs(err), axis=(-2, -1)),
        }
        if len(data.names) > 1:
            for i, name in enumerate(data.names):
                out[f"rmse_{name}"] = np.sqrt(np.mean(err[..., i] ** 2, axis=-1))
                out[f"mae_{name}"] = np.mean(np.abs(err[..., i]), axis=-1)
        return out

    def teacher_predictions(self, teacher_cfg) -> GivenTeacher | None:
        if not teacher_cfg.predictions:
            return None
        path = teacher_cfg.predictions
        columns = _columns(teacher_cfg.columns)
        return _given_teacher(self.data(), path, _stamp(path), columns, teacher_cfg.fold_key)


def default_hidden(teacher: bool, in_features: int) -> tuple[int, ...]:
    """Our default MLP sizes for ``in_features`` inputs: a teacher of three layers of
    16·d units (64 to 512), a student of two layers of 2·d units (8 to 64)."""
    if teacher:
        return (int(np.clip(16 * in_features, 64, 512)),) * 3
    return (int(np.clip(2 * in_features, 8, 64)),) * 2


@functools.lru_cache(maxsize=2)
def _given_teacher(data: Prepared, path: str, stamp, columns, fold_key: str) -> GivenTeacher:
    """A predictions file: one row per row of the data's source (its train split), in the
    file's units; ``.npz`` arrays ``train`` (and ``test``, for a test split given apart,
    and ``fold_key``), ``.npy`` (train only), or a CSV/Parquet table of ``columns``."""
    del stamp  # the cache key only
    if not os.path.isfile(path):
        raise DataError(f"teacher predictions file {path}: no such file")
    k = len(data.names)
    columns = columns or data.names
    arrays_, folds = _read_predictions(path, columns, fold_key)
    if "test" in arrays_ and data.rows["test"] is not None:
        raise DataError(
            f"teacher predictions {path}: has a test array, but the test split is drawn from "
            "the data file's rows, whose predictions are in train"
        )
    out = {}
    for split, a in arrays_.items():
        where = f"teacher predictions {path}: {split}"
        a = np.asarray(a)
        if not np.issubdtype(a.dtype, np.number):
            raise DataError(f"{where} has dtype {a.dtype}; it must be numeric")
        a = a.astype(np.float32).reshape(len(a), -1) if a.ndim == 1 else a.astype(np.float32)
        want = data.n_source if split == "train" else len(data.splits["test"][0])
        if a.ndim != 2 or a.shape != (want, k):
            raise DataError(
                f"{where} has shape {a.shape}; it must be [{want}, {k}]: one row per "
                f"{'row of the data file' if split == 'train' else 'test example'}, one "
                f"column per output {list(data.names)}"
            )
        arrays.check_finite(a, where, "the array")
        out[split] = (a - data.y_mean) / data.y_std
    train = out["train"][data.rows["train"]]
    test = out.get("test")
    if test is None and data.rows["test"] is not None:
        test = out["train"][data.rows["test"]]
    if folds is not None:
        folds = _check_folds(np.asarray(folds), data.n_source, path)[data.rows["train"]]
    fingerprint = {
        "file_sha256": arrays.file_digest(path),
        "shape": list(arrays_["train"].shape),
        "dtype": str(np.asarray(arrays_["train"]).dtype),
        "columns": list(columns),
        "fold_key": fold_key,
    }
    return GivenTeacher(train.astype(np.float32), test, folds, fingerprint)


def _read_predictions(path: str, columns, fold_key: str):
    if path.endswith(".npy"):
        if fold_key:
            raise DataError(f"{path}: a .npy holds predictions only; give folds in an .npz")
        try:
            return {"train": np.load(path, allow_pickle=False)}, None
        except Exception as e:
            raise DataError(f"{path}: cannot be read as .npy ({type(e).__name__}: {e})") from e
    if path.endswith(".npz"):
        found = arrays.read_npz(path)
        if "train" not in found:
            raise DataError(f"{path}: no array train (arrays: {', '.join(sorted(found))})")
        if fold_key and fold_key not in found:
            raise DataError(f"{path}: no array {fold_key} (teacher.fold_key)")
        keep = {k: v for k, v in found.items() if k in ("train", "test")}
        return keep, found.get(fold_key) if fold_key else None
    if path.endswith(arrays.TABLE_SUFFIXES):
        table = arrays.read_table(path)
        unknown = [
            c for c in (*columns, *([fold_key] if fold_key else [])) if c not in table.column_names
        ]
        if unknown:
            raise DataError(
                f"{path}: no column {', '.join(unknown)} (columns: "
                f"{', '.join(table.column_names)}); teacher.columns names the prediction columns"
            )
        pred = np.stack([arrays.table_column(table, c, path) for c in columns], axis=1)
        folds = arrays.table_column(table, fold_key, path) if fold_key else None
        return {"train": pred}, folds
    raise DataError(f"teacher predictions file {path}: use .npy, .npz, .csv or .parquet")


def _check_folds(folds: np.ndarray, n: int, path: str) -> np.ndarray:
    if folds.shape != (n,) or not np.all(np.equal(np.mod(folds, 1), 0)):
        raise DataError(
            f"{path}: the fold ids must be [{n}] integers (one per row), got shape "
            f"{folds.shape} dtype {folds.dtype}"
        )
    folds = folds.astype(np.int64)
    if np.unique(folds).size < 2:
        raise DataError(f"{path}: out-of-fold predictions need at least 2 folds")
    return folds
