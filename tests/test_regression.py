"""The laws and the search RegMix and TiKMiX-M share (tikmix/regression.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tikmix.regression import (
    LinearLaw,
    QuadraticRidge,
    cv_loss_curve,
    fit_cv_trees,
    fold_indices,
    folds_for,
    kfold_predictions,
    lgbm_regressor,
    n_trees,
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


def _small_lgbm(n_estimators: int = 40, learning_rate: float = 0.1):
    return lambda n: lgbm_regressor(0, n_estimators=n_estimators, learning_rate=learning_rate, min_child_samples=2)


def test_cv_curve_is_the_pooled_out_of_fold_mse_and_the_refit_uses_every_row():
    """cv_loss_curve[t-1] = the mean over all rows of the squared error of the t-tree model of the fold that held
    the row out (recomputed here by hand); fit_cv_trees refits on ALL rows with the curve's argmin trees. Catches:
    a per-fold mean instead of the pooled one, an off-by-one round, the final model fitted on a subset (the
    notebook's rule) or with every tree."""
    rng = np.random.default_rng(2)
    X = rng.dirichlet(np.ones(3), 14)
    y = X[:, 0] ** 2 - X[:, 1] + rng.normal(0, 0.05, 14)
    make = _small_lgbm()
    curve = cv_loss_curve(make, X, y, 4, seed=5)
    assert curve.shape == (40,)
    folds = fold_indices(14, 4, 5)
    assert sorted(np.concatenate(folds).tolist()) == list(range(14)) and len({len(f) for f in folds}) == 2
    for t in (1, 7, 40):
        sse = 0.0
        for te in folds:
            tr = np.setdiff1d(np.arange(14), te)
            sse += float(((make(14).fit(X[tr], y[tr]).predict(X[te], num_iteration=t) - y[te]) ** 2).sum())
        assert curve[t - 1] == pytest.approx(sse / 14, rel=1e-6), t  # LightGBM scores in float32
    model = fit_cv_trees(make, X, y, 4, seed=5)
    best = int(np.argmin(curve)) + 1
    assert n_trees(model) == best and 1 < best < 40, curve  # an interior minimum: the choice is a real one
    np.testing.assert_allclose(model.predict(X), make(14).set_params(n_estimators=best).fit(X, y).predict(X))
    few = fit_cv_trees(make, X[:3], y[:3], 4, seed=5)  # too few rows to cross-validate: every tree allowed
    assert few.get_params()["n_estimators"] == 40


def test_cv_keeps_few_trees_on_noise_and_many_on_a_law():
    """On a pure-noise target held-out error rises from the first rounds: the cross-validated choice keeps few of
    the trees; on a clean law it keeps most. Catches: a curve read on the training rows (it always falls) and
    the argmax for the argmin."""
    rng = np.random.default_rng(0)
    X = rng.dirichlet(np.ones(4), 60)
    make = _small_lgbm(200, learning_rate=0.01)
    noise = n_trees(fit_cv_trees(make, X, rng.normal(size=60), 5, seed=0))
    law = n_trees(fit_cv_trees(make, X, (X[:, 0] - 0.3) ** 2 + X[:, 1], 5, seed=0))
    assert noise < 20 and law > 100, (noise, law)
