"""experiments.report.report: mean ± standard error over seeds, best-per-column marking."""

import math
import os
from unittest import mock

import numpy as np

from experiments.report import figures, outputs, report
from kd_regression.methods import METHODS


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
    assert "| tor: precision | n/a |" in text


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


def test_a_quick_run_says_so_first_and_the_test_labels_are_named():
    text = report.summary_markdown(_rows(), quick=True)
    assert text.splitlines()[2] == report.QUICK_BANNER  # under the title, before anything
    assert "numbers check the plumbing only and mean nothing" in text
    assert "Test RMSE on the clean test split, mean" in text
    assert report.QUICK_BANNER not in report.summary_markdown(_rows())
    given = report.summary_markdown(_rows(), test_labels="against the test labels as given")
    assert "Test RMSE against the test labels as given, mean" in given
    assert "clean test split" not in given


def test_each_output_of_several_gets_its_own_table():
    rows = _rows()
    for r in rows:
        r.update(rmse_pitch=r["rmse"] * 2, rmse_yaw=r["rmse"] / 2)
    text = report.summary_markdown(rows)
    assert "### rmse of output 'pitch', outliers" in text
    assert "### rmse of output 'yaw', outliers" in text
    pitch = text.split("### rmse of output 'pitch'")[1].split("###")[0]
    assert "**4.000 ± 1.155**" in pitch  # scratch_l2's 2.0 ± 0.577, doubled
    assert "rmse of output" not in report.summary_markdown(_rows())  # one output: none


def test_write_all_returns_the_files_it_wrote(tmp_path):
    paths = outputs.write_all(_rows(), None, str(tmp_path), quick=True)
    assert [os.path.basename(p) for p in paths] == ["summary.md", "noise_sweep.png"]
    assert sorted(os.listdir(tmp_path)) == ["noise_sweep.png", "summary.md"]
    assert open(paths[0]).read().startswith("# Noise sweep summary\n\n> **A `:quick` run")


def test_the_sweep_figure_draws_groups_in_their_own_styles(tmp_path):
    """11+ lines stay readable: teacher black dashed, baselines dotted, the rest solid."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = [*METHODS, "tor_multitask (teacher head)", "teacher"]
    rows = [
        {
            "method": n.split(" (")[0],
            "head": "teacher" if "(" in n else "main",
            "noise": kind,
            "level": lv,
            "seed": 0,
            "rmse": 1.0 + i + lv,
        }
        for i, n in enumerate(names)
        for kind in ("outliers", "gaussian")
        for lv in (0.0, 0.2)
    ]
    drawn = []
    with mock.patch.object(plt, "close", lambda fig: drawn.append(fig)):
        figures.plot_noise_sweep(rows, str(tmp_path / "sweep.png"))
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    axes = drawn[0].axes
    assert len(axes) == 2  # one panel per noise model
    lines = {c.get_label(): c.lines[0] for c in axes[0].containers}  # the errorbars
    assert len(lines) == len(names)
    legend = [t.get_text() for t in axes[-1].get_legend().get_texts()]
    baselines = [n for n in METHODS if not METHODS[n].needs_teacher]  # registry order
    assert baselines[:3] == ["scratch_l2", "scratch_l1", "scratch_huber"]
    assert legend[: 1 + len(baselines)] == ["teacher", *baselines]  # grouped, in order
    assert lines["teacher"].get_linestyle() == "--" and lines["teacher"].get_color() == "k"
    assert {lines[b].get_linestyle() for b in baselines} == {":"}
    rest = [n for n in names if n not in ("teacher", *baselines)]
    assert {lines[n].get_linestyle() for n in rest} == {"-"}
    assert len({lines[n].get_color() for n in rest}) == len(rest)  # no colour used twice
    assert axes[0].get_ylabel() == "test RMSE\n(clean test labels)"
    plt.close(drawn[0])
    one = [r for r in rows if r["level"] == 0.0 and r["noise"] == "outliers"]
    with mock.patch.object(plt, "close", lambda fig: drawn.append(fig)):
        figures.plot_noise_sweep(one, str(tmp_path / "one.png"))
    xs = [list(c.lines[0].get_xdata()) for c in drawn[1].axes[0].containers]
    assert xs == [[i] for i in range(len(names))]  # one level: the methods side by side
    plt.close(drawn[1])


def test_the_fits_figure_names_its_axes(tmp_path):
    from matplotlib import pyplot as plt

    grid = np.linspace(-1, 1, 5)
    fits = {
        "x_train": grid,
        "y_train": grid,
        "corrupted": grid > 0.5,
        "grid": grid,
        "clean": grid,
        "teacher": grid,
        "scratch_l2": grid,
        "noise": "outliers",
        "level": 0.3,
    }
    drawn = []
    with mock.patch.object(plt, "close", lambda fig: drawn.append(fig)):
        figures.plot_fits(fits, str(tmp_path / "fits.png"))
    ax = drawn[0].axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x (input)", "y (label)")
    assert ax.get_title() == "fits at outliers level 0.3 (seed 0)"
    plt.close(drawn[0])


def test_the_sweep_time_of_a_resumed_sweep_is_the_sum_of_its_runs():
    rows = [{"method": "teacher", "head": "main", "noise": "outliers", "level": 0.0}]
    rows = [{**rows[0], "seed": 0, "rmse": 0.1, "mae": 0.1}]
    assert "Sweep time: 12 s.\n" in report.summary_markdown(rows, elapsed_s=12.3)
    assert "Sweep time: 12 s.\n" in report.summary_markdown(rows, elapsed_s=[12.3])
    text = report.summary_markdown(rows, elapsed_s=[150.2, 60.1, 0.2])
    assert "Sweep time: 210 s, the sum of its 3 runs (150 s, 60 s, 0 s).\n" in text
