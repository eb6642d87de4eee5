"""Run logging: metrics.jsonl in the run directory always, and W&B when configured.

W&B never fails a run: with no API key it logs offline into the run directory; any exception from wandb
is printed once and logging continues locally.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np


def to_builtin(x: Any) -> Any:
    """Numpy/torch values and mappings to plain Python containers and scalars (NaN kept): checkpoint-safe."""
    if isinstance(x, Mapping):
        return {str(k): to_builtin(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_builtin(v) for v in x]
    if isinstance(x, (np.ndarray, np.generic)) or (hasattr(x, "tolist") and hasattr(x, "ndim")):
        return to_builtin(x.tolist())
    return x


def _jsonable(x: Any) -> Any:
    """to_builtin, with non-finite floats as null (strict JSON)."""
    x = to_builtin(x)
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_jsonable(v) for v in x]
    return x


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(_jsonable(obj), f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _wandb_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


class RunLogger:
    def __init__(self, cfg: Mapping[str, Any], run_dir: Path, config: dict, name: str, resume_id: str | None = None,
                 write_metrics: bool = True):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl" if write_metrics else None
        self.wandb = None
        self.wandb_id: str | None = None
        self._warned = False
        if cfg.get("name") == "wandb":
            self._init_wandb(cfg, config, name, resume_id)

    def _init_wandb(self, cfg: Mapping[str, Any], config: dict, name: str, resume_id: str | None) -> None:
        try:
            import wandb

            mode = cfg.get("mode")
            if mode is None and not os.environ.get("WANDB_MODE") and not _wandb_key_configured():
                mode = "offline"
            run = wandb.init(
                project=cfg.get("project"), entity=cfg.get("entity"), group=cfg.get("group"),
                tags=list(cfg.get("tags") or []), name=name, config=config, dir=str(self.run_dir), mode=mode,
                id=resume_id, resume="allow" if resume_id else None, reinit="finish_previous",
                # system-metrics sampling costs CPU that a small CPU run needs; opt in with logger.system_metrics=true
                settings=wandb.Settings(x_disable_stats=not cfg.get("system_metrics", False)),
            )
            self.wandb = run
            self.wandb_id = getattr(run, "id", None)
        except Exception as e:  # noqa: BLE001 — W&B must never fail a run
            self._fail(e)

    def _fail(self, e: BaseException) -> None:
        if not self._warned:
            print(f"[tikmix] W&B disabled for this run after an error: {type(e).__name__}: {e}", file=sys.stderr)
            self._warned = True
        self.wandb = None

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        if self.metrics_path is not None:
            rec = {"step": step, **_jsonable(dict(metrics))}
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if self.wandb is not None:
            try:
                self.wandb.log(dict(metrics), step=step)
            except Exception as e:  # noqa: BLE001
                self._fail(e)

    def table(self, key: str, columns: list[str], rows: list[list[Any]], step: int | None = None) -> None:
        if self.wandb is None:
            return
        try:
            import wandb

            self.wandb.log({key: wandb.Table(columns=columns, data=rows)}, step=step)
        except Exception as e:  # noqa: BLE001
            self._fail(e)

    def summary(self, values: Mapping[str, Any]) -> None:
        if self.wandb is None:
            return
        try:
            for k, v in values.items():
                self.wandb.summary[k] = v
        except Exception as e:  # noqa: BLE001
            self._fail(e)

    def finish(self) -> None:
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception as e:  # noqa: BLE001
                self._fail(e)
            self.wandb = None
