"""The speed benchmark runs end to end and prints every figure (a smoke run, no timing)."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")  # the benchmark's baseline; installed by `make test`
pytestmark = pytest.mark.slow  # a whole benchmark in a new process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_speed_smoke():
    cmd = [
        sys.executable,
        "-m",
        "experiments.bench.speed",
        "--scale=0.004",
        "--repeats=1",
        "--sweep_config=quick",
        "--sweep_methods=scratch_l2,tor_multitask",  # one of each kind: the timing is not tested
        "--flops_batches=16",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for section in ("mlp:", "cnn:", "sweep:", "flops:", "pipeline:"):
        assert section in out, out
    assert out.count("PyTorch: eager loop") == 2  # mlp and cnn
    assert "ratio ours/PyTorch" in out  # the sweep
    assert out.count("of matmul") == 1 and "faces teacher (ResNet)" in out
    assert out.count("the pipeline is") == 4  # two models, 1 and 16 steps per call


def test_bench_speed_rejects_unknown_sections():
    cmd = [sys.executable, "-m", "experiments.bench.speed", "--only=mlp,gpu"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "unknown sections ['gpu']" in done.stderr
