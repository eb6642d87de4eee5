"""How K-FAC's "rest" (embeddings, norms, tied LM head: the parameters without Kronecker factors) should be
preconditioned, judged against the exact damped Fisher on a small causal LM.

    python tests/benchmarks/bench_kfac_rest.py [--seeds 3]

The exact influence S*[v, d] = g_vᵀ (F + λ·mean eig(F)·I)⁻¹ g_d uses the model's true Fisher (the Gauss-Newton
matrix of the cross-entropy, F = E_t[J_tᵀ (diag p_t − p_t p_tᵀ) J_t]) of the same sample K-FAC is estimated
on, applied by conjugate gradients with Jacobian-vector products (no approximation but CG's tolerance). For each
``kfac_rest`` (identity = the rest unpreconditioned, as before; diag = the damped diagonal Fisher, the default)
it prints the correlation of S with S* over (domain) entries and the share of |S| each block carries, beside
S*'s own shares: the ground truth for "which blocks should carry the influence".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, jvp, vjp

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from tikmix.method.influence import GroupInfluence, block_kind  # noqa: E402


def fisher_solver(model, batches, damping: float):
    """x ↦ (F + λ·mean eig(F)·I)⁻¹ x by CG, F the per-token GGN of ``batches``; vectors as dicts of tensors."""
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach() for n, p in model.named_parameters()}
    n_lab = sum(b["input_ids"][:, 1:].numel() for b in batches)

    def Fv(v: dict) -> dict:
        out = {n: torch.zeros_like(params[n]) for n in names}
        for b in batches:
            f = lambda p: functional_call(model, p, (b["input_ids"],)).logits[:, :-1]  # noqa: E731
            logits, jv = jvp(f, (params,), (v,))
            p = torch.softmax(logits, -1)
            hjv = p * jv - p * (p * jv).sum(-1, keepdim=True)  # (diag p − ppᵀ) J v per position
            _, pull = vjp(f, params)
            g = pull(hjv)[0]
            for n in names:
                out[n] += g[n]
        return {n: out[n] / n_lab for n in names}

    dot = lambda a, b: sum(float((a[n] * b[n]).sum()) for n in names)  # noqa: E731
    rng = torch.Generator().manual_seed(0)
    probes = [
        {n: torch.randint(0, 2, params[n].shape, generator=rng).double() * 2 - 1 for n in names} for _ in range(8)
    ]
    mean_eig = np.mean([dot(z, Fv(z)) for z in probes]) / sum(p.numel() for p in params.values())  # Hutchinson
    lam = damping * mean_eig

    def solve(b: dict, iters: int = 300, tol: float = 1e-8) -> dict:
        x = {n: torch.zeros_like(b[n]) for n in names}
        r = {n: b[n].clone() for n in names}
        p = {n: r[n].clone() for n in names}
        rr = dot(r, r)
        for _ in range(iters):
            Ap = Fv(p)
            Ap = {n: Ap[n] + lam * p[n] for n in names}
            a = rr / dot(p, Ap)
            x = {n: x[n] + a * p[n] for n in names}
            r = {n: r[n] - a * Ap[n] for n in names}
            rr_new = dot(r, r)
            if rr_new < tol * tol * dot(b, b):
                break
            p = {n: r[n] + (rr_new / rr) * p[n] for n in names}
            rr = rr_new
        return x

    return solve


def grads(model, batches) -> dict:
    from test_influence import _summed_loss

    model.zero_grad()
    n = sum(b["labels"][:, 1:].numel() for b in batches)
    (sum(_summed_loss(model, b) for b in batches) / n).backward()
    g = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
    model.zero_grad()
    return g


def shares(contrib: dict) -> dict:
    tot = sum(contrib.values())
    out: dict[str, float] = {}
    for k, v in contrib.items():
        out[block_kind(k)] = out.get(block_kind(k), 0.0) + v / tot
    return out


def one_seed(seed: int, damping: float) -> dict:
    import test_influence as T

    model = T.tiny_llama(seed, torch.float64)
    model.config._attn_implementation = "eager"  # forward-mode AD through attention
    T.pretrain(model, steps=15, seed=seed)
    kfac_sample = T.batches_of(torch.cat([T.seqs(d, 6, 900 + 10 * seed + i) for i, d in enumerate(T.DOMAINS)]), b=8)
    target = T.batches_of(T.seqs("count", 16, 950 + seed))
    dom = {d: T.batches_of(T.seqs(d, 16, 970 + 10 * seed + i)) for i, d in enumerate(T.DOMAINS)}
    solve = fisher_solver(model, kfac_sample, damping)
    u = solve(grads(model, target))
    gd = {d: grads(model, b) for d, b in dom.items()}
    exact = np.array([sum(float((u[n] * g[n]).sum()) for n in u) for g in gd.values()])
    exact_blocks = {n: sum(abs(float((u[n] * g[n]).sum())) for g in gd.values()) for n in u}
    out = {"exact": {"S": exact, "share": shares(exact_blocks)}}
    for rest in ("identity", "diag"):
        gi = GroupInfluence(
            model, hessian="kfac", kfac_batches=kfac_sample * 4, damping=damping, kfac_fisher="sampled", kfac_rest=rest
        )
        gi.set_targets({"t": target})
        S = gi.matrix(dom).S[0]
        out[rest] = {"S": S, "share": gi.block_shares(block_kind), "corr": float(np.corrcoef(S, exact)[0, 1])}
        gi.release()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--damping", type=float, default=1e-3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    kinds = ("embedding", "attention", "mlp", "norm")
    print(f"{'seed':>4}  {'preconditioner':<22}  {'corr with exact':>15}  " + "".join(f"{k:>10}" for k in kinds))
    for s in range(a.seeds):
        r = one_seed(s, a.damping)
        for name in ("exact", "identity", "diag"):
            label = {"exact": "exact damped Fisher", "identity": "K-FAC, rest=identity", "diag": "K-FAC, rest=diag"}[
                name
            ]
            corr = f"{r[name]['corr']:.3f}" if "corr" in r[name] else "—"
            print(
                f"{s:>4}  {label:<22}  {corr:>15}  "
                + "".join(f"{100 * r[name]['share'].get(k, 0):>9.1f}%" for k in kinds)
            )


if __name__ == "__main__":
    main()
