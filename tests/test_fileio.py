"""kd_regression.fileio: a failed write leaves the old file and no temporary behind."""

import os

import pytest

from kd_regression import fileio


def test_atomic_write_replaces(tmp_path):
    path = tmp_path / "a.txt"
    fileio.atomic_write_text(str(path), "old")
    fileio.atomic_write_text(str(path), "new")
    assert path.read_text() == "new"
    assert os.listdir(tmp_path) == ["a.txt"]


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
