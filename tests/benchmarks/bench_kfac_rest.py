"""How K-FAC's "rest" (the parameters without full Kronecker factors: embeddings, norms, a tied LM head, and Linear
layers with a factor over ``kfac_max_dim``) should be preconditioned, judged against the exact damped Fisher on a
small causal LM: ``--model tiny`` (default) = the 2-layer Llama of tests/test_influence.py (vocabulary 64, hidden 32,
MLP 64); ``--model small`` = the 1-layer Llama of tests/test_kfac_rest.py (vocabulary 64, hidden 16, MLP 32).

    python tests/benchmarks/bench_kfac_rest.py [--seeds 3] [--model tiny|small] [--rests identity,diag_v1,diag] [--tied]

The exact influence S*[v, d] = g_vᵀ (F + λ·mean eig(F)·I)⁻¹ g_d uses the model's true Fisher (the Gauss-Newton
matrix of the cross-entropy) of the same sample K-FAC is estimated on, applied by conjugate gradients with
Jacobian-vector products (tests/test_kfac_rest.py: no approximation but CG's tolerance). Targets: held-out text of
each of the 4 domains; groups: ``--samples`` independent samples of each domain (S is 4 × 4·samples).

Three cases, from two K-FAC runs per ``kfac_rest`` (every preconditioner here is block-diagonal over parameters, and
a block's estimate does not depend on which other blocks are factored, so a case can take each parameter's block
from the run where it has the treatment the case asks for):

* ``head factored``: ``kfac_max_dim=4096``: the rest is the embeddings and the norms;
* ``head in rest``: the LM head's block from the run below (its output, 64, is over the bound), every other block
  from 4096: what a real vocabulary does with the default 4096 while the hidden and MLP widths fit;
* ``head+MLP in rest``: ``kfac_max_dim=48`` (``small``: 24), so the MLPs' factors (64; 32) are over it too, as an
  11008-wide MLP is over 4096.

Per case and rest it prints the correlation of S with S* over all entries (``corr``), the mean over targets of the
correlation of a target's row (``row corr``: TiKMiX normalises each target's row, Eq. 9), the relative distance
from the fully factored K-FAC (``Δ K-FAC`` = ‖S − S_K‖/‖S_K‖, S_K the same rest with ``kfac_max_dim=4096``; 0 = the
memory bound does not change the answer) and the share of Σ|S| each kind of parameter carries, beside S*'s own shares. ``--tied`` ties the LM
head to the embeddings (the tied weight is never a separate Linear layer, so it is always in the rest: the cases are
``MLP factored`` and ``MLP in rest``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.test_influence import DOMAINS, batches_of, pretrain, seqs, tiny_llama  # noqa: E402
from tests.test_kfac_rest import exact_fisher_solver, mean_token_grad, small_lm  # noqa: E402
from tikmix.method.influence import GroupInfluence, block_kind  # noqa: E402

KINDS = ("embedding", "attention", "mlp", "norm", "lm_head")
CASES = ("head factored", "head in rest", "head+MLP in rest")


def contributions(P: list[dict], grads: list[dict]) -> dict[str, np.ndarray]:
    """Per parameter, its [targets, groups] contribution to S: ⟨P_v[param], g_d[param]⟩."""
    return {n: np.array([[float((p[n] * g[n]).sum()) for g in grads] for p in P], dtype=np.float64) for n in P[0]}


def held(gi: GroupInfluence) -> list[dict]:
    """The held (preconditioned) target gradients, per target, by parameter name."""
    out: list[dict] = [{} for _ in gi.targets]
    off = 0
    for (n, p), k in zip(gi.named, gi.sizes):
        for i in range(len(gi.targets)):
            out[i][n] = gi.held_targets[i, off : off + k].view_as(p).double()
        off += k
    return out


def metrics(c: dict[str, np.ndarray], exact: np.ndarray, kfac: np.ndarray | None) -> dict:
    S = sum(c.values())
    tot = sum(np.abs(v).sum() for v in c.values())
    share: dict[str, float] = {}
    for n, v in c.items():
        share[block_kind(n)] = share.get(block_kind(n), 0.0) + float(np.abs(v).sum() / tot)
    return {
        "corr": float(np.corrcoef(S.ravel(), exact.ravel())[0, 1]),
        "row": float(np.mean([np.corrcoef(S[i], exact[i])[0, 1] for i in range(len(S))])),
        "kfac": float(np.linalg.norm(S - kfac) / np.linalg.norm(kfac)) if kfac is not None else float("nan"),
        "share": share,
    }


def one_seed(seed: int, rests: list[str], damping: float, samples: int, tied: bool, which: str) -> dict:
    model = tiny_llama(seed, torch.float64) if which == "tiny" else small_lm(seed)
    small_dim = 48 if which == "tiny" else 24
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
        model.config.tie_word_embeddings = True
    model.config._attn_implementation = "eager"  # forward-mode AD through attention
    pretrain(model, steps=15, seed=seed)
    kfac_sample = batches_of(torch.cat([seqs(d, 6, 900 + 10 * seed + i) for i, d in enumerate(DOMAINS)]), b=8)
    targets = {d: batches_of(seqs(d, 16, 950 + 10 * seed + i)) for i, d in enumerate(DOMAINS)}
    groups = {
        f"{d}{k}": batches_of(seqs(d, 16, 970 + 100 * seed + 10 * k + i))
        for k in range(samples)
        for i, d in enumerate(DOMAINS)
    }
    g_groups = [mean_token_grad(model, b) for b in groups.values()]
    t0 = time.perf_counter()
    solve = exact_fisher_solver(model, kfac_sample, damping)
    exact_c = contributions([solve(mean_token_grad(model, b)) for b in targets.values()], g_groups)
    exact = sum(exact_c.values())
    out = {"exact": {"S": metrics(exact_c, exact, None)}, "exact_s": time.perf_counter() - t0}
    runs = {}
    for rest in rests:
        for md in (4096, small_dim):
            gi = GroupInfluence(
                model,
                hessian="kfac",
                kfac_batches=kfac_sample * 4,
                damping=damping,
                kfac_fisher="sampled",
                kfac_rest=rest,
                kfac_max_dim=md,
            )
            gi.set_targets(targets)
            runs[rest, md] = contributions(held(gi), g_groups)
            gi.release()
    names = list(exact_c)
    for rest in rests:
        full, small = runs[rest, 4096], runs[rest, small_dim]
        cases = {
            "head factored": full,
            "head in rest": {n: (small if n == "lm_head.weight" else full)[n] for n in names},
            "head+MLP in rest": small,
        }
        kfac = sum(full.values())
        out[rest] = {
            case: metrics(c, exact, kfac) for case, c in cases.items() if not (tied and case == "head in rest")
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--damping", type=float, default=1e-3)
    ap.add_argument("--samples", type=int, default=3, help="samples of each domain scored (groups = 4 × samples)")
    ap.add_argument("--rests", default="identity,diag_v1,diag")
    ap.add_argument("--tied", action="store_true")
    ap.add_argument("--model", choices=("tiny", "small"), default="tiny")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rests = a.rests.split(",")
    res = []
    for s in range(a.seeds):
        r = one_seed(s, rests, a.damping, a.samples, a.tied, a.model)
        res.append(r)
        print(f"seed {s}: exact influence by CG in {r['exact_s']:.0f}s", file=sys.stderr, flush=True)
    head = f"{'case':<17} {'kfac_rest':<9} {'corr':>6} {'row corr':>8} {'Δ K-FAC':>8}  " + "".join(
        f"{k:>10}" for k in KINDS
    )
    print(f"model {a.model}{', tied' if a.tied else ''}: mean over {a.seeds} seeds (shares: % of Σ|S|)\n{head}")

    def row(case: str, label: str, ms: list[dict]) -> None:
        m = {k: np.mean([x[k] for x in ms]) for k in ("corr", "row", "kfac")}
        sh = "".join(f"{100 * np.mean([x['share'].get(k, 0.0) for x in ms]):>9.1f}%" for k in KINDS)
        kf = "" if np.isnan(m["kfac"]) else f"{m['kfac']:.3f}"
        print(f"{case:<17} {label:<9} {m['corr']:>6.3f} {m['row']:>8.3f} {kf:>8}  {sh}")

    row("exact", "—", [r["exact"]["S"] for r in res])
    for case in CASES:
        if a.tied and case == "head in rest":
            continue
        label = {"head factored": "MLP factored", "head+MLP in rest": "MLP in rest"}[case] if a.tied else case
        for rest in rests:
            row(label, rest, [r[rest][case] for r in res])
        for rest in rests:  # per seed: the spread behind the means
            print(f"{'':<17} {rest:<9} corr per seed: " + " ".join(f"{r[rest][case]['corr']:.3f}" for r in res))


if __name__ == "__main__":
    main()
