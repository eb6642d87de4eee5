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
   1000 iterations, learning rate 0.01, metrics l1 and l2) and a linear model from the m weights to the target
   loss; held-out Spearman ρ of each from K-fold out-of-fold predictions (a warning when the chosen model's is
   below ``cv_warn_below``). The number of trees (``lgbm.n_trees``): ``cv`` (default) = the round minimising
   the K-fold out-of-fold MSE over all proxies, then refitted on all of them; ``holdout`` = the notebook's early
   stopping after 3 rounds without improvement on held-out mixtures (here a third of the proxies, which then take
   no part in that model's training; at 16 proxies a stopping signal of 5 mixtures).
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

import concurrent.futures as cf
import dataclasses
import glob
import json
import math
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from tikmix.config import ModelConfig, Number, TrainerOverrides, check_choice, is_number, need
from tikmix.errors import ConfigError, DataError, TikmixError
from tikmix.mixer import Mixer, MixerConfig, MixerContext, register
from tikmix.regression import (
    LinearLaw,
    fit_cv_trees,
    fit_early_stopped,
    folds_for,
    kfold_predictions,
    lgbm_regressor,
    n_trees,
    rmse,
    spearman,
    stopping_split,
    top_k_mean,
)
from tikmix.runlog import to_builtin as _jsonable


# --------------------------------------------------------------------------------------------------------
# config (conf/mixer/regmix.yaml). Published values are given beside each default; the defaults differ only where
# a 2-core CPU demands it (n_candidates, proxy_budget, proxy_trainer.lr, lgbm.min_child_samples, n_simulate) or
# where the published value assumed 1B-token proxies (minimum: auto), and in the number of trees (lgbm.n_trees: cv,
# since the notebook's early stopping had 256 extra test proxies). The reference: sail-sg/regmix b004d3a,
# mixture_config/synthesize_mixture.py (candidates) and regression_fitting/regression.ipynb (fit, search).
# --------------------------------------------------------------------------------------------------------
@dataclass
class GeneratorConfig(MixerConfig):
    """1. candidate mixtures (the published synthesize_mixture.py); shared by regmix and regmix_candidate."""

    # proxies to train (paper 512); auto = by the main run's tokens: <1e5 (smoke) 6, <1e8 (demo) 16, <1e9 64, else 512
    n_candidates: Union[int, str] = "auto"
    candidate_seed: Optional[int] = None  # seed of the candidate generator; null = the run's seed
    temperature: Number = (
        0.5  # Dirichlet base = prior^temperature, renormalised (paper 0.5); prior = each domain's token share
    )
    # Dirichlet strengths: n_strengths log-spaced values in [strength_min, strength_max] (paper 0.1 ... 5.0, 15
    # values); each draw picks one at random
    strength_min: Number = 0.1
    strength_max: Number = 5.0
    n_strengths: int = 15
    # reject a candidate with w_d > min(max_usage * p_d, 1) (paper 15: a domain may be seen <= 15x its share)
    max_usage: Number = 15.0
    # weights below this become 0, the rest are rounded to multiples of it; then dedup. Published 2e-4 = 100
    # sequences of a 1B-token proxy, "increase it for fewer proxy tokens": auto = max(2e-4, seq_len / proxy tokens),
    # i.e. a non-zero weight is at least one expected sequence of the proxy (demo: 1/960 = 1.04e-3; smoke: 1/128).
    # A number is used as given
    minimum: Union[int, float, str] = "auto"
    sample_multiplier: int = (
        100  # draw this many times n_candidates, deduplicate, keep a random n_candidates (paper 100)
    )

    def __post_init__(self) -> None:
        nc = self.n_candidates
        need(
            nc == "auto" or (isinstance(nc, int) and nc >= 1),
            "mixer.n_candidates",
            f"'auto' or a positive integer, got {nc!r}",
        )
        need(0 < self.temperature <= 1, "mixer.temperature", "must be in (0, 1] (1 = no smoothing of the prior)")
        need(0 < self.strength_min <= self.strength_max, "mixer.strength_min", "need 0 < strength_min <= strength_max")
        need(self.n_strengths >= 1, "mixer.n_strengths", "must be a positive integer")
        need(self.max_usage > 0, "mixer.max_usage", "must be > 0 (cap: w_d <= min(max_usage * p_d, 1))")
        mn = self.minimum
        need(
            mn == "auto" or (is_number(mn) and 0 <= mn < 1),
            "mixer.minimum",
            f"'auto' or a number in [0, 1), got {mn!r}",
        )
        need(self.sample_multiplier >= 1, "mixer.sample_multiplier", "must be a positive integer")


@dataclass
class ProxyBudget:
    """2. the proxies' budget: each is a sub-run through the same trainer, cached under <data.cache_dir>/subruns/
    by config fingerprint."""

    total_tokens: Optional[int] = (
        None  # tokens per proxy (paper 1e9 with a 25e9-token main run); null = tokens_frac of the main run
    )
    tokens_frac: Number = (
        0.1  # proxy tokens as a fraction of the main run's (paper 1B/25B = 0.04; 0.1 so CPU-scale proxies learn)
    )
    min_steps: int = 10  # ... but at least this many optimiser steps (at most the main run's)
    warmup_frac: Number = 0.1  # linear warmup then constant LR (paper: 100 of 1000 steps)
    batch_size: Optional[int] = None  # null = the main run's budget.batch_size / micro_batch / seq_len
    micro_batch: Optional[int] = None
    seq_len: Optional[int] = None


@dataclass
class LGBMConfig:
    """3. LightGBM as the reference notebook: gbdt, objective regression, metrics l1 and l2."""

    n_estimators: int = 1000  # at most this many trees (notebook 1000)
    learning_rate: Number = 0.01  # notebook 0.01
    num_leaves: int = 31  # LightGBM default (notebook: default)
    # null = LightGBM's 20 (notebook, with 512 proxies), lowered to max(2, n/5) for few proxies so the trees can
    # split at all (20 allows no split below 40 proxies)
    min_child_samples: Optional[int] = None
    min_data_in_bin: int = (
        3  # LightGBM default (notebook: default); this suite used 1 before (see README fidelity table)
    )
    # how many trees (of at most n_estimators) the model that picks the mixture uses:
    # cv = K-fold cross-validation over ALL proxies (K = min(mixer.cv_folds, n), the folds of the reported rho):
    #   each fold grows every tree on the other folds and records its held-out l2 per round; the round with the
    #   lowest pooled out-of-fold MSE wins and the model is refitted on all proxies with that many trees (5-fold at
    #   the default cv_folds; leave-one-out only when n <= cv_folds). Why: the notebook's early stopping (holdout)
    #   had 256 extra test proxies; holding out a third of this run's own proxies leaves 5 of 16 to decide when to
    #   stop, and those 5 train nothing. Planted law, 16 proxies, 10 seeds (tests/benchmarks/bench_regmix_fit.py):
    #   trees 1-795, rho on fresh mixtures 0.60 with holdout; 232-1000 trees, 0.71 with cv
    # holdout = the notebook's rule: stop when l1 or l2 on valid_frac of the proxies (who then train nothing) has
    #   not improved for early_stopping_rounds rounds; predictions use the best round
    n_trees: str = "cv"
    # holdout's patience (notebook 3). 0 = grow all n_estimators trees on every proxy, whatever n_trees says
    early_stopping_rounds: int = 3
    # holdout only: share of the proxies held out for early stopping, which then do not train that model (notebook:
    # 256 test mixtures beside 512 training ones = 1/3); none are held out when either side would have < 2 proxies
    valid_frac: Number = 0.33


LGBM: dict[str, Any] = dataclasses.asdict(LGBMConfig())
N_TREES_RULES = ("cv", "holdout")


def _regmix_proxy_model() -> ModelConfig:
    # the paper's "1M" proxy (TinyLlama-style, non-embedding ~1.3M; untied embeddings as in its lit-gpt config)
    return ModelConfig(
        name="regmix-1m", hidden_size=256, num_layers=2, num_heads=8, num_kv_heads=8, intermediate_size=512
    )


def _regmix_proxy_trainer() -> TrainerOverrides:
    # paper: constant LR after warmup, AdamW betas (0.9, 0.95), weight decay 0.1, clip 1.0; no validation during
    # training (at the end each proxy computes only its target loss: trainer.final_eval=targets, set for every
    # proxy); lr null = trainer.lr, which tiny CPU-scale proxies need (paper 4e-4 for 512x2048-token batches)
    return TrainerOverrides(schedule="constant", betas=[0.9, 0.95], weight_decay=0.1, grad_clip=1.0, eval_every=0)


@dataclass
class RegMixConfig(GeneratorConfig):
    """RegMix's parameters. The paper's recipe: mixer.n_candidates=512 mixer.proxy_budget.total_tokens=1000000000
    mixer.proxy_trainer.lr=4.0e-4 mixer.n_simulate=1000000 (with budget.seq_len=2048, budget.batch_size=512: 1000
    steps per proxy)."""

    # --- 2. proxies
    proxy_model: ModelConfig = field(default_factory=_regmix_proxy_model)
    proxy_budget: ProxyBudget = field(default_factory=ProxyBudget)
    proxy_trainer: TrainerOverrides = field(default_factory=_regmix_proxy_trainer)  # null = the main run's value
    proxy_seed: Optional[int] = None  # null = the run's seed
    workers: int = 1  # 1 = proxies one after another in this process; N = N local processes (then collected here)
    # a finished sweep dir (python train.py -m +sweep=regmix_proxies), a glob, or a list: fit on its finished runs
    # instead of training proxies; unfinished/crashed jobs are counted and skipped
    proxies: Any = None
    min_proxies: int = 4  # refuse to fit on fewer finished proxies
    # --- 3. regression
    target: str = (
        "mean"  # regression target: mean = mean loss over the config's targets sets; or one set, e.g. val/arith
    )
    regressor: str = (
        "lightgbm"  # the model that picks the mixture: lightgbm (paper) | linear (both are fitted and reported)
    )
    lgbm: LGBMConfig = field(default_factory=LGBMConfig)
    cv_folds: int = 5  # held-out Spearman rho from K-fold out-of-fold predictions (reported for both models)
    # print "[regmix] warning: ..." (stderr) when the cross-validated Spearman rho of the model that picks the
    # mixture (mixer_info.cv_spearman) is below this, or undefined: such a fit ranks mixtures poorly, so its top-k
    # rests on little; more proxies (mixer.n_candidates) help. 0.5: the planted law's median at 16 proxies is ~0.4,
    # at 32 ~0.8 (tests/benchmarks/bench_regmix_fit.py); real 32-proxy demo runs gave 0.29-0.82. null = never warn
    cv_warn_below: Optional[Number] = 0.5
    # --- 4. search
    # prior = the notebook's w ~ Dir(search_strength * p): no temperature, strength grid, caps or rounding (so the
    # chosen mixture may exceed max_usage * p_d) | generator = the candidate procedure above (temperature,
    # strengths, caps kept)
    search_distribution: str = "prior"
    search_strength: Number = 1.0  # Dirichlet concentration of the prior search (notebook: prior_dist * 1)
    n_simulate: int = 100_000  # simulated mixtures from the prior (paper 100k-1M)
    top_k: int = 100  # average of the top-k predicted (paper 100; its notebook 128)
    fit_seed: Optional[int] = None  # seed of the folds, LightGBM and simulation; null = the run's seed

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("mixer.regressor", self.regressor, ("lightgbm", "linear"))
        need(1 <= self.top_k <= self.n_simulate, "mixer.top_k", "need 1 <= top_k <= n_simulate")
        need(self.min_proxies >= 2, "mixer.min_proxies", "need at least 2 finished proxies to fit anything")
        need(self.workers >= 1, "mixer.workers", "must be a positive integer")
        need(self.cv_folds >= 2, "mixer.cv_folds", "must be >= 2")
        pb, lg, ss = self.proxy_budget, self.lgbm, self.search_strength
        need(
            pb.total_tokens is None or pb.total_tokens > 0,
            "mixer.proxy_budget.total_tokens",
            "null (use tokens_frac) or a positive integer",
        )
        need(0 < pb.tokens_frac, "mixer.proxy_budget.tokens_frac", "must be > 0")
        need(0 <= pb.warmup_frac < 1, "mixer.proxy_budget.warmup_frac", "must be in [0, 1)")
        need(
            self.search_distribution in SEARCH_DISTRIBUTIONS,
            "mixer.search_distribution",
            f"{' | '.join(SEARCH_DISTRIBUTIONS)}, got {self.search_distribution!r}",
        )
        need(
            is_number(ss) and ss > 0,
            "mixer.search_strength",
            f"a number > 0 (search draws w ~ Dir(search_strength * prior)), got {ss!r}",
        )
        need(
            lg.early_stopping_rounds >= 0,
            "mixer.lgbm.early_stopping_rounds",
            f"an integer >= 0 (0 = grow all n_estimators trees), got {lg.early_stopping_rounds!r}",
        )
        check_choice("mixer.lgbm.n_trees", lg.n_trees, N_TREES_RULES)
        wb = self.cv_warn_below
        need(
            wb is None or (is_number(wb) and -1 <= wb <= 1),
            "mixer.cv_warn_below",
            f"null or a Spearman rho in [-1, 1], got {wb!r}",
        )
        need(
            is_number(lg.valid_frac) and 0 < lg.valid_frac < 1,
            "mixer.lgbm.valid_frac",
            f"a number in (0, 1): the share of proxies held out for early stopping, got {lg.valid_frac!r}",
        )
        need(lg.min_data_in_bin >= 1, "mixer.lgbm.min_data_in_bin", f"an integer >= 1, got {lg.min_data_in_bin!r}")


@dataclass
class RegMixCandidateConfig(GeneratorConfig):
    """One candidate of the generator above as a static mixture: a job of +sweep=regmix_proxies. Use the main run's
    data: the prior is this run's token shares. ``minimum: auto`` = max(2e-4, seq_len / this job's
    budget.total_tokens): this job is the proxy."""

    n_candidates: Union[int, str] = 16  # size of the candidate set (must be the sweep's size: the set depends on it)
    index: int = 0  # which candidate (0 .. n_candidates-1); the sweep enumerates it

    def __post_init__(self) -> None:
        super().__post_init__()
        need(self.index >= 0, "mixer.index", f"a non-negative integer, got {self.index!r}")
        need(
            self.n_candidates != "auto",
            "mixer.n_candidates",
            "the sweep's size (an integer): the candidate set depends on it",
        )


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
    need(
        mn <= 0.5,
        "mixer.minimum",
        f"auto gives {mn:.3g} (one sequence of a proxy that sees only {proxy_tokens // seq_len} "
        "sequences): give the proxies more tokens, or a number",
    )
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
    W = sample_dirichlet_mixtures(
        prior, int(n) * int(sample_multiplier), rng, temperature, strength_min, strength_max, n_strengths, max_usage
    )
    if len(W) == 0:
        raise ConfigError(
            "mixer.max_usage", "every candidate mixture broke the cap w_d <= min(max_usage * p_d, 1); raise max_usage"
        )
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
def _lgbm(params: Mapping[str, Any], n: int, seed: int):
    mcs = params.get("min_child_samples")
    if mcs is None:  # LightGBM's default 20, lowered for few proxies so the trees can split at all
        mcs = int(min(20, max(2, n // 5)))
    return lgbm_regressor(
        seed,
        boosting_type="gbdt",
        objective="regression",
        metric=["l1", "l2"],
        n_estimators=int(params["n_estimators"]),
        learning_rate=float(params["learning_rate"]),
        num_leaves=int(params["num_leaves"]),
        min_child_samples=int(mcs),
        min_data_in_bin=int(params["min_data_in_bin"]),
    )


def fit_lgbm(params: Mapping[str, Any], X: np.ndarray, y: np.ndarray, seed: int, folds: int = 5):
    """LightGBM with the number of trees ``params["n_trees"]`` says: ``cv`` = chosen by ``folds``-fold
    cross-validation over all rows, refitted on all (:func:`tikmix.regression.fit_cv_trees`); ``holdout`` = as the
    reference notebook (:func:`tikmix.regression.fit_early_stopped`: boosting stops when the held-out l1 or l2 has
    not improved for ``early_stopping_rounds`` rounds). ``early_stopping_rounds: 0`` grows all trees."""
    rule, rounds = params.get("n_trees", "cv"), int(params["early_stopping_rounds"])
    if rule not in N_TREES_RULES:
        raise ConfigError("mixer.lgbm.n_trees", f"{' | '.join(N_TREES_RULES)}, got {rule!r}")
    make = lambda n: _lgbm(params, n, seed)  # noqa: E731
    if rule == "cv" and rounds > 0:
        return fit_cv_trees(make, X, y, folds, seed)
    return fit_early_stopped(make, X, y, rounds, float(params["valid_frac"]), seed)


def cv_warning(rho: float | None, n: int, threshold: float | None, regressor: str = "lightgbm") -> str | None:
    """The warning line for a fit whose cross-validated Spearman ρ is below ``threshold`` (or undefined), else
    None (also when ``threshold`` is None)."""
    if threshold is None:
        return None
    rho = float("nan") if rho is None else float(rho)
    if math.isfinite(rho) and rho >= float(threshold):
        return None
    what = f"is {rho:.2f}, below mixer.cv_warn_below={float(threshold):g}" if math.isfinite(rho) else "is undefined"
    return (
        f"[regmix] warning: the {regressor} fit's cross-validated Spearman rho {what} with {n} proxies: it ranks "
        f"mixtures poorly, so the chosen mixture rests on little; train more proxies "
        f"(mixer.n_candidates, e.g. {max(64, 4 * n)})"
    )


def fit_mixing_law(
    X: np.ndarray, y: np.ndarray, seed: int = 0, lgbm: Mapping[str, Any] | None = None, folds: int = 5
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit LightGBM (:func:`fit_lgbm`) and the linear model w → y. Returns ({"lightgbm": model, "linear":
    model}, info) where info holds the held-out Spearman ρ of each (K-fold out-of-fold predictions, K =
    min(folds, n); each fold's LightGBM chooses its trees on that fold's training rows alone: by an inner K-fold
    cross-validation (``n_trees: cv``) or early stopping on a split of them (``holdout``), so the ρ is that of
    the whole procedure), their held-out RMSE, n, and the trees LightGBM used. The returned models are fitted on
    all the data (``holdout``: on all but its held-out rows)."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"X must be [k, m] and y [k]; got {X.shape} and {y.shape}")
    n = len(y)
    lgbm = dict(LGBM, **(lgbm or {}))
    fitters: dict[str, Callable[[np.ndarray, np.ndarray], Any]] = {
        "lightgbm": lambda Xs, ys: fit_lgbm(lgbm, Xs, ys, seed, folds),
        "linear": lambda Xs, ys: LinearLaw().fit(Xs, ys),
    }
    info: dict[str, Any] = {"n": n}
    K = folds_for(n, folds)
    if K:
        fold_trees: list[int] = []

        def fit_predict(name: str, tr: np.ndarray, te: np.ndarray) -> np.ndarray:
            model = fitters[name](X[tr], y[tr])
            if name == "lightgbm":
                fold_trees.append(n_trees(model))
            return model.predict(X[te])

        for name in fitters:
            oof = kfold_predictions(lambda tr, te: fit_predict(name, tr, te), n, K, seed)
            info[f"spearman_{name}"] = spearman(y, oof)
            info[f"rmse_{name}"] = rmse(y, oof)
        info["cv_folds"] = K
        info["lgbm_trees_folds"] = fold_trees
    models = {name: fit(X, y) for name, fit in fitters.items()}
    info["lgbm_trees"] = n_trees(models["lightgbm"])
    rounds = int(lgbm["early_stopping_rounds"])
    info["lgbm_n_trees"] = lgbm["n_trees"] if rounds > 0 else "all"
    # the trees' choice: cv = its folds (0: too few proxies, all trees grown); holdout = the proxies it held out
    # (0: too few to hold any out, all trees grown)
    if lgbm["n_trees"] == "cv":
        info["lgbm_tree_folds"] = folds_for(n, folds) if rounds > 0 else 0
    else:
        info["lgbm_stopping_rows"] = len(stopping_split(n, lgbm["valid_frac"], seed)[1]) if rounds > 0 else 0
    info["linear_coef"] = models["linear"].coef_.tolist()
    return models, info


# --------------------------------------------------------------------------------------------------------
# 4. search
# --------------------------------------------------------------------------------------------------------
SEARCH_DISTRIBUTIONS = ("prior", "generator")


def sample_prior_mixtures(
    prior: Sequence[float], n: int, rng: np.random.Generator, strength: float = 1.0
) -> np.ndarray:
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
    gen = {
        k: v for k, v in gen.items() if k in ("temperature", "strength_min", "strength_max", "n_strengths", "max_usage")
    }
    if distribution == "prior":

        def draw(k: int) -> np.ndarray:
            return sample_prior_mixtures(prior, k, rng, strength)
    else:

        def draw(k: int) -> np.ndarray:
            return sample_dirichlet_mixtures(prior, k, rng, **gen)

    def chunks() -> Iterator[np.ndarray]:
        left = int(n_simulate)
        for _ in range(50):  # draws that break the caps are dropped: give up when 50 chunks cannot fill n_simulate
            if left <= 0:
                return
            W = draw(min(chunk, left))
            left -= len(W)
            if len(W):
                yield W

    w, best_y, drawn = top_k_mean(model.predict, chunks(), top_k)
    if w is None:
        raise ConfigError("mixer.max_usage", "no simulated mixture respected the caps; raise max_usage")
    return w, {
        "distribution": distribution,
        "n_simulated": drawn,
        "top_k": len(best_y),
        "pred_top_k_mean": float(best_y.mean()),
        "pred_best": float(best_y[0]),
        "pred_chosen": float(np.asarray(model.predict(w[None]))[0]),
    }


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
    return {
        "flops": float(f.sum()),
        "flops_train": float(f[0]),
        "flops_targets": float(f[1]),
        "flops_other": float(f[2]),
    }


def load_proxy_runs(
    paths: str | Sequence[str], domains: Sequence[str], target: str = "mean"
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
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
    info = {
        "source": [str(r) for r in roots],
        "n_jobs": len(jobs),
        "n_finished": len(finished),
        "n_unfinished": len(unfinished),
        "unfinished": unfinished,
        "n_no_target": len(skipped),
        "no_target": skipped,
        **_flops_info(flops),
        "n_full_eval": full_eval,
        "proxy_setups": sorted([list(map(str, f)) for f in fps]),
    }
    return np.asarray(X, dtype=np.float64).reshape(-1, len(domains)), np.asarray(y, dtype=np.float64), info


# --------------------------------------------------------------------------------------------------------
# parallel local proxies
# --------------------------------------------------------------------------------------------------------
def _proxy_worker(runner: Any, overrides: dict, name: str, threads: int) -> tuple[bool, str, bool]:
    """Train one proxy in a worker process with the run's detached sub-runner (fills the sub-run cache; the parent
    collects and charges it)."""
    torch.set_num_threads(max(1, int(threads)))
    try:
        res = runner(overrides, name, "regmix_proxies")
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
def _gen_kwargs(c: GeneratorConfig, proxy_tokens: int, seq_len: int) -> dict[str, Any]:
    """The generator's keys, ``minimum: auto`` resolved for proxies of ``proxy_tokens`` in ``seq_len`` windows."""
    out = {
        k: getattr(c, k)
        for k in ("temperature", "strength_min", "strength_max", "n_strengths", "max_usage", "sample_multiplier")
    }
    out["minimum"] = resolve_minimum(c.minimum, int(proxy_tokens), int(seq_len))
    return out


def _prior_from_ctx(ctx: MixerContext, domains: Sequence[str]) -> np.ndarray:
    t = np.array([float(ctx.train_tokens.get(d, 0)) for d in domains])
    if t.sum() <= 0:
        raise DataError("RegMix's prior is the domains' token shares, and every domain has 0 training tokens")
    return t / t.sum()


def _n_candidates(c: GeneratorConfig, ctx: MixerContext) -> int:
    nc = c.n_candidates
    return auto_n_candidates(ctx.total_steps * ctx.tokens_per_step) if nc == "auto" else int(nc)


@register("regmix", RegMixConfig)
class RegMix(Mixer):
    """Static mixture chosen by RegMix in ``prepare()``; the main run trains on it from step 0."""

    family = "baseline"
    summary = "RegMix: proxies on candidate mixtures, a regression, the best predicted mixture"
    help_rank, table_rank = 1, 5

    def __init__(self, cfg: Mapping[str, Any] | RegMixConfig, domains: list[str], ctx: MixerContext):
        c = self.c = self.parse_config(cfg)  # the proxy's shape is checked here too (ModelConfig), before any run
        self.prior = _prior_from_ctx(ctx, domains)
        super().__init__(c, domains, ctx)
        self.gen_kwargs()  # minimum: auto, checked now

    def initial_weights(self) -> np.ndarray:
        return self.prior  # replaced by prepare(); a resumed run restores the chosen mixture from its checkpoint

    def gen_kwargs(self) -> dict[str, Any]:
        bs, sl = self._proxy_shape()
        return _gen_kwargs(self.c, self.proxy_steps() * bs * sl, sl)

    # --- the proxy sub-run config --------------------------------------------------------------------
    def _proxy_shape(self) -> tuple[int, int]:
        """(batch size, seq_len) of a proxy: its proxy_budget's, else the main run's."""
        pb = self.c.proxy_budget
        bs = pb.batch_size or self.ctx.tokens_per_step // self.ctx.seq_len
        return bs, pb.seq_len or self.ctx.seq_len

    def proxy_steps(self) -> int:
        pb = self.c.proxy_budget
        bs, sl = self._proxy_shape()
        per_step = bs * sl
        if pb.total_tokens is not None:
            return max(1, pb.total_tokens // per_step)
        main_tokens = self.ctx.total_steps * self.ctx.tokens_per_step
        frac_steps = int(math.ceil(float(pb.tokens_frac) * main_tokens / per_step))
        return max(1, frac_steps, min(pb.min_steps, self.ctx.total_steps))

    def proxy_overrides(self, w: np.ndarray) -> dict[str, Any]:
        """The sub-run config of the proxy for mixture ``w``: deterministic, so the cache finds it again."""
        c = self.c
        pb = c.proxy_budget
        bs, sl = self._proxy_shape()
        budget = {
            "name": "regmix-proxy",
            "total_tokens": self.proxy_steps() * bs * sl,
            "warmup_frac": float(pb.warmup_frac),
            "stages": [],
        }
        for k in ("batch_size", "micro_batch", "seq_len"):
            if getattr(pb, k) is not None:
                budget[k] = getattr(pb, k)
        trainer = {k: v for k, v in dataclasses.asdict(c.proxy_trainer).items() if v is not None}
        trainer["final_eval"] = "targets"  # the fit needs a proxy's target loss only (methods.md, "Compute")
        ov: dict[str, Any] = {
            "mixer": {
                "name": "fixed",
                "weights": {d: float(x) for d, x in zip(self.domains, w)},
                "weights_file": None,
                "renormalize": True,
            },
            "model": dataclasses.asdict(c.proxy_model),
            "budget": budget,
            "trainer": trainer,
        }  # the eval preset is inherited: it defines the task targets (sub-runs skip the downstream evaluation)
        if c.proxy_seed is not None:
            ov["seed"] = c.proxy_seed
        return ov

    def candidates(self) -> np.ndarray:
        c = self.c
        seed = c.candidate_seed if c.candidate_seed is not None else int(self.ctx.seed)
        return generate_candidates(self.prior, _n_candidates(c, self.ctx), seed, **self.gen_kwargs())

    # --- prepare --------------------------------------------------------------------------------------
    def _target_of(self, res: dict) -> float | None:
        t = self.c.target
        if t == "mean":
            return res.get("target_loss_mean")
        tl = res.get("target_loss") or {}
        if t not in tl:
            raise ConfigError("mixer.target", f"no target set {t!r}; the proxies report {sorted(tl)} (config: targets)")
        return tl[t]

    def _train_proxies(self) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        if self.ctx.run_subrun is None:
            raise ConfigError(
                "mixer", "RegMix trains proxies through the trainer (ctx.run_subrun); run it through train.py"
            )
        W = self.candidates()
        ovs = [self.proxy_overrides(w) for w in W]
        failed: dict[int, str] = {}
        cached_before: set[int] | None = None
        workers = self.c.workers
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
            flops += proxy_flops(res["compute"])  # the sub-runner charged their sum, its compute's total
            val = self._target_of(res)
            if val is None or not math.isfinite(float(val)):
                crashed.append({"index": i, "error": f"target loss {val}"})
                continue
            X.append(w)
            y.append(float(val))
            print(
                f"[regmix] proxy {i + 1}/{len(W)}: target loss {float(val):.4f}"
                + (" (cached)" if res.get("reused") else ""),
                flush=True,
            )
        info = {
            "source": "in-process" if workers == 1 else f"{workers} local workers",
            "n_candidates": len(W),
            "n_finished": len(X),
            "n_crashed": len(crashed),
            "crashed": crashed,
            "n_reused": reused,
            **_flops_info(flops),
            "minimum": self.gen_kwargs()["minimum"],
            "proxy_steps": self.proxy_steps(),
            "proxy_model": dataclasses.asdict(self.c.proxy_model),
            "proxy_wall_s": time.perf_counter() - t0,
        }
        return np.asarray(X, dtype=np.float64).reshape(-1, self.m), np.asarray(y), info

    def _pretrain_parallel(self, ovs: list[dict], workers: int) -> tuple[dict[int, str], set[int]]:
        """Train the proxies in ``workers`` local processes (spawned; each fills the sub-run cache). The serial
        loop afterwards finds them finished and charges their compute. Needs a runner that can be detached
        (tikmix.run.SubRunner, as train.py gives it)."""
        detach = getattr(self.ctx.run_subrun, "detached", None)
        if detach is None:
            raise ConfigError(
                "mixer.workers", "parallel proxies need the run's sub-runner; run through train.py or set workers=1"
            )
        runner = detach()
        threads = max(1, (os.cpu_count() or 1) // workers)
        failed: dict[int, str] = {}
        cached: set[int] = set()
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
            futs = {ex.submit(_proxy_worker, runner, ov, "regmix-proxy", threads): i for i, ov in enumerate(ovs)}
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
        if c.proxies:
            X, y, pinfo = load_proxy_runs(c.proxies, self.domains, c.target)
            if self.ctx.charge is not None and pinfo["flops"] > 0:
                self.ctx.charge(pinfo["flops"], "regmix_proxies")  # the sweep jobs' training + target-loss passes
            print(
                f"[regmix] {pinfo['n_finished']} finished proxies from {', '.join(pinfo['source'])}; "
                f"{pinfo['n_unfinished']} unfinished/crashed left out",
                flush=True,
            )
            if pinfo["n_full_eval"]:
                print(
                    f"[regmix] {pinfo['n_full_eval']} proxies ran the full final evaluation (written before "
                    f"trainer.final_eval): {pinfo['flops_other']:.3g} FLOPs of it charged; a new sweep charges only "
                    "training + target loss",
                    flush=True,
                )
        else:
            X, y, pinfo = self._train_proxies()
            if pinfo["n_crashed"]:
                print(
                    f"[regmix] {pinfo['n_crashed']} of {pinfo['n_candidates']} proxies crashed; fitting on {pinfo['n_finished']}",
                    flush=True,
                )
        if len(y) < c.min_proxies:
            first = (pinfo.get("crashed") or [{}])[0].get("error")
            raise DataError(
                f"RegMix needs at least mixer.min_proxies={c.min_proxies} finished proxies to fit, has {len(y)} "
                f"({pinfo.get('n_unfinished', pinfo.get('n_crashed', 0))} unfinished/crashed"
                + (f"; first error: {first}" if first else "")
                + ")"
            )
        fit_seed = c.fit_seed if c.fit_seed is not None else int(self.ctx.seed)
        models, finfo = fit_mixing_law(X, y, seed=fit_seed, lgbm=dataclasses.asdict(c.lgbm), folds=c.cv_folds)
        w, sinfo = choose_mixture(
            models[c.regressor],
            self.prior,
            c.n_simulate,
            c.top_k,
            seed=fit_seed,
            distribution=c.search_distribution,
            strength=float(c.search_strength),
            **self.gen_kwargs(),
        )
        self._w = w
        best = int(np.argmin(y))
        cv_rho = finfo.get(f"spearman_{c.regressor}")
        warning = cv_warning(cv_rho, len(y), c.cv_warn_below, c.regressor)
        self.info = _jsonable(
            {
                "proxies": {k: v for k, v in pinfo.items() if k not in ("crashed", "unfinished", "no_target")},
                "crashed": pinfo.get("crashed", []) + pinfo.get("unfinished", []),
                "n_proxies_used": int(len(y)),
                "n_proxies_crashed": int(pinfo.get("n_crashed", 0) + pinfo.get("n_unfinished", 0)),
                "fit": finfo,
                "spearman_lightgbm": finfo.get("spearman_lightgbm"),
                "spearman_linear": finfo.get("spearman_linear"),
                "regressor": c.regressor,
                # the cross-validated Spearman rho of the model that picked the mixture, and the warning it gave
                "cv_spearman": cv_rho,
                "cv_warning": warning,
                "search": sinfo,
                "prior": dict(zip(self.domains, self.prior)),
                "weights": dict(zip(self.domains, w)),
                "best_proxy": {"weights": dict(zip(self.domains, X[best])), "target_loss": float(y[best])},
                "target": c.target,
                "wall_s": time.perf_counter() - t0,
            }
        )
        self.history = _jsonable(
            [{"proxy": i, "weights": dict(zip(self.domains, X[i])), "target_loss": float(y[i])} for i in range(len(y))]
        )
        print(
            f"[regmix] fit on {len(y)} proxies: held-out Spearman LightGBM {finfo.get('spearman_lightgbm', float('nan')):.3f} "
            f"({finfo['lgbm_trees']} trees, {finfo['lgbm_n_trees']}), "
            f"linear {finfo.get('spearman_linear', float('nan')):.3f}; mixture "
            + ", ".join(f"{d} {x:.3f}" for d, x in zip(self.domains, w)),
            flush=True,
        )
        if warning:
            print(warning, file=sys.stderr, flush=True)


@register("regmix_candidate", RegMixCandidateConfig)
class RegMixCandidate(Mixer):
    """Candidate ``index`` of RegMix's generator as a static mixture: one job of the proxy sweep
    (``python train.py -m +sweep=regmix_proxies``). The same generator keys as ``mixer=regmix``; the prior is
    this run's token shares, so the sweep needs the same data as the main run."""

    family = "part"

    def __init__(self, cfg: Mapping[str, Any] | RegMixCandidateConfig, domains: list[str], ctx: MixerContext):
        c = self.c = self.parse_config(cfg)
        idx = c.index
        self.prior = _prior_from_ctx(ctx, domains)
        seed = c.candidate_seed if c.candidate_seed is not None else int(ctx.seed)
        n = c.n_candidates
        # this job is the proxy: minimum: auto follows its own tokens, as mixer=regmix's follows its proxies'
        W = generate_candidates(
            self.prior, n, seed, **_gen_kwargs(c, ctx.total_steps * ctx.tokens_per_step, ctx.seq_len)
        )
        need(
            idx < len(W),
            "mixer.index",
            f"{idx} is out of range: the generator gave {len(W)} distinct candidates (n_candidates={n})",
        )
        self.candidate = W[idx]
        super().__init__(c, domains, ctx)
        self.info = {"index": idx, "n_candidates": int(len(W)), "candidate_seed": seed}

    def initial_weights(self) -> np.ndarray:
        return self.candidate
