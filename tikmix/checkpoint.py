"""Atomic checkpoints: written to a temporary file in the same folder, fsynced, then renamed into place.

A crash at any moment leaves either the previous complete checkpoint or the new complete one, never a torn
file under the final name. A writer that fails (disk full: torch raises OSError or RuntimeError
"unexpected pos") removes its temporary file and raises CheckpointWriteError; the previous checkpoint stays.
Loading uses torch's weights-only unpickler: a checkpoint holds tensors and plain containers only, and
nothing in it is executed; :func:`check_checkpoint` then checks what it claims before it is used.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from tikmix.errors import CheckpointError, CheckpointWriteError

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
        why = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise CheckpointWriteError(
            f"cannot write checkpoint {path}: {why} — the previous checkpoint (if any) is intact"
        ) from None


_REQUIRED = ("step", "model", "optimizer", "scheduler", "mixer", "ledger", "tokens_seen", "weights_history",
             "val_history", "wall_time", "domains")


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
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({_why(e)}); delete it to start over") from None
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
