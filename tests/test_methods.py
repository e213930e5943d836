"""Tests for kd_regression.methods: the registry, each method's loss, config and constants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_regression import losses, methods, thresholds
from kd_regression.methods import LossConfig

NAMES = {
    "scratch_l2",
    "scratch_l1",
    "scratch_huber",
    "kd_l2",
    "kd_mix",
    "bounded",
    "ail",
    "tor",
    "tor_multitask",
    "small_loss",
    "small_loss_oracle",
}
CONFIGS = {
    "default": LossConfig(),
    "custom": LossConfig(
        huber_delta=0.3,
        mix_alpha=0.2,
        bounded_margin=0.7,
        bounded_weight=0.5,
        ail_alpha=0.3,
        ail_clip=False,
        threshold_method="quantile",
        threshold_q=0.6,
        rejection="teacher",
        multitask_weight=0.7,
        small_loss_drop=0.4,
    ),
}


def _data(batch=16, d=2, seed=0):
    rng = np.random.default_rng(seed)
    s, a, b, y, t = (rng.normal(size=(batch, d)).astype(np.float32) for _ in range(5))
    y[1::5] += 6.0  # gross label errors, so every threshold rule rejects some rows
    return {"main": s, "label": a, "teacher": b}, {"y": y, "teacher": t}


def _expected(name, heads, batch, c, cfg):
    s, y, t = heads.get("main"), batch["y"], batch["teacher"]
    thr = c["threshold"]
    return {
        "scratch_l2": lambda: losses.squared_error(s, y),
        "scratch_l1": lambda: losses.absolute_error(s, y),
        "scratch_huber": lambda: losses.huber(s, y, delta=cfg.huber_delta),
        "kd_l2": lambda: losses.squared_error(s, t),
        "kd_mix": lambda: losses.mixed_distillation(s, y, t, alpha=cfg.mix_alpha),
        "bounded": lambda: (
            losses.squared_error(s, y)
            + cfg.bounded_weight
            * losses.teacher_bounded_regression(s, y, t, margin=cfg.bounded_margin)
        ),
        "ail": lambda: losses.attentive_imitation(
            s, y, t, eta=c["eta"], alpha=cfg.ail_alpha, clip=cfg.ail_clip
        ),
        "tor": lambda: losses.teacher_outlier_rejection(
            s, y, t, threshold=thr, rejection=cfg.rejection
        ),
        "small_loss": lambda: losses.small_loss(s, y, drop_fraction=cfg.small_loss_drop),
        "small_loss_oracle": lambda: losses.small_loss(s, y, drop_fraction=c["noise_rate"]),
        "tor_multitask": lambda: losses.multitask_distillation(
            heads["label"],
            heads["teacher"],
            y,
            t,
            threshold=thr,
            weight=cfg.multitask_weight,
            rejection=cfg.rejection,
        ),
    }[name]()


def test_registry():
    assert set(methods.METHODS) == NAMES
    for name, m in methods.METHODS.items():
        assert m.name == name and methods.get_method(name) is m
        assert m.two_heads == (name == "tor_multitask")
        assert m.needs_teacher == (not name.startswith(("scratch_", "small_loss")))
        assert m.selects == name.startswith("small_loss")
        assert m.description
    assert methods.teacher_methods() == ["scratch_huber", "scratch_l1", "scratch_l2"]


def test_get_method_unknown_lists_names():
    with pytest.raises(ValueError, match="nope") as excinfo:
        methods.get_method("nope")
    assert all(name in str(excinfo.value) for name in NAMES)


@pytest.mark.parametrize("cfg_name", sorted(CONFIGS))
@pytest.mark.parametrize("name", sorted(NAMES))
def test_method_loss_matches_losses(name, cfg_name):
    cfg = CONFIGS[cfg_name]
    method = methods.get_method(name)
    heads, batch = _data()
    # Constants from the first half only, like a training split seen from held-out rows:
    # some teacher errors exceed eta, so AIL's clip matters.
    c = methods.loss_constants(batch["y"][:8], batch["teacher"][:8], cfg)
    c["noise_rate"] = jnp.float32(0.3)  # small_loss_oracle's known rate (given by the caller)
    rejected = losses.outlier_mask(batch["y"], batch["teacher"], threshold=c["threshold"])
    assert 0 < int(rejected.sum()) < len(rejected)
    # Only the heads the method's model has: using another head is a KeyError.
    heads = {k: heads[k] for k in (["label", "teacher"] if method.two_heads else ["main"])}
    loss, aux = jax.jit(lambda h, b, c: method.loss(h, b, c, cfg))(heads, batch, c)
    expected = _expected(name, heads, batch, c, cfg)
    assert loss.shape == (16,)
    np.testing.assert_allclose(loss, expected, rtol=1e-6, atol=1e-6)
    if name.startswith("tor"):
        assert set(aux) == {"rejected_fraction"}
        np.testing.assert_allclose(aux["rejected_fraction"], np.mean(rejected), rtol=1e-6)
    elif name.startswith("small_loss"):
        q = cfg.small_loss_drop if name == "small_loss" else 0.3
        assert float(aux["rejected_fraction"]) == int(q * 16 + 1e-4) / 16
    else:
        assert aux == {}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"huber_delta": 0.0}, "huber_delta"),
        ({"mix_alpha": 1.5}, "mix_alpha"),
        ({"bounded_weight": -1.0}, "bounded_weight"),
        ({"ail_alpha": -0.1}, "ail_alpha"),
        ({"threshold_k": 0.0}, "threshold_k"),
        ({"threshold_q": 1.1}, "threshold_q"),
        ({"multitask_weight": -0.5}, "multitask_weight"),
        ({"small_loss_drop": 1.0}, "small_loss_drop"),
        ({"threshold_method": "mean"}, "threshold_method"),
        ({"threshold_method": "fixed"}, "threshold_value"),
        ({"rejection": "ignore"}, "rejection"),
    ],
)
def test_loss_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LossConfig(**kwargs)


def test_loss_config_from_dict():
    values = {"mix_alpha": 0.25, "rejection": "teacher"}
    assert LossConfig.from_dict(values) == LossConfig(mix_alpha=0.25, rejection="teacher")
    assert LossConfig.from_dict({}) == LossConfig()
    with pytest.raises(ValueError, match="mix_alfa"):
        LossConfig.from_dict({"mix_alfa": 0.25, "rejection": "teacher"})


@pytest.mark.parametrize(
    "cfg",
    [
        LossConfig(),
        LossConfig(threshold_method="mixture", threshold_nu=10.0),
        LossConfig(threshold_method="mad"),
        LossConfig(threshold_method="mad", threshold_k=1.5),
        LossConfig(threshold_method="quantile", threshold_q=0.75),
        LossConfig(threshold_method="fixed", threshold_value=0.4),
    ],
    ids=["default_mixture", "mixture_nu10", "mad", "mad_k1.5", "quantile", "fixed"],
)
def test_loss_constants(cfg):
    _, batch = _data(batch=50, d=3, seed=1)
    y, t = batch["y"], batch["teacher"]
    c = methods.loss_constants(y, t, cfg)
    expected = thresholds.rejection_threshold(
        losses.teacher_residual(y, t),
        method=cfg.threshold_method,
        k=cfg.threshold_k,
        q=cfg.threshold_q,
        value=cfg.threshold_value,
        nu=cfg.threshold_nu,
        dim=y.shape[-1],
    )
    np.testing.assert_allclose(c["threshold"], expected, rtol=1e-6)
    sq = np.sum((np.float64(t) - y) ** 2, axis=-1)
    np.testing.assert_allclose(c["eta"], sq.max() - sq.min(), rtol=1e-5)


def test_eta_positive_for_perfect_teacher():
    _, batch = _data()
    y = batch["y"]
    c = methods.loss_constants(y, y, LossConfig())
    assert float(c["eta"]) > 0 and float(c["threshold"]) == 0.0
    loss = losses.attentive_imitation(batch["teacher"], y, y, eta=c["eta"], alpha=0.5)
    assert np.all(np.isfinite(loss))


def test_constants_are_jax_scalars():
    _, batch = _data()
    c = methods.loss_constants(batch["y"], batch["teacher"], LossConfig())
    assert set(c) == {"threshold", "eta"}
    assert all(isinstance(v, jax.Array) and v.shape == () for v in c.values())
    assert all(v.dtype == jnp.float32 for v in c.values())
