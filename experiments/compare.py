"""Paired comparison across sweeps: the same students under two configs, seed by seed.

Two sweeps that differ only in an option of the method (TOR's threshold rule, the
teacher's loss) train on the same seeds' data, noise and initialisations, so their rows
pair by seed like the methods of one sweep do (experiments/report/paired.py). Each method is
labelled ``method [run]``; the table gives, per cell, every student's mean difference of
the task's metric to the reference, its 95 % t interval and on how many seeds it was lower.

    python -m experiments.compare --run mad=runs/a --run mixture=runs/b \\
        --reference "scratch_l2 [mad]" --methods tor,tor_multitask,scratch_huber

``--methods``: the students to show (default: all); a run whose data, seeds or levels
differ from the reference's is an error (the seeds do not pair), not a smaller table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from experiments import tasks
from experiments.report import paired, report

USAGE_ERROR = 2
PAIRED_ON = ("dataset", "noise", "seed", "num_seeds")  # config keys the runs must share


def rows_of(runs: dict[str, str]) -> tuple[list[dict], str]:
    """Every run's student rows, each method labelled with its run; the task's metric."""
    rows, metrics, first = [], set(), None
    for name, workdir in runs.items():
        with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        same = {k: config.get(k) for k in PAIRED_ON}  # what makes seed s the same draw
        if first is not None and same != first[1]:
            keys = sorted(k for k in PAIRED_ON if same[k] != first[1][k])
            raise ValueError(f"runs {first[0]} and {name} differ in {', '.join(keys)}: unpaired")
        first = first or (name, same)
        metrics.add(tasks.get_task(config["dataset"]["name"]).metric[0])
        for r in report.load_rows(os.path.join(workdir, "results.jsonl")):
            rows.append({**r, "method": f"{r['method']} [{name}]"})
    if len(metrics) != 1:
        raise ValueError(f"the runs are of tasks with different metrics: {sorted(metrics)}")
    return rows, metrics.pop()


def table(rows: list[dict], metric: str, reference: str, methods: list[str] | None) -> str:
    """A markdown table: a row per student, a column per (noise, level)."""
    diffs = paired.paired_differences(rows, metric, reference)
    if not diffs:
        raise ValueError(f"no cell has the reference {reference!r}")
    cells = sorted(diffs)
    labels = sorted({m for _, (_, d) in diffs.items() for m in d})
    if methods:
        labels = [m for m in labels if m.split(" [")[0].split(" (")[0] in methods]
    head = " | ".join(f"{noise} {level:g}" for noise, level in cells)
    out = [f"{metric}, minus {reference}", "", f"| | {head} |", "|---" * (len(cells) + 1) + "|"]
    for label in labels:
        entries = []
        for key in cells:
            p = diffs[key][1].get(label)
            entries.append(
                ""
                if p is None
                else f"{p.mean:+.4f} [{p.low:+.4f}, {p.high:+.4f}] {p.improved}/{p.n}"
            )
        out.append(f"| {label} | " + " | ".join(entries) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.compare", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--run", action="append", required=True, help="NAME=WORKDIR")
    parser.add_argument("--reference", required=True, help='e.g. "scratch_l2 [mad]"')
    parser.add_argument("--methods", default="", help="students to show (default: all)")
    args = parser.parse_args(argv)
    try:
        bad = [r for r in args.run if "=" not in r]
        if bad:
            raise ValueError(f"--run {bad[0]}: give NAME=WORKDIR (the name labels its methods)")
        runs = dict(r.split("=", 1) for r in args.run)
        rows, metric = rows_of(runs)
        methods = [m for m in args.methods.split(",") if m]
        print(table(rows, metric, args.reference, methods or None), end="")
    except (ValueError, OSError, KeyError) as e:
        print(f"compare: {type(e).__name__}: {e}", file=sys.stderr)
        return USAGE_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
