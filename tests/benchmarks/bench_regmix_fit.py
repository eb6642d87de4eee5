"""RegMix's LightGBM fit on a planted mixing law: how many trees each rule keeps, and how well the fit ranks
mixtures, at the proxy counts this suite runs (16 at the demo budget, 32, 64).

    OMP_NUM_THREADS=1 python tests/benchmarks/bench_regmix_fit.py [--sizes 16,32,64] [--seeds 10] [--noise 0.02]
        [--rules holdout,cv,all] [--n-estimators 1000] [--no-search]

The law is tests/test_regmix.py's: a quadratic bowl around w* over 5 domains, (w - w*)² / prior summed, plus
Gaussian noise of --noise (default 2%) of its spread (real proxies are noisier: try 0.3); the proxies are RegMix's candidates (``generate_candidates``, seed s). For
each rule of ``lgbm.n_trees`` (``holdout``: the notebook's early stopping after 3 rounds on a third of the proxies;
``cv``: the round minimising the 5-fold out-of-fold MSE over all proxies, refitted on all; ``all``: every one of
the ``--n-estimators`` trees, default 1000 as the notebook) it reports, median [min, max] over the seeds:

* trees   — trees of the final model;
* cv rho  — the K-fold out-of-fold Spearman rho that ``mixer_info`` reports (each fold chooses its own trees);
* test rho — Spearman rho on 2,000 fresh candidates against the noiseless law (the fit's true ranking skill);
* L1 to w* — the chosen mixture's distance to the optimum (the notebook's search: top-100 of 20,000 Dir(prior)).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from baselines.regmix import choose_mixture, fit_mixing_law, generate_candidates  # noqa: E402
from tikmix.regression import spearman  # noqa: E402

PRIOR = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
W_STAR = np.array([0.35, 0.1, 0.3, 0.05, 0.2])
RULES = {"holdout": {"n_trees": "holdout"}, "cv": {"n_trees": "cv"}, "all": {"early_stopping_rounds": 0}}


def law(W: np.ndarray) -> np.ndarray:
    return (((W - W_STAR) ** 2) / PRIOR).sum(-1)


def planted(n: int, seed: int, noise: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    X = generate_candidates(PRIOR, n, seed=seed)
    fx = law(X)
    return X, fx + np.random.default_rng(seed).normal(0, noise * fx.std(), len(X))


def one(
    n: int, seed: int, rule: str, X_test: np.ndarray, search: bool, noise: float = 0.02, n_estimators: int = 1000
) -> dict:
    X, y = planted(n, seed, noise)
    models, info = fit_mixing_law(X, y, seed=seed, lgbm=dict(RULES[rule], n_estimators=n_estimators))
    out = {
        "trees": info["lgbm_trees"],
        "cv_rho": info["spearman_lightgbm"],
        "test_rho": spearman(law(X_test), models["lightgbm"].predict(X_test)),
    }
    if search:
        w, _ = choose_mixture(models["lightgbm"], PRIOR, n_simulate=20_000, top_k=100, seed=seed)
        out["l1"] = float(np.abs(w - W_STAR).sum())
    return out


def fmt(v: list[float], p: int = 2) -> str:
    a = np.asarray(v, dtype=np.float64)
    return f"{np.median(a):.{p}f} [{a.min():.{p}f}, {a.max():.{p}f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="16,32,64")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--rules", default="holdout,cv,all")
    ap.add_argument("--noise", type=float, default=0.02, help="noise sd as a fraction of the law's sd")
    ap.add_argument("--n-estimators", type=int, default=1000, help="lgbm.n_estimators: the most trees (default 1000)")
    ap.add_argument("--no-search", action="store_true", help="skip the search (the L1 to w* column)")
    a = ap.parse_args()
    X_test = generate_candidates(PRIOR, 2000, seed=10_000)
    search = not a.no_search
    cols = ["proxies", "rule", "trees", "cv rho", "test rho"] + (["L1 to w*"] if search else [])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    t0 = time.perf_counter()
    for n in map(int, a.sizes.split(",")):
        for rule in a.rules.split(","):
            rs = [one(n, s, rule, X_test, search, a.noise, a.n_estimators) for s in range(a.seeds)]
            row = [str(n), rule, fmt([r["trees"] for r in rs], 0), fmt([r["cv_rho"] for r in rs])]
            row.append(fmt([r["test_rho"] for r in rs]))
            if search:
                row.append(fmt([r["l1"] for r in rs]))
            print("| " + " | ".join(row) + " |", flush=True)
    print(
        f"(noise {a.noise:g}, n_estimators {a.n_estimators}; {a.seeds} seeds per row, median [min, max]; {time.perf_counter() - t0:.0f} s)"
    )


if __name__ == "__main__":
    main()
