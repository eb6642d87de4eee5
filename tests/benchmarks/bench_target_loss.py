"""Which ``targets.loss`` lets TiKMiX's influence tell the domains apart? (README, "Targets")

    python tests/benchmarks/bench_target_loss.py [--data synthetic_v3,synthetic_v4] [--seeds 0,1,2]
        [--boundaries 0.25,0.5,0.75] [--hessians identity,adam] [--losses answer,first_token,margin]
        [--mixture natural] [--model tiny] [--budget demo] [--out DIR] [--summarize A.json B.json ...] [--smoke]

For each data set and seed: train on a static mixture (``--mixture``: natural, TiKMiX-D's first stage, or
stratified) and, at each boundary (fractions of the budget's steps; the demo budget's first, 0.25, is step 75),
measure the influence matrix S[target, domain] of TiKMiX (mixer.tokens_per_domain = 2048 tokens per domain,
targets cut to ``--target-tokens`` = mixer.targets_tokens = 2048 input tokens) under each Hessian and each
``targets.loss``. Within one boundary and Hessian, every loss kind is scored against the same domain samples
(one GroupInfluence holds all the target gradients), so the kinds differ only in their targets. The run stops
after its last boundary (no final evaluation). Later boundaries show the same static mixture trained further,
not what TiKMiX would see after re-mixing.

Figures, per (data, boundary, Hessian, loss), mean ± sd over the seeds:
* look-alike ÷ real: S[task, look-alike] / S[task, real] on the real domain's task (rumors/facts on fact_recall,
  slang/grammar and, on v4, forum/grammar on agreement). A look-alike teaches the wrong answer: a loss that
  sees it rates it below the real domain (< 1), or harmful (< 0).
* useful vs useless: every target's row scaled by its largest |S| (Eq. 9's scale, so the loss kinds compare),
  then the mean over all targets of the domains that teach an in-domain task (arith, facts, grammar, copy;
  v4 also chain1-3) and of those that teach none and are no look-alike (boiler, noise, spam, logs), and the
  gap between them. "own gap": the same gap on each task's own teaching domains only.

Every S measured is written to ``<out>/bench_target_loss.json``; ``--summarize`` prints the table from such
files (e.g. v3 and v4 measured by two processes). ``--smoke``: a small corpus, budget=smoke, one seed and one
boundary (under a minute; the numbers mean nothing).
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

from eval.targets import build_targets  # noqa: E402
from tikmix.config import TARGET_LOSSES, EvalConfig, TargetsConfig, typed  # noqa: E402
from tikmix.data.synthetic import BENCHMARKS, TASK_DOMAINS  # noqa: E402
from tikmix.method.influence import GroupInfluence  # noqa: E402
from tikmix.mixer import Mixer, MixerConfig, register  # noqa: E402
from tikmix.mixer_helpers import take_tokens  # noqa: E402

# (look-alike, real domain, the real domain's task); a pair is used where both domains exist
LOOK_ALIKES = (("rumors", "facts", "fact_recall"), ("slang", "grammar", "agreement"), ("forum", "grammar", "agreement"))
USELESS = ("boiler", "noise", "spam", "logs")  # teach no task and are no look-alike of a domain that does


class _Done(Exception):
    pass


@dataclass
class TargetLossProbeConfig(MixerConfig):
    mixture: str = "natural"  # natural | stratified: the static mixture trained on
    boundaries: List[float] = field(default_factory=list)  # fractions of the budget's steps
    hessians: List[str] = field(default_factory=list)
    tokens_per_domain: int = 2048
    target_tokens: int = 2048


@register("target_loss_probe", TargetLossProbeConfig)
class TargetLossProbe(Mixer):
    """A static mixture; at each boundary, S under every Hessian for every loss kind's targets; stops after the last."""

    targets: dict[str, dict[str, list[dict]]] = {}  # loss kind -> target sets, built before the run
    results: list[dict] = []

    def initial_weights(self) -> np.ndarray:
        if self.c.mixture == "stratified":
            return np.full(self.m, 1.0 / self.m)
        tok = np.array([self.ctx.train_tokens[d] for d in self.domains], dtype=np.float64)
        return tok / tok.sum()

    def probe_steps(self) -> list[int]:
        return sorted({max(1, round(f * self.ctx.total_steps)) for f in self.c.boundaries})

    def on_probe(self, probe) -> None:
        c = self.c
        sets = {
            f"{loss}|{name}": take_tokens(batches, c.target_tokens)
            for loss, by_name in TargetLossProbe.targets.items()
            for name, batches in by_name.items()
        }
        for hessian in c.hessians:
            t0 = time.perf_counter()
            gi = GroupInfluence(
                probe.model,
                hessian=hessian,
                optimizer=probe.optimizer,
                device=probe.device,
                flops_per_token=probe.flops_per_token,
                autocast=probe.autocast,
            )
            gi.set_targets(sets)
            res = gi.matrix({d: (lambda d=d: probe.domain_batches(d, c.tokens_per_domain)) for d in self.domains})
            gi.release()
            for loss in TargetLossProbe.targets:
                rows = [i for i, t in enumerate(res.targets) if t.startswith(f"{loss}|")]
                TargetLossProbe.results.append(
                    {
                        "step": int(probe.step),
                        "fraction": probe.step / self.ctx.total_steps,
                        "hessian": hessian,
                        "loss": loss,
                        "targets": [res.targets[i].split("|", 1)[1] for i in rows],
                        "domains": list(res.domains),
                        "S": res.S[rows].tolist(),
                    }
                )
            print(f"[bench] step {probe.step} hessian={hessian}: {time.perf_counter() - t0:.1f}s", flush=True)
        if probe.step >= max(self.probe_steps()):
            raise _Done


def _smoke_docs(benchmark: str) -> str:
    doms = BENCHMARKS[benchmark]
    part = lambda n: "{" + ", ".join(f"{d}: {n}" for d in doms) + "}"  # noqa: E731
    return f"{{train: {part(150)}, val: {part(40)}, test: {part(20)}}}"


def _data_overrides(data: str) -> list[str]:
    """``synthetic_v3`` is the default benchmark's preset, ``data=synthetic`` (pinned to v3); others are presets."""
    return ["data=synthetic", "data.synthetic.benchmark=v3"] if data == "synthetic_v3" else [f"data={data}"]


def measure(data: str, seed: int, a: argparse.Namespace, cache: Path) -> list[dict]:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import compose
    from hydra.core.config_store import ConfigStore

    from tikmix.data.shards import prepare_data
    from tikmix.run import run

    ConfigStore.instance().store(
        group="mixer", name="target_loss_probe", node=TargetLossProbeConfig(name="target_loss_probe")
    )
    ov = [
        f"model={a.model}",
        f"budget={a.budget}",
        *_data_overrides(data),
        f"seed={seed}",
        "logger=none",
        "trainer.progress=false",
        "trainer.save_final_model=false",
        "trainer.eval_every=0",
        "mixer=target_loss_probe",
        f"mixer.mixture={a.mixture}",
        f"mixer.boundaries={[float(x) for x in a.boundaries.split(',')]}",
        f"mixer.hessians={a.hessians.split(',')}",
        f"run_dir={Path(tempfile.mkdtemp()) / 'run'}",
    ]
    if a.cache_dir is not None:
        ov.append(f"data.cache_dir={a.cache_dir}")
    if a.smoke:
        bm = compose(ov).data.synthetic.benchmark
        ov += [
            f"data.cache_dir={cache}",
            f"data.synthetic.docs={_smoke_docs(bm)}",
            "data.tokenizer.vocab_size=512",
            "data.tokenizer.train_docs_per_domain=100",
            "trainer.val_tokens=512",
            "targets.tokens=1024",
        ]
    cfg = compose(ov)
    shards = prepare_data(cfg.data)

    def targets_for(loss: str) -> dict:
        c = compose([*ov, f"targets.loss={loss}"])
        t, e = typed(TargetsConfig, c.targets, "targets"), typed(EvalConfig, c.eval, "eval")
        return build_targets(t, e, shards, list(shards.domains), cfg.budget.seq_len, cfg.budget.micro_batch)

    TargetLossProbe.targets = {loss: targets_for(loss) for loss in a.losses.split(",")}
    TargetLossProbe.results = []
    t0 = time.perf_counter()
    try:
        run(cfg, quiet=True)
    except _Done:
        pass
    print(f"[bench] {data} seed {seed}: {time.perf_counter() - t0:.0f}s", flush=True)
    return [{"data": data, "seed": seed, **r} for r in TargetLossProbe.results]


def figures(r: dict) -> dict[str, float]:
    """The separation figures of one measured S (module doc)."""
    S = np.asarray(r["S"], dtype=np.float64)
    doms, tasks = r["domains"], [t.split("/", 1)[1] for t in r["targets"]]
    out: dict[str, float] = {}
    for fake, real, task in LOOK_ALIKES:
        if fake in doms and real in doms and task in tasks:
            s = S[tasks.index(task)]
            out[f"{fake}/{real}"] = float(s[doms.index(fake)] / s[doms.index(real)])
    scale = np.abs(S).max(axis=1, keepdims=True)
    N = S / np.where(scale > 0, scale, 1.0)
    useful = sorted({d for t in tasks for d in TASK_DOMAINS.get(t, ()) if d in doms})
    useless = [d for d in USELESS if d in doms]
    cols = lambda ds: [doms.index(d) for d in ds]  # noqa: E731
    out["useful"] = float(N[:, cols(useful)].mean())
    out["useless"] = float(N[:, cols(useless)].mean())
    out["gap"] = out["useful"] - out["useless"]
    own = [
        N[i, cols([d for d in TASK_DOMAINS[t] if d in doms])].mean() - N[i, cols(useless)].mean()
        for i, t in enumerate(tasks)
        if TASK_DOMAINS.get(t)
    ]
    out["own gap"] = float(np.mean(own))
    return out


def summarize(rows: list[dict]) -> None:
    keys = sorted({(r["data"], r["step"], r["hessian"]) for r in rows})
    for data, step, hessian in keys:
        sel = [r for r in rows if (r["data"], r["step"], r["hessian"]) == (data, step, hessian)]
        seeds = sorted({r["seed"] for r in sel})
        names = list(figures(sel[0]))
        print(f"\n{data}, step {step} ({sel[0]['fraction']:.2f} of the budget), H⁻¹={hessian}, seeds {seeds}")
        print(f"  {'targets.loss':<12}" + "".join(f"{n:>18}" for n in names))
        for loss in [k for k in TARGET_LOSSES if any(r["loss"] == k for r in sel)]:
            f = [figures(r) for r in sel if r["loss"] == loss]
            cells = []
            for n in names:
                v = np.array([x[n] for x in f])
                cells.append(f"{v.mean():>+9.2f} ± {v.std(ddof=1) if len(v) > 1 else 0:<5.2f}")
            print(f"  {loss:<12}" + "".join(f"{c:>18}" for c in cells))
    print(
        "\nlook-alike/real: S[task, look-alike] / S[task, real] on the real domain's task (< 1: the look-alike rated "
        "below the real domain; < 0: harmful). useful / useless: mean row-scaled S of the task-teaching domains / of "
        f"{', '.join(USELESS)} over all targets; gap = useful − useless; own gap: each task's own teachers − useless."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="synthetic_v3,synthetic_v4")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--boundaries", default="0.25,0.5,0.75", help="fractions of the budget's steps")
    ap.add_argument("--hessians", default="identity,adam")
    ap.add_argument("--losses", default=",".join(TARGET_LOSSES))
    ap.add_argument("--mixture", default="natural", choices=("natural", "stratified"))
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--budget", default="demo")
    ap.add_argument("--target-tokens", type=int, default=2048, dest="target_tokens")
    ap.add_argument("--cache-dir", default=None, help="data.cache_dir (default: the config's)")
    ap.add_argument("--out", type=Path, default=None, help="folder for bench_target_loss.json (default: a temp dir)")
    ap.add_argument("--summarize", type=Path, nargs="+", default=None, help="print the table of these files only")
    ap.add_argument("--smoke", action="store_true", help="small corpus, budget=smoke, one seed, one boundary")
    a = ap.parse_args()
    if a.summarize:
        summarize([r for p in a.summarize for r in json.loads(p.read_text())])
        return
    if a.smoke:
        a.budget, a.seeds, a.boundaries = "smoke", a.seeds.split(",")[0], "0.5"
        a.data = a.data.split(",")[0]
    out = a.out or Path(tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp()) / "cache"
    rows: list[dict] = []
    for data in a.data.split(","):
        for seed in [int(s) for s in a.seeds.split(",")]:
            rows += measure(data, seed, a, cache)
            (out / "bench_target_loss.json").write_text(json.dumps(rows))  # after each run: partial results survive
    summarize(rows)
    print(f"\nwrote {out / 'bench_target_loss.json'}")


if __name__ == "__main__":
    main()
