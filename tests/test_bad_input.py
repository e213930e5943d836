"""Bad input, end to end: each case fails with a message that names the problem, and
leaves what was already written byte for byte as it was (files hashed before and after).

Cases checked elsewhere, referred to by the table in docs/reliability.md: the other kinds of damaged
day file (``test_mpiigaze.py``), bad Multi-PIE trees (``test_multipie.py``), damaged and
killed teacher stores (``test_teacher_store.py``), mismatched loss shapes
(``test_losses.py``) and non-finite or mismatched arrays (``test_input_pipeline.py``).
"""

import functools
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest
import scipy.io

from kd_regression import input_pipeline, loop, methods, models, teacher_store, train
from kd_regression.datasets import build, manual, mpiigaze, multipie

import fakes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MULTIPIE = {"image_size": 8, "illuminations": (7,)}  # the config built beforehand


def _snapshot(root) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    out = {}
    for parent, _, files in os.walk(root):
        for name in files:
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def other_build(tmp_path_factory):
    """A data directory holding a built Multi-PIE config, and its examples."""
    base = tmp_path_factory.mktemp("kept")
    fakes.write_multipie(str(base / "manual"), cameras=("05_1", "11_0"), illuminations=(7,))
    data_dir = base / "data"
    kept = multipie.load(str(data_dir), str(base / "manual"), "train", **MULTIPIE)
    return data_dir, kept


def _assert_kept(data_dir, before, kept):
    assert _snapshot(data_dir) == before
    _equal(multipie.load(str(data_dir), None, "train", **MULTIPIE), kept)


def _set_label(path, side, field, row, value) -> list[str]:
    """Rewrites a day file with ``data.<side>.<field>[row] = value``; returns its frames."""
    mat = scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=False)
    eyes = {}
    for s in ("left", "right"):
        eye = getattr(mat["data"][0, 0], s)[0, 0]
        eyes[s] = {k: np.array(getattr(eye, k)) for k in ("gaze", "image", "pose")}
    eyes[side][field][row] = value
    scipy.io.savemat(str(path), {"data": eyes, "filenames": mat["filenames"]})
    return [str(np.ravel(c)[0]).replace(".", r"\.") for c in mat["filenames"].ravel()]


DAY = ("MPIIGaze", "Data", "Normalized", "p03", "day03.mat")  # 2 frames, lines 7-9 of p03.txt
LABELS = {  # case: (side, field, row, value), the row's frame and line in the message
    "nan gaze": ("left", "gaze", 1, [np.nan, 0.0, -1.0]),
    "inf pose": ("right", "pose", 0, [0.0, np.inf, 0.0]),
    "zero gaze": ("left", "gaze", 0, [0.0, 0.0, 0.0]),
}
CASES = {
    "missing manual dir": "manual directory .* does not exist",
    "empty manual dir": "manual directory .* is empty",
    "corrupt .mat": "is a corrupt MATLAB v5 file",
    "nan gaze": r"data.left.gaze row 1 \(frame {1}, listed in p03.txt, line 8\) is not "
    r"finite: \[nan, 0.0, -1.0\]",
    "inf pose": r"data.right.pose row 0 \(frame {0}, listed in p03.txt, line 9\) is not "
    r"finite: \[0.0, inf, 0.0\]",
    "zero gaze": r"data.left.gaze row 0 \(frame {0}, listed in p03.txt, line 7\) is a zero "
    r"vector \(no direction\)",
    "multipie corrupt png": "is not a readable PNG image",
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_manual_input_builds_nothing_and_keeps_what_was_built(other_build, tmp_path, case):
    data_dir, kept = other_build
    before = _snapshot(data_dir)
    source = tmp_path / "manual"
    message, named = CASES[case], str(source)
    if case == "empty manual dir":
        source.mkdir()
    elif case == "multipie corrupt png":
        records = fakes.write_multipie(str(source), cameras=("05_1",), illuminations=(7,))
        named = records[4]["path"]
        with open(named, "r+b") as f:
            f.truncate(50)
    elif case != "missing manual dir":
        fakes.write_mpiigaze(str(source))
        named = str(source.joinpath(*DAY))
        if case == "corrupt .mat":
            with open(named, "r+b") as f:
                f.truncate(os.path.getsize(named) // 2)
        else:
            message = message.format(*_set_label(named, *LABELS[case]))
    if case.startswith("multipie"):
        with pytest.raises(manual.ManualDataError, match=message) as e:
            multipie.load(str(data_dir), str(source), image_size=16)
        config = multipie.config(16)
        assert not manual.builder(
            multipie.MultiPie, data_dir=str(data_dir), config=config
        ).is_prepared()
    else:
        with pytest.raises(manual.ManualDataError, match=message) as e:
            mpiigaze.load(str(data_dir), str(source))
        assert not manual.builder(mpiigaze.MpiiGaze, data_dir=str(data_dir)).is_prepared()
    assert named in str(e.value)
    _assert_kept(data_dir, before, kept)


_KILLED_BUILD = textwrap.dedent(
    """
    import os, signal, sys
    from kd_regression.datasets import build, mpiigaze
    manual_dir, data_dir, after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    examples, made = mpiigaze.examples, [0]
    def killed_part_way(manual_dir, person):
        for example in examples(manual_dir, person):
            made[0] += 1
            if made[0] > after:  # as a crash or an out-of-memory kill would: no cleanup
                os.kill(os.getpid(), signal.SIGKILL)
            yield example
    mpiigaze.examples = killed_part_way
    build.main(["mpiigaze", "--manual_dir=" + manual_dir, "--data_dir=" + data_dir])
    """
)


def test_killed_build_is_not_read_keeps_other_builds_and_rebuilds_the_same(other_build, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(other_build[0], data_dir)  # holds a built Multi-PIE config
    source = tmp_path / "manual"
    fakes.write_mpiigaze(str(source))
    reference = mpiigaze.load(str(tmp_path / "uninterrupted"), str(source))
    before = _snapshot(data_dir)
    after = 4 * 9 + 3  # 9 examples per person: p00-p03 written, killed inside p04
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_BUILD, str(source), str(data_dir), str(after)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    # Part of the build was written, all of it inside one temporary folder of tfds's.
    now = _snapshot(data_dir)
    assert {k: now[k] for k in before} == before
    new = sorted(set(now) - set(before))
    assert [os.path.basename(p)[:13] for p in new] == [f"mpii_gaze-p0{i}" for i in range(4)]
    (leftover,) = {os.path.dirname(p) for p in new}
    assert leftover.startswith(os.path.join("mpii_gaze", "incomplete."))
    with pytest.raises(manual.ManualDataError, match="mpii_gaze is not built in") as e:
        mpiigaze.load(str(data_dir))
    assert f"Builds that did not finish left {data_dir / leftover} (never read" in str(e.value)
    # The leftover is never read: garbage in it changes nothing about the rebuild.
    for p in new:
        (data_dir / p).write_bytes(b"garbage")
    assert build.main(["mpiigaze", f"--manual_dir={source}", f"--data_dir={data_dir}"]) == 0
    _equal(mpiigaze.load(str(data_dir)), reference)
    after_rebuild = _snapshot(data_dir)
    assert {k: after_rebuild[k] for k in before} == before
    _equal(multipie.load(str(data_dir), None, "train", **MULTIPIE), other_build[1])


def test_half_copied_dataset_folder_is_refused_not_read(other_build, tmp_path):
    """A dataset folder without its dataset_info.json (a copy cut short): tfds would take
    it for a built dataset and read nothing from it; it is refused and left alone."""
    data_dir, _ = other_build
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    info = next(copy.rglob("dataset_info.json"))
    info.unlink()
    before = _snapshot(copy)
    with pytest.raises(manual.ManualDataError, match="is not a complete multi_pie build") as e:
        multipie.load(str(copy), str(tmp_path / "anything"), "train", **MULTIPIE)
    assert str(info.parent) in str(e.value)
    assert _snapshot(copy) == before


# --- teacher stores ------------------------------------------------------------------------

FINGERPRINT = {
    "dataset": {"name": "mpiigaze", "version": "1.0.0", "test_people": [0]},
    "teacher_params_sha256": "a" * 64,
    "split": "train",
}


@pytest.mark.parametrize(
    "changed, field",
    [
        ({"dataset": {**FINGERPRINT["dataset"], "name": "multipie"}}, "dataset"),
        ({"teacher_params_sha256": "b" * 64}, "teacher_params_sha256"),
    ],
    ids=["other dataset", "other teacher"],
)
def test_store_of_another_dataset_or_teacher(tmp_path, changed, field):
    directory, neighbour = str(tmp_path / "store"), str(tmp_path / "notes")
    old = np.arange(20, dtype=np.float32).reshape(10, 2)
    teacher_store.write(directory, old, FINGERPRINT, chunk_rows=4)
    os.mkdir(neighbour)
    with open(os.path.join(neighbour, "thesis.tex"), "w") as f:
        f.write("precious")
    before = _snapshot(tmp_path)
    other = {**FINGERPRINT, **changed}
    with pytest.raises(teacher_store.StoreMismatchError, match=f"does not match: {field}: stored"):
        teacher_store.open_store(directory, other)
    assert _snapshot(tmp_path) == before  # refused, untouched
    # compute replaces it because it is a store (made for other inputs) ...
    new = teacher_store.compute(
        directory, lambda i: -old[i], fingerprint=other, out_shape=old.shape, chunk_rows=4
    )
    np.testing.assert_array_equal(new.load(), -old)
    assert _snapshot(neighbour) == {"thesis.tex": before[os.path.join("notes", "thesis.tex")]}
    assert sorted(os.listdir(tmp_path)) == ["notes", "store"]  # no temporary left
    # ... and never a directory holding anything else.
    kept = _snapshot(neighbour)
    with pytest.raises(teacher_store.StoreError, match="refusing to replace it"):
        teacher_store.compute(
            neighbour, lambda i: old[i], fingerprint=other, out_shape=old.shape, chunk_rows=4
        )
    assert _snapshot(neighbour) == kept


def test_truncated_store_chunk(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    x = np.arange(24, dtype=np.float32).reshape(12, 2)
    teacher_store.write(a, x, FINGERPRINT, chunk_rows=4)
    teacher_store.write(b, 2 * x, FINGERPRINT, chunk_rows=4)
    chunk = os.path.join(a, teacher_store.ARRAY, "c", "1", "0")
    with open(chunk, "r+b") as f:
        f.truncate(os.path.getsize(chunk) - 7)
    damaged, neighbour = _snapshot(a), _snapshot(b)
    with pytest.raises(teacher_store.StoreCorruptError, match=r"chunks \[1\] are not the chunks"):
        teacher_store.open_store(a, FINGERPRINT)
    assert _snapshot(a) == damaged  # opening changes nothing, even a damaged store
    store = teacher_store.compute(
        a, lambda i: x[i], fingerprint=FINGERPRINT, out_shape=x.shape, chunk_rows=4
    )
    np.testing.assert_array_equal(store.load(), x)
    assert _snapshot(b) == neighbour
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


# --- training: refused before the first step, so a checkpoint is kept --------------------

TX = optax.sgd(0.1)


def _fit(arrays, checkpoint_dir, num_steps, starts=None):
    """``fit`` with checkpoints every 2 steps; ``starts`` collects the steps it starts at."""
    graphdef, state = train.init_state(
        functools.partial(models.mlp, 1, [4], 1), TX, jax.random.key(0)
    )
    step = jax.jit(train.make_train_step(graphdef, TX, "scratch_l2"))

    def batches(start):
        if starts is not None:
            starts.append(start)
        return input_pipeline.batches(arrays, batch_size=8, seed=0, start_step=start)

    return loop.fit(
        state,
        step,
        batches,
        num_steps=num_steps,
        checkpoint_dir=str(checkpoint_dir),
        checkpoint_every=2,
    )


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    x = np.linspace(-1, 1, 32, dtype=np.float32)[:, None]
    arrays = {"x": x, "y": 2 * x}
    directory = tmp_path_factory.mktemp("checkpoint") / "run"
    _fit(arrays, directory, num_steps=4)
    return arrays, directory


ARRAY_CASES = {
    "nan label": r"arrays\['y'\] row 5 holds nan",
    "inf input": r"arrays\['x'\] row 0 holds -inf",
    "labels [n] not [n, 1]": r"`target` must be a 2-D array .* got shape \(8,\)",
}


@pytest.mark.parametrize("case", list(ARRAY_CASES))
def test_bad_arrays_stop_a_resumed_run_and_keep_its_checkpoint(checkpointed, tmp_path, case):
    arrays, run = checkpointed
    directory = tmp_path / "run"
    shutil.copytree(run, directory)
    bad = {k: v.copy() for k, v in arrays.items()}
    if case == "nan label":
        bad["y"][5, 0] = np.nan
    elif case == "inf input":
        bad["x"][0, 0] = -np.inf
    else:
        bad["y"] = bad["y"][:, 0]
    before = _snapshot(directory)
    starts = []
    with pytest.raises(ValueError, match=ARRAY_CASES[case]):
        _fit(bad, directory, num_steps=8, starts=starts)
    assert starts == [4]  # it had resumed from the checkpoint of step 4 ...
    assert _snapshot(directory) == before  # ... which is kept, byte for byte
    starts = []
    resumed = _fit(arrays, directory, num_steps=6, starts=starts)  # and still resumes
    assert starts == [4] and int(np.max(jax.device_get(resumed.state.step))) == 6


@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_every_method_refuses_labels_without_their_feature_axis(name):
    """[B] labels against [B, 1] heads would broadcast to a [B, B] loss; each refuses."""
    method = methods.get_method(name)
    head = np.zeros((8, 1), np.float32)
    heads = {models.MAIN_HEAD: head, models.LABEL_HEAD: head, models.TEACHER_HEAD: head}
    batch = {"y": np.zeros(8, np.float32), "teacher": head}
    constants = {"threshold": np.float32(1.0), "eta": np.float32(1.0)}
    constants |= {k: np.float32(0.2) for k in method.constants}  # small_loss_oracle's q
    if name == "kd_l2":  # learns from the teacher alone: the teacher is the target
        batch = {"y": head, "teacher": np.zeros(8, np.float32)}
    with pytest.raises(ValueError, match=r"must be a 2-D array .* got shape \(8,\)"):
        method.loss(heads, batch, constants, methods.LossConfig())
