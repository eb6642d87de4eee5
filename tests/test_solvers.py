"""TiKMiX's numerical side (tikmix/method/solvers.py): objective, SLSQP with Pareto and caps, LHS, LightGBM; and the
Dirichlet search it shares with RegMix (tikmix/regression.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tikmix.method.solvers import (
    entropy,
    epoch_caps,
    fit_regressor,
    influence_scale,
    latin_hypercube_candidates,
    project_capped_simplex,
    tikmix_d_solve,
    tikmix_objective,
    tikmix_objective_from_p,
)
from tikmix.regression import dirichlet_search


def test_objective_matches_eq_9_10_by_hand():
    S = np.array([[2.0, 1.0, -1.0], [0.5, 1.0, 0.0]])
    w = np.array([0.5, 0.5, 0.0])
    P = S @ w  # [1.5, 0.75]
    Ph = P / (np.array([2.0, 1.0]) + 1e-8)  # Eq. 9
    H = -(0.5 * np.log(0.5) * 2)  # 0 log 0 = 0
    expect = 2.0 * Ph.std() - 3.0 * Ph.sum() - 0.5 * H
    assert tikmix_objective(S, w, alpha=2.0, beta=3.0, gamma=0.5) == pytest.approx(expect, rel=1e-12)
    assert entropy(np.array([1.0, 0.0])) == 0.0
    # the P-variant agrees with the matrix form when P = S·w
    assert tikmix_objective_from_p(S @ w, w, influence_scale(S)) == pytest.approx(tikmix_objective(S, w))
    # vectorised over candidate rows
    W = np.array([w, [1 / 3] * 3])
    np.testing.assert_allclose(tikmix_objective(S, W), [tikmix_objective(S, W[0]), tikmix_objective(S, W[1])])
    # guard: a target every domain hurts keeps its sign (more harm = worse objective)
    Sneg = np.array([[-1.0, -2.0]])
    assert tikmix_objective(Sneg, np.array([1.0, 0.0]), gamma=0) < tikmix_objective(Sneg, np.array([0.0, 1.0]), gamma=0)


def _feasible(S, w, w_prev, caps, tol=1e-6):
    scale = influence_scale(S)
    return (
        abs(w.sum() - 1) <= 1e-6
        and w.min() >= -1e-9
        and np.all(w <= caps + 1e-9)
        and np.all((S @ w - S @ w_prev) / scale >= -tol)
    )


def test_slsqp_on_random_instances_is_feasible_and_no_worse():
    rng = np.random.default_rng(0)
    improved = 0
    for i in range(40):
        n, m = rng.integers(1, 5), rng.integers(2, 9)
        S = rng.normal(size=(n, m)) * 10.0 ** rng.uniform(-4, 2)
        w_prev = rng.dirichlet(np.ones(m))
        caps = np.minimum(1.0, rng.uniform(0.15, 1.5, size=m)) if i % 2 else None
        if caps is not None and caps.sum() < 1:
            caps = caps / caps.sum() * 1.2
        w, info = tikmix_d_solve(S, w_prev, caps=caps)
        c = np.ones(m) if caps is None else np.minimum(caps, 1)
        ref = project_capped_simplex(w_prev, c) if np.any(w_prev > c) else w_prev
        assert _feasible(S, w, ref, c), (i, w, info)
        assert tikmix_objective(S, w) <= tikmix_objective(S, ref) + 1e-7, (i, info)
        assert info["objective"] == pytest.approx(tikmix_objective(S, w))
        assert info["status"] in ("ok", "fallback_prev")
        assert {"status", "message", "iterations", "objective", "objective_prev", "slacks"} <= set(info)
        improved += info["objective"] < info["objective_prev"] - 1e-6
    assert improved >= 30  # it does optimise, not just return w_prev


def test_slsqp_moves_weight_off_a_harmful_domain():
    # domain 3's column is all negative (noise): it must end below uniform; domain 0 helps everyone
    S = np.array([[1.0, 0.3, 0.2, -0.4], [0.8, 0.1, 0.5, -0.2], [0.9, 0.6, 0.1, -0.3]])
    w_prev = np.full(4, 0.25)
    w, info = tikmix_d_solve(S, w_prev)
    assert info["status"] == "ok"
    assert w[3] < 0.25 and w[0] > 0.25
    assert np.all(S @ w >= S @ w_prev - 1e-6)


def test_slsqp_caps_and_clipped_previous_mixture():
    S = np.array([[1.0, 0.1, 0.1]])
    w_prev = np.array([0.6, 0.2, 0.2])
    caps = np.array([0.3, 1.0, 1.0])
    w, info = tikmix_d_solve(S, w_prev, caps=caps)
    assert info["w_prev_clipped"] and w[0] <= 0.3 + 1e-9 and abs(w.sum() - 1) < 1e-9
    assert w[0] == pytest.approx(0.3, abs=1e-6)  # the helpful domain sits at its cap
    # caps that cannot be met: w ∝ caps, said in info
    w2, info2 = tikmix_d_solve(S, np.full(3, 1 / 3), caps=np.array([0.1, 0.2, 0.3]))
    assert info2["caps_relaxed"]
    np.testing.assert_allclose(w2, [1 / 6, 2 / 6, 3 / 6], atol=1e-6)


def test_slsqp_falls_back_to_previous_when_it_fails(monkeypatch):
    from scipy import optimize

    def broken(*a, **k):
        raise FloatingPointError("boom")

    monkeypatch.setattr(optimize, "minimize", broken)
    w_prev = np.array([0.7, 0.3])
    w, info = tikmix_d_solve(np.array([[1.0, -1.0]]), w_prev)
    np.testing.assert_array_equal(w, w_prev)
    assert info["status"] == "fallback_prev" and "boom" in info["message"]


def test_epoch_caps_and_projection():
    np.testing.assert_allclose(epoch_caps([100, 1000, 50], 400, 4.0), [1.0, 1.0, 0.5])
    np.testing.assert_allclose(epoch_caps([1, 2], 400, None), [1.0, 1.0])
    rng = np.random.default_rng(1)
    caps = np.array([0.1, 0.5, 0.5, 0.3])
    for v in rng.normal(size=(20, 4)):
        w = project_capped_simplex(v, caps)
        assert abs(w.sum() - 1) < 1e-9 and np.all(w >= 0) and np.all(w <= caps + 1e-9)
    p = np.array([0.2, 0.3, 0.4, 0.1])
    np.testing.assert_allclose(project_capped_simplex(p), p)  # points already inside stay


def test_latin_hypercube_candidates_in_intervals_and_on_simplex():
    prior = np.array([0.4, 0.3, 0.2, 0.08, 0.02])
    C, info = latin_hypercube_candidates(prior, 64, low=0.5, high=2.0, seed=0, return_info=True)
    assert C.shape == (64, 5) and info["accepted"] == 64
    np.testing.assert_allclose(C.sum(1), 1.0)
    assert np.all(C >= 0.5 * prior - 1e-12) and np.all(C <= np.minimum(1, 2.0 * prior) + 1e-12)
    # space-filling, not collapsed: every domain's weight spreads across its interval
    assert np.all(C.std(0) > 0.1 * prior)
    np.testing.assert_array_equal(C, latin_hypercube_candidates(prior, 64, seed=0))  # seeded
    # many domains: renormalising pushes nearly every point out of its box; gives up after the bound and says how many it found
    with pytest.warns(RuntimeWarning, match="only"):
        C2, info2 = latin_hypercube_candidates(np.full(200, 1 / 200), 5, seed=0, max_draws=50, return_info=True)
    assert info2["accepted"] == len(C2) < 5 and info2["drawn"] == 50


def test_dirichlet_search_finds_planted_optimum():
    w_star = np.array([0.5, 0.25, 0.15, 0.07, 0.03])

    def predict(W):  # smooth, lower is better, minimum at w_star
        return ((W - w_star) ** 2 / w_star).sum(axis=1)

    w, trace = dirichlet_search(
        predict, np.full(5, 0.2), T=5, conc_start=10, conc_end=1000, n_samples=5000, top_k=10, seed=0
    )
    assert np.abs(w - w_star).max() < 0.03, w
    assert abs(w.sum() - 1) < 1e-9
    assert len(trace) == 6 and trace[-1]["pred_w_best"] < trace[0]["pred_w_best"]
    conc = [t["concentration"] for t in trace[1:]]
    np.testing.assert_allclose(conc, np.geomspace(10, 1000, 5))  # broad -> narrow, log-spaced
    # zero weights in the start are not absorbing (floor)
    w0, _ = dirichlet_search(predict, np.array([1.0, 0, 0, 0, 0]), n_samples=5000, seed=0)
    assert np.all(w0 > 0.01)


def test_fit_regressor_planted_function_and_linear_r2():
    rng = np.random.default_rng(0)
    X = rng.dirichlet(np.ones(4), size=200)
    y = np.sin(4 * X[:, 0]) + 2 * X[:, 1] ** 2
    model, info = fit_regressor(X, y, seed=0, n_estimators=200, learning_rate=0.05)
    assert info["r2_holdout"] > 0.8 and info["spearman_holdout"] > 0.9, info
    assert model.predict(X[:3]).shape == (3,)
    # the linear prediction is exact when y is the objective at S·w, and poor for the planted y
    S = np.array([[1.0, 0.2, -0.3, 0.5], [0.1, 0.9, 0.2, 0.0]])
    _, lin = fit_regressor(X, np.asarray(tikmix_objective(S, X)), seed=0, S=S)
    assert lin["r2_linear"] == pytest.approx(1.0)
    assert info.get("r2_linear") is None
    _, mixed = fit_regressor(X, y, seed=0, S=S)
    assert mixed["r2_linear"] < 0.5
    # deterministic
    _, again = fit_regressor(X, y, seed=0, n_estimators=200, learning_rate=0.05)
    assert again["r2_holdout"] == info["r2_holdout"]
    # small data (TiKMiX-M's handful of candidates) still fits something
    _, small = fit_regressor(X[:12], y[:12], seed=0, min_child_samples=2)
    assert np.isfinite(small["r2_train"]) and small["r2_train"] > 0.5


def test_pareto_pins_the_mixture_when_every_domain_is_a_target():
    # each target is helped mostly by its own domain: no other mixture keeps every target's influence
    S = np.array([[5.0, 0.5, 0.1], [0.3, 4.0, 0.2], [0.1, 0.4, 3.0]])
    w_prev = np.array([0.6, 0.3, 0.1])
    w, info = tikmix_d_solve(S, w_prev)
    np.testing.assert_allclose(w, w_prev, atol=1e-6)
    assert info["pareto_room"] == pytest.approx(0.0, abs=1e-9)
    # the relaxation and the switch let it move, and only as far as allowed
    w2, info2 = tikmix_d_solve(S, w_prev, pareto_slack=0.05)
    scale = influence_scale(S)
    assert np.abs(w2 - w_prev).max() > 0.01 and info2["pareto_room"] > 0
    assert np.all((S @ w2 - S @ w_prev) / scale >= -0.05 - 1e-6)
    w3, info3 = tikmix_d_solve(S, w_prev, pareto=False)
    assert info3["objective"] <= info2["objective"] + 1e-9 <= info["objective"] + 2e-9
    assert "pareto_room" not in info3
