"""A synthetic tabular benchmark with heavy-tailed label noise, as your own data.

Friedman's regression problem #1 (scikit-learn's ``make_friedman1``: 10 inputs uniform on
[0, 1], five of them used: y = 10 sin(π x₁ x₂) + 20 (x₃ − ½)² + 10 x₄ + 5 x₅), with label
noise σ · t(ν) on the rows to train on: Student-t with ν = 3 degrees of freedom (ours), so
the residuals of even a perfect model are heavy-tailed, as real ones are (a few honest
rows far off, none of them an error to reject). The held-out rows carry the noiseless
target, so the test RMSE measures the function learnt, not the noise.

    python -m experiments.data.tabular --out DIR
    python -m experiments.main --config arrays --config.dataset.path=DIR/tabular.npz \\
        --config.dataset.test_labels_clean=True --workdir runs/tabular

writes ``DIR/tabular.npz``: ``x``/``y`` (24,000 rows; the validation split is drawn from
them by the sweep) and ``x_test``/``y_test`` (6,000 rows, noiseless). Written whole or not
at all (a temporary file renamed).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from kd_regression import fileio

TRAIN_ROWS = 24_000
TEST_ROWS = 6_000
NOISE_SCALE = 1.0  # σ (the noiseless target's standard deviation is about 4.9)
NOISE_DOF = 3.0  # ν: finite variance, infinite kurtosis


def make(seed: int = 0) -> dict[str, np.ndarray]:
    """The arrays of ``tabular.npz``; the same for the same seed."""
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(TRAIN_ROWS + TEST_ROWS, n_features=10, noise=0.0, random_state=seed)
    noise = NOISE_SCALE * np.random.default_rng(seed).standard_t(NOISE_DOF, TRAIN_ROWS)
    x, y = x.astype(np.float32), y.astype(np.float32)
    return {
        "x": x[:TRAIN_ROWS],
        "y": (y[:TRAIN_ROWS] + noise).astype(np.float32),
        "x_test": x[TRAIN_ROWS:],
        "y_test": y[TRAIN_ROWS:],
    }


def write(out: str, seed: int = 0) -> str:
    """Writes ``out/tabular.npz``; returns its path."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "tabular.npz")
    fileio.atomic_write_npz(path, **make(seed))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory for tabular.npz")
    parser.add_argument("--seed", type=int, default=0, help="draws the rows and the noise")
    args = parser.parse_args()
    print(write(args.out, args.seed))


if __name__ == "__main__":
    main()
