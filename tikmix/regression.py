"""Laws over mixtures and the search for the mixture a law predicts best: shared by RegMix
(:mod:`baselines.regmix`) and TiKMiX-M (:mod:`tikmix.method.solvers`). Pure numpy/scipy, no torch.

* :func:`lgbm_regressor`, :func:`fit_cv_trees`, :func:`fit_early_stopped`, :func:`n_trees` — LightGBM on a few
  dozen mixtures, the same trees on every machine; RegMix's fit, its number of trees chosen by K-fold
  cross-validation over all mixtures (or, as the reference notebook, by early stopping on held-out mixtures).
* :class:`LinearLaw`, :class:`QuadraticRidge` — least-squares laws linear / quadratic in the weights.
* :func:`folds_for`, :func:`fold_indices`, :func:`kfold_predictions`, :func:`r2`, :func:`spearman`, :func:`rmse` —
  how well a law predicts mixtures it was not fitted on (K-fold out-of-fold predictions).
* :func:`top_k_mean`, :func:`dirichlet_search`, :func:`in_region` — the search: the mean of the k mixtures a
  law predicts lowest among many drawn (RegMix's simulation, one round of the paper's Algorithm 1).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable

import numpy as np
from scipy import stats

Predict = Callable[[np.ndarray], np.ndarray]  # W [k, m] -> [k], lower is better


# --------------------------------------------------------------------------------------------------------
# the laws
# --------------------------------------------------------------------------------------------------------
def lgbm_regressor(seed: int, **params: Any) -> Any:
    """An unfitted LGBMRegressor that grows the same trees on every machine (deterministic, one thread,
    silent); ``params`` are the method's own and override these."""
    import lightgbm as lgb  # with scikit-learn ~1 s and ~90 MB at import: paid only by runs that fit a law

    return lgb.LGBMRegressor(
        **{
            "deterministic": True,
            "force_col_wise": True,
            "num_threads": 1,
            "verbose": -1,
            "random_state": int(seed),
            **params,
        }
    )


def stopping_split(n: int, valid_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices for early stopping; no held-out set when either side would have < 2 rows
    (one mixture's loss is too noisy a stopping signal, and one training row cannot be split)."""
    n_va = int(round(float(valid_frac) * n))
    perm = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0xE5])).permutation(n)
    if n_va < 2 or n - n_va < 2:
        return np.sort(perm), np.empty(0, dtype=np.int64)
    return np.sort(perm[n_va:]), np.sort(perm[:n_va])


def _eval_kwargs(model: Any, Xv: np.ndarray, yv: np.ndarray) -> dict[str, Any]:
    """``fit``'s validation-set arguments: eval_X/eval_y on LightGBM >= 4.7, eval_set before (deprecated since)."""
    if "eval_X" in inspect.signature(model.fit).parameters:
        return {"eval_X": Xv, "eval_y": yv}
    return {"eval_set": [(Xv, yv)]}


def fit_early_stopped(
    make: Callable[[int], Any], X: np.ndarray, y: np.ndarray, rounds: int, valid_frac: float, seed: int
) -> Any:
    """LightGBM as RegMix's reference notebook fits it: boosting stops when the held-out l1 or l2 has not
    improved for ``rounds`` rounds, and predictions use the best round; the held-out rows (``valid_frac``)
    only decide when to stop. ``rounds=0`` grows every tree on every row. ``make(n_train)``: the regressor.
    With few rows the stopping signal is a handful of mixtures (16 proxies: 5): :func:`fit_cv_trees` uses all."""
    import lightgbm as lgb

    tr, va = stopping_split(len(y), valid_frac, seed) if rounds > 0 else (np.arange(len(y)), [])
    model = make(len(tr))
    if len(va) == 0:
        return model.fit(X, y)
    return model.fit(
        X[tr],
        y[tr],
        eval_metric="l2",
        callbacks=[lgb.early_stopping(rounds, first_metric_only=False, verbose=False)],
        **_eval_kwargs(model, X[va], y[va]),
    )


def cv_loss_curve(make: Callable[[int], Any], X: np.ndarray, y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Held-out mean squared error after each boosting round [n_estimators], pooled over the K folds of
    :func:`fold_indices` (K = ``folds``): fold f grows every tree of ``make(len(y))`` on the other folds' rows and
    records its l2 on its own rows after each round. Every row is held out exactly once, so round t's value is the
    out-of-fold MSE of t-tree models. A fold whose boosting ended early (no split left) keeps its last value."""
    n = len(y)
    sse: np.ndarray | None = None
    for te in fold_indices(n, folds, seed):
        tr = np.setdiff1d(np.arange(n), te)
        model = make(n)  # the hyperparameters of the final fit on all n rows (min_child_samples may follow n)
        model.fit(X[tr], y[tr], eval_metric="l2", **_eval_kwargs(model, X[te], y[te]))
        curve = np.asarray(next(iter(model.evals_result_.values()))["l2"], dtype=np.float64)
        if sse is None:
            sse = np.zeros(int(model.get_params()["n_estimators"]))
        full = np.full(len(sse), curve[-1] if len(curve) else np.nan)
        full[: len(curve)] = curve[: len(sse)]
        sse += len(te) * full
    assert sse is not None
    return sse / n


def fit_cv_trees(make: Callable[[int], Any], X: np.ndarray, y: np.ndarray, folds: int, seed: int) -> Any:
    """LightGBM with its number of trees chosen by K-fold cross-validation over ALL rows, then refitted on all
    of them: T = the round that minimises the pooled out-of-fold MSE (:func:`cv_loss_curve`; the earliest of
    ties), then ``make(n)`` with ``n_estimators=T`` fitted on every row. K = min(``folds``, n) (:func:`folds_for`);
    below 4 rows (no cross-validation) every tree is grown. Unlike :func:`fit_early_stopped` every row both trains
    the final model and votes on T, and T minimises the whole curve (no patience: a few noisy rounds cannot stop
    it). ``make(n)``: the regressor (its ``n_estimators`` is the most trees considered)."""
    n = len(y)
    K = folds_for(n, folds)
    if not K:
        return make(n).fit(X, y)
    curve = cv_loss_curve(make, X, y, K, seed)
    best = int(np.nanargmin(curve)) + 1 if np.isfinite(curve).any() else len(curve)
    return make(n).set_params(n_estimators=best).fit(X, y)


def n_trees(model: Any) -> int:
    """Trees a fitted LightGBM model predicts with (the best round when it stopped early)."""
    return int(model.best_iteration_ or model.booster_.current_iteration())


class LinearLaw:
    """Least squares y ≈ Σ_d b_d w_d (no separate intercept: Σ w = 1 makes it part of b)."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> "LinearLaw":
        self.coef_ = np.linalg.lstsq(np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64), rcond=None)[0]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=np.float64) @ self.coef_


class QuadraticRidge:
    """y ≈ b + Σ_i a_i w_i + Σ_{i≤j} c_ij w_i w_j by ridge least squares (the second-order term of group
    influence is a quadratic form in the mixture: −(η/2)·Σ_de w_d w_e u_dᵀ∇²L u_e)."""

    def __init__(self, ridge: float = 1e-6):
        self.ridge = ridge

    @staticmethod
    def features(W: np.ndarray) -> np.ndarray:
        W = np.atleast_2d(W)
        i, j = np.triu_indices(W.shape[1])
        return np.hstack([np.ones((len(W), 1)), W, W[:, i] * W[:, j]])

    def fit(self, X: np.ndarray, y: np.ndarray) -> "QuadraticRidge":
        F = self.features(X)
        scale = max(float((F**2).sum() / max(1, F.shape[1])), 1e-12)
        self.coef_ = np.linalg.solve(F.T @ F + self.ridge * scale * np.eye(F.shape[1]), F.T @ y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.features(X) @ self.coef_


# --------------------------------------------------------------------------------------------------------
# held-out fit
# --------------------------------------------------------------------------------------------------------
def folds_for(n: int, folds: int) -> int:
    """K = min(folds, n) folds for ``n`` points, or 0 (no held-out fit) below 2 folds or 4 points."""
    k = min(int(folds), n)
    return k if k >= 2 and n >= 4 else 0


def fold_indices(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """The held-out rows of each of ``folds`` folds: fold f = perm[f::folds] of a permutation seeded by ``seed``."""
    perm = np.random.default_rng(seed).permutation(n)
    return [perm[f::folds] for f in range(folds)]


def kfold_predictions(
    fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray], n: int, folds: int, seed: int
) -> np.ndarray:
    """Out-of-fold predictions [n] over the folds of :func:`fold_indices`; ``fit_predict(train rows, held-out
    rows)`` fits on the former and returns predictions of the latter."""
    oof = np.empty(n)
    for te in fold_indices(n, folds, seed):
        oof[te] = fit_predict(np.setdiff1d(np.arange(n), te), te)
    return oof


def r2(y: np.ndarray, yhat: np.ndarray) -> float:
    ss = float(((y - y.mean()) ** 2).sum())
    return float("nan") if ss == 0 else 1.0 - float(((y - yhat) ** 2).sum()) / ss


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's ρ; nan below 3 points or when either side is constant (no ranking to compare)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def rmse(y: np.ndarray, yhat: np.ndarray) -> float:
    return float(np.sqrt(np.mean((yhat - y) ** 2)))


# --------------------------------------------------------------------------------------------------------
# search
# --------------------------------------------------------------------------------------------------------
def top_k_mean(predict: Predict, draws: Iterable[np.ndarray], k: int) -> tuple[np.ndarray | None, np.ndarray, int]:
    """The mean of the ``k`` rows of ``draws`` (mixtures [rows, m], streamed in chunks) that ``predict`` scores
    lowest, renormalised onto the simplex (None when nothing was drawn); their predictions, best first; the
    rows scored. Of equal predictions the earlier row is kept."""
    best_w, best_y, seen = None, np.empty(0), 0
    for W in draws:
        y = np.asarray(predict(W), dtype=np.float64)
        seen += len(W)
        all_w = W if best_w is None else np.concatenate([best_w, W])
        all_y = np.concatenate([best_y, y])
        keep = np.argsort(all_y, kind="stable")[: int(k)]
        best_w, best_y = all_w[keep], all_y[keep]
    if best_w is None or len(best_w) == 0:
        return None, best_y, seen
    w = best_w.mean(axis=0)
    return w / w.sum(), best_y, seen


def in_region(X: np.ndarray, region: tuple[np.ndarray, np.ndarray] | None, tol: float = 1e-9) -> np.ndarray:
    """Rows of X inside the per-domain box region = (lo, hi) (all True without a region)."""
    X = np.atleast_2d(X)
    if region is None:
        return np.ones(len(X), dtype=bool)
    lo, hi = region
    return np.all((X >= lo - tol) & (X <= hi + tol), axis=1)


def dirichlet_search(
    predict: Predict,
    w_init: np.ndarray,
    T: int = 5,
    conc_start: float = 10.0,
    conc_end: float = 1000.0,
    n_samples: int = 10000,
    top_k: int = 10,
    seed: int | None = None,
    floor: float = 1e-4,
    project: Callable[[np.ndarray], np.ndarray] | None = None,
    region: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, list[dict]]:
    """TiKMiX's Algorithm 1. ``predict(W[k, m]) -> [k]`` returns the predicted objective, LOWER IS BETTER.

    For t = 1..T with concentration c_t log-spaced from ``conc_start`` (broad) to ``conc_end`` (narrow):
    sample ``n_samples`` points ~ Dir(c_t · max(w_best, floor)) (the floor keeps zero weights samplable),
    optionally map them through ``project`` (e.g. onto the caps), keep those inside ``region`` (the box
    the regressor was fitted on: outside it a tree predicts a constant, so a search there follows no
    data), score them, w_best = mean of the ``top_k`` lowest. A round with no sample in the region keeps
    w_best. ``w_init`` should lie in the region (the mean of points in a box stays in the box).
    Returns (w_best, trace of one dict per round)."""
    rng = np.random.default_rng(seed)
    w = np.asarray(w_init, dtype=np.float64)
    w = w / w.sum()
    trace = [{"round": 0, "concentration": None, "pred_w_best": float(np.asarray(predict(w[None]))[0])}]
    # domains the region holds at 0 are not sampled at all (a floor would put every sample outside it)
    active = np.ones(len(w), dtype=bool) if region is None else np.asarray(region[1]) > 0
    for t, c in enumerate(np.geomspace(conc_start, conc_end, T), start=1):
        X = np.zeros((n_samples, len(w)))
        X[:, active] = rng.dirichlet(c * np.maximum(w[active], floor), size=n_samples)
        X = X[np.all(np.isfinite(X), axis=1)]
        if project is not None:
            X = project(X)
        X = X[in_region(X, region)]
        rec: dict[str, Any] = {"round": t, "concentration": float(c), "n_in_region": int(len(X))}
        if len(X):
            w, y_top, _ = top_k_mean(predict, [X], top_k)
            rec.update(pred_top_k_mean=float(y_top.mean()), pred_best_sample=float(y_top[0]))
        rec["pred_w_best"] = float(np.asarray(predict(w[None]))[0])
        trace.append(rec)
    return w, trace
