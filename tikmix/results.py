"""The end of a run: the final losses, results.json's record, the console summary, the W&B summary and figures,
and the Hugging Face export of the final model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from eval import figures, runs
from tikmix.config import RunConfig
from tikmix.data.tokenizer import save_tokenizer
from tikmix.errors import StorageError
from tikmix.report import log_results
from tikmix.trainer import Trainer, TrainState, eval_windows


def final_losses(trainer: Trainer, shards: Any, targets: dict[str, list[dict]], final_eval: str) -> dict[str, dict]:
    """What ``trainer.final_eval`` asks for after training: full = per-domain test and validation losses and the
    target losses; targets = the target losses only (booked as ``targets``: RegMix's proxies); none = nothing."""
    out: dict[str, dict] = {"test_loss": {}, "val_loss": {}, "target_loss": {}}
    if final_eval == "full":
        n = int(trainer.tcfg.test_tokens)
        out["test_loss"] = {
            d: trainer.eval_loss(eval_windows(shards.tokens(d, "test"), trainer.seq_len, n)) for d in trainer.domains
        }
        out["target_loss"] = {name: trainer.target_loss(batches) for name, batches in targets.items()}
        s = trainer.state
        out["val_loss"] = s.val_history[-1]["val_loss"] if s.val_history else trainer.val_losses()
    elif final_eval == "targets":
        with trainer.ledger.booked_as("eval", "targets"):
            out["target_loss"] = {name: trainer.target_loss(batches) for name, batches in targets.items()}
    return out


def assemble(
    rc: RunConfig,
    trainer: Trainer,
    state: TrainState,
    losses: Mapping[str, dict],
    train_tokens: dict[str, int],
    counts: dict,
    eval_entry: dict | None,
    world: int,
    total_time_s: float,
) -> dict[str, Any]:
    """results.json: what the run is, what it trained on, its losses, compute, throughput and the mixer's record."""
    domains, mixer = trainer.domains, trainer.mixer
    test_loss, target_loss = losses["test_loss"], losses["target_loss"]
    final_w = mixer.weights(trainer.total_steps)
    res = {
        "mixer": rc.mixer.name,
        "seed": rc.seed,
        "model": rc.model.name,
        "budget": rc.budget.name,
        "data": rc.data.source,
        "run_dir": str(trainer.run_dir),
        "domains": domains,
        "steps": state.step,
        "final_weights": {d: float(x) for d, x in zip(domains, final_w)},
        "weights_history": [{"step": h["step"], "weights": dict(zip(domains, h["w"]))} for h in state.weights_history],
        "val_loss": losses["val_loss"],
        "val_history": state.val_history,
        "test_loss": test_loss,
        "test_ppl": {d: float(np.exp(v)) for d, v in test_loss.items()},
        "target_loss": target_loss,
        "target_loss_mean": float(np.mean(list(target_loss.values()))) if target_loss else None,
        "tokens_seen": {d: int(x) for d, x in zip(domains, state.tokens_seen)},
        "train_tokens": train_tokens,
        "epochs": {d: float(x) / train_tokens[d] for d, x in zip(domains, state.tokens_seen)},
        "compute": trainer.ledger.summary(),
        "params": counts,
        "flops_per_token": trainer.flops_per_token,
        "wall_time_s": state.wall_time,
        "total_time_s": total_time_s,
        "skipped_steps": state.skipped,
        "mixer_history": mixer.history,
        "mixer_info": mixer.info,
        "fingerprint": trainer.fingerprint,
        "world_size": world,
        "dtype": trainer.dtype_choice.as_dict(),  # trainer.dtype as set, the autocast it resolved to, and why
        "compile": trainer.compile_summary(),  # trainer.compile as set, whether it compiled and why, compile_s
        # the peak FLOP/s used (config / table / measured) in the run's dtype (the other dtype's on a CPU), the mean MFU
        "mfu": trainer.mfu_summary(),
        "throughput": trainer.throughput_summary(),  # training tokens/s apart from the mixer's overhead
        # id, name, group, project: python -m eval and eval.tables attach to them
        "wandb": trainer.logger.wandb_info if trainer.logger is not None else None,
    }
    if eval_entry is not None:
        res["eval"] = eval_entry
    res["eval_history"] = state.eval_history
    return res


def log_final(logger: Any, res: Mapping[str, Any], final_eval: str, mixer_flops: float, step: int) -> None:
    """W&B: the final summary and per-domain table (full final evaluation), the final scalars, the mixer's history
    and info, and the run's own figures (tikmix.report.log_results with eval.tables' figures)."""
    if final_eval == "full":
        val_loss, domains = res["val_loss"], res["domains"]
        logger.summary(
            {
                "final/val_loss_mean": float(np.mean(list(val_loss.values()))),
                "final/test_ppl_mean": float(np.mean(list(res["test_ppl"].values()))),
                "compute/mixer_flops": mixer_flops,
            }
        )
        logger.table(
            "final/per_domain",
            ["domain", "weight", "tokens", "epochs", "val_loss", "test_ppl"],
            [
                [d, res["final_weights"][d], res["tokens_seen"][d], res["epochs"][d], val_loss[d], res["test_ppl"][d]]
                for d in domains
            ],
            step,  # at the last step: a table without one would advance W&B past it, and the scalars after it be lost
        )
    log_results(logger, res, step, figures=run_figures)


def run_figures(logger: Any, res: Mapping[str, Any], out: Path) -> None:
    """One run's mixture over training and influence over stages, drawn as eval.tables draws a sweep's (eval/figures.py)."""
    run = runs.Run(Path(str(res.get("run_dir", "."))), str(res.get("mixer")), res.get("seed"), "run", res=dict(res))
    for kind, paths in (
        ("mixture", figures.fig_mixtures([run], out, False)),
        ("influence", figures.fig_influence([run], out, False)),
    ):
        for p in paths or []:
            logger.images(f"figures/{kind}", [p])


def print_summary(res: dict) -> None:
    """The end of a run on the console: per-domain weight, tokens, epochs and losses, compute and throughput."""
    if not res["val_loss"]:  # trainer.final_eval: targets | none (a proxy run): no per-domain losses to show
        c = res["compute"]
        print(
            f"target loss {res['target_loss_mean']}; compute: train {c.get('train', 0):.3g} FLOPs, target loss "
            f"{c.get('targets', 0):.3g}; results: {res['run_dir']}/results.json"
        )
        return
    doms = res["domains"]
    w = max(8, max(len(d) for d in doms))
    print()
    print(f"{'domain':<{w}}  {'weight':>7}  {'tokens':>10}  {'epochs':>7}  {'val loss':>8}  {'test ppl':>9}")
    for d in doms:
        print(
            f"{d:<{w}}  {res['final_weights'][d]:>7.3f}  {res['tokens_seen'][d]:>10,}  {res['epochs'][d]:>7.2f}  "
            f"{res['val_loss'][d]:>8.3f}  {res['test_ppl'][d]:>9.2f}"
        )
    print(
        f"{'mean':<{w}}  {'':>7}  {sum(res['tokens_seen'].values()):>10,}  {'':>7}  "
        f"{np.mean(list(res['val_loss'].values())):>8.3f}  {np.mean(list(res['test_ppl'].values())):>9.2f}"
    )
    c = res["compute"]
    print(
        f"compute: train {c.get('train', 0):.3g} FLOPs, eval {c.get('eval', 0):.3g}, mixer {c.get('mixer_total', 0):.3g}; "
        f"wall {res['wall_time_s']:.1f}s; results: {res['run_dir']}/results.json"
    )
    tp = res.get("throughput") or {}
    if tp.get("train_tokens_per_s"):
        mfu = f", MFU {tp['train_mfu']:.1%}" if tp.get("train_mfu") else ""
        m = res.get("mfu") or {}
        if mfu and m.get("dtype"):  # which peak it is against, and on a CPU the other dtype's
            other = m.get("other_peak")
            also = f", {other['dtype']} peak {other['peak_flops']:.3g}" if other else ""
            mfu += f" of the {m['dtype']} peak ({m['peak_flops']:.3g} FLOP/s{also})"
        comp = res.get("compile") or {}
        if comp.get("compile_s") is not None:
            mfu += f"; compile {comp['compile_s']:.1f}s included"
        over = (
            f"; mixer overhead {tp['mixer_time_s']:.1f}s ({tp['mixer_share']:.0%} of the run)"
            if tp.get("mixer_time_s", 0) > 0.05
            else ""
        )
        print(
            f"throughput: {tp['train_tokens_per_s']:,.0f} tokens/s over {tp['train_time_s']:.1f}s of training steps{mfu}{over}"
        )


def save_hf(model: torch.nn.Module, tokenizer: Any, out: Path) -> None:
    """Save the final model in Hugging Face format (+ tokenizer), atomically (tmp folder, then rename)."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" for one shard: noise between the bar and the table
    try:
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp, model_max_length=model.config.max_position_embeddings)
    except Exception as e:  # noqa: BLE001 — safetensors reports a full disk as its own error types
        shutil.rmtree(tmp, ignore_errors=True)
        raise StorageError(
            f"cannot write the final model {out}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
            "training is checkpointed: free space and run the same command to finish"
        ) from None
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
