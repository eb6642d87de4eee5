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
      (a multirun exits 75 when every unfinished job was preempted or interrupted).
  130 interrupted (Ctrl-C, SIGINT): handled as SIGTERM is (what finished is saved); run the same command to resume.
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
