"""Atomic checkpoints: written to a temporary file in the same folder, fsynced, then renamed into place.

A crash at any moment leaves either the previous complete checkpoint or the new complete one, never a torn
file under the final name. Loading uses torch's weights-only unpickler: a checkpoint holds tensors and
plain containers only, and nothing in it is executed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from tikmix.errors import CheckpointError

FORMAT = 1


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
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
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)  # type: ignore[possibly-undefined]
        except (OSError, NameError):
            pass
        raise CheckpointError(
            f"cannot write checkpoint {path}: {e.strerror or e} — the previous checkpoint (if any) is intact"
        ) from None


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
