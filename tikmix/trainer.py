"""The one trainer every mixer runs through.

Each step draws a batch whose per-domain counts follow ``mixer.weights(step)``, takes one AdamW step
(gradient accumulation over micro-batches, clipping, warmup + cosine/WSD schedule) and reports the
per-domain training loss from the same forward pass to ``mixer.observe``. Before the steps a mixer asked for
(stage boundaries), the mixer gets a :class:`TrainerProbe` with model access. Checkpoints hold everything
needed to resume bit-exactly on CPU: model, optimiser, scheduler, mixer, sampler position, ledger, history.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from tikmix import perf, signals
from tikmix.checkpoint import save_checkpoint
from tikmix.config import BudgetConfig, TrainerConfig
from tikmix.errors import CheckpointError, ConfigError, DataError, TikmixError
from tikmix.ledger import Ledger
from tikmix.losses import DtypeChoice, autocast, batch_loss_sum, causal_lm_loss, resolve_dtype
from tikmix.mixer import DomainStats, Mixer, MixtureSample, Probe, TargetLosses
from tikmix.mixer_helpers import take_tokens
from tikmix.perf import Peak, check_peak_setting, resolve_peak
from tikmix.report import HistoryStream
from tikmix.runlog import RunLogger, to_builtin
from tikmix.sampler import MixtureSampler, _rng, mixture_counts
from tikmix.signals import Preempted


class NonFiniteLoss(TikmixError):
    pass


def dist_info() -> tuple[int, int]:
    """(rank, world size) of torch.distributed, (0, 1) when not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# A model preset's published warmup (trainer.warmup_steps: TinyLlama's 2,000 steps are 0.14 % of its run, RegMix's
# proxies' 100 are 10 %) is used while it is at most this share of the run; beyond it the schedule would be
# mostly warmup, which no publication ran, so a short budget (smoke, demo) keeps its own budget.warmup_frac.
WARMUP_MAX_SHARE = 0.1


def warmup_steps(tcfg: Any, bcfg: Any, total_steps: int) -> tuple[int, str | None]:
    """Linear-warmup steps of a run, and a note (None when nothing was replaced) for the console. ``tcfg`` and
    ``bcfg``: the ``trainer`` and ``budget`` sections (typed or composed: read by attribute)."""
    frac = bcfg.warmup_frac
    from_budget = int(round(float(frac) * total_steps))
    n = tcfg.warmup_steps
    if n is None:
        return from_budget, None
    if n <= WARMUP_MAX_SHARE * total_steps:
        return int(n), None
    return from_budget, (
        f"warmup: trainer.warmup_steps={n} (the model preset's published warmup) is more than a tenth "
        f"of this budget's {total_steps} steps; using budget.warmup_frac={frac} "
        f"instead: {from_budget} steps"
    )


def mixer_overhead(timing: Mapping[str, float], loop_s: float) -> tuple[float, float | None]:
    """The mixer's seconds (prepare before training, probes, observe calls) and their share of the run (the
    training loop plus prepare); the share is None before any time has passed."""
    mixer_s = sum(timing.get(k, 0.0) for k in ("prepare_s", "probe_s", "observe_s"))
    total = loop_s + timing.get("prepare_s", 0.0)
    return mixer_s, mixer_s / total if total > 0 else None


def lr_lambda(
    schedule: str, total: int, warmup: int, min_ratio: float, wsd_decay_frac: float
) -> Callable[[int], float]:
    if schedule not in ("cosine", "wsd", "constant"):
        raise ConfigError("trainer.schedule", f"unknown schedule {schedule!r}; allowed: cosine, wsd, constant")

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        if schedule == "cosine":
            p = min(1.0, (step - warmup) / max(1, total - warmup))
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))
        decay_start = total - int(round(wsd_decay_frac * total))
        if step < decay_start:
            return 1.0
        p = min(1.0, (step - decay_start) / max(1, total - decay_start))
        return 1.0 - (1.0 - min_ratio) * p

    return f


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError("device", f"unknown device {name!r}; allowed: auto, cpu, cuda, cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", f"{name} requested but no CUDA device is available; use device=cpu or auto")
    return dev


def adamw_extra_kwargs(device: torch.device) -> dict[str, Any]:
    """Fused AdamW (one kernel for every parameter) on a GPU; the default for-each implementation on CPU."""
    return {"fused": True} if device.type == "cuda" else {}


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


_COMPILE_WORDS = {"on": True, "off": False}  # the command line passes on/off as words (YAML reads them as bools)


def compile_setting(value: Any) -> bool | str:
    """``trainer.compile`` as True, False or "auto"; anything else is a ConfigError."""
    value = _COMPILE_WORDS.get(value, value) if isinstance(value, str) else value
    if not (isinstance(value, bool) or value == "auto"):
        raise ConfigError("trainer.compile", f"true (on), false (off) or auto, got {value!r}")
    return value


def compile_module(module: torch.nn.Module, enabled: Any, mode: Any) -> torch.nn.Module:
    """``module`` wrapped by torch.compile when ``enabled`` (``trainer.compile`` decided: true), else ``module``.

    The wrapper shares the module's parameters; checkpoints, probes and evaluation keep using the module
    itself, so state_dict keys never carry the wrapper's ``_orig_mod.`` prefix.
    """
    enabled = compile_setting(enabled)
    if enabled == "auto":
        raise ConfigError("trainer.compile", "auto is decided by the trainer (compile_decision), not here")
    if not enabled:
        return module
    mode = "default" if mode is None else mode
    if mode not in COMPILE_MODES:
        raise ConfigError("trainer.compile_mode", f"unknown mode {mode!r}; allowed: {', '.join(COMPILE_MODES)}")
    try:
        return torch.compile(module, mode=mode)
    except Exception as e:  # noqa: BLE001 — e.g. a Python version dynamo does not support
        raise ConfigError(
            "trainer.compile",
            f"torch.compile is unavailable here ({type(e).__name__}: {_first_line(e)}); set trainer.compile=false",
        ) from e


def cpp_compiler() -> str | None:
    """The C++ compiler inductor would build CPU kernels with ($CXX, else g++ / clang++ on the PATH), or None."""
    for name in (os.environ.get("CXX"), "g++", "clang++"):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


def compile_decision(
    device: torch.device, world: int, est_train_s: float | None, min_seconds: float
) -> tuple[bool, str]:
    """``trainer.compile=auto``: whether to compile, and why (one line). Compile when it pays: one process (compile
    under DDP/FSDP is untested), a GPU or a CPU with a C++ compiler, and an estimated training time (``est_train_s``,
    the remaining steps' FLOPs over the measured peak: None = unknown) of at least ``min_seconds``."""
    if world > 1:
        return False, f"auto: {world} ranks (compile under DDP/FSDP is untested)"
    if device.type == "cpu" and cpp_compiler() is None:
        return False, "auto: no C++ compiler for inductor's CPU kernels (set $CXX)"
    if device.type not in ("cpu", "cuda"):
        return False, f"auto: device {device.type}"
    if est_train_s is None:
        return False, "auto: the training time cannot be estimated (trainer.peak_flops=0 and no measured peak)"
    if est_train_s < float(min_seconds):
        return False, f"auto: estimated training {est_train_s:,.0f} s < trainer.compile_min_seconds {min_seconds:g}"
    return True, f"auto: estimated training {est_train_s:,.0f} s >= trainer.compile_min_seconds {min_seconds:g}"


def _first_line(e: BaseException) -> str:
    """The start of an error message on one line (compile errors put the cause on their second line)."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return " ".join(lines[:2])[:300]


def is_compile_failure(e: BaseException) -> bool:
    """An exception raised by torch.compile's machinery (dynamo tracing, inductor codegen, the C++ build)."""
    seen = 0
    while e is not None and seen < 8:
        if type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


def eval_windows(arr: np.ndarray, seq_len: int, n_tokens: int) -> np.ndarray:
    """Contiguous windows of seq_len+1 tokens (stride seq_len) from the start of a split: a fixed eval set."""
    n = max(1, min(n_tokens // seq_len, (len(arr) - 1) // seq_len))
    starts = np.arange(n, dtype=np.int64) * seq_len
    return np.asarray(arr[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int64)


@dataclass
class TrainState:
    step: int = 0
    tokens_seen: np.ndarray | None = None
    weights_history: list = field(default_factory=list)
    val_history: list = field(default_factory=list)
    wall_time: float = 0.0
    wandb_id: str | None = None
    skipped: list = field(default_factory=list)  # steps whose batch was skipped for a non-finite loss
    eval_history: list = field(default_factory=list)  # downstream evaluations at stage boundaries (eval.every_stage)
    # seconds of the training loop spent outside training steps, cumulative over resumes: probe_s (mixer.on_probe),
    # observe_s (mixer.observe), eval_s (validation and stage evaluations), ckpt_s (checkpoints), prepare_s
    # (mixer.prepare before training: proxies, reference models)
    timing: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunPlan:
    """What the config and the data fix before training: the domains, the steps and stage boundaries, where the
    run lives and which config it is (the fingerprint a checkpoint must carry to be resumed)."""

    domains: list[str]
    total_steps: int
    stage_steps: list[int]
    run_dir: Path
    fingerprint: str
    # the data cache entry trained on, and the digest of its local input files (None: synthetic or remote data):
    # a resumed run whose inputs were edited since is refused (tikmix.checkpoint.resume_point)
    data_key: str | None = None
    data_inputs: str | None = None


@dataclass
class TrainData:
    """What the trainer trains and evaluates on: the mixture sampler over the train splits, the validation
    splits (per domain) and the target sets the mixers optimise for."""

    sampler: MixtureSampler
    val_arrays: dict[str, np.ndarray]
    targets: dict[str, list[dict]]


@dataclass
class RunServices:
    """Where the trainer books compute (ledger), logs (RunLogger; None = nowhere) and, with eval.every_stage, the
    hook that scores the model at each stage boundary (eval.stage.stage_evaluator)."""

    ledger: Ledger
    logger: RunLogger | None = None
    stage_eval: Callable[[torch.nn.Module, int], dict | None] | None = None


class Trainer:
    def __init__(
        self,
        settings: TrainerConfig,
        budget: BudgetConfig,
        model: torch.nn.Module,
        mixer: Mixer,
        data: TrainData,
        plan: RunPlan,
        services: RunServices,
        device: torch.device,
        flops_per_token: float,
    ):
        """Complete at construction: the ``trainer`` and ``budget`` sections (typed, tikmix.config), the model and
        mixer, what it trains and evaluates on, the run's plan, and where it books compute and logs."""
        t = self.tcfg = settings
        self.model = model.to(device)
        self.mixer = mixer
        self.sampler = data.sampler
        self.targets = data.targets
        self.domains = list(plan.domains)
        self.m = len(self.domains)
        self.total_steps = plan.total_steps
        self.stage_steps = list(plan.stage_steps)
        # trainer.stop_at_stage: the run ends (checkpointed) at that boundary: a prefix other schedules continue from
        k = t.stop_at_stage
        self.stop_step = self.stage_steps[k - 1] if k else plan.total_steps
        self.run_dir = Path(plan.run_dir)
        self.fingerprint = plan.fingerprint
        self.data_key, self.data_inputs = plan.data_key, plan.data_inputs
        self.ckpt_path = self.run_dir / "checkpoints" / "last.pt"
        self.ledger = services.ledger
        self.logger = services.logger
        self.stage_eval = services.stage_eval  # eval.every_stage: scores the model at stage boundaries, or None
        self.device = device
        self.flops_per_token = flops_per_token
        self.seq_len = int(budget.seq_len)
        self.batch_size = int(budget.batch_size)
        self.micro_batch = int(budget.micro_batch)
        self.tokens_per_step = self.seq_len * self.batch_size
        self.rank, self.world = dist_info()
        if self.batch_size % self.world or (self.batch_size // self.world) % self.micro_batch:
            raise ConfigError(
                "budget.batch_size",
                f"{self.batch_size} sequences must split into {self.world} ranks of whole micro-batches of {self.micro_batch}",
            )
        self.ddp = self.model
        parallel = t.parallel
        if self.world > 1:
            if parallel == "fsdp":
                from torch.distributed.fsdp import fully_shard

                for layer in self.model.model.layers:
                    fully_shard(layer)
                fully_shard(self.model)
            else:
                from torch.nn.parallel import DistributedDataParallel as DDP

                self.ddp = DDP(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.parallel = parallel if self.world > 1 else "none"
        hidden = getattr(getattr(self.model, "config", None), "hidden_size", None)
        self.dtype_choice: DtypeChoice = resolve_dtype(t.dtype, device, hidden, t.cpu_bf16_min_hidden)
        self.amp_dtype = self.dtype_choice.amp
        # the training forward/backward runs through self.fwd: the (DDP-wrapped) model, compiled when asked;
        # trainer.compile=auto is decided when training starts (decide_compile), once the steps left are known
        self.compile_setting = compile_setting(t.compile)
        self.compile_reason = f"trainer.compile={t.compile}"
        self.fwd = self.ddp
        if self.compile_setting is True:
            self.fwd = compile_module(self.ddp, True, t.compile_mode)
        self.compiled = self.fwd is not self.ddp
        self.compile_s: float | None = None  # the first compiled step's time over the second's (this process)
        self._first_steps: list[float] = []  # the first compiled steps' seconds, until compile_s is known
        self.peak_setting = check_peak_setting(t.peak_flops)
        self.peak: Peak | None = None  # resolved once, lazily, when training starts (rank 0)
        self.mfu_values: list[float] = []  # per log interval, this process
        decay, no_decay = [], []
        for n, p in self.model.named_parameters():
            (no_decay if p.ndim < 2 or "norm" in n else decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": float(t.weight_decay)}, {"params": no_decay, "weight_decay": 0.0}],
            lr=float(t.lr),
            betas=tuple(t.betas),
            eps=float(t.eps),
            **adamw_extra_kwargs(device),
        )
        warmup, self.warmup_note = warmup_steps(t, budget, self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lr_lambda(t.schedule, self.total_steps, warmup, float(t.min_lr_ratio), float(t.wsd_decay_frac)),
        )
        self.val_windows = {d: eval_windows(a, self.seq_len, int(t.val_tokens)) for d, a in data.val_arrays.items()}
        self.state = TrainState(tokens_seen=np.zeros(self.m, dtype=np.int64))

    # --- helpers ---------------------------------------------------------------------------------------
    def autocast(self):
        """The run's autocast policy (``trainer.dtype``), for every forward pass: training, evaluation, probes."""
        return autocast(self.device, self.amp_dtype)

    def token_losses(self, windows: torch.Tensor, model: torch.nn.Module | None = None) -> torch.Tensor:
        """Per-token loss [b, T] of windows [b, T+1] (inputs = all but last, labels = all but first)."""
        return causal_lm_loss(self.model if model is None else model, windows[:, :-1], windows, autocast=self.autocast)

    @torch.no_grad()
    def eval_loss(self, windows: np.ndarray) -> float:
        was = self.model.training
        self.model.eval()
        total, n = 0.0, 0
        for i in range(0, len(windows), self.micro_batch):
            w = torch.from_numpy(windows[i : i + self.micro_batch]).to(self.device)
            tl = self.token_losses(w)
            total += float(tl.sum())
            n += tl.numel()
        self.model.train(was)
        self.ledger.add("eval", self.flops_per_token / 3.0 * n)
        return total / max(1, n)

    def val_losses(self) -> dict[str, float]:
        return {d: self.eval_loss(w) for d, w in self.val_windows.items()}

    def target_loss(self, batches: list[dict]) -> float:
        """Mean loss over the supervised tokens (labels != -100) of a target set, HF label convention; each
        batch's forward FLOPs are booked as ``eval``."""
        return self.target_pass(batches, book="eval")[0]

    @torch.no_grad()
    def target_pass(self, batches: list[dict], book: str | None) -> tuple[float, int, int]:
        """(mean loss over the supervised tokens, supervised tokens, input tokens) of a target set, in eval mode.
        With ``book``, each batch's forward FLOPs are added to that ledger category as it is scored."""
        was = self.model.training
        self.model.eval()
        total, n, n_in = 0.0, 0, 0
        for bt in batches:
            loss, n_lab, n_tok = batch_loss_sum(self.model, bt, device=self.device, autocast=self.autocast)
            total, n, n_in = total + float(loss), n + n_lab, n_in + n_tok
            if book is not None:
                self.ledger.add(book, self.flops_per_token / 3.0 * n_tok)
        self.model.train(was)
        return total / max(1, n), n, n_in

    # --- checkpoints -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        s = self.state
        return {
            "fingerprint": self.fingerprint,
            "data_key": self.data_key,
            "data_inputs": self.data_inputs,
            "step": s.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "mixer": to_builtin(self.mixer.state_dict()),
            "tokens_seen": s.tokens_seen.tolist(),
            "weights_history": s.weights_history,
            "val_history": s.val_history,
            "wall_time": s.wall_time,
            "wandb_id": s.wandb_id,
            "skipped": s.skipped,
            "eval_history": s.eval_history,
            "timing": dict(s.timing),
            "ledger": self.ledger.state_dict(),
            "domains": self.domains,
            "world_size": self.world,
            # the autocast trainer.dtype resolved to (auto depends on the CPU and the model): a branch checks it
            "autocast": self.dtype_choice.name,
            # CPU matmuls sum in another order with another thread count: a resume is then equal within float
            # tolerance, not bit for bit (tikmix.run says so on resume)
            "torch_threads": torch.get_num_threads(),
            # metrics.jsonl's length now: a resumed run cuts the lines logged after this checkpoint
            "metrics_bytes": self.logger.metrics_bytes() if self.logger is not None else None,
        }

    def save(self) -> None:
        if self.parallel == "fsdp":
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            sd = self.state_dict()
            sd["model"] = get_model_state_dict(self.model, options=opts)
            sd["optimizer"] = get_optimizer_state_dict(self.model, self.optimizer, options=opts)
        else:
            sd = self.state_dict() if self.rank == 0 else None
        if self.rank == 0:
            save_checkpoint(sd, self.ckpt_path)
        self.barrier()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def load(self, ckpt: dict, branch: bool = False) -> None:
        """Resume from ``ckpt``; ``branch``: it is another run's (trainer.init_from), whose mixer state and W&B run
        are not this run's (a schedule's mixture comes from its own config)."""
        if ckpt.get("domains") != self.domains:
            raise CheckpointError(
                f"checkpoint {self.ckpt_path} was trained on domains {ckpt.get('domains')}, this run has {self.domains}"
            )
        try:
            if self.parallel == "fsdp":
                from torch.distributed.checkpoint.state_dict import (
                    StateDictOptions,
                    set_model_state_dict,
                    set_optimizer_state_dict,
                )

                opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
                set_model_state_dict(self.model, ckpt["model"], options=opts)
                set_optimizer_state_dict(self.model, self.optimizer, ckpt["optimizer"], options=opts)
            else:
                self.model.load_state_dict(ckpt["model"])
                self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(
                f"checkpoint {self.ckpt_path} does not fit this model/optimiser: {str(e).splitlines()[0]}"
            ) from None
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if not branch:
            self.mixer.load_state_dict(ckpt["mixer"])
        self.ledger.load_state_dict(ckpt["ledger"])
        self.state = TrainState(
            step=int(ckpt["step"]),
            tokens_seen=np.asarray(ckpt["tokens_seen"], dtype=np.int64),
            weights_history=list(ckpt["weights_history"]),
            val_history=list(ckpt["val_history"]),
            wall_time=float(ckpt["wall_time"]),
            wandb_id=None if branch else ckpt.get("wandb_id"),
            skipped=list(ckpt.get("skipped", [])),
            eval_history=list(ckpt.get("eval_history", [])),
            timing={k: float(v) for k, v in (ckpt.get("timing") or {}).items()},
        )

    # --- the loop --------------------------------------------------------------------------------------
    def train_step(self, step: int, w: np.ndarray) -> tuple[float, DomainStats]:
        tokens, dom = self.sampler.batch(step, w)
        tokens_t = torch.from_numpy(tokens).to(self.device)
        dom_t = torch.from_numpy(dom).to(self.device)
        B, T = self.batch_size, self.seq_len
        counts = np.bincount(dom, minlength=self.m)
        lw = self.mixer.loss_weights(step)
        if lw is None:
            row_scale = None  # plain mean over every token of the batch
        else:  # sum_d a_d * mean loss of domain d: each row of domain d weighs a_d / (count_d * T)
            per_dom = np.asarray(lw, dtype=np.float64) / np.maximum(counts, 1) / T
            row_scale = torch.from_numpy(per_dom[dom]).to(self.device, torch.float32)
        # this rank's rows: a contiguous slice of the global batch (all of it in one process)
        per = B // self.world
        lo = self.rank * per
        local = torch.empty(per, T, device=self.device)
        self.optimizer.zero_grad(set_to_none=True)
        scale = float(self.world)  # DDP averages gradients over ranks; the objective is the global mean
        starts = list(range(lo, lo + per, self.micro_batch))
        for k, i in enumerate(starts):
            sync = k == len(starts) - 1 or self.parallel != "ddp"
            ctx = contextlib.nullcontext() if sync else self.ddp.no_sync()
            with ctx:
                tl = self.token_losses(tokens_t[i : i + self.micro_batch], self.fwd)
                if row_scale is None:
                    (tl.sum() * (scale / (B * T))).backward()
                else:
                    ((tl.sum(1) * row_scale[i : i + self.micro_batch]).sum() * scale).backward()
            local[i - lo : i - lo + self.micro_batch] = tl.detach()
        if self.world > 1:
            parts = [torch.empty_like(local) for _ in range(self.world)]
            dist.all_gather(parts, local)
            token_loss = torch.cat(parts)
        else:
            token_loss = local
        seq_loss = token_loss.mean(1)
        loss_sum = torch.zeros(self.m, device=self.device).index_add_(0, dom_t, seq_loss)
        dom_loss = loss_sum.cpu().numpy() / np.maximum(counts, 1)
        total = float(seq_loss.mean())
        if not math.isfinite(total):
            bad = [self.domains[d] for d in range(self.m) if counts[d] and not math.isfinite(dom_loss[d])]
            if self.tcfg.on_nonfinite == "skip":
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()  # the step is spent (the budget counts steps), the update is not taken
                self.state.skipped.append({"step": step, "domains": bad})
                print(
                    f"[tikmix] step {step}: non-finite loss in {bad}; batch skipped ({len(self.state.skipped)} so far)",
                    file=sys.stderr,
                )
                return total, DomainStats(
                    step=step,
                    counts=counts,
                    loss=np.full(self.m, np.nan),
                    tokens=np.zeros(self.m, dtype=np.int64),
                    windows=tokens,
                    row_domains=dom,
                    skipped=True,
                )
            raise NonFiniteLoss(
                f"non-finite training loss at step {step}; domains in the batch: "
                f"{[self.domains[d] for d in range(self.m) if counts[d]]}, non-finite in: {bad}. "
                f"The last checkpoint ({self.ckpt_path}) is intact; lower trainer.lr or check the data."
            )
        clip = self.tcfg.grad_clip
        if clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(clip))
        self.optimizer.step()
        self.scheduler.step()
        dom_loss[counts == 0] = np.nan
        self.ledger.add("train", self.flops_per_token * B * T)
        return total, DomainStats(
            step=step,
            counts=counts,
            loss=dom_loss,
            tokens=counts * T,
            windows=tokens,
            row_domains=dom,
            token_loss=token_loss,
        )

    def resolve_peak(self) -> Peak | None:
        """The peak FLOP/s MFU is measured against (None: trainer.peak_flops=0, or not rank 0). Once per run. On a
        CPU with a measured peak the other dtype's (fp32 beside bf16, and the reverse) is measured too and printed
        beside it, so the line shows how far the run's dtype is from the CPU's other limit."""
        if self.rank != 0 or self.peak_setting == 0:
            return None
        if self.peak is None:
            self.peak = resolve_peak(self.peak_setting, self.device, self.amp_dtype or torch.float32, self.world)
            other = ""
            if self.peak.source == "measured" and self.device.type == "cpu":
                flops, how = perf.measured_peak(self.device, self.other_dtype)
                self.other_peak = Peak(flops * self.world, "measured", how)
                other = f"; the {_short(self.other_dtype)} peak is {self.other_peak.flops:.3g} FLOP/s"
            print(
                f"[tikmix] MFU = {self.flops_per_token:.3g} FLOPs/token x tokens/s / the "
                f"{_short(self.amp_dtype or torch.float32)} peak {self.peak.describe()}{other}",
                flush=True,
            )
        return self.peak

    @property
    def other_dtype(self) -> torch.dtype:
        return torch.float32 if self.amp_dtype is torch.bfloat16 else torch.bfloat16

    def mfu_summary(self) -> dict:
        """For results.json: the peak used, its source (config / table / measured), the training dtype it is the
        peak of, the other dtype's measured peak on a CPU, the mean logged MFU."""
        if self.peak is None:
            return {"peak_flops": None, "source": "off" if self.peak_setting == 0 else None, "mean": None}
        mean = float(np.mean(self.mfu_values)) if self.mfu_values else None
        out = {**self.peak.as_dict(), "dtype": _short(self.amp_dtype or torch.float32)}
        other = getattr(self, "other_peak", None)
        if other is not None:
            out["other_peak"] = {"dtype": _short(self.other_dtype), **other.as_dict()}
        return {**out, "mean": mean, "intervals": len(self.mfu_values)}

    def decide_compile(self, peak: Peak | None) -> None:
        """trainer.compile=auto, when training starts: compile the training forward/backward if the estimated time
        of the steps left (FLOPs over ``peak``, else the configured or measured matmul peak of the run's dtype) is
        long enough (:func:`compile_decision`); printed in one line. Under torchrun auto never compiles, so every
        rank decides alike without measuring."""
        if self.compile_setting != "auto" or self.compiled:
            return
        est = None
        if self.world == 1:
            flops = self.flops_per_token * self.tokens_per_step * (self.stop_step - self.state.step)
            if peak is not None:
                rate = peak.flops
            elif self.peak_setting:
                rate = self.peak_setting
            else:
                rate = perf.measured_peak(self.device, self.amp_dtype or torch.float32)[0]
            est = flops / rate if rate else None
        on, self.compile_reason = compile_decision(self.device, self.world, est, float(self.tcfg.compile_min_seconds))
        if on:
            self.fwd = compile_module(self.ddp, True, self.tcfg.compile_mode)
            self.compiled = True
        if self.rank == 0:
            print(f"[tikmix] compile: {'on' if on else 'off'} ({self.compile_reason})", flush=True)

    def compile_summary(self) -> dict:
        """For results.json: the setting, whether training ran compiled and why, and the compile's seconds (the
        first compiled step over the second, in each process of a resumed run: inside the wall and training
        time)."""
        return {
            "setting": self.tcfg.compile,
            "compiled": self.compiled,
            "reason": self.compile_reason,
            "compile_s": self.state.timing.get("compile_s") if self.compiled else None,  # summed over resumes
        }

    def throughput_summary(self) -> dict:
        """For results.json: training throughput over training steps only, and where the rest of the time went
        (the mixer's probes, observe calls and prepare, evaluations, checkpoints), cumulative over resumes."""
        s, tm = self.state, self.state.timing
        tokens = s.step * self.tokens_per_step
        train_s = tm.get("train_s", 0.0)
        mixer_s, share = mixer_overhead(tm, s.wall_time)
        out = {
            "train_tokens_per_s": tokens / train_s if train_s > 0 else None,
            "wall_tokens_per_s": tokens / s.wall_time if s.wall_time > 0 else None,
            "train_time_s": train_s,
            "mixer_time_s": mixer_s,
            "mixer_share": share,
            "prepare_time_s": tm.get("prepare_s", 0.0),
            "probe_time_s": tm.get("probe_s", 0.0),
            "observe_time_s": tm.get("observe_s", 0.0),
            "eval_time_s": tm.get("eval_s", 0.0),
            "checkpoint_time_s": tm.get("ckpt_s", 0.0),
            "loop_time_s": s.wall_time,
        }
        if self.peak is not None and out["train_tokens_per_s"]:
            out["train_mfu"] = self.flops_per_token * out["train_tokens_per_s"] / self.peak.flops
        return out

    def _stage_eval_or_stop(self, step: int) -> dict | None:
        """The stage evaluation at ``step``; SIGTERM stops it at once (an evaluation keeps nothing worth
        waiting for): the state from before it is checkpointed, and the resumed run evaluates again."""
        if self.world > 1:  # the other ranks wait at a collective: stop with them, after it
            return self.stage_eval(self.model, step)
        try:
            with signals.phase(True, f"during the evaluation at step {step}"):
                return self.stage_eval(self.model, step)
        except Preempted as e:
            self.model.train()
            self.save()
            raise Preempted(step, e.reason) from None

    def _probe_or_stop(self, p: "TrainerProbe", step: int) -> None:
        """mixer.on_probe at ``step``; SIGTERM stops it at once (a probe may take minutes). The mixer's and the
        ledger's state from before the probe are put back and checkpointed, so the resumed run probes again
        from the same state (a probe restores the parameters it perturbs in its own ``finally``)."""
        if self.world > 1:  # every rank takes part in the probe's collectives: stop with them, after it
            self.mixer.on_probe(p)
            return
        before = copy.deepcopy((to_builtin(self.mixer.state_dict()), self.ledger.state_dict()))
        try:
            with signals.phase(True, f"during the mixer's probe at step {step}"):
                self.mixer.on_probe(p)
        except Preempted as e:
            p.close()
            self.mixer.load_state_dict(before[0])
            self.ledger.load_state_dict(before[1])
            self.save()
            raise Preempted(step, e.reason) from None

    def probe(self, step: int) -> "TrainerProbe":
        nxt = [s for s in self.stage_steps if s > step]
        stage_end = nxt[0] if nxt else self.total_steps
        return TrainerProbe(self, step, (stage_end - step) * self.tokens_per_step)

    def fit(self) -> TrainState:
        """Train to the end of the budget. SIGTERM or trainer.max_wall_s checkpoint and raise Preempted."""
        s = self.state
        bar = None
        if self.tcfg.progress and self.rank == 0:
            bar = tqdm(total=self.stop_step, initial=s.step, desc=f"{self.mixer.name}", unit="step", dynamic_ncols=True)
        stop: dict[str, str | None] = {"reason": None}
        try:  # SIGTERM during a step: checkpoint at its end (the loop reads signals.requested())
            with signals.handling(), signals.phase(False, "during training"):
                self._loop(s, bar, stop)
        finally:
            if bar is not None:
                bar.close()
        if signals.requested():  # it came during the final step: the end-of-training checkpoint is saved
            raise Preempted(s.step, signals.requested())
        return s

    def _loop(self, s: TrainState, bar: Any, stop: dict) -> None:
        """The training loop: at each step, stop if asked, run what a stage boundary holds, train one step in the
        mixer's mixture, log, validate and checkpoint. Training throughput counts training steps only: probes,
        mixer.observe, evaluations and checkpoints are timed apart (``s.timing``) and reported as the mixer's
        overhead, eval and checkpoint time."""
        probe_at = set(self.mixer.probe_steps())
        log_every, eval_every, ckpt_every = (self.tcfg.log_every, self.tcfg.eval_every, self.tcfg.ckpt_every)
        peak = self.resolve_peak() if s.step < self.stop_step else None  # before the clock starts
        if s.step < self.stop_step:
            self.decide_compile(peak)
        iv = _Interval(time.perf_counter(), s.step, s.timing.get("train_s", 0.0))
        t0 = time.perf_counter() - s.wall_time
        t_proc = time.perf_counter()
        stream = HistoryStream(self.logger, self.mixer) if self.logger is not None and self.rank == 0 else None
        self.model.train()
        while s.step < self.stop_step:
            step = s.step
            self._stop_if_asked(step, stop, time.perf_counter() - t_proc)
            self._boundary(step, step in probe_at, bar, stream)
            w = np.asarray(self.mixer.weights(step), dtype=np.float64)
            self._record_mixture(w, step, step in probe_at, log_every)
            loss, stats = self._timed_step(step, w)
            s.tokens_seen += stats.tokens
            s.step += 1
            s.wall_time = time.perf_counter() - t0
            if stream is not None:
                stream.flush(s.step)
            if bar is not None:
                bar.update(1)
            if s.step % log_every == 0 or s.step == self.stop_step:
                self._log_interval(iv, loss, stats, w, peak, bar)
            # a proxy run (trainer.final_eval: targets | none) needs no per-domain validation at its end
            if (eval_every and s.step % eval_every == 0) or (
                s.step == self.total_steps and self.tcfg.final_eval == "full"
            ):
                self._validate()
            if (ckpt_every and s.step % ckpt_every == 0) or s.step == self.stop_step:
                with _timed(s.timing, "ckpt_s"):
                    self.save()

    def _stop_if_asked(self, step: int, stop: dict, elapsed_s: float) -> None:
        """SIGTERM or trainer.max_wall_s: checkpoint and raise Preempted; under torchrun every rank stops at the
        same step."""
        max_wall = self.tcfg.max_wall_s
        stop["reason"] = stop["reason"] or signals.requested()
        if stop["reason"] is None and max_wall and elapsed_s > float(max_wall):
            stop["reason"] = f"trainer.max_wall_s={max_wall} reached"
        if self.world > 1:
            flag = torch.tensor([1.0 if stop["reason"] else 0.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() and not stop["reason"]:
                stop["reason"] = "stop requested on another rank"
        if stop["reason"]:
            self.save()
            raise Preempted(step, stop["reason"])

    def _boundary(self, step: int, probe: bool, bar: Any, stream: HistoryStream | None) -> None:
        """What a step may hold before it trains: the stage evaluation (eval.every_stage) and the mixer's probe;
        under torchrun rank 0's mixer decides and every rank takes its state."""
        s = self.state
        if (
            self.stage_eval is not None
            and step in self.stage_steps
            and self.rank == 0
            and not any(e.get("step") == step for e in s.eval_history)
        ):
            with _timed(s.timing, "eval_s"):
                entry = self._stage_eval_or_stop(step)
                if entry is not None:
                    s.eval_history.append(entry)
                self.model.train()
        if not probe:
            return
        with _timed(s.timing, "probe_s"):
            if bar is not None:
                bar.set_description(f"{self.mixer.name} (mixer probe)")
            p = self.probe(step)
            self._probe_or_stop(p, step)
            p.close()
            if bar is not None:
                bar.set_description(self.mixer.name)
        if stream is not None:
            stream.flush(step)
        if self.world > 1:
            obj = [to_builtin(self.mixer.state_dict()) if self.rank == 0 else None]
            dist.broadcast_object_list(obj, src=0)
            self.mixer.load_state_dict(obj[0])

    def _record_mixture(self, w: np.ndarray, step: int, probe: bool, log_every: int) -> None:
        """Record a changed mixture: always at a probe step (stage boundary), else at most once per log_every steps
        (mixers that move every step, like ODM, would otherwise log one entry per step)."""
        h = self.state.weights_history
        if not h or (
            not np.allclose(h[-1]["w"], w, rtol=0, atol=1e-12) and (probe or step - h[-1]["step"] >= log_every)
        ):
            h.append({"step": step, "w": w.tolist()})

    def _timed_step(self, step: int, w: np.ndarray) -> tuple[float, DomainStats]:
        """One training step (timed as train_s), then the mixer's observe (timed as observe_s)."""
        tm = self.state.timing
        t_step = time.perf_counter()
        with _timed(tm, "train_s"):
            try:
                loss, stats = self.train_step(step, w)
            except Exception as e:
                if self.compiled and is_compile_failure(e):
                    raise ConfigError(
                        "trainer.compile",
                        f"torch.compile failed at step {step} ({type(e).__name__}: "
                        f"{_first_line(e)}); set trainer.compile=false to train "
                        "without it",
                    ) from e
                raise
        if self.compiled and self.compile_s is None:
            self._note_compile(time.perf_counter() - t_step, last=step + 1 >= self.stop_step)
        with _timed(tm, "observe_s"):
            self.mixer.observe(stats)  # a skipped batch too (stats.skipped): per-step mixers count every step
        return loss, stats

    def _note_compile(self, seconds: float, last: bool) -> None:
        """Time the compile: the first compiled step (compile and run) less the second (run; a run of one step:
        the whole step). The run's wall and training time include it: it is charged to the run."""
        self._first_steps.append(seconds)
        if len(self._first_steps) < 2 and not last:
            return
        first, second = self._first_steps[0], self._first_steps[-1] if len(self._first_steps) > 1 else 0.0
        self.compile_s = max(0.0, first - second)
        self.state.timing["compile_s"] = self.state.timing.get("compile_s", 0.0) + self.compile_s
        if self.rank == 0:
            print(
                f"[tikmix] compile: {self.compile_s:.1f} s (first compiled step {first:.1f} s, second {second:.2f} s; "
                "inside the training time)",
                flush=True,
            )

    def _log_interval(
        self, iv: "_Interval", loss: float, stats: DomainStats, w: np.ndarray, peak: Peak | None, bar: Any
    ) -> None:
        """The log line at the end of a log interval: loss, LR, training and wall throughput, MFU, the mixer's share
        of the time, FLOPs so far, per-domain training losses and the mixture (metrics.jsonl, W&B, the bar)."""
        s, tm = self.state, self.state.timing
        now = time.perf_counter()
        n_tok = (s.step - iv.step) * self.tokens_per_step
        tps = n_tok / max(1e-9, tm.get("train_s", 0.0) - iv.train_s)  # training time only
        mixer_s, share = mixer_overhead(tm, s.wall_time)
        rec = {
            "train/loss": loss,
            "train/lr": self.scheduler.get_last_lr()[0],
            "train/tokens_per_s": tps,
            "train/tokens": int(s.tokens_seen.sum()),
            "perf/wall_tokens_per_s": n_tok / max(1e-9, now - iv.t),  # probes and evaluations included
            "perf/mixer_s": mixer_s,
            "perf/mixer_share": share,
            "perf/eval_s": tm.get("eval_s", 0.0),
            "compute/train_flops": self.ledger.flops.get("train", 0.0),
            "compute/eval_flops": self.ledger.flops.get("eval", 0.0),
            "compute/mixer_total_flops": self.ledger.mixer_total,
        }
        iv.t, iv.step, iv.train_s = now, s.step, tm.get("train_s", 0.0)
        postfix = {"loss": f"{loss:.3f}", "tok_s": f"{tps:,.0f}"}
        if peak is not None:
            mfu = self.flops_per_token * tps / peak.flops
            rec["train/mfu"] = mfu
            self.mfu_values.append(mfu)
            postfix["mfu"] = f"{mfu:.1%}"
        if mixer_s > 0:  # the mixer's share of the time, apart from training throughput
            postfix["mixer"] = f"{share:.0%}"
        rec.update(
            {f"train_loss/{d}": float(stats.loss[i]) for i, d in enumerate(self.domains) if np.isfinite(stats.loss[i])}
        )
        rec.update({f"weights/{d}": float(w[i]) for i, d in enumerate(self.domains)})
        if self.logger and self.rank == 0:
            self.logger.log(rec, s.step)
        if bar is not None:
            bar.set_postfix(postfix)

    def _validate(self) -> None:
        """Per-domain validation losses now (timed as eval_s), recorded and logged."""
        s = self.state
        with _timed(s.timing, "eval_s"):
            vl = self.val_losses()
            s.val_history.append({"step": s.step, "val_loss": vl})
        if self.logger and self.rank == 0:
            self.logger.log(
                {**{f"val_loss/{d}": v for d, v in vl.items()}, "val_loss/mean": float(np.mean(list(vl.values())))},
                s.step,
            )


@dataclass
class _Interval:
    """Where the current log interval started: wall clock, step, and the training seconds so far."""

    t: float
    step: int
    train_s: float


@contextlib.contextmanager
def _timed(timing: dict, key: str) -> Iterator[None]:
    """Add the block's seconds to ``timing[key]`` (not when it raises: a preempted phase is not counted)."""
    t = time.perf_counter()
    yield
    timing[key] = timing.get(key, 0.0) + time.perf_counter() - t


def _short(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(dtype, str(dtype).replace("torch.", ""))


class TrainerProbe(Probe):
    """Model access handed to a mixer at the steps it asked for (the members: tikmix.mixer.Probe)."""

    def __init__(self, trainer: Trainer, step: int, stage_tokens: int):
        self.tr = trainer
        self.step = step
        self.model = trainer.ddp  # under DDP, backward passes reduce probe gradients across ranks
        self.optimizer = trainer.optimizer
        self.device = trainer.device
        self.flops_per_token = trainer.flops_per_token
        self.stage_tokens = stage_tokens
        self.seq_len = trainer.seq_len
        self.targets = trainer.targets
        self.domains = trainer.domains
        self.train_tokens = {d: len(a) for d, a in zip(trainer.domains, trainer.sampler.arrays)}
        self._calls = 0
        self._was_training = trainer.model.training

    def autocast(self):
        return self.tr.autocast()

    def _to_batches(self, windows: np.ndarray) -> Iterator[dict]:
        mb = self.tr.micro_batch
        if self.tr.world > 1:  # each rank takes an equal contiguous share (padded by repeating rows)
            w = self.tr.world
            per = -(-len(windows) // w)
            windows = (
                np.concatenate([windows, windows[: per * w - len(windows)]]) if per * w > len(windows) else windows
            )
            windows = windows[self.tr.rank * per : (self.tr.rank + 1) * per]
        for i in range(0, len(windows), mb):
            x = torch.from_numpy(windows[i : i + mb, :-1]).to(self.device)
            yield {"input_ids": x, "labels": x}

    def domain_batches(self, domain: str, n_tokens: int, split: str = "train") -> Iterator[dict]:
        if split != "train":
            raise ValueError("probe.domain_batches samples the train split; targets hold held-out text")
        n = max(1, math.ceil(n_tokens / self.seq_len))
        d = self.domains.index(domain)
        return self._to_batches(self.tr.sampler.domain_sample(d, n, key=self.step))

    def mixture_batches(self, weights: np.ndarray, n_tokens: int) -> MixtureSample:
        self._calls += 1
        n = max(1, math.ceil(n_tokens / self.seq_len))
        rng = _rng(self.tr.sampler.seed, self.step, 0x3A, self._calls)
        counts = mixture_counts(np.asarray(weights, dtype=np.float64), n, rng)
        rows = [self.tr.sampler.windows(d, int(c), rng) for d, c in enumerate(counts) if c]
        return MixtureSample(self._to_batches(np.concatenate(rows)), counts)

    def val_losses(self) -> dict[str, float]:
        return self.tr.val_losses()

    def target_losses(self, n_tokens: int | None = None, charge_as: str | None = None) -> TargetLosses:
        losses, n_in = {}, 0
        for name, batches in self.targets.items():
            loss, n_lab, n_tok = self.tr.target_pass(
                take_tokens(batches, n_tokens), book="eval" if charge_as is None else None
            )
            if n_lab == 0:
                raise DataError(f"target {name!r} has no labelled tokens")
            losses[name] = loss
            n_in += n_tok
        flops = self.flops_per_token / 3.0 * n_in
        if charge_as is not None:  # one charge per measurement, as a mixer books its overhead (evaluation: per batch)
            self.charge(flops, charge_as)
        return TargetLosses(losses, flops)

    def charge(self, flops: float, what: str) -> None:
        self.tr.ledger.charge_mixer(what, flops)

    def close(self) -> None:
        self.tr.model.zero_grad(set_to_none=True)
        self.tr.model.train(self._was_training)
