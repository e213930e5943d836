"""summary.md, noise_sweep.png and fits.png from the rows of results.jsonl."""

from __future__ import annotations

import collections
import json
import math
import os

import numpy as np
from absl import logging

from experiments.report import paired
from experiments.report.paired import TEACHER
from kd_regression.fileio import atomic_write, atomic_write_text
from kd_regression.methods import METHODS

DETECTION = ("rejection_rate", "precision", "recall")
# The methods whose rejection summary.md scores (tor_multitask rejects as tor does).
DETECTORS = ("tor", "small_loss", "small_loss_oracle")
# What write_all writes.
OUTPUTS = ("summary.md", "noise_sweep.png", "fits.png", "paired.png", "paired.jsonl")
# paired.png's methods (ours: the robust baselines, plain distillation and TOR), if run.
PAIRED_METHODS = (
    "scratch_l1",
    "scratch_huber",
    "small_loss",
    "kd_l2",
    "tor",
    "tor_multitask (label head)",
)
_FIT_STYLES = {TEACHER: "C0--", "scratch_l2": "C1-", "tor_multitask": "C2-"}
FIT_METHODS = tuple(k for k in _FIT_STYLES if k != TEACHER)  # the students fits.png draws
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


def _savefig(fig, path: str) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))


def _group(label: str) -> int:
    """0 the teacher, 1 a baseline without a teacher, 2 a method that learns from one."""
    method = METHODS.get(label.split(" (")[0])  # "tor_multitask (label head)" -> its method
    return 0 if label == TEACHER else 1 if method and not method.needs_teacher else 2


# noise_sweep.png's lines by group, so 11+ of them stay apart: the teacher black dashed,
# baselines dotted with squares, methods with a teacher solid with circles; each group
# cycles its own colours (baselines from the far end of the cycle).
_GROUP_STYLES = (
    lambda i: {"ls": "--", "color": "k", "marker": "o"},
    lambda i: {"ls": ":", "marker": "s", "color": f"C{(9 - i) % 10}"},
    lambda i: {"ls": "-", "marker": "o", "color": f"C{i % 10}"},
)


def plot_noise_sweep(
    rows: list[dict],
    path: str,
    metric: tuple[str, str] = ("rmse", "test RMSE"),
    test_labels: str = CLEAN_TEST,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rmse = aggregate(rows, metric[0])
    fig, axes = plt.subplots(1, len(rmse), figsize=(6.5 * len(rmse), 4.5), squeeze=False)
    against = "clean test labels" if test_labels == CLEAN_TEST else "test labels as given"
    for ax, (kind, cells) in zip(axes[0], rmse.items(), strict=True):
        counts = collections.Counter()
        all_levels = sorted({lv for _, lv in cells})
        # Teacher, baselines, then methods with a teacher; each group in the config's order.
        labels = sorted(dict.fromkeys(lb for lb, _ in cells), key=_group)
        for i, label in enumerate(labels):
            levels = sorted(lv for lb, lv in cells if lb == label)
            mean = [cells[(label, lv)][0] for lv in levels]
            se = [np.nan_to_num(cells[(label, lv)][1]) for lv in levels]
            style = _GROUP_STYLES[_group(label)](counts[_group(label)])
            counts[_group(label)] += 1
            # One level (e.g. the labels as they are): the methods side by side, as dots.
            xs = [i] if len(all_levels) == 1 else levels
            ax.errorbar(xs, mean, yerr=se, ms=3, capsize=2, lw=1.2, label=label, **style)
        if len(all_levels) == 1:
            ax.set_xticks([])
            level = "labels as they are" if kind == "none" else f"{kind} level {all_levels[0]:g}"
            ax.set_xlabel(f"{level} (one dot per method, in the legend's order)")
        else:
            ax.set_xticks(all_levels)
            ax.set_xlabel(f"{kind} level")
        ax.set_ylabel(f"{metric[1]}\n({against})")
        ax.set_title(f"noise model: {kind}")
        ax.grid(alpha=0.3)
    axes[0, -1].legend(
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
        title="dotted: no teacher; solid: with teacher",
        title_fontsize=7,
    )
    _savefig(fig, path)
    plt.close(fig)


def plot_paired(
    rows: list[dict], path: str, metric: tuple[str, str], reference: str, robust: tuple
) -> bool:
    """paired.png: per noise model, each of :data:`PAIRED_METHODS` minus ``reference``,
    paired by seed, against the level (95 % t intervals); False if there is nothing to
    draw (no such reference, or one level only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    diffs = paired.paired_differences(rows, metric[0], reference, robust=robust)
    kinds = sorted({k for k, _ in diffs})
    kinds = [k for k in kinds if len({lv for kk, lv in diffs if kk == k}) > 1]
    if not kinds:
        return False
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.5 * len(kinds), 4.5), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        levels = sorted(lv for k, lv in diffs if k == kind)
        step = min(np.diff(levels)) if len(levels) > 1 else 1.0
        counts = collections.Counter()
        for j, label in enumerate(PAIRED_METHODS):
            pts = [
                (lv, diffs[(kind, lv)][1][label]) for lv in levels if label in diffs[(kind, lv)][1]
            ]
            if not pts:
                continue
            xs = [lv + (j - len(PAIRED_METHODS) / 2) * 0.06 * step for lv, _ in pts]
            mean = np.array([d.mean for _, d in pts])
            err = np.nan_to_num(np.array([[d.mean - d.low, d.high - d.mean] for _, d in pts]).T)
            style = _GROUP_STYLES[_group(label)](counts[_group(label)])
            counts[_group(label)] += 1
            ax.errorbar(xs, mean, yerr=err, ms=3, capsize=2, lw=1.2, label=label, **style)
        ax.axhline(0, color="0.4", lw=0.8)
        ax.set_xticks(levels)
        ax.set_xlabel(f"{kind} level")
        ax.set_ylabel(f"{metric[0]} minus {reference}'s, paired by seed\n(below 0: lower error)")
        ax.set_title(f"noise model: {kind} (95 % t intervals over seeds)")
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    _savefig(fig, path)
    plt.close(fig)
    return True


def plot_fits(fits: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    bad = fits["corrupted"]
    ax.scatter(fits["x_train"][~bad], fits["y_train"][~bad], s=3, c="0.7", label="labels")
    if bad.any():
        ax.scatter(
            fits["x_train"][bad],
            fits["y_train"][bad],
            s=3,
            c="tab:red",
            alpha=0.5,
            label="corrupted labels",
        )
    ax.plot(fits["grid"], fits["clean"], "k-", lw=2, label="clean function")
    for key, style in _FIT_STYLES.items():
        if key in fits:
            ax.plot(fits["grid"], fits[key], style, lw=1.5, label=f"{key}")
    ax.set_xlabel("x (input)")
    ax.set_ylabel("y (label)")
    ax.set_title(f"fits at {fits['noise']} level {fits['level']:g} (seed 0)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    _savefig(fig, path)
    plt.close(fig)


def write_all(
    rows: list[dict],
    fits: dict | None,
    workdir: str,
    *,
    elapsed_s: float | list[float] | None = None,
    setup: str | None = None,
    metric: tuple[str, str] = ("rmse", "test RMSE"),
    failure: str | None = None,
    quick: bool = False,
    test_labels: str = CLEAN_TEST,
    references: tuple[str, ...] = (),
    robust: tuple[str, ...] = paired.ROBUST,
) -> list[str]:
    """summary.md, noise_sweep.png, (with ``fits``) fits.png and (with ``references``)
    paired.jsonl and paired.png in ``workdir``; their paths."""
    text = summary_markdown(
        rows,
        elapsed_s=elapsed_s,
        setup=setup,
        metric=metric,
        failure=failure,
        quick=quick,
        test_labels=test_labels,
        references=references,
        robust=robust,
    )
    summary, sweep_png, fits_png, paired_png, paired_jsonl = (
        os.path.join(workdir, n) for n in OUTPUTS
    )
    atomic_write_text(summary, text)
    plot_noise_sweep(rows, sweep_png, metric, test_labels)
    paths = [summary, sweep_png]
    if fits is not None:
        plot_fits(fits, fits_png)
        paths.append(fits_png)
    records = paired.paired_records(rows, metric[0], references, robust=robust)
    if records:
        atomic_write_text(paired_jsonl, "".join(json.dumps(r) + "\n" for r in records))
        paths.append(paired_jsonl)
    if references and plot_paired(rows, paired_png, metric, references[0], robust):
        paths.append(paired_png)
    return paths
