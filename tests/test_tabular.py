"""The synthetic tabular benchmark's data file (experiments/data/tabular.py)."""

import numpy as np
from scipy import stats

from experiments.data import tabular


def _friedman(x):
    x = x.astype(np.float64)
    return (
        10 * np.sin(np.pi * x[:, 0] * x[:, 1])
        + 20 * (x[:, 2] - 0.5) ** 2
        + 10 * x[:, 3]
        + 5 * x[:, 4]
    )


def test_the_file_is_the_same_for_the_same_seed_and_its_noise_heavy_tailed(tmp_path):
    path = tabular.write(str(tmp_path))
    with np.load(path) as f:
        got = dict(f)
    assert {k: v.shape for k, v in got.items()} == {
        "x": (tabular.TRAIN_ROWS, 10),
        "y": (tabular.TRAIN_ROWS,),
        "x_test": (tabular.TEST_ROWS, 10),
        "y_test": (tabular.TEST_ROWS,),
    }
    again = tabular.make(0)
    for k, v in got.items():
        np.testing.assert_array_equal(v, again[k])
    assert not np.array_equal(tabular.make(1)["y"], got["y"])
    assert [p.name for p in tmp_path.iterdir()] == ["tabular.npz"]  # no temporary left

    # Friedman #1 without noise on the held-out rows; t(3) noise on the rows to train on.
    np.testing.assert_allclose(got["y_test"], _friedman(got["x_test"]), rtol=1e-5, atol=1e-5)
    f = _friedman(got["x"])
    noise = got["y"] - f
    assert stats.kurtosis(noise) > 3  # excess kurtosis: a Gaussian's is 0
    assert 1.4 < np.std(noise) < 2.2  # t(3) of scale 1: sd sqrt(3)
