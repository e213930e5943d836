"""Metric writers: a readable log, TensorBoard event files and ``metrics.jsonl``.

The library writes scalars only (train loss and batch metrics per log interval, the
validation loss per evaluation) through one small interface, ``write_scalars(step,
mapping)``, ``flush()`` and ``close()`` (CLU's metric writers have it too, so any of them
can stand in for :func:`make_writer`'s). The event files are written with the
``tensorboard`` package's protos and record framing, without TensorFlow: importing it cost
every run seconds and hundreds of MB for a summary writer only.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging as std_logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging

from kd_regression.fileio import with_filename

__all__ = ["JsonlWriter", "LogWriter", "MultiWriter", "TensorBoardWriter", "make_writer", "verbose"]


def verbose() -> bool:
    """Whether absl's logger shows verbosity-1 lines (``--verbose``, ``--verbosity=1``):
    then every fit logs each log step and its metrics."""
    return logging.get_absl_logger().isEnabledFor(std_logging.DEBUG)


@contextlib.contextmanager
def _naming_errors(path: str):
    try:
        yield
    except OSError as e:  # a full disk: say which file
        raise with_filename(e, path) from e


class JsonlWriter:
    """Appends one JSON line per ``write_scalars`` call: ``{"step": ..., name: value}``."""

    def __init__(self, path: str):
        self.path = path
        self._file = open(path, "a", encoding="utf-8")  # closed by close()

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        with _naming_errors(self.path):
            row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
            self._file.write(json.dumps(row) + "\n")

    def flush(self):
        with _naming_errors(self.path):
            self._file.flush()

    def close(self):
        with _naming_errors(self.path):
            self._file.close()


_FILES = itertools.count()  # a new event file's number in this process


class TensorBoardWriter:
    """A TensorBoard event file in ``logdir``: scalars as float32 tensors of the scalars
    plugin, the records ``tf.summary.scalar`` writes, each written and flushed at once.

    Built from the ``tensorboard`` package's protos and record framing (length, masked
    CRC32C), not from its ``EventFileWriter`` or ``summary.Writer``: those open files
    through TensorFlow's file system whenever TensorFlow is installed, and importing it
    cost every run seconds and hundreds of MB.
    """

    def __init__(self, logdir: str):
        # Imported here: only a writer with a log directory needs them.
        from tensorboard.compat.proto import event_pb2
        from tensorboard.plugins.scalar import metadata
        from tensorboard.summary.writer.record_writer import RecordWriter
        from tensorboard.util import tensor_util

        self._event, self._tensor = event_pb2.Event, tensor_util.make_tensor_proto
        self._metadata = metadata.create_summary_metadata(display_name=None, description=None)
        # TensorBoard's file name: it finds event files by the "tfevents" in it.
        stamp = f"{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_FILES)}"
        name = f"events.out.tfevents.{stamp}"
        self.path = os.path.join(logdir, name)
        with _naming_errors(self.path):
            self._file = RecordWriter(open(self.path, "xb"))  # closed by close()
        self._write(self._event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event) -> None:
        with _naming_errors(self.path):
            self._file.write(event.SerializeToString())
            self._file.flush()

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        event = self._event(wall_time=time.time(), step=int(step))
        for name, value in scalars.items():
            tensor = self._tensor(np.float32(value))
            event.summary.value.add(tag=name, tensor=tensor, metadata=self._metadata)
        self._write(event)

    def flush(self):
        pass  # every event is flushed as it is written

    def close(self):
        with _naming_errors(self.path):
            self._file.close()


class LogWriter:
    """Every scalar in the log, one line per call: ``[step] name=value, ...``."""

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        text = ", ".join(f"{k}={float(v):g}" for k, v in scalars.items())
        logging.info("[%d] %s", int(step), text)

    def flush(self):
        pass

    def close(self):
        pass


class MultiWriter:
    """Each call passed on to every writer of ``writers``, in order."""

    def __init__(self, writers: list):
        self._writers = list(writers)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        for w in self._writers:
            w.write_scalars(step, scalars)

    def flush(self):
        for w in self._writers:
            w.flush()

    def close(self):
        for w in self._writers:
            w.close()


def make_writer(logdir: str | None, *, echo: bool | None = None) -> MultiWriter:
    """TensorBoard events and ``metrics.jsonl`` in ``logdir``, and, if ``echo``, every
    scalar in the log too (by default when :func:`verbose`).

    Only process 0 writes files; other processes only log, and only if ``echo``.
    """
    echo = verbose() if echo is None else echo
    writers: list = [LogWriter()] if echo else []
    if logdir is not None and jax.process_index() == 0:
        os.makedirs(logdir, exist_ok=True)
        writers.append(TensorBoardWriter(logdir))
        writers.append(JsonlWriter(os.path.join(logdir, "metrics.jsonl")))
    return MultiWriter(writers)
