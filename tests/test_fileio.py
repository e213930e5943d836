"""kd_regression.fileio: a failed write leaves the old file and no temporary behind."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from kd_regression import fileio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_atomic_write_replaces(tmp_path):
    path = tmp_path / "a.txt"
    fileio.atomic_write_text(str(path), "old")
    fileio.atomic_write_text(str(path), "new")
    assert path.read_text() == "new"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_a_written_file_has_a_new_files_mode_not_the_temporarys(tmp_path):
    """mkstemp's temporary is 0600; results, summaries and exports must be readable as any
    file the user's umask allows."""
    path = tmp_path / "f.txt"
    fileio.atomic_write_text(str(path), "x")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert (path.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    fileio.atomic_write_text(str(path), "old")

    def crash(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        fileio.atomic_write(str(path), crash)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_a_failed_write_names_the_file(tmp_path):
    path = tmp_path / "fits.npz"

    def full(f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as the OS raises it: no name

    with pytest.raises(OSError) as info:
        fileio.atomic_write(str(path), full)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert str(info.value) == f"[Errno 28] No space left on device: '{path}'"
    assert os.listdir(tmp_path) == []


HOLD = textwrap.dedent(
    """
    import sys, time
    from kd_regression import fileio
    lock = fileio.DirectoryLock(sys.argv[1])
    print("locked", flush=True)
    time.sleep(600)
    """
)


def test_lock_refuses_a_second_holder_naming_the_first_and_dies_with_its_process(tmp_path):
    """A real second process holds the lock; killed with SIGKILL, it leaves no stale lock."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "w")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(fileio.DirectoryLockedError) as info:
            fileio.DirectoryLock(str(tmp_path / "w"))
        message = str(info.value)
        assert message.startswith(f"{tmp_path / 'w'} is in use by another run (pid {holder.pid} ")
        assert f"on host {socket.gethostname()}, started " in message
        assert info.value.holder["pid"] == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with fileio.DirectoryLock(str(tmp_path / "w")) as lock:  # the kernel dropped it
        assert json.loads(open(lock.path).read())["pid"] == os.getpid()
    assert os.listdir(tmp_path / "w") == [fileio.LOCK_FILE]
