"""End-to-end: the sinusoid sweep's :quick config, in process and through the CLI."""

import contextlib
import glob
import io
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

from experiments import export as export_cli
from experiments.configs import sinusoid as sinusoid_config
from experiments.report import report
from experiments.sweep import sweep, validation
from experiments.sweep.cell import Cell
from kd_regression import export
from kd_regression.datasets import sinusoid
from kd_regression.methods import METHODS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The tests of one :quick run go to one test worker, so that the run is made once.
# Slow: the run is a whole sweep in a new process.
def ONE_WORKER(test):
    return pytest.mark.slow(pytest.mark.xdist_group("quick_run")(test))


REQUIRED = {"method", "head", "noise", "level", "seed", "rmse", "mae"}


# `import tensorflow` fails in the quick run's process, and each attempt is recorded.
NO_TENSORFLOW = """
import os, traceback
with open(os.environ["TENSORFLOW_ATTEMPTS"], "a") as f:
    f.write("".join(traceback.format_stack()) + "\\n")
raise ImportError("tensorflow is not installed here (tests/test_experiment.py)")
"""


# Session scope: xdist may run other modules' tests between these on their worker, and a
# module fixture would be made again after each such interruption.
@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """The `kd-regression --config sinusoid:quick` command, as a user runs it (no
    JAX_PLATFORMS: JAX probes for accelerators), in a process where TensorFlow cannot be
    imported. Returns (config, workdir, rows, the CompletedProcess, the import attempts)."""
    root = tmp_path_factory.mktemp("quick")
    workdir, blocker = str(root / "run"), root / "no_tensorflow"
    (blocker / "tensorflow").mkdir(parents=True)
    (blocker / "tensorflow" / "__init__.py").write_text(NO_TENSORFLOW)
    attempts = root / "tensorflow_attempts.txt"
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env |= {"PYTHONPATH": str(blocker), "TENSORFLOW_ATTEMPTS": str(attempts)}
    command = os.path.join(os.path.dirname(sys.executable), "kd-regression")
    done = subprocess.run(
        [command, "--config", "sinusoid:quick", "--workdir", workdir],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    rows = report.load_rows(os.path.join(workdir, "results.jsonl"))
    tried = attempts.read_text() if attempts.exists() else ""
    return sinusoid_config.get_config("quick"), workdir, rows, done, tried


@ONE_WORKER
def test_writes_every_artifact(quick_run):
    _, workdir, *_ = quick_run
    names = ["results.jsonl", "summary.md", "noise_sweep.png", "fits.png", "config.json"]
    names += ["paired.jsonl", "paired.png"]  # report.paired_references
    for name in names:
        path = os.path.join(workdir, name)
        assert os.path.getsize(path) > 0, name
    events = [f for f in os.listdir(os.path.join(workdir, "logs")) if "tfevents" in f]
    assert events
    leftovers = [f for f in os.listdir(workdir) if ".tmp" in f]
    assert not leftovers


# Every line the command prints at the default verbosity is one of ours.
OUR_LINES = re.compile(
    r"^(population of \d+ seeds: |data-parallel over |cell \d+/\d+ \(|sweep finished in )"
)


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected 0x82F63B78), bit by bit: a reference independent of
    the writer's."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    """TFRecord's masked CRC: rotated right by 15 bits, plus a constant."""
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _records(path: str) -> list[bytes]:
    """The records of a TFRecord file, each frame checked: length, its masked CRC32C, the
    data, the data's masked CRC32C (the framing TensorBoard reads)."""
    assert _crc32c(b"123456789") == 0xE3069283  # the standard check value
    with open(path, "rb") as f:
        data = f.read()
    out, at = [], 0
    while at < len(data):
        (length,) = struct.unpack_from("<Q", data, at)
        assert struct.unpack_from("<I", data, at + 8)[0] == _masked(data[at : at + 8]), at
        record = data[at + 12 : at + 12 + length]
        assert struct.unpack_from("<I", data, at + 12 + length)[0] == _masked(record), at
        out.append(record)
        at += 12 + length + 4
    assert at == len(data)
    return out


@ONE_WORKER
def test_without_tensorflow_the_event_files_are_framed_and_hold_the_scalars(quick_run):
    _, workdir, *_, tried = quick_run
    assert not tried, f"the run tried to import tensorflow:\n{tried[:3000]}"
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.compat.proto import event_pb2
    from tensorboard.util import tensor_util

    logdir = os.path.join(workdir, "logs")
    (path,) = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
    events = [event_pb2.Event.FromString(r) for r in _records(path)]
    assert events[0].file_version == "brain.Event:2"
    acc = event_accumulator.EventAccumulator(logdir, size_guidance={"tensors": 0})
    acc.Reload()
    tags = acc.Tags()["tensors"]
    with open(os.path.join(logdir, "metrics.jsonl"), encoding="utf-8") as f:
        logged = [json.loads(line) for line in f]
    # Every scalar of metrics.jsonl is in the event file, at its step, with its value.
    want = {(k, r["step"]): v for r in logged for k, v in r.items() if k != "step"}
    got = {
        (tag, e.step): float(tensor_util.make_ndarray(e.tensor_proto))
        for tag in tags
        for e in acc.Tensors(tag)
    }
    assert len(want) > 50 and any(k.endswith("/val_loss") for k, _ in want)
    assert got.keys() == want.keys()
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-6)


@ONE_WORKER
def test_the_default_verbosity_prints_only_our_lines(quick_run):
    """No library's INFO chatter: JAX's "Unable to initialize backend 'tpu'" on a machine
    without one, orbax's per-save lines, matplotlib's font cache."""
    *_, done, _ = quick_run
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert [ln for ln in lines if not OUR_LINES.match(ln)] == []
    assert done.stdout.strip().splitlines()[-1].startswith("sweep finished in ")


@ONE_WORKER
def test_results_schema_and_coverage(quick_run):
    config, workdir, rows, *_ = quick_run
    assert report.load_rows(os.path.join(workdir, "results.jsonl")) == rows
    for row in rows:
        assert REQUIRED <= set(row), row
        assert math.isfinite(row["rmse"]) and math.isfinite(row["mae"]), row
        assert 0 <= row["mae"] <= row["rmse"] + 1e-12, row  # MAE <= RMSE always
    cells = {(k, float(lv)) for k in config.noise for lv in config.noise[k]}
    seeds = {config.seed + s for s in range(config.num_seeds)}
    expected = set()
    for kind, level in cells:
        for seed in seeds:
            expected.add(("teacher", "main", kind, level, seed))
            for name in config.methods:
                heads = ("label", "teacher") if METHODS[name].two_heads else ("main",)
                expected |= {(name, h, kind, level, seed) for h in heads}
    got = [(r["method"], r["head"], r["noise"], r["level"], r["seed"]) for r in rows]
    assert len(got) == len(set(got)), "duplicate rows"
    assert set(got) == expected
    for row in rows:
        method = METHODS.get(row["method"])
        has_detection = bool(method and (method.rejects or method.selects))
        assert ("recall" in row) == has_detection, row
        if has_detection:
            assert 0 <= row["rejection_rate"] <= 1


@ONE_WORKER
def test_teacher_beats_a_constant_predictor_on_clean_labels(quick_run):
    config, _, rows, *_ = quick_run
    test_y = sinusoid.load("test", size=config.dataset.test_size, seed=config.seed).y
    constant_rmse = float(np.std(test_y))  # the best constant predicts the mean
    clean = [r for r in rows if r["method"] == "teacher" and r["level"] == 0.0]
    assert clean
    for row in clean:
        assert row["rmse"] < 0.8 * constant_rmse, row


@ONE_WORKER
def test_summary_has_a_table_per_noise_model(quick_run):
    config, workdir, *_ = quick_run
    with open(os.path.join(workdir, "summary.md"), encoding="utf-8") as f:
        text = f.read()
    for kind in config.noise:
        assert f"Noise model: {kind}" in text
    assert "**" in text  # best per column marked
    assert "tor_multitask (label head)" in text
    for kind in config.noise:  # the config's paired comparisons (report.paired_references)
        assert f"### Paired difference to scratch_l2, {kind}" in text
        assert "### Paired difference to the best teacher-free robust baseline" in text


@ONE_WORKER
def test_same_config_same_numbers(quick_run, tmp_path):
    config, _, rows, *_ = quick_run
    config = sinusoid_config.get_config("quick")
    config.noise = {"outliers": [0.3]}
    config.methods = ["tor_multitask"]
    again = sweep.run(config, str(tmp_path))
    subset = [
        r
        for r in rows
        if r["noise"] == "outliers"
        and r["level"] == 0.3
        and r["method"] in ("teacher", "tor_multitask")
    ]
    assert again == subset


@pytest.mark.slow
def test_cli_from_any_directory_with_a_relative_workdir_and_config_errors(tmp_path):
    """The installed ``kd-regression`` command, run from outside the repository with a
    shipped config's name and a workdir with ``..`` in it (tensorstore refuses such paths;
    the sweep makes the workdir absolute first)."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "sub").mkdir(parents=True)
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "kd-regression"),
        "--config",
        "sinusoid:quick",
        "--workdir",
        "sub/../cli",
        "--config.methods=('scratch_l2',)",
        "--config.noise.gaussian=(0.1,)",
        "--config.noise.outliers=(0.0,)",
        "--config.fits_level=0.0",
    ]
    done = subprocess.run(cmd, cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    workdir = elsewhere / "cli"
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["methods"] == ["scratch_l2"]
    methods = {r["method"] for r in report.load_rows(str(workdir / "results.jsonl"))}
    assert methods == {"teacher", "scratch_l2"}
    last = done.stdout.strip().splitlines()[-1]  # the files written, and where
    assert "; wrote summary.md, noise_sweep.png, fits.png, results.jsonl in " in last, last
    assert f" in {workdir} (" in last  # the absolute, normalised path

    bad = [*cmd[:3], "--workdir", str(tmp_path / "bad"), "--config.methods=('no_such_method',)"]
    done = subprocess.run(bad, cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2  # a config mistake: one line, no traceback
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("kd-regression: config error: methods[0]='no_such_method': not a"), last
    assert "tor_multitask" in last
    assert not (tmp_path / "bad").exists()  # refused before any work


def _small_config(**overrides):
    config = sinusoid_config.get_config("quick")
    config.noise = {"outliers": [0.3]}
    config.methods = ["scratch_l2", "tor_multitask"]
    config.teacher.method = "scratch_huber"
    for key, value in overrides.items():
        node, *path = key.split(".")
        target = config if not path else config[node]
        setattr(target, path[-1] if path else node, value)
    return config


def test_config_exposes_every_loss_option():
    import dataclasses

    from kd_regression.methods import LossConfig

    config = sinusoid_config.get_config()
    assert set(config.loss) == {f.name for f in dataclasses.fields(LossConfig)}


@ONE_WORKER
def test_seed_rows_are_reproduced_by_a_run_with_that_seed_alone(quick_run, tmp_path):
    _, _, rows, *_ = quick_run
    config = sinusoid_config.get_config("quick")
    config.noise = {"outliers": [0.3]}
    config.methods = ["tor_multitask"]
    config.seed, config.num_seeds = 1, 1
    alone = sweep.run(config, str(tmp_path))
    expected = [
        r
        for r in rows
        if r["seed"] == 1
        and r["noise"] == "outliers"
        and r["level"] == 0.3
        and r["method"] in ("teacher", "tor_multitask")
    ]
    # Equal up to float rounding: a population of 1 and of 2 compile to different programs.
    assert len(alone) == len(expected)
    for got, want in zip(alone, expected, strict=True):
        assert {k: v for k, v in got.items() if not isinstance(v, float)} == {
            k: v for k, v in want.items() if not isinstance(v, float)
        }
        for k, v in want.items():
            if isinstance(v, float):
                assert math.isclose(got[k], v, rel_tol=1e-5), (k, got, want)


@pytest.mark.slow
def test_rerun_resumes_and_a_changed_config_does_not(tmp_path):
    first = sweep.run(_small_config(), str(tmp_path))
    teacher_dirs = lambda: sorted(  # noqa: E731
        d for d in os.listdir(tmp_path / "checkpoints" / "outliers_0.3") if d.startswith("teacher")
    )
    assert len(teacher_dirs()) == 1
    assert sweep.run(_small_config(), str(tmp_path)) == first  # resumed, same numbers
    assert len(teacher_dirs()) == 1
    # The sweep's time is the sum of its runs' (the rerun's few seconds included).
    runs = json.loads((tmp_path / "run_times.json").read_text())["runs"]
    assert [r["ended"] for r in runs] == ["finished", "finished"] and runs[0]["seconds"] > 1
    total = sum(r["seconds"] for r in runs)
    summary = (tmp_path / "summary.md").read_text()
    assert f"Sweep time: {total:.0f} s, the sum of its 2 runs (" in summary
    # Results of one config are never mixed with, or replaced by, another's.
    results = (tmp_path / "results.jsonl").read_bytes()
    with pytest.raises(ValueError, match=r"another config \(loss.huber_delta: 0.1 -> 1.0\)"):
        sweep.run(_small_config(**{"loss.huber_delta": 1.0}), str(tmp_path))
    assert (tmp_path / "results.jsonl").read_bytes() == results
    # With the results moved away, checkpoints are still reused by what made them. The
    # Huber teacher's loss depends on loss.huber_delta: a new value is a new teacher.
    os.rename(tmp_path / "results.jsonl", tmp_path / "old-results.jsonl")
    changed = sweep.run(_small_config(**{"loss.huber_delta": 1.0}), str(tmp_path))
    assert len(teacher_dirs()) == 2
    # Another config: the time of the first one's runs is not counted.
    assert len(json.loads((tmp_path / "run_times.json").read_text())["runs"]) == 1
    teacher = [r["rmse"] for r in changed if r["method"] == "teacher"]
    assert teacher != [r["rmse"] for r in first if r["method"] == "teacher"]
    fresh = sweep.run(_small_config(**{"loss.huber_delta": 1.0}), str(tmp_path / "fresh"))
    assert changed == fresh


@pytest.mark.parametrize(
    "noise,match",
    [
        ({"outliers": [0.1, -0.1]}, r"noise.outliers\[1\]=-0.1: must be a rate in \[0, 1\]"),
        ({"outliers": [1.5]}, r"noise.outliers\[0\]=1.5: must be a rate in \[0, 1\]"),
        ({"gaussian": [0.2, float("inf")]}, r"noise.gaussian\[1\]=inf: must be a finite sigma"),
        ({"gaussian": [-1.0]}, r"noise.gaussian\[0\]=-1.0: must be a finite sigma >= 0"),
        ({"gaussian": []}, r"noise: no noise model; give levels for any of"),
        ({"none": [0.0, 0.1]}, r"noise.none\[1\]=0.1: must be 0 \(the labels as they are\)"),
    ],
)
def test_impossible_noise_levels_are_refused_before_any_work(noise, match):
    config = sinusoid_config.get_config("quick")
    config.noise = noise
    with pytest.raises(ValueError, match=match):
        sweep.validate(config)


def _with(config, key: str, value):
    *path, leaf = key.split(".")
    node = config
    for p in path:
        node = node[p]
    if value is _DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return config


_DELETE = object()


@pytest.mark.parametrize(
    "key,value,match",
    [
        (
            "student.learnin_rate",
            0.1,
            r"unknown config key student.learnin_rate \(did you mean student.learning_rate\?\); "
            r"the keys of student are: batch_size, checkpoint_every, eval_every, hidden, ",
        ),
        ("studnt", 1, r"unknown config key studnt \(did you mean student\?\); the keys at the "),
        ("loss.threshold_kk", 3.0, r"loss.threshold_kk \(did you mean loss.threshold_k\?\)"),
        ("student.num_steps", _DELETE, "config key student.num_steps is missing"),
        ("methods", ("tor", "no_such"), r"methods\[1\]='no_such': not a method; the methods: \["),
        (
            "methods",
            ("(tor,kd_l2)",),  # what --config.methods=(tor,kd_l2) gives
            r"methods\[0\]='\(tor,kd_l2\)': not a method \(quote each name: --config.methods=",
        ),
        ("loss.threshold_nu", 0.0, r"invalid threshold_nu=0.0 \(must be > 0\)"),
        (
            "teacher.method",
            "tor_multitask",
            r"teacher.method='tor_multitask': needs a teacher; a teacher trains with one of "
            r"\['scratch_huber', 'scratch_l1', 'scratch_l2'\]$",
        ),
        ("teacher.method", "l2", r"teacher.method='l2': not a method; a teacher trains with one "),
        ("loss.threshold_k", 0.0, r"invalid threshold_k=0.0 \(must be > 0\)"),
        ("loss.threshold_k", -1.0, r"invalid threshold_k=-1.0 \(must be > 0\)"),
        ("loss.mix_alpha", 1.5, r"invalid mix_alpha=1.5 \(must be in \[0, 1\]\)"),
        ("loss.threshold_method", "iqr", r"threshold_method='iqr' is not one of"),
        ("student.batch_size", 401, r"student.batch_size=401 must be in \[1, 400\]"),
        ("teacher.learning_rate", -1e-3, r"teacher.learning_rate=-0.001: must be > 0"),
        ("teacher.num_steps", 0, r"teacher.num_steps=0: must be >= 1"),
        ("student.patience", 0, r"student.patience=0: must be None \(off\) or >= 1"),
        ("student.patience", 6, r"student.patience=6: the sweep's students do not stop early"),
        ("teacher.folds", 1, r"teacher.folds=1: 0 \(off\) or k >= 2"),
        ("num_seeds", 0, "num_seeds must be >= 1"),
        ("steps_per_call", 0, r"^steps_per_call=0: must be >= 1"),
        ("student.checkpoint_every", 0, r"student.checkpoint_every=0: must be >= 1"),
        ("store.chunk_rows", 0, r"store.chunk_rows=0 \(must be >= 1\)"),
        ("inference_head", "main", r"inference_head='main': 'label' or 'teacher'"),
        (
            "report.paired_references",
            ("scratch_l2", "best_robst"),
            r"report.paired_references: 'best_robst' is not one of .*best_robust$",
        ),
        ("report.robust_baselines", ("l1",), r"report.robust_baselines: 'l1' is not one of "),
        ("methods", ("tor", "kd_l2", "tor"), r"methods=\['tor', 'kd_l2', 'tor'\]: a method is "),
        ("noise.outliers", (0.3, 0.1, 0.3), r"noise.outliers=\[0.3, 0.1, 0.3\]: a level is listed"),
        ("noise.gaussian", (0.1, 0.1000000001), r"noise.gaussian=\[0.1, 0.1000000001\]: a level"),
        (
            "noise",
            {},
            r"noise: no noise model; give levels for any of \('none', 'gaussian', 'outliers'\)",
        ),
    ],
)
def test_bad_config_values_are_refused_naming_key_and_allowed_values(key, value, match):
    config = _with(sinusoid_config.get_config("quick"), key, value)
    with pytest.raises(ValueError, match=match):
        sweep.validate(config)


def test_every_shipped_config_passes_validation():
    from experiments.configs import faces, mpiigaze, multipie

    for module in (sinusoid_config, faces):
        for arg in (None, "quick"):
            sweep.validate(module.get_config(arg))
    # Fully validating these reads the dataset (split sizes): their keys, here.
    for module in (mpiigaze, multipie):
        for arg in (None, "quick"):
            validation.check_keys(module.get_config(arg))


def test_a_workdir_that_cannot_be_written_fails_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("kept")
    with pytest.raises(OSError, match=f"workdir {blocker}/run is not writable"):
        sweep.run(_small_config(), str(blocker / "run"))
    assert blocker.read_text() == "kept"
    assert sorted(os.listdir(tmp_path)) == ["a-file"]


@pytest.mark.slow
def test_a_student_that_diverges_stops_the_sweep_and_the_report_says_why(tmp_path):
    from kd_regression import metric_window

    config = _small_config(**{"student.learning_rate": 1e30})  # Adam steps of 1e30: overflow
    with pytest.raises(metric_window.NonFiniteError) as raised:
        sweep.run(config, str(tmp_path))
    e = raised.value
    assert e.name == "outliers_0.3/scratch_l2" and "loss" in e.metrics
    failure = json.loads((tmp_path / "failure.json").read_text())
    assert failure["fit"] == e.name and failure["step"] == e.step
    assert failure["metrics"] == e.metrics and failure["error"] == str(e)
    summary = (tmp_path / "summary.md").read_text()
    assert f"**The sweep stopped early:** {e}" in summary
    assert "non-finite loss" in summary
    assert not (tmp_path / "results.jsonl").exists()  # no cell finished
    # The teacher's checkpoint is kept: the fixed config resumes it (its files are not
    # written again), and the report is clean.
    teacher = list((tmp_path / "checkpoints" / "outliers_0.3").glob("teacher-*/**/*"))
    written = {p: p.stat().st_mtime_ns for p in teacher}
    assert any(p.is_file() for p in teacher)
    fixed = sweep.run(_small_config(), str(tmp_path))
    assert {p: p.stat().st_mtime_ns for p in teacher} == written
    assert not (tmp_path / "failure.json").exists()
    assert "stopped early" not in (tmp_path / "summary.md").read_text()
    assert fixed == sweep.run(_small_config(), str(tmp_path / "fresh"))


def _clean_test_split(config, seed):
    ds = config.dataset
    split = sinusoid.load(
        "test", size=ds.test_size, seed=seed, amplitude=ds.amplitude, frequency=ds.frequency
    )
    return split.x, split.y


def _row(rows, method, head, seed, noise="outliers", level=0.3):
    (row,) = [
        r
        for r in rows
        if (r["method"], r["head"], r["seed"], r["noise"], r["level"])
        == (method, head, seed, noise, level)
    ]
    return row


@ONE_WORKER
def test_exported_student_reproduces_its_results_row(quick_run, capsys):
    """The CLI end to end: tor_multitask of seed 1 (the population's second member), run in
    onnxruntime and as reloaded StableHLO on the clean test split, has the RMSE of its
    results.jsonl row; the JSON says how to use the file."""

    config, workdir, rows, *_ = quick_run
    argv = ["--workdir", workdir, "--cell", "outliers_0.3", "--method", "tor_multitask"]
    assert export_cli.main([*argv, "--seed", "1"]) == 0
    assert "wrote" in capsys.readouterr().out
    stem = os.path.join(workdir, "export", "outliers_0.3", "tor_multitask-seed1")
    x, y = _clean_test_split(config, seed=1)
    expected = _row(rows, "tor_multitask", "label", 1)["rmse"]
    onnx_out = export.load_onnx(stem + ".onnx")(x)
    hlo_out = export.load_stablehlo(stem + ".stablehlo")(x)
    assert set(onnx_out) == set(hlo_out) == {"label"}  # the inference head only
    for out in (onnx_out, hlo_out):
        rmse = float(np.sqrt(np.mean((np.asarray(out["label"], np.float64) - y) ** 2)))
        assert rmse == pytest.approx(expected, abs=1e-6)
    # Seed 0's member is another model: the member index matters.
    other = _row(rows, "tor_multitask", "label", 0)["rmse"]
    assert abs(other - expected) > 1e-4
    with open(stem + ".json") as f:
        meta = json.load(f)
    assert meta["input"]["shape"] == ["batch", 1] and meta["input"]["dtype"] == "float32"
    assert meta["outputs"]["label"]["shape"] == ["batch", 1]
    assert meta["inference_head"] == "label" and meta["to_label"] == "label = target"
    assert meta["test"]["label"]["results_jsonl"] == expected
    assert meta["test"]["label"]["exported_file"] == pytest.approx(expected, abs=1e-6)
    assert meta["fingerprint"]["teacher_store"]["noise"] == {"kind": "outliers", "level": 0.3}
    assert meta["model"]["step"] == config.student.num_steps
    assert 0 <= max(meta["check"]["max_abs_difference"].values()) <= 1e-5
    leftovers = [n for n in os.listdir(os.path.dirname(stem)) if ".tmp" in n]
    assert not leftovers


@ONE_WORKER
def test_exported_teacher_and_both_heads(quick_run):

    config, workdir, rows, *_ = quick_run
    paths = export_cli.export_model(
        workdir, cell="outliers_0.3", method="teacher", seed=0, formats=("onnx",)
    )
    assert set(paths) == {"onnx", "json"}
    x, y = _clean_test_split(config, seed=0)
    pred = export.load_onnx(paths["onnx"])(x)["main"]
    rmse = float(np.sqrt(np.mean((np.asarray(pred, np.float64) - y) ** 2)))
    assert rmse == pytest.approx(_row(rows, "teacher", "main", 0)["rmse"], abs=1e-6)
    paths = export_cli.export_model(
        workdir,
        cell="outliers_0.3",
        method="tor_multitask",
        seed=0,
        head="all",
        formats=("stablehlo",),
    )
    out = export.load_stablehlo(paths["stablehlo"])(x)
    for head in ("label", "teacher"):
        rmse = float(np.sqrt(np.mean((np.asarray(out[head], np.float64) - y) ** 2)))
        assert rmse == pytest.approx(_row(rows, "tor_multitask", head, 0)["rmse"], abs=1e-6)


@pytest.mark.parametrize(
    "args, named",
    [
        (["--cell", "outliers_0.5", "--method", "tor", "--seed", "0"], "outliers_0, outliers_0.3"),
        (
            ["--cell", "outliers_0.3", "--method", "tr", "--seed", "0"],
            "scratch_l2, small_loss, small_loss_oracle, teacher, tor",
        ),
        (["--cell", "outliers_0.3", "--method", "tor", "--seed", "7"], "seed 7 of tor: 0, 1"),
        (
            ["--cell", "outliers_0.3", "--method", "tor", "--seed", "0", "--head", "label"],
            "tor has the head(s) main",
        ),
        (
            ["--cell", "outliers_0.3", "--method", "tor", "--seed", "0", "--format", "tflite"],
            "format tflite",
        ),
    ],
)
@ONE_WORKER
def test_a_bad_export_request_names_what_exists_and_writes_nothing(quick_run, capsys, args, named):

    _, workdir, *_ = quick_run
    before = sorted(os.walk(workdir))
    assert export_cli.main(["--workdir", workdir, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("export: ") and named in err, err
    assert sorted(os.walk(workdir)) == before


@ONE_WORKER
def test_an_unfinished_cell_is_not_exported(quick_run, tmp_path, capsys):
    """A cell whose rows are not (all) in results.jsonl did not finish: refused, naming the
    finished ones, though its checkpoints are there."""

    _, workdir, rows, *_ = quick_run
    copy = tmp_path / "w"
    os.makedirs(copy)
    for name in ("config.json", "inputs.json"):
        with open(os.path.join(workdir, name)) as f, open(copy / name, "w") as g:
            g.write(f.read())
    with open(copy / "results.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows if r["level"] != 0.3)
    os.symlink(os.path.join(workdir, "checkpoints"), copy / "checkpoints")
    argv = ["--workdir", str(copy), "--cell", "outliers_0.3", "--method", "tor", "--seed", "0"]
    assert export_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "no finished cell 'outliers_0.3'" in err and "gaussian_0.2, outliers_0" in err
    assert not os.path.exists(copy / "export")


def test_level_0_of_every_noise_model_is_the_run_of_the_first():

    config = sinusoid_config.get_config()
    first, second = list(config.noise)  # in the order the sweep runs them
    assert sweep.ran_as(config, Cell(second, 0.0)) == Cell(first, 0.0)
    assert sweep.ran_as(config, Cell(first, 0.0)) == Cell(first, 0.0)
    assert sweep.ran_as(config, Cell(second, 0.2)) == Cell(second, 0.2)


@ONE_WORKER
def test_readme_onnxruntime_snippet_runs_on_an_exported_student(quick_run):
    """The README's "Deploy the student" snippet, on this workdir's export of the command
    the README gives."""

    from test_readme import AFTER_EXPORT

    _, workdir, *_ = quick_run
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    command = re.search(r"python -m experiments\.export (.*?)#", readme, flags=re.S).group(1)
    argv = command.replace("\\\n", " ").split()
    argv[argv.index("--workdir") + 1] = workdir
    assert export_cli.main(argv) == 0
    (block,) = [
        b
        for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
        if b.startswith(AFTER_EXPORT)
    ]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block.replace("workdir/sinusoid", workdir), "README.md", "exec"), {})
    for expected in re.findall(r"print\(.*\)[ \t]+# (.*)", block):
        assert expected.strip() in out.getvalue(), (expected, out.getvalue())


@pytest.mark.slow
def test_an_out_of_fold_teacher_exports_as_the_mean_of_its_folds(tmp_path):
    """teacher.folds=2: the teacher's row is the mean of its two fold teachers; so is the
    exported file."""
    import tiny_config  # tests/ is on the path, as for fakes

    config = tiny_config.get_config()
    config.teacher.folds = 2
    config.methods = ("tor",)
    # Level 0 of both noise models: one run, under the first one's name.
    config.noise = ml_collections.ConfigDict({"outliers": (0.0, 0.3), "gaussian": (0.0,)})
    rows = sweep.run(config, str(tmp_path))
    x, y = _clean_test_split(config, seed=1)
    first, second = (f"{kind}_0" for kind in config.noise)
    assert not os.path.exists(tmp_path / "checkpoints" / second)
    for cell, noise, level in (("outliers_0.3", "outliers", 0.3), (second, second[:-2], 0.0)):
        paths = export_cli.export_model(
            str(tmp_path), cell=cell, method="teacher", seed=1, formats=("onnx",)
        )
        pred = np.asarray(export.load_onnx(paths["onnx"])(x)["main"], np.float64)
        rmse = float(np.sqrt(np.mean((pred - y) ** 2)))
        row = _row(rows, "teacher", "main", 1, noise=noise, level=level)
        assert rmse == pytest.approx(row["rmse"], abs=1e-6)
        with open(paths["json"]) as f:
            meta = json.load(f)
        dirs = meta["fingerprint"]["checkpoint_dirs"]
        assert [d[-6:] for d in dirs] == ["-fold0", "-fold1"]
        assert dirs[0].startswith(f"checkpoints/{first if level == 0 else cell}/teacher-")


@ONE_WORKER
def test_a_fit_whose_final_checkpoint_is_gone_is_not_exported(quick_run, monkeypatch, capsys):
    """The latest usable checkpoint is not the fit's last step (the final one damaged):
    refused, saying so, nothing written."""
    from experiments.sweep import trained
    from kd_regression import loop

    _, workdir, *_ = quick_run
    real = loop.load_trained

    def earlier(directory, template, *, name):
        step, state, _ = real(directory, template, name=name)
        return step - 100, state, False

    monkeypatch.setattr(trained.loop, "load_trained", earlier)
    before = sorted(os.walk(workdir))
    argv = ["--workdir", workdir, "--cell", "outliers_0", "--method", "tor", "--seed", "0"]
    assert export_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "latest usable checkpoint is of step 100 of 200" in err, err
    assert sorted(os.walk(workdir)) == before


@ONE_WORKER
def test_a_failed_export_leaves_the_previous_one_as_it_was(quick_run, monkeypatch):
    """ONNX checked and staged, then StableHLO fails: the earlier export stays as it was, no
    staging directory is left; an export with fewer formats removes the others' files."""
    _, workdir, *_ = quick_run
    kwargs = {"cell": "outliers_0", "method": "scratch_l2", "seed": 0}
    paths = export_cli.export_model(workdir, **kwargs)
    directory = os.path.dirname(paths["onnx"])
    listing = sorted(os.listdir(directory))
    contents = {n: open(os.path.join(directory, n), "rb").read() for n in listing}

    def fail(*args, **kw):
        raise export.ExportError("scratch_l2: cannot be exported (a test)")

    with monkeypatch.context() as m:
        m.setattr(export, "export_stablehlo", fail)
        with pytest.raises(export.ExportError):
            export_cli.export_model(workdir, **kwargs)
    assert sorted(os.listdir(directory)) == listing
    assert all(open(os.path.join(directory, n), "rb").read() == c for n, c in contents.items())
    paths = export_cli.export_model(workdir, **kwargs, formats=("onnx",))
    stem = os.path.join(directory, "scratch_l2-seed0")
    assert not os.path.exists(stem + ".stablehlo") and os.path.exists(stem + ".onnx")
    with open(paths["json"]) as f:
        meta = json.load(f)
    assert meta["files"] == {"onnx": "scratch_l2-seed0.onnx", "json": "scratch_l2-seed0.json"}


@ONE_WORKER
def test_a_file_without_the_inference_head_says_so(quick_run):
    _, workdir, *_ = quick_run
    paths = export_cli.export_model(
        workdir,
        cell="outliers_0",
        method="tor_multitask",
        seed=0,
        head="teacher",
        formats=("onnx",),
    )
    with open(paths["json"]) as f:
        meta = json.load(f)
    assert meta["heads"] == ["teacher"] and meta["inference_head"] is None


def test_an_export_of_a_file_or_a_missing_directory_is_one_line_and_status_2(tmp_path, capsys):
    (tmp_path / "file").write_text("not a workdir")
    for workdir, what in (
        (tmp_path / "file", "not a directory"),
        (tmp_path / "no", "no such directory"),
    ):
        argv = ["--workdir", str(workdir), "--cell", "outliers_0", "--method", "tor"]
        assert export_cli.main([*argv, "--seed", "0"]) == 2
        want = f"export: {workdir}: {what}; --workdir is the directory of a finished sweep\n"
        assert capsys.readouterr().err == want


@ONE_WORKER
def test_staging_folders_a_killed_export_left_are_removed_by_the_next(quick_run):
    _, workdir, *_ = quick_run
    kwargs = {"cell": "outliers_0", "method": "kd_l2", "seed": 0}
    directory = os.path.join(workdir, export_cli.EXPORT_DIR, "outliers_0")
    os.makedirs(directory, exist_ok=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid no process has now
    stale = [f".kd_l2-seed0.tmp{dead.pid}-abc", ".kd_l2-seed0.tmpq1w2e3"]  # the last: older
    alive = f".kd_l2-seed0.tmp{os.getppid()}-xyz"  # a live process's: kept
    for name in [*stale, alive]:
        os.makedirs(os.path.join(directory, name, "inner"))
    export_cli.export_model(workdir, **kwargs)
    left = [n for n in os.listdir(directory) if ".tmp" in n]
    assert left == [alive]
    shutil.rmtree(os.path.join(directory, alive))


@ONE_WORKER
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_export_says_one_line_and_leaves_nothing(quick_run, signum):
    """Ctrl-C or SIGTERM while the files are staged: one line, status 130 / 143, no staging
    folder left, the files of an earlier export untouched."""
    _, workdir, *_ = quick_run
    cell, method = "outliers_0.3", "tor"
    directory = os.path.join(workdir, export_cli.EXPORT_DIR, cell)
    argv = ["--workdir", workdir, "--cell", cell, "--method", method, "--seed", "1"]
    run = subprocess.Popen(
        [sys.executable, "-m", "experiments.export", *argv],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    ours = f".{method}-seed1.tmp{run.pid}-"  # its own staging folder, not one left before
    while not (os.path.isdir(directory) and any(n.startswith(ours) for n in os.listdir(directory))):
        assert run.poll() is None and time.time() < deadline, "the export did not stage"
        time.sleep(0.02)
    run.send_signal(signum)
    _, err = run.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert run.returncode == 128 + signum, err[-3000:]
    assert err.strip().splitlines() == [
        f"export interrupted by {name}; rerun the same command (an export is written whole "
        "or not at all)"
    ]
    assert not [n for n in os.listdir(directory) if n.startswith(f".{method}-seed1")]
    assert not os.path.exists(os.path.join(directory, f"{method}-seed1.json"))
