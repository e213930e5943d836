"""Metric writers: a readable log, TensorBoard event files and ``metrics.jsonl``.

The library writes scalars only (train loss and batch metrics per log interval, the
validation loss per evaluation), through CLU's metric writers, so any CLU writer can
stand in for :func:`make_writer`'s.
"""

from __future__ import annotations

import contextlib
import json
import logging as std_logging
import os
from collections.abc import Mapping
from typing import Any

import jax
from absl import logging

from kd_regression.fileio import with_filename

__all__ = ["JsonlWriter", "make_writer", "verbose"]


def verbose() -> bool:
    """Whether absl's logger shows verbosity-1 lines (``--verbose``, ``--verbosity=1``):
    then every fit logs each log step and its metrics."""
    return logging.get_absl_logger().isEnabledFor(std_logging.DEBUG)


class JsonlWriter:
    """Appends one JSON line per ``write_scalars`` call: ``{"step": ..., name: value}``."""

    def __init__(self, path: str):
        self._path = path
        self._file = open(path, "a", encoding="utf-8")  # closed by close()

    @contextlib.contextmanager
    def _naming_errors(self):
        try:
            yield
        except OSError as e:  # a full disk: say which file
            raise with_filename(e, self._path) from e

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        with self._naming_errors():
            row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
            self._file.write(json.dumps(row) + "\n")

    def flush(self):
        with self._naming_errors():
            self._file.flush()

    def close(self):
        with self._naming_errors():
            self._file.close()


def make_writer(logdir: str | None, *, echo: bool | None = None) -> Any:
    """CLU metric writers: TensorBoard events and ``metrics.jsonl`` in ``logdir``, and, if
    ``echo``, every scalar in the log too (by default when :func:`verbose`).

    Only process 0 writes files; other processes only log, and only if ``echo``.
    """
    # Imported here: clu.metric_writers imports TensorFlow (for its summary writer), which
    # costs seconds and is not needed by the rest of the library.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    from clu import metric_writers

    echo = verbose() if echo is None else echo
    writers = [metric_writers.LoggingWriter()] if echo else []
    if logdir is not None and jax.process_index() == 0:
        os.makedirs(logdir, exist_ok=True)
        writers.append(metric_writers.SummaryWriter(logdir))
        writers.append(JsonlWriter(os.path.join(logdir, "metrics.jsonl")))
    return metric_writers.MultiWriter(writers)
