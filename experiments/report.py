"""summary.md, noise_sweep.png and fits.png from the rows of results.jsonl."""

from __future__ import annotations

import collections
import json
import math
import os

import numpy as np
from absl import logging

from kd_regression.fileio import atomic_write, atomic_write_text

TEACHER = "teacher"
DETECTION = ("rejection_rate", "precision", "recall")
OUTPUTS = ("summary.md", "noise_sweep.png", "fits.png")  # what write_all writes
_FIT_STYLES = {TEACHER: "C0--", "scratch_l2": "C1-", "tor_multitask": "C2-"}
FIT_METHODS = tuple(k for k in _FIT_STYLES if k != TEACHER)  # the students fits.png draws


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


def summary_markdown(
    rows: list[dict],
    *,
    elapsed_s: float | None = None,
    setup: str | None = None,
    metric: tuple[str, str] = ("rmse", "test RMSE"),
    failure: str | None = None,
) -> str:
    """The summary; ``failure``: why the sweep stopped early (the tables hold what finished)."""
    rmse = aggregate(rows, metric[0])
    lines = ["# Noise sweep summary", ""]
    if failure:
        lines += [f"**The sweep stopped early:** {failure}", ""]
    if setup:
        lines += [setup, ""]
    if elapsed_s is not None:
        lines += [f"Sweep time: {elapsed_s:.0f} s.", ""]
    seeds = sorted({r["seed"] for r in rows})
    lines += [
        f"{metric[1][0].upper() + metric[1][1:]} on the clean test split, mean ± standard "
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
    detection = {m: aggregate([r for r in rows if r["method"] == "tor"], m) for m in DETECTION}
    for kind in rmse:
        if kind not in detection["rejection_rate"]:
            continue
        cells = {(m, lv): v for m in DETECTION for (_, lv), v in detection[m][kind].items()}
        levels = sorted({lv for _, lv in cells})
        lines += [
            f"### TOR's rejection of training labels, {kind}: rate, and precision / recall "
            "against the true corruption mask (n/a: nothing rejected or nothing corrupted)",
            "",
        ]
        lines += _table(cells, list(DETECTION), levels, mark_best=False)
        lines.append("")
    return "\n".join(lines)


def _savefig(fig, path: str) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))


def plot_noise_sweep(
    rows: list[dict], path: str, metric: tuple[str, str] = ("rmse", "test RMSE")
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rmse = aggregate(rows, metric[0])
    fig, axes = plt.subplots(1, len(rmse), figsize=(6.5 * len(rmse), 4.5), squeeze=False)
    for ax, (kind, cells) in zip(axes[0], rmse.items(), strict=True):
        for label in dict.fromkeys(lb for lb, _ in cells):
            levels = sorted(lv for lb, lv in cells if lb == label)
            mean = [cells[(label, lv)][0] for lv in levels]
            se = [np.nan_to_num(cells[(label, lv)][1]) for lv in levels]
            style = {"ls": "--", "color": "k"} if label == TEACHER else {}
            ax.errorbar(levels, mean, yerr=se, marker="o", ms=3, capsize=2, label=label, **style)
        ax.set_xlabel(f"{kind} level")
        ax.set_ylabel(f"{metric[1]} (clean labels)")
        ax.set_title(f"noise model: {kind}")
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    _savefig(fig, path)
    plt.close(fig)


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
    ax.set_title(f"fits at {fits['noise']} level {fits['level']:g} (seed 0)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    _savefig(fig, path)
    plt.close(fig)


def write_all(
    rows: list[dict],
    fits: dict | None,
    workdir: str,
    *,
    elapsed_s: float | None = None,
    setup: str | None = None,
    metric: tuple[str, str] = ("rmse", "test RMSE"),
    failure: str | None = None,
) -> None:
    text = summary_markdown(rows, elapsed_s=elapsed_s, setup=setup, metric=metric, failure=failure)
    atomic_write_text(os.path.join(workdir, "summary.md"), text)
    plot_noise_sweep(rows, os.path.join(workdir, "noise_sweep.png"), metric)
    if fits is not None:
        plot_fits(fits, os.path.join(workdir, "fits.png"))
