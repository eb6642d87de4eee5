"""Trainer throughput and MFU against a bare PyTorch loop, sampler throughput, peak memory of the default run.

Run by hand (not collected by pytest):
    python tests/benchmarks/bench_trainer.py                      # model=tiny and model=20m, then the memory run
    python tests/benchmarks/bench_trainer.py --models tiny --steps 30 --skip-memory
    python tests/benchmarks/bench_trainer.py --device cuda --models 160m,1b --skip-memory   # one GPU, bf16
    OMP_NUM_THREADS=1 python tests/benchmarks/bench_trainer.py --dtypes fp32,bf16 --threads 1
        # trainer steps in fp32 vs bf16 autocast (trainer.dtype), interleaved, per row: tiny, 20m, 60m at small
        # batches, the tiny shape at hidden 192 and 256 (h<width>), RegMix's proxy; prints the bf16/fp32 ratio
        # (the evidence for trainer.cpu_bf16_min_hidden) and both matmul peaks
On a GPU (--device cuda) both loops train in bf16 autocast with fused AdamW (the trainer's GPU path), batches
are moved to the device, and MFU is against the dense bf16 peak of tikmix.perf's table for a known GPU (else
a bf16 matmul peak measured on it); --micro-batch sets the micro-batch for models that need it.
Figures are ratios measured in the same process, short blocks interleaved (A B A B ...), so machine noise
hits both sides alike; the trainer/bare ratio is the median of the per-pair ratios (a load change on the
machine moves one pair, not the figure) beside the ratio of total times. MFU of both loops is the training FLOPs/token (6N + attention, tikmix.model) x tokens/s
over the fp32 matmul peak measured in the same process (tikmix.perf, best of the measurements taken before
and after each model). model=20m runs a smaller batch (budget.batch_size=8) and fewer steps per block to stay at a
couple of minutes on a 2-core CPU. --threads pins torch's intra-op threads (default: torch's choice). Targets (issue 1): trainer/bare >= 0.9 at model=tiny on CPU; sampler >=
20x the trainer.
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

from omegaconf import OmegaConf  # noqa: E402

from tests.conftest import compose  # noqa: E402
from tikmix.config import BudgetConfig, TrainerConfig  # noqa: E402
from tikmix.ledger import Ledger  # noqa: E402
from tikmix.mixer import MixerContext, build_mixer  # noqa: E402
from tikmix.model import build_model, flops_per_token, model_section  # noqa: E402
from tikmix.perf import measure_matmul_peak, resolve_peak  # noqa: E402
from tikmix.sampler import MixtureSampler  # noqa: E402
from tikmix.trainer import RunPlan, RunServices, TrainData, Trainer, adamw_extra_kwargs  # noqa: E402

# per model: extra overrides and default steps per timed block (20m: ~2.5 s per 1k-token step on a 2-core CPU)
PRESETS = {"tiny": ([], 10), "20m": (["budget.batch_size=8", "budget.micro_batch=8"], 2)}


def build_trainer(model_name: str, extra: list[str], dev: torch.device, tmp: Path, name: str = "run"):
    """A Trainer of ``model=<model_name>`` with overrides ``extra`` on the synthetic data (stratified mixer, no
    logger), its composed config, sampler and mixer."""
    from tikmix.data.shards import prepare_data

    cfg = compose(
        [
            f"model={model_name}",
            "logger=none",
            f"run_dir={tmp / name}",
            "trainer.progress=false",
            *extra,
        ]
    )
    shards = prepare_data(cfg.data)
    doms = shards.domains
    b = cfg.budget
    arrays = [shards.tokens(d, "train") for d in doms]
    sampler = MixtureSampler(arrays, b.seq_len, b.batch_size, 0, doms)
    model = build_model(model_section(cfg.model), shards.vocab_size, 0).to(dev)
    fpt = flops_per_token(model, b.seq_len)
    ctx = MixerContext(doms, {d: len(a) for d, a in zip(doms, arrays)}, 1000, b.seq_len * b.batch_size, b.seq_len, 0)
    mixer = build_mixer({"name": "stratified"}, doms, ctx)
    container = OmegaConf.to_container(cfg, resolve=True)
    tr = Trainer(
        TrainerConfig(**container["trainer"]),
        BudgetConfig(**container["budget"]),
        model,
        mixer,
        TrainData(sampler, {}, {}),
        RunPlan(doms, 1000, [], tmp / name, "x"),
        RunServices(Ledger()),
        dev,
        fpt,
    )
    return tr, cfg, shards, sampler, mixer


def bench_model(model_name: str, args: argparse.Namespace, tmp: Path) -> dict:
    extra, default_steps = PRESETS.get(model_name, ([], 10))
    steps = args.steps or default_steps
    dev = torch.device(args.device)
    if dev.type == "cuda":
        extra = [e for e in extra if not e.startswith("budget.")]  # the GPU runs the budget's own batch
    if args.micro_batch:
        extra = [*extra, f"budget.micro_batch={args.micro_batch}"]
    tr, cfg, shards, sampler, mixer = build_trainer(model_name, [f"budget={args.budget}", *extra], dev, tmp)
    fpt, b = tr.flops_per_token, cfg.budget
    w = mixer.weights(0)

    # the bare loop: same model object's architecture, its own copy of weights, same batch shapes, HF loss
    bare = build_model(model_section(cfg.model), shards.vocab_size, 0).to(dev)
    opt = torch.optim.AdamW(bare.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, **adamw_extra_kwargs(dev))
    fixed = [torch.from_numpy(sampler.batch(i, w)[0]).to(dev) for i in range(4)]
    amp = tr.amp_dtype  # the trainer's autocast dtype (trainer.dtype resolved for this device and model)
    mb = b.micro_batch

    def bare_step(i: int) -> None:
        x = fixed[i % 4]
        opt.zero_grad(set_to_none=True)
        for j in range(0, len(x), mb):
            with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                out = bare(input_ids=x[j : j + mb, :-1], labels=x[j : j + mb, :-1])
            (out.loss * (min(mb, len(x) - j) / len(x))).backward()
        torch.nn.utils.clip_grad_norm_(bare.parameters(), 1.0)
        opt.step()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def device_peak() -> tuple[float, str]:
        if dev.type == "cuda":
            p = resolve_peak(None, dev, amp or torch.float32)
            return p.flops, f"{p.source}: {p.detail}"
        return measure_matmul_peak("cpu", torch.float32)

    peak, peak_how = device_peak()
    tokens_per_step = b.seq_len * b.batch_size
    t_start = time.perf_counter()
    for i in range(2):  # warm-up both
        tr.train_step(i, w)
        bare_step(i)
    t_tr, t_bare, pair_ratios = 0.0, 0.0, []
    step = 2
    for _ in range(args.blocks):
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            tr.train_step(step, w)
            step += 1
        sync()
        dt_tr = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(steps):
            bare_step(i)
        sync()
        dt_bare = time.perf_counter() - t0
        t_tr, t_bare = t_tr + dt_tr, t_bare + dt_bare
        pair_ratios.append(dt_bare / dt_tr)  # trainer speed / bare speed in this pair
    n = args.blocks * steps * tokens_per_step
    tps_tr, tps_bare = n / t_tr, n / t_bare

    t0 = time.perf_counter()
    k = 0
    while time.perf_counter() - t0 < 2.0:
        sampler.batch(10_000 + k, w)
        k += 1
    tps_sampler = k * tokens_per_step / (time.perf_counter() - t0)
    peak_after, _ = device_peak()
    peak = max(peak, peak_after)
    return {
        "model": model_name,
        "budget": args.budget,
        "batch": f"{b.batch_size}x{b.seq_len}",
        "micro": mb,
        "steps": f"{args.blocks}x{steps}",
        "fpt": fpt,
        "tps_tr": tps_tr,
        "tps_bare": tps_bare,
        "pairs": len(pair_ratios),
        "ratio_median": float(np.median(pair_ratios)),
        "ratio_range": (min(pair_ratios), max(pair_ratios)),
        "tps_sampler": tps_sampler,
        "peak": peak,
        "peak_how": peak_how,
        "wall": time.perf_counter() - t_start,
    }


# --dtypes: per row, extra overrides and steps per timed block. The presets at a batch that keeps a block to a few
# seconds on one core; the hidden-size sweep keeps the tiny preset's shape (4 layers, 4 heads, intermediate
# 2.75 x hidden) and budget and varies the width; regmix-1m is RegMix's proxy (the widest sub-run by default).
DTYPE_PRESETS = {
    "tiny": ("tiny", [], 4),
    "20m": ("20m", ["budget.batch_size=8", "budget.micro_batch=8"], 2),
    "60m": ("60m", ["budget.batch_size=4", "budget.micro_batch=4"], 1),
    "regmix-1m": (
        "tiny",
        [
            "model.hidden_size=256",
            "model.num_layers=2",
            "model.num_heads=8",
            "model.num_kv_heads=8",
            "model.intermediate_size=512",
            "model.tie_embeddings=false",
        ],
        4,
    ),
}


def dtype_row(label: str) -> tuple[str, list[str], int]:
    """A --dtypes row: a preset of DTYPE_PRESETS, or ``h<width>`` (the tiny preset at that hidden size)."""
    if label in DTYPE_PRESETS:
        return DTYPE_PRESETS[label]
    h = int(label.lstrip("h"))
    inter = int(round(2.75 * h / 32)) * 32
    return "tiny", [f"model.hidden_size={h}", f"model.intermediate_size={inter}"], 4


def bench_dtypes(label: str, dtypes: list[str], args: argparse.Namespace, tmp: Path) -> dict:
    """Training steps of one model in each of ``dtypes`` (trainer.dtype=fp32 / bf16), one Trainer per dtype, short
    blocks interleaved (A B A B ...); per dtype tokens/s, and each dtype's speed over the first's (median of
    the per-pair ratios)."""
    model_name, extra, default_steps = dtype_row(label)
    steps = args.steps or default_steps
    dev = torch.device(args.device)
    trainers = [
        build_trainer(model_name, [f"budget={args.budget}", *extra, f"trainer.dtype={d}"], dev, tmp, f"{label}-{d}")
        for d in dtypes
    ]
    w = trainers[0][4].weights(0)
    cfg = trainers[0][1]
    tokens_per_step = cfg.budget.seq_len * cfg.budget.batch_size
    step = 0
    for tr, *_ in trainers:  # warm-up: allocator, BLAS and oneDNN kernels of each dtype
        tr.train_step(0, w)
        tr.train_step(1, w)
    times = [[] for _ in dtypes]
    t_start = time.perf_counter()
    step = 2
    for _ in range(args.blocks):
        for k, (tr, *_) in enumerate(trainers):
            t0 = time.perf_counter()
            for i in range(steps):
                tr.train_step(step + i, w)
            times[k].append(time.perf_counter() - t0)
        step += steps
    n = steps * tokens_per_step
    return {
        "label": label,
        "hidden": int(cfg.model.hidden_size),
        "batch": f"{cfg.budget.batch_size}x{cfg.budget.seq_len}",
        "steps": f"{args.blocks}x{steps}",
        "tps": [n * len(t) / sum(t) for t in times],
        "ratio": [float(np.median(np.asarray(times[0]) / np.asarray(t))) for t in times],
        "range": [
            (float(min(np.asarray(times[0]) / t)), float(max(np.asarray(times[0]) / t))) for t in map(np.asarray, times)
        ],
        "wall": time.perf_counter() - t_start,
    }


def main_dtypes(args: argparse.Namespace) -> None:
    dtypes = args.dtypes.split(",")
    tmp = Path(tempfile.mkdtemp())
    peaks = {d: measure_matmul_peak(args.device, DTYPE_OF[d])[0] for d in dtypes}
    print(
        f"threads={torch.get_num_threads()}  matmul peaks: "
        + ", ".join(f"{d} {p / 1e9:,.1f} GFLOP/s" for d, p in peaks.items())
        + f"  (1024x1024; {dtypes[-1]}/{dtypes[0]} = {peaks[dtypes[-1]] / peaks[dtypes[0]]:.2f})"
    )
    for label in args.models.split(","):
        r = bench_dtypes(label, dtypes, args, tmp)
        speeds = "  ".join(f"{d} {t:,.0f} tok/s" for d, t in zip(dtypes, r["tps"]))
        rel = "  ".join(
            f"{d}/{dtypes[0]} {x:.2f} (pairs {lo:.2f}-{hi:.2f})"
            for d, x, (lo, hi) in zip(dtypes[1:], r["ratio"][1:], r["range"][1:])
        )
        print(
            f"{r['label']:>10} hidden={r['hidden']:<4} batch={r['batch']} blocks x steps={r['steps']}: {speeds}  "
            f"{rel}  ({r['wall']:.0f} s)",
            flush=True,
        )


DTYPE_OF = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", "--model", default="tiny,20m", help="comma-separated model presets")
    ap.add_argument("--budget", default="demo")
    ap.add_argument("--steps", type=int, default=None, help="steps per timed block (default: tiny 10, 20m 2)")
    ap.add_argument("--blocks", type=int, default=6, help="interleaved pairs of blocks (trainer, bare)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (bf16 autocast, fused AdamW, table peak)")
    ap.add_argument(
        "--micro-batch", type=int, default=None, help="override budget.micro_batch (large models on one GPU)"
    )
    ap.add_argument(
        "--dtypes",
        default=None,
        help="e.g. fp32,bf16: time training steps per dtype instead (rows: --models from tiny, 20m, 60m, "
        "regmix-1m, h<width>; default tiny,20m,60m,h192,h256,regmix-1m)",
    )
    args = ap.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dtypes:
        if args.models == "tiny,20m":
            args.models = "tiny,20m,60m,h192,h256,regmix-1m"
        main_dtypes(args)
        return

    tmp = Path(tempfile.mkdtemp())
    rows = [bench_model(m, args, tmp) for m in args.models.split(",")]
    peak = max(r["peak"] for r in rows)  # the best matmul rate seen this run: the machine's peak
    how = max(rows, key=lambda r: r["peak"])["peak_how"]
    each = ", ".join(f"{r['peak'] / 1e9:.1f}" for r in rows)
    print(
        f"threads={torch.get_num_threads()}  matmul peak {peak / 1e9:,.1f} GFLOP/s ({how}; best before/after each "
        f"model: {each})"
    )
    for r in rows:
        mfu_tr, mfu_bare = r["fpt"] * r["tps_tr"] / peak, r["fpt"] * r["tps_bare"] / peak
        print(
            f"model={r['model']} budget={r['budget']} batch={r['batch']} micro={r['micro']} blocks x steps={r['steps']} "
            f"FLOPs/token={r['fpt']:.3g} ({r['wall']:.0f} s)"
        )
        print(f"  trainer tokens/s       {r['tps_tr']:12,.0f}   MFU {mfu_tr:6.1%}")
        print(f"  bare loop tokens/s     {r['tps_bare']:12,.0f}   MFU {mfu_bare:6.1%}")
        lo, hi = r["ratio_range"]
        print(
            f"  ratio trainer/bare     {r['ratio_median']:12.3f}   (target >= 0.9; median of {r['pairs']} "
            f"pairs, range {lo:.3f}-{hi:.3f}; ratio of total times {r['tps_tr'] / r['tps_bare']:.3f})"
        )
        print(f"  sampler tokens/s       {r['tps_sampler']:12,.0f}")
        print(f"  ratio sampler/trainer  {r['tps_sampler'] / r['tps_tr']:12.1f}   (target >= 20)")

    if not args.skip_memory:
        rd = tmp / "default"
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, str(REPO / "train.py"), "logger=none", f"hydra.run.dir={rd}", "trainer.progress=false"],
            cwd=REPO,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        peak_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"default run: peak RSS {peak_rss:,.0f} MiB, wall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
