"""One run, end to end, as a build chain: config → data → model → mixer → trainer → evaluation → results.json.

Each step lives in the module that owns it (README, "How it is built"); this module wires them, holds the run
directory, starts sub-runs for mixers (SubRunner) and is the Hydra task (main)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import multiprocessing
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from eval.stage import charge, evaluate, preflight, stage_evaluator
from eval.targets import build_targets, describe_targets, targets_auto
from tikmix import signals
from tikmix.budget import check_repeats, plan_steps
from tikmix.checkpoint import branch_point, fingerprint, fingerprint_config, resume_point
from tikmix.config import EvalConfig, NoLogger, RunConfig, TrainerConfig, WandbLogger, validate
from tikmix.console import ConsoleLog, write_hydra_record
from tikmix.data.shards import changed_inputs, prepare_data
from tikmix.errors import ConfigError, RunDirBusy, StorageError, TikmixError
from tikmix.estimate import cost_estimate
from tikmix.ledger import Ledger
from tikmix.losses import amp_dtype_for, autocast, resolve_dtype
from tikmix.mixer import MixerContext, build_mixer, mixer_config
from tikmix.model import build_model, flops_per_token, param_counts
from tikmix.report import wandb_identity
from tikmix.results import assemble, final_losses, log_final, print_summary, save_hf
from tikmix.rundir import clean_stale, locked, read_results
from tikmix.runlog import RunLogger, rewind_metrics, write_json_atomic, write_text_atomic
from tikmix.sampler import MixtureSampler
from tikmix.trainer import (
    Preempted,
    RunPlan,
    RunServices,
    TrainData,
    Trainer,
    compile_setting,
    dist_info,
    resolve_device,
)


def _start_writing(run_dir: Path, container: dict, ckpt: dict | None) -> None:
    """Past every check: clear what killed writers left, cut metrics.jsonl back to the checkpoint (nothing
    logged after it, no torn line), and on a fresh start write config.yaml."""
    clean_stale(run_dir)
    rewind_metrics(run_dir / "metrics.jsonl", ckpt.get("metrics_bytes") if ckpt else 0, ckpt["step"] if ckpt else 0)
    if ckpt is None:
        write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(container))


def init_distributed(device_name: str) -> tuple[int, int, str]:
    """Initialise torch.distributed under torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on GPUs."""
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


def run(
    cfg: DictConfig,
    quiet: bool = False,
    downstream_eval: bool = True,
    wait_for_lock: bool = False,
    on_start: Callable[[Path, bool], None] | None = None,
) -> dict:
    """One run, end to end; its results (also written to ``<run dir>/results.json``).

    The run directory is held by this process until the end (tikmix.rundir: another live process holding
    it raises RunDirBusy, or, with ``wait_for_lock`` (sub-runs), is waited for). SIGTERM in any phase stops
    the run with Preempted after saving what finished (tikmix.signals): during training the checkpoint at
    the end of the current step; during a probe or an evaluation the state from before it.
    """
    with (
        signals.handling(),
        signals.phase(True, "before training started (nothing to checkpoint yet)"),
        contextlib.ExitStack() as held,
    ):
        return _run(cfg, quiet, downstream_eval, held, wait_for_lock, on_start)


def _run(
    cfg: DictConfig,
    quiet: bool,
    downstream_eval: bool,
    held: contextlib.ExitStack,
    wait_for_lock: bool,
    on_start: Callable[[Path, bool], None] | None = None,
) -> dict:
    """The build chain: config → data → model → mixer → trainer → evaluation → results, each step in the module
    that owns it. Every check that can refuse the run comes before anything is written to the run directory."""
    t_start = time.perf_counter()
    container = resolved_container(cfg)
    rank, world, device_name = init_distributed(str(container["device"]))
    run_dir = agreed_run_dir(container["run_dir"], world)
    if rank == 0:
        held.enter_context(locked(run_dir, wait=wait_for_lock))
    done = finished_run(run_dir, repair=wait_for_lock, quiet=quiet)
    if done is not None:
        return done
    rc = typed_run(container)  # every section typed and checked (tikmix/config.py); nothing is written before this
    device = resolve_device(device_name)
    settings, budget = rc.trainer, rc.budget
    final_eval, downstream_eval = what_to_evaluate(rc.trainer, rc.eval, world, downstream_eval)
    if compile_setting(settings.compile) is not False:
        share_inductor_cache(str(rc.data.cache_dir))

    shards = prepare_data(rc.data)  # ----------------------------------------------------------------- data
    domains = list(shards.domains)
    total_steps, stage_steps = plan_steps(
        budget, settings, rc.model.max_position_embeddings, shards, final_eval, warn=not quiet and rank == 0
    )
    if settings.stop_at_stage and settings.stop_at_stage > len(stage_steps):
        raise ConfigError(
            "trainer.stop_at_stage",
            f"{settings.stop_at_stage} is past the last stage boundary (budget.stages has {len(stage_steps)})",
        )
    # trainer.dtype=auto hashed as the dtype it resolves to where that is not what auto meant before (bf16 on a CPU)
    computed = fingerprint_config(container, device)
    fp = fingerprint(computed, shards.inputs_digest)
    plan = RunPlan(domains, total_steps, stage_steps, run_dir, fp, shards.key, shards.inputs_digest)
    train_arrays = [shards.tokens(d, "train") for d in domains]
    train_tokens = {d: int(len(a)) for d, a in zip(domains, train_arrays)}
    sampler = MixtureSampler(train_arrays, budget.seq_len, budget.batch_size, rc.seed, domains)

    model = build_model(rc.model, shards.vocab_size, rc.seed, pad_id=shards.eos_id, eos_id=shards.eos_id)  # model
    fpt = flops_per_token(model, budget.seq_len)
    counts = param_counts(model)

    ledger = Ledger()  # ------------------------------------------------------------------------------ mixer
    mixer = build_mixer(rc.mixer, domains, mixer_context(rc, container, plan, train_tokens, ledger, device))
    targets = build_targets(rc.targets, rc.eval, shards, domains, budget.seq_len, budget.micro_batch)
    check_repeats(
        settings.max_repeat_epochs,
        mixer.weights(0),
        domains,
        train_tokens,
        total_steps * budget.seq_len * budget.batch_size,
    )
    hidden = rc.model.hidden_size
    ckpt = resume_point(
        run_dir,
        container,
        plan.fingerprint,
        model,
        world,
        total_steps,
        domains,
        functools.partial(data_change, shards=shards),
        fingerprint(computed),
        lambda c: autocast_change(c, settings, hidden, device),
    )
    branch = None
    if ckpt is None and settings.init_from:  # a schedule continuing a shared prefix (eval.schedule_oracle)
        stages = getattr(mixer, "stages", None)
        branch = branch_point(
            Path(settings.init_from).resolve(),
            container,
            world,
            total_steps,
            stage_steps,
            domains,
            None if stages is None else np.asarray(stages),
        )
        why = data_change(branch, shards)
        if why:
            raise ConfigError("trainer.init_from", f"{settings.init_from} was trained on other data: {why}")
        why = autocast_change(branch, settings, hidden, device)
        if why:
            raise ConfigError("trainer.init_from", f"{settings.init_from} {why}")

    run_dir.mkdir(parents=True, exist_ok=True)  # ------------------------------------- from here on, writing
    if rank == 0:
        _start_writing(run_dir, container, ckpt)
        if on_start is not None:  # the Hydra job (main): its console log and .hydra/ record
            on_start(run_dir, ckpt is None)
    logger = run_logger(rc.logger, container, run_dir, ckpt, rank)
    try:
        stage_eval = (
            stage_evaluator(rc.eval, shards.tokenizer, run_dir, logger, ledger, fpt)
            if downstream_eval and rank == 0
            else None
        )
        # -------------------------------------------------------------------------------------------- trainer
        trainer = Trainer(
            settings,
            budget,
            model,
            mixer,
            TrainData(sampler, {d: shards.tokens(d, "val") for d in domains}, targets),
            plan,
            RunServices(ledger, logger, stage_eval),
            device,
            fpt,
        )
        if rank == 0:
            _announce(rc, trainer, counts, shards, targets, final_eval, world, quiet)
        state = _train(trainer, mixer, ckpt, logger, branch, settings.init_from)

        signals.describe(f"during the final evaluation (training is complete and checkpointed at step {state.step})")
        losses = final_losses(trainer, shards, targets, final_eval)  # -------------------------------- evaluation
        if settings.save_final_model and not settings.stop_at_stage and rank == 0:
            save_hf(model, shards.tokenizer, run_dir / "final_model")
        eval_entry = _downstream(rc.eval, trainer, model, shards, state, quiet, rank) if downstream_eval else None

        # -------------------------------------------------------------------------------------------- results
        res = assemble(
            rc, trainer, state, losses, train_tokens, counts, eval_entry, world, time.perf_counter() - t_start
        )
        if settings.stop_at_stage or settings.init_from:  # a schedule oracle's prefix, or a run continuing one
            res["prefix"] = {"stop_at_stage": settings.stop_at_stage, "init_from": settings.init_from}
        if rank == 0:
            write_json_atomic(run_dir / "results.json", res)
        log_final(logger, res, final_eval, ledger.mixer_total, state.step)
        if not quiet and rank == 0:
            print_summary(res)
        return res
    finally:
        logger.finish()


_INDUCTOR_ENV = "TORCHINDUCTOR_CACHE_DIR"
_inductor_dir_set: str | None = None  # the directory this process put there, if any


def share_inductor_cache(cache_dir: str) -> str:
    """Point inductor's caches at ``<data.cache_dir>/inductor`` unless the user set TORCHINDUCTOR_CACHE_DIR: the
    compiled kernels, the FX graph cache and the AOTAutograd cache (both on by default in torch 2.13) live there,
    so the jobs of a sweep, and a resumed run, reuse each other's compiled graphs instead of compiling again (dynamo
    still traces the model in each process). Inductor writes its own default (under /tmp) into the environment
    the first time anything asks for its cache, which imports do: that value, or one this process set, is not
    the user's. Returns the directory in use."""
    global _inductor_dir_set
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get(_INDUCTOR_ENV)
    ours = (None, _inductor_dir_set, os.path.abspath(default_cache_dir()))
    if current is not None and os.path.abspath(current) not in ours:
        return current
    path = str(Path(cache_dir).resolve() / "inductor")
    os.environ[_INDUCTOR_ENV] = _inductor_dir_set = path
    return path


def autocast_change(ckpt: dict, settings: TrainerConfig, hidden: int, device: torch.device) -> str | None:
    """How the autocast dtype a checkpoint was trained in differs from this run's, and the override that continues
    it (None: the same). Asked only of a checkpoint whose config file equals this run's: then only
    trainer.dtype=auto can differ, which depends on the CPU and on when the run started (before auto chose bf16 on
    a CPU, checkpoints did not record their dtype, and auto meant fp32 on every CPU)."""
    mine = resolve_dtype(settings.dtype, device, hidden, settings.cpu_bf16_min_hidden).name
    # no record: what the setting meant then, which is what it means without the model's width
    theirs = ckpt.get("autocast") or resolve_dtype(settings.dtype, device).name
    if theirs == mine:
        return None
    if theirs == "bf16":  # the fingerprint of auto resolved to bf16 on a CPU is explicit bf16's
        fix = "set trainer.dtype=bf16"
    else:  # auto stays fp32 for a model below the threshold, and fingerprints as it did
        fix = f"set trainer.cpu_bf16_min_hidden={int(hidden) + 1} (above this model's hidden_size: auto keeps fp32)"
    return f"was trained in {theirs}, and trainer.dtype={settings.dtype} trains this model in {mine} here: {fix} to continue it"


def data_change(ckpt: dict, shards: Any) -> str | None:
    """What of the local input files differs from those the checkpoint's run trained on (None: the same, or
    nothing to compare: synthetic data, or a checkpoint from before the inputs were recorded)."""
    old = ckpt.get("data_inputs")
    if "data_inputs" not in ckpt or old == shards.inputs_digest:
        return None
    manifest = shards.root.parent / str(ckpt.get("data_key")) / "manifest.json"
    try:
        before = json.loads(manifest.read_text()).get("inputs") or []
    except (OSError, ValueError):
        return f"its input files have changed since (digest {old}, now {shards.inputs_digest})"
    return changed_inputs(before, shards.inputs) or f"its input files' digest was {old}, now {shards.inputs_digest}"


def resolved_container(cfg: DictConfig) -> dict:
    """The config as plain containers, every interpolation resolved; one that does not resolve is a user error,
    named by its key."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(getattr(e, "full_key", None) or "config", str(e).splitlines()[0]) from None


def typed_run(container: dict) -> RunConfig:
    """The resolved config as the typed :class:`~tikmix.config.RunConfig`, every section checked against its schema
    (the mixer's by its own dataclass): what the build chain below hands on, section by section."""
    rc = validate(container)
    rc.mixer = mixer_config(container["mixer"])
    return rc


def agreed_run_dir(run_dir: str, world: int) -> Path:
    """The run directory; under torchrun every rank uses rank 0's (Hydra's timestamped default may differ by a
    second between ranks)."""
    run_dir = Path(run_dir).resolve()
    if world > 1:
        obj = [str(run_dir)]
        dist.broadcast_object_list(obj, src=0)
        run_dir = Path(obj[0])
    return run_dir


def finished_run(run_dir: Path, repair: bool, quiet: bool) -> dict | None:
    """The results of a run that already finished in ``run_dir`` (nothing to do), else None. A sub-run
    (``repair``) re-creates a damaged results.json."""
    path = run_dir / "results.json"
    res = read_results(path, repair=repair) if path.exists() else None
    if res is not None and not quiet:
        print(
            f"[tikmix] {run_dir} already holds a finished run (results.json); nothing to do. "
            f"Use another hydra.run.dir to train again."
        )
    return res


def what_to_evaluate(
    trainer: TrainerConfig, eval_cfg: EvalConfig, world: int, downstream_eval: bool
) -> tuple[str, bool]:
    """(trainer.final_eval, whether the downstream tasks run). A proxy sub-run sets final_eval targets (RegMix:
    only the target loss is used) or none, and then computes and is charged for nothing else. The eval config,
    its task folders and tasks are checked now (eval.stage.preflight), not after training."""
    final_eval = trainer.final_eval
    if trainer.stop_at_stage:  # a prefix: checkpointed at its boundary, nothing computed after
        return "none", False
    downstream_eval = downstream_eval and final_eval == "full" and eval_cfg.name != "none"
    if downstream_eval:
        if world > 1 and trainer.parallel == "fsdp":
            raise ConfigError("eval", _FSDP_EVAL)
        preflight(eval_cfg)
    return final_eval, downstream_eval


_FSDP_EVAL = (
    "the in-process evaluation needs an unsharded model: run FSDP with eval=none "
    "and score final_model/ with `python -m eval <run dir>`"
)


def mixer_context(
    rc: RunConfig,
    container: dict,
    plan: RunPlan,
    train_tokens: dict[str, int],
    ledger: Ledger,
    device: torch.device,
) -> MixerContext:
    """What a mixer sees of the run (tikmix.mixer.MixerContext): the budget, the data, sub-runs and the ledger
    its search is charged to, and the run's autocast policy."""
    b, settings = rc.budget, rc.trainer
    ctx = MixerContext(
        domains=plan.domains,
        train_tokens=train_tokens,
        total_steps=plan.total_steps,
        tokens_per_step=b.seq_len * b.batch_size,
        seq_len=b.seq_len,
        seed=rc.seed,
        stage_steps=plan.stage_steps,
        stop_at_stage=settings.stop_at_stage,
        human_weights=dict(rc.data.human_weights) if rc.data.human_weights else None,
        run_dir=str(plan.run_dir),
        targets_auto=targets_auto(rc.targets, rc.eval),
    )
    ctx.run_subrun = make_subrun(container, ledger, plan.data_inputs)
    ctx.charge = lambda flops, what: ledger.charge_mixer(what, flops)
    amp = amp_dtype_for(settings.dtype, device, rc.model.hidden_size, settings.cpu_bf16_min_hidden)  # the trainer's
    ctx.autocast = functools.partial(autocast, device, amp)
    return ctx


def run_logger(
    logger_cfg: WandbLogger | NoLogger, container: dict, run_dir: Path, ckpt: dict | None, rank: int
) -> RunLogger:
    """metrics.jsonl and W&B (rank 0 only): group = the Hydra sweep, job_type = the mixer, tags = the presets; a
    resumed run continues its W&B run."""
    ident = wandb_identity(container, run_dir)
    return RunLogger(
        dataclasses.asdict(logger_cfg) if rank == 0 else {"name": "none"},
        run_dir,
        container,
        ident["name"],
        resume_id=(ckpt or {}).get("wandb_id"),
        write_metrics=rank == 0,
        identity=ident,
    )


def _announce(
    rc: RunConfig,
    trainer: Trainer,
    counts: dict,
    shards: Any,
    targets: dict,
    final_eval: str,
    world: int,
    quiet: bool,
) -> None:
    ranks = f" x {world} ranks ({trainer.parallel})" if world > 1 else ""
    print(
        f"[tikmix] mixer={rc.mixer.name} model={rc.model.name} ({counts['total']:,} params, "
        f"{counts['non_embedding']:,} non-embedding) budget={rc.budget.name}: {trainer.total_steps} steps x "
        f"{trainer.tokens_per_step:,} tokens; domains: {', '.join(trainer.domains)}; device={trainer.device}{ranks}; "
        f"run dir {trainer.run_dir}"
    )
    print(f"[tikmix] dtype: {trainer.dtype_choice.describe()}")
    if trainer.warmup_note:
        print(f"[tikmix] {trainer.warmup_note}")
    if not quiet:
        print(describe_targets(rc.targets, rc.eval, targets))
        print(cost_estimate(trainer, [shards.tokens(d, "test") for d in trainer.domains], targets, final_eval))


def _train(trainer: Trainer, mixer: Any, ckpt: dict | None, logger: RunLogger, branch: dict | None, src: Any) -> Any:
    """Resume from the checkpoint, or start from another run's (``branch``, from trainer.init_from ``src``), or
    let the mixer prepare (proxies, reference models) on a fresh start; then train to the end of the budget."""
    if ckpt is not None:
        trainer.load(ckpt)
        print(f"[tikmix] resumed from {trainer.ckpt_path} at step {trainer.state.step}/{trainer.total_steps}")
        _note_threads(ckpt)
    elif branch is not None:
        trainer.load(branch, branch=True)
        print(f"[tikmix] continuing {src} from its step {trainer.state.step}/{trainer.total_steps} (trainer.init_from)")
    else:
        signals.describe("during the mixer's preparation (finished sub-runs, e.g. RegMix proxies, are kept and reused)")
        t_prep = time.perf_counter()
        mixer.prepare()
        trainer.state.timing["prepare_s"] = time.perf_counter() - t_prep  # the mixer's overhead before training
    trainer.state.wandb_id = logger.wandb_id
    return trainer.fit()


def _note_threads(ckpt: dict) -> None:
    """A resume with another torch thread count is accepted, and said: matmuls then sum in another order, so the
    resumed run equals the uninterrupted one within float tolerance (val loss off by <= 5e-7 measured), not bit
    for bit."""
    then, now = ckpt.get("torch_threads"), torch.get_num_threads()
    if then is not None and then != now:
        print(
            f"[tikmix] note: this checkpoint was written with {then} torch threads, the run now has {now}: the result "
            f"will equal an uninterrupted run within float tolerance, not bit for bit (set OMP_NUM_THREADS={then} "
            "for that)",
            file=sys.stderr,
        )


def _downstream(
    eval_cfg: EvalConfig, trainer: Trainer, model: torch.nn.Module, shards: Any, state: Any, quiet: bool, rank: int
) -> dict | None:
    """The downstream tasks on the final model (eval.stage), charged to the ledger as eval."""
    if trainer.parallel == "fsdp":
        raise ConfigError("eval", _FSDP_EVAL)
    entry = None
    if rank == 0:
        entry = evaluate(
            eval_cfg, model, shards.tokenizer, trainer.run_dir, logger=trainer.logger, step=state.step, quiet=quiet
        )
        charge(trainer.ledger, trainer.flops_per_token, entry)
    trainer.barrier()
    return entry


def make_subrun(parent: dict | DictConfig, ledger: Ledger | None, data_inputs: str | None = None) -> "SubRunner":
    """The sub-runner mixers call (``ctx.run_subrun``) for a run whose resolved config is ``parent``."""
    if OmegaConf.is_config(parent):  # a composed config (tests): its resolved container, as run() holds it
        parent = resolved_container(parent)
    return SubRunner(parent, ledger, data_inputs)


@dataclasses.dataclass
class SubRunner:
    """Trains a proxy/reference model for a mixer through this same trainer (:class:`tikmix.mixer.SubRuns`).

    ``runner(overrides, name, charge_as)`` merges ``overrides`` (a nested dict of config values, e.g. a
    fixed mixture, a proxy model, a smaller budget) over the parent config, runs it to the end with no
    external logger, no final-model export and no downstream evaluation, and charges all its compute to
    the parent's ledger as ``mixer/<charge_as>``. What it computes after training is the overrides'
    ``trainer.final_eval``: full (absent: validation, test and target losses), targets (the target losses
    only, booked as ``targets`` in the sub-run's own ledger) or none (nothing: the caller needs only the
    checkpoint or the mixer's record). Sub-runs live in ``<data.cache_dir>/subruns/<fingerprint>``:
    a finished sub-run with the same config is reused, not retrained (its compute is still charged: it
    was spent on this mixture search), and an unfinished one resumes from its checkpoint.

    Picklable: :meth:`detached` is the same runner for a worker process (RegMix's parallel proxies), which
    fills the sub-run cache and charges nothing; the parent charges each sub-run when it collects it.
    """

    parent: dict  # the parent run's resolved config (what its fingerprint hashes)
    ledger: Ledger | None = None
    data_inputs: str | None = None  # the parent's local input files' digest: edited data, another sub-run

    def detached(self) -> "SubRunner":
        return dataclasses.replace(self, ledger=None)

    def __call__(self, overrides: dict, name: str = "subrun", charge_as: str = "subruns") -> dict:
        base = copy.deepcopy(self.parent)
        base.pop("run_dir", None)
        overrides = dict(overrides or {})
        if "mixer" in overrides:  # a sub-run's mixer replaces the parent's whole (no leftover keys)
            base["mixer"] = overrides.pop("mixer")
        cfg = OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(overrides or {}))
        cfg.logger = {"name": "none"}
        cfg.trainer.progress = False
        cfg.trainer.save_final_model = False
        cfg.run_dir = "."
        # edited data: another sub-run; the sub-run's own model decides what trainer.dtype=auto computes
        computed = fingerprint_config(OmegaConf.to_container(cfg, resolve=True), resolve_device(str(cfg.device)))
        key = fingerprint(computed, self.data_inputs)
        root = Path(str(cfg.data.cache_dir)).resolve() / "subruns"
        cfg.run_dir = str(root / f"{name}-{key}")
        reused = (Path(cfg.run_dir) / "results.json").exists()
        whose = self.parent["mixer"]["name"]
        try:
            # eval config kept: it defines the task targets. Another process training the same sub-run (a
            # proxy shared by two sweep jobs) is waited for, then its results are reused
            res = run(cfg, quiet=True, downstream_eval=False, wait_for_lock=True)
        except ConfigError as e:  # the mixer's own settings made an invalid sub-run config: say whose it is
            raise ConfigError(f"mixer ({whose} {name} run) {e.field}", e.detail) from e
        except Preempted as e:  # say where: the sub-run keeps its own checkpoint, finished sub-runs are reused
            raise Preempted(
                e.step,
                e.reason,
                f"during {whose}'s {name} run {cfg.run_dir} ({e.detail}; finished sub-runs are kept and reused)",
            ) from None
        if self.ledger is not None:
            self.ledger.charge_mixer(charge_as, res["compute"].get("total", 0.0))
        res["reused"] = reused
        return res


def main(cfg: DictConfig) -> Any:
    """Hydra task: run, turning user errors into one clear line and a non-zero exit; the console output is kept
    in ``<run dir>/console.log`` and Hydra's record in ``<run dir>/.hydra/`` (tikmix.console).

    Returns what a Hydra sweeper optimises (``hydra/sweeper=optuna``, direction minimize): the run's mean
    per-domain validation loss (lower is better), a proxy run's mean target loss, or None for a multirun job
    that failed (the sweeper records it as a failed trial; error.json in its run dir says why).
    """
    with ConsoleLog() as console:  # <run dir>/console.log, written once the run owns its directory
        return _main(cfg, lambda run_dir, fresh: _record_start(cfg, run_dir, fresh, console))


def _record_start(cfg: DictConfig, run_dir: Path, fresh: bool, console: Any) -> None:
    """A run that passed every check: Hydra's .hydra/ record (fresh runs only) and the console log."""
    try:
        if fresh:
            write_hydra_record(run_dir, cfg)
        console.attach(run_dir / "console.log")
    except OSError as e:
        raise StorageError(f"cannot write into {run_dir}: {e.strerror or e}") from None


def _main(cfg: DictConfig, on_start: Callable[[Path, bool], None]) -> Any:
    t_task = time.time()  # Hydra made the run folder just before calling the task
    multirun = _is_multirun()
    try:
        res = run(cfg, on_start=on_start)
    except (TikmixError, Preempted) as e:
        code = exit_code(e)
        msg = " ".join(str(e).split("\n"))  # one line, whatever the message holds
        print(f"{'[tikmix]' if code in (75, 130) else 'error:'} {msg}", file=sys.stderr)
        if not multirun:
            if not isinstance(e, (Preempted, RunDirBusy)):  # a busy folder is another live run's
                _drop_if_made_empty(Path(str(cfg.run_dir)), t_task)
            sys.exit(code)
        _record_failure(cfg, e)
        if isinstance(e, Preempted) and _in_sweep_process():
            sys.exit(code)  # the SIGTERM was for the whole sweep: stop it (re-running it resumes this job)
        return None
    except Exception as e:  # noqa: BLE001 — in a sweep, one crashed job never takes down its siblings
        if not multirun:
            raise
        traceback.print_exc()
        _record_failure(cfg, e)
        return None
    if not res["val_loss"]:  # a proxy run (trainer.final_eval: targets | none)
        return res.get("target_loss_mean")
    return float(np.mean(list(res["val_loss"].values())))


def _drop_if_made_empty(run_dir: Path, t_task: float) -> None:
    """A refused run writes nothing: remove the run folder Hydra made for it (just before the task started), if
    it is still empty (a folder made earlier, by the user or another run, or one holding anything, stays)."""
    try:
        if run_dir.is_dir() and not any(run_dir.iterdir()) and run_dir.stat().st_mtime >= t_task - 2:
            run_dir.rmdir()
    except OSError:
        pass


def exit_code(e: BaseException) -> int:
    """75 (EX_TEMPFAIL) preempted, resumable; 130 interrupted (Ctrl-C), resumable; 74 (EX_IOERR) a write failed,
    resumable once there is space; 2 bad input (tikmix.errors lists them all)."""
    if isinstance(e, Preempted):
        return 130 if e.reason.startswith("SIGINT") else 75
    return 74 if isinstance(e, StorageError) else 2


def _is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 — not under Hydra
        return False


def _in_sweep_process() -> bool:
    """True when the job runs in the sweep's own process (Hydra's basic launcher), not in a worker."""
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
        code = 75 if all(f.get("exit_code") in (75, 130) for f in failed) else 1  # only stopped: resumable
        first = failed[0]
        print(
            f"{'[tikmix]' if code == 75 else 'error:'} {len(failed)} job(s) of the sweep did not finish "
            f"({', '.join(Path(f['dir']).name for f in failed[:5])}{' ...' if len(failed) > 5 else ''}); "
            f"first: {first['error']}",
            file=sys.stderr,
        )
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
        write_json_atomic(
            rd / "error.json",
            {
                "error": f"{type(e).__name__}: {e}",
                "time": time.time(),
                "exit_code": exit_code(e) if isinstance(e, (TikmixError, Preempted)) else 1,
            },
        )
    except Exception:  # noqa: BLE001
        pass
