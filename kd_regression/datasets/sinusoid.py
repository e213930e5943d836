"""The sinusoid toy problem: a 1-D function with a low- and a high-frequency part.

``f(x) = sin(π x) + a · sin(ω π x)`` on ``x ∈ [-1, 1]`` (defaults ``a = 0.3``, ``ω = 8``;
the paper's exact toy function is not known to us, this one is our choice). Why this
function: the smooth ``sin(π x)`` part is easy for any network, while the ``ω = 8`` ripple
(eight half-periods over the domain) needs capacity. A large MLP teacher fits both; a small
student fits the ripple only partly, so there is a real teacher-student gap, and the
teacher's error is small next to the label noise levels of the experiments, so its residual
``||t - y||`` is informative about which labels are corrupted.

Examples carry a stable ``index`` (their row in the split), which joins them to stored
teacher predictions whatever the shuffle.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

SPLITS = ("train", "validation", "test")
# Bumped whenever the generated data change, so stored teacher predictions are recomputed.
VERSION = "1"


class Split(NamedTuple):
    x: np.ndarray  # [n, 1] float32 inputs
    y: np.ndarray  # [n, 1] float32 clean targets f(x)
    index: np.ndarray  # [n] int64 stable example index


def function(x: np.ndarray, *, amplitude: float = 0.3, frequency: float = 8.0) -> np.ndarray:
    """``sin(π x) + amplitude · sin(frequency · π x)``, elementwise."""
    return np.sin(np.pi * x) + amplitude * np.sin(frequency * np.pi * x)


def label_range(*, amplitude: float = 0.3, margin: float = 0.5) -> tuple[float, float]:
    """Range for outlier labels: the function's bound ``1 + |amplitude|`` plus ``margin``."""
    bound = 1.0 + abs(amplitude) + margin
    return (-bound, bound)


def load(
    split: str,
    *,
    size: int,
    seed: int,
    amplitude: float = 0.3,
    frequency: float = 8.0,
) -> Split:
    """Draws ``size`` examples of ``split`` uniformly on [-1, 1] (clean targets).

    The three splits of one seed are independent draws (distinct streams of one
    ``numpy`` generator seed), so they never share an example by construction.
    Label noise is added by the experiment (:mod:`kd_regression.noise`), on the training
    and validation splits only.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    x = rng.uniform(-1.0, 1.0, size=(size, 1)).astype(np.float32)
    y = function(x, amplitude=amplitude, frequency=frequency).astype(np.float32)
    return Split(x=x, y=y, index=np.arange(size, dtype=np.int64))
