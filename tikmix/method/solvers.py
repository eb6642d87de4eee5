"""The numerical side of TiKMiX (methods.md, "TiKMiX-D" and "TiKMiX-M"): pure numpy/scipy, no torch.

* :func:`tikmix_objective` — Eq. 9–10, lower is better.
* :func:`tikmix_d_solve` — TiKMiX-D: SLSQP on the (capped) simplex with the Pareto constraint S·w ≥ S·w_prev;
  :func:`entropy_pull` and :func:`weak_signal` — whether its answer is the influence signal's or the entropy term's.
* :func:`latin_hypercube_candidates`, :func:`fit_influence_law`, :func:`accept_search` — TiKMiX-M (its regressors,
  held-out fit and Dirichlet search are :mod:`tikmix.regression`'s, shared with RegMix).
* :func:`epoch_caps`, :func:`project_capped_simplex` — the repetition cap the paper leaves out.

S is the influence matrix [n_targets, m_domains] in the *benefit* convention of :mod:`tikmix.method.influence`
(S_vd > 0: domain d helps target v).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
from scipy import optimize
from scipy.stats import qmc

from tikmix.regression import QuadraticRidge, folds_for, kfold_predictions, lgbm_regressor, r2, rmse, spearman

EPS_NORM = 1e-8  # Eq. 9's additive constant


# --------------------------------------------------------------------------------------------------------
# objective (Eq. 9-10)
# --------------------------------------------------------------------------------------------------------
def influence_scale(S: np.ndarray) -> np.ndarray:
    """Eq. 9's per-target normaliser max_d S_vd + 1e-8.

    Guard (our choice; the paper assumes some domain helps every target): where max_d S_vd ≤ 0 (every
    domain hurts target v), dividing by it would flip the sign and reward *more* harm, so we divide by
    max_d |S_vd| instead, which keeps P̂_v's sign equal to P_v's.
    """
    S = np.atleast_2d(np.asarray(S, dtype=np.float64))
    mx = S.max(axis=1)
    return np.where(mx > 0, mx, np.abs(S).max(axis=1)) + EPS_NORM


def entropy(w: np.ndarray) -> np.ndarray | float:
    """H(w) = −Σ w log w with 0 log 0 = 0 (last axis)."""
    w = np.asarray(w, dtype=np.float64)
    wl = np.where(w > 0, w * np.log(np.where(w > 0, w, 1.0)), 0.0)
    return -wl.sum(axis=-1)


def tikmix_objective_from_p(
    P: np.ndarray, w: np.ndarray, scale: np.ndarray, alpha: float = 1.0, beta: float = 1.0, gamma: float = 1.0
) -> float | np.ndarray:
    """Eq. 10 from an aggregate influence vector P [n] (or [k, n]) measured directly (TiKMiX-M's candidates):
    α·std(P/scale) − β·Σ P/scale − γ·H(w). ``scale`` is :func:`influence_scale` of the domain matrix, so the
    value is comparable with :func:`tikmix_objective` (the linear prediction)."""
    Ph = np.asarray(P, dtype=np.float64) / np.asarray(scale, dtype=np.float64)
    val = alpha * Ph.std(axis=-1) - beta * Ph.sum(axis=-1) - gamma * entropy(w)
    return float(val) if np.ndim(val) == 0 else val


def tikmix_objective(
    S: np.ndarray, w: np.ndarray, alpha: float = 1.0, beta: float = 1.0, gamma: float = 1.0
) -> float | np.ndarray:
    """Eq. 10: P = S·w, P̂_v = P_v/(max_d S_vd + 1e-8) (Eq. 9, guarded: :func:`influence_scale`),
    value = α·std(P̂) − β·ΣP̂ − γ·H(w) (population std). Lower is better. ``w`` may be [m] or [k, m]."""
    S = np.atleast_2d(np.asarray(S, dtype=np.float64))
    w = np.asarray(w, dtype=np.float64)
    return tikmix_objective_from_p(w @ S.T, w, influence_scale(S), alpha, beta, gamma)


def _objective_and_grad(S: np.ndarray, scale: np.ndarray, alpha: float, beta: float, gamma: float):
    Sn = S / scale[:, None]
    n = Sn.shape[0]

    def f(w):
        return float(tikmix_objective_from_p(S @ w, w, scale, alpha, beta, gamma))

    def jac(w):
        Ph = Sn @ w
        sd = Ph.std()
        g = -beta * Sn.sum(axis=0)
        if sd > 1e-12:
            g = g + alpha * ((Ph - Ph.mean()) @ Sn) / (n * sd)
        g = g + gamma * (np.log(np.clip(w, 1e-12, None)) + 1.0)
        return g

    return f, jac


# --------------------------------------------------------------------------------------------------------
# caps
# --------------------------------------------------------------------------------------------------------
def epoch_caps(train_tokens: np.ndarray, stage_tokens: float, max_epochs: float | None) -> np.ndarray:
    """caps_d = min(1, max_epochs·tokens_d / stage_tokens): a stage may not repeat a domain more than
    ``max_epochs`` times. ``max_epochs=None`` (or stage_tokens ≤ 0) = no cap."""
    t = np.asarray(train_tokens, dtype=np.float64)
    if max_epochs is None or stage_tokens <= 0:
        return np.ones_like(t)
    return np.minimum(1.0, float(max_epochs) * t / float(stage_tokens))


def project_capped_simplex(v: np.ndarray, caps: np.ndarray | None = None) -> np.ndarray:
    """Euclidean projection of v [m] (or each row of v [k, m]) onto {w: Σw = 1, 0 ≤ w ≤ caps}
    (needs Σcaps ≥ 1). Bisection on the shift τ in w = clip(v − τ, 0, caps), vectorised over rows."""
    v = np.asarray(v, dtype=np.float64)
    one = v.ndim == 1
    V = np.atleast_2d(v)
    caps = np.ones(V.shape[1]) if caps is None else np.asarray(caps, dtype=np.float64)
    if caps.sum() < 1 - 1e-12:
        raise ValueError(f"caps sum to {caps.sum():.6g} < 1: no mixture satisfies them")
    lo = V.min(axis=1) - caps.max() - 1.0
    hi = V.max(axis=1)
    for _ in range(100):  # Σ clip(v − τ, 0, caps) is non-increasing in τ
        tau = 0.5 * (lo + hi)
        big = np.clip(V - tau[:, None], 0.0, caps).sum(axis=1) > 1.0
        lo = np.where(big, tau, lo)
        hi = np.where(big, hi, tau)
    W = np.clip(V - 0.5 * (lo + hi)[:, None], 0.0, caps)
    W = W / W.sum(axis=1, keepdims=True)
    return W[0] if one else W


# --------------------------------------------------------------------------------------------------------
# TiKMiX-D
# --------------------------------------------------------------------------------------------------------
def _satisfiable(caps: np.ndarray, w_prev: np.ndarray, info: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The caps scaled up when no mixture can respect them, and w_prev made a mixture within them; each change is
    recorded in ``info``."""
    m = len(caps)
    if caps.sum() < 1.0:
        # No mixture can respect the caps: the least-repeating one is w ∝ caps (the natural distribution).
        info["caps_relaxed"] = True
        info["caps_message"] = (
            f"caps sum to {caps.sum():.4g} < 1: every domain will exceed max_epochs; caps scaled up to sum to 1"
        )
        caps = caps / caps.sum() if caps.sum() > 0 else np.ones(m)
    w_prev = np.clip(w_prev, 0.0, None)
    w_prev = w_prev / w_prev.sum()
    if np.any(w_prev > caps + 1e-12):
        info["w_prev_clipped"] = True
        info["w_prev_original"] = w_prev.tolist()
        w_prev = project_capped_simplex(w_prev, caps)
    return caps, w_prev


def _slsqp(
    f: Callable,
    jac: Callable,
    starts: tuple[tuple[str, np.ndarray], ...],
    caps: np.ndarray,
    cons: list[dict],
    maxiter: int,
    feasible: Callable[[np.ndarray], bool],
    obj_prev: float,
) -> tuple[list[dict], tuple | None]:
    """SLSQP from each start in turn, the next start tried only when the first gave no answer: every attempt's
    record, and the best feasible answer no worse than w_prev (w, objective, scipy's result) or None."""
    bounds = list(zip(np.zeros(len(caps)), caps))
    attempts: list[dict] = []
    best = None
    for start_name, start in starts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = optimize.minimize(
                    f,
                    start,
                    jac=jac,
                    method="SLSQP",
                    bounds=bounds,
                    constraints=cons,
                    options={"maxiter": maxiter, "ftol": 1e-10},
                )
            w = np.clip(res.x, 0.0, caps)
            if w.sum() > 0:
                w = w / w.sum()
            ok = bool(np.all(np.isfinite(w))) and feasible(w)
            val = f(w) if ok else float("inf")
            attempts.append(
                {
                    "start": start_name,
                    "success": bool(res.success),
                    "message": str(res.message),
                    "iterations": int(res.nit),
                    "feasible": ok,
                    "objective": val,
                }
            )
            if ok and val <= obj_prev + 1e-9 and (best is None or val < best[1]):
                best = (w, val, res)
        except Exception as e:  # a numerical failure must never stop training: fall back to w_prev
            attempts.append(
                {
                    "start": start_name,
                    "success": False,
                    "message": f"{type(e).__name__}: {e}",
                    "iterations": 0,
                    "feasible": False,
                    "objective": float("inf"),
                }
            )
        if best is not None and start_name == "init":
            break
    return attempts, best


def tikmix_d_solve(
    S: np.ndarray,
    w_prev: np.ndarray,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
    caps: np.ndarray | None = None,
    init: str = "uniform",
    tol: float = 1e-6,
    maxiter: int = 200,
    pareto: bool = True,
    pareto_slack: float = 0.0,
    diagnose: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Minimise Eq. 10 over {Σw = 1, 0 ≤ w ≤ caps, S·w ≥ S·w_prev} with SLSQP (initialised uniform, projected
    onto the caps). Always returns a feasible w: when SLSQP fails, ends infeasible, or ends worse than w_prev,
    the answer is w_prev (feasible by construction), and ``info["status"]`` says why.

    Constraints are checked on the normalised scale P̂ (Eq. 9), with tolerance ``tol``.
    ``pareto=False`` drops the Pareto constraint; ``pareto_slack`` relaxes it to P̂(w) ≥ P̂(w_prev) − slack
    (both our additions; the paper's constraint is pareto=True, slack 0). ``info["pareto_room"]`` is the most
    total normalised influence any Pareto-feasible mixture can gain over w_prev (an LP): 0 means the
    constraint pins w to w_prev, which happens whenever S restricted to the move directions is "diagonal"
    enough, e.g. when every domain is also a target (n ≥ m, each target helped mostly by its own domain).
    ``diagnose`` adds ``info["diagnosis"]`` (:func:`entropy_pull`: how much of the mixture is the entropy term's,
    how much the Pareto constraint holds it); :func:`weak_signal` reads it.
    """
    S = np.atleast_2d(np.asarray(S, dtype=np.float64))
    n, m = S.shape
    w_prev = np.asarray(w_prev, dtype=np.float64)
    if w_prev.shape != (m,):
        raise ValueError(f"w_prev has shape {w_prev.shape}, S has {m} domains")
    if not np.all(np.isfinite(S)):
        raise ValueError("influence matrix has non-finite entries")
    caps = np.ones(m) if caps is None else np.clip(np.asarray(caps, dtype=np.float64), 0.0, 1.0)
    slack = float(pareto_slack)
    info: dict[str, Any] = {
        "caps": caps.tolist(),
        "caps_relaxed": False,
        "w_prev_clipped": False,
        "init": init,
        "pareto": bool(pareto),
        "pareto_slack": slack,
    }
    caps, w_prev = _satisfiable(caps, w_prev, info)
    scale = influence_scale(S)
    Sn = S / scale[:, None]
    f, jac = _objective_and_grad(S, scale, alpha, beta, gamma)
    ref = Sn @ w_prev

    def slacks(w):
        return {
            "sum": float(w.sum() - 1.0),
            "nonneg_min": float(w.min()),
            "caps_min": float((caps - w).min()),
            "pareto_min": float((Sn @ w - ref).min()),  # normalised; >= -pareto_slack when enforced
            "pareto": (S @ w - S @ w_prev).tolist(),  # raw influence units
        }

    def feasible(w):
        sl = slacks(w)
        ok = abs(sl["sum"]) <= tol and sl["nonneg_min"] >= -tol and sl["caps_min"] >= -tol
        return ok and (not pareto or sl["pareto_min"] >= -slack - tol)

    obj_prev = f(w_prev)
    info["objective_prev"] = obj_prev
    if m == 1:
        info.update(status="trivial", message="one domain", iterations=0, objective=obj_prev, slacks=slacks(w_prev))
        return w_prev, info

    if init == "uniform":
        x0 = project_capped_simplex(np.full(m, 1.0 / m), caps)
    elif init == "prev":
        x0 = w_prev.copy()
    else:
        raise ValueError(f"init must be 'uniform' or 'prev', got {init!r}")
    cons = [{"type": "eq", "fun": lambda w: np.array([w.sum() - 1.0]), "jac": lambda w: np.ones((1, m))}]
    if pareto:
        cons.append({"type": "ineq", "fun": lambda w: Sn @ w - ref + slack, "jac": lambda w: Sn})
        info["pareto_room"] = _pareto_room(Sn, w_prev, caps, slack)
    attempts, best = _slsqp(f, jac, (("init", x0), ("w_prev", w_prev)), caps, cons, maxiter, feasible, obj_prev)
    info["attempts"] = attempts
    if best is None:
        info.update(
            status="fallback_prev",
            iterations=sum(a["iterations"] for a in attempts),
            message="SLSQP found no feasible point at least as good as w_prev; keeping w_prev: "
            + "; ".join(f"{a['start']}: {a['message']}" for a in attempts),
            objective=obj_prev,
            slacks=slacks(w_prev),
        )
        if diagnose:
            info["diagnosis"] = entropy_pull(S, w_prev, w_prev, alpha, beta, gamma, caps, tol, maxiter, pareto, slack)
        return w_prev, info
    w, val, res = best
    info.update(status="ok", message=str(res.message), iterations=int(res.nit), objective=val, slacks=slacks(w))
    if diagnose:
        info["diagnosis"] = entropy_pull(S, w, w_prev, alpha, beta, gamma, caps, tol, maxiter, pareto, slack)
    return w, info


# How much of TiKMiX-D's answer is the influence signal's. Eq. 9 normalises every target's influence by its best
# domain's, so the influence terms of Eq. 10 span about one unit per target, while γ·H(w) spans log(m) and pulls
# towards the uniform mixture. With one target (eval=none: the domains' held-out texts combined into one) and
# every domain helping it, the answer is w ∝ exp(β·P̂_d/γ) with P̂_d ∈ [0, 1]: the best domain gets at most e
# times the weight of one of no influence, so the mixture can only drift towards uniform, whatever it cost.
# The criterion compares objective values, not distances to a vertex: the influence terms' own optimum is an LP
# vertex that jumps between near-tied domains, their value does not.
WEAK_SIGNAL_FRACTION = 0.25  # TiKMiXDConfig.warn_fraction's default (its calibration is written there)
NO_GAIN = 1e-6  # influence gain (Eq. 9 units, a target's best domain = 1) below which the terms cannot choose
NO_MOVE = 1e-3  # L1 below which the unconstrained solve does not move either: the Pareto constraint costs nothing


def influence_value(S: np.ndarray, w: np.ndarray, alpha: float = 1.0, beta: float = 1.0) -> float:
    """The influence terms of Eq. 10 as a gain (higher is better): β·ΣP̂ − α·std(P̂), P̂ = (S·w)/scale."""
    S = np.atleast_2d(np.asarray(S, dtype=np.float64))
    Ph = (S @ np.asarray(w, dtype=np.float64)) / influence_scale(S)
    return float(beta * Ph.sum() - alpha * Ph.std())


def entropy_pull(
    S: np.ndarray,
    w: np.ndarray,
    w_prev: np.ndarray,
    alpha: float,
    beta: float,
    gamma: float,
    caps: np.ndarray,
    tol: float = 1e-6,
    maxiter: int = 200,
    pareto: bool = True,
    pareto_slack: float = 0.0,
) -> dict[str, Any]:
    """How much of the solved mixture ``w`` the influence signal chose (three more SLSQP solves of the same
    m-dimensional problem: milliseconds).

    * ``influence_share`` = [I(w) − I(w_H)] / [I(w_I) − I(w_H)], I = :func:`influence_value`: the share of the
      influence gain the mixture realises on the way from w_H, the entropy term's own answer (α = β = 0: the
      uniform mixture under the caps, and the Pareto constraint if on), to w_I, the influence terms' own answer
      (γ = 0), both over the same feasible set as ``w``. 0: the mixture is the entropy term's (also when the
      influence terms cannot tell the feasible mixtures apart: gain ≤ NO_GAIN); 1: the influence terms'.
      nan when γ = 0 (no entropy term to dominate).
    * ``move_share`` (Pareto on) = L1(w, w_prev) / L1(w_free, w_prev), w_free = the same solve without the
      Pareto constraint: how much of the move the objective asks for the constraint allows. nan when w_free
      itself stays within NO_MOVE of w_prev.
    * the distances a user reads: ``l1_from_uniform`` (the uniform mixture under the caps, the max-entropy
      mixture), ``entropy`` and ``entropy_max`` (H of that mixture), ``move_l1``.
    """
    S = np.atleast_2d(np.asarray(S, dtype=np.float64))
    w = np.asarray(w, dtype=np.float64)
    w_prev = np.asarray(w_prev, dtype=np.float64)
    kw = dict(caps=caps, tol=tol, maxiter=maxiter, pareto_slack=pareto_slack, diagnose=False)
    w_uni = project_capped_simplex(np.full(len(w), 1.0 / len(w)), caps)  # max H under the caps alone
    out: dict[str, Any] = {
        "l1_from_uniform": float(np.abs(w - w_uni).sum()),
        "entropy": float(entropy(w)),
        "entropy_max": float(entropy(w_uni)),
        "move_l1": float(np.abs(w - w_prev).sum()),
        "influence_share": float("nan"),
        "move_share": float("nan"),
    }
    if gamma > 0:
        w_h, _ = tikmix_d_solve(S, w_prev, 0.0, 0.0, gamma, pareto=pareto, **kw)
        w_i, _ = tikmix_d_solve(S, w_prev, alpha, beta, 0.0, pareto=pareto, **kw)
        i_h = influence_value(S, w_h, alpha, beta)
        # the best influence value seen on a feasible point (SLSQP's optimum of the non-smooth std may be inexact)
        i_best = max(influence_value(S, x, alpha, beta) for x in (w_i, w, w_prev))
        gain = i_best - i_h
        out.update(
            w_entropy=w_h.tolist(),
            w_influence=w_i.tolist(),
            l1_from_entropy=float(np.abs(w - w_h).sum()),
            influence_gain=float(gain),
            influence_share=float((influence_value(S, w, alpha, beta) - i_h) / gain) if gain > NO_GAIN else 0.0,
        )
    if pareto:
        w_free, _ = tikmix_d_solve(S, w_prev, alpha, beta, gamma, pareto=False, **kw)
        free = float(np.abs(w_free - w_prev).sum())
        out.update(w_free=w_free.tolist(), free_move_l1=free)
        if free > NO_MOVE:
            out["move_share"] = out["move_l1"] / free
    return out


def weak_signal(diagnosis: dict[str, Any] | None, fraction: float = WEAK_SIGNAL_FRACTION) -> str | None:
    """Which warning :func:`entropy_pull`'s numbers call for: ``"pareto"`` when the Pareto constraint allows less
    than ``fraction`` of the move the objective asks for (it, not the entropy, holds the mixture), else
    ``"entropy"`` when the mixture realises less than ``fraction`` of the influence gain on the way from the
    entropy term's answer to the influence terms', else None. ``fraction = 0`` turns both off."""
    if not diagnosis:
        return None
    move, share = diagnosis.get("move_share", float("nan")), diagnosis.get("influence_share", float("nan"))
    if np.isfinite(move) and move < fraction:
        return "pareto"
    if np.isfinite(share) and share < fraction:
        return "entropy"
    return None


def _pareto_room(Sn: np.ndarray, w_prev: np.ndarray, caps: np.ndarray, slack: float) -> float:
    """max Σ_v (Sn·(w − w_prev))_v over the Pareto-feasible capped simplex (an LP); nan if the LP fails."""
    m = Sn.shape[1]
    try:
        res = optimize.linprog(
            -Sn.sum(axis=0),
            A_ub=-Sn,
            b_ub=-(Sn @ w_prev) + slack,
            A_eq=np.ones((1, m)),
            b_eq=[1.0],
            bounds=list(zip(np.zeros(m), caps)),
            method="highs",
        )
        return float(-res.fun - Sn.sum(axis=0) @ w_prev) if res.status == 0 else float("nan")
    except Exception:
        return float("nan")


# --------------------------------------------------------------------------------------------------------
# TiKMiX-M
# --------------------------------------------------------------------------------------------------------
def latin_hypercube_candidates(
    prior: np.ndarray,
    n: int,
    low: float = 0.5,
    high: float = 2.0,
    seed: int | None = None,
    max_draws: int | None = None,
    return_info: bool = False,
) -> np.ndarray | tuple[np.ndarray, dict]:
    """N mixtures around ``prior``: LHS over the box Π_d [low·w_d, high·w_d] (clipped to [0, 1]), each
    point renormalised to the simplex, points that leave their box after renormalising rejected. Draws LHS
    batches of n until n points are accepted or ``max_draws`` points (default 1000·n) were tried; if fewer
    were accepted, warns and returns those (``return_info`` gives the counts)."""
    prior = np.asarray(prior, dtype=np.float64)
    m = prior.size
    if not (0 < low <= 1 <= high):
        raise ValueError(f"need 0 < low <= 1 <= high, got low={low}, high={high}")
    lo = np.clip(low * prior, 0.0, 1.0)
    hi = np.clip(high * prior, 0.0, 1.0)
    rng = np.random.default_rng(seed)
    engine = qmc.LatinHypercube(d=m, rng=rng)
    max_draws = 1000 * n if max_draws is None else max_draws
    acc: list[np.ndarray] = []
    drawn = 0
    while len(acc) < n and drawn < max_draws:
        k = min(n, max_draws - drawn)
        X = lo + engine.random(k) * (hi - lo)
        drawn += k
        s = X.sum(axis=1, keepdims=True)
        X = X[s[:, 0] > 0] / s[s[:, 0] > 0]
        inside = np.all((X >= lo - 1e-12) & (X <= hi + 1e-12), axis=1)
        acc.extend(X[inside])
    out = np.array(acc[:n]).reshape(-1, m)
    info = {"requested": n, "accepted": len(out), "drawn": drawn}
    if len(out) < n:
        warnings.warn(
            f"latin_hypercube_candidates: only {len(out)} of {n} points stayed in their intervals after {drawn} draws",
            RuntimeWarning,
            stacklevel=2,
        )
    return (out, info) if return_info else out


# TiKMiX-M fits ~17 measured candidates: a leaf may hold a point or two, and every point is used in every tree
LGBM_SMALL_DATA: dict[str, Any] = dict(
    min_child_weight=1e-5, min_data_in_bin=1, subsample=1.0, colsample_bytree=1.0, reg_lambda=0.0
)


def fit_regressor(
    X: np.ndarray,
    y: np.ndarray,
    seed: int = 0,
    n_estimators: int = 200,
    learning_rate: float = 0.05,
    num_leaves: int = 15,
    min_child_samples: int = 3,
    n_folds: int = 5,
    S: np.ndarray | None = None,
    objective_kwargs: dict | None = None,
) -> tuple[Any, dict[str, Any]]:
    """LightGBM w → y on small data (deterministic, one thread). Held-out fit by K-fold (K = min(n_folds, n)):
    R² and Spearman ρ of the out-of-fold predictions. With ``S``, also the *linear* prediction
    tikmix_objective(S, w) against the measured y (R², ρ): does the tree earn its cost? The returned model is
    refit on all data."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"X must be [k, m] and y [k]; got {X.shape} and {y.shape}")
    params = dict(
        n_estimators=n_estimators,
        learning_rate=learning_rate,
        num_leaves=num_leaves,
        min_child_samples=min_child_samples,
        **LGBM_SMALL_DATA,
    )

    def make():
        return lgbm_regressor(seed, **params)

    k = len(y)
    info: dict[str, Any] = {"n": k, "params": {**params, "random_state": seed}}
    folds = folds_for(k, n_folds)
    if folds:
        oof = kfold_predictions(lambda tr, te: make().fit(X[tr], y[tr]).predict(X[te]), k, folds, seed)
        info.update(folds=folds, r2_holdout=r2(y, oof), spearman_holdout=spearman(y, oof))
    else:
        info.update(folds=0, r2_holdout=float("nan"), spearman_holdout=float("nan"))
    model = make().fit(X, y)
    info["r2_train"] = r2(y, model.predict(X))
    if S is not None:
        lin = np.asarray(tikmix_objective(S, X, **(objective_kwargs or {})), dtype=np.float64)
        info.update(r2_linear=r2(y, lin), spearman_linear=spearman(y, lin))
    return model, info


# --------------------------------------------------------------------------------------------------------
# TiKMiX-M: regress what has to be measured, add what is known
# --------------------------------------------------------------------------------------------------------
REGRESS = ("second_order", "influence")
REGRESSORS = ("lightgbm", "quadratic")


class InfluenceLaw:
    """P̂(W) [k, n] = W·Sᵀ + r̂(W) (``regress="second_order"``) or r̂(W) alone (``"influence"``), one
    regressor per target for r̂ (LightGBM, the paper's, or a quadratic ridge); the Eq. 10 objective of a
    mixture is then computed analytically from P̂ (std and sum over targets, the entropy of the mixture
    itself), so the regressors learn only what was measured, never the known −γ·H(w)."""

    def __init__(
        self,
        S: np.ndarray,
        scale: np.ndarray,
        regress: str,
        objective_kwargs: dict,
        lgbm: dict,
        seed: int,
        regressor: str = "lightgbm",
    ):
        if regress not in REGRESS:
            raise ValueError(f"regress must be one of {REGRESS}, got {regress!r}")
        if regressor not in REGRESSORS:
            raise ValueError(f"regressor must be one of {REGRESSORS}, got {regressor!r}")
        self.S, self.scale, self.regress, self.regressor = np.atleast_2d(S), np.asarray(scale), regress, regressor
        self.ab, self.lgbm, self.seed = dict(objective_kwargs), dict(lgbm), int(seed)
        self.models: list[Any] = []

    def known(self, W: np.ndarray) -> np.ndarray:
        W = np.atleast_2d(W)
        return W @ self.S.T if self.regress == "second_order" else np.zeros((len(W), self.S.shape[0]))

    def fit(self, X: np.ndarray, P: np.ndarray) -> "InfluenceLaw":
        R = np.asarray(P) - self.known(X)
        if self.regressor == "quadratic":
            self.models = [QuadraticRidge().fit(X, R[:, v]) for v in range(R.shape[1])]
            return self
        params = {**LGBM_SMALL_DATA, **self.lgbm}
        self.models = [lgbm_regressor(self.seed, **params).fit(X, R[:, v]) for v in range(R.shape[1])]
        return self

    def predict_P(self, W: np.ndarray) -> np.ndarray:
        W = np.atleast_2d(W)
        return self.known(W) + np.stack([m.predict(W) for m in self.models], axis=1)

    def predict(self, W: np.ndarray) -> np.ndarray:
        W = np.atleast_2d(W)
        return np.asarray(tikmix_objective_from_p(self.predict_P(W), W, self.scale, **self.ab), dtype=np.float64)


def fit_influence_law(
    X: np.ndarray,
    P: np.ndarray,
    S: np.ndarray,
    *,
    regress: str = "second_order",
    objective_kwargs: dict | None = None,
    lgbm: dict | None = None,
    seed: int = 0,
    n_folds: int = 5,
    regressor: str = "lightgbm",
) -> tuple[InfluenceLaw, dict[str, Any]]:
    """Fit :class:`InfluenceLaw` on measured candidates (X [k, m] realised compositions, P [k, n] their
    measured influence). Held-out fit by K-fold: R², Spearman ρ and RMSE of the out-of-fold *objective*
    against the measured objective, and the same for the linear prediction S·x (no regression at all):
    does the regression earn its cost? The returned law is refit on all points."""
    X, P = np.atleast_2d(np.asarray(X, dtype=np.float64)), np.atleast_2d(np.asarray(P, dtype=np.float64))
    ab = dict(objective_kwargs or {})
    scale = influence_scale(S)
    y = np.asarray(tikmix_objective_from_p(P, X, scale, **ab), dtype=np.float64)
    make = lambda: InfluenceLaw(S, scale, regress, ab, lgbm or {}, seed, regressor)  # noqa: E731
    k = len(y)
    info: dict[str, Any] = {"n": k, "regress": regress, "regressor": regressor, "measured": y.tolist()}
    folds = folds_for(k, n_folds)
    if folds:
        oof = kfold_predictions(lambda tr, te: make().fit(X[tr], P[tr]).predict(X[te]), k, folds, seed)
        info.update(folds=folds, r2_holdout=r2(y, oof), spearman_holdout=spearman(y, oof), rmse_holdout=rmse(y, oof))
    else:
        info.update(folds=0, r2_holdout=float("nan"), spearman_holdout=float("nan"), rmse_holdout=float("nan"))
    lin = np.asarray(tikmix_objective_from_p(X @ np.atleast_2d(S).T, X, scale, **ab), dtype=np.float64)
    info.update(r2_linear=r2(y, lin), spearman_linear=spearman(y, lin), rmse_linear=rmse(y, lin))
    law = make().fit(X, P)
    info["r2_train"] = r2(y, law.predict(X))
    return law, info


def accept_search(fit: dict, pred_m: float, pred_d: float, margin: float) -> tuple[bool, str]:
    """TiKMiX-M keeps its searched mixture only when the regressor, judged by its own held-out fit, predicts
    it better than w_D: held-out R² > 0 and pred(w_D) − pred(w_M) > margin × held-out RMSE."""
    r2, rmse = fit.get("r2_holdout", float("nan")), fit.get("rmse_holdout", float("nan"))
    if not (np.isfinite(r2) and r2 > 0):
        return False, f"held-out R² {r2:.3g} <= 0: the regressor predicts no better than the mean"
    gain = pred_d - pred_m
    if not gain > margin * rmse:
        return False, (f"predicted gain over w_D {gain:.3g} <= accept_margin {margin:g} x held-out RMSE {rmse:.3g}")
    return True, f"predicted gain over w_D {gain:.3g} > {margin:g} x held-out RMSE {rmse:.3g}"


def on_boundary(w: np.ndarray, region: tuple[np.ndarray, np.ndarray], rel_tol: float = 1e-3) -> list[int]:
    """Indices of domains where w sits on a face of the (non-degenerate) trust box."""
    lo, hi = region
    width = hi - lo
    tol = rel_tol * np.maximum(width, 1e-12)
    return [int(i) for i in np.flatnonzero((width > 1e-12) & ((w <= lo + tol) | (w >= hi - tol)))]
