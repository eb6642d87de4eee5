"""Two diagnostics of TiKMiX's influence at a real stage boundary (tiny model, synthetic data, task targets):

    python tests/benchmarks/bench_tikmix_diagnostics.py [--out DIR] [--steps 8,...]

1. K-FAC: the share of Σ|S| each block carries (embedding, attention, MLP, norms, LM head) with the rest
   preconditioned by the identity (the behaviour before) and by the damped diagonal Fisher (the default).
2. TiKMiX-M at one boundary: for each ``mixer.lookahead_steps``, each way of measuring the candidates
   (``composed`` from the domains' gradients, or each its ``own`` sample) and each regressor (LightGBM, the
   paper's, or a quadratic ridge), the median relative gap between the candidates' finite-step influence
   and the linear S·x (how much second order the step shows), the regressor's held-out R² of the objective
   beside the linear prediction's, and whether the search would move off w_D.

Each K-FAC configuration is one short run (75 steps, one boundary at step 37) through train.py; part 2 is one
run to the same boundary (same seed and first-stage mixture) that measures every variant on the same model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
BASE = [
    "logger=none",
    "eval=synthetic9",
    "eval.limit=0.01",
    "budget.total_tokens=307200",
    "budget.stages=[0.5]",
    "trainer.progress=false",
    "trainer.save_final_model=false",
    "trainer.eval_every=0",
]


def run(out: Path, name: str, *overrides: str) -> dict:
    d = out / name
    if not (d / "results.json").exists():
        subprocess.run(
            [sys.executable, str(REPO / "train.py"), *BASE, *overrides, f"hydra.run.dir={d}"],
            cwd=REPO,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return json.loads((d / "results.json").read_text())


def block_shares(out: Path) -> None:
    print("K-FAC: share of sum |S| per block at the boundary (tikmix_d, hessian=kfac)")
    kinds = ("embedding", "attention", "mlp", "norm", "lm_head")
    print(f"  {'rest':<9}" + "".join(f"{k:>11}" for k in kinds))
    for rest in ("identity", "diag"):
        res = run(out, f"kfac_{rest}", "mixer=tikmix_d", "mixer.hessian=kfac", f"mixer.kfac_rest={rest}")
        share = res["mixer_history"][0]["influence_info"]["block_share"]
        print(f"  {rest:<9}" + "".join(f"{100 * share.get(k, 0):>10.1f}%" for k in kinds))


class _Done(Exception):
    pass


def _m_variants(probe, domains, steps: list[float], n_candidates: int, seed: int = 0) -> list[dict]:
    """At one model state: TiKMiX-D's w_D, then for each candidate mode, lookahead and regressor, the held-out fit
    of the objective on (n_candidates + 1) measured candidates, and whether the search would move."""
    from tikmix.method.influence import GroupInfluence
    from tikmix.method.solvers import (
        accept_search,
        fit_influence_law,
        latin_hypercube_candidates,
        tikmix_d_solve,
    )
    from tikmix.regression import dirichlet_search

    gi = GroupInfluence(
        probe.model,
        hessian="adam",
        optimizer=probe.optimizer,
        device=probe.device,
        flops_per_token=probe.flops_per_token,
    )
    gi.set_targets({k: list(b)[:4] for k, b in probe.targets.items()})
    S = gi.matrix({d: (lambda d=d: probe.domain_batches(d, 2048)) for d in domains}, keep_directions=True).S
    w_prev = np.full(len(domains), 1.0 / len(domains))
    w_d, _ = tikmix_d_solve(S, w_prev)
    cands = np.vstack([w_d[None], latin_hypercube_candidates(w_d, n_candidates, 0.5, 2.0, seed=seed)])
    lr = probe.optimizer.param_groups[0]["lr"]
    rows = []
    for k in steps:
        eta = lr * k
        measured = {"composed": (cands, np.array([gi.lookahead_composed(w, eta) for w in cands]))}
        X, P = [], []
        for w in cands:
            sample = probe.mixture_batches(w, 2048)
            X.append(sample.counts / sample.counts.sum())
            P.append(gi.score_lookahead(sample, eta)[1])
        measured["own"] = (np.array(X), np.array(P))
        for mode, (X, P) in measured.items():
            first = X @ S.T
            gap = float(np.median(np.abs(P - first) / np.maximum(np.abs(first), 1e-12)))
            for regressor in ("lightgbm", "quadratic"):
                law, fit = fit_influence_law(
                    X,
                    P,
                    S,
                    regressor=regressor,
                    seed=seed,
                    lgbm=dict(n_estimators=200, learning_rate=0.05, num_leaves=15, min_child_samples=3),
                )
                region = (X.min(axis=0), X.max(axis=0))
                w, _ = dirichlet_search(law.predict, X[0], n_samples=4000, seed=seed, region=region)
                ok, why = accept_search(fit, float(law.predict(w[None])[0]), float(law.predict(w_d[None])[0]), 1.0)
                rows.append(
                    {
                        "steps": k,
                        "eta": eta,
                        "mode": mode,
                        "regressor": regressor,
                        "gap": gap,
                        "r2": fit["r2_holdout"],
                        "r2_linear": fit["r2_linear"],
                        "moves": ok,
                        "why": why,
                        "l1_move": float(np.abs(w - w_d).sum()) if ok else 0.0,
                    }
                )
    gi.release()
    return rows


def lookahead(out: Path, steps: list[float], n_candidates: int = 16) -> None:
    print("TiKMiX-M at the boundary (hessian=adam): finite-step vs first order, and the regressor's held-out fit")
    print(
        f"  {'steps':>6}  {'eta':>8}  {'candidates':>10}  {'regressor':>9}  {'median |P-Sx|/|Sx|':>18}  "
        f"{'R2 held-out':>11}  {'R2 of S.x':>9}  moves (L1)"
    )
    import tikmix.run as R
    from tikmix.mixer import Mixer, register

    rows: list[dict] = []

    @register("m_diag_probe")
    class Probe(Mixer):  # noqa: F841 — registered for the run below
        def probe_steps(self):
            return [int(self.ctx.stage_steps[0])]

        def on_probe(self, probe):
            rows.extend(_m_variants(probe, self.domains, steps, n_candidates))
            raise _Done

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import compose

    cfg = compose(
        [
            *[o for o in BASE if not o.startswith("trainer.progress")],
            "trainer.progress=false",
            "mixer=stratified",
            "mixer.name=m_diag_probe",
            f"run_dir={out / 'm_diag'}",
        ]
    )
    try:
        R.run(cfg, quiet=True)
    except _Done:
        pass
    for r in rows:
        print(
            f"  {r['steps']:>6g}  {r['eta']:>8.2g}  {r['mode']:>10}  {r['regressor']:>9}  {r['gap']:>18.3f}  "
            f"{r['r2']:>11.3f}  {r['r2_linear']:>9.3f}  {'yes (%.2f)' % r['l1_move'] if r['moves'] else 'no'}"
        )
    (out / "m_diag.json").write_text(json.dumps(rows, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None, help="folder for the runs (reused when they exist)")
    ap.add_argument("--steps", default="0.25,1,4,8", help="lookahead_steps values")
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp())
    block_shares(out)
    lookahead(out, [float(x) for x in a.steps.split(",")])


if __name__ == "__main__":
    main()
