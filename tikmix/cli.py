"""The command line's side of errors: Hydra's own composition errors (an unknown preset or key, an override it
cannot parse, a value a schema refuses) and an optimiser sweep with no finished trial, each as one ``error:``
line and an exit code (tikmix.errors lists the codes), without Hydra's multi-line report or a traceback."""

from __future__ import annotations

import os
import sys

from hydra.errors import HydraException, MissingConfigException, OverrideParseException

from tikmix.config import omegaconf_error_line


def hydra_error_line(e: BaseException) -> str | None:
    """One line for an error Hydra raises while composing the config (an unknown preset, an unknown key,
    an override it cannot parse), naming the group or key; None for any other exception."""
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
    # Hydra prints these errors itself (several lines) unless HYDRA_FULL_ERROR=1, then it re-raises them.
    before = os.environ.get("HYDRA_FULL_ERROR")
    asked_full = before == "1"  # the user wants the whole stack: keep it
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_main()
    except Exception as e:  # noqa: BLE001 - only Hydra's own errors are turned into a line
        line, code = hydra_error_line(e) or run_dir_error_line(e), 2
        if line is None:
            line, code = sweep_error_line(e), 1
        if line is None or asked_full:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(code)
    finally:  # called in-process (tests, notebooks) it must not leave the variable set for what runs next
        if before is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


def run_dir_error_line(e: BaseException) -> str | None:
    """One line for a run (or sweep) folder Hydra cannot create because a file stands at its path (or on it)."""
    if isinstance(e, (FileExistsError, NotADirectoryError)) and e.filename and not os.path.isdir(e.filename):
        return (
            f"config error: hydra.run.dir: {e.filename} is an existing file, not a folder; choose another "
            "hydra.run.dir (hydra.sweep.dir for a multirun)"
        )
    return None


def sweep_error_line(e: BaseException) -> str | None:
    """One line for an optimiser sweep (``hydra/sweeper=optuna``) in which no trial finished: the sweeper asks
    its study for the best trial and optuna raises; every failed job already printed its own error line."""
    if isinstance(e, ValueError) and "No trials are completed yet" in str(e):
        return (
            "the optimiser sweep has no finished trial: every run failed (each printed its error above; its "
            "run dir under hydra.sweep.dir holds error.json)"
        )
    return None
