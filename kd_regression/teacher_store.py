"""Teacher predictions computed once, stored by example index, read by the student pipeline.

A store is a directory holding ``predictions.npy`` (``[..., n, d]``: rows are the dataset's
stable example indices, optional leading axes such as a seed population) and
``manifest.json`` (a fingerprint of what produced it). Both are written to temporary names
and renamed; the manifest last, so a directory without one is incomplete and never read.

This is the first, in-memory-sized version; the interface (``write``, ``read`` with an
expected fingerprint) is what the student pipeline relies on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from kd_regression import __version__
from kd_regression.fileio import atomic_write, atomic_write_text

PREDICTIONS = "predictions.npy"
MANIFEST = "manifest.json"


class StoreMismatchError(ValueError):
    """The store was produced by another teacher, dataset or configuration."""


def _jsonable(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    # A JSON round trip makes tuples lists etc., so the comparison on read is like for like.
    return json.loads(json.dumps(dict(fingerprint), sort_keys=True, default=_json_default))


def _json_default(obj: Any) -> Any:
    # NumPy scalars and arrays compare equal to the Python numbers and lists they hold.
    return obj.tolist() if hasattr(obj, "tolist") else str(obj)


def write(directory: str, predictions: np.ndarray, fingerprint: Mapping[str, Any]) -> None:
    """Writes ``predictions`` and a manifest with ``fingerprint`` (JSON-serialisable)."""
    predictions = np.asarray(predictions)
    os.makedirs(directory, exist_ok=True)
    manifest_path = os.path.join(directory, MANIFEST)
    if os.path.exists(manifest_path):
        os.unlink(manifest_path)  # the old predictions are no longer vouched for
    atomic_write(os.path.join(directory, PREDICTIONS), lambda f: np.save(f, predictions))
    manifest = {
        "fingerprint": _jsonable(fingerprint),
        "shape": list(predictions.shape),
        "dtype": str(predictions.dtype),
        "library_version": __version__,
    }
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2))


def read(directory: str, fingerprint: Mapping[str, Any]) -> np.ndarray:
    """The stored predictions, if the store is complete and made for ``fingerprint``.

    Raises:
      FileNotFoundError: no complete store in ``directory``.
      StoreMismatchError: the stored fingerprint differs; the message names the fields.
    """
    manifest_path = os.path.join(directory, MANIFEST)
    if not os.path.exists(manifest_path):
        raise FileNotFoundError(f"no complete teacher store in {directory} (no {MANIFEST})")
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    expected, stored = _jsonable(fingerprint), manifest["fingerprint"]
    differing = sorted(k for k in set(expected) | set(stored) if expected.get(k) != stored.get(k))
    if differing:
        details = "; ".join(
            f"{k}: stored {stored.get(k)!r}, expected {expected.get(k)!r}" for k in differing
        )
        raise StoreMismatchError(f"teacher store {directory} does not match: {details}")
    predictions = np.load(os.path.join(directory, PREDICTIONS))
    if list(predictions.shape) != manifest["shape"] or str(predictions.dtype) != manifest["dtype"]:
        raise StoreMismatchError(
            f"teacher store {directory}: {PREDICTIONS} has shape {predictions.shape} "
            f"{predictions.dtype}, manifest says {manifest['shape']} {manifest['dtype']}"
        )
    return predictions
