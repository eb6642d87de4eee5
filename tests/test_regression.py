"""The laws and the search RegMix and TiKMiX-M share (tikmix/regression.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tikmix.regression import (
    LinearLaw,
    QuadraticRidge,
    folds_for,
    kfold_predictions,
    lgbm_regressor,
    r2,
    rmse,
    spearman,
    top_k_mean,
)


def test_streamed_top_k_equals_the_top_k_of_everything_and_keeps_the_earlier_of_ties():
    rng = np.random.default_rng(0)
    W = rng.dirichlet(np.ones(4), 1000)
    predict = lambda X: np.round(X[:, 0] - X[:, 2], 2)  # noqa: E731 — rounded: many ties
    w_all, y_all, n_all = top_k_mean(predict, [W], 25)
    w_chunks, y_chunks, n_chunks = top_k_mean(predict, np.array_split(W, 7), 25)
    assert (n_all, n_chunks) == (1000, 1000)
    np.testing.assert_array_equal(y_all, y_chunks)
    np.testing.assert_array_equal(w_all, w_chunks)
    keep = np.argsort(predict(W), kind="stable")[:25]
    np.testing.assert_allclose(w_all, W[keep].mean(0) / W[keep].mean(0).sum(), rtol=0, atol=1e-15)
    assert top_k_mean(predict, [], 5)[0] is None


def test_kfold_predicts_every_row_once_from_a_fit_that_never_saw_it():
    n, K = 11, 4
    seen_by: dict[int, set] = {}

    def fit_predict(tr, te):
        for i in te:
            seen_by[int(i)] = set(map(int, tr))
        return te.astype(float)

    oof = kfold_predictions(fit_predict, n, K, seed=3)
    np.testing.assert_array_equal(oof, np.arange(n))
    assert sorted(seen_by) == list(range(n)) and all(
        i not in tr and len(tr) >= n - math.ceil(n / K) for i, tr in seen_by.items()
    )
    assert [folds_for(n, f) for n, f in ((3, 5), (4, 1), (4, 5), (20, 5))] == [0, 0, 4, 5]


def test_the_laws_recover_what_they_can_express():
    rng = np.random.default_rng(1)
    X = rng.dirichlet(np.ones(3), 60)
    lin = X @ np.array([1.0, -2.0, 0.5])
    quad = lin + 3.0 * X[:, 0] * X[:, 1]
    assert r2(lin, LinearLaw().fit(X, lin).predict(X)) == pytest.approx(1.0)
    assert rmse(quad, QuadraticRidge(ridge=1e-12).fit(X, quad).predict(X)) < 1e-6
    assert r2(quad, LinearLaw().fit(X, quad).predict(X)) < 0.999  # the linear law cannot express the cross term
    model = lgbm_regressor(0, n_estimators=50, min_child_samples=2).fit(X, quad)
    assert spearman(quad, model.predict(X)) > 0.9
    assert math.isnan(spearman(np.ones(5), np.arange(5.0))) and math.isnan(r2(np.ones(3), np.zeros(3)))
