"""kd_regression.export: each model builder the configs use, exported to StableHLO with a
symbolic batch, reloaded, and run at batch 1 and 7 against the JAX model."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kd_regression import export, models, train


def _trained_like(model_fn, seed=0):
    """A state whose batch statistics are not the initial ones (as after training)."""
    graphdef, state = train.init_state(model_fn, optax.adam(1e-3), jax.random.key(seed))
    leaves, treedef = jax.tree.flatten(state.model_state)
    rng = np.random.default_rng(seed)
    moved = [jnp.asarray(rng.uniform(0.5, 1.5, np.shape(v)), v.dtype) for v in leaves]
    return graphdef, state.replace(model_state=jax.tree.unflatten(treedef, moved))


BUILDERS = {
    "mlp": (functools.partial(models.mlp, 3, [16, 16], 2), (3,)),
    "two-head mlp": (functools.partial(models.mlp, 3, [16, 16], 2, two_heads=True), (3,)),
    "resnet teacher": (
        functools.partial(models.image_regressor, "resnet", 1, (8, 16), 2, stem=8),
        (12, 12, 1),
    ),
    "mobilenet taps": (
        functools.partial(models.image_regressor, "mobilenet", 1, (8, 16), 2, stem=8),
        (12, 12, 1),
    ),
    "mobilenet conv, two heads": (
        functools.partial(
            models.image_regressor,
            "mobilenet",
            3,
            (8,),
            1,
            stem=8,
            depthwise="conv",
            two_heads=True,
        ),
        (10, 14, 3),
    ),
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_the_exported_model_equals_the_jax_model_at_any_batch(tmp_path, name):
    model_fn, shape = BUILDERS[name]
    graphdef, state = _trained_like(model_fn)
    fn = export.inference_fn(graphdef, state)
    rng = np.random.default_rng(1)
    path = str(tmp_path / "model.stablehlo")
    diff = export.export_stablehlo(
        fn, shape, path, name=name, check_inputs=rng.normal(size=(5, *shape))
    )
    assert diff <= 1e-5
    loaded = export.load_stablehlo(path)
    for batch in (1, 7):  # one file, any batch size
        x = jnp.asarray(rng.normal(size=(batch, *shape)), jnp.float32)
        expected, got = fn(x), loaded(x)
        assert set(got) == set(expected)
        assert all(got[k].shape == (batch, expected[k].shape[1]) for k in got)
        assert export.max_abs_difference(expected, got) <= 1e-5
    # Inference mode: each example's output uses the running averages, not its batch's.
    x = jnp.asarray(rng.normal(size=(7, *shape)), jnp.float32)
    head = next(iter(expected))
    np.testing.assert_allclose(loaded(x[:1])[head], loaded(x)[head][:1], atol=1e-5)


def test_an_operation_that_cannot_be_exported_is_named_and_nothing_is_written(tmp_path):
    def with_callback(x):
        y = jax.pure_callback(np.tanh, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
        return {"main": y}

    path = tmp_path / "model.stablehlo"
    with pytest.raises(export.ExportError, match=r"^student mlp: cannot be exported to "):
        export.export_stablehlo(
            with_callback, (3,), str(path), name="student mlp", check_inputs=np.ones((2, 3))
        )
    assert os.listdir(tmp_path) == []
