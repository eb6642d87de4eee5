"""One run, end to end: config → data → model → mixer → trainer → test losses → results.json."""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tikmix.errors import CheckpointError, ConfigError, TikmixError
from tikmix.ledger import Ledger
from tikmix.mixer import MixerContext, build_mixer
from tikmix.model import build_model, flops_per_token, param_counts
from tikmix.runlog import RunLogger, write_json_atomic
from tikmix.sampler import MixtureSampler, check_budget
from tikmix.trainer import Preempted, Trainer, dist_info, eval_windows, resolve_device

# Keys that do not change what a run computes: a resumed run may differ in these.
_NON_TRAJECTORY = {"logger", "run_dir", "eval.limit", "eval.bootstrap_iters", "eval.stage_bootstrap_iters",
                   "eval.batch_size", "eval.max_batch_size", "eval.every_stage", "eval.log_level", "trainer.progress", "trainer.log_every", "trainer.ckpt_every",
                   "trainer.save_final_model", "trainer.max_wall_s", "trainer.peak_flops",
                   # compiled and eager runs compute the same model (equal within float tolerance, tested): a
                   # checkpoint of one resumes in the other
                   "trainer.compile", "trainer.compile_mode"}


def fingerprint(cfg: dict) -> str:
    c = json.loads(json.dumps(cfg, default=str))
    for k in _NON_TRAJECTORY:
        parts = k.split(".")
        d = c
        for p in parts[:-1]:
            d = d.get(p, {}) if isinstance(d, dict) else {}
        if isinstance(d, dict):
            d.pop(parts[-1], None)
    return hashlib.sha256(json.dumps(c, sort_keys=True).encode()).hexdigest()[:16]


def stage_steps_from(fracs: Any, total_steps: int) -> list[int]:
    fracs = list(fracs or [])
    for f in fracs:
        if not isinstance(f, (int, float)) or not 0 < f < 1:
            raise ConfigError("budget.stages", f"stage boundaries are fractions strictly between 0 and 1, got {fracs}")
    if fracs != sorted(fracs):
        raise ConfigError("budget.stages", f"stage boundaries must be increasing, got {fracs}")
    return sorted({s for s in (int(round(f * total_steps)) for f in fracs) if 0 < s < total_steps})


def check_repeats(max_epochs: Any, w: np.ndarray, domains: list[str], train_tokens: dict[str, int], total: int) -> None:
    """Refuse a mixture that would repeat some domain more than trainer.max_repeat_epochs times (static estimate)."""
    if max_epochs is None:
        return
    if not isinstance(max_epochs, (int, float)) or max_epochs <= 0:
        raise ConfigError("trainer.max_repeat_epochs", f"must be a positive number or null, got {max_epochs!r}")
    for d, x in zip(domains, w):
        ep = x * total / train_tokens[d]
        if ep > max_epochs:
            raise ConfigError(
                "trainer.max_repeat_epochs",
                f"the mixture gives domain {d!r} weight {x:.3f}, i.e. {ep:.1f} epochs over its {train_tokens[d]:,} tokens "
                f"(limit {max_epochs}); lower its weight or raise the limit",
            )


def check_number(field: str, v: Any, *, integer: bool = False, low: float | None = None, strict: bool = False,
                 high: float | None = None, high_strict: bool = False, null: bool = False) -> None:
    """Refuse a config value that is not a number in range (a string, a bool, nan), naming the field."""
    if v is None and null:
        return
    ok = not isinstance(v, bool) and isinstance(v, int if integer else (int, float)) and math.isfinite(v)
    ok = ok and (low is None or (v > low if strict else v >= low)) and (high is None or (v < high if high_strict else v <= high))
    if not ok:
        rng = [f"{'>' if strict else '>='} {low}"] if low is not None else []
        rng += [f"{'<' if high_strict else '<='} {high}"] if high is not None else []
        raise ConfigError(field, f"must be {'an integer' if integer else 'a number'}{' ' + ' and '.join(rng) if rng else ''}"
                                 f"{' or null' if null else ''}, got {v!r}")


_TRAINER_CHOICES = {"optimizer": ("adamw",), "schedule": ("cosine", "wsd", "constant"), "dtype": ("auto", "fp32", "bf16"),
                    "on_nonfinite": ("stop", "skip"), "parallel": ("ddp", "fsdp"), "final_eval": ("full", "targets", "none")}


def check_trainer(cfg: DictConfig) -> None:
    """Refuse bad trainer.* values (and budget.warmup_frac) before anything is written to the run dir."""
    t = OmegaConf.to_container(cfg.trainer, resolve=True) if isinstance(cfg.trainer, DictConfig) else dict(cfg.trainer)
    for key, allowed in _TRAINER_CHOICES.items():
        if key in t and t[key] not in allowed:
            raise ConfigError(f"trainer.{key}", f"unknown {t[key]!r}; allowed: {', '.join(allowed)}")
    for key in ("lr", "eps"):
        check_number(f"trainer.{key}", t.get(key), low=0, strict=True)
    check_number("trainer.weight_decay", t.get("weight_decay"), low=0)
    check_number("trainer.grad_clip", t.get("grad_clip"), low=0, null=True)
    for key in ("min_lr_ratio", "wsd_decay_frac"):
        check_number(f"trainer.{key}", t.get(key), low=0, high=1)
    check_number("trainer.log_every", t.get("log_every", 10), integer=True, low=1)
    for key in ("eval_every", "ckpt_every"):
        check_number(f"trainer.{key}", t.get(key, 0), integer=True, low=0)
    for key in ("val_tokens", "test_tokens"):
        check_number(f"trainer.{key}", t.get(key), integer=True, low=1)
    check_number("trainer.max_wall_s", t.get("max_wall_s"), low=0, null=True)  # 0, like null, means no limit
    betas = t.get("betas")
    if not isinstance(betas, list) or len(betas) != 2:
        raise ConfigError("trainer.betas", f"must be two numbers [beta1, beta2] in [0, 1), got {betas!r}")
    for i, x in enumerate(betas):
        check_number(f"trainer.betas[{i}]", x, low=0, high=1, high_strict=True)
    for key in ("save_final_model", "progress"):
        if not isinstance(t.get(key, True), bool):
            raise ConfigError(f"trainer.{key}", f"must be true or false, got {t[key]!r}")
    check_number("budget.warmup_frac", cfg.budget.get("warmup_frac", 0.0), low=0, high=1, high_strict=True)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (d.items() if isinstance(d, dict) else []):
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def checkpoint_mismatch(run_dir: Path, container: dict, ckpt: dict, model: torch.nn.Module) -> str:
    """What differs between the run that wrote a checkpoint and this command: the config keys (from the run
    dir's config.yaml, written when that run started), else the model's parameter shapes."""
    import yaml

    old_path = run_dir / "config.yaml"
    try:
        old = yaml.safe_load(old_path.read_text())
    except (OSError, yaml.YAMLError):
        old = None
    if isinstance(old, dict):
        a, b = _flat(old), _flat(json.loads(json.dumps(container, default=str)))
        skip = tuple(_NON_TRAJECTORY)
        absent = "(absent)"
        keys = sorted(k for k in set(a) | set(b) if not (k in skip or k.startswith(tuple(n + "." for n in skip)))
                      and a.get(k, absent) != b.get(k, absent))
        if keys:
            more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
            return ("; ".join(f"{k}: {a.get(k, absent)!r} there, {b.get(k, absent)!r} now" for k in keys[:6]) + more
                    + f" (there = {old_path})")
    mine = model.state_dict()
    theirs = ckpt.get("model") if isinstance(ckpt.get("model"), dict) else {}
    shapes = [f"{k} {list(v.shape)} there, {list(mine[k].shape)} now" for k, v in theirs.items()
              if k in mine and hasattr(v, "shape") and tuple(v.shape) != tuple(mine[k].shape)]
    if shapes:
        return "the model differs: " + "; ".join(shapes[:3]) + (f" and {len(shapes) - 3} more" if len(shapes) > 3 else "")
    return f"{old_path} is missing or unreadable, so what differs cannot be named"


def target_tasks(cfg: DictConfig) -> list[str]:
    """The task targets: ``targets.tasks``, where ``auto`` = the eval preset's in-domain tasks."""
    tasks = (cfg.get("targets") or {}).get("tasks", "auto")
    if tasks == "auto":
        return list(cfg.eval.get("in_domain") or []) if cfg.eval.get("name", "none") != "none" else []
    if tasks is None or isinstance(tasks, str):
        raise ConfigError("targets.tasks", f"auto, or a list of in-domain task names, got {tasks!r}")
    return list(tasks)


def targets_auto(cfg: DictConfig) -> bool:
    """True when the targets are the automatic per-domain held-out texts (no task targets, domains auto)."""
    return (cfg.get("targets") or {}).get("domains", "auto") == "auto" and not target_tasks(cfg)


def build_targets(cfg: DictConfig, shards: Any, domains: list[str], seq_len: int) -> dict[str, list[dict]]:
    """Target sets the mixers optimise for (methods.md, "Targets"), the same for every mixer of a comparison.

    ``targets.tasks``: benchmark-derived sets (a task's dev split, loss on the gold answer only); ``auto`` =
    the in-domain tasks of the eval preset. ``targets.domains``: held-out (val split) text of domains;
    ``auto`` = every domain when there are no task targets, else none.
    """
    tcfg = cfg.get("targets") or {}
    n_tokens = int(tcfg.get("tokens", 8192))
    mb = int(cfg.budget.micro_batch)
    tasks = target_tasks(cfg)
    names = tcfg.get("domains", "auto")
    if names == "auto":
        names = [] if tasks else domains
    elif names is None or isinstance(names, str):
        raise ConfigError("targets.domains", f"auto, or a list of domain names, got {names!r}")
    names = list(names)
    unknown = [d for d in names if d not in domains]
    if unknown:
        raise ConfigError("targets.domains", f"unknown domain(s) {unknown}; the data has {domains}")
    if not names and not tasks:
        raise ConfigError("targets", "no target sets: give targets.domains or targets.tasks (or leave them auto)")
    out: dict[str, list[dict]] = {}
    for d in names:
        w = eval_windows(shards.tokens(d, "val"), seq_len, n_tokens)
        x = torch.from_numpy(w[:, :-1])
        out[f"val/{d}"] = [{"input_ids": x[i : i + mb], "labels": x[i : i + mb]} for i in range(0, len(x), mb)]
    if tasks:
        from eval.targets import benchmark_targets

        out.update(benchmark_targets(list(tasks), cfg.eval, shards.tokenizer, seq_len, n_tokens, mb))
    return out


def _print_summary(res: dict) -> None:
    if not res["val_loss"]:  # trainer.final_eval: targets | none (a proxy run): no per-domain losses to show
        c = res["compute"]
        print(f"target loss {res['target_loss_mean']}; compute: train {c.get('train', 0):.3g} FLOPs, target loss "
              f"{c.get('targets', 0):.3g}; results: {res['run_dir']}/results.json")
        return
    doms = res["domains"]
    w = max(8, max(len(d) for d in doms))
    print()
    print(f"{'domain':<{w}}  {'weight':>7}  {'tokens':>10}  {'epochs':>7}  {'val loss':>8}  {'test ppl':>9}")
    for d in doms:
        print(f"{d:<{w}}  {res['final_weights'][d]:>7.3f}  {res['tokens_seen'][d]:>10,}  {res['epochs'][d]:>7.2f}  "
              f"{res['val_loss'][d]:>8.3f}  {res['test_ppl'][d]:>9.2f}")
    print(f"{'mean':<{w}}  {'':>7}  {sum(res['tokens_seen'].values()):>10,}  {'':>7}  "
          f"{np.mean(list(res['val_loss'].values())):>8.3f}  {np.mean(list(res['test_ppl'].values())):>9.2f}")
    c = res["compute"]
    print(f"compute: train {c.get('train', 0):.3g} FLOPs, eval {c.get('eval', 0):.3g}, mixer {c.get('mixer_total', 0):.3g}; "
          f"wall {res['wall_time_s']:.1f}s; results: {res['run_dir']}/results.json")


def init_distributed(device_name: str) -> tuple[int, int, str]:
    """Initialise torch.distributed under torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on GPUs."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_name != "cpu"
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist_info()
    if world > 1 and torch.cuda.is_available() and device_name in ("auto", "cuda"):
        device_name = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return rank, world, device_name


def run(cfg: DictConfig, quiet: bool = False, downstream_eval: bool = True) -> dict:
    t_start = time.perf_counter()
    try:
        OmegaConf.to_container(cfg, resolve=True)  # an interpolation that does not resolve is a user error
    except OmegaConfBaseException as e:
        raise ConfigError(getattr(e, "full_key", None) or "config", str(e).splitlines()[0]) from None
    rank, world, device_name = init_distributed(str(cfg.device))
    run_dir = Path(cfg.run_dir).resolve()
    if world > 1:  # every rank uses rank 0's run directory (Hydra's timestamped default may differ by a second)
        import torch.distributed as dist

        obj = [str(run_dir)]
        dist.broadcast_object_list(obj, src=0)
        run_dir = Path(obj[0])
    results_path = run_dir / "results.json"
    if results_path.exists():
        if quiet:
            return json.loads(results_path.read_text())
        print(f"[tikmix] {run_dir} already holds a finished run (results.json); nothing to do. "
              f"Use another hydra.run.dir to train again.")
        return json.loads(results_path.read_text())
    container = OmegaConf.to_container(cfg, resolve=True)
    seed = cfg.seed
    if not isinstance(seed, int):
        raise ConfigError("seed", f"must be an integer, got {seed!r}")
    device = resolve_device(device_name)
    check_trainer(cfg)
    # trainer.final_eval (absent = full): a proxy sub-run sets targets (RegMix: only the target loss is used) or
    # none, and then computes and is charged for nothing else: no validation/test passes, no downstream eval
    final_eval = str(cfg.trainer.get("final_eval", "full"))
    downstream_eval = downstream_eval and final_eval == "full" and str((cfg.get("eval") or {}).get("name") or "none") != "none"
    if downstream_eval:
        if world > 1 and cfg.trainer.get("parallel") == "fsdp":
            raise ConfigError("eval", "the in-process evaluation needs an unsharded model: run FSDP with eval=none "
                                      "and score final_model/ with `python -m eval <run dir>`")
        from eval.stage import preflight

        preflight(cfg.eval)  # the eval config, its task folders and tasks: refused now, not after training

    # data ----------------------------------------------------------------------------------------------
    from tikmix.data.shards import prepare_data

    shards = prepare_data(cfg.data)
    domains = list(shards.domains)
    b = cfg.budget
    seq_len = b.seq_len
    total_steps = check_budget(b.total_tokens, b.seq_len, b.batch_size, b.micro_batch, cfg.model.max_position_embeddings)
    stage_steps = stage_steps_from(b.get("stages"), total_steps)
    train_arrays = [shards.tokens(d, "train") for d in domains]
    train_tokens = {d: int(len(a)) for d, a in zip(domains, train_arrays)}
    sampler = MixtureSampler(train_arrays, seq_len, b.batch_size, seed, domains)

    # model ---------------------------------------------------------------------------------------------
    model = build_model(cfg.model, shards.vocab_size, seed, pad_id=shards.eos_id, eos_id=shards.eos_id)
    counts = param_counts(model)
    fpt = flops_per_token(model, seq_len)

    # mixer ---------------------------------------------------------------------------------------------
    ctx = MixerContext(
        domains=domains, train_tokens=train_tokens, total_steps=total_steps, tokens_per_step=seq_len * b.batch_size,
        seq_len=seq_len, seed=seed, stage_steps=stage_steps,
        human_weights=dict(cfg.data.human_weights) if cfg.data.get("human_weights") else None, run_dir=str(run_dir),
        targets_auto=targets_auto(cfg),
    )
    ledger = Ledger()
    ctx.run_subrun = make_subrun(cfg, ledger)
    ctx.charge = lambda flops, what: ledger.charge_mixer(what, flops)
    mixer = build_mixer(cfg.mixer, domains, ctx)
    targets = build_targets(cfg, shards, domains, seq_len)
    check_repeats(cfg.trainer.get("max_repeat_epochs"), mixer.weights(0), domains, train_tokens, total_steps * seq_len * b.batch_size)

    fp = fingerprint(container)
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    ckpt = None
    if ckpt_path.exists():
        from tikmix.checkpoint import load_checkpoint

        ckpt = load_checkpoint(ckpt_path)
        if ckpt.get("fingerprint") != fp:
            raise CheckpointError(
                f"{run_dir} holds a checkpoint of a different config: {checkpoint_mismatch(run_dir, container, ckpt, model)}. "
                f"Re-run with the same overrides to resume, or choose another hydra.run.dir"
            )

        if ckpt.get("world_size", 1) != world:
            raise CheckpointError(f"{ckpt_path} was written with {ckpt.get('world_size', 1)} processes; resume it with the same number (now {world})")
    run_dir.mkdir(parents=True, exist_ok=True)
    if ckpt is None and rank == 0:
        tmp = run_dir / ".config.yaml.tmp"
        tmp.write_text(OmegaConf.to_yaml(container))
        os.replace(tmp, run_dir / "config.yaml")
    name = f"{cfg.mixer.name}_s{seed}"
    logger = RunLogger(cfg.logger if rank == 0 else {"name": "none"}, run_dir, container, name,
                       resume_id=(ckpt or {}).get("wandb_id"), write_metrics=rank == 0)
    try:
        trainer = Trainer(
            container, model, mixer, sampler, domains, {d: shards.tokens(d, "val") for d in domains}, targets,
            total_steps, stage_steps, run_dir, ledger, logger, device, fpt, fp,
        )
        ctx.tokens_per_step = trainer.tokens_per_step
        if rank == 0:
            ranks = f" x {world} ranks ({trainer.parallel})" if world > 1 else ""
            print(f"[tikmix] mixer={cfg.mixer.name} model={cfg.model.name} ({counts['total']:,} params, "
                  f"{counts['non_embedding']:,} non-embedding) budget={b.name}: {total_steps} steps x "
                  f"{trainer.tokens_per_step:,} tokens; domains: {', '.join(domains)}; device={device}{ranks}; run dir {run_dir}")
        if downstream_eval and rank == 0:
            from eval.stage import stage_evaluator

            trainer.stage_eval = stage_evaluator(cfg.eval, shards.tokenizer, run_dir, logger, ledger, fpt)
        if ckpt is not None:
            trainer.load(ckpt)
            print(f"[tikmix] resumed from {ckpt_path} at step {trainer.state.step}/{total_steps}")
        else:
            mixer.prepare()
        trainer.state.wandb_id = logger.wandb_id
        state = trainer.fit()

        test_loss, val_loss, target_loss = {}, {}, {}
        if final_eval == "full":
            test_tokens = int(cfg.trainer.test_tokens)
            test_loss = {d: trainer.eval_loss(eval_windows(shards.tokens(d, "test"), seq_len, test_tokens)) for d in domains}
            target_loss = {name: trainer.target_loss(batches) for name, batches in targets.items()}
            val_loss = state.val_history[-1]["val_loss"] if state.val_history else trainer.val_losses()
        elif final_eval == "targets":
            with ledger.booked_as("eval", "targets"):
                target_loss = {name: trainer.target_loss(batches) for name, batches in targets.items()}
        final_w = mixer.weights(total_steps)
        if cfg.trainer.save_final_model and rank == 0:
            _save_hf(model, shards.tokenizer, run_dir / "final_model")
        eval_entry = None
        if downstream_eval:
            if trainer.parallel == "fsdp":
                raise ConfigError("eval", "the in-process evaluation needs an unsharded model: run FSDP with eval=none "
                                          "and score final_model/ with `python -m eval <run dir>`")
            if rank == 0:
                from eval.stage import charge, evaluate

                eval_entry = evaluate(cfg.eval, model, shards.tokenizer, run_dir, logger=logger, step=state.step, quiet=quiet)
                charge(ledger, fpt, eval_entry)
            trainer.barrier()
        res = {
            "mixer": cfg.mixer.name,
            "seed": seed,
            "model": cfg.model.name,
            "budget": b.name,
            "data": cfg.data.source,
            "run_dir": str(run_dir),
            "domains": domains,
            "steps": state.step,
            "final_weights": {d: float(x) for d, x in zip(domains, final_w)},
            "weights_history": [{"step": h["step"], "weights": dict(zip(domains, h["w"]))} for h in state.weights_history],
            "val_loss": val_loss,
            "val_history": state.val_history,
            "test_loss": test_loss,
            "test_ppl": {d: float(np.exp(v)) for d, v in test_loss.items()},
            "target_loss": target_loss,
            "target_loss_mean": float(np.mean(list(target_loss.values()))) if target_loss else None,
            "tokens_seen": {d: int(x) for d, x in zip(domains, state.tokens_seen)},
            "train_tokens": train_tokens,
            "epochs": {d: float(x) / train_tokens[d] for d, x in zip(domains, state.tokens_seen)},
            "compute": ledger.summary(),
            "params": counts,
            "flops_per_token": fpt,
            "wall_time_s": state.wall_time,
            "total_time_s": time.perf_counter() - t_start,
            "skipped_steps": state.skipped,
            "mixer_history": mixer.history,
            "mixer_info": mixer.info,
            "fingerprint": fp,
        }
        res["world_size"] = world
        res["mfu"] = trainer.mfu_summary()  # the peak FLOP/s used (config / table / measured) and the mean MFU
        if eval_entry is not None:
            res["eval"] = eval_entry
        res["eval_history"] = state.eval_history
        if rank == 0:
            write_json_atomic(results_path, res)
        if final_eval == "full":
            logger.summary({"final/val_loss_mean": float(np.mean(list(val_loss.values()))),
                            "final/test_ppl_mean": float(np.mean(list(res["test_ppl"].values()))),
                            "compute/mixer_flops": ledger.mixer_total})
            logger.table("final/per_domain", ["domain", "weight", "tokens", "epochs", "val_loss", "test_ppl"],
                         [[d, res["final_weights"][d], res["tokens_seen"][d], res["epochs"][d], val_loss[d], res["test_ppl"][d]] for d in domains])
        if not quiet and rank == 0:
            _print_summary(res)
        return res
    finally:
        logger.finish()


def make_subrun(parent: DictConfig, ledger: Ledger):
    """A function mixers call to train a proxy/reference model through this same trainer.

    ``run_subrun(overrides, name, charge_as)`` merges ``overrides`` (a nested dict of config values, e.g. a
    fixed mixture, a proxy model, a smaller budget) over the parent config, runs it to the end with no
    external logger, no final-model export and no downstream evaluation, and charges all its compute to
    the parent's ledger as ``mixer/<charge_as>``. What it computes after training is the overrides'
    ``trainer.final_eval``: full (absent: validation, test and target losses), targets (the target losses
    only, booked as ``targets`` in the sub-run's own ledger) or none (nothing: the caller needs only the
    checkpoint or the mixer's record). Sub-runs live in ``<data.cache_dir>/subruns/<fingerprint>``:
    a finished sub-run with the same config is reused, not retrained (its compute is still charged: it
    was spent on this mixture search), and an unfinished one resumes from its checkpoint.
    """

    def run_subrun(overrides: dict, name: str = "subrun", charge_as: str = "subruns") -> dict:
        base = OmegaConf.to_container(parent, resolve=True)
        base.pop("run_dir", None)
        overrides = dict(overrides or {})
        if "mixer" in overrides:  # a sub-run's mixer replaces the parent's whole (no leftover keys)
            base["mixer"] = overrides.pop("mixer")
        cfg = OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(overrides or {}))
        cfg.logger = {"name": "none"}
        cfg.trainer.progress = False
        cfg.trainer.save_final_model = False
        cfg.run_dir = "."
        key = fingerprint(OmegaConf.to_container(cfg, resolve=True))
        root = Path(str(cfg.data.cache_dir)).resolve() / "subruns"
        cfg.run_dir = str(root / f"{name}-{key}")
        reused = (Path(cfg.run_dir) / "results.json").exists()
        try:
            res = run(cfg, quiet=True, downstream_eval=False)  # eval config kept: it defines the task targets
        except ConfigError as e:  # the mixer's own settings made an invalid sub-run config: say whose it is
            raise ConfigError(f"mixer ({parent.mixer.name} {name} run) {e.field}",
                              e.detail) from e
        c = res["compute"]
        ledger.charge_mixer(charge_as, c.get("total", 0.0))
        res["reused"] = reused
        return res

    return run_subrun


def _save_hf(model: torch.nn.Module, tokenizer: Any, out: Path) -> None:
    """Save the final model in Hugging Face format (+ tokenizer), atomically (tmp folder, then rename)."""
    import shutil

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def main(cfg: DictConfig) -> Any:
    """Hydra task: run, turning user errors into one clear line and a non-zero exit."""
    multirun = _is_multirun()
    try:
        res = run(cfg)
    except (TikmixError, Preempted) as e:
        code = 75 if isinstance(e, Preempted) else 2  # 75 = EX_TEMPFAIL: not finished, resumable
        msg = " ".join(str(e).split("\n"))  # one line, whatever the message holds
        print(f"{'[tikmix]' if code == 75 else 'error:'} {msg}", file=sys.stderr)
        if not multirun:
            sys.exit(code)
        _record_failure(cfg, e)
        return None
    except Exception as e:  # noqa: BLE001 — in a sweep, one crashed job never takes down its siblings
        if not multirun:
            raise
        import traceback

        traceback.print_exc()
        _record_failure(cfg, e)
        return None
    if not res["val_loss"]:  # a proxy run (trainer.final_eval: targets | none)
        return res.get("target_loss_mean")
    return float(np.mean(list(res["val_loss"].values())))


def _is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 — not under Hydra
        return False


def _record_failure(cfg: DictConfig, e: BaseException) -> None:
    """A failed sweep job leaves error.json in its run dir (the table tool shows it as a missing cell)."""
    try:
        rd = Path(cfg.run_dir)
        rd.mkdir(parents=True, exist_ok=True)
        write_json_atomic(rd / "error.json", {"error": f"{type(e).__name__}: {e}", "time": time.time()})
    except Exception:  # noqa: BLE001
        pass
