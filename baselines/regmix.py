"""RegMix (Liu et al., ICLR 2025, arXiv 2407.01492): the mixture as a regression over many small proxy runs.

methods.md, "RegMix". The steps, each a pure function here so tests can check them without training:

1. :func:`generate_candidates` — candidate mixtures as the published ``synthesize_mixture.py`` makes them:
   prior p = token shares; per draw a strength s from 15 log-spaced values in [0.1, 5], w ~ Dir(s·p^0.5
   renormalised); reject w_d > min(15·p_d, 1) (the bound uses the *raw* prior, as published); zero weights
   below ``minimum``, renormalise, round to multiples of it; deduplicate; draw 100x the needed number and keep
   a random subset of the distinct ones. (We renormalise once more after rounding so every candidate is
   exactly on the simplex; the published trainer renormalised when it read the file.) ``minimum: auto`` =
   max(2e-4, one sequence's share of a proxy's tokens): the published 2e-4 meant >= 100 sequences of a
   1B-token proxy, and its comment says to raise it for smaller proxies (:func:`auto_minimum`).
2. One small proxy per candidate, trained from scratch through the suite's own trainer as a sub-run
   (``ctx.run_subrun``: cached by config fingerprint, compute charged to this mixer as
   ``mixer/regmix_proxies``). The regression target is the proxy's final target loss (``target``: the mean
   over the config's ``targets`` sets, or one named set). A proxy runs with ``trainer.final_eval: targets``:
   after training it computes, and is charged for, its target loss only (the reference read one validation
   loss from each proxy's log), not the per-domain validation/test perplexity nor a downstream evaluation.
3. :func:`fit_mixing_law` — LightGBM as the reference notebook fits it (gbdt, objective regression, up to
   1000 iterations, learning rate 0.01, metrics l1 and l2, early stopping after 3 rounds without improvement
   on held-out mixtures: here a third of the proxies, which then take no part in that model's training) and
   a linear model from the m weights to the target loss; held-out Spearman ρ of each from K-fold
   out-of-fold predictions.
4. :func:`choose_mixture` — simulate many mixtures, predict, average the top-k → the static mixture of the
   main run. ``search_distribution: prior`` (default) draws them as the notebook does, w ~ Dir(1·p): no
   temperature, strengths or caps; ``generator`` draws them with the candidate procedure (temperature,
   strength grid, caps kept; no rounding/dedup), this suite's earlier choice.

Proxies run in-process one after another (``workers: 1``), in parallel local processes (``workers: N``),
or anywhere as a Hydra multirun (``python train.py -m +sweep=regmix_proxies`` runs the
``regmix_candidate`` mixer below once per candidate index; then ``python train.py mixer=regmix
mixer.proxies=<sweep dir>`` fits on the finished runs and reports how many did not finish).
"""
from __future__ import annotations

import glob
import inspect
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from tikmix.errors import ConfigError, DataError, TikmixError
from tikmix.mixer import Mixer, MixerContext, register
from tikmix.model import llama_config
from tikmix.runlog import to_builtin as _jsonable

# --------------------------------------------------------------------------------------------------------
# config: key -> default (documented in conf/mixer/regmix.yaml)
# --------------------------------------------------------------------------------------------------------
GEN_KEYS: dict[str, Any] = {
    "n_candidates": "auto",
    "candidate_seed": None,
    "temperature": 0.5,
    "strength_min": 0.1,
    "strength_max": 5.0,
    "n_strengths": 15,
    "max_usage": 15.0,
    "minimum": "auto",
    "sample_multiplier": 100,
}
PROXY_MODEL: dict[str, Any] = {  # the paper's "1M" proxy (TinyLlama-style: 2 layers, d 256, 8 heads, FFN 512)
    "name": "regmix-1m",
    "hidden_size": 256,
    "num_layers": 2,
    "num_heads": 8,
    "num_kv_heads": 8,
    "intermediate_size": 512,
    "max_position_embeddings": 2048,
    "vocab_size": None,
    "tie_embeddings": False,
    "rope_theta": 10000.0,
    "init_std": 0.02,
}
PROXY_BUDGET: dict[str, Any] = {
    "total_tokens": None,
    "tokens_frac": 0.1,
    "min_steps": 10,
    "warmup_frac": 0.1,
    "batch_size": None,
    "micro_batch": None,
    "seq_len": None,
}
PROXY_TRAINER: dict[str, Any] = {
    "lr": None,
    "schedule": "constant",
    "betas": [0.9, 0.95],
    "weight_decay": 0.1,
    "grad_clip": 1.0,
    "eval_every": 0,
}
LGBM: dict[str, Any] = {
    "n_estimators": 1000,
    "learning_rate": 0.01,
    "num_leaves": 31,
    "min_child_samples": None,
    "min_data_in_bin": 3,
    "early_stopping_rounds": 3,
    "valid_frac": 0.33,
}
KEYS: dict[str, Any] = {
    "name": "regmix",
    **GEN_KEYS,
    "proxy_model": PROXY_MODEL,
    "proxy_budget": PROXY_BUDGET,
    "proxy_trainer": PROXY_TRAINER,
    "proxy_seed": None,
    "workers": 1,
    "proxies": None,
    "min_proxies": 4,
    "target": "mean",
    "regressor": "lightgbm",
    "lgbm": LGBM,
    "cv_folds": 5,
    "search_distribution": "prior",
    "search_strength": 1.0,
    "n_simulate": 100_000,
    "top_k": 100,
    "fit_seed": None,
}
CANDIDATE_KEYS: dict[str, Any] = {"name": "regmix_candidate", "index": 0, **GEN_KEYS, "n_candidates": 16}


def _merge_keys(raw: Mapping[str, Any], keys: dict[str, Any], prefix: str = "mixer") -> dict[str, Any]:
    """Config with defaults filled in; unknown keys are refused (nested dicts one level deep)."""
    raw = dict(raw.items()) if raw is not None else {}
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}", f"unknown key for mixer {keys.get('name', '?')!r}; known keys: {', '.join(sorted(keys))}")
    out: dict[str, Any] = {}
    for k, d in keys.items():
        v = raw.get(k, d)
        if isinstance(d, dict) and k != "name":
            if v is None:
                v = {}
            if not hasattr(v, "items"):
                raise ConfigError(f"{prefix}.{k}", f"expected a mapping, got {v!r}")
            sub = dict(v.items())
            bad = sorted(set(sub) - set(d))
            if bad:
                raise ConfigError(f"{prefix}.{k}.{bad[0]}", f"unknown key; known keys: {', '.join(sorted(d))}")
            v = {kk: _jsonable(sub.get(kk, dd)) for kk, dd in d.items()}
        out[k] = _jsonable(v)
    return out


def _need(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"mixer.{key}", msg)


def _check_gen(c: Mapping[str, Any]) -> None:
    nc = c["n_candidates"]
    _need(nc == "auto" or (isinstance(nc, int) and nc >= 1), "n_candidates", f"'auto' or a positive integer, got {nc!r}")
    _need(0 < float(c["temperature"]) <= 1, "temperature", "must be in (0, 1] (1 = no smoothing of the prior)")
    _need(0 < float(c["strength_min"]) <= float(c["strength_max"]), "strength_min", "need 0 < strength_min <= strength_max")
    _need(int(c["n_strengths"]) >= 1, "n_strengths", "must be a positive integer")
    _need(float(c["max_usage"]) > 0, "max_usage", "must be > 0 (cap: w_d <= min(max_usage * p_d, 1))")
    mn = c["minimum"]
    _need(mn == "auto" or (isinstance(mn, (int, float)) and not isinstance(mn, bool) and 0 <= mn < 1), "minimum",
          f"'auto' or a number in [0, 1), got {mn!r}")
    _need(int(c["sample_multiplier"]) >= 1, "sample_multiplier", "must be a positive integer")


def auto_n_candidates(main_tokens: float) -> int:
    """``n_candidates: auto``: 512 proxies (the paper's) for paper-scale runs, fewer where a CPU demands it.
    Main-run tokens < 1e5 (the smoke preset): 6; < 1e8 (demo, CPU): 16; < 1e9: 64; otherwise 512."""
    if main_tokens < 1e5:
        return 6
    if main_tokens < 1e8:
        return 16
    if main_tokens < 1e9:
        return 64
    return 512


def auto_minimum(proxy_tokens: int, seq_len: int) -> float:
    """``minimum: auto``. The published 2e-4 is 100 sequences of a 1B-token proxy (its comment: raise it for
    smaller proxies); a CPU-scale proxy sees a few hundred sequences, so a weight of 2e-4 stands for data it
    never sees. Here a non-zero weight must stand for at least one expected sequence: max(2e-4, seq_len /
    proxy_tokens). (100 sequences would exceed the whole proxy below ~100·m sequences.)"""
    return max(2e-4, float(seq_len) / float(proxy_tokens))


def resolve_minimum(minimum: Any, proxy_tokens: int, seq_len: int) -> float:
    if minimum != "auto":
        return float(minimum)
    mn = auto_minimum(proxy_tokens, seq_len)
    _need(mn <= 0.5, "minimum", f"auto gives {mn:.3g} (one sequence of a proxy that sees only {proxy_tokens // seq_len} "
                                 "sequences): give the proxies more tokens, or a number")
    return mn


# --------------------------------------------------------------------------------------------------------
# 1. candidates
# --------------------------------------------------------------------------------------------------------
def strength_grid(low: float = 0.1, high: float = 5.0, n: int = 15) -> np.ndarray:
    """The published Dirichlet strengths: ``n`` log-spaced values in [low, high]."""
    if n == 1 or low == high:
        return np.array([float(low)])
    return np.logspace(np.log10(low), np.log10(high), int(n))


def _prior(prior: Sequence[float]) -> np.ndarray:
    p = np.asarray(prior, dtype=np.float64)
    if p.ndim != 1 or len(p) < 1 or np.any(~np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError(f"prior must be a non-negative vector with positive sum, got {p}")
    return p / p.sum()


def sample_dirichlet_mixtures(
    prior: Sequence[float],
    n: int,
    rng: np.random.Generator,
    temperature: float = 0.5,
    strength_min: float = 0.1,
    strength_max: float = 5.0,
    n_strengths: int = 15,
    max_usage: float = 15.0,
) -> np.ndarray:
    """``n`` draws (before rejection) of the published procedure: a random strength s from the grid, then
    w ~ Dir(s · p^temperature / Σ); rows with some w_d > min(max_usage·p_d, 1) are rejected (dropped)."""
    p = _prior(prior)
    base = p ** float(temperature)
    base = base / base.sum()
    bound = np.minimum(p * float(max_usage), 1.0)
    grid = strength_grid(strength_min, strength_max, n_strengths)
    which = rng.integers(0, len(grid), size=int(n))
    out = np.empty((int(n), len(p)))
    pos = base > 0
    for i, s in enumerate(grid):
        rows = np.flatnonzero(which == i)
        if len(rows):
            w = np.zeros((len(rows), len(p)))
            w[:, pos] = rng.dirichlet(s * base[pos], size=len(rows))
            out[rows] = w
    ok = np.all(out <= bound + 1e-12, axis=1) & np.all(np.isfinite(out), axis=1) & (out.sum(axis=1) > 0)
    return out[ok]


def generate_candidates(
    prior: Sequence[float],
    n: int,
    seed: int,
    temperature: float = 0.5,
    strength_min: float = 0.1,
    strength_max: float = 5.0,
    n_strengths: int = 15,
    max_usage: float = 15.0,
    minimum: float = 2e-4,
    sample_multiplier: int = 100,
) -> np.ndarray:
    """RegMix's candidate mixtures [k, m], k ≤ n (fewer only when fewer distinct ones exist). Deterministic in
    ``seed``. Every row: on the simplex, w_d ≤ min(max_usage·p_d, 1) (up to the rounding grid), every non-zero
    w_d ≥ ``minimum`` and a multiple of it before the final renormalisation, rows pairwise distinct."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x5E6]))
    W = sample_dirichlet_mixtures(prior, int(n) * int(sample_multiplier), rng, temperature, strength_min,
                                  strength_max, n_strengths, max_usage)
    if len(W) == 0:
        raise ConfigError("mixer.max_usage", "every candidate mixture broke the cap w_d <= min(max_usage * p_d, 1); raise max_usage")
    if minimum > 0:
        W = np.where(W < minimum, 0.0, W)
        W = W / W.sum(axis=1, keepdims=True)
        grid = np.round(W / minimum).astype(np.int64)  # round to multiples of `minimum` (as published)
        grid = grid[grid.sum(axis=1) > 0]
        uniq = np.unique(grid, axis=0)  # exact dedup on the grid (the published L1 < 1e-5 test, made exact)
        W = uniq.astype(np.float64) * minimum
    else:
        W = np.unique(W, axis=0)
    W = W / W.sum(axis=1, keepdims=True)
    if len(W) > n:
        pick = np.sort(rng.choice(len(W), size=int(n), replace=False))
        W = W[pick]
    # a stable, seed-determined order (np.unique sorted the rows lexicographically)
    W = W[rng.permutation(len(W))]
    return W


# --------------------------------------------------------------------------------------------------------
# 3. regression
# --------------------------------------------------------------------------------------------------------
def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


class LinearLaw:
    """Least squares y ≈ Σ_d b_d w_d (no separate intercept: Σ w = 1 makes it part of b)."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> "LinearLaw":
        self.coef_ = np.linalg.lstsq(np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64), rcond=None)[0]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=np.float64) @ self.coef_


def _lgbm(params: Mapping[str, Any], n: int, seed: int):
    import lightgbm as lgb

    mcs = params.get("min_child_samples")
    if mcs is None:  # LightGBM's default 20, lowered for few proxies so the trees can split at all
        mcs = int(min(20, max(2, n // 5)))
    return lgb.LGBMRegressor(
        boosting_type="gbdt", objective="regression", metric=["l1", "l2"], n_estimators=int(params["n_estimators"]),
        learning_rate=float(params["learning_rate"]), num_leaves=int(params["num_leaves"]), min_child_samples=int(mcs),
        min_data_in_bin=int(params["min_data_in_bin"]), deterministic=True, force_col_wise=True, num_threads=1,
        verbose=-1, random_state=int(seed),
    )


def stopping_split(n: int, valid_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices for early stopping; no held-out set when either side would have < 2 rows
    (one mixture's loss is too noisy a stopping signal, and one training row cannot be split)."""
    n_va = int(round(float(valid_frac) * n))
    perm = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0xE5])).permutation(n)
    if n_va < 2 or n - n_va < 2:
        return np.sort(perm), np.empty(0, dtype=np.int64)
    return np.sort(perm[n_va:]), np.sort(perm[:n_va])


def fit_lgbm(params: Mapping[str, Any], X: np.ndarray, y: np.ndarray, seed: int):
    """LightGBM as the reference notebook fits it: boosting stops when the held-out l1 or l2 has not improved
    for ``early_stopping_rounds`` rounds, and predictions use the best round. The held-out mixtures only
    decide when to stop. ``early_stopping_rounds: 0`` grows all ``n_estimators`` trees on every row."""
    import lightgbm as lgb

    rounds = int(params["early_stopping_rounds"])
    tr, va = stopping_split(len(y), float(params["valid_frac"]), seed) if rounds > 0 else (np.arange(len(y)), [])
    model = _lgbm(params, len(tr), seed)
    if len(va) == 0:
        return model.fit(X, y)
    held_out = {"eval_X": X[va], "eval_y": y[va]}  # LightGBM >= 4.7; eval_set before (deprecated since)
    if "eval_X" not in inspect.signature(model.fit).parameters:
        held_out = {"eval_set": [(X[va], y[va])]}
    return model.fit(X[tr], y[tr], eval_metric="l2", callbacks=[lgb.early_stopping(rounds, first_metric_only=False, verbose=False)],
                     **held_out)


def n_trees(model: Any) -> int:
    """Trees a fitted LightGBM model predicts with (the best round when it stopped early)."""
    return int(model.best_iteration_ or model.booster_.current_iteration())


def fit_mixing_law(
    X: np.ndarray, y: np.ndarray, seed: int = 0, lgbm: Mapping[str, Any] | None = None, folds: int = 5
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit LightGBM (:func:`fit_lgbm`) and the linear model w → y. Returns ({"lightgbm": model, "linear":
    model}, info) where info holds the held-out Spearman ρ of each (K-fold out-of-fold predictions, K =
    min(folds, n); each fold's LightGBM stops early on a split of that fold's training rows), their held-out
    RMSE, n, and the trees LightGBM used. The returned models are fitted on all the data."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"X must be [k, m] and y [k]; got {X.shape} and {y.shape}")
    n = len(y)
    lgbm = dict(LGBM, **(lgbm or {}))
    fitters: dict[str, Callable[[np.ndarray, np.ndarray], Any]] = {
        "lightgbm": lambda Xs, ys: fit_lgbm(lgbm, Xs, ys, seed), "linear": lambda Xs, ys: LinearLaw().fit(Xs, ys)}
    info: dict[str, Any] = {"n": n}
    K = min(int(folds), n)
    if K >= 2 and n >= 4:
        perm = np.random.default_rng(seed).permutation(n)
        fold_trees = []
        for name, fit in fitters.items():
            oof = np.empty(n)
            for f in range(K):
                te = perm[f::K]
                tr = np.setdiff1d(perm, te)
                model = fit(X[tr], y[tr])
                oof[te] = model.predict(X[te])
                if name == "lightgbm":
                    fold_trees.append(n_trees(model))
            info[f"spearman_{name}"] = spearman(y, oof)
            info[f"rmse_{name}"] = float(np.sqrt(np.mean((oof - y) ** 2)))
        info["cv_folds"] = K
        info["lgbm_trees_folds"] = fold_trees
    models = {name: fit(X, y) for name, fit in fitters.items()}
    info["lgbm_trees"] = n_trees(models["lightgbm"])
    held_out = stopping_split(n, lgbm["valid_frac"], seed)[1] if int(lgbm["early_stopping_rounds"]) > 0 else []
    info["lgbm_stopping_rows"] = len(held_out)  # 0: too few proxies to hold any out, all trees grown
    info["linear_coef"] = models["linear"].coef_.tolist()
    return models, info


# --------------------------------------------------------------------------------------------------------
# 4. search
# --------------------------------------------------------------------------------------------------------
SEARCH_DISTRIBUTIONS = ("prior", "generator")


def sample_prior_mixtures(prior: Sequence[float], n: int, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """The reference notebook's search draws: w ~ Dir(strength · p) (its strength is 1: Dir(p)); no
    temperature, strength grid, caps or rounding. Domains with p_d = 0 stay at 0."""
    p = _prior(prior)
    out = np.zeros((int(n), len(p)))
    pos = p > 0
    out[:, pos] = rng.dirichlet(float(strength) * p[pos], size=int(n))
    return out[np.all(np.isfinite(out), axis=1) & (out.sum(axis=1) > 0)]


def choose_mixture(
    model: Any,
    prior: Sequence[float],
    n_simulate: int = 100_000,
    top_k: int = 100,
    seed: int = 0,
    chunk: int = 100_000,
    distribution: str = "prior",
    strength: float = 1.0,
    **gen: Any,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Simulate ``n_simulate`` mixtures, predict their loss, return the mean of the ``top_k`` lowest-predicted
    and a summary. ``distribution``: prior = Dir(strength · p) as the reference notebook; generator = the
    candidate procedure with the ``gen`` keys (caps kept; no rounding or dedup)."""
    if distribution not in SEARCH_DISTRIBUTIONS:
        raise ConfigError("mixer.search_distribution", f"{' | '.join(SEARCH_DISTRIBUTIONS)}, got {distribution!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x51A]))
    gen = {k: v for k, v in gen.items() if k in ("temperature", "strength_min", "strength_max", "n_strengths", "max_usage")}
    if distribution == "prior":
        def draw(k: int) -> np.ndarray:
            return sample_prior_mixtures(prior, k, rng, strength)
    else:
        def draw(k: int) -> np.ndarray:
            return sample_dirichlet_mixtures(prior, k, rng, **gen)
    best_w = np.empty((0, len(_prior(prior))))
    best_y = np.empty(0)
    left, drawn = int(n_simulate), 0
    tries = 0
    while left > 0 and tries < 50:
        tries += 1
        W = draw(min(chunk, left))
        if len(W) == 0:
            continue
        yp = np.asarray(model.predict(W), dtype=np.float64)
        drawn += len(W)
        left -= len(W)
        allw = np.concatenate([best_w, W])
        ally = np.concatenate([best_y, yp])
        keep = np.argsort(ally, kind="stable")[: int(top_k)]
        best_w, best_y = allw[keep], ally[keep]
    if len(best_w) == 0:
        raise ConfigError("mixer.max_usage", "no simulated mixture respected the caps; raise max_usage")
    w = best_w.mean(axis=0)
    w = w / w.sum()
    return w, {"distribution": distribution, "n_simulated": drawn, "top_k": len(best_w), "pred_top_k_mean": float(best_y.mean()),
               "pred_best": float(best_y[0]), "pred_chosen": float(np.asarray(model.predict(w[None]))[0])}


# --------------------------------------------------------------------------------------------------------
# proxies from a finished sweep
# --------------------------------------------------------------------------------------------------------
def proxy_flops(compute: Mapping[str, Any] | None) -> np.ndarray:
    """[train, targets, other] FLOPs of one proxy; this search is charged their sum. ``targets`` is its
    target-loss pass; ``other`` is 0 for a proxy as configured here (trainer.final_eval: targets, no
    validation during training). It is validation asked for with eval_every > 0, or the whole evaluation of a
    proxy written before trainer.final_eval existed (its target pass is inside ``eval``, not separable)."""
    c = compute or {}
    train, targets = float(c.get("train", 0.0)), float(c.get("targets", 0.0))
    return np.array([train, targets, float(c.get("total", train + targets)) - train - targets])


def _flops_info(f: np.ndarray) -> dict[str, float]:
    return {"flops": float(f.sum()), "flops_train": float(f[0]), "flops_targets": float(f[1]), "flops_other": float(f[2])}


def load_proxy_runs(paths: str | Sequence[str], domains: Sequence[str], target: str = "mean") -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(X [k, m] weights, y [k] target losses, info) from the finished runs under ``paths`` (a sweep dir, a
    glob, or a list of them). A run is a directory; it is finished when it holds ``results.json``. Each
    immediate sub-directory of a sweep dir is one job: those without ``results.json`` (crashed, killed or
    still running) are counted and named in ``info`` and left out of the fit."""
    if isinstance(paths, str):
        paths = [paths]
    roots: list[Path] = []
    for p in paths:
        hits = sorted(glob.glob(os.path.expanduser(str(p))))
        if not hits:
            raise ConfigError("mixer.proxies", f"no such directory: {p}")
        roots += [Path(h) for h in hits]
    jobs: list[Path] = []
    for r in roots:
        if not r.is_dir():
            raise ConfigError("mixer.proxies", f"not a directory: {r}")
        if (r / "results.json").exists():
            jobs.append(r)
        else:
            jobs += sorted(d for d in r.iterdir() if d.is_dir() and not d.name.startswith("."))
    X, y, finished, unfinished, skipped, flops, full_eval = [], [], [], [], [], np.zeros(3), 0
    fps: set[tuple] = set()
    for j in jobs:
        rp = j / "results.json"
        if not rp.exists():
            err = None
            if (j / "error.json").exists():  # a sweep job that failed says why (tikmix.run.main)
                try:
                    err = json.loads((j / "error.json").read_text()).get("error")
                except (OSError, ValueError):
                    err = "unreadable error.json"
            unfinished.append({"dir": str(j), "error": err or "no results.json (crashed, killed or still running)"})
            continue
        try:
            res = json.loads(rp.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read proxy results {rp}: {e}") from None
        fw = res.get("final_weights") or {}
        if set(fw) != set(domains):
            raise DataError(f"proxy run {j} was trained on domains {sorted(fw)}, this run has {sorted(domains)}")
        val = res.get("target_loss_mean") if target == "mean" else (res.get("target_loss") or {}).get(target)
        if val is None or not math.isfinite(float(val)):
            skipped.append(str(j))
            continue
        X.append([float(fw[d]) for d in domains])
        y.append(float(val))
        finished.append(str(j))
        flops += proxy_flops(res.get("compute"))
        full_eval += "targets" not in (res.get("compute") or {})  # written before trainer.final_eval: full evaluation
        fps.add((res.get("model"), res.get("budget"), res.get("steps")))
    info = {"source": [str(r) for r in roots], "n_jobs": len(jobs), "n_finished": len(finished),
            "n_unfinished": len(unfinished), "unfinished": unfinished, "n_no_target": len(skipped),
            "no_target": skipped, **_flops_info(flops), "n_full_eval": full_eval, "proxy_setups": sorted([list(map(str, f)) for f in fps])}
    return np.asarray(X, dtype=np.float64).reshape(-1, len(domains)), np.asarray(y, dtype=np.float64), info


# --------------------------------------------------------------------------------------------------------
# parallel local proxies
# --------------------------------------------------------------------------------------------------------
def _proxy_worker(parent: dict, overrides: dict, name: str, threads: int) -> tuple[bool, str, bool]:
    """Train one proxy in a worker process (fills the sub-run cache; the parent collects and charges it)."""
    import torch
    from omegaconf import OmegaConf

    from tikmix.ledger import Ledger
    from tikmix.run import make_subrun

    torch.set_num_threads(max(1, int(threads)))
    try:
        res = make_subrun(OmegaConf.create(parent), Ledger())(overrides, name, "regmix_proxies")
        return True, "", bool(res.get("reused"))
    except TikmixError as e:
        return False, str(e), False


def _stop_workers(ex) -> None:
    """Cancel the proxies not started and SIGTERM the workers: each checkpoints the proxy it trains (a later
    run resumes it) and exits. The executor has no public way to stop a running worker: hence its ``_processes``."""
    procs = list((getattr(ex, "_processes", None) or {}).values())
    ex.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=60)


# --------------------------------------------------------------------------------------------------------
# the mixers
# --------------------------------------------------------------------------------------------------------
def _gen_kwargs(c: Mapping[str, Any], proxy_tokens: int, seq_len: int) -> dict[str, Any]:
    """The generator's keys, ``minimum: auto`` resolved for proxies of ``proxy_tokens`` in ``seq_len`` windows."""
    out = {k: c[k] for k in ("temperature", "strength_min", "strength_max", "n_strengths", "max_usage", "sample_multiplier")}
    out["minimum"] = resolve_minimum(c["minimum"], int(proxy_tokens), int(seq_len))
    return out


def _is_num(v: Any, integer: bool = False) -> bool:
    return not isinstance(v, bool) and isinstance(v, int if integer else (int, float)) and math.isfinite(v)


def _check_fit(c: Mapping[str, Any]) -> None:
    lg, ss = c["lgbm"], c["search_strength"]
    _need(c["search_distribution"] in SEARCH_DISTRIBUTIONS, "search_distribution",
          f"{' | '.join(SEARCH_DISTRIBUTIONS)}, got {c['search_distribution']!r}")
    _need(_is_num(ss) and ss > 0, "search_strength", f"a number > 0 (search draws w ~ Dir(search_strength * prior)), got {ss!r}")
    es, vf, mdb = lg["early_stopping_rounds"], lg["valid_frac"], lg["min_data_in_bin"]
    _need(_is_num(es, integer=True) and es >= 0, "lgbm.early_stopping_rounds", f"an integer >= 0 (0 = grow all n_estimators trees), got {es!r}")
    _need(_is_num(vf) and 0 < vf < 1, "lgbm.valid_frac", f"a number in (0, 1): the share of proxies held out for early stopping, got {vf!r}")
    _need(_is_num(mdb, integer=True) and mdb >= 1, "lgbm.min_data_in_bin", f"an integer >= 1, got {mdb!r}")


def _prior_from_ctx(ctx: MixerContext, domains: Sequence[str]) -> np.ndarray:
    t = np.array([float(ctx.train_tokens.get(d, 0)) for d in domains])
    if t.sum() <= 0:
        raise DataError("RegMix's prior is the domains' token shares, and every domain has 0 training tokens")
    return t / t.sum()


def _n_candidates(c: Mapping[str, Any], ctx: MixerContext) -> int:
    nc = c["n_candidates"]
    return auto_n_candidates(ctx.total_steps * ctx.tokens_per_step) if nc == "auto" else int(nc)


@register("regmix")
class RegMix(Mixer):
    """Static mixture chosen by RegMix in ``prepare()``; the main run trains on it from step 0."""

    def __init__(self, cfg: Mapping[str, Any], domains: list[str], ctx: MixerContext):
        self.c = _merge_keys(cfg, KEYS)
        c = self.c
        _check_gen(c)
        _need(c["target"] == "mean" or isinstance(c["target"], str), "target", "'mean' or the name of a target set (e.g. val/arith)")
        _need(c["regressor"] in ("lightgbm", "linear"), "regressor", f"lightgbm | linear, got {c['regressor']!r}")
        _need(int(c["top_k"]) >= 1 and int(c["n_simulate"]) >= int(c["top_k"]), "top_k", "need 1 <= top_k <= n_simulate")
        _need(int(c["min_proxies"]) >= 2, "min_proxies", "need at least 2 finished proxies to fit anything")
        _need(int(c["workers"]) >= 1, "workers", "must be a positive integer")
        _need(int(c["cv_folds"]) >= 2, "cv_folds", "must be >= 2")
        _check_fit(c)
        pb = c["proxy_budget"]
        _need(pb["total_tokens"] is None or int(pb["total_tokens"]) > 0, "proxy_budget.total_tokens", "null (use tokens_frac) or a positive integer")
        _need(0 < float(pb["tokens_frac"]), "proxy_budget.tokens_frac", "must be > 0")
        _need(0 <= float(pb["warmup_frac"]) < 1, "proxy_budget.warmup_frac", "must be in [0, 1)")
        try:  # the proxy's shape, checked now: before the run dir is written and before any proxy trains
            llama_config(dict(c["proxy_model"]), vocab_size=2)
        except ConfigError as e:
            raise ConfigError(f"mixer.proxy_{e.field}", e.detail) from e
        self.prior = _prior_from_ctx(ctx, domains)
        super().__init__(cfg, domains, ctx)
        self.gen_kwargs()  # minimum: auto, checked now

    def initial_weights(self) -> np.ndarray:
        return self.prior  # replaced by prepare(); a resumed run restores the chosen mixture from its checkpoint

    def gen_kwargs(self) -> dict[str, Any]:
        bs, sl = self._proxy_shape()
        return _gen_kwargs(self.c, self.proxy_steps() * bs * sl, sl)

    # --- the proxy sub-run config --------------------------------------------------------------------
    def _proxy_shape(self) -> tuple[int, int]:
        """(batch size, seq_len) of a proxy: its proxy_budget's, else the main run's."""
        pb = self.c["proxy_budget"]
        bs = int(pb["batch_size"] or 0) or self.ctx.tokens_per_step // self.ctx.seq_len
        return bs, int(pb["seq_len"] or 0) or self.ctx.seq_len

    def proxy_steps(self) -> int:
        pb = self.c["proxy_budget"]
        bs, sl = self._proxy_shape()
        per_step = bs * sl
        if pb["total_tokens"] is not None:
            return max(1, int(pb["total_tokens"]) // per_step)
        main_tokens = self.ctx.total_steps * self.ctx.tokens_per_step
        frac_steps = int(math.ceil(float(pb["tokens_frac"]) * main_tokens / per_step))
        return max(1, frac_steps, min(int(pb["min_steps"]), self.ctx.total_steps))

    def proxy_overrides(self, w: np.ndarray) -> dict[str, Any]:
        """The sub-run config of the proxy for mixture ``w``: deterministic, so the cache finds it again."""
        c = self.c
        pb = c["proxy_budget"]
        bs, sl = self._proxy_shape()
        budget = {"name": "regmix-proxy", "total_tokens": self.proxy_steps() * bs * sl, "warmup_frac": float(pb["warmup_frac"]),
                  "stages": []}
        for k in ("batch_size", "micro_batch", "seq_len"):
            if pb[k] is not None:
                budget[k] = int(pb[k])
        trainer = {k: v for k, v in c["proxy_trainer"].items() if v is not None}
        trainer["final_eval"] = "targets"  # the fit needs a proxy's target loss only (methods.md, "Compute")
        ov: dict[str, Any] = {
            "mixer": {"name": "fixed", "weights": {d: float(x) for d, x in zip(self.domains, w)}, "weights_file": None,
                      "renormalize": True},
            "model": dict(c["proxy_model"]),
            "budget": budget,
            "trainer": trainer,
        }  # the eval preset is inherited: it defines the task targets (sub-runs skip the downstream evaluation)
        if c["proxy_seed"] is not None:
            ov["seed"] = int(c["proxy_seed"])
        return ov

    def candidates(self) -> np.ndarray:
        c = self.c
        seed = int(c["candidate_seed"]) if c["candidate_seed"] is not None else int(self.ctx.seed)
        return generate_candidates(self.prior, _n_candidates(c, self.ctx), seed, **self.gen_kwargs())

    # --- prepare --------------------------------------------------------------------------------------
    def _target_of(self, res: dict) -> float | None:
        t = self.c["target"]
        if t == "mean":
            return res.get("target_loss_mean")
        tl = res.get("target_loss") or {}
        if t not in tl:
            raise ConfigError("mixer.target", f"no target set {t!r}; the proxies report {sorted(tl)} (config: targets)")
        return tl[t]

    def _train_proxies(self) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        if self.ctx.run_subrun is None:
            raise ConfigError("mixer", "RegMix trains proxies through the trainer (ctx.run_subrun); run it through train.py")
        W = self.candidates()
        ovs = [self.proxy_overrides(w) for w in W]
        failed: dict[int, str] = {}
        cached_before: set[int] | None = None
        workers = int(self.c["workers"])
        if workers > 1:
            failed, cached_before = self._pretrain_parallel(ovs, workers)
        X, y, crashed, reused, flops = [], [], [], 0, np.zeros(3)
        t0 = time.perf_counter()
        for i, (w, ov) in enumerate(zip(W, ovs)):
            if i in failed:
                crashed.append({"index": i, "error": failed[i]})
                continue
            try:
                res = self.ctx.run_subrun(ov, name="regmix-proxy", charge_as="regmix_proxies")
            except ConfigError:  # the proxies' config is invalid: the same for every proxy, so stop now
                raise
            except TikmixError as e:  # one bad proxy (e.g. a non-finite loss) does not sink the search
                crashed.append({"index": i, "error": str(e)})
                continue
            reused += (i in cached_before) if cached_before is not None else bool(res.get("reused"))
            flops += proxy_flops(res["compute"])  # make_subrun charged their sum, its compute's total
            val = self._target_of(res)
            if val is None or not math.isfinite(float(val)):
                crashed.append({"index": i, "error": f"target loss {val}"})
                continue
            X.append(w)
            y.append(float(val))
            print(f"[regmix] proxy {i + 1}/{len(W)}: target loss {float(val):.4f}" + (" (cached)" if res.get("reused") else ""), flush=True)
        info = {"source": "in-process" if workers == 1 else f"{workers} local workers", "n_candidates": len(W),
                "n_finished": len(X), "n_crashed": len(crashed), "crashed": crashed, "n_reused": reused,
                **_flops_info(flops), "minimum": self.gen_kwargs()["minimum"], "proxy_steps": self.proxy_steps(), "proxy_model": dict(self.c["proxy_model"]),
                "proxy_wall_s": time.perf_counter() - t0}
        return np.asarray(X, dtype=np.float64).reshape(-1, self.m), np.asarray(y), info

    def _pretrain_parallel(self, ovs: list[dict], workers: int) -> tuple[dict[int, str], set[int]]:
        """Train the proxies in ``workers`` local processes (spawned; each fills the sub-run cache). The serial
        loop afterwards finds them finished and charges their compute. Needs the parent's config.yaml."""
        import concurrent.futures as cf
        import multiprocessing as mp

        import yaml

        cfg_path = Path(self.ctx.run_dir or ".") / "config.yaml"
        if not cfg_path.exists():
            raise ConfigError("mixer.workers", f"parallel proxies need the run's config ({cfg_path}); run through train.py or set workers=1")
        parent = yaml.safe_load(cfg_path.read_text())
        threads = max(1, (os.cpu_count() or 1) // workers)
        failed: dict[int, str] = {}
        cached: set[int] = set()
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
            futs = {ex.submit(_proxy_worker, parent, ov, "regmix-proxy", threads): i for i, ov in enumerate(ovs)}
            try:
                for f in cf.as_completed(futs):
                    i = futs[f]
                    ok, msg, reused = f.result()
                    if not ok:
                        failed[i] = msg
                    elif reused:
                        cached.add(i)
            except BaseException:  # SIGTERM (Preempted) or a crash: stop the workers now, not after their proxies
                _stop_workers(ex)
                raise
        return failed, cached

    def prepare(self) -> None:
        c = self.c
        t0 = time.perf_counter()
        if c["proxies"]:
            X, y, pinfo = load_proxy_runs(c["proxies"], self.domains, c["target"])
            if self.ctx.charge is not None and pinfo["flops"] > 0:
                self.ctx.charge(pinfo["flops"], "regmix_proxies")  # the sweep jobs' training + target-loss passes
            print(f"[regmix] {pinfo['n_finished']} finished proxies from {', '.join(pinfo['source'])}; "
                  f"{pinfo['n_unfinished']} unfinished/crashed left out", flush=True)
            if pinfo["n_full_eval"]:
                print(f"[regmix] {pinfo['n_full_eval']} proxies ran the full final evaluation (written before "
                      f"trainer.final_eval): {pinfo['flops_other']:.3g} FLOPs of it charged; a new sweep charges only "
                      "training + target loss", flush=True)
        else:
            X, y, pinfo = self._train_proxies()
            if pinfo["n_crashed"]:
                print(f"[regmix] {pinfo['n_crashed']} of {pinfo['n_candidates']} proxies crashed; fitting on {pinfo['n_finished']}", flush=True)
        if len(y) < int(c["min_proxies"]):
            first = (pinfo.get("crashed") or [{}])[0].get("error")
            raise DataError(f"RegMix needs at least mixer.min_proxies={c['min_proxies']} finished proxies to fit, has {len(y)} "
                            f"({pinfo.get('n_unfinished', pinfo.get('n_crashed', 0))} unfinished/crashed"
                            + (f"; first error: {first}" if first else "") + ")")
        fit_seed = int(c["fit_seed"]) if c["fit_seed"] is not None else int(self.ctx.seed)
        models, finfo = fit_mixing_law(X, y, seed=fit_seed, lgbm=c["lgbm"], folds=int(c["cv_folds"]))
        w, sinfo = choose_mixture(models[c["regressor"]], self.prior, int(c["n_simulate"]), int(c["top_k"]), seed=fit_seed,
                                  distribution=c["search_distribution"], strength=float(c["search_strength"]), **self.gen_kwargs())
        self._w = w
        best = int(np.argmin(y))
        self.info = _jsonable({
            "proxies": {k: v for k, v in pinfo.items() if k not in ("crashed", "unfinished", "no_target")},
            "crashed": pinfo.get("crashed", []) + pinfo.get("unfinished", []),
            "n_proxies_used": int(len(y)),
            "n_proxies_crashed": int(pinfo.get("n_crashed", 0) + pinfo.get("n_unfinished", 0)),
            "fit": finfo,
            "spearman_lightgbm": finfo.get("spearman_lightgbm"),
            "spearman_linear": finfo.get("spearman_linear"),
            "regressor": c["regressor"],
            "search": sinfo,
            "prior": dict(zip(self.domains, self.prior)),
            "weights": dict(zip(self.domains, w)),
            "best_proxy": {"weights": dict(zip(self.domains, X[best])), "target_loss": float(y[best])},
            "target": c["target"],
            "wall_s": time.perf_counter() - t0,
        })
        self.history = _jsonable([{"proxy": i, "weights": dict(zip(self.domains, X[i])), "target_loss": float(y[i])}
                                  for i in range(len(y))])
        print(f"[regmix] fit on {len(y)} proxies: held-out Spearman LightGBM {finfo.get('spearman_lightgbm', float('nan')):.3f}, "
              f"linear {finfo.get('spearman_linear', float('nan')):.3f}; mixture "
              + ", ".join(f"{d} {x:.3f}" for d, x in zip(self.domains, w)), flush=True)


@register("regmix_candidate")
class RegMixCandidate(Mixer):
    """Candidate ``index`` of RegMix's generator as a static mixture: one job of the proxy sweep
    (``python train.py -m +sweep=regmix_proxies``). The same generator keys as ``mixer=regmix``; the prior is
    this run's token shares, so the sweep needs the same data as the main run."""

    def __init__(self, cfg: Mapping[str, Any], domains: list[str], ctx: MixerContext):
        self.c = _merge_keys(cfg, CANDIDATE_KEYS)
        _check_gen(self.c)
        idx = self.c["index"]
        _need(isinstance(idx, int) and idx >= 0, "index", f"a non-negative integer, got {idx!r}")
        self.prior = _prior_from_ctx(ctx, domains)
        seed = int(self.c["candidate_seed"]) if self.c["candidate_seed"] is not None else int(ctx.seed)
        _need(self.c["n_candidates"] != "auto", "n_candidates", "the sweep's size (an integer): the candidate set depends on it")
        n = int(self.c["n_candidates"])
        # this job is the proxy: minimum: auto follows its own tokens, as mixer=regmix's follows its proxies'
        W = generate_candidates(self.prior, n, seed, **_gen_kwargs(self.c, ctx.total_steps * ctx.tokens_per_step, ctx.seq_len))
        _need(idx < len(W), "index", f"{idx} is out of range: the generator gave {len(W)} distinct candidates (n_candidates={n})")
        self.candidate = W[idx]
        super().__init__(cfg, domains, ctx)
        self.info = {"index": idx, "n_candidates": int(len(W)), "candidate_seed": seed}

    def initial_weights(self) -> np.ndarray:
        return self.candidate
