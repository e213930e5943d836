"""kd_regression.checkpoints: a checkpoint that is damaged is set aside, never used."""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from kd_regression import checkpoints


def _items(value: float) -> dict:
    return {
        "state": {"w": jnp.arange(64, dtype=jnp.float32) * value, "key": jax.random.key(3)},
        "best": {"w": jnp.full((64,), value, jnp.float32), "key": jax.random.key(4)},
        "aux": {"since_best": 2, "stopped": False, "best_val": np.full((2,), np.inf)},
    }


def _saved(directory, steps) -> checkpoints.Checkpoints:
    ckpt = checkpoints.Checkpoints(str(directory), name="student")
    for step in steps:
        ckpt.save(step, _items(float(step)))
    ckpt.close(failed=False)
    return checkpoints.Checkpoints(str(directory), name="student")


def _assert_same(a, b):
    def host(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(x)

    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(host(x), host(y))


def _flip(path, where=0.5):
    data = bytearray(open(path, "rb").read())
    data[int(len(data) * where)] ^= 0x10
    with open(path, "wb") as f:
        f.write(data)


def test_round_trip_keeps_two_and_records_their_files(tmp_path):
    ckpt = _saved(tmp_path, [1, 2, 3])
    assert sorted(os.listdir(tmp_path)) == ["2", "2.files.json", "3", "3.files.json"]
    step, items = ckpt.restore(_items(0.0))
    ckpt.close(failed=False)
    assert step == 3 and ckpt.good_step == 3
    _assert_same(items, _items(3.0))
    record = json.loads((tmp_path / "3.files.json").read_text())
    assert "default/manifest.ocdbt" in record and all(len(v) == 64 for v in record.values())


@pytest.mark.parametrize(
    "damage",
    ["a data file", "the ocdbt manifest", "the checkpoint metadata", "a file removed"],
)
def test_damaged_latest_is_set_aside_and_the_one_before_used(tmp_path, caplog, damage):
    directory = tmp_path / "ckpt"
    ckpt = _saved(directory, [1, 2])
    step_dir = directory / "2"
    if damage == "a data file":
        data = sorted((step_dir / "default" / "ocdbt.process_0" / "d").iterdir())
        _flip(max(data, key=os.path.getsize))
    elif damage == "the ocdbt manifest":
        _flip(step_dir / "default" / "manifest.ocdbt")
    elif damage == "the checkpoint metadata":
        _flip(step_dir / "_CHECKPOINT_METADATA", 0.3)
    else:
        os.remove(step_dir / "default" / "_METADATA")
    with caplog.at_level(logging.WARNING):
        step, items = ckpt.restore(_items(0.0))
    ckpt.close(failed=False)
    assert step == 1
    _assert_same(items, _items(1.0))
    aside = tmp_path / "ckpt.damaged" / "2"
    assert aside.is_dir() and (tmp_path / "ckpt.damaged" / "2.files.json").exists()
    assert sorted(os.listdir(directory)) == ["1", "1.files.json"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"student: checkpoint {step_dir} has files that differ")
    assert warnings[0].endswith(f"set aside as {aside}; falling back to step 1")


def test_a_reader_skips_a_damaged_checkpoint_and_leaves_it_where_it_is(tmp_path, caplog):
    """restore(set_aside=False), as trained.load reads a finished workdir: the one before is
    used, the damaged one stays (a reader does not change the workdir), with a warning."""
    directory = tmp_path / "ckpt"
    ckpt = _saved(directory, [1, 2])
    _flip(directory / "2" / "default" / "manifest.ocdbt")
    with caplog.at_level(logging.WARNING):
        step, items = ckpt.restore(_items(0.0), set_aside=False)
    ckpt.close(failed=False)
    assert step == 1
    _assert_same(items, _items(1.0))
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no ckpt.damaged
    assert sorted(os.listdir(directory)) == ["1", "1.files.json", "2", "2.files.json"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].endswith("trying step 1"), warnings


def _record_removed(directory, step):
    """As if the run was killed between the commit and the record of the files."""
    os.remove(directory / f"{step}.files.json")


# orbax's threads report the failed read again on a closed event loop: expected here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_without_a_record_a_restore_error_is_caught_and_training_starts_over(tmp_path, caplog):
    ckpt = _saved(tmp_path / "ckpt", [5])
    _record_removed(tmp_path / "ckpt", 5)
    _flip(tmp_path / "ckpt" / "5" / "default" / "manifest.ocdbt")
    with caplog.at_level(logging.WARNING):
        assert ckpt.restore(_items(0.0)) is None
    ckpt.close(failed=False)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "checkpoint" in warning and "does not restore (ValueError: DATA_LOSS" in warning
    assert "tensorstore_spec" not in warning  # the long JSON spec is left out
    assert warning.endswith("; training from the start")
    assert (tmp_path / "ckpt.damaged" / "5").is_dir()
    assert os.listdir(tmp_path / "ckpt") == []


def test_without_a_record_arrays_that_differ_from_their_digest_are_refused(tmp_path, caplog):
    """Step 2 holds other best-state numbers than its digest says: the best entry is
    checked like the state (written here by orbax directly, with step 1's digests)."""
    directory = tmp_path / "ckpt"
    ckpt = _saved(directory, [1])
    digests = ckpt._manager.metadata(1).custom_metadata[checkpoints.DIGEST_KEY]
    ckpt.close(failed=False)
    tampered = {**_items(1.0), "best": _items(7.0)["best"]}
    with ocp.CheckpointManager(str(directory)) as manager:
        manager.save(
            2,
            args=ocp.args.StandardSave(tampered),
            custom_metadata={checkpoints.DIGEST_KEY: digests},
        )
    ckpt = checkpoints.Checkpoints(str(directory), name="teacher")
    with caplog.at_level(logging.WARNING):
        step, items = ckpt.restore(_items(0.0))
    ckpt.close(failed=False)
    assert step == 1
    _assert_same(items, _items(1.0))
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "does not match its digest (its entry best differs from what was saved)" in warning


def test_a_checkpoint_without_digests_is_not_trusted(tmp_path, caplog):
    with ocp.CheckpointManager(str(tmp_path / "ckpt")) as manager:
        manager.save(3, args=ocp.args.StandardSave(_items(3.0)))
    ckpt = checkpoints.Checkpoints(str(tmp_path / "ckpt"), name="teacher")
    with caplog.at_level(logging.WARNING):
        assert ckpt.restore(_items(0.0)) is None
    ckpt.close(failed=False)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "has no digest of its arrays to verify them by" in warning


def test_tree_digest_sees_values_dtypes_and_paths():
    base = {"a": np.zeros(3, np.float32), "b": np.ones(2)}
    digest = checkpoints.tree_digest(base)
    assert digest == checkpoints.tree_digest({"b": np.ones(2), "a": np.zeros(3, np.float32)})
    assert digest != checkpoints.tree_digest({**base, "a": np.zeros(3, np.float64)})
    assert digest != checkpoints.tree_digest({**base, "a": np.array([0, 0, 1e-30], np.float32)})
    assert digest != checkpoints.tree_digest({"c": base["a"], "b": base["b"]})
