"""Errors the suite raises for bad input and for a run directory it cannot write.

Every error a user can cause by a config, a data file or a checkpoint is one of these: ``train.py``
prints its message as one line and exits non-zero, without a traceback.

Exit codes of ``python train.py`` (tikmix.run.main):
  0   finished (or the run directory already held a finished run);
  1   a multirun in which some job did not finish (each such job's run dir holds error.json), or a bug
      (a traceback);
  2   bad input (:class:`TikmixError`): a config value, data, a checkpoint, a run directory in use by
      another live process (:class:`RunDirBusy`); nothing in the run directory or the data cache changed;
  74  a write failed (:class:`StorageError`: disk full, quota, read-only): the file being written is
      discarded, the previous checkpoint is intact; free space and run the same command to resume;
  75  preempted (SIGTERM, ``trainer.max_wall_s``): what finished is saved; run the same command to resume
      (a multirun exits 75 when every unfinished job was preempted).
"""
from __future__ import annotations


class TikmixError(Exception):
    """Base class: a problem with the user's input, reported as one clear line."""


class ConfigError(TikmixError):
    """A config value is invalid. The message names the field and what is allowed."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.detail = message  # what is wrong, without the field (for re-raising under another field name)
        super().__init__(f"config error: {field}: {message}")


class DataError(TikmixError):
    """Data is missing, empty, unreadable or corrupt. The message names the file or domain."""


class CheckpointError(TikmixError):
    """A checkpoint is missing, corrupt, truncated, or belongs to another config/model."""


class RunDirBusy(TikmixError):
    """Another live process holds the run directory (one run directory belongs to one process)."""


class StorageError(TikmixError):
    """Writing into the run directory failed (disk full, quota, read-only). Nothing is left half-written:
    the file being written is discarded and the previous one (checkpoint, metrics line) is intact."""


class CheckpointWriteError(StorageError, CheckpointError):
    """A checkpoint could not be written; the previous checkpoint is intact."""


def hydra_error_line(e: BaseException) -> str | None:
    """One line for an error Hydra raises while composing the config (an unknown preset, an unknown key,
    an override it cannot parse), naming the group or key; None for any other exception."""
    try:
        from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    except ImportError:  # pragma: no cover - hydra is a dependency
        return None
    if not isinstance(e, HydraException):
        return None

    def flat(text: str) -> str:
        keep = []
        for line in str(text).splitlines():
            if line.strip().startswith(("Config search path", "Search path", "Available options", "See https://")):
                break
            if line.strip():
                keep.append(line.strip())
        return " ".join(keep)

    if isinstance(e, MissingConfigException) and e.missing_cfg_file and "/" in e.missing_cfg_file:
        group, name = e.missing_cfg_file.rsplit("/", 1)
        options = [o for o in (e.options or []) if not o.startswith("_")]
        avail = f"; available: {', '.join(options)}" if options else ""
        return f"config error: {group}: no preset {name!r} (conf/{group}/{name}.yaml){avail}"
    if isinstance(e, OverrideParseException):
        key = str(e.override).split("=", 1)[0].lstrip("+~") or "override"
        return f"config error: {key}: cannot parse the override {e.override!r}: {flat(e.message)}"
    from tikmix.config import omegaconf_error_line

    typed = omegaconf_error_line(e)  # a value its schema refuses: the field and what the schema allows
    if typed is not None:
        return typed
    cause = e.__cause__
    key = getattr(cause, "full_key", None)
    detail = flat(str(e))
    if type(cause).__name__ in ("ConfigKeyError", "ConfigAttributeError"):  # a key the config does not have
        detail = f"no such key ({detail})"
    elif cause is not None:
        detail += f" ({flat(str(cause)).split(' full_key:')[0]})"
    return f"config error: {key}: {detail}" if key else f"config error: {detail}"


def hydra_cli(hydra_main) -> None:
    """Run a ``@hydra.main`` function as the command line does, but report config-composition errors
    (``mixer=nope``, ``trainer.lrr=1``, an unparsable override) as one ``error: ...`` line and exit 2, like
    every other user error; anything else propagates (a bug's traceback is shown whole)."""
    import os
    import sys

    # Hydra prints these errors itself (several lines) unless HYDRA_FULL_ERROR=1, then it re-raises them.
    asked_full = os.environ.get("HYDRA_FULL_ERROR") == "1"  # the user wants the whole stack: keep it
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_main()
    except Exception as e:  # noqa: BLE001 - only Hydra's own errors are turned into a line
        line, code = hydra_error_line(e), 2
        if line is None:
            line, code = sweep_error_line(e), 1
        if line is None or asked_full:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(code)


def sweep_error_line(e: BaseException) -> str | None:
    """One line for an optimiser sweep (``hydra/sweeper=optuna``) in which no trial finished: the sweeper asks
    its study for the best trial and optuna raises; every failed job already printed its own error line."""
    if isinstance(e, ValueError) and "No trials are completed yet" in str(e):
        return ("the optimiser sweep has no finished trial: every run failed (each printed its error above; its "
                "run dir under hydra.sweep.dir holds error.json)")
    return None
