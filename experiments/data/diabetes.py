"""A real regression problem as your own data: scikit-learn's bundled diabetes set.

442 patients, 10 measurements, the target a disease progression score one year later
(Efron et al. 2004; the data ship inside scikit-learn's wheel, nothing is downloaded).

    python -m experiments.data.diabetes --out DIR

writes ``DIR/diabetes.npz`` (``x``/``y`` to train on, ``x_test``/``y_test`` held out: 20 %
of the rows by a fixed seed; the validation split is drawn from ``x`` by the sweep) and
``DIR/gbm_teacher.npz``: a gradient-boosted teacher trained outside our library (scikit-
learn), its out-of-fold predictions on ``x`` (``train``, with each row's ``fold``) and
its predictions on ``x_test`` (``test``) from a model fitted on all of ``x``. Out-of-fold,
because a boosted model's predictions on its own training rows nearly copy their labels,
so its residuals would show no label as an outlier. Each file is written whole or not at
all (a temporary file renamed).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from kd_regression import fileio

TEST_FRACTION = 0.2
FOLDS = 5


def write(out: str, seed: int = 0) -> dict[str, str]:
    """Writes the data file and the teacher's predictions file; returns their paths."""
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.model_selection import KFold

    d = load_diabetes(scaled=False)  # the measurements in their own units
    x, y = d.data.astype(np.float32), d.target.astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = round(TEST_FRACTION * len(x))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    os.makedirs(out, exist_ok=True)
    paths = {
        "data": os.path.join(out, "diabetes.npz"),
        "teacher": os.path.join(out, "gbm_teacher.npz"),
    }
    fileio.atomic_write_npz(paths["data"], x=x[train], y=y[train], x_test=x[test], y_test=y[test])

    def gbm():
        return GradientBoostingRegressor(
            n_estimators=200, max_depth=2, learning_rate=0.05, random_state=seed
        )

    oof, fold = np.zeros(len(train), np.float32), np.zeros(len(train), np.int64)
    for j, (fit_rows, held) in enumerate(
        KFold(FOLDS, shuffle=True, random_state=seed).split(train)
    ):
        oof[held] = gbm().fit(x[train][fit_rows], y[train][fit_rows]).predict(x[train][held])
        fold[held] = j
    test_pred = gbm().fit(x[train], y[train]).predict(x[test]).astype(np.float32)
    fileio.atomic_write_npz(paths["teacher"], train=oof, test=test_pred, fold=fold)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory for the two .npz files")
    paths = write(parser.parse_args().out)
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))


if __name__ == "__main__":
    main()
