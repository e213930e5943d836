"""The export benchmark runs end to end and prints its table (a smoke run, no timing)."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # a whole benchmark in a new process
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_export_smoke(tmp_path):
    cmd = [sys.executable, "-m", "experiments.bench.export", "--tasks=sinusoid", "--calls=20"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    teacher = next(line for line in lines if line.startswith("| sinusoid teacher |"))
    assert "33,409" in teacher  # the config's MLP 128³, as docs/export.md's table says
    assert any(line.startswith("| sinusoid teacher / student |") for line in lines)
    assert "floor per call" in done.stdout
