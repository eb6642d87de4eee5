"""Checkpoints and resuming: which config a run is (its fingerprint), whether a checkpoint may resume it, and
atomic writes.

Atomic checkpoints: written to a temporary file in the same folder, fsynced, then renamed into place.

A crash at any moment leaves either the previous complete checkpoint or the new complete one, never a torn
file under the final name. A writer that fails (disk full: torch raises OSError or RuntimeError
"unexpected pos") removes its temporary file and raises CheckpointWriteError; the previous checkpoint stays.
Loading uses torch's weights-only unpickler: a checkpoint holds tensors and plain containers only, and
nothing in it is executed; :func:`check_checkpoint` then checks what it claims before it is used.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from tikmix.errors import CheckpointError, CheckpointWriteError, ConfigError
from tikmix.losses import CPU_BF16_MIN_HIDDEN, resolve_dtype

FORMAT = 1


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException as e:  # torch.save reports a full disk as RuntimeError: any failure is a failed write
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if not isinstance(e, Exception):  # KeyboardInterrupt and the like: not a write error
            raise
        why = (
            e.strerror
            if isinstance(e, OSError) and e.strerror
            else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        )
        raise CheckpointWriteError(
            f"cannot write checkpoint {path}: {why} — the previous checkpoint (if any) is intact"
        ) from None


_REQUIRED = (
    "step",
    "model",
    "optimizer",
    "scheduler",
    "mixer",
    "ledger",
    "tokens_seen",
    "weights_history",
    "val_history",
    "wall_time",
    "domains",
)


def check_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike, total_steps: int, domains: list[str]) -> None:
    """Refuse a checkpoint whose contents do not fit this run before anything uses them: a missing part,
    a step outside the budget, per-domain counts of other domains, a scheduler at another step."""
    bad = _what_is_wrong(ckpt, total_steps, domains)
    if bad:
        raise CheckpointError(f"checkpoint {path} is inconsistent: {bad}; delete it to start over")


def _what_is_wrong(ckpt: dict[str, Any], total_steps: int, domains: list[str]) -> str | None:
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        return f"it has no {', '.join(missing)}"
    step = ckpt["step"]
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= total_steps:
        return f"it claims step {step!r}, but this run has {total_steps} steps"
    if ckpt["domains"] != domains:
        return f"it was trained on domains {ckpt['domains']}, this run has {domains}"
    seen = ckpt["tokens_seen"]
    if not isinstance(seen, list) or len(seen) != len(domains) or not all(isinstance(x, int) and x >= 0 for x in seen):
        return f"tokens_seen {seen!r} is not a count per domain"
    sched = ckpt["scheduler"]
    if not isinstance(sched, dict) or sched.get("last_epoch", step) != step:
        return f"its learning-rate schedule is at step {sched.get('last_epoch') if isinstance(sched, dict) else sched!r}, its step is {step}"
    for key in ("model", "optimizer", "mixer", "ledger"):
        if not isinstance(ckpt[key], dict):
            return f"its {key} is a {type(ckpt[key]).__name__}, not a mapping"
    return None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except Exception as e:  # noqa: BLE001 — torch raises many types for a corrupt or truncated file
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({_why(e)}); delete it to start over"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a tikmix checkpoint of format {FORMAT}")
    return state


def _why(e: BaseException) -> str:
    """The gist of torch.load's error, in a few words (its messages run to paragraphs, and the weights-only
    one advises switching weights-only loading off, which a tikmix checkpoint never needs)."""
    msg = str(e).strip()
    if "WeightsUnpickler error:" in msg:
        rest = [line.strip() for line in msg.split("WeightsUnpickler error:", 1)[1].splitlines() if line.strip()]
        return f"the weights-only loader refused it: {rest[0] if rest else type(e).__name__}"
    first = msg.splitlines()[0].split(". ")[0] if msg else ""
    return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__


# ------------------------------------------------------------------------------- fingerprint and resuming
# Keys that do not change what a run computes: a resumed run may differ in these.
_NON_TRAJECTORY = {
    "logger",
    "run_dir",
    "eval.limit",
    "eval.bootstrap_iters",
    "eval.stage_bootstrap_iters",
    "eval.batch_size",
    "eval.max_batch_size",
    "eval.every_stage",
    "eval.log_level",
    "trainer.progress",
    "trainer.log_every",
    "trainer.ckpt_every",
    "trainer.save_final_model",
    "trainer.max_wall_s",
    "trainer.peak_flops",
    # compiled and eager runs compute the same model (equal within float tolerance, tested): a
    # checkpoint of one resumes in the other
    "trainer.compile",
    "trainer.compile_mode",
    "trainer.compile_min_seconds",
    # changes what a run computes only through the dtype trainer.dtype=auto resolves to, which
    # fingerprint_config puts in the fingerprint in auto's place
    "trainer.cpu_bf16_min_hidden",
    # warning thresholds of TiKMiX's and RegMix's (the mixture is the same whatever they are)
    "mixer.warn_fraction",
    "mixer.cv_warn_below",
}


# Keys added after runs were made, with the value that means what their absence meant: dropped from the
# fingerprint when they hold it, so checkpoints and cached sub-runs made before they existed stay valid. (The
# typed configs, tikmix/config.py, put every schema key into every config; before them a budget preset without
# evaluation sizes, or a run that computed everything after training, simply lacked these keys.)
_ADDED_KEYS: dict[str, Any] = {
    "trainer.warmup_steps": None,
    "trainer.final_eval": "full",
    "budget.val_tokens": 16384,
    "budget.test_tokens": 32768,
    "budget.eval_limit": None,
    "trainer.stop_at_stage": None,
    "trainer.init_from": None,
    "mixer.lgbm.n_trees": "holdout",  # RegMix's trees before cross-validation chose them
    "targets.loss": "answer",  # the loss on the gold answer's tokens, as every task target was scored before
}


def fingerprint_config(cfg: dict, device: torch.device) -> dict:
    """``cfg`` as the run computes it on ``device``, for :func:`fingerprint`: ``trainer.dtype=auto`` that resolves to
    bf16 autocast on a CPU (a CPU with bf16 matrix instructions, a model at least trainer.cpu_bf16_min_hidden
    wide) is the run ``trainer.dtype=bf16`` is, not the fp32 run auto meant there before; every other config is
    returned as it is, so its fingerprint stays what it was."""
    t = cfg.get("trainer") or {}
    if t.get("dtype") != "auto" or device.type != "cpu":
        return cfg
    hidden = (cfg.get("model") or {}).get("hidden_size")
    choice = resolve_dtype("auto", device, hidden, t.get("cpu_bf16_min_hidden", CPU_BF16_MIN_HIDDEN))
    if choice.amp is None:
        return cfg
    return {**cfg, "trainer": {**t, "dtype": "bf16"}}


def fingerprint(cfg: dict, data_inputs: str | None = None) -> str:
    """Which run a config is: a hash of its trajectory keys and, for local data files, of the files themselves
    (``data_inputs``, tikmix.data.shards.signature_digest): the same config over edited data is another run."""
    c = json.loads(json.dumps(cfg, default=str))
    if data_inputs is not None:
        c["_data_inputs"] = data_inputs
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


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items() if isinstance(d, dict) else []:
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def checkpoint_mismatch(run_dir: Path, container: dict, ckpt: dict, model: torch.nn.Module) -> str:
    """What differs between the run that wrote a checkpoint and this command: the config keys (from the run
    dir's config.yaml, written when that run started), else the model's parameter shapes."""
    old_path = run_dir / "config.yaml"
    if old_path.is_file():
        diff = _config_diff(old_path, container, ())
        if diff:
            return diff + f" (there = {old_path})"
    mine = model.state_dict()
    theirs = ckpt.get("model") if isinstance(ckpt.get("model"), dict) else {}
    shapes = [
        f"{k} {list(v.shape)} there, {list(mine[k].shape)} now"
        for k, v in theirs.items()
        if k in mine and hasattr(v, "shape") and tuple(v.shape) != tuple(mine[k].shape)
    ]
    if shapes:
        return (
            "the model differs: " + "; ".join(shapes[:3]) + (f" and {len(shapes) - 3} more" if len(shapes) > 3 else "")
        )
    return f"{old_path} is missing or unreadable, so what differs cannot be named"


def resume_point(
    run_dir: Path,
    container: dict,
    fp: str,
    model: torch.nn.Module,
    world: int,
    total_steps: int,
    domains: list[str],
    data_changed: Callable[[dict], str | None] | None = None,
    legacy_fp: str | None = None,
    dtype_changed: Callable[[dict], str | None] | None = None,
) -> dict[str, Any] | None:
    """The checkpoint this run resumes from (``<run dir>/checkpoints/last.pt``), or None for a fresh start. One
    of another config, another number of processes, or contents that do not fit this run is refused, naming
    what differs. ``fp``: this config's fingerprint (:func:`fingerprint` of ``container`` and the data's input
    digest); ``data_changed(ckpt)``: what of the data differs from what the checkpoint was trained on, if any;
    ``legacy_fp``: the fingerprint without the data's digest, which a checkpoint written before the digest was
    recorded carries (accepted: there is nothing to compare its data with); ``dtype_changed(ckpt)``: how the
    autocast dtype it was trained in differs from this run's, if it does (trainer.dtype=auto's choice on a CPU
    is not in the config files the refusal compares)."""
    path = run_dir / "checkpoints" / "last.pt"
    if not path.exists():
        return None
    ckpt = load_checkpoint(path)
    if ckpt.get("fingerprint") != fp and data_changed is not None:
        why = data_changed(ckpt)
        if why:
            raise CheckpointError(
                f"{run_dir} was trained on other data: {why}. Resuming would train the rest on data it did not "
                "start with; restore those files, or start afresh in another hydra.run.dir"
            )
    if (
        ckpt.get("fingerprint") != fp
        and dtype_changed is not None
        and _config_diff(run_dir / "config.yaml", container, ()) == ""
    ):
        why = dtype_changed(ckpt)  # the same config file: the dtype auto resolves to may differ
        if why:
            raise CheckpointError(f"{run_dir} holds a checkpoint that {why}")
    legacy = legacy_fp is not None and "data_inputs" not in ckpt and ckpt.get("fingerprint") == legacy_fp
    if ckpt.get("fingerprint") != fp and not legacy:  # legacy: written before the inputs were recorded
        raise CheckpointError(
            f"{run_dir} holds a checkpoint of a different config: {checkpoint_mismatch(run_dir, container, ckpt, model)}. "
            f"Re-run with the same overrides to resume, or choose another hydra.run.dir"
        )
    if ckpt.get("world_size", 1) != world:
        raise CheckpointError(
            f"{path} was written with {ckpt.get('world_size', 1)} processes; resume it with the same number (now {world})"
        )
    check_checkpoint(ckpt, path, total_steps, domains)  # what it claims (step, parts) fits this run
    return ckpt


# Keys in which a run may differ from the run it branches from (trainer.init_from): the mixture of the stages
# after the branch point, and what either run does after training.
_BRANCH_FREE = ("mixer.stages", "mixer.stages_file", "trainer.stop_at_stage", "trainer.init_from", "trainer.final_eval")


def branch_point(
    src: Path,
    container: dict,
    world: int,
    total_steps: int,
    stage_steps: list[int],
    domains: list[str],
    stages: list[list[float]] | None,
) -> dict[str, Any]:
    """The checkpoint a fresh run starts from with ``trainer.init_from=src``: ``src``'s last checkpoint, taken at
    one of this run's stage boundaries by a run of the same config but for the mixture of the later stages
    (mixer=schedule, ``stages``: this run's, one list of weights per stage). Anything else is refused with one
    line (ConfigError on ``trainer.init_from``), before anything is written."""
    path = src / "checkpoints" / "last.pt"
    if not path.is_file():
        raise ConfigError("trainer.init_from", f"{path} does not exist: name the run dir of a finished prefix run")
    ckpt = load_checkpoint(path)
    check_checkpoint(ckpt, path, total_steps, domains)
    step = ckpt["step"]
    if step not in stage_steps:
        raise ConfigError(
            "trainer.init_from", f"{path} is at step {step}, not at a stage boundary of this run ({stage_steps})"
        )
    if ckpt.get("world_size", 1) != world:
        raise ConfigError(
            "trainer.init_from", f"{path} was written with {ckpt.get('world_size', 1)} processes, now {world}"
        )
    diff = _config_diff(src / "config.yaml", container, _BRANCH_FREE)
    if diff is None:
        raise ConfigError("trainer.init_from", f"{src / 'config.yaml'} is missing or unreadable")
    if diff:
        raise ConfigError("trainer.init_from", f"{src} is a run of another config: {diff}")
    k = stage_steps.index(step) + 1
    theirs = (ckpt.get("mixer") or {}).get("stages")
    if stages is None or theirs is None or len(theirs) < k or not np.array_equal(np.asarray(theirs[:k]), stages[:k]):
        raise ConfigError(
            "trainer.init_from",
            f"{src} did not train this run's first {k} stage mixture(s) (both runs must be mixer=schedule, "
            f"the same up to step {step})",
        )
    return ckpt


def _config_diff(old_path: Path, container: dict, free: tuple[str, ...]) -> str | None:
    """The trajectory keys in which the run config at ``old_path`` differs from ``container``, ignoring ``free``
    ("" = none); None when that config cannot be read."""
    try:
        old = yaml.safe_load(old_path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(old, dict):
        return None
    a, b = _flat(old), _flat(json.loads(json.dumps(container, default=str)))
    skip = tuple(_NON_TRAJECTORY) + free
    absent = "(absent)"
    keys = sorted(
        k
        for k in set(a) | set(b)
        if not (k in skip or k.startswith(tuple(n + "." for n in skip)))
        and a.get(k, _ADDED_KEYS.get(k, absent)) != b.get(k, _ADDED_KEYS.get(k, absent))
    )
    more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
    return "; ".join(f"{k}: {a.get(k, absent)!r} there, {b.get(k, absent)!r} now" for k in keys[:6]) + more
