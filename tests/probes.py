"""A base for the tests' stand-in probes: a :class:`tikmix.mixer.Probe` whose every method refuses to be called
until a test gives it one, so a mixer that reaches for a member the test did not plan for fails loudly."""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Iterator

import numpy as np

from tikmix.mixer import MixtureSample, Probe, TargetLosses


class StubProbe(Probe):
    """Subclass it, set the attributes a test needs and override the methods it plans for. ``autocast`` is fp32
    (no autocast), as a CPU run's."""

    def autocast(self) -> ContextManager:
        return contextlib.nullcontext()

    def domain_batches(self, domain: str, n_tokens: int, split: str = "train") -> Iterator[dict]:
        raise self._unplanned("domain_batches")

    def mixture_batches(self, weights: np.ndarray, n_tokens: int) -> MixtureSample:
        raise self._unplanned("mixture_batches")

    def val_losses(self) -> dict[str, float]:
        raise self._unplanned("val_losses")

    def target_losses(self, n_tokens: int | None = None, charge_as: str | None = None) -> TargetLosses:
        raise self._unplanned("target_losses")

    def charge(self, flops: float, what: str) -> None:
        raise self._unplanned("charge")

    def _unplanned(self, member: str) -> Any:
        return AssertionError(f"{type(self).__name__}.{member} was called; this test's probe does not provide it")
