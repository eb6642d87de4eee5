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

from tikmix.errors import StorageError


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
    """JSON written as :func:`write_text_atomic` writes text."""
    write_text_atomic(path, json.dumps(_jsonable(obj), indent=2))  # a value that does not serialise fails first


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write to a temporary file, then rename it into place: a failed write (disk full) leaves the previous
    file, or none, and raises StorageError; never a torn file under the final name."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write {path}: {e.strerror or e}; nothing was written under that name") from None


def _write(fd: int, data: memoryview) -> int:
    """os.write, named so that a test can make it fail as a full disk does."""
    return os.write(fd, data)


def append_line(path: Path, line: str) -> None:
    """Append one line; a write that fails (disk full) is cut back off, so the file never ends in a partial
    line, and raises StorageError."""
    data = memoryview(line.encode() + b"\n")
    # unbuffered: a buffered file would flush the failed bytes again when closed, and that second OSError
    # (not a StorageError) would end the run with a traceback
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            while data:
                data = data[_write(fd, data) :]
        except OSError as e:
            os.ftruncate(fd, start)
            raise StorageError(
                f"cannot write {path}: {e.strerror or e}; it ends at its last complete line "
                "and the last checkpoint is intact: free space and run the same command to resume"
            ) from None
    finally:
        os.close(fd)


def rewind_metrics(path: Path, nbytes: int | None, step: int) -> None:
    """Cut metrics.jsonl back to what a resumed checkpoint had logged, so that a resume neither repeats the
    steps logged after that checkpoint nor keeps a torn last line: to ``nbytes`` (its length when the
    checkpoint was written, when recorded and consistent), else to the complete lines of steps <= ``step``.
    ``nbytes=0, step=0`` empties it (a fresh start)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if nbytes is not None and nbytes <= size and _line_end(path, nbytes):
        if nbytes < size:
            os.truncate(path, nbytes)
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            for line in src:
                k = _step_of(line)
                if k is not None and k <= step:
                    dst.write(line)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot rewrite {path}: {e.strerror or e}; it is unchanged") from None


def _line_end(path: Path, n: int) -> bool:
    """True when the first ``n`` bytes of ``path`` end at a line boundary."""
    if n == 0:
        return True
    with open(path, "rb") as f:
        f.seek(n - 1)
        return f.read(1) == b"\n"


def _step_of(line: bytes) -> int | None:
    """The step of one complete metrics line, None for a torn or foreign one."""
    if not line.endswith(b"\n"):
        return None
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def _wandb_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


class RunLogger:
    def __init__(
        self,
        cfg: Mapping[str, Any],
        run_dir: Path,
        config: dict,
        name: str,
        resume_id: str | None = None,
        write_metrics: bool = True,
        identity: Mapping[str, Any] | None = None,
    ):
        """``identity``: W&B ``group`` / ``job_type`` / ``tags`` derived from the run (tikmix.report.wandb_identity);
        an explicit ``logger.group`` wins over the derived group, ``logger.tags`` are added to the derived tags."""
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl" if write_metrics else None
        self.wandb = None
        self.wandb_id: str | None = None
        self.wandb_info: dict[str, Any] | None = None  # id, name, group, job_type, tags, project, entity, mode
        self._warned = False
        if cfg.get("name") == "wandb":
            self._init_wandb(cfg, config, name, resume_id, dict(identity or {}))

    def _init_wandb(
        self, cfg: Mapping[str, Any], config: dict, name: str, resume_id: str | None, identity: dict[str, Any]
    ) -> None:
        try:
            import wandb

            mode = cfg.get("mode")
            if mode is None and not os.environ.get("WANDB_MODE") and not _wandb_key_configured():
                mode = "offline"
            group = cfg.get("group") or identity.get("group")
            tags = list(dict.fromkeys([*(identity.get("tags") or []), *(cfg.get("tags") or [])]))
            run = wandb.init(
                project=cfg.get("project"),
                entity=cfg.get("entity"),
                group=group,
                job_type=identity.get("job_type"),
                tags=tags,
                name=name,
                config=config,
                dir=str(self.run_dir),
                mode=mode,
                id=resume_id,
                resume="allow" if resume_id else None,
                reinit="finish_previous",
                # system-metrics sampling costs CPU that a small CPU run needs; opt in with logger.system_metrics=true
                settings=wandb.Settings(x_disable_stats=not cfg.get("system_metrics", False)),
            )
            self.wandb = run
            self.wandb_id = getattr(run, "id", None)
            self.wandb_info = {
                "id": self.wandb_id,
                "name": name,
                "group": group,
                "job_type": identity.get("job_type"),
                "tags": tags,
                "project": cfg.get("project"),
                "entity": cfg.get("entity"),
                "mode": mode or os.environ.get("WANDB_MODE") or "online",
            }
        except Exception as e:  # noqa: BLE001 — W&B must never fail a run
            self._fail(e)

    def _fail(self, e: BaseException) -> None:
        if not self._warned:
            print(f"[tikmix] W&B disabled for this run after an error: {type(e).__name__}: {e}", file=sys.stderr)
            self._warned = True
        self.wandb = None

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        if self.metrics_path is not None:
            append_line(self.metrics_path, json.dumps({"step": step, **_jsonable(dict(metrics))}))
        if self.wandb is not None:
            try:
                self.wandb.log(dict(metrics), step=step)
            except Exception as e:  # noqa: BLE001
                self._fail(e)

    def metrics_bytes(self) -> int | None:
        """metrics.jsonl's length (a checkpoint records it; see :func:`rewind_metrics`); None = not written here."""
        if self.metrics_path is None:
            return None
        try:
            return self.metrics_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_wandb(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """W&B only (values already kept in the run dir elsewhere, e.g. a mixer's history in results.json)."""
        if self.wandb is None or not metrics:
            return
        try:
            self.wandb.log(dict(metrics), step=step)
        except Exception as e:  # noqa: BLE001
            self._fail(e)

    def images(
        self, key: str, paths: list[str | os.PathLike], captions: list[str] | None = None, step: int | None = None
    ) -> None:
        """PNG files as W&B images under ``key`` (one image, or a gallery when there are several)."""
        if self.wandb is None or not paths:
            return
        try:
            import wandb

            imgs = [wandb.Image(str(p), caption=(captions[i] if captions else None)) for i, p in enumerate(paths)]
            self.wandb.log({key: imgs[0] if len(imgs) == 1 else imgs}, step=step)
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
