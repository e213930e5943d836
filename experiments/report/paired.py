"""Paired comparisons of the students of a sweep: each method against a reference method.

Every method in a cell trains on the same seeds' data, noise and initialisation, so the
right comparison is paired: the difference of the two methods' errors on each seed (and
each fold, where there are folds), then a t interval of the mean difference over seeds.
Such differences resolve far smaller effects than two means ± standard errors of
independent samples.

A method without a row for some seed (or fold) the reference has, or the other way
round, is an error: a smaller sample that pairs silently would be another comparison.
"""

from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np
from scipy import stats

__all__ = [
    "BEST_ROBUST",
    "ROBUST",
    "Paired",
    "paired_differences",
    "paired_records",
    "resolve_reference",
]

# A reference named by its role: in each cell, the teacher-free robust baseline with the
# lowest mean error there (of the ``robust`` methods given).
BEST_ROBUST = "best_robust"
# The teacher-free robust baselines, by default: robust losses and small-loss selection.
ROBUST = ("scratch_l1", "scratch_huber", "small_loss")
# The teacher's rows in results.jsonl (their "method"), and its role everywhere else.
TEACHER = "teacher"


@dataclasses.dataclass(frozen=True)
class Paired:
    """A method minus its reference, over seeds: the mean difference of the metric
    (negative: the method's error is lower), its ``confidence`` t interval, and on how many
    of the ``n`` seeds the method's error was lower."""

    mean: float
    low: float
    high: float
    improved: int
    n: int

    @property
    def better(self) -> bool:
        """The interval lies below 0: lower error, resolved."""
        return self.high < 0

    @property
    def worse(self) -> bool:
        return self.low > 0


def _label(row: dict) -> str:
    return row["method"] if row["head"] == "main" else f"{row['method']} ({row['head']} head)"


def _by_cell(rows: list[dict], metric: str) -> dict:
    """``{(noise, level): {label: {(seed, fold): value}}}`` of the students' rows."""
    out: dict = collections.defaultdict(lambda: collections.defaultdict(dict))
    for r in rows:
        if r["method"] == TEACHER or metric not in r:
            continue
        value = math.nan if r[metric] is None else float(r[metric])
        unit = (r["seed"], r.get("fold"))
        cell = out[(r["noise"], float(r["level"]))][_label(r)]
        if unit in cell:
            raise ValueError(
                f"two rows of {_label(r)} for seed {unit[0]}"
                + ("" if unit[1] is None else f", fold {unit[1]}")
                + f" in {r['noise']} {r['level']:g}"
            )
        cell[unit] = value
    return out


def resolve_reference(cell: dict, reference: str, robust: tuple[str, ...]) -> str | None:
    """The label ``reference`` stands for in one cell's ``{label: {unit: value}}`` (None if
    the cell has no such method)."""
    if reference != BEST_ROBUST:
        return reference if reference in cell else None
    # Summed in (seed, fold) order: the same mean, to the last bit, whatever the row order.
    means = [
        (float(np.mean([v for _, v in sorted(cell[m].items())])), m) for m in robust if m in cell
    ]
    return min(means)[1] if means else None


def paired_differences(
    rows: list[dict],
    metric: str,
    reference: str,
    *,
    robust: tuple[str, ...] = ROBUST,
    confidence: float = 0.95,
) -> dict[tuple[str, float], tuple[str, dict[str, Paired]]]:
    """For each (noise, level): the reference's label there, and each other student's
    :class:`Paired` difference to it.

    ``reference``: a method's label as in summary.md (``scratch_l2``, ``tor_multitask
    (label head)``), or :data:`BEST_ROBUST`: per cell, the one of ``robust`` with the lowest
    mean ``metric``. Rows of several folds are paired per (seed, fold) and the differences
    averaged per seed: the interval is over seeds, as summary.md's standard errors are.
    """
    out = {}
    for key, cell in sorted(_by_cell(rows, metric).items()):
        ref = resolve_reference(cell, reference, robust)
        if ref is None:
            continue
        out[key] = (
            ref,
            {m: _pair(cell[m], cell[ref], m, ref, key, confidence) for m in cell if m != ref},
        )
    return out


def _pair(values: dict, ref: dict, label: str, ref_label: str, key, confidence) -> Paired:
    if set(values) != set(ref):
        only = sorted(set(values) ^ set(ref), key=repr)
        raise ValueError(
            f"{key[0]} {key[1]:g}: {label} and {ref_label} do not have the same seeds "
            f"(and folds) to pair: (seed, fold) {only} only in one; pairing the rest would "
            "be another comparison"
        )
    per_seed = collections.defaultdict(list)
    for unit, v in values.items():
        per_seed[unit[0]].append(v - ref[unit])
    d = np.array([np.mean(v) for _, v in sorted(per_seed.items())], np.float64)
    n = int(d.size)
    mean = float(np.mean(d))
    if n < 2 or not np.isfinite(d).all():
        return Paired(mean, math.nan, math.nan, int(np.sum(d < 0)), n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * np.std(d, ddof=1) / math.sqrt(n))
    return Paired(mean, mean - half, mean + half, int(np.sum(d < 0)), n)


def paired_records(
    rows: list[dict], metric: str, references: tuple[str, ...], *, robust: tuple[str, ...] = ROBUST
) -> list[dict]:
    """paired.jsonl: one record per (noise, level, method, head, reference) of
    :func:`paired_differences`, sorted: ``noise, level, method, head, reference`` (the
    method compared with; ``reference_rule`` says how it was chosen: its own name, or
    ``best_robust``), ``metric, n, mean_diff, ci_low, ci_high, improved`` (seeds with a
    strictly lower metric). An interval of fewer than 2 seeds is null."""
    names = {_label(r): (r["method"], r["head"]) for r in rows if r["method"] != TEACHER}
    out = []
    for rule in references:
        for (noise, level), (ref, diffs) in paired_differences(
            rows, metric, rule, robust=robust
        ).items():
            for label, d in diffs.items():
                method, head = names[label]
                out.append(
                    {
                        "noise": noise,
                        "level": level,
                        "method": method,
                        "head": head,
                        "reference": ref,
                        "reference_rule": rule,
                        "metric": metric,
                        "n": d.n,
                        "mean_diff": d.mean,
                        "ci_low": None if math.isnan(d.low) else d.low,
                        "ci_high": None if math.isnan(d.high) else d.high,
                        "improved": d.improved,
                    }
                )
    return sorted(
        out, key=lambda r: (r["noise"], r["level"], r["reference_rule"], r["method"], r["head"])
    )
