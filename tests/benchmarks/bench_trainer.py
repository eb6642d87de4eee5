"""Trainer throughput against a bare PyTorch loop, sampler throughput, peak memory of the default run.

Run by hand (not collected by pytest):  python tests/benchmarks/bench_trainer.py [--model tiny] [--steps 30]
Figures are ratios measured in the same process, blocks interleaved (A B A B ...), so machine noise hits
both sides alike. Targets (issue 1): trainer/bare >= 0.9 at model=tiny on CPU; sampler >= 20x the trainer.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.conftest import compose  # noqa: E402
from tikmix.ledger import Ledger  # noqa: E402
from tikmix.mixer import MixerContext, build_mixer  # noqa: E402
from tikmix.model import build_model, flops_per_token  # noqa: E402
from tikmix.sampler import MixtureSampler  # noqa: E402
from tikmix.trainer import Trainer  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--budget", default="demo")
    ap.add_argument("--steps", type=int, default=20, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    from tikmix.data.shards import prepare_data

    tmp = Path(tempfile.mkdtemp())
    cfg = compose([f"model={args.model}", f"budget={args.budget}", "logger=none", f"run_dir={tmp / 'run'}", "trainer.progress=false"])
    shards = prepare_data(cfg.data)
    doms = shards.domains
    b = cfg.budget
    arrays = [shards.tokens(d, "train") for d in doms]
    sampler = MixtureSampler(arrays, b.seq_len, b.batch_size, 0, doms)
    model = build_model(cfg.model, shards.vocab_size, 0)
    fpt = flops_per_token(model, b.seq_len)
    ctx = MixerContext(doms, {d: len(a) for d, a in zip(doms, arrays)}, 1000, b.seq_len * b.batch_size, b.seq_len, 0)
    mixer = build_mixer({"name": "stratified"}, doms, ctx)
    container = OmegaConf.to_container(cfg, resolve=True)
    tr = Trainer(container, model, mixer, sampler, doms, {}, {}, 1000, [], tmp / "run", Ledger(), None, torch.device("cpu"), fpt, "x")
    w = mixer.weights(0)

    # the bare loop: same model object's architecture, its own copy of weights, same batch shapes, HF loss
    bare = build_model(cfg.model, shards.vocab_size, 0)
    opt = torch.optim.AdamW(bare.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    fixed = [torch.from_numpy(sampler.batch(i, w)[0]) for i in range(4)]
    mb = b.micro_batch

    def bare_step(i: int) -> None:
        x = fixed[i % 4]
        opt.zero_grad(set_to_none=True)
        for j in range(0, len(x), mb):
            out = bare(input_ids=x[j : j + mb, :-1], labels=x[j : j + mb, :-1])
            (out.loss * (min(mb, len(x) - j) / len(x))).backward()
        torch.nn.utils.clip_grad_norm_(bare.parameters(), 1.0)
        opt.step()

    tokens_per_step = b.seq_len * b.batch_size
    for i in range(3):  # warm-up both
        tr.train_step(i, w)
        bare_step(i)
    t_tr, t_bare = 0.0, 0.0
    step = 3
    for _ in range(args.blocks):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            tr.train_step(step, w)
            step += 1
        t_tr += time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(args.steps):
            bare_step(i)
        t_bare += time.perf_counter() - t0
    n = args.blocks * args.steps * tokens_per_step
    tps_tr, tps_bare = n / t_tr, n / t_bare

    t0 = time.perf_counter()
    k = 0
    while time.perf_counter() - t0 < 2.0:
        sampler.batch(10_000 + k, w)
        k += 1
    tps_sampler = k * tokens_per_step / (time.perf_counter() - t0)

    print(f"model={args.model} budget={args.budget} batch={b.batch_size}x{b.seq_len} micro={mb} threads={torch.get_num_threads()}")
    print(f"trainer tokens/s       {tps_tr:12,.0f}")
    print(f"bare loop tokens/s     {tps_bare:12,.0f}")
    print(f"ratio trainer/bare     {tps_tr / tps_bare:12.3f}   (target >= 0.9)")
    print(f"sampler tokens/s       {tps_sampler:12,.0f}")
    print(f"ratio sampler/trainer  {tps_sampler / tps_tr:12.1f}   (target >= 20)")

    if not args.skip_memory:
        rd = tmp / "default"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(REPO / "train.py"), "logger=none", f"hydra.run.dir={rd}", "trainer.progress=false"],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"default run: peak RSS {peak:,.0f} MiB, wall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
