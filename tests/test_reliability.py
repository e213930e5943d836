"""No silently wrong results: real runs of the ``kd-regression`` command on the tiny sweep of
``tests/tiny_config.py``, with real signals, a real second run, damaged files and a full disk
(``RLIMIT_FSIZE``), each ending like a clean run or in an error that names what failed.

A run that must misbehave at a chosen point patches, in its own process only, the function
that reaches it (the library has no test hooks).
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from experiments.configs import faces as faces_config
from experiments.configs import sinusoid as sinusoid_config
from experiments.report import report
from experiments.sweep import sweep
from kd_regression import fileio, store_format

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "tests", "tiny_config.py")
COMMAND = os.path.join(os.path.dirname(sys.executable), "kd-regression")
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
# One worker: the reference is shared. Slow: real runs of the command.
pytestmark = [pytest.mark.xdist_group("reliability"), pytest.mark.slow]

# argv[1]: what to do, then the command's own arguments. Actions:
#   slow-save:N:MARKER  the N-th checkpoint save sleeps 3 s once started, after creating
#                       MARKER (so that the test's signal arrives while it is in flight)
#   full:FUNCTION       the disk is full (every write fails, EFBIG) from FUNCTION's call on
PATCHED = textwrap.dedent(
    """
    import importlib, resource, signal, sys, time
    import orbax.checkpoint as ocp
    from experiments import main

    action, _, arg = sys.argv.pop(1).partition(":")
    if action == "slow-save":
        count, marker = arg.split(":", 1)
        save, calls = ocp.CheckpointManager.save, []

        def slow_save(self, *args, **kwargs):
            out = save(self, *args, **kwargs)
            calls.append(1)
            if len(calls) == int(count):
                open(marker, "w").close()
                time.sleep(3)
            return out

        ocp.CheckpointManager.save = slow_save
    elif action == "full":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead
        module, _, name = arg.rpartition(".")
        module = importlib.import_module(module)
        function = getattr(module, name)

        def on_a_full_disk(*args, **kwargs):
            _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
            return function(*args, **kwargs)

        setattr(module, name, on_a_full_disk)
    main.cli()
    """
)


def _args(workdir, *overrides):
    return ["--config", CONFIG, "--workdir", str(workdir), *overrides]


def _run(workdir, *overrides, action=None, cwd=ROOT) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", PATCHED, action] if action else [COMMAND]
    return subprocess.run(
        [*cmd, *_args(workdir, *overrides)],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _start(workdir, *overrides, action=None) -> subprocess.Popen:
    cmd = [sys.executable, "-c", PATCHED, action] if action else [COMMAND]
    return subprocess.Popen(
        [*cmd, *_args(workdir, *overrides)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(condition, what, timeout=120):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _holder(workdir) -> int | None:
    try:
        with open(os.path.join(workdir, fileio.LOCK_FILE), encoding="utf-8") as f:
            return json.loads(f.read() or "{}").get("pid")
    except (FileNotFoundError, ValueError):
        return None


# Session scope with its tests in one xdist group: a module fixture is made again each
# time the worker comes back to the module from another one's tests.
@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """A clean run, during which a second run with another config tried the same workdir.

    Returns (workdir, the second run's CompletedProcess, its wall time in seconds).
    """
    workdir = tmp_path_factory.mktemp("reference")
    first = _start(workdir)
    _wait_for(lambda: _holder(workdir) == first.pid, "the first run's lock")
    t0 = time.time()
    second = _run(workdir, "--config.student.num_steps=100")
    seconds = time.time() - t0
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-4000:]
    return workdir, second, seconds


def _results(workdir) -> bytes:
    return (workdir / "results.jsonl").read_bytes()


def _copy_without_results(reference_dir, target):
    shutil.copytree(reference_dir, target)
    os.remove(target / "results.jsonl")
    return target


def test_a_second_run_in_a_used_workdir_is_refused_at_once(reference):
    workdir, second, seconds = reference
    assert second.returncode == 2  # refused before any work: one line, no traceback
    assert "Traceback" not in second.stderr
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith(f"kd-regression: {workdir} is in use by another run (pid ")
    assert "(pid " in last and f"--workdir {workdir})" in last  # the holder and its command
    assert seconds < 60  # a bound for a loaded machine; "before any work" is shown below
    assert "teacher" not in second.stderr  # no data, no training
    # The first run's numbers are its own (200 student steps), not the second's (100).
    assert json.loads((workdir / "config.json").read_text())["student"]["num_steps"] == 200
    rows = report.load_rows(str(workdir / "results.jsonl"))
    assert {r["method"] for r in rows} == {"teacher", "scratch_l2", "tor_multitask"}


def _flip(path, where=0.5):
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x10
    path.write_bytes(data)


def test_flipped_bytes_in_a_teachers_and_a_students_checkpoint(reference, tmp_path):
    """One byte of the teacher's last checkpoint (a data file) and one of the student's
    (the array index): both set aside, each resumed from the checkpoint before; results
    byte-identical to the clean run."""
    ref = reference[0]
    workdir = _copy_without_results(ref, tmp_path / "w")
    cell = workdir / "checkpoints" / "outliers_0.3"
    (teacher,) = cell.glob("teacher-*")
    (student,) = cell.glob("tor_multitask-*")
    data = (teacher / "300" / "default" / "ocdbt.process_0" / "d").iterdir()
    _flip(max(data, key=os.path.getsize))
    _flip(student / "200" / "default" / "manifest.ocdbt")
    done = _run(workdir)
    assert done.returncode == 0, done.stderr[-4000:]
    warnings = [line for line in done.stderr.splitlines() if "set aside as" in line]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith(f"outliers_0.3/teacher: checkpoint {teacher}/300 has files")
    assert warnings[0].endswith(f"set aside as {teacher}.damaged/300; falling back to step 200")
    assert warnings[1].startswith(f"outliers_0.3/tor_multitask: checkpoint {student}/200 has")
    assert warnings[1].endswith(f"set aside as {student}.damaged/200; falling back to step 150")
    assert "outliers_0.3/teacher: resumed from checkpoint at step 200" in done.stderr
    assert "outliers_0.3/tor_multitask: resumed from checkpoint at step 150" in done.stderr
    assert _results(workdir) == _results(ref)
    assert sorted(os.listdir(f"{teacher}.damaged")) == ["300", "300.files.json"]


def test_a_store_edited_and_rehashed_never_meets_old_students(reference, tmp_path):
    """TOR's δ changed in the store's manifest, and the manifest's own hash updated: the
    store opens, and the students train afresh with the new δ (their checkpoints are keyed
    by the constants they were trained with), never resumed from the old ones."""
    ref = reference[0]
    workdir = _copy_without_results(ref, tmp_path / "w")
    path = workdir / "teacher_store" / "outliers_0.3" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["statistics"]["threshold_mixture"] = [0.01, 0.01]  # the default rule's δ
    manifest["manifest_sha256"] = store_format.manifest_digest(manifest)
    path.write_text(json.dumps(manifest))
    old = sorted(os.listdir(workdir / "checkpoints" / "outliers_0.3"))
    done = _run(workdir)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "outliers_0.3/teacher: resumed from checkpoint at step 300" in done.stderr
    for name in ("scratch_l2", "tor_multitask"):
        assert f"{name}: resumed" not in done.stderr
    new = sorted(os.listdir(workdir / "checkpoints" / "outliers_0.3"))
    assert len(new) == len(old) + 2 and set(old) < set(new)
    rows, ref_rows = (
        {(r["method"], r["head"], r["seed"]): r for r in report.load_rows(str(w / "results.jsonl"))}
        for w in (workdir, ref)
    )
    for key, row in rows.items():
        if key[0] == "tor_multitask":  # trained with δ = 0.01: nearly every label rejected
            assert row["rejection_rate"] > 0.9 > ref_rows[key]["rejection_rate"], row
        else:
            assert row == ref_rows[key]


def test_sigint_during_a_save_and_sigterm_stop_at_once_and_resume(reference, tmp_path):
    ref = reference[0]
    workdir = tmp_path / "w"
    marker = tmp_path / "saving"
    # The teacher saves at steps 100, 200, 300: SIGINT arrives while the second is in flight.
    run = _start(workdir, action=f"slow-save:2:{marker}")
    _wait_for(marker.exists, "the second checkpoint save")
    t0 = time.time()
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    seconds = time.time() - t0
    assert run.returncode == 130, err[-4000:]
    assert seconds < 30  # the save in flight (3 s here) finishes; the run stops
    last = err.strip().splitlines()[-1]
    assert last == (
        "interrupted by SIGINT at outliers_0.3/teacher, step 200 (last checkpoint: step 200); "
        "rerun the same command to resume"
    )
    assert "Traceback" not in err

    run = _start(workdir)
    _wait_for(lambda: _holder(workdir) == run.pid, "the second run's lock")
    time.sleep(2)  # somewhere in start-up or training
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143, err[-4000:]
    assert err.strip().splitlines()[-1].startswith("interrupted by SIGTERM")
    assert err.strip().endswith("; rerun the same command to resume")

    done = _run(workdir)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "outliers_0.3/teacher: resumed from checkpoint at step 200" in done.stderr
    assert _results(workdir) == _results(ref)
    assert sorted(os.listdir(workdir)) == sorted(os.listdir(ref))  # no temporary left


@pytest.mark.parametrize(
    ("function", "file"),
    [
        ("experiments.sweep.resume.save_fits", "fits.npz"),
        ("kd_regression.teacher_store.write_range", "teacher_store/outliers_0.3"),
    ],
)
def test_a_full_disk_names_the_file_in_the_last_line(reference, tmp_path, function, file):
    workdir = _copy_without_results(reference[0], tmp_path / "w")
    if file.startswith("teacher_store"):
        shutil.rmtree(workdir / file)
    os.remove(workdir / "fits.npz")
    done = _run(workdir, action=f"full:{function}")
    assert done.returncode == 1, done.stderr[-4000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("kd-regression failed: OSError: [Errno 27]"), last
    assert f"{workdir}/{file}" in last, last
    assert not glob.glob(str(workdir / "*.tmp*"))


def _refused(config, tmp_path, match):
    workdir = tmp_path / "never-made"
    with pytest.raises(ValueError, match=match):
        sweep.run(config, str(workdir))
    assert not workdir.exists()  # refused before any work


def test_values_that_would_fail_late_are_refused_before_any_work(tmp_path):
    config = sinusoid_config.get_config("quick")
    config.seed = -1
    _refused(config, tmp_path, r"seed=-1, num_seeds=2: the seeds .* must lie in \[0, 4294967295\]")
    config = sinusoid_config.get_config("quick")
    config.seed = 2**32 - 1  # seed 2**32 would be seed 0 again in JAX's keys
    _refused(config, tmp_path, r"seed=4294967295, num_seeds=2")
    config = sinusoid_config.get_config("quick")
    config.student.hidden = (0,)
    _refused(
        config,
        tmp_path,
        r"student.hidden=\(0,\): the student model cannot be built \(ValueError: MLPTrunk needs",
    )
    config = sinusoid_config.get_config("quick")
    config.teacher.hidden = (-4, 8)
    _refused(config, tmp_path, r"teacher.hidden=\(-4, 8\): the teacher model cannot be built")
    config = faces_config.get_config("quick")
    config.student.model.widths = (0, 8)
    _refused(config, tmp_path, r"student.model=\{.*'widths': \(0, 8\)\}: the student model cannot")
    config = sinusoid_config.get_config("quick")
    config.num_seeds = 10**8
    _refused(
        config,
        tmp_path,
        r"num_seeds=100000000: the population needs at least [\d,]+ GiB of memory \(.* MiB per "
        r"seed: .*\), more than this machine's [\d.]+ GiB; at most about \d+ seeds fit",
    )
