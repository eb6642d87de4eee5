"""What a run will cost, printed before it trains: its FLOPs and a wall-time lower bound at the device's peak.

Training FLOPs are the ledger's (flops_per_token x tokens, 6·N + attention); evaluation passes (validation at
``trainer.eval_every`` and at the end, test, target losses) count a third of that per token, as the ledger
charges them. The mixer's own search (probes, proxies) and the downstream lm-eval tasks are not known before
they run and are left out (the line says so). The time is FLOPs / peak FLOP/s: a lower bound, since no run
reaches its device's peak (this suite measured 57-73 % MFU on a CPU).
"""

from __future__ import annotations

from typing import Any, Mapping

# Past this many seconds at the peak, a run on a CPU is better moved to a GPU (README, "Scale").
CPU_HOUR_S = 3600.0


def eval_passes(total_steps: int, eval_every: int, final_val: bool) -> int:
    """How many per-domain validation passes a run makes: every eval_every steps, plus one at the end."""
    steps = set(range(eval_every, total_steps + 1, eval_every)) if eval_every else set()
    if final_val:
        steps.add(total_steps)
    return len(steps)


def run_flops(
    fpt: float,
    total_steps: int,
    tokens_per_step: int,
    val_tokens: int,
    n_val_passes: int,
    test_tokens: int,
    target_tokens: int,
) -> dict[str, float]:
    """{train, eval, total} FLOPs of a run: ``*_tokens`` are the tokens of one pass over all domains/sets."""
    train = fpt * total_steps * tokens_per_step
    evals = fpt / 3.0 * (val_tokens * n_val_passes + test_tokens + target_tokens)
    return {"train": train, "eval": evals, "total": train + evals}


def human_time(seconds: float) -> str:
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def estimate_line(flops: Mapping[str, float], peak: Any, device_type: str) -> str:
    """One console line: the FLOPs, the wall time at ``peak`` (a tikmix.perf.Peak, or None: MFU off) and,
    for a long run on a CPU, that a GPU is the place for it."""
    line = (
        f"[tikmix] compute: {flops['total']:.3g} FLOPs = train {flops['train']:.3g} + eval {flops['eval']:.3g} "
        f"(validation, test and target passes; the mixer's search and downstream tasks come on top)"
    )
    if peak is None or not peak.flops:
        return line + "; no peak FLOP/s to estimate the time against (trainer.peak_flops=0)"
    t = flops["total"] / peak.flops
    line += f"; at least {human_time(t)} at the {peak.source} peak of {peak.flops:.3g} FLOP/s"
    if device_type == "cpu" and t > CPU_HOUR_S:
        line += " - over an hour on this CPU: a GPU is the sensible place for this run"
    return line


def cost_estimate(trainer: Any, test_arrays: list, targets: dict[str, list[dict]], final_eval: str) -> str:
    """The run's FLOPs and its wall time at the device's peak, before training (tikmix.estimate)."""
    T, t = trainer.seq_len, trainer.tcfg
    full = final_eval == "full"
    val = sum(len(w) * T for w in trainer.val_windows.values())
    test = sum(max(1, min(int(t.test_tokens) // T, (len(a) - 1) // T)) * T for a in test_arrays) if full else 0
    tgt = sum(int(b["input_ids"].numel()) for bs in targets.values() for b in bs) if final_eval != "none" else 0
    flops = run_flops(
        trainer.flops_per_token,
        trainer.stop_step,  # a prefix (trainer.stop_at_stage) trains only to its boundary
        trainer.tokens_per_step,
        val,
        eval_passes(trainer.stop_step, int(t.eval_every or 0), full),
        test,
        tgt,
    )
    return estimate_line(flops, trainer.resolve_peak(), trainer.device.type)
