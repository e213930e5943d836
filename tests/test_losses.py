"""Tests for kd_regression.losses: jitted losses against independent NumPy references."""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.special import gammaln

from kd_regression import losses, thresholds

BATCH = 16
DIMS = (1, 3)
RTOL, ATOL = 1e-5, 1e-5


def _inputs(d, n=3, *, seed=0, scale=1.0, batch=BATCH):
    rng = np.random.default_rng(seed * 10 + d)
    return [(scale * rng.normal(size=(batch, d))).astype(np.float32) for _ in range(n)]


# --- NumPy references (float64, independent of the library) ---------------------------


def np_sq(a, b):
    return np.sum((np.float64(a) - np.float64(b)) ** 2, axis=-1)


def np_residual(y, t):
    return np.sqrt(np_sq(t, y))


def np_tor(s, y, t, thr, rejection):
    keep = np_residual(y, t) <= thr
    other = np.zeros(len(s)) if rejection == "drop" else np_sq(s, t)
    return np.where(keep, np_sq(s, y), other)


def np_tor_grad(s, y, t, thr, rejection):
    keep = (np_residual(y, t) <= thr)[:, None]
    other = np.zeros_like(s, np.float64) if rejection == "drop" else 2 * (np.float64(s) - t)
    return np.where(keep, 2 * (np.float64(s) - y), other)


def np_small_loss(s, y, q):
    """Trimmed L2 by sorting: the floor(q·B) largest errors (earlier index first among
    equals) set to 0."""
    err = np_sq(s, y)
    n_drop = int(np.floor(q * len(err) + 1e-4))
    dropped = np.zeros(len(err), bool)
    dropped[sorted(range(len(err)), key=lambda i: (-err[i], i))[:n_drop]] = True
    return np.where(dropped, 0.0, err), dropped


def _assert_close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=RTOL, atol=ATOL)


def _check_value_and_grad(fn, args, ref_value, ref_grads, argnums=0):
    """Checks jit(fn) against ref_value and jit(grad(sum fn)) against ref_grads."""
    _assert_close(jax.jit(fn)(*args), ref_value)
    grads = jax.jit(jax.grad(lambda *a: fn(*a).sum(), argnums=argnums))(*args)
    if not isinstance(argnums, tuple):
        grads, ref_grads = (grads,), (ref_grads,)
    for g, ref in zip(grads, ref_grads, strict=True):
        assert np.all(np.isfinite(g))
        _assert_close(g, ref)


# --- values and gradients ---------------------------------------------------------------


@pytest.mark.parametrize("d", DIMS)
def test_squared_error(d):
    p, t = _inputs(d, 2)
    _check_value_and_grad(losses.squared_error, (p, t), np_sq(p, t), 2 * (np.float64(p) - t))


@pytest.mark.parametrize("d", DIMS)
def test_absolute_error(d):
    p, t = _inputs(d, 2)
    ref = np.sum(np.abs(np.float64(p) - t), axis=-1)
    _check_value_and_grad(losses.absolute_error, (p, t), ref, np.sign(np.float64(p) - t))


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("delta", [0.5, 1.5])
def test_huber(d, delta):
    p, t = _inputs(d, 2, scale=2.0)
    x = np.float64(p) - t
    assert (np.abs(x) <= delta).any() and (np.abs(x) > delta).any()
    ref = np.where(np.abs(x) <= delta, 0.5 * x**2, delta * (np.abs(x) - 0.5 * delta)).sum(-1)
    fn = functools.partial(losses.huber, delta=delta)
    _check_value_and_grad(fn, (p, t), ref, np.clip(x, -delta, delta))


@pytest.mark.parametrize("d", DIMS)
def test_teacher_residual(d):
    y, t = _inputs(d, 2)
    r = np_residual(y, t)
    unit = (np.float64(t) - y) / r[:, None]
    _check_value_and_grad(losses.teacher_residual, (y, t), r, (-unit, unit), argnums=(0, 1))


@pytest.mark.parametrize("d", DIMS)
def test_outlier_mask(d):
    y, t = _inputs(d, 2)
    thr = float(np.median(np_residual(y, t)))
    expected = np_residual(y, t) > thr
    assert expected.sum() == BATCH // 2
    mask = jax.jit(lambda y, t, thr: losses.outlier_mask(y, t, threshold=thr))(y, t, thr)
    assert mask.dtype == jnp.bool_ and mask.shape == (BATCH,)
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("rejection", losses.REJECTION_MODES)
def test_teacher_outlier_rejection(d, rejection):
    s, y, t = _inputs(d)
    thr = float(np.median(np_residual(y, t)))
    fn = functools.partial(losses.teacher_outlier_rejection, threshold=thr, rejection=rejection)
    ref = np_tor(s, y, t, thr, rejection)
    _check_value_and_grad(fn, (s, y, t), ref, np_tor_grad(s, y, t, thr, rejection))


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_teacher_bounded_regression(d, margin):
    s, y, t = _inputs(d)
    active = np_sq(s, y) + margin > np_sq(t, y)
    assert active.any() and (~active).any()
    fn = functools.partial(losses.teacher_bounded_regression, margin=margin)
    ref_grad = 2 * (np.float64(s) - y) * active[:, None]
    _check_value_and_grad(fn, (s, y, t), np.where(active, np_sq(s, y), 0.0), ref_grad)


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("alpha", [0.0, 0.3])
@pytest.mark.parametrize("clip", [True, False])
def test_attentive_imitation(d, alpha, clip):
    s, y, t = _inputs(d)
    # eta below the largest teacher error, as on held-out data, so clipping matters.
    eta = float(np.median(np_sq(t, y)))
    phi = 1.0 - np_sq(t, y) / eta
    assert (phi < 0).any()
    if clip:
        phi = np.clip(phi, 0.0, 1.0)
    ref = alpha * np_sq(s, y) + (1 - alpha) * phi * np_sq(s, t)
    ref_grad = 2 * alpha * (np.float64(s) - y) + 2 * (1 - alpha) * phi[:, None] * (
        np.float64(s) - t
    )
    fn = functools.partial(losses.attentive_imitation, eta=eta, alpha=alpha, clip=clip)
    _check_value_and_grad(fn, (s, y, t), ref, ref_grad)


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("alpha", [0.0, 0.25])
def test_mixed_distillation(d, alpha):
    s, y, t = _inputs(d)
    ref = alpha * np_sq(s, y) + (1 - alpha) * np_sq(s, t)
    ref_grad = 2 * alpha * (np.float64(s) - y) + 2 * (1 - alpha) * (np.float64(s) - t)
    fn = functools.partial(losses.mixed_distillation, alpha=alpha)
    _check_value_and_grad(fn, (s, y, t), ref, ref_grad)


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("rejection", losses.REJECTION_MODES)
@pytest.mark.parametrize("weight", [0.0, 0.7])
def test_multitask_distillation(d, rejection, weight):
    ha, hb, y, t = _inputs(d, 4)
    thr = float(np.median(np_residual(y, t)))
    fn = functools.partial(
        losses.multitask_distillation, threshold=thr, weight=weight, rejection=rejection
    )
    ref = np_tor(ha, y, t, thr, rejection) + weight * np_sq(hb, t)
    ref_grads = (np_tor_grad(ha, y, t, thr, rejection), 2 * weight * (np.float64(hb) - t))
    _check_value_and_grad(fn, (ha, hb, y, t), ref, ref_grads, argnums=(0, 1))


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("q", [0.0, 0.1, 0.25, 0.3, 0.5, 0.9])
def test_small_loss(d, q):
    s, y = _inputs(d, 2)
    y[2::4] += 5.0  # gross label errors: the largest losses
    ref, dropped = np_small_loss(s, y, q)
    assert dropped.sum() == int(q * BATCH + 1e-4)  # 0.3 · 16 = 4.8: 4 dropped
    grad = np.where(dropped[:, None], 0.0, 2 * (np.float64(s) - y))
    fn = functools.partial(losses.small_loss, drop_fraction=q)
    _check_value_and_grad(fn, (s, y), ref, grad)
    mask = jax.jit(losses.small_loss_mask)(np_sq(s, y).astype(np.float32), drop_fraction=q)
    np.testing.assert_array_equal(mask, dropped)
    # Traced q, as small_loss_oracle's per-seed rate: the same selection.
    traced = jax.jit(lambda q: losses.small_loss(s, y, drop_fraction=q))(jnp.float32(q))
    _assert_close(traced, ref)


def test_small_loss_drops_exact_fractions_and_ties_by_index():
    # 0.3 · 10 = 3 examples (float32's 0.3 · 10 is 2.9999998 before rounding down).
    loss = np.array([5, 1, 5, 0, 2, 5, 3, 5, 4, 1], np.float32)
    mask = losses.small_loss_mask(loss, drop_fraction=0.3)
    np.testing.assert_array_equal(np.flatnonzero(mask), [0, 2, 5])  # four 5s: the first 3
    assert not losses.small_loss_mask(loss, drop_fraction=0.0).any()
    assert losses.small_loss_mask(loss, drop_fraction=0.99).sum() == 9  # one always kept


@pytest.mark.parametrize("name", ["squared_error", "tor_drop", "tor_teacher", "multitask"])
def test_gradients_match_finite_differences(name):
    s, hb, y, t = _inputs(3, 4)
    thr = float(np.median(np_residual(y, t)))
    fn, args = {
        "squared_error": (losses.squared_error, (s, y)),
        "tor_drop": (
            lambda s: losses.teacher_outlier_rejection(s, y, t, threshold=thr),
            (s,),
        ),
        "tor_teacher": (
            lambda s: losses.teacher_outlier_rejection(s, y, t, threshold=thr, rejection="teacher"),
            (s,),
        ),
        "multitask": (
            lambda a, b: losses.multitask_distillation(a, b, y, t, threshold=thr, weight=0.7),
            (s, hb),
        ),
    }[name]
    check_grads(fn, args, order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


# --- boundary cases -------------------------------------------------------------------


def _boundary_inputs(d):
    """Row 0's residual equals the threshold exactly in float32; row 1's exceeds it."""
    if d == 1:
        t, thr = np.array([[0.5], [2.0]], np.float32), 0.5
    else:
        t, thr = np.array([[2.0, 3.0, 6.0], [4.0, 4.0, 7.0]], np.float32), 7.0
    y = np.zeros_like(t)
    (s,) = _inputs(d, 1, batch=2)
    return s, y, t, thr


@pytest.mark.parametrize("d", DIMS)
def test_residual_at_threshold_is_kept(d):
    s, y, t, thr = _boundary_inputs(d)

    def tor_sum(s, y, t, thr):
        return losses.teacher_outlier_rejection(s, y, t, threshold=thr).sum()

    @jax.jit
    def run(s, y, t, traced_thr):
        return {
            "residual": losses.teacher_residual(y, t),
            # `thr` is a closed-over Python float, `traced_thr` a traced 0-d array.
            "mask": losses.outlier_mask(y, t, threshold=thr),
            "mask_traced": losses.outlier_mask(y, t, threshold=traced_thr),
            "loss": tor_sum(s, y, t, traced_thr),
            "grads": jax.grad(tor_sum, argnums=(0, 1, 2))(s, y, t, traced_thr),
            "residual_grad": jax.grad(lambda t: losses.teacher_residual(y, t).sum())(t),
        }

    out = run(s, y, t, thr)
    assert float(out["residual"][0]) == thr
    np.testing.assert_array_equal(out["mask"], [False, True])
    np.testing.assert_array_equal(out["mask_traced"], [False, True])
    _assert_close(out["loss"], np_sq(s, y)[0])
    assert all(np.all(np.isfinite(g)) for g in (*out["grads"], out["residual_grad"]))
    _assert_close(out["grads"][0], np.stack([2 * (np.float64(s[0]) - y[0]), np.zeros(d)]))


@pytest.mark.parametrize("d", DIMS)
def test_teacher_equal_to_labels_has_zero_residual_and_finite_grads(d):
    s, y = _inputs(d, 2)
    t = y.copy()
    fns = {
        "residual": lambda s, y, t: losses.teacher_residual(y, t),
        "tor": functools.partial(losses.teacher_outlier_rejection, threshold=0.0),
        "attentive": functools.partial(losses.attentive_imitation, eta=1.0),
        "bounded": losses.teacher_bounded_regression,
    }

    @jax.jit
    def run(s, y, t):
        values = {k: fn(s, y, t) for k, fn in fns.items()}
        grads = {
            k: jax.grad(lambda *a, fn=fn: fn(*a).sum(), argnums=(0, 1, 2))(s, y, t)
            for k, fn in fns.items()
        }
        return values, grads

    values, grads = run(s, y, t)
    np.testing.assert_array_equal(values["residual"], np.zeros(BATCH))
    for g in grads["residual"]:
        np.testing.assert_array_equal(g, np.zeros_like(y))
    assert all(np.all(np.isfinite(g)) for gs in grads.values() for g in gs)
    # threshold 0 keeps a perfect teacher's examples.
    _assert_close(values["tor"], np_sq(s, y))


@pytest.mark.parametrize("d", DIMS)
def test_all_rejected_batch(d):
    s, hb, y, t = _inputs(d, 4)
    assert (np_residual(y, t) > 0).all()

    def drop(s):
        return losses.teacher_outlier_rejection(s, y, t, threshold=0.0, rejection="drop")

    np.testing.assert_array_equal(jax.jit(drop)(s), np.zeros(BATCH))
    g = jax.jit(jax.grad(lambda s: drop(s).sum()))(s)
    np.testing.assert_array_equal(g, np.zeros_like(s))

    def multitask(a, b):
        return losses.multitask_distillation(a, b, y, t, threshold=0.0, weight=2.0).sum()

    _assert_close(jax.jit(multitask)(s, hb), 2.0 * np_sq(hb, t).sum())
    ga, gb = jax.jit(jax.grad(multitask, argnums=(0, 1)))(s, hb)
    np.testing.assert_array_equal(ga, np.zeros_like(s))
    _assert_close(gb, 4.0 * (np.float64(hb) - t))


@pytest.mark.parametrize("d", DIMS)
def test_rejection_teacher_uses_teacher_target(d):
    s, y, t = _inputs(d)

    def fn(s):
        return losses.teacher_outlier_rejection(s, y, t, threshold=0.0, rejection="teacher")

    _assert_close(jax.jit(fn)(s), np_sq(s, t))
    _assert_close(jax.grad(lambda s: fn(s).sum())(s), 2 * (np.float64(s) - t))


# --- rejection_threshold ----------------------------------------------------------------


def _residuals(n=201, seed=0):
    return np.abs(np.random.default_rng(seed).normal(size=n)).astype(np.float32)


def _np_mad_threshold(r, k):
    r = np.float64(r)
    med = np.median(r)
    return med + k * 1.4826 * np.median(np.abs(r - med))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_threshold_fixed(dtype):
    out = jax.jit(lambda r, v: thresholds.rejection_threshold(r, method="fixed", value=v))(
        _residuals().astype(dtype), 0.7
    )
    assert out.shape == () and out.dtype == dtype
    np.testing.assert_allclose(np.float64(out), 0.7, rtol=1e-3)


@pytest.mark.parametrize("q", [0.0, 0.25, 0.9, 1.0])
def test_threshold_quantile(q):
    r = _residuals()
    fn = jax.jit(functools.partial(thresholds.rejection_threshold, method="quantile", q=q))
    out = fn(r)
    assert out.shape == ()
    _assert_close(out, np.quantile(np.float64(r), q))


@pytest.mark.parametrize(("k", "n"), [(3.0, 1), (3.0, 200), (1.0, 201)])
def test_threshold_mad(k, n):
    r = _residuals(n)
    fn = jax.jit(functools.partial(thresholds.rejection_threshold, method="mad", k=k))
    _assert_close(fn(r), _np_mad_threshold(r, k))


def test_threshold_mad_ignores_a_few_huge_outliers():
    clean = _residuals(1000)
    noisy = clean.copy()
    noisy[:30] = 1e6
    fn = functools.partial(thresholds.rejection_threshold, method="mad")
    _assert_close(fn(noisy), _np_mad_threshold(noisy, 3.0))
    assert abs(float(fn(noisy)) - float(fn(clean))) < 0.1 * float(fn(clean))
    # A mean + 3 std rule would be dragged far past every clean residual.
    assert np.mean(noisy) + 3 * np.std(noisy) > 1e4 > float(fn(noisy))


def _np_mixture_fit(r, nu, d, steps=thresholds.MIXTURE_EM_STEPS):
    """The 'mixture' rule in float64 NumPy, written from the docstring's model."""
    r2 = np.float64(r) ** 2
    log_volume = d / 2 * np.log(np.pi) + d / 2 * np.log(r2.max()) - gammaln(d / 2 + 1)
    log_c = gammaln((nu + d) / 2) - gammaln(nu / 2) - d / 2 * np.log(nu * np.pi)
    s2, pi = np.median(r2) / (d * (1 - 2 / (9 * d)) ** 3), 0.1
    for _ in range(steps):
        log_in = (
            np.log1p(-pi) + log_c - d / 2 * np.log(s2) - (nu + d) / 2 * np.log1p(r2 / (nu * s2))
        )
        inlier = 1 / (1 + np.exp(np.log(pi) - log_volume - log_in))
        s2 = np.sum(inlier * (nu + d) / (nu + r2 / s2) * r2) / (d * np.sum(inlier))
        pi = np.clip(1 - inlier.mean(), 1e-6, 1 - 1e-6)
    # Where the outlier posterior is one half: (1 - π) p_in(δ) = π / V.
    log_k = np.log(pi / (1 - pi)) - log_volume - log_c + d / 2 * np.log(s2)
    delta = np.sqrt(nu * s2 * np.expm1(-2 * min(log_k, 0.0) / (nu + d)))
    return min(delta, np.sqrt(r2.max())), np.sqrt(s2), pi


def _residual_set(n, d, outliers, inliers, seed):
    """Residual norms of ``n`` rows: inliers Gaussian or Student-t (3 dof) of scale 1 in
    each of d dimensions, a fraction ``outliers`` uniform on [-50, 50)^d. Also the mask."""
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((n, d)) if inliers == "gaussian" else rng.standard_t(3, (n, d))
    corrupted = rng.random(n) < outliers
    e = np.where(corrupted[:, None], rng.uniform(-50, 50, (n, d)), e)
    return np.linalg.norm(e, axis=1).astype(np.float32), corrupted


@pytest.mark.parametrize("d", [1, 2, 5])
@pytest.mark.parametrize("outliers", [0.0, 0.1, 0.4])
def test_threshold_mixture_matches_numpy(d, outliers):
    r, _ = _residual_set(2000, d, outliers, "t3", seed=d)
    fit = jax.jit(functools.partial(thresholds.mixture_fit, nu=3.0, dim=d))(r)
    delta, scale, pi = _np_mixture_fit(r, 3.0, d)
    np.testing.assert_allclose(float(fit["threshold"]), delta, rtol=2e-4)
    np.testing.assert_allclose(float(fit["scale"]), scale, rtol=2e-4)
    np.testing.assert_allclose(float(fit["outlier_fraction"]), pi, rtol=2e-3, atol=1e-6)
    same = thresholds.rejection_threshold(r, method="mixture", nu=3.0, dim=d)
    np.testing.assert_allclose(float(same), float(fit["threshold"]), rtol=1e-6)  # jit or not


@pytest.mark.parametrize("inliers", ["gaussian", "t3"])
@pytest.mark.parametrize("outliers", [0.0, 0.1, 0.4])
def test_threshold_mixture_rejects_about_the_outliers_and_nothing_without(inliers, outliers):
    """20,000 rows. Without outliers under 1 % is rejected (the MAD rule: 1.4 % of Gaussian,
    6 % of t(3) residuals). With them, the rejected fraction is within 4 points of the
    truth: an outlier that lands inside the inliers' bulk (about 7 % of them here) is
    indistinguishable from an inlier, so the rule falls a little short, never far over."""
    r, corrupted = _residual_set(20_000, 1, outliers, inliers, seed=7)
    rejected = np.asarray(r > thresholds.rejection_threshold(r, method="mixture"))
    mad = np.asarray(r > thresholds.rejection_threshold(r, method="mad"))
    if outliers == 0:
        assert rejected.mean() < 0.01
        assert mad.mean() > 0.01  # the rule it replaces, on the same residuals
    else:
        assert abs(rejected.mean() - corrupted.mean()) < 0.04, rejected.mean()
        assert (rejected & corrupted).sum() / rejected.sum() > 0.9  # precision


def test_threshold_mixture_of_a_perfect_teacher_rejects_nothing():
    zeros = np.zeros(50, np.float32)
    assert float(thresholds.rejection_threshold(zeros, method="mixture")) == 0.0
    one_off = zeros.copy()
    one_off[3] = 2.0
    assert np.isfinite(float(thresholds.rejection_threshold(one_off, method="mixture")))


# --- vmap over seeds --------------------------------------------------------------------

VMAP_CASES = {
    "squared_error": lambda s, y, t, thr: losses.squared_error(s, y),
    "tor_drop": lambda s, y, t, thr: losses.teacher_outlier_rejection(s, y, t, threshold=thr),
    "tor_teacher": lambda s, y, t, thr: losses.teacher_outlier_rejection(
        s, y, t, threshold=thr, rejection="teacher"
    ),
    "multitask": lambda s, y, t, thr: losses.multitask_distillation(
        s, 2 * s, y, t, threshold=thr, weight=0.5
    ),
    "attentive": lambda s, y, t, thr: losses.attentive_imitation(s, y, t, eta=thr**2),
    "small_loss": lambda s, y, t, thr: losses.small_loss(s, y, drop_fraction=thr / 4),
}


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("name", sorted(VMAP_CASES))
def test_vmap_over_seeds_matches_loop(d, name):
    fn = VMAP_CASES[name]
    s, y, t = (np.stack(x) for x in zip(*(_inputs(d, seed=i) for i in range(4)), strict=True))
    thr = np.median(np.sqrt(((t - y) ** 2).sum(-1)), axis=1)
    batched = jax.jit(jax.vmap(fn))(s, y, t, thr)
    looped = np.stack([fn(s[i], y[i], t[i], thr[i]) for i in range(4)])
    assert batched.shape == (4, BATCH)
    _assert_close(batched, looped)


# --- errors -------------------------------------------------------------------------------

X = np.zeros((4, 3), np.float32)
R = _residuals(10)
ERROR_CASES = {
    "shape_mismatch": (
        lambda: losses.squared_error(X, np.zeros((4, 2), np.float32)),
        r"Shapes must match: `pred` has shape \(4, 3\) but `target` has shape \(4, 2\)",
    ),
    "batch_mismatch_multitask": (
        lambda: losses.multitask_distillation(X, X[:3], X, X, threshold=1.0),
        r"`label_head` has shape \(4, 3\) but `teacher_head` has shape \(3, 3\)",
    ),
    "student_mismatch_tor": (
        lambda: losses.teacher_outlier_rejection(X[:, :2], X, X, threshold=1.0),
        r"`student` has shape \(4, 2\) but `labels` has shape \(4, 3\)",
    ),
    "rank1": (
        lambda: losses.squared_error(np.zeros(4, np.float32), np.zeros(4, np.float32)),
        r"`pred` must be a 2-D array .* got shape \(4,\)",
    ),
    "rank3": (
        lambda: losses.teacher_residual(X[None], X[None]),
        r"`labels` must be a 2-D array .* got shape \(1, 4, 3\)",
    ),
    "d0": (
        lambda: losses.absolute_error(X[:, :0], X[:, :0]),
        r"`pred` must be a 2-D array .*d >= 1, got shape \(4, 0\)",
    ),
    "int_pred": (
        lambda: losses.squared_error(X.astype(np.int32), X),
        r"`pred` must have a floating dtype, got int32",
    ),
    "int_teacher": (
        lambda: losses.mixed_distillation(X, X, X.astype(np.int32)),
        r"`teacher` must have a floating dtype, got int32",
    ),
    "bad_method": (
        lambda: thresholds.rejection_threshold(R, method="median"),
        r"`method` must be one of \('fixed', 'quantile', 'mad', 'mixture'\), got 'median'",
    ),
    "bad_rejection": (
        lambda: losses.teacher_outlier_rejection(X, X, X, threshold=1.0, rejection="clip"),
        r"`rejection` must be one of \('drop', 'teacher'\), got 'clip'",
    ),
    "bad_rejection_multitask": (
        lambda: losses.multitask_distillation(X, X, X, X, threshold=1.0, rejection="x"),
        r"`rejection` must be one of",
    ),
    "fixed_without_value": (
        lambda: thresholds.rejection_threshold(R, method="fixed"),
        r"`value` is required when method='fixed'",
    ),
    "fixed_negative_value": (
        lambda: thresholds.rejection_threshold(R, method="fixed", value=-1.0),
        r"`value` must be >= 0, got -1.0",
    ),
    "negative_threshold_mask": (
        lambda: losses.outlier_mask(X, X, threshold=-0.1),
        r"`threshold` must be >= 0, got -0.1",
    ),
    "negative_threshold_multitask": (
        lambda: losses.multitask_distillation(X, X, X, X, threshold=-1),
        r"`threshold` must be >= 0",
    ),
    "vector_threshold": (
        lambda: losses.teacher_outlier_rejection(X, X, X, threshold=np.ones(4)),
        r"`threshold` must be a scalar, got shape \(4,\)",
    ),
    "eta_zero": (
        lambda: losses.attentive_imitation(X, X, X, eta=0.0),
        r"`eta` must be > 0, got 0.0",
    ),
    "eta_negative": (
        lambda: losses.attentive_imitation(X, X, X, eta=-2.0),
        r"`eta` must be > 0",
    ),
    "alpha_high_attentive": (
        lambda: losses.attentive_imitation(X, X, X, eta=1.0, alpha=1.5),
        r"`alpha` must be in \[0, 1\], got 1.5",
    ),
    "alpha_low_mixed": (
        lambda: losses.mixed_distillation(X, X, X, alpha=-0.1),
        r"`alpha` must be in \[0, 1\], got -0.1",
    ),
    "delta_zero": (lambda: losses.huber(X, X, delta=0.0), r"`delta` must be > 0, got 0.0"),
    "delta_negative": (lambda: losses.huber(X, X, delta=-1.0), r"`delta` must be > 0"),
    "k_zero": (
        lambda: thresholds.rejection_threshold(R, method="mad", k=0.0),
        r"`k` must be > 0, got 0.0",
    ),
    "k_negative": (
        lambda: thresholds.rejection_threshold(R, method="mad", k=-3),
        r"`k` must be > 0, got -3",
    ),
    "nu_zero": (
        lambda: thresholds.rejection_threshold(R, method="mixture", nu=0.0),
        r"`nu` must be > 0, got 0.0",
    ),
    "q_low": (
        lambda: thresholds.rejection_threshold(R, method="quantile", q=-0.1),
        r"`q` must be in \[0, 1\], got -0.1",
    ),
    "q_high": (
        lambda: thresholds.rejection_threshold(R, method="quantile", q=1.1),
        r"`q` must be in \[0, 1\], got 1.1",
    ),
    "empty_residuals": (
        lambda: thresholds.rejection_threshold(np.zeros(0, np.float32), method="mad"),
        r"`residuals` must be a non-empty 1-D array, got shape \(0,\)",
    ),
    "residuals_2d": (
        lambda: thresholds.rejection_threshold(X, method="mad"),
        r"`residuals` must be a non-empty 1-D array, got shape \(4, 3\)",
    ),
    "int_residuals": (
        lambda: thresholds.rejection_threshold(np.arange(5), method="mad"),
        r"`residuals` must have a floating dtype",
    ),
    "negative_weight": (
        lambda: losses.multitask_distillation(X, X, X, X, threshold=1.0, weight=-0.5),
        r"`weight` must be >= 0, got -0.5",
    ),
    "small_loss_q_one": (
        lambda: losses.small_loss(X, X, drop_fraction=1.0),
        r"`drop_fraction` must be in \[0, 1\), got 1.0",
    ),
    "small_loss_q_negative": (
        lambda: losses.small_loss_mask(np.zeros(4, np.float32), drop_fraction=-0.1),
        r"`drop_fraction` must be in \[0, 1\)",
    ),
    "small_loss_mask_2d": (
        lambda: losses.small_loss_mask(X, drop_fraction=0.2),
        r"`loss` must be a 1-D float array \[batch\], got float32 \(4, 3\)",
    ),
    "small_loss_vector_q": (
        lambda: losses.small_loss_mask(np.zeros(4, np.float32), drop_fraction=np.ones(2)),
        r"`drop_fraction` must be a scalar, got shape \(2,\)",
    ),
    "shape_mismatch_under_jit": (
        lambda: jax.jit(losses.squared_error)(X, X[:2]),
        r"Shapes must match",
    ),
}


@pytest.mark.parametrize("name", sorted(ERROR_CASES))
def test_value_errors(name):
    fn, match = ERROR_CASES[name]
    with pytest.raises(ValueError, match=match):
        fn()


def test_traced_hyperparameters_are_not_checked_and_still_jit():
    s, y, t = _inputs(3)
    fn = jax.jit(
        lambda thr, eta, alpha: (
            losses.teacher_outlier_rejection(s, y, t, threshold=thr)
            + losses.attentive_imitation(s, y, t, eta=eta, alpha=alpha)
        )
    )
    thr, eta, alpha = 1.0, 2.0, 0.4
    ref = np_tor(s, y, t, thr, "drop") + alpha * np_sq(s, y)
    ref += (1 - alpha) * np.clip(1 - np_sq(t, y) / eta, 0, 1) * np_sq(s, t)
    _assert_close(fn(jnp.float32(thr), jnp.float32(eta), jnp.float32(alpha)), ref)


# --- the silent broadcast: [B, 1] against [B] (or [1, d]) -------------------------------

BROADCAST_CASES = {
    "squared_error": (losses.squared_error, 2, {}),
    "absolute_error": (losses.absolute_error, 2, {}),
    "huber": (losses.huber, 2, {}),
    "teacher_residual": (losses.teacher_residual, 2, {}),
    "outlier_mask": (losses.outlier_mask, 2, {"threshold": 1.0}),
    "teacher_outlier_rejection": (losses.teacher_outlier_rejection, 3, {"threshold": 1.0}),
    "teacher_bounded_regression": (losses.teacher_bounded_regression, 3, {}),
    "attentive_imitation": (losses.attentive_imitation, 3, {"eta": 1.0}),
    "mixed_distillation": (losses.mixed_distillation, 3, {}),
    "multitask_distillation": (losses.multitask_distillation, 4, {"threshold": 1.0}),
    "small_loss": (losses.small_loss, 2, {"drop_fraction": 0.2}),
}


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("name", sorted(BROADCAST_CASES))
def test_broadcastable_shapes_are_refused_naming_the_argument(name, jit):
    """`[B, 1] - [B]` broadcasts to `[B, B]` and `[B, d] - [1, d]` to `[B, d]`: silently
    wrong losses. Every loss refuses both, naming the argument (at trace time under jit)."""
    fn, n, kwargs = BROADCAST_CASES[name]
    names = list(inspect.signature(fn).parameters)[:n]
    call = jax.jit(functools.partial(fn, **kwargs)) if jit else functools.partial(fn, **kwargs)
    good = np.zeros((BATCH, 1), np.float32)
    for i, arg in enumerate(names):
        args = [good] * n
        args[i] = np.zeros(BATCH, np.float32)
        with pytest.raises(ValueError, match=rf"`{arg}` must be a 2-D .* got shape \({BATCH},\)"):
            call(*args)
        args[i] = np.zeros((1, 1), np.float32)
        with pytest.raises(ValueError, match="Shapes must match") as e:
            call(*args)
        assert f"`{arg}` has shape (1, 1)" in str(e.value)
