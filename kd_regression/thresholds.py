"""TOR's threshold δ on the teacher's residuals: a statistic of a whole training set, computed
once (where the losses in :mod:`kd_regression.losses` are per example and per batch).

The rules and their defaults are ours: the paper's threshold rule is not available to us.
Every function works under `jax.jit` and `jax.vmap` (one δ per seed of a population).
"""

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

from kd_regression.losses import _check_value

THRESHOLD_METHODS = ("fixed", "quantile", "mad", "mixture")

# Scales the median absolute deviation to the standard deviation of a Gaussian.
_MAD_TO_STD = 1.4826
# EM iterations of the 'mixture' rule: a fixed count (not a tolerance) so that the result
# is the same under vmap and jit; its fit has settled long before on every set we tried.
MIXTURE_EM_STEPS = 500
_MIN_OUTLIER_FRACTION = 1e-6  # keeps log(π) finite when the data has no outliers


def rejection_threshold(
    residuals: jax.typing.ArrayLike,
    *,
    method: str,
    k: float = 3.0,
    q: float = 0.9,
    value: float | None = None,
    nu: float = 3.0,
    dim: int = 1,
) -> jax.Array:
    """Threshold δ on teacher residuals, computed once from a whole training set.

    All four rules are our choices; the paper's threshold rule is not available to us.

    - `'fixed'`: δ = `value` (required, >= 0).
    - `'quantile'`: δ = the `q`-quantile of the residuals (`jnp.quantile`, linear
      interpolation), so about a fraction 1 - q is rejected; q in [0, 1].
    - `'mad'`: δ = median(r) + k · 1.4826 · median(|r - median(r)|), k > 0. Median and
      MAD ignore up to half of the residuals being arbitrarily large, so a few gross label
      errors do not inflate δ the way they inflate a mean + k · std rule. It rejects a
      fixed share of clean data whatever the outliers: about 1.4 % of Gaussian residuals
      (the median and MAD of |e| are not those of e), 6 % of Student-t (3 dof) ones.
    - `'mixture'`: δ adapts to the residuals. The residual vectors are modelled as a
      mixture of inliers, an isotropic Student-t with `nu` degrees of freedom and a
      scale σ, and outliers, uniform over the d-ball holding every residual (the
      inlier-plus-uniform-outlier mixture of MLESAC, Torr & Zisserman 2000; the t
      inliers allow heavy tails). σ and the outlier fraction π are fitted by EM
      (`mixture_fit`); δ is where the outlier posterior reaches one half. With no
      outliers π goes to 0 and δ to the largest residual: nothing is rejected.

    Args:
      residuals: `[n]` teacher residuals (see `teacher_residual`), n >= 1.
      method: one of `THRESHOLD_METHODS`.
      k: MAD multiplier, used by `'mad'`.
      q: quantile level, used by `'quantile'`.
      value: the threshold, used by `'fixed'`.
      nu: the inliers' degrees of freedom, used by `'mixture'` (> 0; ours: 3).
      dim: d, the label dimension the residuals are norms of, used by `'mixture'`.

    Returns:
      δ as a 0-d array of the residuals' dtype.
    """
    r = jnp.asarray(residuals)
    if r.ndim != 1 or r.shape[0] == 0:
        raise ValueError(f"`residuals` must be a non-empty 1-D array, got shape {r.shape}.")
    if not jnp.issubdtype(r.dtype, jnp.floating):
        raise ValueError(f"`residuals` must have a floating dtype, got {r.dtype}.")
    if method == "fixed":
        if value is None:
            raise ValueError("`value` is required when method='fixed'.")
        _check_value("value", value, lambda v: v >= 0, ">= 0")
        return jnp.asarray(value, dtype=r.dtype)
    if method == "quantile":
        _check_value("q", q, lambda v: 0 <= v <= 1, "in [0, 1]")
        return jnp.quantile(r, q)
    if method == "mad":
        _check_value("k", k, lambda v: v > 0, "> 0")
        median = jnp.median(r)
        mad = jnp.median(jnp.abs(r - median))
        return median + k * _MAD_TO_STD * mad
    if method == "mixture":
        _check_value("nu", nu, lambda v: v > 0, "> 0")
        return mixture_fit(r, nu=nu, dim=dim)["threshold"]
    raise ValueError(f"`method` must be one of {THRESHOLD_METHODS}, got {method!r}.")


def mixture_fit(residuals: jax.Array, *, nu: float = 3.0, dim: int = 1) -> dict[str, jax.Array]:
    """The 'mixture' rule's fit of residual norms `[n]`: `{"threshold", "scale",
    "outlier_fraction"}` (δ, σ, π), each 0-d, in the residuals' dtype.

    EM (the ECM of Peel & McLachlan 2000 for the t scale), `MIXTURE_EM_STEPS` steps from
    π = 0.1 and σ² from the median of r² (the Wilson-Hilferty median of χ²_d). Outliers
    have the density 1/V in residual space, V the volume of the d-ball of radius max r;
    an inlier residual vector e has the density
    C σ^-d (1 + |e|²/(ν σ²))^(-(ν+d)/2), C = Γ((ν+d)/2) / (Γ(ν/2) (νπ)^(d/2)).
    """
    r = jnp.asarray(residuals)
    r2 = jnp.square(r.astype(jnp.float32))
    d = float(dim)
    r2_max = jnp.max(r2)
    tiny = jnp.maximum(1e-12 * r2_max, jnp.finfo(jnp.float32).tiny)  # σ² floor
    log_volume = d / 2 * jnp.log(jnp.pi) + d / 2 * jnp.log(r2_max) - gammaln(d / 2 + 1)
    log_c = gammaln((nu + d) / 2) - gammaln(nu / 2) - d / 2 * jnp.log(nu * jnp.pi)

    def step(_, carry):
        s2, pi = carry
        log_in = jnp.log1p(-pi) + log_c - d / 2 * jnp.log(s2)
        log_in = log_in - (nu + d) / 2 * jnp.log1p(r2 / (nu * s2))
        inlier = jax.nn.sigmoid(log_in - (jnp.log(pi) - log_volume))  # posterior
        weight = (nu + d) / (nu + r2 / s2)  # the t's latent precision
        s2 = jnp.maximum(jnp.sum(inlier * weight * r2) / (d * jnp.sum(inlier)), tiny)
        pi = jnp.clip(1 - jnp.mean(inlier), _MIN_OUTLIER_FRACTION, 1 - _MIN_OUTLIER_FRACTION)
        return s2, pi

    wilson_hilferty = d * (1 - 2 / (9 * d)) ** 3
    start = (jnp.maximum(jnp.median(r2) / wilson_hilferty, tiny), jnp.float32(0.1))
    s2, pi = jax.lax.fori_loop(0, MIXTURE_EM_STEPS, step, start)
    # (1 - π) p_in(δ) = π / V solved for δ; where the posterior stays below one half (the
    # usual case without outliers) δ is the largest residual: nothing is rejected.
    log_k = jnp.log(pi) - log_volume - jnp.log1p(-pi) - log_c + d / 2 * jnp.log(s2)
    delta2 = nu * s2 * jnp.expm1(-2 * jnp.minimum(log_k, 0.0) / (nu + d))
    delta = jnp.where(r2_max > 0, jnp.sqrt(jnp.minimum(delta2, r2_max)), 0.0)
    return {
        "threshold": delta.astype(r.dtype),
        "scale": jnp.sqrt(s2).astype(r.dtype),
        "outlier_fraction": pi.astype(r.dtype),
    }
