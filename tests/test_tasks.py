"""experiments.tasks and the sweep's per-seed loop for CNNs."""

import numpy as np

from experiments import sweep, tasks
from experiments.configs import faces as faces_config


def test_faces_metrics_are_angular_errors_in_degrees():
    task = tasks.get_task("faces")
    true = np.array([[[10.0], [-50.0], [170.0]]])  # [S=1, n=3, 1] degrees
    pred = task.to_target(np.array([12.0, -44.0, -178.0]))[None]  # errors 2, 6, 12 degrees
    got = task.metrics(pred, true)
    np.testing.assert_allclose(got["mae"], [20.0 / 3], rtol=1e-6)
    np.testing.assert_allclose(got["rmse"], [np.sqrt((4 + 36 + 144) / 3)], rtol=1e-6)
    assert task.label_range(faces_config.get_config().dataset, {}) == (-60.0, 60.0)


def test_faces_quick_sweep_end_to_end(tmp_path):
    config = faces_config.get_config("quick")
    config.noise = {"outliers": [0.3]}
    rows = sweep.run(config, str(tmp_path))
    assert {r["method"] for r in rows} == {"teacher", *config.methods}
    for row in rows:
        assert np.isfinite(row["rmse"]) and 0 <= row["mae"] <= row["rmse"] <= 180, row
    assert (tmp_path / "summary.md").exists() and (tmp_path / "noise_sweep.png").exists()
    assert not (tmp_path / "fits.png").exists()  # faces draw no fits
