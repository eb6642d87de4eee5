"""Aioli (Chen et al., ICLR 2025, arXiv 2411.05735): online estimation of the linear dynamic mixing law.

Training after an optional restricted phase is split into T rounds. Each round:

1. **LearnParams** over its first m·k·I steps (the δ fraction of the round): K = m·k exploration intervals
   of I steps each, interval i training on the smoothed one-hot mixture P[order[i]] of domain order[i]
   (``one_hot_weight`` f on that domain, (1−f)/(m−1) on each other one; in methods.md's notation
   (1−ε)·1_j + ε·uniform with ε = m(1−f)/(m−1)). The order is k random permutations of the m domains,
   concatenated (the published code's sweeps), drawn from (seed, round). The mean loss on every target set
   is measured at each interval boundary: K+1 measurements, the "after" of an interval is the "before" of
   the next (measured once). β[i, j] += L_i(before) − L_i(after) for the interval of domain j, β /= k,
   and A_i solves β_i = P·A_i for every target i (:func:`learn_params`, a pure function).
2. **Normalise**: Ā = A − min(A) when min(A) < 0, then Ā /= sum(Ā) (:func:`normalize_A`).
3. Optional **EMA** of Ā over rounds: Ā_ema = (1−ema)·Ā + ema·Ā_ema(prev) (``ema`` = weight on the past,
   as in the published code; the first round has no past; ema = 0 turns it off).
4. **Exponentiated gradient**: p_j ∝ b_j · exp(η Σ_i Ā_ij) (:func:`eg_update`); train on p for the rest
   of the round. ``update: cumulative``: b = the previous round's p (the paper's p^t ∝ p^{t−1}·exp(...));
   ``update: anchored``: b = p⁰ every round (the published code whenever its EMA is on: the EMA of Ā
   already carries the history). Default (null) = what the published code does: anchored iff ema > 0.

Exploration steps are ordinary steps of the training budget (no extra tokens): the schedule is a pure
function of (step, config, seed), computed by :func:`aioli_schedule`, and ``weights(step)`` returns the
exploration mixture, the restricted phase's mixture or the current p. The evaluation passes at the
interval boundaries are the mixer's overhead and are charged to the ledger as ``mixer/aioli_eval``
(forward FLOPs = flops_per_token/3 per input token).

Defects of the public code this implementation must not repeat (methods.md): per-batch counts are the
sampler's (non-negative, summing to the batch, for any mixture); the mixtures trained on are exactly the
rows of P used in the solve (both come from :func:`exploration_mixtures`; ``history`` records P, the order,
the interval steps and the sequence counts actually drawn in each interval); the step counter is the
trainer's (``observe`` checks that the steps it sees are consecutive and counts them).

Choices where the paper/code is silent or inconsistent (documented at :class:`AioliConfig`):
* p⁰ (the mixture the first EG update multiplies, and the anchor of ``anchored`` updates): ``p0: uniform``
  (the published code: its dynamic phase starts from uniform even after a restricted phase) or ``p0: init``
  (the restricted phase's ``init_weights``; a domain with weight 0 there then stays at 0 for the whole run,
  multiplicative updates cannot revive it).
* The update rule with an EMA (item 4): the paper's formula is cumulative, the published runs (all with an
  EMA) anchored; η's published values were tuned with the latter.
* Hyperparameters left null take the published values of the closest setting (m ≤ 2, m = 3, m ≥ 4 → the
  m = 7 setting): see :data:`PUBLISHED`.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from tikmix.config import Number, check_choice, need
from tikmix.errors import ConfigError, DataError
from tikmix.mixer import DomainStats, Mixer, MixerConfig, MixerContext, Probe, register
from tikmix.mixer_helpers import wdict, weights_from_mapping

# Published settings (HazyResearch/aioli scripts/*/aioli/run.sh, SlimPajama, 160M Pythia):
#   m=2 (arxiv, stackexchange):  lp_rounds(k)=4, lp_steps=4,  one_hot_factor=0.625, eta=0.2, ema=0.1, update_steps=250
#   m=3 (+ book):                k=4,            lp_steps=6,  one_hot_factor=0.5,   eta=0.1, ema=0.5, update_steps=250
#   m=7 (full SlimPajama):       k=2,            lp_steps=10, one_hot_factor=0.75,  eta=1.0, ema=0.1, update_steps=200
PUBLISHED: dict[int, dict[str, Any]] = {
    2: {"k": 4, "interval_steps": 4, "one_hot_weight": 0.625, "eta": 0.2, "ema": 0.1, "round_steps": 250},
    3: {"k": 4, "interval_steps": 6, "one_hot_weight": 0.5, "eta": 0.1, "ema": 0.5, "round_steps": 250},
    7: {"k": 2, "interval_steps": 10, "one_hot_weight": 0.75, "eta": 1.0, "ema": 0.1, "round_steps": 200},
}


@dataclass
class AioliConfig(MixerConfig):
    """Aioli's parameters (conf/mixer/aioli.yaml). null = the published value of the closest setting
    (:data:`PUBLISHED`; HazyResearch/aioli run scripts, 160M Pythia, SlimPajama):

                 k   interval_steps  one_hot_weight  eta   ema   round_steps(update_steps)
      m <= 2:    4   4               0.625           0.2   0.1   250
      m == 3:    4   6               0.5             0.1   0.5   250
      m >= 4:    2   10              0.75            1.0   0.1   200      (the m = 7 setting)

    δ (the exploration fraction of a round) is implied: m·k·interval_steps / round length (0.13, 0.29, 0.70
    published)."""

    # T rounds over the dynamic steps; null = floor(steps / round_steps), at least 1. Steps that do not divide
    # evenly go one each to the last rounds (none are dropped)
    rounds: Optional[int] = None
    round_steps: Optional[int] = None  # target length of a round in steps when rounds is null (published update_steps)
    k: Optional[int] = None  # sweeps: each domain is explored k times per round (k random permutations, concatenated)
    interval_steps: Optional[int] = None  # optimiser steps per exploration interval (published lp_steps)
    # alternative to interval_steps: fraction of the shortest round spent exploring; interval_steps =
    # floor(delta·round / (m·k)). Give one of the two, not both
    delta: Optional[Number] = None
    # weight f of the explored domain; the others get (1−f)/(m−1). Must be in (1/m, 1] (methods.md's
    # (1−ε)·1_j + ε·uniform with ε = m(1−f)/(m−1))
    one_hot_weight: Optional[Number] = None
    eta: Optional[Number] = None  # exponentiated-gradient step size η
    # EMA of Ā across rounds, weight on the past (Ā ← (1−ema)·Ā_new + ema·Ā_prev); 0 = off
    ema: Optional[Number] = None
    # cumulative: p ∝ p_prev·exp(η Σ_i Ā_ij) (the paper's formula); anchored: p ∝ p0·exp(η Σ_i Ā_ema_ij) (the
    # published code whenever its EMA is on); null = as the published code: anchored iff ema > 0
    update: Optional[str] = None
    normalize_A: bool = True  # Ā = A − min(A) if min < 0, then / sum (the published --aioli_normalize_A)
    init_weights: Any = None  # {domain: weight}: the mixture of the restricted phase (init_steps); null = uniform
    # uniform | init: the mixture the first update multiplies (and anchored updates anchor to). The published
    # code uses uniform, even after a restricted phase; with init, a domain at weight 0 in init_weights stays at
    # 0 for good (multiplicative updates cannot revive it)
    p0: str = "uniform"
    init_steps: int = 0  # restricted mode: train on init_weights for this many steps before the first round (S_init)
    eval_tokens: Optional[int] = None  # input tokens of each target set per boundary evaluation; null = the whole set
    seed: Optional[int] = None  # exploration orders are drawn from (seed, round); null = the run seed

    def __post_init__(self) -> None:
        for key in ("k", "rounds", "round_steps", "interval_steps", "eval_tokens"):
            v = getattr(self, key)
            need(v is None or v >= 1, f"mixer.{key}", f"must be >= 1, got {v}")
        need(self.init_steps >= 0, "mixer.init_steps", f"must be >= 0, got {self.init_steps}")
        d = self.delta
        need(
            d is None or (math.isfinite(d) and 0 < d < 1),
            "mixer.delta",
            f"must be in (0, 1): a round needs exploitation steps, got {d}",
        )
        need(
            d is None or self.interval_steps is None,
            "mixer.delta",
            "give either mixer.delta (the interval length follows from it) or mixer.interval_steps, not both",
        )
        need(
            self.eta is None or (math.isfinite(self.eta) and self.eta >= 0),
            "mixer.eta",
            f"must be >= 0, got {self.eta}",
        )
        need(
            self.ema is None or 0 <= self.ema < 1,
            "mixer.ema",
            f"must be in [0, 1) (0 = no EMA; 1 would never update Ā), got {self.ema}",
        )
        check_choice("mixer.update", self.update, ("cumulative", "anchored", None))
        check_choice("mixer.p0", self.p0, ("uniform", "init"))


# --------------------------------------------------------------------------------------------------------
# the method, as pure functions
# --------------------------------------------------------------------------------------------------------
def exploration_mixtures(m: int, one_hot_weight: float) -> np.ndarray:
    """P [m, m]: row j = the smoothed one-hot mixture exploring domain j (f on j, (1−f)/(m−1) elsewhere).

    P = off·11ᵀ + (f − off)·I has eigenvalues 1 and f − off, so it is invertible iff f ≠ 1/m.
    """
    f = float(one_hot_weight)
    if m < 2:
        raise ValueError("Aioli needs at least 2 domains")
    if not (1.0 / m < f <= 1.0):
        raise ValueError(f"one_hot_weight must be in (1/m, 1] = ({1.0 / m:.4g}, 1], got {f}")
    off = (1.0 - f) / (m - 1)
    P = np.full((m, m), off)
    np.fill_diagonal(P, f)
    return P


def exploration_order(m: int, k: int, seed: int, round_idx: int) -> np.ndarray:
    """K = m·k domain indices: k random permutations of the m domains, concatenated; from (seed, round)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(round_idx), 0xA101]))
    return np.concatenate([rng.permutation(m) for _ in range(k)]).astype(np.int64)


def learn_params(losses: np.ndarray, order: Sequence[int], P: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """LearnParams' estimate from the K+1 boundary measurements of one round.

    ``losses`` [K+1, n]: the target losses before interval 0, after interval 0 (= before 1), ..., after K−1.
    ``order`` [K]: the domain explored in each interval (each of the m domains exactly k times).
    Returns (β [n, m], A [n, m]): β[i, j] = mean over the k intervals of domain j of the drop of target i's
    loss, and A with β_i = P·A_i for every row i (A = β·P⁻ᵀ).
    """
    losses = np.asarray(losses, dtype=np.float64)
    order = np.asarray(order, dtype=np.int64)
    m = P.shape[0]
    K = len(order)
    if losses.ndim != 2 or losses.shape[0] != K + 1:
        raise ValueError(f"need K+1 = {K + 1} rows of losses, got shape {losses.shape}")
    if np.any(np.bincount(order, minlength=m) != k):
        raise ValueError(f"the order must explore each of the {m} domains exactly k={k} times, got {order.tolist()}")
    drops = losses[:-1] - losses[1:]  # [K, n]
    beta = np.zeros((losses.shape[1], m))
    np.add.at(beta.T, order, drops)  # beta[:, order[i]] += drops[i]
    beta /= k
    A = np.linalg.solve(P, beta.T).T
    return beta, A


def normalize_A(A: np.ndarray) -> np.ndarray:
    """Ā = A − min(A) when min(A) < 0, then divided by the sum of its entries (all-zero stays zero)."""
    A = np.asarray(A, dtype=np.float64).copy()
    mn = A.min()
    if mn < 0:
        A -= mn
    s = A.sum()
    return A / s if s > 0 else A


def eg_update(p: np.ndarray, A: np.ndarray, eta: float) -> np.ndarray:
    """p_j ∝ p_j · exp(η Σ_i A_ij) (in log space; zero weights stay zero)."""
    p = np.asarray(p, dtype=np.float64)
    g = float(eta) * np.asarray(A, dtype=np.float64).sum(axis=0)
    with np.errstate(divide="ignore"):
        logit = np.log(p) + g
    logit -= logit[np.isfinite(logit)].max()
    w = np.exp(logit)
    return w / w.sum()


@dataclass(frozen=True)
class Round:
    start: int  # first step of the round
    explore_end: int  # first exploitation step (= start + K·interval_steps)
    end: int  # first step of the next round


def aioli_schedule(
    total_steps: int,
    init_steps: int,
    rounds: int | None,
    round_steps: int | None,
    m: int,
    k: int,
    interval_steps: int | None,
    delta: float | None,
) -> tuple[list[Round], int]:
    """The rounds over [init_steps, total_steps) and the interval length. -> (rounds, interval_steps).

    T = ``rounds``, or ⌊D / round_steps⌋ (at least 1) with D = total_steps − init_steps. The D steps are
    split as evenly as possible: every round has ⌊D/T⌋ steps and the last D mod T rounds one more (the
    remainder is spent, not dropped). The interval length is ``interval_steps``, or ⌊δ·(shortest round)/(m·k)⌋
    when ``delta`` is given. Each round must keep at least one exploitation step.
    """
    D = total_steps - init_steps
    if D <= 0:
        raise ConfigError(
            "mixer.init_steps", f"{init_steps} leaves no step for Aioli's rounds (the run has {total_steps} steps)"
        )
    if rounds is None:
        T = max(1, D // int(round_steps))
    else:
        T = int(rounds)
    if T > D:
        raise ConfigError("mixer.rounds", f"{T} rounds do not fit in the {D} dynamic steps of this budget")
    base, rem = divmod(D, T)
    lengths = [base + (1 if r >= T - rem else 0) for r in range(T)]
    K = m * k
    if delta is not None:
        interval_steps = int(delta * min(lengths) // K)
        if interval_steps < 1:
            raise ConfigError(
                "mixer.delta",
                f"δ={delta} of a {min(lengths)}-step round is less than one step for each of the "
                f"K=m·k={K} intervals; raise delta, lower k, use fewer rounds or a bigger budget",
            )
    out, s = [], init_steps
    for L in lengths:
        if K * interval_steps >= L:
            raise ConfigError(
                "mixer.interval_steps",
                f"LearnParams needs K·I = {m}·{k}·{interval_steps} = {K * interval_steps} steps per round but a round has only "
                f"{L} of this budget's {total_steps} steps (T={T} rounds); lower interval_steps or k, use fewer rounds, or "
                f"raise budget.total_tokens",
            )
        out.append(Round(s, s + K * interval_steps, s + L))
        s += L
    assert s == total_steps
    return out, int(interval_steps)


# --------------------------------------------------------------------------------------------------------
# the mixer
# --------------------------------------------------------------------------------------------------------
@register("aioli", AioliConfig)
class Aioli(Mixer):
    """Aioli as a Mixer (module doc)."""

    family = "baseline"
    summary = "Aioli: an online linear mixing law learnt in exploration rounds"
    help_rank, table_rank = 3, 4

    def __init__(self, cfg: Mapping[str, Any], domains: list[str], ctx: MixerContext):
        c = self.c = self.parse_config(cfg)
        m = len(domains)
        need(m >= 2, "mixer.name", f"Aioli needs at least 2 domains, the data has {m}")
        self.published_from = 2 if m <= 2 else 3 if m == 3 else 7
        pub = PUBLISHED[self.published_from]
        # the schedule is the published one when none of its keys is set: only then may a short budget scale it
        published_schedule = all(
            getattr(c, key) is None for key in ("rounds", "round_steps", "k", "interval_steps", "delta")
        )

        def given(key: str) -> Any:
            return pub[key] if getattr(c, key) is None else getattr(c, key)

        self.k, self.rounds, self.round_steps = given("k"), c.rounds, given("round_steps")
        self.delta = None if c.delta is None else float(c.delta)
        self.interval_steps = c.interval_steps if c.delta is not None else given("interval_steps")
        self.one_hot_weight = float(given("one_hot_weight"))
        need(
            1.0 / m < self.one_hot_weight <= 1.0,
            "mixer.one_hot_weight",
            f"must be > 1/m = {1.0 / m:.4g} and <= 1, got {self.one_hot_weight}",
        )
        self.eta, self.ema = float(given("eta")), float(given("ema"))
        self.normalize = c.normalize_A
        self.update = c.update or ("anchored" if self.ema > 0 else "cumulative")
        self.init_steps = c.init_steps
        self.eval_tokens = c.eval_tokens
        self.seed = c.seed if c.seed is not None else int(ctx.seed)
        super().__init__(c, domains, ctx)  # sets self._w = initial_weights() (checked on the simplex)
        self.P = exploration_mixtures(self.m, self.one_hot_weight)
        self.scaled: str | None = None  # what a budget shorter than one published round changed (printed, in info)
        try:
            self.schedule, self.interval_steps = aioli_schedule(
                int(ctx.total_steps),
                self.init_steps,
                self.rounds,
                self.round_steps,
                self.m,
                self.k,
                self.interval_steps,
                self.delta,
            )
        except ConfigError as e:  # a round longer than the budget (not a bad key): scale the published schedule
            if not published_schedule or e.field != "mixer.interval_steps":
                raise
            self._scale_to_budget(int(ctx.total_steps))
            print(f"[aioli] {self.scaled}", flush=True)
        self.K = self.m * self.k
        self._starts = [r.start for r in self.schedule]
        self._boundary: dict[int, tuple[int, int]] = {
            r.start + i * self.interval_steps: (ri, i) for ri, r in enumerate(self.schedule) for i in range(self.K + 1)
        }
        self._orders = [exploration_order(self.m, self.k, self.seed, ri) for ri in range(len(self.schedule))]
        self._init_w = self._w.copy()
        self._p0 = np.full(self.m, 1.0 / self.m) if c.p0 == "uniform" else self._init_w.copy()
        self._p = self._p0.copy()  # p^{t-1}: the mixture of the last exploitation phase
        self._ema_A: np.ndarray | None = None
        self._acc: dict[str, Any] | None = None  # the round in progress (losses so far, counts per interval)
        self._steps_observed = 0
        self.info = self._summary()

    def _summary(self) -> dict[str, Any]:
        """The schedule and parameters in force, for results.json (``info``); counters start at 0."""
        return {
            "published_setting_m": self.published_from,
            "scaled": self.scaled,
            "rounds": len(self.schedule),
            "round_lengths": [r.end - r.start for r in self.schedule],
            "k": self.k,
            "K": self.K,
            "interval_steps": self.interval_steps,
            "explore_steps_per_round": self.K * self.interval_steps,
            "delta_effective": [self.K * self.interval_steps / (r.end - r.start) for r in self.schedule],
            "one_hot_weight": self.one_hot_weight,
            "epsilon_equivalent": self.m * (1 - self.one_hot_weight) / (self.m - 1),
            "eta": self.eta,
            "ema": self.ema,
            "normalize_A": self.normalize,
            "update": self.update,
            "p0": wdict(self.domains, self._p0),
            "init_steps": self.init_steps,
            "init_weights": wdict(self.domains, self._init_w),
            "P": self.P.tolist(),
            "eval_flops": 0.0,
            "eval_passes": 0,
            "steps_observed": 0,
        }

    def _scale_to_budget(self, total_steps: int) -> None:
        """The published schedule shrunk to a budget shorter than one of its rounds (budget=smoke): one round over
        the dynamic steps, keeping the published exploration share δ where whole steps allow, and at least one
        step to train on what the round learnt; with fewer steps than domains + 1, no round (p0 throughout)."""
        D, m = total_steps - self.init_steps, self.m
        was = (
            f"the published schedule (m={self.published_from} setting: k={self.k}, {self.interval_steps}-step intervals, "
            f"{self.round_steps}-step rounds: {m * self.k * self.interval_steps} exploration steps for {m} domains)"
        )
        if D < m + 1:
            self.schedule = []
            self.scaled = (
                f"{was} does not fit this run's {D} steps, nor does one step per domain plus one to train on "
                f"the result ({m + 1}): no LearnParams round runs; the run trains the start mixture p0"
            )
            return
        delta = self.published_from * self.k * self.interval_steps / self.round_steps
        k = max(1, min(self.k, int(delta * D / m)))
        k = k if m * k <= D - 1 else 1
        interval = max(1, min(int(delta * D / (m * k)), self.interval_steps, (D - 1) // (m * k)))
        self.k, self.rounds = k, 1
        self.schedule, self.interval_steps = aioli_schedule(total_steps, self.init_steps, 1, None, m, k, interval, None)
        self.scaled = (
            f"{was} does not fit this run's {D} steps: scaled to 1 round, k={k}, {interval}-step intervals: "
            f"{m * k * interval} exploration + {D - m * k * interval} exploitation steps"
        )

    # --- interface --------------------------------------------------------------------------------------
    def initial_weights(self) -> np.ndarray:
        iw = self.c.init_weights
        if iw is None:
            return np.full(self.m, 1.0 / self.m)
        if not hasattr(iw, "items"):
            raise ConfigError("mixer.init_weights", f"expected a mapping domain -> weight, got {iw!r}")
        return weights_from_mapping(iw, self.domains, "mixer.init_weights", renormalize=False)

    def phase(self, step: int) -> tuple[str, int, int]:
        """("init", -1, -1) | ("explore", round, interval) | ("exploit", round, -1) | ("done", -1, -1)."""
        if step < self.init_steps:
            return "init", -1, -1
        if not self.schedule or step >= self.schedule[-1].end:
            return "done", -1, -1
        ri = bisect.bisect_right(self._starts, step) - 1
        r = self.schedule[ri]
        if step < r.explore_end:
            return "explore", ri, (step - r.start) // self.interval_steps
        return "exploit", ri, -1

    def weights(self, step: int) -> np.ndarray:
        kind, ri, i = self.phase(step)
        if kind == "init":
            return self._init_w.copy()
        if kind == "explore":
            return self.P[self._orders[ri][i]].copy()
        return self._p.copy()

    def probe_steps(self) -> list[int]:
        return sorted(self._boundary)

    def on_probe(self, probe: Probe) -> None:
        step = int(probe.step)
        if step not in self._boundary:
            return
        ri, i = self._boundary[step]
        losses = probe.target_losses(n_tokens=self.eval_tokens, charge_as="aioli_eval")
        if not losses:
            raise DataError("Aioli needs at least one target set (config: targets.domains)")
        names, L, flops = list(losses), np.asarray(list(losses.values()), dtype=np.float64), losses.flops
        self.info["eval_flops"] += flops
        self.info["eval_passes"] += 1
        if i == 0:
            if self._acc is not None:
                raise RuntimeError(
                    f"Aioli: round {self._acc['round']} is unfinished at the start of round {ri} (step {step})"
                )
            self._acc = {
                "round": ri,
                "targets": names,
                "losses": [L.tolist()],
                "counts": np.zeros((self.K, self.m), np.int64).tolist(),
                "eval_flops": flops,
            }
            return
        acc = self._acc
        if acc is None or acc["round"] != ri or len(acc["losses"]) != i:
            raise RuntimeError(
                f"Aioli: boundary {i} of round {ri} at step {step} does not follow the measurements held "
                f"({None if acc is None else (acc['round'], len(acc['losses']))})"
            )
        if names != acc["targets"]:
            raise RuntimeError(f"Aioli: the target sets changed within a round ({acc['targets']} -> {names})")
        acc["losses"].append(L.tolist())
        acc["eval_flops"] += flops
        if i == self.K:
            self._finish_round(step)

    def observe(self, stats: DomainStats) -> None:
        if int(stats.step) != self._steps_observed:
            raise RuntimeError(
                f"Aioli: observed step {stats.step} after {self._steps_observed} steps; the mixer's step "
                f"counter must equal the optimiser steps taken"
            )
        self._steps_observed += 1
        self.info["steps_observed"] = self._steps_observed
        kind, ri, i = self.phase(int(stats.step))
        if kind == "explore" and self._acc is not None and self._acc["round"] == ri and not stats.skipped:
            row = self._acc["counts"][i]
            for d, c in enumerate(np.asarray(stats.counts).tolist()):
                row[d] += int(c)

    # --- one round's estimate and update ----------------------------------------------------------------
    def _finish_round(self, step: int) -> None:
        acc = self._acc
        ri = acc["round"]
        r = self.schedule[ri]
        order = self._orders[ri]
        losses = np.asarray(acc["losses"])
        beta, A = learn_params(losses, order, self.P, self.k)
        A_bar = normalize_A(A) if self.normalize else A
        A_used = A_bar if self._ema_A is None else (1.0 - self.ema) * A_bar + self.ema * self._ema_A
        self._ema_A = A_used
        p_prev = self._p
        self._p = eg_update(p_prev if self.update == "cumulative" else self._p0, A_used, self.eta)
        I = self.interval_steps
        self.history.append(
            {
                "round": ri,
                "step": step,
                "round_steps": [r.start, r.end],
                "explore_steps": [r.start, r.explore_end],
                "intervals": [[r.start + i * I, r.start + (i + 1) * I] for i in range(self.K)],
                "order": [self.domains[j] for j in order],
                "order_idx": order.tolist(),
                "P": self.P.tolist(),
                "counts": acc["counts"],
                "targets": acc["targets"],
                "losses": acc["losses"],
                "beta": beta.tolist(),
                "A": A.tolist(),
                "A_normalized": A_bar.tolist(),
                "A_used": A_used.tolist(),
                "gradient": (self.eta * A_used.sum(axis=0)).tolist(),
                "weights_before": wdict(self.domains, p_prev),
                "weights": wdict(self.domains, self._p),
                "eval_flops": acc["eval_flops"],
            }
        )
        self._acc = None
        self.info["final_weights"] = wdict(self.domains, self._p)
        self.info["last_A"] = A.tolist()

    # --- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return self._envelope(
            1,
            p=self._p.tolist(),
            ema_A=None if self._ema_A is None else self._ema_A.tolist(),
            acc=self._acc,
            steps_observed=self._steps_observed,
        )

    def load_state_dict(self, d: dict) -> None:
        self._check_envelope(d)
        self._p = np.asarray(d["p"], dtype=np.float64)
        self._ema_A = None if d.get("ema_A") is None else np.asarray(d["ema_A"], dtype=np.float64)
        self._acc = d.get("acc")
        self._steps_observed = int(d["steps_observed"])
        self._load_records(d)
