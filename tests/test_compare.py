"""experiments/compare.py: students of two sweeps paired by seed."""

import json

import numpy as np
from scipy import stats

from experiments import compare

CONFIG = {"seed": 0, "num_seeds": 3, "dataset": {"name": "sinusoid"}, "noise": {"outliers": [0.2]}}


def _run(path, values: dict[str, list[float]], config=CONFIG):
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    rows = [
        {"method": m, "head": "main", "noise": "outliers", "level": 0.2, "seed": s, "rmse": v}
        for m, vs in values.items()
        for s, v in enumerate(vs)
    ]
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_two_runs_pair_by_seed_and_unpaired_runs_are_refused(tmp_path, capsys):
    a = _run(
        tmp_path / "a",
        {"teacher": [0.1] * 3, "scratch_l2": [1.0, 2.0, 3.0], "tor": [0.9, 1.8, 2.9]},
    )
    b = _run(tmp_path / "b", {"scratch_l2": [1.0, 2.0, 3.0], "tor": [0.5, 1.9, 2.0]})
    argv = ["--run", f"mad={a}", "--run", f"mixture={b}", "--reference", "tor [mad]"]
    assert compare.main([*argv, "--methods", "tor"]) == 0
    out = capsys.readouterr().out.splitlines()
    d = np.array([0.5 - 0.9, 1.9 - 1.8, 2.0 - 2.9])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    want = (
        f"| tor [mixture] | {d.mean():+.4f} [{d.mean() - half:+.4f}, {d.mean() + half:+.4f}] 2/3 |"
    )
    assert out[0] == "rmse, minus tor [mad]"
    assert out[2:] == ["| | outliers 0.2 |", "|---|---|", want]  # the teacher is no student

    other = _run(tmp_path / "c", {"tor": [0.5, 1.9, 2.0]}, {**CONFIG, "num_seeds": 5})
    assert (
        compare.main(["--run", f"mad={a}", "--run", f"x={other}", "--reference", "tor [mad]"]) == 2
    )
    assert "runs mad and x differ in num_seeds: unpaired" in capsys.readouterr().err
    short = _run(tmp_path / "d", {"tor": [0.5, 1.9]})  # a seed missing
    assert (
        compare.main(["--run", f"mad={a}", "--run", f"x={short}", "--reference", "tor [mad]"]) == 2
    )
    assert "seed" in capsys.readouterr().err
    assert compare.main(["--run", a, "--reference", "tor [mad]"]) == 2  # no name
    assert f"--run {a}: give NAME=WORKDIR" in capsys.readouterr().err
