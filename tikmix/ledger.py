"""Compute ledger: FLOPs spent by category, so tables can report mixture-search compute honestly.

Categories: ``train`` (the main run), ``eval`` (validation/test/benchmark passes), and ``mixer/<what>``
(the mixer's own overhead: proxy runs, reference models, influence gradients, exploration passes).
"""
from __future__ import annotations

from collections import defaultdict


class Ledger:
    def __init__(self) -> None:
        self.flops: dict[str, float] = defaultdict(float)

    def add(self, category: str, flops: float) -> None:
        if flops < 0:
            raise ValueError("negative FLOPs")
        self.flops[category] += float(flops)

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
