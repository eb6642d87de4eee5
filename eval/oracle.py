"""Ground truth for a comparison: the best static mixture, measured (README, "Ground truth").

    python -m eval.oracle select DESIGN_SWEEP --out results/oracle            # phase 1 -> confirm.yaml
    python -m eval.oracle report DESIGN_SWEEP CONFIRM_SWEEP --out results/oracle  # phase 2 -> oracle.json, figures

``select`` reads the design sweep (``+sweep=oracle``: one seed of every mixture of the design), fits two
mixing laws from the mixture to the score (LightGBM, and the exponential law of Ye et al. 2024,
L(w) = c + k·exp(Σ_j t_j w_j)), reports their held-out fit (K-fold R², Spearman ρ), and writes
``confirm.yaml``: the ``top`` best measured mixtures, stratified, natural and each law's predicted optimum,
for ``+sweep=oracle_confirm`` to train at three seeds. ``report`` then names the best static mixture (the
lowest mean score over the seeds of the confirmation), with its scores ± std and its paired differences to
stratified and natural (mean, paired std, 95% t-interval), writes ``oracle.json`` (the input of the regret
columns of ``python -m eval.tables --oracle``), ``oracle.md`` and the figure ``oracle_simplex.png``.

The score is ``--metric`` (default ``in_domain_bpb``: the in-domain tasks' gold-answer bits per byte, the
targets every mixer optimises; lower is better). Accuracy metrics (``in_domain_avg``, ``average``) are
higher-is-better and handled as such.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from eval import figures, tables
from eval.regret import HIGHER_IS_BETTER

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


# ------------------------------------------------------------------------------------------ reading
def metric_value(res: dict, metric: str) -> float | None:
    """A run's score: a key of ``results.json["eval"]`` (e.g. in_domain_bpb) or a top-level key (target_loss_mean)."""
    ev = res.get("eval") or {}
    v = ev.get(metric, res.get(metric))
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def design_runs(dirs: list[str | Path], metric: str) -> list[dict]:
    """Finished runs under ``dirs`` as {name, seed, w, score, domains, res}; runs without the score are skipped."""
    out = []
    for r in tables.collect(dirs):
        if r.res is None:
            continue
        v = metric_value(r.res, metric)
        if v is None:
            continue
        doms = list(r.res["domains"])
        info = r.res.get("mixer_info") or {}
        out.append(
            {
                "name": str(info.get("point", r.res["mixer"])),
                "seed": r.res["seed"],
                "domains": doms,
                "w": np.array([r.res["final_weights"][d] for d in doms]),
                "score": v,
                "res": r.res,
            }
        )
    return out


def _sign(metric: str) -> float:
    """+1 when lower is better: every ranking below minimises sign·score."""
    return -1.0 if metric in HIGHER_IS_BETTER else 1.0


# ------------------------------------------------------------------------------------------ laws
class ExpLaw:
    """Ye et al. 2024's mixing law for one loss: L(w) = c + k·exp(Σ_j t_j w_j), fitted by least squares on the
    score rescaled to [0, 1] with bounded parameters (|t_j| <= 5, k <= e^2): unbounded, a held-out fold's
    prediction follows exp() into 1e20 on the few points a corner of the simplex holds."""

    T = 5.0

    def fit(self, X: np.ndarray, y: np.ndarray, seed: int = 0) -> "ExpLaw":
        from scipy.optimize import least_squares

        m = X.shape[1]
        self.lo, self.scale = float(y.min()), float(max(np.ptp(y), 1e-9))
        z = (y - self.lo) / self.scale
        rng = np.random.default_rng(seed)
        lb = np.concatenate([[-2.0, -10.0], np.full(m, -self.T)])
        ub = np.concatenate([[1.0, 2.0], np.full(m, self.T)])
        best = None
        for _ in range(4):  # restarts: the law is not convex in its parameters
            p0 = np.concatenate([[-0.1, -1.0], rng.normal(0, 1, m).clip(-self.T + 1e-3, self.T - 1e-3)])
            r = least_squares(lambda p: self._f(p, X) - z, p0, bounds=(lb, ub), max_nfev=2000)
            if best is None or r.cost < best.cost:
                best = r
        self.p = best.x
        return self

    @staticmethod
    def _f(p: np.ndarray, X: np.ndarray) -> np.ndarray:
        return p[0] + np.exp(p[1] + X @ p[2:])

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.lo + self.scale * self._f(self.p, np.atleast_2d(X))


class LGBMLaw:
    def fit(self, X: np.ndarray, y: np.ndarray, seed: int = 0) -> "LGBMLaw":
        import lightgbm as lgb

        self.model = lgb.LGBMRegressor(
            n_estimators=300,
            learning_rate=0.05,
            num_leaves=7,
            min_child_samples=3,
            min_data_in_bin=1,
            deterministic=True,
            force_col_wise=True,
            num_threads=1,
            verbose=-1,
            random_state=seed,
        ).fit(X, y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict(np.atleast_2d(X))


LAWS: dict[str, Callable[[], Any]] = {"lightgbm": LGBMLaw, "exp_law": ExpLaw}


def heldout_fit(make: Callable[[], Any], X: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> dict:
    """K-fold out-of-fold R², Spearman ρ and RMSE of a law."""
    from scipy.stats import spearmanr

    n = len(y)
    perm = np.random.default_rng(seed).permutation(n)
    oof = np.empty(n)
    for f in range(folds):
        te = perm[f::folds]
        tr = np.setdiff1d(perm, te)
        oof[te] = make().fit(X[tr], y[tr], seed).predict(X[te])
    ss = float(((y - y.mean()) ** 2).sum())
    return {
        "r2": 1.0 - float(((y - oof) ** 2).sum()) / ss if ss else float("nan"),
        "spearman": float(spearmanr(y, oof).statistic),
        "rmse": float(np.sqrt(np.mean((y - oof) ** 2))),
        "folds": folds,
        "n": n,
    }


def law_optimum(law: Any, m: int, sign: float, seed: int = 0, n: int = 20000, rounds: int = 4) -> np.ndarray:
    """The law's best mixture by a Dirichlet search (broad, then narrowing around the incumbent)."""
    rng = np.random.default_rng(seed)
    best = np.full(m, 1.0 / m)
    for conc in [None] + list(np.geomspace(20, 2000, rounds)):
        X = rng.dirichlet(np.ones(m), n) if conc is None else rng.dirichlet(conc * np.maximum(best, 1e-3), n)
        X = np.vstack([X, best])
        best = X[np.argmin(sign * law.predict(X))]
    return best


# ------------------------------------------------------------------------------------------ select
def select(design_dirs: list[str], out: Path, metric: str, top: int = 4, seed: int = 0) -> dict:
    runs = design_runs(design_dirs, metric)
    if len(runs) < 8:
        raise SystemExit(
            f"error: {len(runs)} finished design runs with {metric!r} under {design_dirs}; need at least 8"
        )
    domains = runs[0]["domains"]
    X = np.array([r["w"] for r in runs])
    y = np.array([r["score"] for r in runs])
    sign = _sign(metric)
    fits, optima = {}, {}
    for name, make in LAWS.items():
        fits[name] = heldout_fit(make, X, y, seed=seed)
        optima[name] = law_optimum(make().fit(X, y, seed), len(domains), sign, seed)
    order = np.argsort(sign * y, kind="stable")
    chosen = [runs[i] for i in order[:top]]
    refs = [
        next(r for r in runs if r["name"] == ref)
        for ref in ("stratified", "natural")
        if any(r["name"] == ref for r in runs)
    ]
    rows = [{"name": f"best{k + 1}:{r['name']}", "weights": _wd(domains, r["w"])} for k, r in enumerate(chosen)]
    rows += [{"name": r["name"], "weights": _wd(domains, r["w"])} for r in refs]
    # a law whose held-out R² is not above 0 predicts worse than the design's mean: its optimum is not worth 3 runs
    rows += [
        {"name": f"optimum:{name}", "weights": _wd(domains, w)} for name, w in optima.items() if fits[name]["r2"] > 0
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "confirm.yaml").write_text(yaml.safe_dump(rows, sort_keys=False))
    summary = {
        "metric": metric,
        "n_design": len(runs),
        "laws": fits,
        "confirm": rows,
        "ranking": [
            {"name": runs[i]["name"], "score": float(y[i]), "weights": _wd(domains, runs[i]["w"])} for i in order
        ],
    }
    (out / "design.json").write_text(json.dumps(summary, indent=1))
    print(
        f"[oracle] {len(runs)} design runs; held-out fit of the laws: "
        + "; ".join(f"{k} R² {v['r2']:.3f}, ρ {v['spearman']:.3f}" for k, v in fits.items())
    )
    print(
        f"[oracle] wrote {out / 'confirm.yaml'} ({len(rows)} mixtures; the optima of laws with held-out R² > 0); "
        f"train them: python train.py +sweep=oracle_confirm 'mixer.index=range(0,{len(rows)})' "
        "hydra/launcher=joblib hydra.launcher.n_jobs=2 logger=none"
    )
    return summary


def _wd(domains: list[str], w: np.ndarray) -> dict[str, float]:
    return {d: round(float(x), 6) for d, x in zip(domains, w)}


# ------------------------------------------------------------------------------------------ report
def paired(a: dict[Any, float], b: dict[Any, float]) -> dict | None:
    """Mean, sample std and 95% t-interval of a − b over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    d = np.array([a[s] - b[s] for s in seeds])
    sd = float(d.std(ddof=1))
    half = T975.get(len(d) - 1, 1.96) * sd / math.sqrt(len(d))
    return {"mean": float(d.mean()), "std": sd, "ci95": [float(d.mean() - half), float(d.mean() + half)], "n": len(d)}


def report(design_dirs: list[str], confirm_dirs: list[str], out: Path, metric: str) -> dict:
    runs = design_runs(confirm_dirs, metric)
    if not runs:
        raise SystemExit(f"error: no finished confirmation runs with {metric!r} under {confirm_dirs}")
    domains = runs[0]["domains"]
    sign = _sign(metric)
    by: dict[str, dict] = {}
    for r in runs:
        e = by.setdefault(r["name"], {"w": r["w"], "scores": {}, "res": {}})
        e["scores"][r["seed"]] = r["score"]
        e["res"][r["seed"]] = r["res"]
    summ = {
        n: {
            "mean": float(np.mean(list(e["scores"].values()))),
            "std": float(np.std(list(e["scores"].values()), ddof=1)) if len(e["scores"]) > 1 else None,
            "seeds": sorted(e["scores"]),
            "weights": _wd(domains, e["w"]),
            "scores": {str(s): v for s, v in sorted(e["scores"].items())},
            "extra": _extras(e["res"]),
            "per_seed": {str(s): _headline(r) for s, r in sorted(e["res"].items())},
            "limited": {
                str(s): lim
                for s, r in sorted(e["res"].items())
                if (lim := tables.eval_limit(r.get("eval"))) is not None
            },
        }
        for n, e in by.items()
    }
    best = min(summ, key=lambda n: (sign * summ[n]["mean"], -len(summ[n]["seeds"])))
    vs = {ref: paired(by[best]["scores"], by[ref]["scores"]) for ref in ("stratified", "natural") if ref in by}
    for _ref, p in vs.items():
        if p is not None:
            p["beats_by_more_than_2_paired_std"] = bool(sign * p["mean"] < 0 and abs(p["mean"]) > 2 * p["std"])
    also = _also_vs(summ, best, metric)
    design = json.loads((out / "design.json").read_text()) if (out / "design.json").exists() else {}
    res = {
        "metric": metric,
        "lower_is_better": sign > 0,
        "best": {"name": best, **summ[best]},
        "vs": vs,
        "vs_other_metrics": also,
        "mixtures": summ,
        "laws": design.get("laws"),
        "n_design": design.get("n_design"),
        "flops": _flops(design_dirs + confirm_dirs),
        "sources": {"design": design_dirs, "confirm": confirm_dirs},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "oracle.json").write_text(json.dumps(res, indent=1))
    (out / "oracle.md").write_text(markdown(res))
    fig = figure(design_dirs, res, out, metric)
    print(markdown(res))
    print(f"[oracle] wrote {out / 'oracle.json'}, {out / 'oracle.md'}" + (f", {fig}" if fig else ""))
    return res


def _also_vs(summ: dict, best: str, metric: str) -> dict:
    """The best mixture against stratified and natural in the other headline metrics (accuracy: higher is
    better), paired by seed from each mixture's ``per_seed`` numbers, so a BPB win can be read beside what it
    does to the accuracy."""
    out: dict = {}
    for ref in ("stratified", "natural"):
        if ref not in summ:
            continue
        for k in HEADLINE:
            if k == metric:
                continue
            a, b = ({s: h[k] for s, h in summ[n]["per_seed"].items() if k in h} for n in (best, ref))
            p = paired(a, b)
            if p is not None:
                sign = _sign(k)
                p["beats_by_more_than_2_paired_std"] = bool(sign * p["mean"] < 0 and abs(p["mean"]) > 2 * p["std"])
                out.setdefault(ref, {})[k] = p
    return out


HEADLINE = (
    "in_domain_avg",
    "out_of_domain_avg",
    "average",
    "in_domain_bpb",
    "out_of_domain_bpb",
    "average_bpb",
    "target_loss_mean",
)


def _headline(res: dict) -> dict[str, float]:
    """One run's headline numbers (the regret columns of eval.tables pair them by seed)."""
    return {k: v for k in HEADLINE if (v := metric_value(res, k)) is not None}


def _extras(res_by_seed: dict) -> dict:
    """Mean over seeds of the other headline numbers (accuracy, out-of-domain BPB, target loss)."""
    out = {}
    for k in HEADLINE:
        vals = [metric_value(r, k) for r in res_by_seed.values()]
        vals = [v for v in vals if v is not None]
        if vals:
            out[k] = {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None}
    return out


def _flops(dirs: list[str]) -> dict:
    tot, wall, n = 0.0, 0.0, 0
    for r in tables.collect(dirs):
        if r.res is not None:
            tot += float((r.res.get("compute") or {}).get("total", 0.0))
            wall += float(r.res.get("total_time_s") or r.res.get("wall_time_s") or 0.0)
            n += 1
    return {"runs": n, "total_flops": tot, "run_wall_s": wall}


def markdown(res: dict) -> str:
    m, lower = res["metric"], res["lower_is_better"]
    b = res["best"]
    lines = [
        f"# The best static mixture ({m}, {'lower' if lower else 'higher'} is better)",
        "",
        f"Best: **{b['name']}**, {m} {b['mean']:.4f} ± {b['std'] or 0:.4f} over seeds {b['seeds']}"
        + (f" {tables.LIMIT_MARK} (a limited evaluation: see below)" if b.get("limited") else ""),
        "",
        "| domain | weight |",
        "|---|---|",
    ]
    lines += [f"| {d} | {w:.3f} |" for d, w in b["weights"].items()]
    lines += [
        "",
        "| against | mean difference | paired std | 95% interval | beats it by > 2 paired std |",
        "|---|---|---|---|---|",
    ]
    for ref, p in (res.get("vs") or {}).items():
        if p:
            lines.append(
                f"| {ref} | {p['mean']:+.4f} | {p['std']:.4f} | [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}] | "
                f"{'yes' if p['beats_by_more_than_2_paired_std'] else 'no'} |"
            )
    also = res.get("vs_other_metrics") or {}
    if also:
        lines += [
            "",
            "The same pairs in the other headline metrics (accuracy in %: higher is better):",
            "",
            "| against | metric | mean difference | paired std | 95% interval | better by > 2 paired std |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {ref} | {k} | {p['mean']:+.4f} | {p['std']:.4f} | [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}] | "
            f"{'yes' if p['beats_by_more_than_2_paired_std'] else 'no'} |"
            for ref, ks in also.items()
            for k, p in ks.items()
        ]
    lines += [
        "",
        f"| mixture | {m} (mean ± std) | seeds | " + " | ".join(["in-domain acc", "OOD acc", "OOD bpb"]) + " |",
        "|---|---|---|---|---|---|",
    ]
    key = (lambda n: res["mixtures"][n]["mean"]) if lower else (lambda n: -res["mixtures"][n]["mean"])
    for n in sorted(res["mixtures"], key=key):
        e = res["mixtures"][n]
        ex = e["extra"]
        cell = lambda k, nd=1: tables.fmt_ms(ex[k]["mean"], ex[k]["std"], nd) if k in ex else tables.DASH  # noqa: E731
        mark = f" {tables.LIMIT_MARK}" if e.get("limited") else ""
        lines.append(
            f"| {n}{mark} | {tables.fmt_ms(e['mean'], e['std'], 4)} | {len(e['seeds'])} | {cell('in_domain_avg')} | "
            f"{cell('out_of_domain_avg')} | {cell('out_of_domain_bpb', 3)} |"
        )
    note = tables.limit_note(
        {
            n: [(sd, lim, None) for sd, lim in e["limited"].items()]
            for n, e in res["mixtures"].items()
            if e.get("limited")
        }
    )
    if note:
        lines += ["", note]
    if res.get("laws"):
        lines += [
            "",
            f"Mixing laws fitted on the {res.get('n_design')} design runs (K-fold held-out):",
            "",
            "| law | R² | Spearman ρ | RMSE |",
            "|---|---|---|---|",
        ]
        lines += [f"| {k} | {v['r2']:.3f} | {v['spearman']:.3f} | {v['rmse']:.4f} |" for k, v in res["laws"].items()]
    f = res.get("flops") or {}
    lines += [
        "",
        f"Compute: {f.get('runs', 0)} runs, {f.get('total_flops', 0):.3g} FLOPs in all "
        f"(training and evaluation), {f.get('run_wall_s', 0) / 60:.0f} min of run wall time (summed over runs).",
    ]
    return "\n".join(lines) + "\n"


def figure(design_dirs: list[str], res: dict, out: Path, metric: str) -> Path | None:
    """Left: every design mixture's score against its weight on the best mixture's main domains. Right: the
    LightGBM law's prediction over the simplex face spanned by the best mixture's three largest domains."""
    runs = design_runs(design_dirs, metric)
    if not runs:
        return None
    plt = figures._plt()
    domains = runs[0]["domains"]
    best_w = np.array([res["best"]["weights"][d] for d in domains])
    top3 = list(np.argsort(-best_w)[:3])
    X = np.array([r["w"] for r in runs])
    y = np.array([r["score"] for r in runs])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 5))
    share = X[:, top3].sum(axis=1)
    a1.scatter(share, y, s=18, c="tab:gray", label="design mixtures (seed 0)")
    for name, colour in (("stratified", "tab:blue"), ("natural", "tab:orange")):
        if name in res["mixtures"]:
            e = res["mixtures"][name]
            w = np.array([e["weights"][d] for d in domains])
            a1.errorbar(
                [w[top3].sum()], [e["mean"]], yerr=[e["std"] or 0], fmt="s", color=colour, label=f"{name} (3 seeds)"
            )
    a1.errorbar(
        [best_w[top3].sum()],
        [res["best"]["mean"]],
        yerr=[res["best"]["std"] or 0],
        fmt="*",
        ms=14,
        color="tab:red",
        label=f"best: {res['best']['name']}",
    )
    a1.set_xlabel("weight on " + " + ".join(domains[i] for i in top3))
    a1.set_ylabel(metric + (" (lower is better)" if res["lower_is_better"] else ""))
    if y.min() > 0 and y.max() / y.min() > 3:  # a few corner mixtures sit far off: log keeps the good end readable
        a1.set_yscale("log")
    a1.legend(fontsize=8)
    a1.set_title("measured score of each static mixture", fontsize=10)
    law = LGBMLaw().fit(X, y)
    rest = best_w.copy()
    rest[top3] = 0.0
    scale = 1.0 - rest.sum()
    g = np.array([(i, j, 40 - i - j) for i in range(41) for j in range(41 - i)], dtype=np.float64) / 40
    W = np.tile(rest, (len(g), 1))
    W[:, top3] = g * scale
    z = law.predict(W)
    px, py = g[:, 1] + 0.5 * g[:, 2], g[:, 2] * math.sqrt(3) / 2
    # colours span the design's better three quarters; what lies beyond shares the end colour
    lo, hi = (y.min(), np.quantile(y, 0.75)) if res["lower_is_better"] else (np.quantile(y, 0.25), y.max())
    tc = a2.tricontourf(
        px,
        py,
        np.clip(z, lo, hi),
        levels=np.linspace(lo, hi, 15),
        cmap="viridis_r" if res["lower_is_better"] else "viridis",
    )
    fig.colorbar(tc, ax=a2, label=f"predicted {metric}")
    bx = best_w[top3] / max(best_w[top3].sum(), 1e-12)
    a2.plot([bx[1] + 0.5 * bx[2]], [bx[2] * math.sqrt(3) / 2], "r*", ms=14)
    for (x, yy), i in zip(((0, 0), (1, 0), (0.5, math.sqrt(3) / 2)), top3):
        a2.annotate(domains[i], (x, yy), ha="center", va="top" if yy == 0 else "bottom", fontsize=9)
    a2.set_axis_off()
    a2.set_title(
        f"LightGBM law over the face of {', '.join(domains[i] for i in top3)}\n"
        f"(other domains fixed at the best mixture's weights, {1 - scale:.2f} in all)",
        fontsize=10,
    )
    return figures.save_figure(plt, fig, out, "oracle_simplex")


# ------------------------------------------------------------------------------------------ cli
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.oracle", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("select", help="fit the laws on the design sweep and write confirm.yaml")
    s.add_argument("design", nargs="+")
    s.add_argument("--top", type=int, default=4)
    r = sub.add_parser("report", help="name the best static mixture from the confirmation sweep")
    r.add_argument("design")
    r.add_argument("confirm", nargs="+")
    for p in (s, r):
        p.add_argument("--out", type=Path, default=Path("results/oracle"))
        p.add_argument("--metric", default="in_domain_bpb")
    a = ap.parse_args(argv)
    if a.cmd == "select":
        select(a.design, a.out, a.metric, a.top)
    else:
        report([a.design], a.confirm, a.out, a.metric)
    return 0


if __name__ == "__main__":
    sys.exit(main())
