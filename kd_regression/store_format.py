"""The files of a teacher store on disk, and the store's errors.

A store is a directory: ``predictions.zarr`` (the zarr v3 array, each chunk with a crc32c
checksum), ``pending.json`` (what is being written), ``ranges/S-E.done`` (one marker per
written row range) and ``manifest.json`` (written last). This module names those files and
reads them; :mod:`kd_regression.teacher_store` writes, commits and opens stores with it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import tensorstore as ts

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


def jsonable(value: Any) -> Any:
    # A JSON round trip makes tuples lists and NumPy scalars numbers, so comparisons are
    # like for like whatever types the caller used.
    def default(obj):
        return obj.tolist() if hasattr(obj, "tolist") else str(obj)

    return json.loads(json.dumps(value, sort_keys=True, default=default))


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as e:  # ValueError covers JSON and UTF-8 decoding errors
        raise StoreCorruptError(f"{path} is unreadable: {e}") from e
    if not isinstance(value, dict):
        raise StoreCorruptError(f"{path} is not a JSON object")
    return value


def differences(expected: Mapping, stored: Mapping) -> list[str]:
    return sorted(k for k in set(expected) | set(stored) if expected.get(k) != stored.get(k))


def array_spec(directory: str) -> dict:
    return {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": os.path.join(directory, ARRAY)},
    }


def open_array(directory: str, **kwargs) -> ts.TensorStore:
    try:
        return ts.open(array_spec(directory), **kwargs).result()
    except ValueError as e:  # tensorstore's errors for unreadable metadata or files
        raise StoreCorruptError(f"{directory}: cannot open {ARRAY}: {e}") from e


def chunk_ranges(n: int, chunk_rows: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk_rows, n)) for s in range(0, n, chunk_rows)]


def pending_or_none(directory: str) -> dict | None:
    try:
        return read_pending(directory)
    except (StoreNotFoundError, StoreCorruptError):
        return None


def read_pending(directory: str) -> dict:
    path = os.path.join(directory, PENDING)
    if not os.path.exists(path):
        raise StoreNotFoundError(
            f"{directory}: no store being written (no {PENDING}); call prepare"
        )
    return read_json(path)


def marker(directory: str, start: int, stop: int) -> str:
    return os.path.join(directory, RANGES, f"{start}-{stop}.done")


def chunk_path(directory: str, ndim: int, chunk: int) -> str:
    # zarr v3 default chunk keys: c/<i>/<j>/...; only the row axis has more than one chunk.
    parts = ["0"] * (ndim - 2) + [str(chunk), "0"]
    return os.path.join(directory, ARRAY, "c", *parts)


def chunk_checksums(directory: str, manifest: Mapping[str, Any]) -> list[str]:
    """Each chunk file's trailing crc32c (zarr's codec appends it): 4 bytes read per chunk.

    Recorded at commit and compared at open, so a chunk file that went missing, or one
    that was swapped with another chunk or store, is caught; tensorstore verifies each
    chunk's bytes against that same checksum as it reads them.
    """
    ndim, n = len(manifest["shape"]), manifest["shape"][-2]
    sums = []
    for i in range(len(chunk_ranges(n, manifest["chunk_rows"]))):
        path = chunk_path(directory, ndim, i)
        try:
            with open(path, "rb") as f:
                f.seek(-4, os.SEEK_END)
                sums.append(f.read(4).hex())
        except OSError as e:
            raise StoreCorruptError(f"{directory}: chunk {i} ({path}) is unreadable: {e}") from e
    return sums


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
