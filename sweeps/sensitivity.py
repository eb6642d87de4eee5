"""What TiKMiX-D's defaults trade: its result against Eq. 10's beta and gamma (and the number of targets).

    python -m sweeps.sensitivity DIRS... --out results/tikmix_sensitivity [--oracle results/oracle]

Reads every finished ``tikmix_d`` run under DIRS (the ``+sweep=tikmix_sensitivity`` sweep, the combined-target
runs and the default runs of ``+sweep=compare``), groups them by (beta, gamma, targets) from each run's
config.yaml and reports per group: the in-domain gold BPB and accuracy (mean ± std over seeds; regret against
the best static mixture when an oracle is given), and what the solver did at the boundaries: the mixture's
entropy, how much of the objective each term of Eq. 10 holds at the solution (α·std(P̂), −β·ΣP̂, −γ·H(w)),
how often the Pareto constraint is active (S·w at its floor for some target) and where the weight went.
Writes ``sensitivity.md`` and ``sensitivity.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

from eval import figures, tables
from eval.oracle import metric_value
from tikmix.method.solvers import entropy, influence_scale


def _cfg(run_dir: Path) -> dict:
    try:
        return yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except OSError:
        return {}


def _terms(rec: dict, a: float, b: float, g: float) -> dict[str, float] | None:
    """Eq. 10's terms at the chosen mixture of one boundary, from the recorded influence and weights."""
    inf = rec.get("influence")
    if not inf:
        return None
    doms = list(rec["weights"])
    S = np.array([[row[d] for d in doms] for row in inf.values()])
    w = np.array([rec["weights"][d] for d in doms])
    w_prev = np.array([rec["w_prev"][d] for d in doms])
    Ph = (S @ w) / influence_scale(S)
    floor = (S @ w_prev) / influence_scale(S)
    return {
        "std": a * float(Ph.std()),
        "benefit": -b * float(Ph.sum()),
        "entropy": -g * float(entropy(w)),
        "H": float(entropy(w)),
        "pareto_active": float(np.any(np.abs(Ph - floor) < 1e-4)),
        "moved_l1": float(np.abs(w - w_prev).sum()),
    }


def collect(dirs: list[str]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in tables.collect(dirs):
        if r.res is None or r.res.get("mixer") != "tikmix_d":
            continue
        m = _cfg(Path(r.path)).get("mixer") or {}
        n_targets = len((r.res.get("mixer_history") or [{}])[0].get("influence") or {})
        key = (float(m.get("beta", 1.0)), float(m.get("gamma", 1.0)), n_targets)
        r.res["_alpha"] = float(m.get("alpha", 1.0))
        runs = groups.setdefault(key, [])
        # the defaults' runs of +sweep=compare and +sweep=tikmix_sensitivity are the same runs (same config and
        # seed, bit-identical results): a seed counts once per setting
        if any(x.get("seed") == r.res.get("seed") for x in runs):
            print(
                f"[sensitivity] {r.path}: seed {r.res.get('seed')} of this setting already read; skipped",
                file=sys.stderr,
            )
            continue
        runs.append(r.res)
    return groups


def summarise(groups: dict[tuple, list[dict]], oracle: dict | None) -> list[dict]:
    rows = []
    for (beta, gamma, n_t), runs in sorted(groups.items()):
        terms = [
            t for res in runs for rec in res.get("mixer_history", []) if (t := _terms(rec, res["_alpha"], beta, gamma))
        ]
        row = {"beta": beta, "gamma": gamma, "targets": n_t, "seeds": sorted(r["seed"] for r in runs)}
        for k in ("in_domain_bpb", "in_domain_avg", "average"):
            vals = [v for r in runs if (v := metric_value(r, k)) is not None]
            row[k] = tables.mean_std(vals)[:2] if vals else (None, None)
        if oracle:
            best = oracle["best"]["per_seed"]
            d = [
                metric_value(r, "in_domain_bpb") - best[str(r["seed"])]["in_domain_bpb"]
                for r in runs
                if str(r["seed"]) in best and metric_value(r, "in_domain_bpb") is not None
            ]
            row["regret_bpb"] = tables.mean_std(d)[:2] if d else (None, None)
        for k in ("std", "benefit", "entropy", "H", "pareto_active", "moved_l1"):
            row[k] = float(np.mean([t[k] for t in terms])) if terms else None
        fw = np.mean([[r["final_weights"][d] for d in runs[0]["domains"]] for r in runs], axis=0)
        row["final_weights"] = dict(zip(runs[0]["domains"], fw.round(3).tolist()))
        rows.append(row)
    return rows


def markdown(rows: list[dict], oracle: dict | None) -> str:
    fm = lambda ms, nd=3: tables.fmt_ms(ms[0], ms[1], nd) if ms and ms[0] is not None else tables.DASH  # noqa: E731
    lines = [
        "# TiKMiX-D: sensitivity to beta, gamma and the number of targets",
        "",
        "| β | γ | targets | seeds | in-domain BPB | in-domain acc | "
        + ("BPB regret vs best static | " if oracle else "")
        + "H(w) | α·std(P̂) | −β·ΣP̂ | −γ·H(w) | Pareto active | L1 moved per boundary | final mixture |",
        "|---|---|---|---|---|---|" + ("---|" if oracle else "") + "---|---|---|---|---|---|---|",
    ]
    for r in rows:
        top = ", ".join(f"{d} {w:.2f}" for d, w in sorted(r["final_weights"].items(), key=lambda x: -x[1])[:4])
        lines.append(
            f"| {r['beta']:g} | {r['gamma']:g} | {r['targets']} | {len(r['seeds'])} | {fm(r['in_domain_bpb'])} | "
            f"{fm(r['in_domain_avg'], 1)} | "
            + (f"{fm(r.get('regret_bpb'))} | " if oracle else "")
            + f"{r['H']:.2f} | {r['std']:.2f} | {r['benefit']:.2f} | {r['entropy']:.2f} | "
            f"{100 * r['pareto_active']:.0f}% | {r['moved_l1']:.2f} | {top} |"
        )
    lines += [
        "",
        "Terms of Eq. 10 averaged over boundaries and seeds, at the mixture the solver chose (lower objective "
        "is better: the benefit and entropy terms are negative). `Pareto active`: share of boundaries where "
        "some target's influence sits exactly at its floor S·w_prev.",
    ]
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], out: Path, oracle: dict | None = None) -> Path:
    """The result per setting, with the best static mixture and stratified as lines when an oracle is given, and
    Eq. 10's terms at the chosen mixture."""
    plt = figures._plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"β={r['beta']:g}, γ={r['gamma']:g}, {r['targets']} tgt" for r in rows]
    x = np.arange(len(rows))
    m = [r["in_domain_bpb"][0] for r in rows]
    s = [r["in_domain_bpb"][1] or 0 for r in rows]
    a1.errorbar(x, m, yerr=s, fmt="o", capsize=3)
    a1.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    refs = (oracle or {}).get("mixtures") or {}
    best = (oracle or {}).get("best", {}).get("name")
    for name, label, style in ((best, "best static mixture", "--"), ("stratified", "stratified", ":")):
        if name in refs and refs[name].get("mean") is not None:
            a1.axhline(refs[name]["mean"], color="grey", ls=style, lw=1, label=f"{label} ({refs[name]['mean']:.3f})")
    if refs:
        a1.legend(fontsize=8)
    a1.set_ylabel("in-domain gold BPB (lower is better)")
    a1.set_title("Result", fontsize=10)
    width = 0.25
    for k, (key, lab) in enumerate((("std", "α·std(P̂)"), ("benefit", "−β·ΣP̂"), ("entropy", "−γ·H(w)"))):
        a2.bar(x + (k - 1) * width, [r[key] for r in rows], width, label=lab)
    a2.axhline(0, color="black", lw=0.8)
    a2.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    a2.set_title("Eq. 10's terms at the chosen mixture", fontsize=10)
    a2.legend(fontsize=8)
    return figures.save_figure(plt, fig, out, "sensitivity")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sweeps.sensitivity", description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--out", type=Path, default=Path("results/tikmix_sensitivity"))
    ap.add_argument("--oracle", type=Path, default=None)
    a = ap.parse_args(argv)
    oracle = None
    if a.oracle:
        p = a.oracle / "oracle.json" if a.oracle.is_dir() else a.oracle
        oracle = json.loads(p.read_text())
    rows = summarise(collect(a.dirs), oracle)
    if not rows:
        print(f"error: no finished tikmix_d runs under {a.dirs}", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    md = markdown(rows, oracle)
    (a.out / "sensitivity.md").write_text(md)
    fig = figure(rows, a.out, oracle)
    print(md)
    print(f"wrote {a.out / 'sensitivity.md'} and {fig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
