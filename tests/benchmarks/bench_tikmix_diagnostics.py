"""Two diagnostics of TiKMiX's influence at a real stage boundary (tiny model, synthetic data, task targets):

    python tests/benchmarks/bench_tikmix_diagnostics.py [--out DIR] [--steps 8,...]
    python tests/benchmarks/bench_tikmix_diagnostics.py --skip-kfac --demo --data synthetic_v4 --seeds 0,1,2 \
        --steps 0.0625,0.125,0.25,0.5,1 --hessians adam,identity      # part 2 at every demo boundary

1. K-FAC: the share of Σ|S| each block carries (embedding, attention, MLP, norms, LM head) with the rest
   preconditioned by the identity (the behaviour before) and by the damped diagonal Fisher (the default).
2. TiKMiX-M at one boundary: for each ``mixer.lookahead_steps``, each way of measuring the candidates
   (``composed`` from the domains' gradients, or each its ``own`` sample) and each regressor (LightGBM, the
   paper's, or a quadratic ridge), the median relative gap between the candidates' finite-step influence
   and the linear S·x (how much second order the step shows), the share of candidate × target entries whose
   target loss the step *raises* (``harm``: a step that measures benefit keeps it well below 1), the regressor's
   held-out R² of the objective beside the linear prediction's, and whether the search would move off w_D.
   ``--demo`` measures at every boundary of the demo budget (the runs' own), ``--seeds`` over several seeds,
   ``--hessians`` with Adam's preconditioner (TiKMiX-M's default) and the identity (TiKMiX-D's), ``--data`` on
   another benchmark (synthetic_v4 evaluates with synthetic10).

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


def _m_variants(
    probe, domains, steps: list[float], n_candidates: int, seed: int = 0, hessian: str = "adam"
) -> list[dict]:
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
        hessian=hessian,
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
            harm = float(np.mean(P < 0))
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
                        "step": int(probe.step),
                        "hessian": hessian,
                        "steps": k,
                        "eta": eta,
                        "harm": harm,
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


def lookahead(
    out: Path,
    steps: list[float],
    n_candidates: int = 16,
    data: str | None = None,
    seeds: tuple[int, ...] = (0,),
    demo: bool = False,
    hessians: tuple[str, ...] = ("adam",),
) -> None:
    print("TiKMiX-M at the boundary: finite-step vs first order, harm share, and the regressor's held-out fit")
    import tikmix.run as R
    from tikmix.mixer import Mixer, register

    rows: list[dict] = []

    @register("m_diag_probe")
    class Probe(Mixer):  # noqa: F841 — registered for the runs below
        def probe_steps(self):
            return [int(s) for s in self.ctx.stage_steps] if demo else [int(self.ctx.stage_steps[0])]

        def on_probe(self, probe):
            for h in hessians:
                got = _m_variants(probe, self.domains, steps, n_candidates, seed=self.seed, hessian=h)
                rows.extend({**r, "seed": self.seed} for r in got)
            if not demo or probe.step == self.probe_steps()[-1]:
                raise _Done

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import compose

    base = [o for o in BASE if not o.startswith("trainer.progress")]
    if demo:  # the demo budget's own boundaries (0.25, 0.5, 0.75)
        base = [o for o in base if not o.startswith(("budget.total_tokens", "budget.stages", "eval.limit"))]
    if data:
        base = [o for o in base if not o.startswith("eval=")] + [f"data={data}"]
    tag = data or "v3"
    for seed in seeds:
        Probe.seed = seed
        cfg = compose(
            [
                *base,
                "trainer.progress=false",
                "mixer=stratified",
                "mixer.name=m_diag_probe",
                f"seed={seed}",
                f"run_dir={out / f'm_diag_{tag}_s{seed}'}",
            ]
        )
        try:
            R.run(cfg, quiet=True)
        except _Done:
            pass
    _print_lookahead(rows)
    (out / f"m_diag_{tag}.json").write_text(json.dumps(rows, indent=1))


def _print_lookahead(rows: list[dict]) -> None:
    """Per (hessian, steps, candidates, regressor): the mean over seeds and boundaries, and how many moved."""
    print(
        f"  {'H':>8}  {'steps':>6}  {'candidates':>10}  {'regressor':>9}  {'|P-Sx|/|Sx|':>11}  {'harm':>5}  "
        f"{'R2 held-out':>11}  {'R2 of S.x':>9}  moves  (n = seeds x boundaries)"
    )
    keys = sorted({(r["hessian"], r["steps"], r["mode"], r["regressor"]) for r in rows})
    for key in keys:
        rs = [r for r in rows if (r["hessian"], r["steps"], r["mode"], r["regressor"]) == key]
        mean = {k: float(np.mean([r[k] for r in rs])) for k in ("gap", "harm", "r2", "r2_linear")}
        moved = sum(bool(r["moves"]) for r in rs)
        print(
            f"  {key[0]:>8}  {key[1]:>6g}  {key[2]:>10}  {key[3]:>9}  {mean['gap']:>11.3f}  {mean['harm']:>5.2f}  "
            f"{mean['r2']:>11.3f}  {mean['r2_linear']:>9.3f}  {moved}/{len(rs)}"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None, help="folder for the runs (reused when they exist)")
    ap.add_argument("--steps", default="0.25,1,4,8", help="lookahead_steps values")
    ap.add_argument("--skip-kfac", action="store_true", help="part 2 only")
    ap.add_argument("--data", default=None, help="a data preset (default: the default benchmark, v3)")
    ap.add_argument("--seeds", default="0", help="comma-separated run seeds")
    ap.add_argument("--demo", action="store_true", help="the demo budget, measured at each of its boundaries")
    ap.add_argument("--hessians", default="adam", help="adam and/or identity (the influence's and the step's H)")
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp())
    if not a.skip_kfac:
        block_shares(out)
    lookahead(
        out,
        [float(x) for x in a.steps.split(",")],
        data=a.data,
        seeds=tuple(int(x) for x in a.seeds.split(",")),
        demo=a.demo,
        hessians=tuple(a.hessians.split(",")),
    )


if __name__ == "__main__":
    main()
