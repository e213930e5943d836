"""Tests for kd_regression.datasets.sinusoid."""

import numpy as np
import pytest

from kd_regression.datasets import sinusoid


@pytest.mark.parametrize("split", sinusoid.SPLITS)
def test_deterministic_shapes_and_range(split):
    data = sinusoid.load(split, size=257, seed=5)
    again = sinusoid.load(split, size=257, seed=5)
    for a, b in zip(data, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert data.x.shape == data.y.shape == (257, 1)
    assert data.x.dtype == data.y.dtype == np.float32
    assert data.index.dtype == np.int64
    np.testing.assert_array_equal(data.index, np.arange(257))
    assert data.x.min() >= -1.0 and data.x.max() <= 1.0
    assert data.x.min() < -0.9 and data.x.max() > 0.9  # uniform over the whole domain
    assert len(np.unique(data.x)) == 257
    np.testing.assert_allclose(data.y, sinusoid.function(data.x), rtol=1e-6, atol=1e-6)
    other = sinusoid.load(split, size=257, seed=6)
    assert not np.array_equal(data.x, other.x)


@pytest.mark.parametrize("amplitude, frequency", [(0.5, 3.0), (-0.2, 5.0)])
def test_function_parameters(amplitude, frequency):
    data = sinusoid.load("train", size=64, seed=0, amplitude=amplitude, frequency=frequency)
    x = np.float64(data.x)
    expected = np.sin(np.pi * x) + amplitude * np.sin(frequency * np.pi * x)
    np.testing.assert_allclose(data.y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        sinusoid.function(x, amplitude=amplitude, frequency=frequency), expected, rtol=1e-12
    )


def test_default_function():
    x = np.linspace(-1, 1, 11)
    expected = np.sin(np.pi * x) + 0.3 * np.sin(8 * np.pi * x)
    np.testing.assert_allclose(sinusoid.function(x), expected, rtol=1e-12, atol=1e-12)


def test_splits_differ():
    xs = [sinusoid.load(s, size=100, seed=0).x for s in sinusoid.SPLITS]
    assert len({tuple(x.ravel()) for x in xs}) == 3
    assert not set(xs[0].ravel()) & set(xs[1].ravel())


@pytest.mark.parametrize(
    "split, size, match",
    [("val", 10, "split"), ("TRAIN", 10, "split"), ("train", 0, "size"), ("test", -3, "size")],
)
def test_bad_arguments_raise(split, size, match):
    with pytest.raises(ValueError, match=match):
        sinusoid.load(split, size=size, seed=0)


@pytest.mark.parametrize("amplitude", [0.3, -0.8, 0.0])
@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_label_range_covers_function(amplitude, margin):
    low, high = sinusoid.label_range(amplitude=amplitude, margin=margin)
    assert low == -high
    assert high == pytest.approx(1.0 + abs(amplitude) + margin)
    values = sinusoid.function(np.linspace(-1, 1, 100_001), amplitude=amplitude)
    assert low <= values.min() and values.max() <= high
    assert values.max() >= high - margin - 0.35  # tight: no more than the margin plus slack
