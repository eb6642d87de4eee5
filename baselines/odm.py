"""ODM (Albalak et al. 2023, arXiv 2312.02406): online data mixing as an EXP3 bandit, one arm per domain.

The reward of an arm is the domain's training loss in the step's batch (from the same forward pass: no extra
compute). With t = step + 1 (the t-th optimiser step):

    ε_t = min(1/m, sqrt(ln m / (m·t)))
    π_t = (1 − m·ε_t) · softmax(ε_{t−1} · R̂) + ε_t          (every arm keeps at least ε_t; ε_0 := ε_1)
    R̂_d ← α·R̂_d + (1 − α)·L_d / q_d                          for every domain d present in the batch

α = ``smoothing`` (0.9 published). R̂ starts at 0, so π_1 is uniform. q_d is the importance weight:
``importance: pi`` (default, the paper's formula) uses q_d = π_d; the paper draws one domain per batch, so
π_d is the probability of observing arm d. Here a batch is a mixture with integer counts from the sampler,
under which domain d appears in the batch with probability exactly min(1, B·π_d) (systematic sampling on
the fractional parts), which ``importance: observed`` uses instead. Domains absent from the batch keep
their R̂ (their loss is nan in the stats).

Note what this optimises: high training loss is rewarded, so an unlearnable domain (the synthetic
``noise``) keeps the highest reward and the most probability. That is ODM's behaviour, not tuned away here.

The state is (R̂, the number of steps observed) plus the history; π at any step is recomputed from it, so a
resumed run continues exactly.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from baselines.aioli import as_float, as_int, need, read_config, wdict
from tikmix.mixer import DomainStats, Mixer, MixerContext, register

KEYS: dict[str, Any] = {
    "name": "odm",
    "smoothing": 0.9,
    "importance": "pi",
    "history_every": 10,
}
IMPORTANCE = ("pi", "observed")


def exploration_rate(m: int, t: int) -> float:
    """ε_t = min(1/m, sqrt(ln m / (m·t))) for t ≥ 1 (ε_0 := ε_1)."""
    t = max(1, int(t))
    return min(1.0 / m, math.sqrt(math.log(m) / (m * t))) if m > 1 else 1.0


def exp3_probs(R: np.ndarray, t: int) -> np.ndarray:
    """π_t = (1 − m ε_t)·softmax(ε_{t−1} R̂) + ε_t."""
    R = np.asarray(R, dtype=np.float64)
    m = len(R)
    eps, eps_prev = exploration_rate(m, t), exploration_rate(m, t - 1)
    z = eps_prev * R
    z = np.exp(z - z.max())
    return (1.0 - m * eps) * z / z.sum() + eps


@register("odm")
class ODM(Mixer):
    """ODM's EXP3 bandit as a Mixer (module doc)."""

    def __init__(self, cfg: Mapping[str, Any], domains: list[str], ctx: MixerContext):
        c = read_config(cfg, KEYS)
        self.alpha = as_float(c, "smoothing", 0.0, 1.0)
        need(c["importance"] in IMPORTANCE, "importance", f"one of {IMPORTANCE}, got {c['importance']!r}")
        self.importance = c["importance"]
        self.history_every = as_int(c, "history_every", 1)
        super().__init__(cfg, domains, ctx)
        self.R = np.zeros(self.m)
        self._t = 0  # optimiser steps observed
        self._last: dict[str, Any] | None = None
        self.info = {"smoothing": self.alpha, "importance": self.importance}

    def weights(self, step: int) -> np.ndarray:
        return exp3_probs(self.R, int(step) + 1)

    def observe(self, stats: DomainStats) -> None:
        step = int(stats.step)
        if step != self._t:
            raise RuntimeError(f"ODM: observed step {step} after {self._t} steps; steps must be observed once, in order")
        pi = self.weights(step)  # the π this step's batch was drawn with (R̂ has not changed since)
        counts = np.asarray(stats.counts)
        loss = np.asarray(stats.loss, dtype=np.float64)
        present = (counts > 0) & np.isfinite(loss)
        if self.importance == "pi":
            q = pi
        else:
            q = np.minimum(1.0, float(counts.sum()) * pi)
        R_new = self.R.copy()
        R_new[present] = self.alpha * self.R[present] + (1.0 - self.alpha) * loss[present] / q[present]
        self.R = R_new
        self._t += 1
        t = step + 1
        self._last = {"step": step, "weights": wdict(self.domains, pi), "eps": exploration_rate(self.m, t),
                      "loss": {d: (float(x) if p else None) for d, x, p in zip(self.domains, loss, present)},
                      "reward": wdict(self.domains, self.R)}
        if step % self.history_every == 0 or step == self.ctx.total_steps - 1:
            self.history.append(self._last)
        self.info.update(steps_observed=self._t, reward=wdict(self.domains, self.R),
                         final_weights=wdict(self.domains, self.weights(self._t)), eps=exploration_rate(self.m, self._t + 1))

    def state_dict(self) -> dict:
        return {"version": 1, "mixer": self.name, "domains": list(self.domains), "R": self.R.tolist(), "t": self._t,
                "history": list(self.history), "info": dict(self.info)}

    def load_state_dict(self, d: dict) -> None:
        if d.get("mixer") != self.name:
            raise ValueError(f"state is for mixer {d.get('mixer')!r}, not {self.name!r}")
        if list(d.get("domains", [])) != self.domains:
            raise ValueError(f"state is for domains {d.get('domains')}, this run has {self.domains}")
        self.R = np.asarray(d["R"], dtype=np.float64)
        self._t = int(d["t"])
        self.history = list(d.get("history", []))
        self.info = dict(d.get("info", self.info))
