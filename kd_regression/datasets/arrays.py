"""A user's own regression data: a NumPy ``.npz``, a CSV or Parquet file, or a built tfds set.

    data = arrays.load("data.npz")   # x [n, ...], y [n] or [n, k]; x_val/y_val, x_test/y_test
    data = arrays.load("data.csv", inputs=("a", "b"), targets=("y1", "y2"))
    data = arrays.load("tfds:my_set", inputs=("image",), targets=("angle",), data_dir=DIR)

``data.splits`` holds the splits the source gives (``train`` always: an ``.npz``'s ``x``,
every row of a CSV or Parquet file, a tfds set's first split); :func:`split_rows` draws
the missing ones from ``train``'s rows. Rows are kept in the source's order, so a row
number here is the row of the user's file (0-based; a CSV's line is row + 2).

Every check names the file, the array or column, and the first bad row, and raises
:class:`DataError`: nothing is trained on data that would fail later.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "validation", "test")
NPZ_KEYS = {"train": ("x", "y"), "validation": ("x_val", "y_val"), "test": ("x_test", "y_test")}
TFDS_PREFIX = "tfds:"
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


class DataError(ValueError):
    """A user's data file that cannot be used; the message names the file, array and row."""


@dataclasses.dataclass(frozen=True)
class Arrays:
    """The splits a source gives: ``{split: (x [n, ...], y [n, k])}``, float32 or uint8 x."""

    source: str
    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    target_names: tuple[str, ...]
    digest: str  # sha256 of the file's bytes (tfds: of the arrays read)


def load(
    path: str,
    *,
    inputs: Sequence[str] = (),
    targets: Sequence[str] = (),
    data_dir: str | None = None,
    tfds_splits: Sequence[str] = ("train",),
) -> Arrays:
    """Reads and checks a user's data; ``inputs``/``targets`` name the columns (CSV,
    Parquet) or features (tfds), ``tfds_splits`` the tfds splits (see :func:`tfds_roles`)."""
    if path.startswith(TFDS_PREFIX):
        return _load_tfds(path[len(TFDS_PREFIX) :], inputs, targets, data_dir, tfds_splits)
    if not os.path.isfile(path):
        raise DataError(f"data file {path}: no such file")
    if path.endswith(".npz"):
        if inputs or targets:
            raise DataError(f"{path}: an .npz has arrays x and y; inputs/targets are for tables")
        return _load_npz(path)
    if path.endswith(TABLE_SUFFIXES):
        return _load_table(path, inputs, targets)
    raise DataError(
        f"data file {path}: unknown format; use .npz, .csv, .parquet, or tfds:NAME (a tfds "
        "set built in data_dir)"
    )


def file_digest(path: str) -> str:
    """The sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (no pickles); a file that is not one is a DataError."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception as e:  # a damaged zip, an object array, ...
        raise DataError(f"{path}: cannot be read as an .npz ({type(e).__name__}: {e})") from e


def _load_npz(path: str) -> Arrays:
    arrays = read_npz(path)
    splits = {}
    for split, (xk, yk) in NPZ_KEYS.items():
        given = [k for k in (xk, yk) if k in arrays]
        if split == "train" and len(given) < 2:
            missing = " and ".join(k for k in (xk, yk) if k not in arrays)
            raise DataError(f"{path}: no array {missing} (arrays: {', '.join(sorted(arrays))})")
        if len(given) == 1:
            other = yk if given[0] == xk else xk
            raise DataError(f"{path}: {given[0]} is given without {other}")
        if given:
            where = f"{path}: {xk}/{yk}"
            splits[split] = check_split(arrays[xk], arrays[yk], where, xk, yk)
    k = splits["train"][1].shape[1]
    _check_same_outputs(path, splits, [f"y{i}" for i in range(k)])
    return Arrays(path, splits, tuple(f"y{i}" for i in range(k)), file_digest(path))


def check_split(x, y, where: str, x_name: str = "x", y_name: str = "y"):
    """``(x, y)`` as ``(x [n, ...], y [n, k])``: numeric, finite, with matching rows."""
    x = _numeric(np.asarray(x), where, x_name)
    y = _numeric(np.asarray(y), where, y_name)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise DataError(f"{where}: {y_name} has shape {y.shape}; it must be [n] or [n, k]")
    check_magnitudes(y, where, y_name, columns=True)  # before float32 could overflow
    y = y.astype(np.float32)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim not in (2, 3, 4):
        raise DataError(
            f"{where}: {x_name} has shape {x.shape}; it must be vectors [n, d] or images "
            "[n, H, W] / [n, H, W, C]"
        )
    if x.ndim == 3:
        x = x[..., None]
    if x.shape[0] != y.shape[0]:
        raise DataError(
            f"{where}: {x_name} has {x.shape[0]} rows but {y_name} has {y.shape[0]}; they "
            "must have one row per example"
        )
    if x.shape[0] == 0:
        raise DataError(f"{where}: no rows")
    if x.dtype != np.uint8:
        check_magnitudes(x, where, x_name, columns=x.ndim == 2)  # vectors: per column
        x = x.astype(np.float32)
    for name, a in ((x_name, x), (y_name, y)):
        check_finite(a, where, name)
    return x, y


def check_finite(a: np.ndarray, where: str, name: str) -> None:
    """Refuses NaN or inf, naming the first row that has one."""
    if np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(
                f"{where}: {name} has NaN or inf at row {row} (first of {int(bad.sum())} rows)"
            )


# A value this many robust standard deviations (1.4826 · MAD) from its column's median is
# refused as a fill value (ours). Honest heavy tails stay far below it (the largest of
# 50,000 Cauchy draws is about 10^4 robust SDs out), while fill values such as 1e30 or
# netCDF's 9.97e36 are billions of them; one such value dominates the standardisation, or
# overflows the squared loss in float32. A smaller sentinel (-9999) can pass: check yours.
FILL_VALUE_Z = 1e6


def check_magnitudes(a: np.ndarray, where: str, name: str, *, columns: bool) -> None:
    """Refuses a value that float32 cannot hold, and (``columns``: per column of ``[n, k]``)
    one so far from the rest of its column that it can only be a fill value."""
    if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all():
        return  # NaN and inf: check_finite names them
    flat = a.reshape(a.shape[0], -1).astype(np.float64)
    over = np.abs(flat) > np.finfo(np.float32).max
    if over.any():
        row, col = np.argwhere(over)[0]
        raise DataError(
            f"{where}: {name} has {flat[row, col]:.6g} at row {row}, too large for float32 "
            f"(at most {np.finfo(np.float32).max:.4g}); a fill value? Remove the row, or make "
            "it NaN and drop it"
        )
    if columns:
        _check_fill_values(flat, where, name)


def _check_fill_values(a: np.ndarray, where: str, name: str) -> None:
    for j in range(a.shape[1]):
        col = a[:, j]
        median = np.median(col)
        deviation = np.abs(col - median)
        scale = 1.4826 * np.median(deviation)
        if scale == 0:  # most values equal: the smallest deviation that is not 0
            nonzero = deviation[deviation > 0]
            scale = nonzero.min() if nonzero.size else 0.0
        if scale == 0:
            continue
        z = deviation / scale
        if z.max() > FILL_VALUE_Z:
            row = int(np.argmax(z))
            column = "" if a.shape[1] == 1 else f", column {j}"
            raise DataError(
                f"{where}: {name} has {col[row]:.6g} at row {row}{column}, {z[row]:.3g} robust "
                f"standard deviations (1.4826·MAD) from the median {median:.6g}: it "
                f"looks like a fill value (refused beyond {FILL_VALUE_Z:g}); remove the row, "
                "or make it NaN and drop it"
            )


def _numeric(a: np.ndarray, where: str, name: str) -> np.ndarray:
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise DataError(f"{where}: {name} has dtype {a.dtype}; it must be numeric")
    return a


def _check_same_outputs(where: str, splits: dict, names: Sequence[str]) -> None:
    shapes = {s: (x.shape[1:], y.shape[1]) for s, (x, y) in splits.items()}
    first = shapes["train"]
    for split, shape in shapes.items():
        if shape != first:
            raise DataError(
                f"{where}: the {split} split's examples (inputs {shape[0]}, {shape[1]} outputs) "
                f"differ from train's (inputs {first[0]}, {first[1]} outputs {list(names)})"
            )


def _load_table(path: str, inputs: Sequence[str], targets: Sequence[str]) -> Arrays:
    if not inputs or not targets:
        raise DataError(f"{path}: name the columns: dataset.inputs=a,b,c and dataset.targets=y1,y2")
    table = read_table(path)
    columns = table.column_names
    unknown = [c for c in (*inputs, *targets) if c not in columns]
    if unknown:
        raise DataError(f"{path}: no column {', '.join(unknown)} (columns: {', '.join(columns)})")
    x = np.stack([table_column(table, c, path) for c in inputs], axis=1)
    y = np.stack([table_column(table, c, path) for c in targets], axis=1)
    where = f"{path} (columns {','.join(inputs)} -> {','.join(targets)})"
    splits = {"train": check_split(x, y, where, "the inputs", "the targets")}
    return Arrays(path, splits, tuple(targets), file_digest(path))


def read_table(path: str):
    import pyarrow.csv
    import pyarrow.parquet

    try:
        if path.endswith(".csv"):
            return pyarrow.csv.read_csv(path)
        return pyarrow.parquet.read_table(path)
    except Exception as e:  # pyarrow's errors name the line; keep them
        raise DataError(f"{path}: cannot be read ({type(e).__name__}: {e})") from e


def table_column(table, name: str, path: str) -> np.ndarray:
    """A column as float32, refusing empty cells and values that are not numbers."""
    import pyarrow as pa

    column = table.column(name).combine_chunks()
    if column.null_count:
        row = int(np.argmax(np.asarray(column.is_null())))
        raise DataError(f"{path}: column {name} is empty at row {row}{_line(path, row)}")
    if any(
        is_type(column.type)
        for is_type in (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)
    ):
        return column.to_numpy(zero_copy_only=False).astype(np.float32)
    values = column.to_pylist()
    for row, v in enumerate(values):
        try:
            float(v)
        except (TypeError, ValueError):
            raise DataError(
                f"{path}: column {name} has a value that is not a number at row {row}"
                f"{_line(path, row)}: {v!r}"
            ) from None
    return np.asarray(values, np.float32)


def _line(path: str, row: int) -> str:
    return f" (line {row + 2})" if path.endswith(".csv") else ""


def _load_tfds(name, inputs, targets, data_dir, tfds_splits) -> Arrays:
    """A tfds set already built (array_record) in ``data_dir``, read without TensorFlow."""
    import tensorflow_datasets as tfds

    if len(inputs) != 1 or not targets:
        raise DataError(
            f"tfds:{name}: name one input feature and the target features: "
            "dataset.inputs=image dataset.targets=label"
        )
    roles = tfds_roles(tfds_splits, f"tfds:{name}")
    where = f"tfds:{name} in {data_dir or 'the default data directory'}"
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        available = list(builder.info.splits.keys())
    except Exception as e:
        raise DataError(f"{where}: cannot be opened ({type(e).__name__}: {e})") from e
    features = list(builder.info.features.keys())
    unknown = [k for k in (*inputs, *targets) if k not in features]
    if unknown:
        raise DataError(f"{where}: no feature {', '.join(unknown)} (features: {features})")
    splits, h = {}, hashlib.sha256()
    for role, split in roles.items():
        try:
            source = tfds.data_source(name, split=split, data_dir=data_dir)
        except Exception as e:  # an unknown split, a bad slice
            raise DataError(
                f"{where}: split {split!r} cannot be read ({type(e).__name__}: {e}; splits: "
                f"{available})"
            ) from e
        examples = source.__getitems__(range(len(source))) if len(source) else []
        x = np.stack([np.asarray(e[inputs[0]]) for e in examples]) if examples else np.zeros(0)
        ys = [np.stack([np.asarray(e[t]) for e in examples]) for t in targets] if examples else []
        y = np.concatenate([v.reshape(len(examples), -1) for v in ys], 1) if ys else np.zeros(0)
        splits[role] = check_split(x, y, f"{where}, split {split}", inputs[0], ",".join(targets))
        for a in splits[role]:
            h.update(np.ascontiguousarray(a).tobytes())
    k = splits["train"][1].shape[1]
    names = tuple(targets) if len(targets) == k else tuple(f"y{i}" for i in range(k))
    _check_same_outputs(where, splits, names)
    return Arrays(f"{TFDS_PREFIX}{name}", splits, names, h.hexdigest())


def tfds_roles(items: Sequence[str], where: str) -> dict[str, str]:
    """``("train", "test=validation[:50%]")`` as ``{"train": "train", "test": ...}``: each
    item ``role=split`` (tfds split names and slices), or a split named like its role."""
    roles = {}
    for item in items:
        role, _, split = item.partition("=")
        role, split = role.strip(), (split or role).strip()
        if role not in SPLITS or role in roles:
            raise DataError(
                f"{where}: split {item!r}: give each of {SPLITS} at most once, as role=split "
                "(e.g. train=train[:90%],validation=train[90%:],test=test) or a split named "
                "like its role"
            )
        roles[role] = split
    if "train" not in roles:
        raise DataError(f"{where}: no train split among {list(items)}")
    return roles


def split_rows(
    n: int, *, have: Sequence[str], fractions: dict[str, float], seed: int
) -> dict[str, np.ndarray]:
    """Rows of the ``n`` training rows for ``train`` and each split the source lacks.

    ``fractions``: of the ``n`` rows, for each missing split; a deterministic permutation
    by ``seed`` draws them, and each split's rows are sorted (the file's order).
    """
    missing = [s for s in SPLITS if s not in have]
    order = np.random.default_rng([seed, 41]).permutation(n)
    out, start = {}, 0
    for split in missing:
        if split == "train":
            continue
        count = round(fractions[split] * n)
        out[split] = np.sort(order[start : start + count])
        start += count
    out["train"] = np.sort(order[start:])
    for split, rows in out.items():
        if rows.size == 0:
            raise DataError(
                f"the {split} split drawn from {n} rows is empty; give more rows, or a larger "
                f"dataset.{split}_fraction"
                if split != "train"
                else f"no training rows left of {n} after the held-out splits"
            )
    return out
