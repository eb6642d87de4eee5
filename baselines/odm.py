"""ODM (Albalak et al. 2023, arXiv 2312.02406): online data mixing as an EXP3 bandit, one arm per domain.

The reward of an arm is the domain's training loss L_d in the step's batch (from the same forward pass: no
extra compute). With t = step + 1 (the t-th optimiser step), ε_t = min(1/m, sqrt(ln m / (m·t))) (ε_0 := ε_1)
and every arm keeps at least ε_t. ``reward_update`` picks how R̂ (which starts at 0, so π_1 is uniform) and π
are computed; the three rules are those of alon-albalak/online-data-mixing@edbfdad
(megatron/data/data_sampling_utils.py), for domains d present in the batch (absent ones keep their R̂):

* ``smoothed_mean`` (default): R̂_d ← α·R̂_d + (1−α)·exp(L_d), no importance weight, and
  π_t = (1 − m·ε_t)·R̂/ΣR̂ + ε_t (uniform while ΣR̂ = 0). ``SmoothedMeanWeightUpdater.group_update``, the
  mixed-minibatch path (``train_mixed_minibatch`` in megatron/training.py; this suite's batches are mixed
  too). The release's README names this class "the data mixing implementation described in the paper", and
  the final weights it released for its 1B ODM run (alon_configs/train_data_weights/static_1B_final.yml:
  max/min 5.8 over 22 Pile domains) have the exp(loss) spread of this rule, not the ∝ loss of ``accumulate``
  nor the near-uniform of ``ema``, so the paper's numbers most likely came from it.
* ``accumulate``: R̂_d += (L_d/10)/q_d and π_t = (1 − m·ε_t)·softmax(ε_{t−1}·R̂) + ε_t. ``Exp3WeightUpdater``
  (``data_sampling_method: exp3``), textbook EXP3 with the release's /10 ("so that cumulative reward doesn't
  explode"). With every arm observed each step it settles at π_d ∝ L_d.
* ``ema``: R̂_d ← α·R̂_d + (1−α)·L_d/q_d with the same softmax: the paper's formula. R̂ stays O(L/π) while ε_{t−1}
  shrinks, so π drifts back to uniform (m = 4, one arm at twice the others' loss, every arm observed each
  step: its π is 0.30 at t = 100 and 0.26 at t = 20k, against a stable 0.40 with ``accumulate`` and 0.70 with
  ``smoothed_mean``; tests/test_odm.py).

α = ``smoothing`` (0.9: the release's default and the paper's). q_d, the importance weight of the two
EXP3 rules: ``importance: pi`` (default) uses q_d = π_d, the probability of drawing arm d when a batch is one
domain; under this suite's sampler a mixed batch contains domain d with probability exactly min(1, B·π_d)
(systematic sampling on the fractional parts), which ``importance: observed`` uses instead.

Note what this optimises: high training loss is rewarded, so an unlearnable domain (the synthetic
``noise``) keeps the highest reward and the most probability. That is ODM's behaviour, not tuned away here.

The state is (R̂, the number of steps observed) plus the history; π at any step is recomputed from it, so a
resumed run continues exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from tikmix.config import Number, need
from tikmix.mixer import DomainStats, Mixer, MixerConfig, MixerContext, register
from tikmix.mixer_helpers import wdict

REWARD_UPDATES = ("smoothed_mean", "accumulate", "ema")
IMPORTANCE = ("pi", "observed")
# the keys each rule uses, with their defaults; a key set for a rule that ignores it is refused
RULE_KEYS: dict[str, dict[str, Any]] = {
    "smoothed_mean": {"smoothing": 0.9},
    "accumulate": {"importance": "pi"},
    "ema": {"smoothing": 0.9, "importance": "pi"},
}
ACCUMULATE_SCALE = 0.1  # the release divides each reward by 10 before accumulating it


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


def linear_probs(R: np.ndarray, t: int) -> np.ndarray:
    """π_t = (1 − m ε_t)·R̂/ΣR̂ + ε_t, uniform while ΣR̂ = 0 (R̂ ≥ 0: an EMA of exp(loss))."""
    R = np.asarray(R, dtype=np.float64)
    m = len(R)
    s = R.sum()
    if not s > 0:
        return np.full(m, 1.0 / m)
    eps = exploration_rate(m, t)
    return (1.0 - m * eps) * R / s + eps


def probs(rule: str, R: np.ndarray, t: int) -> np.ndarray:
    return linear_probs(R, t) if rule == "smoothed_mean" else exp3_probs(R, t)


def update_rewards(
    rule: str, R: np.ndarray, loss: np.ndarray, q: np.ndarray, present: np.ndarray, alpha: float
) -> np.ndarray:
    """R̂ after one step (module doc); domains not ``present`` keep theirs. Pure function."""
    R = np.asarray(R, dtype=np.float64)
    new, p, x = R.copy(), present, np.asarray(loss, dtype=np.float64)[present]
    if rule == "accumulate":
        new[p] = R[p] + ACCUMULATE_SCALE * x / q[p]
    elif rule == "ema":
        new[p] = alpha * R[p] + (1.0 - alpha) * x / q[p]
    else:
        new[p] = alpha * R[p] + (1.0 - alpha) * np.exp(x)
    return new


@dataclass
class ODMConfig(MixerConfig):
    """ODM's parameters (conf/mixer/odm.yaml): the three reward rules of the release (module doc)."""

    # smoothed_mean: R̂_d ← α·R̂_d + (1−α)·exp(L_d); π = (1−m·ε_t)·R̂/ΣR̂ + ε_t (SmoothedMeanWeightUpdater.group_update,
    #   mixed minibatches). Default: the release's README names it the paper's implementation, and its released 1B
    #   final weights (static_1B_final.yml, max/min 5.8 over 22 domains) have this rule's exp(loss) spread
    # accumulate: R̂_d += (L_d/10)/q_d; π = (1−m·ε_t)·softmax(ε_{t−1}·R̂) + ε_t (Exp3WeightUpdater, method `exp3`):
    #   settles at π_d ∝ L_d
    # ema: R̂_d ← α·R̂_d + (1−α)·L_d/q_d, same softmax: the paper's formula; with a shrinking ε it drifts back to
    #   uniform (planted m=4 stream: top arm 0.26 at t=20k vs 0.40 accumulate)
    # (alon-albalak/online-data-mixing@edbfdad, megatron/data/data_sampling_utils.py, for the domains in the batch)
    reward_update: str = "smoothed_mean"
    # α of smoothed_mean and ema (null = 0.9, the release's default; its *_0.5smoothing scripts used 0.5); must
    # stay null with accumulate
    smoothing: Optional[Number] = None
    # q_d of accumulate and ema (null = pi): pi = π_d (the paper: one domain per batch, observed with probability
    # π_d); observed = min(1, batch·π_d), the probability that domain d appears in a mixed batch drawn by this
    # suite's sampler; must stay null with smoothed_mean
    importance: Optional[str] = None
    history_every: int = 10  # record π, R̂ and the batch losses in mixer_history every this many steps (and the last)

    def __post_init__(self) -> None:
        """Fill the rule's defaults into the keys left null; refuse keys the rule does not use."""
        rule = self.reward_update
        need(rule in REWARD_UPDATES, "mixer.reward_update", f"one of {REWARD_UPDATES}, got {rule!r}")
        used = RULE_KEYS[rule]
        for key in ("smoothing", "importance"):
            if key in used:
                setattr(self, key, used[key] if getattr(self, key) is None else getattr(self, key))
            else:
                need(getattr(self, key) is None, f"mixer.{key}", f"not used by reward_update {rule!r}; leave it null")
        a = self.smoothing
        need(a is None or (math.isfinite(a) and 0 <= a <= 1), "mixer.smoothing", f"must be in [0, 1], got {a}")
        need(
            self.importance in IMPORTANCE + (None,), "mixer.importance", f"one of {IMPORTANCE}, got {self.importance!r}"
        )
        need(self.history_every >= 1, "mixer.history_every", f"must be >= 1, got {self.history_every}")


@register("odm", ODMConfig)
class ODM(Mixer):
    """ODM's EXP3 bandit as a Mixer (module doc)."""

    family = "baseline"
    summary = "ODM: an EXP3 bandit over domains rewarded by the training loss"
    help_rank, table_rank = 4, 2

    def __init__(self, cfg: Mapping[str, Any] | ODMConfig, domains: list[str], ctx: MixerContext):
        c = self.c = self.parse_config(cfg)
        self.rule = c.reward_update
        self.alpha = None if c.smoothing is None else float(c.smoothing)
        self.importance = c.importance
        self.history_every = c.history_every
        super().__init__(c, domains, ctx)
        self.R = np.zeros(self.m)
        self._t = 0  # optimiser steps observed
        self._last: dict[str, Any] | None = None
        self.info = {"reward_update": self.rule, "smoothing": self.alpha, "importance": self.importance}

    def weights(self, step: int) -> np.ndarray:
        return probs(self.rule, self.R, int(step) + 1)

    def _importance(self, pi: np.ndarray, counts: np.ndarray) -> np.ndarray:
        if self.importance == "observed":
            return np.minimum(1.0, float(counts.sum()) * pi)
        return pi

    def observe(self, stats: DomainStats) -> None:
        step = int(stats.step)
        if step != self._t:
            raise RuntimeError(
                f"ODM: observed step {step} after {self._t} steps; steps must be observed once, in order"
            )
        pi = self.weights(step)  # the π this step's batch was drawn with (R̂ has not changed since)
        counts = np.asarray(stats.counts)
        loss = np.asarray(stats.loss, dtype=np.float64)
        present = (counts > 0) & np.isfinite(loss)
        self.R = update_rewards(self.rule, self.R, loss, self._importance(pi, counts), present, self.alpha)
        self._t += 1
        self._record(step, pi, loss, present)

    def _record(self, step: int, pi: np.ndarray, loss: np.ndarray, present: np.ndarray) -> None:
        self._last = {
            "step": step,
            "weights": wdict(self.domains, pi),
            "eps": exploration_rate(self.m, step + 1),
            "loss": {d: (float(x) if p else None) for d, x, p in zip(self.domains, loss, present)},
            "reward": wdict(self.domains, self.R),
        }
        if step % self.history_every == 0 or step == self.ctx.total_steps - 1:
            self.history.append(self._last)
        self.info.update(
            steps_observed=self._t,
            reward=wdict(self.domains, self.R),
            final_weights=wdict(self.domains, self.weights(self._t)),
            eps=exploration_rate(self.m, self._t + 1),
        )

    def state_dict(self) -> dict:
        return self._envelope(2, reward_update=self.rule, R=self.R.tolist(), t=self._t)

    def load_state_dict(self, d: dict) -> None:
        self._check_envelope(d)
        rule = d.get("reward_update", "ema")  # version 1 states came from the EMA rule, the only one then
        if rule != self.rule:
            raise ValueError(f"state holds {rule!r} rewards, this run uses reward_update {self.rule!r}")
        self.R = np.asarray(d["R"], dtype=np.float64)
        self._t = int(d["t"])
        self._load_records(d)
