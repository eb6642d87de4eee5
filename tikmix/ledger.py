"""Compute ledger: FLOPs spent by category, so tables can report mixture-search compute honestly.

Categories: ``train`` (the main run), ``eval`` (validation/test/benchmark passes), ``targets`` (the
target-loss pass of a run with ``trainer.final_eval: targets``, e.g. a RegMix proxy: the only evaluation
such a run does, booked apart so what a mixer is charged for it is visible) and ``mixer/<what>`` (the
mixer's own overhead: proxy runs, reference models, influence gradients, exploration passes).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Iterator


class Ledger:
    def __init__(self) -> None:
        self.flops: dict[str, float] = defaultdict(float)
        self._rebook: dict[str, str] = {}

    def add(self, category: str, flops: float) -> None:
        if flops < 0:
            raise ValueError("negative FLOPs")
        self.flops[self._rebook.get(category, category)] += float(flops)

    @contextlib.contextmanager
    def booked_as(self, category: str, instead: str) -> Iterator[None]:
        """Within the block, FLOPs added to ``category`` are booked as ``instead`` (code that charges
        ``eval`` need not know it runs as a proxy's target-loss pass)."""
        old = dict(self._rebook)
        self._rebook[category] = instead
        try:
            yield
        finally:
            self._rebook = old

    def charge_mixer(self, what: str, flops: float) -> None:
        self.add(f"mixer/{what}", flops)

    @property
    def mixer_total(self) -> float:
        return sum(v for k, v in self.flops.items() if k.startswith("mixer/"))

    def summary(self) -> dict[str, float]:
        out = dict(sorted(self.flops.items()))
        out["mixer_total"] = self.mixer_total
        out["total"] = sum(self.flops.values())
        return out

    def state_dict(self) -> dict:
        return dict(self.flops)

    def load_state_dict(self, d: dict) -> None:
        self.flops = defaultdict(float, {k: float(v) for k, v in d.items()})
