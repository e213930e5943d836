"""The figures of a sweep: noise_sweep.png, paired.png and fits.png."""

from __future__ import annotations

import collections

import numpy as np

from experiments.report import paired
from experiments.report.paired import TEACHER
from experiments.report.report import CLEAN_TEST, aggregate
from kd_regression.fileio import atomic_write
from kd_regression.methods import METHODS

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
