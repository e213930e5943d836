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
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorstore as ts
from absl import logging

from kd_regression import __version__, store_format
from kd_regression.fileio import atomic_write_text, error_code
from kd_regression.store_format import (  # the store's files and errors, part of its API
    ARRAY,
    DEFAULT_CHUNK_ROWS,
    MANIFEST,
    PENDING,
    RANGES,
    StoreCorruptError,
    StoreError,
    StoreMismatchError,
    StoreNotFoundError,
)


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
        "fingerprint": store_format.jsonable(dict(fingerprint)),
        "shape": list(map(int, shape)),
        "dtype": np.dtype(dtype).name,
        "chunk_rows": int(chunk_rows),
        "library_version": __version__,
    }
    if store_format.pending_or_none(directory) == pending:
        return
    # Built under a temporary name and renamed into place, so concurrent first calls from
    # several processes end with one store, never a mix of two.
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=os.path.basename(directory) + ".tmp-")
    try:
        os.makedirs(os.path.join(tmp, RANGES))
        chunk = [*shape[:-2], min(chunk_rows, shape[-2]), shape[-1]]
        ts.open(
            {
                **store_format.array_spec(tmp),
                "metadata": {
                    "shape": list(shape),
                    "data_type": pending["dtype"],
                    "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk}},
                    # NaN marks "never written" for a reader that skips our chunk check.
                    "fill_value": float("nan"),
                    "codecs": [
                        {"name": "bytes", "configuration": {"endian": "little"}},
                        {"name": "crc32c"},
                    ],
                },
                "create": True,
            }
        ).result()
        atomic_write_text(os.path.join(tmp, PENDING), json.dumps(pending, indent=2))
        while True:
            try:
                os.rename(tmp, directory)  # atomic; fails if a non-empty directory is there
                return
            except OSError:
                if store_format.pending_or_none(directory) == pending:
                    return  # another process created the same store first
                _discard(directory)  # an older store or another layout
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _discard(directory: str) -> None:
    """Removes a store (complete, pending or damaged), but nothing that is not one."""
    if not os.path.exists(directory):
        return
    entries = set(os.listdir(directory))
    if entries - {ARRAY, PENDING, RANGES, MANIFEST}:
        raise StoreError(
            f"{directory} holds files that are not part of a teacher store "
            f"({sorted(entries - {ARRAY, PENDING, RANGES, MANIFEST})[:5]}); refusing to "
            "replace it"
        )
    trash = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(directory)), prefix=".trash-")
    try:
        os.rename(directory, os.path.join(trash, "store"))  # atomic: readers never see half
    except FileNotFoundError:
        pass  # another process moved it first
    shutil.rmtree(trash, ignore_errors=True)


def missing_ranges(
    directory: str, *, process_index: int = 0, process_count: int = 1
) -> list[tuple[int, int]]:
    """Chunk-sized row ranges of a pending store not written yet; with ``process_count``,
    only those of writer ``process_index`` (every ``process_count``-th chunk of the store,
    a fixed assignment, so writers never share a range whenever they start)."""
    pending = store_format.read_pending(directory)
    ranges = store_format.chunk_ranges(pending["shape"][-2], pending["chunk_rows"])
    return [
        r
        for r in ranges[process_index::process_count]
        if not os.path.exists(store_format.marker(directory, *r))
    ]


def write_range(directory: str, start: int, predictions: np.ndarray) -> None:
    """Writes rows ``[start, start + len)`` (chunk-aligned), then marks the range done."""
    pending = store_format.read_pending(directory)
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
    array = store_format.open_array(directory)
    try:
        array[..., start:stop, :].write(np.asarray(predictions, pending["dtype"])).result()
    except ValueError as e:  # tensorstore's write errors carry the OS error code
        message = f"could not write rows [{start}, {stop}) of the teacher store {directory}: {e}"
        code = error_code(e)
        raise (OSError(code, message) if code is not None else OSError(message)) from e
    for s, e in store_format.chunk_ranges(stop - start, chunk_rows):
        atomic_write_text(store_format.marker(directory, start + s, start + e), "")


def commit(directory: str, statistics: Mapping[str, Any] | None = None) -> dict:
    """Writes the manifest (atomically) once every range is written; returns it."""
    pending = store_format.read_pending(directory)
    missing = missing_ranges(directory)
    if missing:
        raise StoreNotFoundError(f"{directory}: cannot commit, rows {missing[:5]}... not written")
    manifest = {
        **pending,
        "statistics": store_format.jsonable(dict(statistics or {})),
        "chunk_crc32c": store_format.chunk_checksums(directory, pending),
        "committed": time.time(),
    }
    manifest["manifest_sha256"] = store_format.manifest_digest(
        manifest
    )  # catches edits and bit rot
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
        self._loaded: np.ndarray | None = None

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
        """The whole store in memory, read once per opened store and then shared (read-only):
        every student of a cell and its rejection scores use the same array."""
        if self._loaded is None:
            self._loaded = self[...]
            self._loaded.setflags(write=False)
        return self._loaded


def open_store(
    directory: str,
    fingerprint: Mapping[str, Any],
    *,
    shape: Sequence[int] | None = None,
    dtype: str | None = None,
    cache_bytes: int = 256 << 20,
) -> TeacherStore:
    """Opens a complete store made for ``fingerprint`` (and ``shape`` / ``dtype`` if given).

    ``cache_bytes`` bounds tensorstore's cache of decoded (checksum-verified) chunks, so
    shuffled reads do not decode the same chunk again and again.

    Raises:
      StoreNotFoundError: nothing committed in ``directory``.
      StoreMismatchError: made for other inputs; the message names each differing field.
      StoreCorruptError: the manifest or a chunk is damaged, missing or swapped.
    """
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        raise StoreNotFoundError(f"no complete teacher store in {directory} (no {MANIFEST})")
    manifest = store_format.read_json(path)
    if manifest.get("manifest_sha256") != store_format.manifest_digest(manifest):
        raise StoreCorruptError(f"{path} does not match its own checksum (edited or damaged)")
    expected = {
        **store_format.jsonable(dict(fingerprint)),
        "library_version": __version__,
        **({"shape": list(map(int, shape))} if shape is not None else {}),
        **({"dtype": np.dtype(dtype).name} if dtype is not None else {}),
    }
    stored = {
        **manifest["fingerprint"],
        **{k: manifest[k] for k in ("library_version", "shape", "dtype") if k in expected},
    }
    differing = store_format.differences(expected, stored)
    if differing:
        details = "; ".join(
            f"{k}: stored {stored.get(k)!r}, expected {expected.get(k)!r}" for k in differing
        )
        raise StoreMismatchError(f"teacher store {directory} does not match: {details}")
    array = store_format.open_array(
        directory, open=True, context=ts.Context({"cache_pool": {"total_bytes_limit": cache_bytes}})
    )
    if list(array.shape) != manifest["shape"] or array.dtype.numpy_dtype != np.dtype(
        manifest["dtype"]
    ):
        raise StoreCorruptError(
            f"{directory}: {ARRAY} is {list(array.shape)} {array.dtype}, "
            f"its manifest says {manifest['shape']} {manifest['dtype']}"
        )
    sums = store_format.chunk_checksums(directory, manifest)
    bad = [i for i, (a, b) in enumerate(zip(sums, manifest["chunk_crc32c"], strict=True)) if a != b]
    if bad:
        raise StoreCorruptError(
            f"{directory}: chunks {bad[:10]} are not the chunks that were committed "
            "(changed, truncated or swapped); recompute the store"
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
      process_index, process_count: this writer fills every ``process_count``-th chunk
        range (see :func:`missing_ranges`); only process 0 commits, once all ranges are
        done (it returns ``None`` while others are unfinished: rerun it, or call
        :func:`commit` later). Writers may start in any order or at the same time.
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index={process_index} must be in [0, process_count={process_count})"
        )
    for attempt in range(2):
        try:
            return open_store(directory, fingerprint, shape=out_shape)
        except StoreCorruptError as e:
            logging.warning("%s; recomputing the store", e)
            _discard(directory)  # range markers may vouch for the damaged chunks
        except (StoreNotFoundError, StoreMismatchError):
            pass  # new, made for other inputs (prepare replaces it), or unfinished
        prepare(directory, shape=out_shape, fingerprint=fingerprint, chunk_rows=chunk_rows)
        try:
            if not _fill(directory, predict, batch_size, process_index, process_count):
                return None  # other writers' ranges are still missing, or not process 0
            # The statistics need every prediction; this read also verifies every chunk.
            pending = store_format.read_pending(directory)
            full = TeacherStore(
                directory, {**pending, "statistics": {}}, store_format.open_array(directory)
            )
            predictions = full.load()
        except StoreCorruptError as e:  # a damaged pending store: start it over, once
            if attempt:
                raise
            logging.warning("%s; recomputing the store", e)
            _discard(directory)
            continue
        commit(directory, statistics(predictions) if statistics else None)
        return open_store(directory, fingerprint, shape=out_shape)
    raise AssertionError("unreachable: the second attempt returns or raises")


def _fill(directory, predict, batch_size, process_index, process_count) -> bool:
    """Writes this writer's missing ranges; True if the store is then ready to commit."""
    mine = missing_ranges(directory, process_index=process_index, process_count=process_count)
    t0, done, total = time.time(), 0, sum(e - s for s, e in mine)
    for start, stop in mine:
        parts = []
        for b in range(start, stop, batch_size):
            parts.append(np.asarray(predict(np.arange(b, min(b + batch_size, stop)))))
        write_range(directory, start, np.concatenate(parts, axis=-2))
        done += stop - start
        rate = done / max(time.time() - t0, 1e-9)
        logging.vlog(1, "teacher store %s: %d/%d rows (%.0f rows/s)", directory, done, total, rate)
    return process_index == 0 and not missing_ranges(directory)


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
