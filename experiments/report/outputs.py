"""Everything a sweep reports, written into its workdir: summary.md, the figures,
paired.jsonl."""

from __future__ import annotations

import json
import os
from typing import Any

from experiments.report import figures, paired
from experiments.report.report import CLEAN_TEST, summary_markdown
from kd_regression.fileio import atomic_write_text

# What write_all writes.
OUTPUTS = ("summary.md", "noise_sweep.png", "fits.png", "paired.png", "paired.jsonl")


def write_all(
    rows: list[dict],
    fits: dict | None,
    workdir: str,
    *,
    metric: tuple[str, str] = ("rmse", "test RMSE"),
    test_labels: str = CLEAN_TEST,
    references: tuple[str, ...] = (),
    robust: tuple[str, ...] = paired.ROBUST,
    **summary: Any,
) -> list[str]:
    """summary.md, noise_sweep.png, (with ``fits``) fits.png and (with ``references``)
    paired.jsonl and paired.png in ``workdir``; their paths. ``summary``: the rest of
    :func:`~experiments.report.report.summary_markdown`'s options (``elapsed_s``,
    ``setup``, ``failure``, ``quick``)."""
    text = summary_markdown(
        rows,
        metric=metric,
        test_labels=test_labels,
        references=references,
        robust=robust,
        **summary,
    )
    summary, sweep_png, fits_png, paired_png, paired_jsonl = (
        os.path.join(workdir, n) for n in OUTPUTS
    )
    atomic_write_text(summary, text)
    figures.plot_noise_sweep(rows, sweep_png, metric, test_labels)
    paths = [summary, sweep_png]
    if fits is not None:
        figures.plot_fits(fits, fits_png)
        paths.append(fits_png)
    records = paired.paired_records(rows, metric[0], references, robust=robust)
    if records:
        atomic_write_text(paired_jsonl, "".join(json.dumps(r) + "\n" for r in records))
        paths.append(paired_jsonl)
    if references and figures.plot_paired(rows, paired_png, metric, references[0], robust):
        paths.append(paired_png)
    return paths
