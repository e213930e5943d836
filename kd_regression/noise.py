"""Label-noise models: corrupt clean regression labels deterministically for a seed.

Takamoto et al. 2020 (arXiv 2002.12597) evaluate at several levels of "annotation
errors" but, as far as we know, do not specify the noise process. The two models here
are our own concrete choices, not the paper's:

- `gaussian`: every label is perturbed by small i.i.d. Gaussian noise (imprecise
  annotation).
- `outliers`: a random subset of examples gets a label unrelated to the input (gross
  annotation errors), the case teacher outlier rejection is designed for.

Labels are `[n, d]` float arrays. Each model returns `NoisyLabels(labels, corrupted)`,
where `corrupted` is the true `[n]` corruption mask, so that `detection_scores` can say
how well a rejection rule finds the corrupted examples.

Hyper-parameters are Python numbers (or sequences), validated on the host. The functions
work under `jax.jit` with `key` and `labels` traced, e.g.
`jax.jit(functools.partial(outliers, rate=0.2, low=-1.0, high=1.0))`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

NOISE_KINDS = ("none", "gaussian", "outliers")

Bound = float | Sequence[float] | np.ndarray


class NoisyLabels(NamedTuple):
    """Noisy labels and the true corruption mask.

    Attributes:
      labels: `[n, d]` noisy labels, same dtype as the clean labels.
      corrupted: `[n]` bool, True where the example's label was corrupted.
    """

    labels: jax.Array
    corrupted: jax.Array


def _check_labels(labels: jax.Array) -> jax.Array:
    labels = jnp.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D [n, d], got shape {labels.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.floating):
        raise ValueError(f"labels must be a float array, got dtype {labels.dtype}")
    return labels


def gaussian(key: jax.Array, labels: jax.Array, *, sigma: float) -> NoisyLabels:
    """Additive Gaussian noise on every element.

    `noisy[i, j] = labels[i, j] + sigma * z[i, j]`, `z[i, j] ~ N(0, 1)` i.i.d.

    Since every label is perturbed, `corrupted` is all True when `sigma > 0` (all False
    when `sigma == 0`). Detection scores are therefore not meaningful under this model:
    there is no clean subset for a rejection rule to find.

    Args:
      key: PRNG key.
      labels: `[n, d]` float clean labels.
      sigma: noise standard deviation, finite and >= 0.

    Returns:
      `NoisyLabels` with `[n, d]` labels and `[n]` bool mask.
    """
    labels = _check_labels(labels)
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be finite and >= 0, got {sigma}")
    n = labels.shape[0]
    if sigma == 0:
        # Return the input itself: adding 0 * z could still flip the sign of -0.0.
        return NoisyLabels(labels, jnp.zeros((n,), bool))
    noisy = _gaussian(key, labels, jnp.asarray(sigma, labels.dtype))
    return NoisyLabels(noisy, jnp.ones((n,), bool))


@jax.jit
def _gaussian(key: jax.Array, labels: jax.Array, sigma: jax.Array) -> jax.Array:
    return labels + sigma * jax.random.normal(key, labels.shape, labels.dtype)


def _check_bound(name: str, value: Bound, d: int, dtype: jnp.dtype) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape not in ((), (d,)):
        raise ValueError(f"{name} must be a scalar or have shape ({d},), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value}")
    # Compare in the labels' dtype: bounds distinct in float64 can collapse in float16.
    return np.broadcast_to(arr, (d,)).astype(dtype)


def outliers(
    key: jax.Array, labels: jax.Array, *, rate: float, low: Bound, high: Bound
) -> NoisyLabels:
    """Replace whole label vectors of random examples by uniform values.

    `c[i] ~ Bernoulli(rate)` i.i.d.; `noisy[i] = u[i]` if `c[i]` else `labels[i]`, with
    `u[i, j] ~ Uniform[low[j], high[j])`. Untouched rows are bit-identical to the input.

    Args:
      key: PRNG key.
      labels: `[n, d]` float clean labels.
      rate: probability that an example is corrupted, 0 <= rate <= 1.
      low: lower bound(s), a scalar or a length-`d` sequence (one per label dimension).
      high: upper bound(s), same form as `low`; `low < high` element-wise.

    Returns:
      `NoisyLabels`; `corrupted[i] = c[i]`.
    """
    labels = _check_labels(labels)
    rate = float(rate)
    if not 0 <= rate <= 1:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    d = labels.shape[1]
    low_arr = _check_bound("low", low, d, labels.dtype)
    high_arr = _check_bound("high", high, d, labels.dtype)
    if not np.all(low_arr < high_arr):
        raise ValueError(f"need low < high in every dimension, got low={low}, high={high}")
    noisy, corrupted = _outliers(
        key, labels, jnp.asarray(rate, jnp.float32), jnp.asarray(low_arr), jnp.asarray(high_arr)
    )
    return NoisyLabels(noisy, corrupted)


@jax.jit
def _outliers(
    key: jax.Array, labels: jax.Array, rate: jax.Array, low: jax.Array, high: jax.Array
) -> tuple[jax.Array, jax.Array]:
    key_mask, key_values = jax.random.split(key)
    # uniform() is in [0, 1), so rate = 0 corrupts nothing and rate = 1 everything.
    corrupted = jax.random.uniform(key_mask, (labels.shape[0],)) < rate
    values = jax.random.uniform(key_values, labels.shape, labels.dtype, minval=low, maxval=high)
    # jax.random.uniform can round up to maxval; keep the promised half-open interval.
    values = jnp.minimum(values, jnp.nextafter(high, low))
    return jnp.where(corrupted[:, None], values, labels), corrupted


def add_label_noise(
    key: jax.Array,
    labels: jax.Array,
    *,
    kind: str,
    level: float,
    label_range: tuple[Bound, Bound] | None = None,
) -> NoisyLabels:
    """Apply the noise model named by an experiment config.

    - `'none'`: labels unchanged, nothing corrupted; `level` is ignored.
    - `'gaussian'`: `gaussian(key, labels, sigma=level)`; `label_range` is ignored.
    - `'outliers'`: `outliers(key, labels, rate=level, low=label_range[0],
      high=label_range[1])`; `label_range` is required.

    Args:
      key: PRNG key.
      labels: `[n, d]` float clean labels.
      kind: one of `NOISE_KINDS`.
      level: noise level (sigma or rate, see above).
      label_range: `(low, high)` for outliers, each a scalar or a length-`d` sequence.

    Returns:
      `NoisyLabels`.
    """
    if kind == "none":
        labels = _check_labels(labels)
        return NoisyLabels(labels, jnp.zeros((labels.shape[0],), bool))
    if kind == "gaussian":
        return gaussian(key, labels, sigma=level)
    if kind == "outliers":
        try:
            low, high = label_range
        except (TypeError, ValueError):
            raise ValueError(
                f"kind='outliers' needs label_range=(low, high), got label_range={label_range}"
            ) from None
        return outliers(key, labels, rate=level, low=low, high=high)
    raise ValueError(f"unknown noise kind {kind!r}; expected one of {NOISE_KINDS}")


def detection_scores(rejected: np.ndarray, corrupted: np.ndarray) -> dict[str, float]:
    """Score a rejection rule against the true corruption mask (NumPy, on host).

    - `rejection_rate = |R| / n`
    - `precision = |R ∩ C| / |R|`: NaN when nothing is rejected (`|R| = 0`).
    - `recall = |R ∩ C| / |C|`: NaN when nothing is corrupted (`|C| = 0`).
    - `rejection_rate` is NaN when `n = 0`.

    The undefined 0/0 cases are NaN on purpose, not 0.0 or 1.0: either number would be
    an invented score. Tables show NaN as "n/a".

    Args:
      rejected: `[n]` bool, True where the rule rejected the example (R).
      corrupted: `[n]` bool, True where the label was truly corrupted (C).

    Returns:
      `{'rejection_rate': float, 'precision': float, 'recall': float}`.
    """
    rejected = np.asarray(rejected)
    corrupted = np.asarray(corrupted)
    for name, arr in (("rejected", rejected), ("corrupted", corrupted)):
        if arr.dtype != np.bool_:
            raise ValueError(f"{name} must be a bool array, got dtype {arr.dtype}")
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if rejected.shape != corrupted.shape:
        raise ValueError(
            f"rejected and corrupted must have the same shape, "
            f"got {rejected.shape} and {corrupted.shape}"
        )
    n = rejected.size
    n_rejected = int(np.count_nonzero(rejected))
    n_corrupted = int(np.count_nonzero(corrupted))
    n_hit = int(np.count_nonzero(rejected & corrupted))
    nan = float("nan")
    return {
        "rejection_rate": n_rejected / n if n else nan,
        "precision": n_hit / n_rejected if n_rejected else nan,
        "recall": n_hit / n_corrupted if n_corrupted else nan,
    }
