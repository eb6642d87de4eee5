"""SIGTERM (and Ctrl-C, SIGINT) in every phase of a run: record what finished, exit 75 (130), resume from there.

One handler per process, installed by :func:`handling` (nested runs, such as RegMix's proxies, share it).
What a SIGTERM does depends on the phase the process is in (:func:`phase`):

* a *deferred* phase (the training loop) only records the request; the loop checkpoints at the end of the
  current step and raises :class:`Preempted`. Stopping mid-step would lose the step's consistency.
* an *immediate* phase (setup, data, a mixer's search, a probe, an evaluation) raises :class:`Preempted` at
  once from the handler: these phases hold nothing that a checkpoint would keep (or, for probes and
  stage evaluations, the trainer saves the state from before them), so waiting would only delay the exit.

``Preempted`` derives from BaseException, like KeyboardInterrupt, so that the broad ``except Exception``
of libraries (lm-eval, datasets) cannot swallow it in the middle of an evaluation.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class Preempted(BaseException):
    """The run stopped early (SIGTERM, trainer.max_wall_s) after saving what it had; re-running resumes."""

    def __init__(self, step: int | None, reason: str, detail: str | None = None):
        self.step = step
        self.reason = reason
        self.detail = detail or f"checkpointed at step {step}"
        super().__init__(f"{reason}: {self.detail}; run the same command again to resume")

    def __reduce__(self):  # from a worker process (RegMix's parallel proxies) back to the parent intact
        return (Preempted, (self.step, self.reason, self.detail))


_reason: str | None = None  # set by the handler; read by the training loop and by phase()
_phases: list[list] = []  # [immediate, what] per nested phase, innermost last
_installed = 0  # nesting depth of handling()
_raised = False  # the handler raises at most once per request


def requested() -> str | None:
    """Why the run must stop (e.g. "SIGTERM received"), or None."""
    return _reason


# what a request says, by signal: Ctrl-C at a terminal (SIGINT) is handled as a scheduler's SIGTERM is, so that
# it too checkpoints and ends in one line, not a KeyboardInterrupt traceback (a second Ctrl-C while the
# checkpoint is written does not cut it short)
REASONS = {signal.SIGTERM: "SIGTERM received", signal.SIGINT: "SIGINT received (Ctrl-C)"}


def _on_term(signum, frame) -> None:  # noqa: ARG001
    global _reason, _raised
    _reason = _reason or REASONS.get(signum, "SIGTERM received")
    if _phases and _phases[-1][0] and not _raised:
        _raised = True
        raise Preempted(None, _reason, _phases[-1][1])


@contextmanager
def handling() -> Iterator[None]:
    """Install the SIGTERM handler for a run (the outermost call resets the request and restores the old
    handler at the end). Off the main thread, where Python cannot handle signals, this does nothing."""
    global _installed, _reason, _raised
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old: dict = {}
    if _installed == 0:
        _reason, _raised = None, False
        old = {sig: signal.signal(sig, _on_term) for sig in REASONS}
    _installed += 1
    try:
        yield
    finally:
        _installed -= 1
        if _installed == 0:
            for sig, handler in old.items():
                signal.signal(sig, handler)


@contextmanager
def phase(immediate: bool, what: str) -> Iterator[None]:
    """Run a block in a phase: ``immediate`` ones raise :class:`Preempted` on SIGTERM (also on entry, when a
    request is pending), deferred ones leave the stop to the training loop. ``what`` ends the message:
    where the run was and what is saved."""
    global _raised
    if immediate and _reason is not None and not _raised:
        _raised = True
        raise Preempted(None, _reason, what)
    _phases.append([immediate, what])
    try:
        yield
    finally:
        _phases.pop()


def describe(what: str) -> None:
    """Change what the innermost phase says it is doing (e.g. from setup to the final evaluation)."""
    if _phases:
        _phases[-1][1] = what
