"""The rows of results.jsonl read and aggregated over seeds, and summary.md's tables.

The figures are in :mod:`experiments.report.figures`; :mod:`experiments.report.outputs`
writes them all into a workdir.
"""

from __future__ import annotations

import collections
import json
import math

import numpy as np
from absl import logging

from experiments.report import paired
from experiments.report.paired import TEACHER

DETECTION = ("rejection_rate", "precision", "recall")
# The methods whose rejection summary.md scores (tor_multitask rejects as tor does).
DETECTORS = ("tor", "small_loss", "small_loss_oracle")
CLEAN_TEST = "on the clean test split"  # what the test labels are, in the summary's words
QUICK_BANNER = (
    "> **A `:quick` run: its numbers check the plumbing only and mean nothing** (a few "
    "steps of tiny models, few seeds). Run the config without `:quick` for results."
)


def load_rows(path: str) -> list[dict]:
    """The rows of a results.jsonl. A last line cut short (a write killed part way, by a
    writer that does not replace the file atomically) is dropped with a warning; a bad line
    anywhere else is an error naming the file and the line."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if i == len(lines) - 1:  # no newline after it: the write never finished
                logging.warning("%s: dropped a half-written last line (%s)", path, e)
                continue
            raise ValueError(
                f"{path}, line {i + 1}: not a JSON object ({e}); the file was edited or "
                "damaged: delete that line, or the file, and rerun to recompute"
            ) from e
        rows.append(row)
    return rows


def _label(method: str, head: str) -> str:
    return method if head == "main" else f"{method} ({head} head)"


def _mean_se(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return math.nan, math.nan
    se = float(np.std(a, ddof=1) / np.sqrt(a.size)) if a.size > 1 else math.nan
    return float(np.mean(a)), se


def aggregate(rows: list[dict], metric: str) -> dict[str, dict[tuple[str, float], tuple]]:
    """``{noise: {(label, level): (mean, standard error)}}`` over seeds.

    Rows of several folds (MPIIGaze's test people) are first averaged per seed, so the
    standard error is over seeds, as without folds.
    """
    groups = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in rows:
        if metric in r:  # null (undefined, e.g. precision with nothing rejected) -> NaN
            value = math.nan if r[metric] is None else r[metric]
            key = (r["noise"], _label(r["method"], r["head"]), r["level"])
            groups[key][r["seed"]].append(value)
    out: dict = collections.defaultdict(dict)
    for (kind, label, level), per_seed in groups.items():
        out[kind][(label, level)] = _mean_se([_mean_se(v)[0] for v in per_seed.values()])
    return out


def _fmt(mean: float, se: float, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if not math.isfinite(se) else f"{mean:.{digits}f} ± {se:.{digits}f}"


def _table(cells: dict, labels: list[str], levels: list[float], *, mark_best: bool) -> list[str]:
    lines = ["| | " + " | ".join(f"{lv:g}" for lv in levels) + " |"]
    lines.append("|---|" + "---|" * len(levels))
    best = {}
    if mark_best:
        for lv in levels:
            means = [
                (cells[(lb, lv)][0], lb)
                for lb in labels
                if (lb, lv) in cells and lb != TEACHER and math.isfinite(cells[(lb, lv)][0])
            ]
            if means:
                best[lv] = min(means)[1]
    for lb in labels:
        row = []
        for lv in levels:
            if (lb, lv) not in cells:
                row.append("")
                continue
            text = _fmt(*cells[(lb, lv)])
            row.append(f"**{text}**" if best.get(lv) == lb else text)
        lines.append(f"| {lb} | " + " | ".join(row) + " |")
    return lines


def _sweep_time(elapsed_s) -> str:
    """``elapsed_s``: seconds, or each run's seconds (a resumed sweep: their sum)."""
    runs = [float(elapsed_s)] if np.ndim(elapsed_s) == 0 else [float(s) for s in elapsed_s]
    if len(runs) == 1:
        return f"Sweep time: {runs[0]:.0f} s."
    each = ", ".join(f"{s:.0f} s" for s in runs)
    return f"Sweep time: {sum(runs):.0f} s, the sum of its {len(runs)} runs ({each})."


def summary_markdown(
    rows: list[dict],
    *,
    elapsed_s: float | list[float] | None = None,
    setup: str | None = None,
    metric: tuple[str, str] = ("rmse", "test RMSE"),
    failure: str | None = None,
    quick: bool = False,
    test_labels: str = CLEAN_TEST,
    references: tuple[str, ...] = (),
    robust: tuple[str, ...] = paired.ROBUST,
) -> str:
    """The summary; ``elapsed_s``: the sweep's seconds, or those of each of its runs;
    ``failure``: why the sweep stopped early (the tables hold what finished);
    ``quick``: a banner that the numbers mean nothing; ``test_labels``: what the metric is
    measured against, in words ("on the clean test split"); ``references``: methods (or
    ``best_robust``: the best of ``robust`` in each column) every student is compared with,
    paired by seed (:mod:`experiments.report.paired`)."""
    rmse = aggregate(rows, metric[0])
    lines = ["# Noise sweep summary", ""]
    if quick:
        lines += [QUICK_BANNER, ""]
    if failure:
        lines += [f"**The sweep stopped early:** {failure}", ""]
    if setup:
        lines += [setup, ""]
    if elapsed_s is not None:
        lines += [_sweep_time(elapsed_s), ""]
    seeds = sorted({r["seed"] for r in rows})
    lines += [
        f"{metric[1][0].upper() + metric[1][1:]} {test_labels}, mean ± standard "
        f"error over {len(seeds)} seeds; "
        "**bold** is the best student per column (the teacher row is the large model, "
        "not a student).",
        "",
    ]
    for kind, cells in rmse.items():
        labels = list(dict.fromkeys(lb for lb, _ in cells))
        levels = sorted({lv for _, lv in cells})
        lines += [f"## Noise model: {kind} (columns: level)", ""]
        lines += _table(cells, labels, levels, mark_best=True)
        lines.append("")
        for reference in references:
            lines += _paired_table(rows, kind, metric, reference, robust, labels, levels)
        lines += _per_output(rows, kind, metric)
    for kind in rmse:
        lines += _detection_table(rows, kind)
    return "\n".join(lines)


def _detection_table(rows: list[dict], kind: str) -> list[str]:
    """The rejection scores of :data:`DETECTORS` (those run) under noise model ``kind``."""
    cells, labels = {}, []
    for method in DETECTORS:
        ours = [r for r in rows if r["method"] == method and r["noise"] == kind]
        for m in DETECTION:
            for (_, lv), v in aggregate(ours, m).get(kind, {}).items():
                cells[(f"{method}: {m}", lv)] = v
                labels.append(f"{method}: {m}")
    if not cells:
        return []
    levels = sorted({lv for _, lv in cells})
    lines = [
        f"### Rejection of training labels, {kind}: rate, and precision / recall against "
        "the true corruption mask (tor: the teacher's residual over δ; small_loss: the "
        "trained student's fraction q of largest own losses on the training split; n/a: "
        "a precision with nothing rejected, a recall with nothing corrupted, or no mask: "
        "labels used as they are)",
        "",
    ]
    return [*lines, *_table(cells, list(dict.fromkeys(labels)), levels, mark_best=False), ""]


def _paired_table(rows, kind, metric, reference, robust, labels, levels) -> list[str]:
    """Each student minus ``reference``, paired by seed: mean Δ [95 % t interval] and the
    seeds improved; **bold** where the interval lies below 0."""
    cells = {
        lv: v
        for (k, lv), v in paired.paired_differences(
            [r for r in rows if r["noise"] == kind], metric[0], reference, robust=robust
        ).items()
        if k == kind
    }
    if not cells:
        return []
    what = (
        f"the best teacher-free robust baseline of each column (of {', '.join(robust)})"
        if reference == paired.BEST_ROBUST
        else reference
    )
    lines = [
        f"### Paired difference to {what}, {kind}: {metric[0]} of the method minus the "
        "reference's, mean over seeds [95 % t interval], seeds improved; **bold**: the "
        "interval excludes 0 on the side of a lower error",
        "",
        "| | " + " | ".join(f"{lv:g}" for lv in levels) + " |",
        "|---|" + "---|" * len(levels),
    ]
    if reference == paired.BEST_ROBUST:
        refs = [cells[lv][0] if lv in cells else "" for lv in levels]
        lines.append("| reference | " + " | ".join(refs) + " |")
    for lb in labels:
        if lb == TEACHER:
            continue
        row = []
        for lv in levels:
            ref, diffs = cells.get(lv, ("", {}))
            d = diffs.get(lb)
            if d is None:
                row.append("(reference)" if lb == ref else "")
                continue
            text = f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}] {d.improved}/{d.n}"
            row.append(f"**{text}**" if d.better else text)
        lines.append(f"| {lb} | " + " | ".join(row) + " |")
    return [*lines, ""]


def _per_output(rows: list[dict], kind: str, metric: tuple[str, str]) -> list[str]:
    """Tables of the per-output metrics (``rmse_<name>``: data with several targets)."""
    prefix = f"{metric[0]}_"
    keys = sorted({k for r in rows if r["noise"] == kind for k in r if k.startswith(prefix)})
    lines = []
    for key in keys:
        cells = aggregate([r for r in rows if r["noise"] == kind], key)[kind]
        labels = list(dict.fromkeys(lb for lb, _ in cells))
        levels = sorted({lv for _, lv in cells})
        lines += [f"### {metric[0]} of output {key[len(prefix) :]!r}, {kind}", ""]
        lines += _table(cells, labels, levels, mark_best=True)
        lines.append("")
    return lines
