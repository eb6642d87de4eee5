"""One run, end to end: config → data → model → mixer → trainer → test losses → results.json."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tikmix import signals
from tikmix.checkpoint import check_checkpoint
from tikmix.config import validate
from tikmix.errors import CheckpointError, ConfigError, DataError, StorageError, TikmixError
from tikmix.ledger import Ledger
from tikmix.mixer import MixerContext, build_mixer, mixer_config
from tikmix.model import build_model, flops_per_token, param_counts
from tikmix.report import log_results, wandb_identity
from tikmix.rundir import clean_stale, locked, read_results
from tikmix.runlog import RunLogger, rewind_metrics, write_json_atomic, write_text_atomic
from tikmix.sampler import MixtureSampler, check_budget
from tikmix.trainer import Preempted, Trainer, dist_info, eval_windows, resolve_device

# Keys that do not change what a run computes: a resumed run may differ in these.
_NON_TRAJECTORY = {"logger", "run_dir", "eval.limit", "eval.bootstrap_iters", "eval.stage_bootstrap_iters",
                   "eval.batch_size", "eval.max_batch_size", "eval.every_stage", "eval.log_level", "trainer.progress", "trainer.log_every", "trainer.ckpt_every",
                   "trainer.save_final_model", "trainer.max_wall_s", "trainer.peak_flops",
                   # compiled and eager runs compute the same model (equal within float tolerance, tested): a
                   # checkpoint of one resumes in the other
                   "trainer.compile", "trainer.compile_mode"}


# Keys added after runs were made, with the value that means what their absence meant: dropped from the
# fingerprint when they hold it, so checkpoints and cached sub-runs made before they existed stay valid. (The
# typed configs, tikmix/config.py, put every schema key into every config; before them a budget preset without
# evaluation sizes, or a run that computed everything after training, simply lacked these keys.)
_ADDED_KEYS: dict[str, Any] = {"trainer.warmup_steps": None, "trainer.final_eval": "full", "budget.val_tokens": 16384,
                               "budget.test_tokens": 32768, "budget.eval_limit": None}


def fingerprint(cfg: dict) -> str:
    c = json.loads(json.dumps(cfg, default=str))
    for k in _NON_TRAJECTORY | set(_ADDED_KEYS):
        parts = k.split(".")
        d = c
        for p in parts[:-1]:
            d = d.get(p, {}) if isinstance(d, dict) else {}
        if isinstance(d, dict) and (k in _NON_TRAJECTORY or _holds_absent_value(d, parts[-1], _ADDED_KEYS[k])):
            d.pop(parts[-1], None)
    return hashlib.sha256(json.dumps(c, sort_keys=True).encode()).hexdigest()[:16]


def _holds_absent_value(d: dict, key: str, absent: Any) -> bool:
    return key in d and type(d[key]) is type(absent) and d[key] == absent


def stage_steps_from(fracs: Any, total_steps: int) -> list[int]:
    """The step of each stage boundary. A boundary that rounds onto the first or last step, or onto another
    boundary, is refused: dropping it would silently skip a dynamic mixer's re-mixing."""
    fracs = list(fracs or [])
    for f in fracs:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1:
            raise ConfigError("budget.stages", f"stage boundaries are fractions strictly between 0 and 1, got {fracs}")
    if fracs != sorted(fracs):
        raise ConfigError("budget.stages", f"stage boundaries must be increasing, got {fracs}")
    steps = [int(round(f * total_steps)) for f in fracs]
    for i, (f, s) in enumerate(zip(fracs, steps)):
        if not 0 < s < total_steps or (i and s == steps[i - 1]):
            where = "the start" if s <= 0 else "the end" if s >= total_steps else f"step {s}, the boundary before it"
            raise ConfigError("budget.stages", f"boundary {f} of a {total_steps}-step budget falls on {where}, so its "
                                               f"stage would be empty; give fewer boundaries or a larger budget.total_tokens")
    return steps


def budget_warnings(cfg: DictConfig, total_steps: int) -> list[str]:
    """What a small budget silently does: leave most of total_tokens unused, round the warmup to nothing, or
    spend the whole run in warmup."""
    from tikmix.trainer import warmup_steps

    b = cfg.budget
    out = []
    per_step = int(b.seq_len) * int(b.batch_size)
    unused = int(b.total_tokens) - total_steps * per_step
    if unused > 0.1 * int(b.total_tokens):
        out.append(f"budget.total_tokens={b.total_tokens} is {total_steps} step(s) of {per_step:,} tokens: "
                   f"{unused:,} tokens ({unused / int(b.total_tokens):.0%}) go unused")
    warmup, _ = warmup_steps(cfg.trainer, b, total_steps)
    asked = float(b.get("warmup_frac", 0.0) or 0.0) > 0 or bool(cfg.trainer.get("warmup_steps"))
    if asked and warmup == 0:
        out.append(f"the warmup rounds to no step at all in a {total_steps}-step budget (budget.warmup_frac)")
    elif warmup >= total_steps > 0:
        out.append(f"the warmup ({warmup} steps) is the whole {total_steps}-step run: the learning rate never "
                   "reaches its peak")
    return out


def check_eval_splits(shards: Any, domains: list[str], seq_len: int, final_eval: str) -> None:
    """Every domain's val split (validation, targets) and, for a full final evaluation, its test split must
    hold one evaluation window of seq_len + 1 tokens (the train split is checked by the sampler)."""
    for split in ("val", "test") if final_eval == "full" else ("val",):
        for d in domains:
            n = shards.num_tokens(d, split)
            if n < seq_len + 1:
                raise DataError(f"domain {d!r} has {n} {split} tokens, fewer than one evaluation window of "
                                f"budget.seq_len+1={seq_len + 1}; give its {split} split more text (or lower budget.seq_len)")


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
                      and a.get(k, _ADDED_KEYS.get(k, absent)) != b.get(k, _ADDED_KEYS.get(k, absent)))
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


def _start_writing(run_dir: Path, container: dict, ckpt: dict | None) -> None:
    """Past every check: clear what killed writers left, cut metrics.jsonl back to the checkpoint (nothing
    logged after it, no torn line), and on a fresh start write config.yaml."""
    clean_stale(run_dir)
    rewind_metrics(run_dir / "metrics.jsonl", ckpt.get("metrics_bytes") if ckpt else 0, ckpt["step"] if ckpt else 0)
    if ckpt is None:
        write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(container))


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


def describe_targets(cfg: DictConfig, targets: dict[str, list[dict]]) -> str:
    """One console line: what the mixers optimise for (the target sets, their tokens) and where they come from."""
    sizes = ", ".join(f"{n} ({sum(int(b['input_ids'].numel()) for b in bs):,})" for n, bs in targets.items())
    if target_tasks(cfg):
        why = f"targets.tasks: dev splits of eval={cfg.eval.name}'s in-domain tasks"
    elif targets_auto(cfg):
        why = (f"targets.domains=auto with no task targets (eval={cfg.eval.name}): every domain's held-out text; "
               "TiKMiX averages them into one target")
    else:
        why = "targets.domains"
    return f"[tikmix] targets ({why}), tokens per set: {sizes}"


def cost_estimate(trainer: Trainer, test_arrays: list, targets: dict[str, list[dict]], final_eval: str) -> str:
    """The run's FLOPs and its wall time at the device's peak, before training (tikmix.estimate)."""
    from tikmix.estimate import estimate_line, eval_passes, run_flops

    T, t = trainer.seq_len, trainer.tcfg
    full = final_eval == "full"
    val = sum(len(w) * T for w in trainer.val_windows.values())
    test = sum(max(1, min(int(t["test_tokens"]) // T, (len(a) - 1) // T)) * T for a in test_arrays) if full else 0
    tgt = sum(int(b["input_ids"].numel()) for bs in targets.values() for b in bs) if final_eval != "none" else 0
    flops = run_flops(trainer.flops_per_token, trainer.total_steps, trainer.tokens_per_step, val,
                      eval_passes(trainer.total_steps, int(t.get("eval_every") or 0), full), test, tgt)
    return estimate_line(flops, trainer.resolve_peak(), trainer.device.type)


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
    tp = res.get("throughput") or {}
    if tp.get("train_tokens_per_s"):
        mfu = f", MFU {tp['train_mfu']:.1%}" if tp.get("train_mfu") else ""
        over = (f"; mixer overhead {tp['mixer_time_s']:.1f}s ({tp['mixer_share']:.0%} of the run)"
                if tp.get("mixer_time_s", 0) > 0.05 else "")
        print(f"throughput: {tp['train_tokens_per_s']:,.0f} tokens/s over {tp['train_time_s']:.1f}s of training steps{mfu}{over}")


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


def run(cfg: DictConfig, quiet: bool = False, downstream_eval: bool = True, wait_for_lock: bool = False,
        on_start: Callable[[Path, bool], None] | None = None) -> dict:
    """One run, end to end; its results (also written to ``<run dir>/results.json``).

    The run directory is held by this process until the end (tikmix.rundir: another live process holding
    it raises RunDirBusy, or, with ``wait_for_lock`` (sub-runs), is waited for). SIGTERM in any phase stops
    the run with Preempted after saving what finished (tikmix.signals): during training the checkpoint at
    the end of the current step; during a probe or an evaluation the state from before it.
    """
    with signals.handling(), signals.phase(True, "before training started (nothing to checkpoint yet)"), \
            contextlib.ExitStack() as held:
        return _run(cfg, quiet, downstream_eval, held, wait_for_lock, on_start)


def _run(cfg: DictConfig, quiet: bool, downstream_eval: bool, held: contextlib.ExitStack, wait_for_lock: bool,
         on_start: Callable[[Path, bool], None] | None = None) -> dict:
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
    if rank == 0:
        held.enter_context(locked(run_dir, wait=wait_for_lock))
    results_path = run_dir / "results.json"
    if results_path.exists():
        res = read_results(results_path, repair=wait_for_lock)  # a sub-run re-creates a damaged one
        if res is not None:
            if not quiet:
                print(f"[tikmix] {run_dir} already holds a finished run (results.json); nothing to do. "
                      f"Use another hydra.run.dir to train again.")
            return res
    container = OmegaConf.to_container(cfg, resolve=True)
    validate(container)  # every section against its schema (tikmix/config.py): nothing is written before
    mixer_config(container["mixer"])
    seed = cfg.seed
    device = resolve_device(device_name)
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
    check_eval_splits(shards, domains, seq_len, final_eval)
    if not quiet and rank == 0:
        for line in budget_warnings(cfg, total_steps):
            print(f"[tikmix] warning: {line}", file=sys.stderr)
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
        check_checkpoint(ckpt, ckpt_path, total_steps, domains)  # what it claims (step, parts) fits this run
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        _start_writing(run_dir, container, ckpt)
        if on_start is not None:  # the Hydra job (main): its console log and .hydra/ record
            on_start(run_dir, ckpt is None)
    ident = wandb_identity(container, run_dir)  # group = the Hydra sweep, job_type = the mixer, tags = the presets
    name = ident["name"]
    logger = RunLogger(cfg.logger if rank == 0 else {"name": "none"}, run_dir, container, name,
                       resume_id=(ckpt or {}).get("wandb_id"), write_metrics=rank == 0, identity=ident)
    try:
        trainer = Trainer(
            container, model, mixer, sampler, domains, {d: shards.tokens(d, "val") for d in domains}, targets,
            total_steps, stage_steps, run_dir, ledger, logger, device, fpt, fp,
        )
        ctx.tokens_per_step = trainer.tokens_per_step
        ctx.autocast = trainer.autocast
        if rank == 0:
            ranks = f" x {world} ranks ({trainer.parallel})" if world > 1 else ""
            print(f"[tikmix] mixer={cfg.mixer.name} model={cfg.model.name} ({counts['total']:,} params, "
                  f"{counts['non_embedding']:,} non-embedding) budget={b.name}: {total_steps} steps x "
                  f"{trainer.tokens_per_step:,} tokens; domains: {', '.join(domains)}; device={device}{ranks}; run dir {run_dir}")
            if trainer.warmup_note:
                print(f"[tikmix] {trainer.warmup_note}")
            if not quiet:
                print(describe_targets(cfg, targets))
                print(cost_estimate(trainer, [shards.tokens(d, "test") for d in domains], targets, final_eval))
        if downstream_eval and rank == 0:
            from eval.stage import stage_evaluator

            trainer.stage_eval = stage_evaluator(cfg.eval, shards.tokenizer, run_dir, logger, ledger, fpt)
        if ckpt is not None:
            trainer.load(ckpt)
            print(f"[tikmix] resumed from {ckpt_path} at step {trainer.state.step}/{total_steps}")
        else:
            signals.describe("during the mixer's preparation (finished sub-runs, e.g. RegMix proxies, are kept and reused)")
            t_prep = time.perf_counter()
            mixer.prepare()
            trainer.state.timing["prepare_s"] = time.perf_counter() - t_prep  # the mixer's overhead before training
        trainer.state.wandb_id = logger.wandb_id
        state = trainer.fit()
        signals.describe(f"during the final evaluation (training is complete and checkpointed at step {state.step})")

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
        res["throughput"] = trainer.throughput_summary()  # training tokens/s apart from the mixer's overhead
        res["wandb"] = logger.wandb_info  # id, name, group, project: python -m eval and eval.tables attach to them
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
        log_results(logger, res, state.step)  # W&B: final scalars, the mixer's history and info, the run's figures
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
            # eval config kept: it defines the task targets. Another process training the same sub-run (a
            # proxy shared by two sweep jobs) is waited for, then its results are reused
            res = run(cfg, quiet=True, downstream_eval=False, wait_for_lock=True)
        except ConfigError as e:  # the mixer's own settings made an invalid sub-run config: say whose it is
            raise ConfigError(f"mixer ({parent.mixer.name} {name} run) {e.field}",
                              e.detail) from e
        except Preempted as e:  # say where: the sub-run keeps its own checkpoint, finished sub-runs are reused
            raise Preempted(e.step, e.reason, f"during {parent.mixer.name}'s {name} run {cfg.run_dir} "
                                              f"({e.detail}; finished sub-runs are kept and reused)") from None
        c = res["compute"]
        ledger.charge_mixer(charge_as, c.get("total", 0.0))
        res["reused"] = reused
        return res

    return run_subrun


def _save_hf(model: torch.nn.Module, tokenizer: Any, out: Path) -> None:
    """Save the final model in Hugging Face format (+ tokenizer), atomically (tmp folder, then rename)."""
    import shutil

    from tikmix.data.tokenizer import save_tokenizer

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp, model_max_length=model.config.max_position_embeddings)
    except Exception as e:  # noqa: BLE001 — safetensors reports a full disk as its own error types
        shutil.rmtree(tmp, ignore_errors=True)
        raise StorageError(f"cannot write the final model {out}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
                           "training is checkpointed: free space and run the same command to finish") from None
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def main(cfg: DictConfig) -> Any:
    """Hydra task: run, turning user errors into one clear line and a non-zero exit; the console output is kept
    in ``<run dir>/console.log`` and Hydra's record in ``<run dir>/.hydra/`` (tikmix.console).

    Returns what a Hydra sweeper optimises (``hydra/sweeper=optuna``, direction minimize): the run's mean
    per-domain validation loss (lower is better), a proxy run's mean target loss, or None for a multirun job
    that failed (the sweeper records it as a failed trial; error.json in its run dir says why).
    """
    from tikmix.console import ConsoleLog

    with ConsoleLog() as console:  # <run dir>/console.log, written once the run owns its directory
        return _main(cfg, lambda run_dir, fresh: _record_start(cfg, run_dir, fresh, console))


def _record_start(cfg: DictConfig, run_dir: Path, fresh: bool, console: Any) -> None:
    """A run that passed every check: Hydra's .hydra/ record (fresh runs only) and the console log."""
    from tikmix.console import write_hydra_record

    try:
        if fresh:
            write_hydra_record(run_dir, cfg)
        console.attach(run_dir / "console.log")
    except OSError as e:
        raise StorageError(f"cannot write into {run_dir}: {e.strerror or e}") from None


def _main(cfg: DictConfig, on_start: Callable[[Path, bool], None]) -> Any:
    multirun = _is_multirun()
    try:
        res = run(cfg, on_start=on_start)
    except (TikmixError, Preempted) as e:
        code = exit_code(e)
        msg = " ".join(str(e).split("\n"))  # one line, whatever the message holds
        print(f"{'[tikmix]' if code == 75 else 'error:'} {msg}", file=sys.stderr)
        if not multirun:
            sys.exit(code)
        _record_failure(cfg, e)
        if isinstance(e, Preempted) and _in_sweep_process():
            sys.exit(code)  # the SIGTERM was for the whole sweep: stop it (re-running it resumes this job)
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


def exit_code(e: BaseException) -> int:
    """75 (EX_TEMPFAIL) preempted, resumable; 74 (EX_IOERR) a write failed, resumable once there is space;
    2 bad input (tikmix.errors lists them all)."""
    return 75 if isinstance(e, Preempted) else 74 if isinstance(e, StorageError) else 2


def _is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 — not under Hydra
        return False


def _in_sweep_process() -> bool:
    """True when the job runs in the sweep's own process (Hydra's basic launcher), not in a worker."""
    import multiprocessing

    return multiprocessing.parent_process() is None


class SweepExitCode(Callback):
    """Hydra callback (conf/config.yaml, hydra.callbacks): once every job of a multirun has run, exit 1 when
    some job did not finish (75 when each of those was only preempted), with one line naming them; each one's
    run dir holds error.json. A single run is not affected."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.t0 = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failed = failed_jobs(Path(str(config.hydra.sweep.dir)), getattr(self, "t0", 0.0))
        if not failed:
            return
        code = 75 if all(f.get("exit_code") == 75 for f in failed) else 1
        first = failed[0]
        print(f"{'[tikmix]' if code == 75 else 'error:'} {len(failed)} job(s) of the sweep did not finish "
              f"({', '.join(Path(f['dir']).name for f in failed[:5])}{' ...' if len(failed) > 5 else ''}); "
              f"first: {first['error']}", file=sys.stderr)
        sys.exit(code)


def failed_jobs(sweep_dir: Path, since: float = 0.0) -> list[dict]:
    """The jobs under ``sweep_dir`` that wrote error.json (at or after ``since``) and no results.json."""
    out = []
    for p in sorted(sweep_dir.rglob("error.json")) if sweep_dir.is_dir() else []:
        if (p.parent / "results.json").exists():
            continue
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            rec = {"error": "unreadable error.json"}
        if not isinstance(rec, dict) or float(rec.get("time") or since) < since:
            continue
        out.append({**rec, "dir": str(p.parent)})
    return out


def _record_failure(cfg: DictConfig, e: BaseException) -> None:
    """A failed sweep job leaves error.json in its run dir (the table tool shows it as a missing cell)."""
    try:
        rd = Path(cfg.run_dir)
        rd.mkdir(parents=True, exist_ok=True)
        write_json_atomic(rd / "error.json", {"error": f"{type(e).__name__}: {e}", "time": time.time(),
                                              "exit_code": exit_code(e) if isinstance(e, (TikmixError, Preempted)) else 1})
    except Exception:  # noqa: BLE001
        pass
