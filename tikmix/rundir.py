"""A run directory belongs to one live process; what it holds is read with care.

The lock is an exclusive ``flock`` on the run directory itself (no lock file: a refused command adds
nothing to the directory). The kernel drops it when its holder exits, however it exits (SIGKILL included),
so a killed run never leaves it stuck. A second command on a held directory is refused with
:class:`RunDirBusy` naming the holder (exit 2); a sub-run (e.g. a RegMix proxy shared by two sweep jobs)
waits for the holder instead, then finds the sub-run finished and reuses it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tikmix.errors import DataError, RunDirBusy


@contextmanager
def locked(run_dir: Path, wait: bool = False) -> Iterator[None]:
    """Hold ``run_dir`` (created if missing) for the duration of the block."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _acquire(fd, run_dir, wait)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _acquire(fd: int, run_dir: Path, wait: bool) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        holder = lock_holder(run_dir)
    except OSError as e:  # a filesystem without flock (some network mounts): run unguarded, and say so
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            print(
                f"[tikmix] warning: cannot lock {run_dir} ({e.strerror}); make sure no other process uses it",
                file=sys.stderr,
            )
            return
        raise
    if not wait:
        raise RunDirBusy(
            f"{run_dir} is in use by another run ({holder}): a run directory belongs to one live "
            "process. Wait for it to end, or choose another hydra.run.dir"
        )
    print(f"[tikmix] waiting for {holder}, which is running the same sub-run in {run_dir}", file=sys.stderr, flush=True)
    fcntl.flock(fd, fcntl.LOCK_EX)


def lock_holder(run_dir: Path) -> str:
    """'pid N on HOST' for the process holding the flock of ``run_dir`` (from /proc/locks), as far as this
    host can see it."""
    host = socket.gethostname()
    try:
        st = os.stat(run_dir)
        dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                if "FLOCK" in parts and dev in parts and "->" not in parts:
                    return f"pid {parts[parts.index(dev) - 1]} on {host}"
    except (OSError, ValueError, IndexError):
        pass
    return f"a process on {host} or another host"


def clean_stale(run_dir: Path) -> None:
    """Remove temporary files that killed writers left (``.<name>.tmp-<pid>``: checkpoints, results.json,
    config.yaml, final_model/). Called under the lock, when no writer of this directory is alive."""
    for folder in (run_dir, run_dir / "checkpoints"):
        for p in folder.glob(".*.tmp*") if folder.is_dir() else []:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def read_results(path: Path, repair: bool = False) -> dict[str, Any] | None:
    """A finished run's results.json. A damaged one (not JSON, not an object, no compute record) is
    refused with DataError; with ``repair`` (a sub-run, which its checkpoint re-creates) it is moved aside
    to ``results.json.damaged-<time>`` and None is returned, so the run resumes and writes it again."""
    try:
        res = json.loads(path.read_text())
        why = (
            None
            if isinstance(res, dict) and isinstance(res.get("compute"), dict)
            else f"a JSON {type(res).__name__} without the run's compute record"
        )
    except (OSError, ValueError) as e:
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'empty'}"
    if why is None:
        return res
    if not repair:
        raise DataError(
            f"{path} is damaged ({why}); move it away and run the same command again to re-create it "
            "from the run's last checkpoint, or choose another hydra.run.dir"
        )
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, aside)
    print(f"[tikmix] {path} was damaged ({why}); moved it to {aside.name} and resuming the sub-run", file=sys.stderr)
    return None
