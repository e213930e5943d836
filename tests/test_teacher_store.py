"""Tests for kd_regression.teacher_store: round trip, completeness and fingerprints."""

import json
import os

import numpy as np
import pytest

from kd_regression import __version__, teacher_store

FINGERPRINT = {"dataset": "sinusoid", "seed": 3, "teacher": {"hidden": (64, 64)}, "noise": 0.2}


def _predictions(shape=(2, 7, 3), dtype=np.float32):
    return np.random.default_rng(0).normal(size=shape).astype(dtype)


@pytest.mark.parametrize("shape, dtype", [((2, 7, 3), np.float32), ((5, 1), np.float64)])
def test_round_trip(tmp_path, shape, dtype):
    directory = str(tmp_path / "store")  # created by write
    preds = _predictions(shape, dtype)
    teacher_store.write(directory, preds, FINGERPRINT)
    got = teacher_store.read(directory, FINGERPRINT)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, preds)
    # The fingerprint is compared after a JSON round trip: a tuple matches its list.
    np.testing.assert_array_equal(
        teacher_store.read(directory, {**FINGERPRINT, "teacher": {"hidden": [64, 64]}}), preds
    )
    with open(os.path.join(directory, teacher_store.MANIFEST)) as f:
        manifest = json.load(f)
    assert manifest["shape"] == list(shape) and manifest["dtype"] == np.dtype(dtype).name
    assert manifest["library_version"] == __version__
    assert sorted(os.listdir(directory)) == sorted(
        [teacher_store.MANIFEST, teacher_store.PREDICTIONS]
    )


def test_read_without_manifest_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        teacher_store.read(str(tmp_path), FINGERPRINT)
    np.save(tmp_path / teacher_store.PREDICTIONS, _predictions())  # predictions alone
    with pytest.raises(FileNotFoundError):
        teacher_store.read(str(tmp_path), FINGERPRINT)


@pytest.mark.parametrize(
    "changed, field",
    [
        ({"seed": 4}, "seed"),
        ({"teacher": {"hidden": [64, 32]}}, "teacher"),
        ({"extra": 1}, "extra"),
        ({"noise": None}, "noise"),
    ],
)
def test_fingerprint_mismatch_names_field(tmp_path, changed, field):
    teacher_store.write(str(tmp_path), _predictions(), FINGERPRINT)
    with pytest.raises(teacher_store.StoreMismatchError, match=field) as excinfo:
        teacher_store.read(str(tmp_path), {**FINGERPRINT, **changed})
    assert isinstance(excinfo.value, ValueError)
    others = set(FINGERPRINT) - {field}
    assert not any(f"{k}:" in str(excinfo.value) for k in others)


def test_missing_field_is_a_mismatch(tmp_path):
    teacher_store.write(str(tmp_path), _predictions(), FINGERPRINT)
    fingerprint = {k: v for k, v in FINGERPRINT.items() if k != "seed"}
    with pytest.raises(teacher_store.StoreMismatchError, match="seed"):
        teacher_store.read(str(tmp_path), fingerprint)


@pytest.mark.parametrize("shape, dtype", [((2, 6, 3), np.float32), ((2, 7, 3), np.float64)])
def test_predictions_not_matching_manifest_raise(tmp_path, shape, dtype):
    teacher_store.write(str(tmp_path), _predictions(), FINGERPRINT)
    np.save(tmp_path / teacher_store.PREDICTIONS, _predictions(shape, dtype))
    with pytest.raises(teacher_store.StoreMismatchError, match="manifest says"):
        teacher_store.read(str(tmp_path), FINGERPRINT)


def test_rewrite_removes_old_manifest_first(tmp_path, monkeypatch):
    directory = str(tmp_path)
    teacher_store.write(directory, _predictions(), FINGERPRINT)

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(teacher_store.np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        teacher_store.write(directory, _predictions((2, 8, 3)), {**FINGERPRINT, "seed": 4})
    monkeypatch.undo()
    assert not os.path.exists(os.path.join(directory, teacher_store.MANIFEST))
    assert os.listdir(directory) == [teacher_store.PREDICTIONS]  # no temporary file left
    with pytest.raises(FileNotFoundError):
        teacher_store.read(directory, FINGERPRINT)


def test_rewrite_replaces_store(tmp_path):
    directory = str(tmp_path)
    teacher_store.write(directory, _predictions(), FINGERPRINT)
    new = _predictions((2, 8, 3)) + 1
    teacher_store.write(directory, new, {**FINGERPRINT, "seed": 4})
    np.testing.assert_array_equal(teacher_store.read(directory, {**FINGERPRINT, "seed": 4}), new)
    with pytest.raises(teacher_store.StoreMismatchError, match="seed"):
        teacher_store.read(directory, FINGERPRINT)


def test_numpy_scalars_in_fingerprint_match_python_numbers(tmp_path):
    written = {**FINGERPRINT, "seed": np.int64(3), "noise": np.float32(0.25)}
    teacher_store.write(str(tmp_path), _predictions(), written)
    expected = {**FINGERPRINT, "seed": 3, "noise": 0.25}
    np.testing.assert_array_equal(teacher_store.read(str(tmp_path), expected), _predictions())
