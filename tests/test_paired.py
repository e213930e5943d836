"""experiments.report.paired: paired differences to a reference method, their t intervals."""

import json
import random

import numpy as np
import pytest
from scipy import stats

from experiments.report import outputs, paired, report

# Errors of three methods on five seeds of one cell; tor is better than scratch_l2 on
# every seed by a margin that varies less than the errors do, scratch_l1 no different on
# average.
ERRORS = {
    "scratch_l2": [0.30, 0.25, 0.35, 0.28, 0.32],
    "scratch_l1": [0.31, 0.22, 0.36, 0.27, 0.34],
    "tor": [0.22, 0.18, 0.26, 0.20, 0.25],
}


def _rows(errors=ERRORS, level=0.3, folds=(None,)):
    rows = []
    for method, values in errors.items():
        for seed, v in enumerate(values):
            for fold in folds:
                row = {"method": method, "head": "main", "noise": "outliers", "level": level}
                row |= {"seed": seed, "rmse": v + (0 if fold is None else 0.01 * fold)}
                if fold is not None:
                    row["fold"] = fold
                rows.append(row)
    rows.append(
        {
            "method": "teacher",
            "head": "main",
            "noise": "outliers",
            "level": level,
            "seed": 0,
            "rmse": 0.1,
        }
    )
    return rows


def test_the_interval_is_scipys_paired_t_interval():
    ((ref, diffs),) = paired.paired_differences(_rows(), "rmse", "scratch_l2").values()
    assert ref == "scratch_l2" and set(diffs) == {"scratch_l1", "tor"}  # no teacher
    d = np.subtract(ERRORS["tor"], ERRORS["scratch_l2"])
    low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    got = diffs["tor"]
    assert (got.mean, got.low, got.high) == pytest.approx((d.mean(), low, high), rel=1e-12)
    assert got.improved == 5 and got.n == 5 and got.better
    # The same test as SciPy's paired t test: the interval excludes 0 iff p < 0.05.
    for name in ("tor", "scratch_l1"):
        p = stats.ttest_rel(ERRORS[name], ERRORS["scratch_l2"]).pvalue
        assert (p < 0.05) == (diffs[name].better or diffs[name].worse), name
    assert not diffs["scratch_l1"].better and not diffs["scratch_l1"].worse


def test_pairing_is_by_seed_not_by_row_order():
    rows = _rows()
    want = paired.paired_differences(rows, "rmse", "scratch_l2")
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    assert paired.paired_differences(shuffled, "rmse", "scratch_l2") == want
    # Not a comparison of unpaired samples: here the paired interval is narrower than the
    # interval of two independent samples (the seeds' shared difficulty cancels).
    d = want[("outliers", 0.3)][1]["tor"]
    a, b = np.array(ERRORS["tor"]), np.array(ERRORS["scratch_l2"])
    se = np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    unpaired_width = 2 * stats.t.ppf(0.975, 2 * a.size - 2) * se
    assert d.high - d.low < 0.5 * unpaired_width


def test_a_method_missing_for_a_seed_is_an_error_not_a_smaller_sample():
    rows = [r for r in _rows() if not (r["method"] == "tor" and r["seed"] == 3)]
    with pytest.raises(ValueError, match=r"tor and scratch_l2 do not have the same seeds.*3"):
        paired.paired_differences(rows, "rmse", "scratch_l2")
    with pytest.raises(ValueError, match="two rows of tor for seed 0"):
        paired.paired_differences([*_rows(), _rows()[10]], "rmse", "scratch_l2")


def test_folds_pair_by_seed_and_fold_and_the_interval_is_over_seeds():
    rows = _rows(folds=(0, 1))
    ((_, diffs),) = paired.paired_differences(rows, "rmse", "scratch_l2").values()
    plain = paired.paired_differences(_rows(), "rmse", "scratch_l2")[("outliers", 0.3)][1]
    assert diffs["tor"].n == 5 and diffs["tor"] == pytest.approx(plain["tor"])
    broken = [r for r in rows if not (r["method"] == "tor" and r["fold"] == 1 and r["seed"] == 2)]
    with pytest.raises(ValueError, match="same seeds"):
        paired.paired_differences(broken, "rmse", "scratch_l2")


def test_best_robust_is_the_robust_baseline_with_the_lowest_mean_of_each_cell():
    errors = {**ERRORS, "scratch_huber": [0.29, 0.24, 0.30, 0.26, 0.30]}  # mean 0.278
    rows = _rows(errors) + _rows({**ERRORS, "scratch_huber": [0.4] * 5}, level=0.4)
    out = paired.paired_differences(rows, "rmse", paired.BEST_ROBUST)
    assert out[("outliers", 0.3)][0] == "scratch_huber"
    assert out[("outliers", 0.4)][0] == "scratch_l1"  # mean 0.30 against 0.40
    assert "scratch_huber" in out[("outliers", 0.4)][1]  # the other one is compared too


def test_summary_shows_the_paired_tables_bold_where_resolved():
    text = report.summary_markdown(_rows(), references=("scratch_l2", paired.BEST_ROBUST))
    assert "### Paired difference to scratch_l2, outliers" in text
    assert "### Paired difference to the best teacher-free robust baseline" in text
    d = paired.paired_differences(_rows(), "rmse", "scratch_l2")[("outliers", 0.3)][1]["tor"]
    assert f"| tor | **{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}] 5/5** |" in text
    assert "| scratch_l2 | (reference) |" in text
    assert "Paired" not in report.summary_markdown(_rows())  # none asked for


def test_paired_jsonl_one_record_per_comparison_the_same_for_shuffled_rows(tmp_path):
    """write_all's paired.jsonl: the fields docs/cli.md names, a record per (noise, level,
    method, head, reference) without the teacher, the same bytes whatever the row order."""
    errors = {**ERRORS, "scratch_huber": [0.29, 0.24, 0.30, 0.26, 0.30]}
    rows = _rows(errors) + [
        {**r, "method": "tor_multitask", "head": h}
        for r in _rows({"tor": ERRORS["tor"]})
        if r["method"] == "tor"
        for h in ("label", "teacher")
    ]
    references = ("scratch_l2", paired.BEST_ROBUST)
    written = []
    for order in (rows, random.Random(1).sample(rows, len(rows))):
        out = tmp_path / str(len(written))
        out.mkdir()
        paths = outputs.write_all(order, None, str(out), references=references)
        assert str(out / "paired.jsonl") in paths
        written.append((out / "paired.jsonl").read_bytes())
    assert written[0] == written[1]
    records = [json.loads(line) for line in written[0].decode().splitlines()]
    fields = ["noise", "level", "method", "head", "reference", "reference_rule", "metric"]
    fields += ["n", "mean_diff", "ci_low", "ci_high", "improved"]
    assert all(list(r) == fields for r in records)
    keys = {(r["method"], r["head"], r["reference_rule"]) for r in records}
    students = {("scratch_l1", "main"), ("scratch_huber", "main"), ("tor", "main")}
    students |= {("tor_multitask", "label"), ("tor_multitask", "teacher")}
    assert keys == {(*s, "scratch_l2") for s in students} | {
        (*s, "best_robust")
        for s in students | {("scratch_l2", "main")}
        if s != ("scratch_huber", "main")  # the best robust baseline here: the reference
    }
    (tor,) = [r for r in records if (r["method"], r["reference_rule"]) == ("tor", "scratch_l2")]
    d = paired.paired_differences(rows, "rmse", "scratch_l2")[("outliers", 0.3)][1]["tor"]
    assert (tor["mean_diff"], tor["ci_low"], tor["ci_high"]) == (d.mean, d.low, d.high)
    assert tor["reference"] == "scratch_l2" and tor["n"] == 5 and tor["improved"] == 5
    assert {r["reference"] for r in records if r["reference_rule"] == "best_robust"} == {
        "scratch_huber"
    }


def test_no_references_no_paired_jsonl(tmp_path):
    outputs.write_all(_rows(), None, str(tmp_path))
    assert not (tmp_path / "paired.jsonl").exists()
