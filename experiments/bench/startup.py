"""What a run costs before it computes: start-up time, peak memory and the environment's size.

    python -m experiments.bench.startup [--repeats 3] [--config sinusoid:quick]

Runs ``python -m experiments.main --config CONFIG`` in a fresh process (a new workdir each
round) and prints, as medians over the rounds: the start-up time (from the command to the
sweep's "data-parallel over ..." line, printed just before the first cell starts), the
whole run's wall time, the process's peak resident memory, and whether TensorFlow was
imported; then the size of the Python environment running it (its ``sys.prefix``).
docs/dependencies.md's table was made with it.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

READY = "data-parallel over"  # the sweep's last line before its first cell


def one_run(config: str) -> dict:
    """One run in a fresh process: start-up and wall seconds, peak RSS in MiB."""
    with tempfile.TemporaryDirectory() as tmp:
        script = (
            "import runpy, sys, atexit\n"
            "atexit.register(lambda: print('TENSORFLOW_IMPORTED', 'tensorflow' in sys.modules,"
            " file=sys.stderr, flush=True))\n"
            "sys.argv = ['kd-regression', '--config', sys.argv[1], '--workdir', sys.argv[2]]\n"
            "runpy.run_module('experiments.main', run_name='__main__')\n"
        )
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", script, config, os.path.join(tmp, "w")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        ready, tf, lines = None, None, []
        for line in proc.stdout:
            lines.append(line)
            if ready is None and READY in line:
                ready = time.perf_counter() - t0
            if line.startswith("TENSORFLOW_IMPORTED"):
                tf = line.split()[1] == "True"
        proc.wait()
        wall = time.perf_counter() - t0
    if proc.returncode != 0 or ready is None:
        status = f"the run failed (status {proc.returncode})"
        sys.exit(f"experiments.bench.startup: {status}:\n{''.join(lines)}")
    # ru_maxrss of the children waited for: the largest of them (KiB on Linux).
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"startup_s": ready, "wall_s": wall, "peak_rss_mib": rss, "tensorflow": tf}


def environment_mib() -> float:
    """Bytes of every file under the running Python's ``sys.prefix`` (the venv), in MiB."""
    total = 0
    for root, _, files in os.walk(sys.prefix):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                total += os.path.getsize(path)
    return total / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", default="sinusoid:quick")
    args = parser.parse_args()
    runs = [one_run(args.config) for _ in range(args.repeats)]
    print(f"kd-regression --config {args.config}, {args.repeats} fresh processes (median):")
    startup, wall = (statistics.median(r[k] for r in runs) for k in ("startup_s", "wall_s"))
    print(f"  start-up (command to first cell): {startup:.1f} s")
    print(f"  whole run:                        {wall:.1f} s")
    # RUSAGE_CHILDREN keeps the maximum over all children: the peak of the rounds.
    print(f"  peak RSS (largest round):         {runs[-1]['peak_rss_mib']:.0f} MiB")
    print(f"  TensorFlow imported:              {'yes' if runs[0]['tensorflow'] else 'no'}")
    print(f"environment (sys.prefix, the venv running this): {environment_mib() / 1024:.2f} GiB")


if __name__ == "__main__":
    main()
