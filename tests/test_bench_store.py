"""The store benchmark runs end to end and prints every variant (a smoke run, no timing)."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # a whole benchmark in a new process
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_store_smoke():
    cmd = [
        sys.executable,
        "-m",
        "experiments.bench.store",
        "--scale=0.005",
        "--rows=0.05",
        "--repeats=1",
        "--warmup=1",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for label in ("(a) scratch", "(b) store", "(b') loaded", "(c) online", "(b)/(a)"):
        assert done.stdout.count(label) == 2, done.stdout  # both cases
