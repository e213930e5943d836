"""kd_regression.sharding: the same train step on 1 and 8 (simulated CPU) devices."""

import functools
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest

from kd_regression import models, sharding, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup(model_fn, x_shape, method="tor_multitask"):
    tx = optax.adam(1e-2)
    constants = {"threshold": np.float32(0.5), "eta": np.float32(1.0)}
    graphdef, state = train.init_state(model_fn, tx, jax.random.key(0), constants)
    step = train.make_train_step(graphdef, tx, method)
    rng = np.random.default_rng(0)
    batches = [
        {
            "x": rng.normal(size=x_shape).astype(np.float32),
            "y": rng.normal(size=(x_shape[0], 1)).astype(np.float32),
            "teacher": rng.normal(size=(x_shape[0], 1)).astype(np.float32),
        }
        for _ in range(4)
    ]
    return state, step, batches


def test_one_device_mesh_matches_plain_jit():
    model_fn = functools.partial(models.mlp, 1, [16], 1, two_heads=True)
    state, step, batches = _setup(model_fn, (32, 1))
    mesh = sharding.make_mesh(1)
    a = jax.jit(step)
    b = sharding.data_parallel(step, mesh, donate=False)
    sa, sb = state, sharding.replicate(state, mesh)
    for batch in batches:
        sa, ma = a(sa, batch)
        sb, mb = b(sb, sharding.shard_batch(batch, mesh))
        np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-6)
    for x, y in zip(jax.tree.leaves(sa.params), jax.tree.leaves(sb.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_mesh_and_batch_errors():
    with pytest.raises(ValueError, match="num_devices=0"):
        sharding.make_mesh(0)
    with pytest.raises(ValueError, match=r"must be in \[1, "):
        sharding.make_mesh(jax.device_count() + 1)
    with pytest.raises(ValueError, match="no example axis 1"):
        sharding.shard_batch({"x": np.zeros(4)}, sharding.make_mesh(1), axis=1)


EIGHT_DEVICES = textwrap.dedent(
    """
    import functools, chex, jax, numpy as np, optax
    from kd_regression import models, sharding, train
    import test_sharding as t

    assert jax.device_count() == 8, jax.devices()
    for name, model_fn, x_shape in [
        ("mlp", functools.partial(models.mlp, 1, [16], 1, two_heads=True), (32, 1)),
        ("cnn", functools.partial(models.image_regressor, "resnet", 1, (4, 8), 1,
                                  two_heads=True, stem=4, stem_stride=2,
                                  blocks_per_stage=1), (16, 12, 12, 1)),
    ]:
        state, step, batches = t._setup(model_fn, x_shape)
        results = {}
        for n in (1, 8):
            mesh = sharding.make_mesh(n)
            traced = chex.assert_max_traces(n=1)(step)
            run = sharding.data_parallel(traced, mesh, donate=False)
            s, losses = sharding.replicate(state, mesh), []
            for batch in batches:
                s, m = run(s, sharding.shard_batch(batch, mesh))
                losses.append(float(m["loss"]))
            placed = sharding.shard_batch(batches[0], mesh)["x"]
            assert len(placed.sharding.device_set) == n  # the batch is split over n devices
            assert placed.addressable_shards[0].data.shape[0] == x_shape[0] // n
            results[n] = (losses, jax.tree.leaves(jax.device_get(s.params)))
            chex.clear_trace_counter()
        np.testing.assert_allclose(results[1][0], results[8][0], rtol=2e-5)
        for a, b in zip(results[1][1], results[8][1], strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
        print(name, "same on 1 and 8 devices", results[8][0])

    # A second trace is caught: the counter is live.
    mesh = sharding.make_mesh(8)
    mlp = functools.partial(models.mlp, 1, [16], 1)
    state, step, batches = t._setup(mlp, (32, 1), "scratch_l2")
    run = sharding.data_parallel(chex.assert_max_traces(n=1)(step), mesh, donate=False)
    s = sharding.replicate(state, mesh)
    first = {k: v for k, v in batches[0].items() if k != "teacher"}
    s, _ = run(s, sharding.shard_batch(first, mesh))
    try:
        run(s, sharding.shard_batch({"x": np.zeros((16, 1), np.float32),
                                     "y": np.zeros((16, 1), np.float32)}, mesh))
    except AssertionError as e:
        print("retrace caught")
    try:
        sharding.shard_batch({"x": np.zeros((12, 1))}, mesh)
    except ValueError as e:
        print("error:", e)
    """
)


def test_same_step_on_1_and_8_devices_and_no_retrace():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])
    out = subprocess.run(
        [sys.executable, "-c", EIGHT_DEVICES],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert "mlp same on 1 and 8 devices" in out.stdout
    assert "cnn same on 1 and 8 devices" in out.stdout
    assert "retrace caught" in out.stdout
    assert "batch_size=12 does not split over 8 devices: use a multiple of 8 (e.g. 8 or 16)" in (
        out.stdout
    )
