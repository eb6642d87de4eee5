"""Influence: signal against noise. Split-half reliability of TiKMiX's influence matrix S against the tokens of
each gradient sample and the model size, with its cost as a share of the stage's training FLOPs.

    python tests/benchmarks/bench_influence_snr.py [--models tiny,20m] [--tokens 2048,4096,8192,16384,32768]
        [--hessians identity,adam] [--out results] [--budget demo] [--data synthetic] [--replot A.json B.json ...]

For each model: train on the default benchmark (stratified mixture) to TiKMiX's first stage boundary of the
budget (step 75 of 300 at the demo budget), then measure S twice from two independent samples (disjoint
windows of every domain, disjoint halves of every target set) at each domain sample size n
(``mixer.tokens_per_domain``) and report corr(vec S_A, vec S_B): the reliability of one n-token measurement.
The target side is each half of the in-domain tasks' dev splits (100 of 200 documents per task: about the
default ``mixer.targets_tokens`` = 2,048 padded input tokens; the dev splits hold no more). Cost: the
measurement's FLOPs (forward+backward of every sample) against the stage's training FLOPs.
Writes ``influence_snr.png`` and ``influence_snr.json`` into --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tikmix.method.influence import GroupInfluence  # noqa: E402
from tikmix.method.solvers import tikmix_d_solve  # noqa: E402
from tikmix.mixer import Mixer, MixerConfig, register  # noqa: E402
from tikmix.regression import spearman  # noqa: E402


class _Done(Exception):
    pass


def _halves(batches: list[dict]) -> tuple[list[dict], list[dict]]:
    rows = [b["input_ids"][i : i + 1] for b in batches for i in range(b["input_ids"].shape[0])]
    labels = [b["labels"][i : i + 1] for b in batches for i in range(b["labels"].shape[0])]
    h = len(rows) // 2
    mk = lambda r, l: [{"input_ids": x, "labels": y} for x, y in zip(r, l)]  # noqa: E731
    return mk(rows[:h], labels[:h]), mk(rows[h : 2 * h], labels[h : 2 * h])


@dataclass
class SNRProbeConfig(MixerConfig):
    tokens: List[int] = field(default_factory=list)  # domain sample sizes n to measure S at
    hessians: List[str] = field(default_factory=list)
    model_name: str = ""  # for the report


@register("snr_probe", SNRProbeConfig)
class SNRProbe(Mixer):
    """Stratified mixture; at the first stage boundary, measures S twice per (hessian, n) and stops the run."""

    results: list[dict] = []

    def probe_steps(self) -> list[int]:
        return [int(self.ctx.stage_steps[0])]

    def on_probe(self, probe) -> None:
        cfg = self.c
        for hessian in cfg.hessians:
            for n in cfg.tokens:
                t0 = time.perf_counter()
                S = []
                for half in (0, 1):
                    gi = GroupInfluence(
                        probe.model,
                        hessian=hessian,
                        optimizer=probe.optimizer,
                        device=probe.device,
                        flops_per_token=probe.flops_per_token,
                    )
                    targets = {k: _halves(list(b))[half] for k, b in probe.targets.items()}
                    gi.set_targets(targets)
                    doms = {d: _halves(list(probe.domain_batches(d, 2 * n)))[half] for d in self.domains}
                    S.append(gi.matrix(doms).S)
                    flops = gi.total_flops()
                    gi.release()
                a, b = S[0].ravel(), S[1].ravel()
                n_targets = S[0].shape[0]
                # the decision: TiKMiX-D's next mixture from each half (from the current mixture, default settings)
                w_prev = np.asarray(self.weights(probe.step))
                wa, wb = (tikmix_d_solve(x, w_prev)[0] for x in S)
                rec = {
                    "hessian": hessian,
                    "tokens": n,
                    "reliability": float(np.corrcoef(a, b)[0, 1]),
                    "spearman": spearman(a, b),
                    "cost_pct": 100.0 * flops / (probe.stage_tokens * probe.flops_per_token),
                    "wall_s": (time.perf_counter() - t0) / 2,
                    "n_targets": n_targets,
                    "step": probe.step,
                    "sign_agreement": float(np.mean(np.sign(a) == np.sign(b))),
                    "mixture_l1": float(np.abs(wa - wb).sum()),
                }
                print(
                    f"[snr] {cfg.model_name} {hessian:>8} n={n:>6}: reliability {rec['reliability']:.3f} "
                    f"(sign agreement {rec['sign_agreement']:.2f}; L1 between the halves' TiKMiX-D mixtures {rec['mixture_l1']:.2f}), "
                    f"cost {rec['cost_pct']:.1f}% of the stage",
                    flush=True,
                )
                SNRProbe.results.append({"model": cfg.model_name, **rec})
        raise _Done


def measure(model: str, tokens: list[int], hessians: list[str], budget: str, data: str = "synthetic") -> list[dict]:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import compose
    from hydra.core.config_store import ConfigStore

    from tikmix.run import run

    ConfigStore.instance().store(group="mixer", name="snr_probe", node=SNRProbeConfig(name="snr_probe"))  # its preset
    rd = Path(tempfile.mkdtemp()) / f"snr_{model}"
    cfg = compose(
        [
            f"model={model}",
            f"budget={budget}",
            f"data={data}",
            "logger=none",
            "trainer.progress=false",
            f"run_dir={rd}",
            "mixer=snr_probe",
            f"mixer.tokens={tokens}",
            f"mixer.hessians={hessians}",
            f"mixer.model_name={model}",
            "eval.limit=0.01",
            "trainer.save_final_model=false",
            "trainer.eval_every=0",
        ]
    )
    SNRProbe.results = []
    try:
        run(cfg, quiet=True)
    except _Done:
        pass
    return list(SNRProbe.results)


def plot(rows: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a3, a2) = plt.subplots(1, 3, figsize=(15, 4.2))
    for model, hessian in sorted({(r["model"], r["hessian"]) for r in rows}):
        rs = sorted((r for r in rows if r["model"] == model and r["hessian"] == hessian), key=lambda r: r["tokens"])
        x = [r["tokens"] for r in rs]
        line = a1.plot(x, [r["reliability"] for r in rs], marker="o", label=f"{model}, H⁻¹={hessian}: Pearson")[0]
        if all("spearman" in r for r in rs):  # a few large entries can carry Pearson's r: the ranks too
            a1.plot(
                x,
                [r["spearman"] for r in rs],
                marker="s",
                ls="--",
                color=line.get_color(),
                label=f"{model}, H⁻¹={hessian}: Spearman",
            )
        a3.plot(x, [r["mixture_l1"] for r in rs], marker="o", label=f"{model}, H⁻¹={hessian}")
        a2.plot(x, [r["cost_pct"] for r in rs], marker="o", label=f"{model}" if hessian == rs[0]["hessian"] else None)
    a1.axhline(0.8, color="gray", ls="--", lw=1)
    a1.set_xscale("log", base=2)
    a1.set_xlabel("tokens per domain gradient sample (targets: half of each dev split)")
    a1.set_ylabel("split-half reliability of S's entries")
    low = min(min(r["reliability"], r.get("spearman", 1.0)) for r in rows)
    a1.set_ylim(min(0.0, low - 0.05), 1.02)
    a1.legend(fontsize=8)
    a1.set_title("Influence matrix reliability at the first boundary", fontsize=10)
    a3.set_xscale("log", base=2)
    a3.set_xlabel("tokens per domain gradient sample")
    a3.set_ylabel("L1 between the two halves' TiKMiX-D mixtures")
    a3.set_ylim(bottom=0)
    a3.set_title("What the noise does to the decision", fontsize=10)
    a3.legend(fontsize=8)
    a2.axhline(10, color="gray", ls="--", lw=1)
    a2.set_xscale("log", base=2)
    a2.set_yscale("log")
    a2.set_xlabel("tokens per domain gradient sample")
    a2.set_ylabel("influence cost, % of the stage's training FLOPs")
    a2.set_title("Cost of one measurement", fontsize=10)
    a2.legend(fontsize=8)
    fig.tight_layout()
    p = out / "influence_snr.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tiny,20m")
    ap.add_argument("--tokens", default="2048,4096,8192,16384,32768")
    ap.add_argument("--hessians", default="identity,adam")
    ap.add_argument("--budget", default="demo")
    ap.add_argument("--data", default="synthetic", help="the data preset (results/influence_snr: synthetic_v2)")
    ap.add_argument("--out", type=Path, default=REPO / "results")
    ap.add_argument(
        "--replot",
        type=Path,
        nargs="+",
        default=None,
        help="influence_snr.json files: draw them together, measure nothing",
    )
    a = ap.parse_args()
    tokens = [int(x) for x in a.tokens.split(",")]
    rows = [r for p in a.replot or [] for r in json.loads(p.read_text())]
    for model in [] if a.replot else a.models.split(","):
        rows += measure(model, tokens, a.hessians.split(","), a.budget, a.data)
    a.out.mkdir(parents=True, exist_ok=True)
    if not a.replot:
        (a.out / "influence_snr.json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {plot(rows, a.out)} and {a.out / 'influence_snr.json'}")
    for r in rows:
        rel = min(r["reliability"], r.get("spearman", r["reliability"]))  # the lower of Pearson and Spearman
        ok = "meets" if rel >= 0.8 and r["cost_pct"] <= 10 else "    "
        print(
            f"{r['model']:>5} {r['hessian']:>8} {r['tokens']:>6}: r={r['reliability']:.3f} "
            f"spearman={r.get('spearman', float('nan')):.3f} "
            f"mixture L1 between halves={r['mixture_l1']:.2f} cost={r['cost_pct']:.1f}% {ok}"
        )


if __name__ == "__main__":
    main()
