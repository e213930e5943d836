"""experiments.tasks and the sweep's per-seed loop for CNNs."""

import functools

import jax
import numpy as np
import optax

from experiments import sweep, tasks
from experiments.configs import faces as faces_config
from kd_regression import models, train


def test_faces_metrics_are_angular_errors_in_degrees():
    task = tasks.get_task("faces")
    true = np.array([[[10.0], [-50.0], [170.0]]])  # [S=1, n=3, 1] degrees
    pred = task.to_target(np.array([12.0, -44.0, -178.0]))[None]  # errors 2, 6, 12 degrees
    got = task.metrics(pred, true)
    np.testing.assert_allclose(got["mae"], [20.0 / 3], rtol=1e-6)
    np.testing.assert_allclose(got["rmse"], [np.sqrt((4 + 36 + 144) / 3)], rtol=1e-6)
    assert task.label_range(faces_config.get_config().dataset, {}) == (-60.0, 60.0)


def test_looped_population_matches_vmap():
    model_fn = functools.partial(models.mlp, 1, [8], 1)
    tx = optax.sgd(0.1)
    keys = jax.random.split(jax.random.key(0), 3)
    graphdef, state = train.init_population(model_fn, tx, keys)
    step = train.make_train_step(graphdef, tx, "scratch_l2")
    batch = {
        "x": np.random.default_rng(0).normal(size=(3, 16, 1)).astype(np.float32),
        "y": np.zeros((3, 16, 1), np.float32),
    }
    a, ma = jax.jit(jax.vmap(step))(state, batch)
    b, mb = sweep._looped(jax.jit(step))(state, batch)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(b.step), [1, 1, 1])


def test_faces_quick_sweep_end_to_end(tmp_path):
    config = faces_config.get_config("quick")
    config.noise = {"outliers": [0.3]}
    rows = sweep.run(config, str(tmp_path))
    assert {r["method"] for r in rows} == {"teacher", *config.methods}
    for row in rows:
        assert np.isfinite(row["rmse"]) and 0 <= row["mae"] <= row["rmse"] <= 180, row
    assert (tmp_path / "summary.md").exists() and (tmp_path / "noise_sweep.png").exists()
    assert not (tmp_path / "fits.png").exists()  # faces draw no fits
