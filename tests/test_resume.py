"""A sweep killed with SIGKILL at several points and rerun ends exactly like one never killed.

Each run is a real process killed by a real SIGKILL; the kill points are set by patching, in
that process only, the function that reaches them (the library has no test hooks).
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments.report import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# argv: workdir, kill point. Kill points:
#   fit:NAME:STEP:CKPT  when the fit named NAME asks its input pipeline for step STEP
#                   (0-based), once its checkpoint of step CKPT is complete on disk
#   store:N         after the N-th row range of a teacher store is written and synced
#   results:N       after the N-th write of results.jsonl (between cells)
#   results-tmp:N   during the N-th write of results.jsonl (half of it in the temporary file)
#   never           runs to the end
RUN = textwrap.dedent(
    """
    import functools, glob, os, signal, sys, time
    from absl import logging
    from experiments.sweep import resume, sweep
    from experiments.configs import sinusoid
    from kd_regression import fileio, input_pipeline, loop, teacher_store, train

    workdir, point = sys.argv[1], sys.argv[2]
    kind, _, arg = point.partition(":")


    def die():
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


    if kind == "fit":
        name, step, ckpt = arg.rsplit(":", 2)
        current, fit = [None], loop.fit

        def named_fit(*args, **kwargs):
            current[0] = kwargs["name"]
            return fit(*args, **kwargs)

        next_block = input_pipeline.Batches.next_block  # single steps come through it too

        def counted_next_block(self, k):
            if current[0] == name and self._step + k > int(step):
                # Orbax saves in the background: wait until checkpoint CKPT is complete, so
                # that the rerun has it to resume from (whatever the machine's speed).
                cell, role = name.rsplit("/", 1)
                pattern = os.path.join(workdir, "checkpoints", cell, f"{role}-*", ckpt)
                deadline = time.time() + 60
                while not glob.glob(pattern) and time.time() < deadline:
                    time.sleep(0.01)
                die()
            return next_block(self, k)

        loop.fit = named_fit
        input_pipeline.Batches.next_block = counted_next_block
    elif kind == "store":
        write_range, calls = teacher_store.write_range, []

        def killed_write_range(*args, **kwargs):
            write_range(*args, **kwargs)
            calls.append(1)
            if len(calls) == int(arg):
                die()

        teacher_store.write_range = killed_write_range
    elif kind in ("results", "results-tmp"):
        write_text, calls = sweep.atomic_write_text, []

        def half_written(f, text):
            f.write(text[: len(text) // 2].encode())
            f.flush()
            die()

        def killed_write_text(path, text):
            if not path.endswith(resume.RESULTS):
                return write_text(path, text)
            calls.append(1)
            if len(calls) == int(arg) and kind == "results-tmp":
                fileio.atomic_write(path, functools.partial(half_written, text=text))
            write_text(path, text)
            if len(calls) == int(arg):
                die()

        sweep.atomic_write_text = killed_write_text
    else:
        assert point == "never", point

    logging.set_verbosity(logging.INFO)
    logging.get_absl_logger().setLevel(10)  # as --verbose: the store's per-range lines
    config = sinusoid.get_config("quick")
    config.methods = ("scratch_l2", "tor_multitask")
    config.store.chunk_rows = 100  # four row ranges per store
    config.student.checkpoint_every = 50
    sweep.run(config, workdir)
    """
)


def _run(workdir, point: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    return subprocess.run(
        [sys.executable, "-c", RUN, str(workdir), point],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _checkpoints(workdir) -> dict:
    """Every checkpoint's latest step, restored as host arrays (keys as their raw data)."""
    out = {}
    for d in sorted(glob.glob(os.path.join(workdir, "checkpoints", "*", "*"))):
        with ocp.CheckpointManager(d) as manager:
            step = manager.latest_step()
            tree = manager.restore(step, args=ocp.args.StandardRestore())

        def host(a):
            if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
                a = jax.random.key_data(a)
            return np.asarray(a)

        out[(os.path.relpath(d, workdir), step)] = jax.tree.map(host, tree)
    return out


def _stores(workdir) -> dict:
    out = {}
    for manifest in sorted(glob.glob(os.path.join(workdir, "teacher_store", "*", "manifest.json"))):
        with open(manifest, encoding="utf-8") as f:
            m = json.load(f)
        out[os.path.relpath(manifest, workdir)] = (m["fingerprint"], m["statistics"])
    return out


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


# Session scope with its tests in one xdist group: a module fixture is made again each
# time the worker comes back to the module from another one's tests.
@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    done = _run(workdir, "never")
    assert done.returncode == 0, done.stderr[-4000:]
    return workdir


@pytest.mark.xdist_group("uninterrupted")
@pytest.mark.slow
def test_killed_at_every_stage_then_rerun_equals_an_uninterrupted_run(uninterrupted, tmp_path):
    # Cells run in the order gaussian_0.2, outliers_0, outliers_0.3 (the one drawn in fits.png).
    # Teacher checkpoints every 100 steps, students every 50: each kill loses work since.
    # (kill point, what that run must show it resumed from the kill before)
    kills = [
        ("fit:gaussian_0.2/teacher:150:100", None),  # during teacher training
        ("store:2", "gaussian_0.2/teacher: resumed from checkpoint at step 100"),
        ("fit:gaussian_0.2/tor_multitask:130:100", "gaussian_0.2: 200/200 rows"),  # 2 of 4 left
        ("results:2", "gaussian_0.2/tor_multitask: resumed from checkpoint at step 100"),
        ("results-tmp:1", "(outliers 0): in results.jsonl already, skipped"),
    ]
    workdir = tmp_path / "killed"
    for point, resumed in kills:
        done = _run(workdir, point)
        assert done.returncode == -signal.SIGKILL, (point, done.returncode, done.stderr[-4000:])
        assert not os.path.exists(workdir / "summary.md"), point  # it never finished
        assert resumed is None or resumed in done.stderr, (point, resumed)
    resumed = _run(workdir, "never")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    for cell in ("gaussian 0.2", "outliers 0"):  # finished before: not run again
        assert f"({cell}): in results.jsonl already, skipped" in resumed.stderr
    assert "resumed from checkpoint at step 200" in resumed.stderr  # outliers_0.3's students

    reference = (uninterrupted / "results.jsonl").read_bytes()
    assert (workdir / "results.jsonl").read_bytes() == reference
    _assert_same(_checkpoints(workdir), _checkpoints(uninterrupted))
    assert _stores(workdir) == _stores(uninterrupted)
    with np.load(workdir / "fits.npz") as got, np.load(uninterrupted / "fits.npz") as want:
        _assert_same(dict(got), dict(want))
    assert sorted(os.listdir(workdir)) == sorted(os.listdir(uninterrupted))  # no temporaries

    # A half-written last line (a copy of the results made by something that does not
    # replace files atomically) is dropped, and only its cell is run again.
    lines = reference.decode().splitlines(keepends=True)
    cut = "".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2]
    (workdir / "results.jsonl").write_text(cut)
    again = _run(workdir, "never")
    assert again.returncode == 0, again.stderr[-4000:]
    assert "dropped a half-written last line" in again.stderr
    assert "cell outliers_0.3 has 7 of 8 rows: recomputed" in again.stderr
    assert (workdir / "results.jsonl").read_bytes() == reference


def test_damaged_results_line_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(ValueError, match=r"results.jsonl, line 2: not a JSON object"):
        report.load_rows(str(path))
    path.write_text('{"a": 1}\n{"a": 2}\n{"a"')
    assert report.load_rows(str(path)) == [{"a": 1}, {"a": 2}]


@pytest.mark.xdist_group("uninterrupted")
@pytest.mark.slow
def test_results_of_another_config_are_never_mixed_in(uninterrupted, tmp_path):
    workdir = tmp_path / "other"
    shutil.copytree(uninterrupted, workdir)
    before = (workdir / "results.jsonl").read_bytes()
    config = json.loads((workdir / "config.json").read_text())
    config["student"]["learning_rate"] = 0.01
    (workdir / "config.json").write_text(json.dumps(config))
    done = _run(workdir, "never")
    assert done.returncode != 0
    assert "holds the results of another config (student.learning_rate: 0.01 -> 0.003)" in (
        done.stderr
    )
    assert (workdir / "results.jsonl").read_bytes() == before


def test_a_config_from_before_a_key_existed_is_the_same_config(tmp_path):
    from experiments.configs import sinusoid
    from experiments.sweep import resume

    config = sinusoid.get_config("quick")
    old = json.loads(config.to_json_best_effort())
    for path in resume.NEW_KEYS:  # written before these keys existed, at their old values
        *parents, leaf = path.split(".")
        node = old
        for key in parents:
            node = node[key]
        del node[leaf]
    (tmp_path / "config.json").write_text(json.dumps(old))
    config.quick = False  # the value these keys had then
    resume.check_same_config(str(tmp_path), config)
    config.loss.small_loss_drop = 0.3  # but a changed value is another config
    with pytest.raises(ValueError, match=r"loss.small_loss_drop: 0.2 -> 0.3"):
        resume.check_same_config(str(tmp_path), config)
