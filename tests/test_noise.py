"""Tests for kd_regression.noise."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_regression import noise


def _clean(n: int, d: int, offset: float = 0.0) -> jax.Array:
    # Clean labels far outside the outlier range, so any replaced row is visibly changed.
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.normal(size=(n, d)) + offset, jnp.float32)


def _bits(x) -> np.ndarray:
    x = np.asarray(x)
    return x.view(np.dtype(f"u{x.dtype.itemsize}"))


# --- determinism and jit -------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [
        functools.partial(noise.gaussian, sigma=0.5),
        functools.partial(noise.outliers, rate=0.3, low=-1.0, high=1.0),
    ],
    ids=["gaussian", "outliers"],
)
def test_same_key_same_bits_different_key_differs(fn):
    labels = _clean(200, 3, offset=10.0)
    a = fn(jax.random.key(1), labels)
    b = fn(jax.random.key(1), labels)
    c = fn(jax.random.key(2), labels)
    np.testing.assert_array_equal(_bits(a.labels), _bits(b.labels))
    np.testing.assert_array_equal(a.corrupted, b.corrupted)
    assert not np.array_equal(a.labels, c.labels)


def test_outliers_different_keys_change_the_mask():
    labels = _clean(200, 2, offset=10.0)
    a = noise.outliers(jax.random.key(1), labels, rate=0.5, low=-1.0, high=1.0)
    b = noise.outliers(jax.random.key(2), labels, rate=0.5, low=-1.0, high=1.0)
    assert not np.array_equal(a.corrupted, b.corrupted)


def test_jit_matches_eager():
    labels = _clean(64, 2, offset=10.0)
    key = jax.random.key(3)
    for fn in (
        functools.partial(noise.gaussian, sigma=0.1),
        functools.partial(noise.outliers, rate=0.4, low=-1.0, high=1.0),
    ):
        eager = fn(key, labels)
        jitted = jax.jit(fn)(key, labels)
        np.testing.assert_array_equal(_bits(eager.labels), _bits(jitted.labels))
        np.testing.assert_array_equal(eager.corrupted, jitted.corrupted)


# --- gaussian ------------------------------------------------------------------------


def test_gaussian_sigma_zero_is_identity():
    labels = jnp.asarray([[-0.0, 1.5], [2.0, -3.0]], jnp.float32)
    out = noise.gaussian(jax.random.key(0), labels, sigma=0.0)
    np.testing.assert_array_equal(_bits(out.labels), _bits(labels))
    assert out.corrupted.dtype == jnp.bool_
    np.testing.assert_array_equal(out.corrupted, [False, False])


def test_gaussian_statistics_and_mask():
    n, d, sigma = 20000, 2, 0.7
    labels = _clean(n, d)
    out = noise.gaussian(jax.random.key(0), labels, sigma=sigma)
    assert out.labels.shape == (n, d) and out.labels.dtype == labels.dtype
    assert out.corrupted.shape == (n,) and out.corrupted.dtype == jnp.bool_
    assert bool(jnp.all(out.corrupted))
    delta = np.asarray(out.labels - labels, np.float64)
    np.testing.assert_allclose(delta.std(axis=0), sigma, rtol=0.03)
    # Standard error of the mean is sigma / sqrt(n) ≈ 0.005; 5 of them.
    np.testing.assert_allclose(delta.mean(axis=0), 0.0, atol=5 * sigma / math.sqrt(n))
    # Independent per element: the two columns' noise is uncorrelated.
    assert abs(np.corrcoef(delta.T)[0, 1]) < 4 / math.sqrt(n)


# --- outliers ------------------------------------------------------------------------


def test_outliers_rows_replaced_in_range_and_untouched_bit_identical():
    n, low, high = 20000, -1.0, 1.0
    labels = _clean(n, 2, offset=10.0)
    out = noise.outliers(jax.random.key(0), labels, rate=0.3, low=low, high=high)
    noisy, mask, clean = np.asarray(out.labels), np.asarray(out.corrupted), np.asarray(labels)
    assert noisy.dtype == clean.dtype and mask.shape == (n,) and mask.dtype == np.bool_
    # The mask is exactly the set of changed rows (clean rows lie far outside [low, high)).
    changed = np.any(_bits(noisy) != _bits(clean), axis=1)
    np.testing.assert_array_equal(mask, changed)
    np.testing.assert_array_equal(_bits(noisy[~mask]), _bits(clean[~mask]))
    replaced = noisy[mask]
    assert np.all(replaced >= low) and np.all(replaced < high)
    # Uniform, not e.g. concentrated at one bound: mean ≈ 0, var ≈ (high - low)² / 12.
    np.testing.assert_allclose(replaced.mean(), 0.0, atol=0.02)
    np.testing.assert_allclose(replaced.var(), (high - low) ** 2 / 12, rtol=0.03)


def test_outliers_rate_is_binomial():
    n, rate = 20000, 0.3
    out = noise.outliers(jax.random.key(5), _clean(n, 1), rate=rate, low=0.0, high=1.0)
    count = int(np.count_nonzero(out.corrupted))
    assert abs(count - n * rate) <= 4 * math.sqrt(n * rate * (1 - rate))


def test_outliers_rate_zero_and_one():
    labels = _clean(500, 2, offset=10.0)
    none = noise.outliers(jax.random.key(0), labels, rate=0.0, low=-1.0, high=1.0)
    np.testing.assert_array_equal(_bits(none.labels), _bits(labels))
    assert not np.any(none.corrupted)
    every = noise.outliers(jax.random.key(0), labels, rate=1.0, low=-1.0, high=1.0)
    assert np.all(every.corrupted)
    assert np.all(np.asarray(every.labels) >= -1.0) and np.all(np.asarray(every.labels) < 1.0)


def test_outliers_per_dimension_bounds():
    low, high = np.array([0.0, 10.0, -5.0]), np.array([1.0, 20.0, -4.0])
    labels = _clean(4000, 3, offset=100.0)
    out = noise.outliers(jax.random.key(0), labels, rate=1.0, low=list(low), high=tuple(high))
    values = np.asarray(out.labels, np.float64)
    assert np.all(values >= low) and np.all(values < high)
    # Each column fills its own range, rather than e.g. sharing the first dimension's.
    np.testing.assert_array_less(values.min(axis=0) - low, 0.01 * (high - low))
    np.testing.assert_array_less(high - values.max(axis=0), 0.01 * (high - low))


def test_outliers_high_is_excluded_even_after_rounding():
    # In float16 the spacing near 1000 is 0.5, so low + u * (high - low) rounds up to
    # high for u >= 0.75 unless the implementation clamps.
    labels = jnp.zeros((2000, 1), jnp.float16)
    out = noise.outliers(jax.random.key(0), labels, rate=1.0, low=1000.0, high=1001.0)
    values = np.asarray(out.labels, np.float64)
    assert out.labels.dtype == jnp.float16
    assert set(np.unique(values)) == {1000.0, 1000.5}


# --- dispatcher ----------------------------------------------------------------------


def test_add_label_noise_dispatch():
    labels = _clean(300, 2, offset=10.0)
    key = jax.random.key(7)

    out = noise.add_label_noise(key, labels, kind="none", level=123.0)
    np.testing.assert_array_equal(_bits(out.labels), _bits(labels))
    assert out.corrupted.shape == (300,) and not np.any(out.corrupted)

    out = noise.add_label_noise(key, labels, kind="gaussian", level=0.2)
    ref = noise.gaussian(key, labels, sigma=0.2)
    np.testing.assert_array_equal(_bits(out.labels), _bits(ref.labels))
    np.testing.assert_array_equal(out.corrupted, ref.corrupted)

    out = noise.add_label_noise(key, labels, kind="outliers", level=0.4, label_range=(-2.0, 3.0))
    ref = noise.outliers(key, labels, rate=0.4, low=-2.0, high=3.0)
    np.testing.assert_array_equal(_bits(out.labels), _bits(ref.labels))
    np.testing.assert_array_equal(out.corrupted, ref.corrupted)
    assert 0 < np.count_nonzero(out.corrupted) < 300


def test_noise_kinds():
    assert noise.NOISE_KINDS == ("none", "gaussian", "outliers")


# --- detection_scores ----------------------------------------------------------------


def test_detection_scores_hand_computed():
    rejected = np.array([True, True, False, False, True])
    corrupted = np.array([True, False, True, False, False])
    scores = noise.detection_scores(rejected, corrupted)
    assert set(scores) == {"rejection_rate", "precision", "recall"}
    assert all(type(v) is float for v in scores.values())
    assert scores["rejection_rate"] == pytest.approx(3 / 5)
    assert scores["precision"] == pytest.approx(1 / 3)
    assert scores["recall"] == pytest.approx(1 / 2)


def test_detection_scores_perfect_and_jax_inputs():
    mask = jnp.asarray([True, False, True, False])
    assert noise.detection_scores(mask, mask) == {
        "rejection_rate": 0.5,
        "precision": 1.0,
        "recall": 1.0,
    }


def test_detection_scores_nan_cases():
    corrupted = np.array([True, False, False])
    nothing = np.zeros(3, bool)
    scores = noise.detection_scores(nothing, corrupted)
    assert scores["rejection_rate"] == 0.0
    assert math.isnan(scores["precision"])
    assert scores["recall"] == 0.0

    scores = noise.detection_scores(np.array([True, True, False]), nothing)
    assert scores["rejection_rate"] == pytest.approx(2 / 3)
    assert scores["precision"] == 0.0
    assert math.isnan(scores["recall"])

    scores = noise.detection_scores(np.zeros(0, bool), np.zeros(0, bool))
    assert all(math.isnan(v) for v in scores.values())


# --- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (jnp.zeros((4,)), r"labels must be 2-D.*\(4,\)"),
        (jnp.zeros((2, 3, 4)), r"labels must be 2-D.*\(2, 3, 4\)"),
        (jnp.zeros((4, 2), jnp.int32), "labels must be a float array.*int32"),
        (jnp.zeros((4, 2), bool), "labels must be a float array.*bool"),
    ],
)
@pytest.mark.parametrize(
    "fn",
    [
        functools.partial(noise.gaussian, sigma=0.1),
        functools.partial(noise.outliers, rate=0.1, low=0.0, high=1.0),
        functools.partial(noise.add_label_noise, kind="none", level=0.0),
    ],
    ids=["gaussian", "outliers", "none"],
)
def test_bad_labels(fn, labels, match):
    with pytest.raises(ValueError, match=match):
        fn(jax.random.key(0), labels)


@pytest.mark.parametrize("sigma", [-0.1, float("nan"), float("inf")])
def test_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma must be finite and >= 0"):
        noise.gaussian(jax.random.key(0), jnp.zeros((2, 1)), sigma=sigma)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rate": -0.1, "low": 0.0, "high": 1.0}, r"rate must be in \[0, 1\]"),
        ({"rate": 1.1, "low": 0.0, "high": 1.0}, r"rate must be in \[0, 1\]"),
        ({"rate": float("nan"), "low": 0.0, "high": 1.0}, r"rate must be in \[0, 1\]"),
        ({"rate": 0.1, "low": 1.0, "high": 1.0}, "need low < high"),
        ({"rate": 0.1, "low": [0.0, 2.0], "high": [1.0, 1.0]}, "need low < high"),
        # Distinct in float64, equal once cast to the labels' float16.
        ({"rate": 0.1, "low": 1000.0, "high": 1000.1}, "need low < high"),
        ({"rate": 0.1, "low": [0.0, 0.0, 0.0], "high": 1.0}, r"low must be .*\(2,\).*\(3,\)"),
        ({"rate": 0.1, "low": 0.0, "high": [[1.0, 1.0]]}, r"high must be .*\(2,\).*\(1, 2\)"),
        ({"rate": 0.1, "low": -np.inf, "high": 1.0}, "low must be finite"),
    ],
)
def test_bad_outlier_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        noise.outliers(jax.random.key(0), jnp.zeros((4, 2), jnp.float16), **kwargs)


@pytest.mark.parametrize("label_range", [None, (0.0,), (0.0, 1.0, 2.0), 5.0])
def test_dispatcher_needs_label_range_for_outliers(label_range):
    with pytest.raises(ValueError, match="label_range"):
        noise.add_label_noise(
            jax.random.key(0),
            jnp.zeros((4, 2)),
            kind="outliers",
            level=0.1,
            label_range=label_range,
        )


def test_dispatcher_unknown_kind():
    with pytest.raises(ValueError, match=r"'laplace'.*\('none', 'gaussian', 'outliers'\)"):
        noise.add_label_noise(jax.random.key(0), jnp.zeros((4, 2)), kind="laplace", level=0.1)


@pytest.mark.parametrize(
    ("rejected", "corrupted", "match"),
    [
        (np.array([1, 0]), np.array([True, False]), "rejected must be a bool array"),
        (np.array([True, False]), np.array([0.0, 1.0]), "corrupted must be a bool array"),
        (np.zeros((2, 2), bool), np.zeros((2, 2), bool), "rejected must be 1-D"),
        (np.zeros(3, bool), np.zeros(2, bool), r"same shape.*\(3,\).*\(2,\)"),
    ],
)
def test_detection_scores_errors(rejected, corrupted, match):
    with pytest.raises(ValueError, match=match):
        noise.detection_scores(rejected, corrupted)
