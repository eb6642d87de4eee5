"""What a run leaves in its directory beside results.json: its console output and Hydra's record of the job.

``console.log``: everything the run prints (stdout and stderr: the start lines, warnings, the eval table,
the summary, an error line), so that a run with ``logger=none`` keeps its printed tables. Hydra's own
job_logging would log ``logging`` calls only; the suite prints. Output is held in memory until the run has
passed every check and owns its directory, then written there and followed: a refused command (bad input,
a finished or busy run dir) writes nothing. Progress-bar redraws (``\\r``) keep only their last state.

``.hydra/``: Hydra's ``config.yaml`` (the composed, unresolved job config), ``hydra.yaml`` and
``overrides.yaml``, as Hydra writes them when ``hydra.output_subdir`` is set. conf/config.yaml sets it to
null because Hydra writes them before the job runs, into any run dir, refused commands included; the suite
writes them itself when a run starts fresh (a resumed run keeps the record of the command that started it).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any, TextIO

from omegaconf import OmegaConf

from tikmix.runlog import write_text_atomic

# Output held before the run dir is known, at most (a run that prints more before it starts is not ours).
_HOLD_LIMIT = 1 << 20


class _Tee(io.TextIOBase):
    """A text stream that writes to the console stream it replaces and to a ConsoleLog."""

    def __init__(self, stream: TextIO, log: "ConsoleLog"):
        self.stream, self.log = stream, log

    def write(self, s: str) -> int:
        self.log.add(s)
        return self.stream.write(s)

    def flush(self) -> None:
        self.stream.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:  # tqdm and colour decisions follow the real console
        return self.stream.isatty()

    @property
    def buffer(self) -> Any:  # bytes written there reach the console, not the log
        return self.stream.buffer

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")


class ConsoleLog:
    """``with ConsoleLog() as log: ... log.attach(path)``: tee sys.stdout/sys.stderr into ``path``."""

    def __init__(self) -> None:
        self.held: list[str] = []
        self.size = 0
        self.file: TextIO | None = None
        self.partial = ""  # the current line, up to its newline (carriage returns overwrite it)

    def __enter__(self) -> "ConsoleLog":
        self.saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(sys.stdout, self), _Tee(sys.stderr, self)
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.stdout, sys.stderr = self.saved
        if self.file is not None:
            if self.partial:
                self.file.write(self.partial + "\n")
            self.file.close()
            self.file = None

    def add(self, s: str) -> None:
        if self.file is None:
            if self.size < _HOLD_LIMIT:
                self.held.append(s)
                self.size += len(s)
            return
        lines = (self.partial + s).split("\n")
        self.partial = lines.pop()
        for line in lines:
            self.file.write(line.rsplit("\r", 1)[-1] + "\n")
        self.file.flush()

    def attach(self, path: Path) -> None:
        """Write what was held to ``path`` (appending: a resumed run continues its log) and follow."""
        self.file = open(path, "a", encoding="utf-8")
        held, self.held = "".join(self.held), []
        self.add(held)


def write_hydra_record(run_dir: Path, job_cfg: Any) -> None:
    """``<run_dir>/.hydra/{config,hydra,overrides}.yaml`` as Hydra writes them; nothing outside a Hydra job."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
    except ValueError:  # not under Hydra (tests calling run() directly)
        return
    out = Path(run_dir) / ".hydra"
    out.mkdir(exist_ok=True)
    files = {
        "config.yaml": job_cfg,
        "hydra.yaml": OmegaConf.create({"hydra": hydra_cfg}),
        "overrides.yaml": hydra_cfg.overrides.task,
    }
    for name, cfg in files.items():
        write_text_atomic(out / name, OmegaConf.to_yaml(cfg, resolve=False))
