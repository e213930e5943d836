"""Files a run writes: atomic writes that name the file when they fail, and a directory lock.

An atomic write leaves the old file or the new one, never half of one. The lock keeps a
second run out of a directory that one is writing, with an OS file lock: the kernel drops
it when its process ends in any way (also ``kill -9``), so no stale lock is ever left.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from typing import BinaryIO

import numpy as np

LOCK_FILE = ".lock"


_TENSORSTORE_ERRNO = re.compile(r"\[os_error_code='(\d+)'\]")


def error_code(error: BaseException) -> int | None:
    """The OS error code of ``error``: its errno, or the one TensorStore puts in the
    message of its ValueErrors (``[os_error_code='28']``)."""
    code = getattr(error, "errno", None)
    if code is None and (found := _TENSORSTORE_ERRNO.search(str(error))):
        code = int(found.group(1))
    return code if isinstance(code, int) else None


def with_filename(error: OSError, path: str) -> OSError:
    """``error`` again, with ``path`` as its file name (the OS's message often has none)."""
    if error.filename is not None:
        return error
    try:
        if error.errno is None:
            return type(error)(f"{error}: {path!r}")
        return type(error)(error.errno, error.strerror or str(error), path)
    except TypeError:  # a subclass with another constructor: as it is
        return error


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it: set and put back (at import, one thread)
    os.umask(mask)
    return mask


# mkstemp makes the temporary 0600; the file it becomes gets a new file's usual mode.
_FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: str, write: Callable[[BinaryIO], object]) -> None:
    """Calls ``write(f)`` on a temporary file beside ``path``, syncs it, renames it over.

    An OSError (a full disk, a quota) is raised naming ``path``; the temporary is removed.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".tmp")
    except OSError as e:
        raise with_filename(e, path) from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), _FILE_MODE)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        os.unlink(tmp)
        raise with_filename(e, path) from e
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_npz(path: str, **arrays) -> None:
    """``np.savez(path, **arrays)``, written whole or not at all (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: np.savez(f, **arrays))


class DirectoryLockedError(RuntimeError):
    """Another process holds the directory's lock; ``holder`` is what it wrote there."""

    def __init__(self, directory: str, holder: dict):
        self.directory, self.holder = directory, holder
        if holder:
            who = (
                f"pid {holder.get('pid')} on host {holder.get('host')}, started "
                f"{holder.get('started')}: {holder.get('command')}"
            )
        else:
            who = "a process that is just starting (it has not written who it is yet)"
        super().__init__(
            f"{directory} is in use by another run ({who}); wait for it to finish, or stop "
            "it, or use another directory. Two runs in one directory would mix their results"
        )


class DirectoryLock:
    """An exclusive lock on ``directory`` (created if missing) for this process.

    The lock file ``directory/.lock`` holds the holder's pid, host, start time and command
    line, for the error a second run gets. ``release`` (or the end of a ``with`` block, or
    the process) frees it; the file itself stays, harmless.
    """

    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        self.path = os.path.join(self.directory, LOCK_FILE)
        os.makedirs(self.directory, exist_ok=True)
        # Opened without truncating: a second run must read the holder's lines intact.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DirectoryLockedError(self.directory, holder) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor drops the lock

    def __enter__(self) -> DirectoryLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 1 << 16, 0).decode() or "{}")
    except ValueError:  # written half a moment ago
        return {}
