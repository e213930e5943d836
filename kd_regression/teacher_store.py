"""Teacher predictions computed once, stored by example index, streamed to the student.

A store is a directory::

    predictions.zarr/   zarr v3 array [..., n, d] (rows = the dataset's stable example
                        index; optional leading axes, e.g. a population of seeds), chunked
                        along the rows, each chunk with a crc32c checksum (zarr's codec)
    pending.json        what is being written: fingerprint, shape, dtype, chunking
    ranges/S-E.done     one marker per row range [S, E) whose chunks are written and synced
    manifest.json       written last, by an atomic rename: its presence means complete

The zarr array opens with plain tensorstore (or any zarr v3 reader). Several processes can
fill one store in parallel, each its own chunk-aligned row ranges (:func:`compute` with
``process_index`` / ``process_count``); one of them commits. A crash leaves no manifest, so
the store is never read as complete, and a rerun writes only the ranges without a marker.

Reading checks the fingerprint (a mismatch names the differing fields), that every chunk
exists (a deleted chunk would otherwise read as the fill value), and, chunk by chunk as
they are read, their checksums (tensorstore verifies the crc32c codec; no second pass).
The manifest also carries statistics computed once over the whole split (e.g. TOR's δ and
AIL's η), so students never recompute them per batch.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorstore as ts
from absl import logging

from kd_regression import __version__
from kd_regression.fileio import atomic_write_text

ARRAY = "predictions.zarr"
PENDING = "pending.json"
RANGES = "ranges"
MANIFEST = "manifest.json"
DEFAULT_CHUNK_ROWS = 8192


class StoreError(Exception):
    """Base class of the store's errors."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No complete store: never written, or a write that has not been committed."""


class StoreMismatchError(StoreError, ValueError):
    """The store was produced by another teacher, dataset or configuration."""


class StoreCorruptError(StoreError, OSError):
    """A chunk is missing, truncated or fails its checksum."""


def _jsonable(value: Any) -> Any:
    # A JSON round trip makes tuples lists and NumPy scalars numbers, so comparisons are
    # like for like whatever types the caller used.
    def default(obj):
        return obj.tolist() if hasattr(obj, "tolist") else str(obj)

    return json.loads(json.dumps(value, sort_keys=True, default=default))


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _differences(expected: Mapping, stored: Mapping) -> list[str]:
    return sorted(k for k in set(expected) | set(stored) if expected.get(k) != stored.get(k))


def _spec(directory: str) -> dict:
    return {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": os.path.join(directory, ARRAY)},
    }


def _chunk_ranges(n: int, chunk_rows: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk_rows, n)) for s in range(0, n, chunk_rows)]


def prepare(
    directory: str,
    *,
    shape: Sequence[int],
    fingerprint: Mapping[str, Any],
    dtype: str = "float32",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> None:
    """Creates an empty store for ``shape`` (``[..., n, d]``), or keeps a matching pending one.

    A pending (uncommitted) store with the same fingerprint and layout is kept so a rerun
    completes it; anything else in ``directory`` (an older store, another layout) is
    removed. Several processes may call this: the first creates, the others find a match.
    """
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"shape must be [..., n, d] with positive sizes, got {list(shape)}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    pending = {
        "fingerprint": _jsonable(dict(fingerprint)),
        "shape": list(map(int, shape)),
        "dtype": np.dtype(dtype).name,
        "chunk_rows": int(chunk_rows),
        "library_version": __version__,
    }
    pending_path = os.path.join(directory, PENDING)
    if os.path.exists(pending_path) and _read_json(pending_path) == pending:
        return
    if os.path.exists(directory):
        shutil.rmtree(directory)
    os.makedirs(os.path.join(directory, RANGES))
    chunk = [*shape[:-2], min(chunk_rows, shape[-2]), shape[-1]]
    ts.open(
        {
            **_spec(directory),
            "metadata": {
                "shape": list(shape),
                "data_type": pending["dtype"],
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk}},
                # NaN marks "never written" for any reader that skips our chunk check.
                "fill_value": float("nan"),
                "codecs": [
                    {"name": "bytes", "configuration": {"endian": "little"}},
                    {"name": "crc32c"},
                ],
            },
            "create": True,
        }
    ).result()
    atomic_write_text(pending_path, json.dumps(pending, indent=2))


def _pending(directory: str) -> dict:
    path = os.path.join(directory, PENDING)
    if not os.path.exists(path):
        raise StoreNotFoundError(
            f"{directory}: no store being written (no {PENDING}); call prepare"
        )
    return _read_json(path)


def _marker(directory: str, start: int, stop: int) -> str:
    return os.path.join(directory, RANGES, f"{start}-{stop}.done")


def missing_ranges(directory: str) -> list[tuple[int, int]]:
    """The chunk-sized row ranges of a pending store that are not written yet."""
    pending = _pending(directory)
    n = pending["shape"][-2]
    return [
        r
        for r in _chunk_ranges(n, pending["chunk_rows"])
        if not os.path.exists(_marker(directory, *r))
    ]


def write_range(directory: str, start: int, predictions: np.ndarray) -> None:
    """Writes rows ``[start, start + len)`` (chunk-aligned), then marks the range done."""
    pending = _pending(directory)
    shape, chunk_rows = pending["shape"], pending["chunk_rows"]
    stop = start + predictions.shape[-2]
    expected = [*shape[:-2], predictions.shape[-2], shape[-1]]
    if list(predictions.shape) != expected:
        raise ValueError(
            f"predictions for rows [{start}, {stop}) must have shape {expected}, "
            f"got {list(predictions.shape)}"
        )
    if start % chunk_rows or (stop % chunk_rows and stop != shape[-2]):
        raise ValueError(f"rows [{start}, {stop}) are not aligned to chunks of {chunk_rows} rows")
    if not np.isfinite(predictions).all():
        raise ValueError(f"teacher predictions for rows [{start}, {stop}) are not all finite")
    array = ts.open(_spec(directory)).result()
    array[..., start:stop, :].write(np.asarray(predictions, pending["dtype"])).result()
    for s, e in _chunk_ranges(stop - start, chunk_rows):
        atomic_write_text(_marker(directory, start + s, start + e), "")


def commit(directory: str, statistics: Mapping[str, Any] | None = None) -> dict:
    """Writes the manifest (atomically) once every range is written; returns it."""
    pending = _pending(directory)
    missing = missing_ranges(directory)
    if missing:
        raise StoreNotFoundError(f"{directory}: cannot commit, rows {missing[:5]}... not written")
    manifest = {
        **pending,
        "statistics": _jsonable(dict(statistics or {})),
        "committed": time.time(),
    }
    atomic_write_text(os.path.join(directory, MANIFEST), json.dumps(manifest, indent=2))
    return manifest


class TeacherStore:
    """A committed store, opened for reading: ``store[..., rows, :]`` or :meth:`rows`."""

    def __init__(self, directory: str, manifest: dict, array: ts.TensorStore):
        self.directory, self.manifest, self._array = directory, manifest, array
        self.shape = tuple(manifest["shape"])
        self.dtype = np.dtype(manifest["dtype"])
        self.ndim = len(self.shape)
        self.statistics = manifest["statistics"]

    def __getitem__(self, key) -> np.ndarray:
        """NumPy-style outer indexing (integer arrays pick rows), read from disk."""
        try:
            out = self._array.oindex[key].read().result()
        except ValueError as e:  # tensorstore reports truncation and checksum errors so
            raise StoreCorruptError(f"{self.directory}: {e}") from e
        if np.isnan(out).any():  # the fill value: a chunk vanished after opening
            raise StoreCorruptError(f"{self.directory}: read unwritten rows (a chunk is missing)")
        return out

    def rows(self, index: np.ndarray) -> np.ndarray:
        """Predictions ``[..., len(index), d]`` for the example indices ``index``."""
        return self[(slice(None),) * (self.ndim - 2) + (np.asarray(index), slice(None))]

    def load(self) -> np.ndarray:
        """The whole store in memory."""
        return self[...]


def open_store(
    directory: str, fingerprint: Mapping[str, Any], *, cache_bytes: int = 256 << 20
) -> TeacherStore:
    """Opens a complete store made for ``fingerprint``.

    ``cache_bytes`` bounds tensorstore's cache of decoded (checksum-verified) chunks, so
    shuffled reads do not decode the same chunk again and again.

    Raises:
      StoreNotFoundError: nothing committed in ``directory``.
      StoreMismatchError: the stored fingerprint (or layout) differs; names the fields.
      StoreCorruptError: a chunk file is missing.
    """
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        raise StoreNotFoundError(f"no complete teacher store in {directory} (no {MANIFEST})")
    manifest = _read_json(path)
    expected, stored = _jsonable(dict(fingerprint)), manifest["fingerprint"]
    differing = _differences(expected, stored)
    if differing:
        details = "; ".join(
            f"{k}: stored {stored.get(k)!r}, expected {expected.get(k)!r}" for k in differing
        )
        raise StoreMismatchError(f"teacher store {directory} does not match: {details}")
    if manifest["library_version"] != __version__:
        raise StoreMismatchError(
            f"teacher store {directory}: library_version: stored {manifest['library_version']!r}, "
            f"expected {__version__!r}"
        )
    try:
        array = ts.open(
            _spec(directory),
            open=True,
            context=ts.Context({"cache_pool": {"total_bytes_limit": cache_bytes}}),
        ).result()
    except ValueError as e:
        raise StoreCorruptError(f"{directory}: cannot open {ARRAY}: {e}") from e
    if list(array.shape) != manifest["shape"] or array.dtype.numpy_dtype != np.dtype(
        manifest["dtype"]
    ):
        raise StoreMismatchError(
            f"teacher store {directory}: {ARRAY} is {list(array.shape)} {array.dtype}, "
            f"manifest says {manifest['shape']} {manifest['dtype']}"
        )
    n, chunk_rows = manifest["shape"][-2], manifest["chunk_rows"]
    expected_chunks = len(_chunk_ranges(n, chunk_rows))
    keys = (
        ts.KvStore.open({"driver": "file", "path": os.path.join(directory, ARRAY) + "/"})
        .result()
        .list()
        .result()
    )
    chunks = [k for k in keys if k.startswith(b"c/")]
    if len(chunks) != expected_chunks:
        raise StoreCorruptError(
            f"{directory}: {len(chunks)} of {expected_chunks} chunks present; "
            "the store is damaged, recompute it"
        )
    return TeacherStore(directory, manifest, array)


def compute(
    directory: str,
    predict: Callable[[np.ndarray], np.ndarray],
    *,
    fingerprint: Mapping[str, Any],
    out_shape: Sequence[int],
    statistics: Callable[[np.ndarray], Mapping[str, Any]] | None = None,
    batch_size: int = 4096,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    process_index: int = 0,
    process_count: int = 1,
) -> TeacherStore | None:
    """Fills (or completes) a store with ``predict`` and commits it; reuses a complete one.

    Args:
      predict: ``index -> [..., len(index), d]``, the teacher's outputs for the examples
        with these stable indices (jitted, batched forward passes by the caller; with
        out-of-fold teachers, each row from the teacher that did not see it). Called on
        at most ``batch_size`` consecutive indices at a time.
      out_shape: the store's shape ``[..., n, d]``.
      statistics: ``predictions -> dict`` run once over the whole store at commit time.
      process_index, process_count: this writer takes every ``process_count``-th missing
        chunk range; only process 0 commits, once all ranges are done (it returns ``None``
        while others are unfinished; rerun it, or call :func:`commit` later). Process 0
        should start first: :func:`prepare` is not safe against a concurrent first call.
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index={process_index} must be in [0, process_count={process_count})"
        )
    try:
        return open_store(directory, fingerprint)
    except StoreCorruptError as e:
        # Range markers may vouch for the damaged chunk: start this store over.
        logging.warning("%s; recomputing the store", e)
        shutil.rmtree(directory)
    except (StoreNotFoundError, StoreMismatchError):
        pass  # a new store, or another one (prepare replaces it), or an unfinished write
    prepare(directory, shape=out_shape, fingerprint=fingerprint, chunk_rows=chunk_rows)
    mine = missing_ranges(directory)[process_index::process_count]
    t0, done = time.time(), 0
    for start, stop in mine:
        parts = []
        for b in range(start, stop, batch_size):
            parts.append(np.asarray(predict(np.arange(b, min(b + batch_size, stop)))))
        write_range(directory, start, np.concatenate(parts, axis=-2))
        done += stop - start
        logging.info(
            "teacher store %s: %d/%d rows (%.0f rows/s)",
            directory,
            done,
            sum(e - s for s, e in mine),
            done / max(time.time() - t0, 1e-9),
        )
    if process_index != 0 or missing_ranges(directory):
        return None
    full = TeacherStore(
        directory, {**_pending(directory), "statistics": {}}, ts.open(_spec(directory)).result()
    ).load()
    commit(directory, statistics(full) if statistics else None)
    return open_store(directory, fingerprint)


def write(
    directory: str,
    predictions: np.ndarray,
    fingerprint: Mapping[str, Any],
    statistics: Mapping[str, Any] | None = None,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> None:
    """Writes a whole prediction array ``[..., n, d]`` as a committed store."""
    predictions = np.asarray(predictions)
    prepare(
        directory,
        shape=predictions.shape,
        fingerprint=fingerprint,
        dtype=predictions.dtype.name,
        chunk_rows=chunk_rows,
    )
    for start, stop in missing_ranges(directory):
        write_range(directory, start, predictions[..., start:stop, :])
    commit(directory, statistics)


def read(directory: str, fingerprint: Mapping[str, Any]) -> np.ndarray:
    """The whole stored array, if the store is complete and made for ``fingerprint``."""
    return open_store(directory, fingerprint).load()


def parity_check(
    store: TeacherStore,
    predict: Callable[[np.ndarray], np.ndarray],
    *,
    sample_size: int = 256,
    seed: int = 0,
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> float:
    """Recomputes ``predict`` (as in :func:`compute`) on a random sample of example indices.

    Returns the largest absolute difference from the stored values; raises
    ``StoreMismatchError`` where a difference exceeds ``atol + rtol * |stored|``.
    """
    n = store.shape[-2]
    index = np.sort(np.random.default_rng(seed).choice(n, size=min(sample_size, n), replace=False))
    stored = store.rows(index)
    diff = np.abs(np.asarray(predict(index)) - stored)
    if not (diff <= atol + rtol * np.abs(stored)).all():
        raise StoreMismatchError(
            f"{store.directory}: recomputed teacher differs from the store by up to "
            f"{diff.max():.3g} on {len(index)} sampled rows (atol={atol}, rtol={rtol})"
        )
    return float(diff.max())
