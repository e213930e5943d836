"""kd_regression.teacher_store: round trip, fingerprints, crashes, damage, parallel writers."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorstore as ts

from kd_regression import __version__, teacher_store

FINGERPRINT = {"dataset": "sinusoid", "seed": 3, "teacher": {"hidden": (64, 64)}, "noise": 0.2}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _predictions(shape=(2, 7, 3), dtype=np.float32):
    return np.random.default_rng(0).normal(size=shape).astype(dtype)


def _chunk_files(directory):
    base = os.path.join(directory, teacher_store.ARRAY, "c")
    return sorted(os.path.join(r, f) for r, _, fs in os.walk(base) for f in fs)


@pytest.mark.parametrize(
    "shape, dtype, chunk_rows", [((2, 7, 3), np.float32, 3), ((5, 1), np.float64, 8192)]
)
def test_round_trip(tmp_path, shape, dtype, chunk_rows):
    directory = str(tmp_path / "store")
    preds = _predictions(shape, dtype)
    teacher_store.write(directory, preds, FINGERPRINT, {"eta": 1.5}, chunk_rows=chunk_rows)
    store = teacher_store.open_store(directory, FINGERPRINT)
    assert store.shape == shape and store.dtype == dtype and store.statistics == {"eta": 1.5}
    np.testing.assert_array_equal(store.load(), preds)
    # Read once per opened store, then shared read-only (a cell's students all use it).
    assert store.load() is store.load() and not store.load().flags.writeable
    index = np.array([4, 0, 2])
    np.testing.assert_array_equal(store.rows(index), preds[..., index, :])
    # A tuple and its list are the same fingerprint (compared after a JSON round trip).
    again = teacher_store.open_store(directory, {**FINGERPRINT, "teacher": {"hidden": [64, 64]}})
    np.testing.assert_array_equal(again.load(), preds)
    manifest = json.loads((tmp_path / "store" / teacher_store.MANIFEST).read_text())
    assert manifest["shape"] == list(shape) and manifest["dtype"] == np.dtype(dtype).name
    assert manifest["library_version"] == __version__


def test_opens_with_plain_tensorstore(tmp_path):
    preds = _predictions((2, 10, 3))
    teacher_store.write(str(tmp_path), preds, FINGERPRINT, chunk_rows=4)
    path = str(tmp_path / teacher_store.ARRAY)
    array = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": path}}).result()
    np.testing.assert_array_equal(array.read().result(), preds)


def test_without_manifest_is_not_found(tmp_path):
    with pytest.raises(teacher_store.StoreNotFoundError):
        teacher_store.open_store(str(tmp_path), FINGERPRINT)
    directory = str(tmp_path / "s")
    teacher_store.prepare(directory, shape=(6, 2), fingerprint=FINGERPRINT, chunk_rows=2)
    teacher_store.write_range(directory, 0, np.ones((2, 2), np.float32))  # partly written
    with pytest.raises(FileNotFoundError, match="no complete teacher store"):
        teacher_store.open_store(directory, FINGERPRINT)
    with pytest.raises(teacher_store.StoreNotFoundError, match="cannot commit"):
        teacher_store.commit(directory)
    assert teacher_store.missing_ranges(directory) == [(2, 4), (4, 6)]


@pytest.mark.parametrize(
    "changed, field",
    [({"seed": 4}, "seed"), ({"teacher": {"hidden": [64, 32]}}, "teacher"), ({"x": 1}, "x")],
)
def test_stale_fingerprint_refused_naming_the_field(tmp_path, changed, field):
    teacher_store.write(str(tmp_path), _predictions(), FINGERPRINT)
    with pytest.raises(teacher_store.StoreMismatchError, match=f"{field}: stored") as info:
        teacher_store.open_store(str(tmp_path), {**FINGERPRINT, **changed})
    others = set(FINGERPRINT) - {field}
    assert not any(f"{k}: stored" in str(info.value) for k in others)


def test_numpy_scalars_match_python_numbers(tmp_path):
    written = {**FINGERPRINT, "seed": np.int64(3), "noise": np.float32(0.25)}
    teacher_store.write(str(tmp_path), _predictions(), written)
    teacher_store.open_store(str(tmp_path), {**FINGERPRINT, "seed": 3, "noise": 0.25})


def test_rewrite_with_new_fingerprint_replaces_store(tmp_path):
    directory = str(tmp_path)
    teacher_store.write(directory, _predictions(), FINGERPRINT)
    new = _predictions((2, 8, 3)) + 1
    teacher_store.write(directory, new, {**FINGERPRINT, "seed": 4})
    store = teacher_store.open_store(directory, {**FINGERPRINT, "seed": 4})
    np.testing.assert_array_equal(store.load(), new)
    with pytest.raises(teacher_store.StoreMismatchError, match="seed"):
        teacher_store.open_store(directory, FINGERPRINT)


def test_write_range_validates(tmp_path):
    directory = str(tmp_path)
    teacher_store.prepare(directory, shape=(2, 10, 1), fingerprint=FINGERPRINT, chunk_rows=4)
    with pytest.raises(ValueError, match="aligned"):
        teacher_store.write_range(directory, 2, np.zeros((2, 4, 1), np.float32))
    with pytest.raises(ValueError, match="shape"):
        teacher_store.write_range(directory, 0, np.zeros((1, 4, 1), np.float32))
    with pytest.raises(ValueError, match="finite"):
        teacher_store.write_range(directory, 0, np.full((2, 4, 1), np.nan, np.float32))
    teacher_store.write_range(directory, 8, np.zeros((2, 2, 1), np.float32))  # the last chunk


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_chunk_is_detected(tmp_path, damage):
    directory = str(tmp_path)
    teacher_store.write(directory, _predictions((2, 12, 3)), FINGERPRINT, chunk_rows=4)
    victim = _chunk_files(directory)[1]
    data = open(victim, "rb").read()
    if damage == "truncate":
        open(victim, "wb").write(data[:-7])
    elif damage == "flip":
        open(victim, "wb").write(data[:10] + bytes([data[10] ^ 0xFF]) + data[11:])
    else:
        os.remove(victim)
    # Caught at open (chunk checksums in the manifest) or at the latest on reading.
    with pytest.raises(teacher_store.StoreCorruptError):
        teacher_store.open_store(directory, FINGERPRINT).load()


def test_chunk_deleted_after_open_is_detected_on_read(tmp_path):
    teacher_store.write(str(tmp_path), _predictions((2, 12, 3)), FINGERPRINT, chunk_rows=4)
    store = teacher_store.open_store(str(tmp_path), FINGERPRINT)
    os.remove(_chunk_files(str(tmp_path))[2])
    store.rows(np.array([0, 1]))  # an intact chunk still reads
    with pytest.raises(teacher_store.StoreCorruptError, match="missing"):
        store.rows(np.array([9]))


_WRITER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from kd_regression import teacher_store
    directory, index, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    delay, log = float(sys.argv[4]), sys.argv[5]
    x = np.arange(2 * 40 * 1, dtype=np.float32).reshape(2, 40, 1)
    def predict(i):
        time.sleep(delay)  # a slow teacher, so the test can kill the writer mid-way
        with open(log, "a") as f:
            f.write(f"{i[0]} {i[-1] + 1}\\n")
        return 2 * x[:, i]
    teacher_store.compute(directory, predict, fingerprint={"f": 1}, out_shape=(2, 40, 1),
                          statistics=lambda p: {"max": float(p.max())}, batch_size=4,
                          chunk_rows=8, process_index=index, process_count=count)
    """
)


def _writer(directory, index=0, count=1, delay=0.0, log=os.devnull):
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, directory, str(index), str(count), str(delay), log],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )


EXPECTED = 2 * np.arange(80, dtype=np.float32).reshape(2, 40, 1)


def test_killed_writer_leaves_nothing_usable_and_rerun_completes(tmp_path):
    directory = str(tmp_path / "s")
    proc = _writer(directory, delay=0.3)
    deadline = time.time() + 120
    while time.time() < deadline and not (
        os.path.isdir(os.path.join(directory, teacher_store.RANGES))
        and os.listdir(os.path.join(directory, teacher_store.RANGES))
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = os.listdir(os.path.join(directory, teacher_store.RANGES))
    assert 1 <= len(done) < 5  # killed mid-way
    with pytest.raises(teacher_store.StoreNotFoundError):
        teacher_store.open_store(directory, {"f": 1})
    rerun = _writer(directory)
    assert rerun.wait(120) == 0, rerun.stderr.read().decode()[-2000:]
    store = teacher_store.open_store(directory, {"f": 1})
    np.testing.assert_array_equal(store.load(), EXPECTED)
    assert store.statistics == {"max": float(EXPECTED.max())}


def _computed_rows(log):
    rows = []
    for line in open(log).read().split():
        rows.append(int(line))
    pairs = list(zip(rows[::2], rows[1::2], strict=True))
    return sorted(r for a, b in pairs for r in range(a, b))


@pytest.mark.parametrize("stagger", [0.0, 1.5])
@pytest.mark.slow
def test_parallel_writers_fill_disjoint_ranges(tmp_path, stagger):
    # Started together (both create the store) or one after the other has begun.
    directory, logs = str(tmp_path / "s"), [str(tmp_path / f"log{i}") for i in (0, 1)]
    procs = [_writer(directory, index=0, count=2, delay=0.05, log=logs[0])]
    time.sleep(stagger)
    procs.append(_writer(directory, index=1, count=2, delay=0.05, log=logs[1]))
    for p in procs:
        assert p.wait(120) == 0, p.stderr.read().decode()[-2000:]
    rows = [_computed_rows(log) for log in logs]
    assert sorted(rows[0] + rows[1]) == list(range(40))  # every row once, by one writer
    assert rows[0] == [r for r in range(40) if (r // 8) % 2 == 0]  # chunks 0, 2, 4
    if not os.path.exists(os.path.join(directory, teacher_store.MANIFEST)):
        # Process 1 finished last: process 0 commits when it is run again.
        assert _writer(directory, index=0, count=2, log=logs[0]).wait(120) == 0
        assert sorted(_computed_rows(logs[0])) == rows[0]  # nothing computed twice
    np.testing.assert_array_equal(teacher_store.open_store(directory, {"f": 1}).load(), EXPECTED)


def test_parity_check(tmp_path):
    x = np.random.default_rng(1).normal(size=(3, 50, 2)).astype(np.float32)
    store = teacher_store.compute(
        str(tmp_path),
        lambda i: 3 * x[:, i],
        fingerprint={"f": 1},
        out_shape=x.shape,
        chunk_rows=16,
    )
    np.testing.assert_array_equal(store.load(), 3 * x)
    assert teacher_store.parity_check(store, lambda i: 3 * x[:, i], sample_size=20) == 0.0
    with pytest.raises(teacher_store.StoreMismatchError, match="differs"):
        teacher_store.parity_check(store, lambda i: 3 * x[:, i] + 1e-3, sample_size=20)


def test_compute_reuses_a_complete_store(tmp_path):
    calls = []

    def predict(index):
        calls.append(len(index))
        return np.ones((len(index), 1), np.float32)

    for _ in range(2):
        teacher_store.compute(str(tmp_path), predict, fingerprint={"f": 1}, out_shape=(10, 1))
    assert calls == [10]


def test_compute_replaces_a_damaged_store(tmp_path):
    x = np.arange(24, dtype=np.float32).reshape(12, 2)
    kwargs = dict(fingerprint={"f": 1}, out_shape=x.shape, chunk_rows=4)
    teacher_store.compute(str(tmp_path), lambda i: x[i], **kwargs)
    os.remove(_chunk_files(str(tmp_path))[1])
    store = teacher_store.compute(str(tmp_path), lambda i: x[i], **kwargs)
    np.testing.assert_array_equal(store.load(), x)


def test_damaged_pending_store_is_started_over(tmp_path):
    x = np.arange(24, dtype=np.float32).reshape(12, 2)
    directory = str(tmp_path / "s")
    teacher_store.prepare(directory, shape=x.shape, fingerprint={"f": 1}, chunk_rows=4)
    teacher_store.write_range(directory, 0, x[:4])
    teacher_store.write_range(directory, 4, x[4:8])
    victim = _chunk_files(directory)[1]
    open(victim, "wb").write(open(victim, "rb").read()[:-5])  # marked, then damaged
    store = teacher_store.compute(
        directory, lambda i: x[i], fingerprint={"f": 1}, out_shape=x.shape, chunk_rows=4
    )
    np.testing.assert_array_equal(store.load(), x)


def test_damaged_manifest_is_detected_and_recomputed(tmp_path):
    x = np.arange(24, dtype=np.float32).reshape(12, 2)
    kwargs = dict(fingerprint={"f": 1}, out_shape=x.shape, chunk_rows=4)
    teacher_store.compute(str(tmp_path), lambda i: x[i], statistics=lambda p: {"d": 0.25}, **kwargs)
    path = tmp_path / teacher_store.MANIFEST
    path.write_text(path.read_text().replace("0.25", "0.35"))  # silently wrong statistics
    with pytest.raises(teacher_store.StoreCorruptError, match="checksum"):
        teacher_store.open_store(str(tmp_path), {"f": 1})
    path.write_bytes(b"\xff" + path.read_bytes()[1:])  # not even JSON
    with pytest.raises(teacher_store.StoreCorruptError, match="unreadable"):
        teacher_store.open_store(str(tmp_path), {"f": 1})
    store = teacher_store.compute(
        str(tmp_path), lambda i: x[i], statistics=lambda p: {"d": 0.25}, **kwargs
    )
    assert store.statistics == {"d": 0.25}


def test_swapped_chunks_are_detected(tmp_path):
    teacher_store.write(str(tmp_path), _predictions((2, 12, 3)), FINGERPRINT, chunk_rows=4)
    first, second = _chunk_files(str(tmp_path))[:2]
    a, b = open(first, "rb").read(), open(second, "rb").read()
    open(first, "wb").write(b)
    open(second, "wb").write(a)
    with pytest.raises(teacher_store.StoreCorruptError, match=r"chunks \[0, 1\]"):
        teacher_store.open_store(str(tmp_path), FINGERPRINT)


def test_shape_dtype_and_version_are_part_of_the_match(tmp_path, monkeypatch):
    teacher_store.write(str(tmp_path), _predictions((2, 7, 3)), FINGERPRINT)
    with pytest.raises(teacher_store.StoreMismatchError, match=r"shape: stored \[2, 7, 3\]"):
        teacher_store.open_store(str(tmp_path), FINGERPRINT, shape=(2, 8, 3))
    with pytest.raises(teacher_store.StoreMismatchError, match="dtype: stored 'float32'"):
        teacher_store.open_store(str(tmp_path), FINGERPRINT, dtype="float64")
    monkeypatch.setattr(teacher_store, "__version__", "99.0")
    with pytest.raises(teacher_store.StoreMismatchError, match="library_version"):
        teacher_store.open_store(str(tmp_path), FINGERPRINT)


def test_never_replaces_a_directory_that_is_not_a_store(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(teacher_store.StoreError, match="not part of a teacher store"):
        teacher_store.write(str(tmp_path), _predictions(), FINGERPRINT)
    assert (tmp_path / "thesis.tex").read_text() == "precious"
