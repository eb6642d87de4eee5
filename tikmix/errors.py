"""Errors the suite raises for bad input.

Every error a user can cause by a config, a data file or a checkpoint is one of these: ``train.py``
prints its message as one line and exits non-zero, without a traceback.
"""
from __future__ import annotations


class TikmixError(Exception):
    """Base class: a problem with the user's input, reported as one clear line."""


class ConfigError(TikmixError):
    """A config value is invalid. The message names the field and what is allowed."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"config error: {field}: {message}")


class DataError(TikmixError):
    """Data is missing, empty, unreadable or corrupt. The message names the file or domain."""


class CheckpointError(TikmixError):
    """A checkpoint is missing, corrupt, truncated, or belongs to another config/model."""
