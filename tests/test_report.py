"""experiments.report: mean ± standard error over seeds, best-per-column marking."""

import math

import numpy as np

from experiments import report


def _rows():
    rows = []
    for seed, (a, b, t) in enumerate([(1.0, 2.0, 0.1), (3.0, 2.5, 0.1), (2.0, 3.5, 0.1)]):
        for method, value in (("scratch_l2", a), ("tor", b), ("teacher", t)):
            rows.append(
                {
                    "method": method,
                    "head": "main",
                    "noise": "outliers",
                    "level": 0.2,
                    "seed": seed,
                    "rmse": value,
                    "mae": value / 2,
                }
            )
        rows.append(
            {
                "method": "tor_multitask",
                "head": "label",
                "noise": "outliers",
                "level": 0.2,
                "seed": seed,
                "rmse": 9.0,
                "mae": 1.0,
                "recall": None if seed == 0 else 0.5,
            }
        )
    return rows


def test_mean_and_standard_error():
    cells = report.aggregate(_rows(), "rmse")["outliers"]
    mean, se = cells[("scratch_l2", 0.2)]
    assert mean == 2.0
    assert math.isclose(se, np.std([1.0, 3.0, 2.0], ddof=1) / np.sqrt(3))
    assert cells[("tor_multitask (label head)", 0.2)][0] == 9.0
    recall = report.aggregate(_rows(), "recall")["outliers"][("tor_multitask (label head)", 0.2)]
    assert recall[0] == 0.5  # the undefined (null) seed is left out of the mean


def test_best_student_is_bold_and_the_teacher_never_is():
    text = report.summary_markdown(_rows())
    lines = {
        line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")
    }
    assert "**2.000 ± 0.577**" in lines["scratch_l2"]  # the lowest student mean
    assert "**" not in lines["tor"] and "**" not in lines["teacher"]  # teacher is lower still
    assert "tor_multitask (label head)" in lines


def test_undefined_scores_show_as_na():
    rows = [r for r in _rows() if r["seed"] == 0]
    for r in rows:
        if r["method"] == "tor_multitask":
            r["method"] = "tor"
            r["head"] = "main"
            r.update(rejection_rate=0.0, precision=None)
    text = report.summary_markdown(rows)
    assert "| precision | n/a |" in text


def test_folds_are_averaged_per_seed_before_the_standard_error():
    rows = [
        {
            "method": "tor",
            "head": "main",
            "noise": "outliers",
            "level": 0.2,
            "seed": seed,
            "fold": fold,
            "mae": value,
            "rmse": value,
        }
        for seed, fold, value in [(0, 0, 1.0), (0, 1, 3.0), (1, 0, 4.0), (1, 1, 8.0)]
    ]  # per-seed fold means 2 and 6
    mean, se = report.aggregate(rows, "mae")["outliers"][("tor", 0.2)]
    assert mean == 4.0
    assert np.isclose(se, np.std([2.0, 6.0], ddof=1) / np.sqrt(2))  # 2, not over 4 rows
