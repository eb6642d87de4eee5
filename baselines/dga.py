"""DGA: online DoGE (Fan et al. 2023, arXiv 2310.15393; online form as in Fan, Grangier & Ablin 2024,
"Dynamic Gradient Alignment for Online Data Mixing").

Every ``update_every`` steps (probe steps 0, u, 2u, ...), on the current model, with ∇L_d the mean-token-loss
gradient of a ``tokens_per_domain`` sample of domain d (``probe.domain_batches``) and ∇L_v that of the first
``targets_tokens`` input tokens of target set v, the alignment S[v, d] = ⟨∇L_d, ∇L_v⟩ moves α by ``rule``:

``rule: dga`` (default; this suite's scale-free form of the DGA update):

    a_d = mean over target sets v of S[v, d]
    α̂   = α ⊙ exp(η · â) / Z                                  (â = a, or a / max_d |a_d|: see ``normalize``)
    α   ← ema·α + (1 − ema)·α̂                                 (EMA of the weights; ema = weight on the past)

``rule: doge`` (DoGE's own step, Olivia-fsm/DoGE@88400e9 src/trainer.py ``update_domain_weights``,
config/doge.json), every step by default:

    ĝ   = g · min(1, grad_clip / (‖g‖ + 1e-6))                (each domain and target gradient clipped)
    s_d = lr_t · Σ_v ⟨ĝ_d, ĝ_v⟩ / (mean_d ‖ĝ_d‖ + 1e-6),  clipped to lr_t·[score_clip]
    α   ← softmax(log α + s / μ)                              (μ = 0.01, score_clip = [0, 5], grad_clip = 5)

lr_t is the learning rate of the step about to be taken (``probe.optimizer``). The clipping is applied
exactly after the fact from the exact gradient norms (⟨ĝ_d, ĝ_v⟩ = S[v, d]·c_d·c_v). DoGE sums over target
sets; in its "universal" mode the targets are the training batch's own domains and the self term is dropped,
here targets are held-out sets, so every term is kept.

The alignment matrix comes from :func:`tikmix.method.influence.gradient_alignment`: it *is* TiKMiX's Group Influence
with the identity Hessian (same code, benefit sign convention: S > 0 = a step on domain d lowers the target's
loss), holding the n target gradients and streaming one domain gradient at a time. Its forward+backward
passes are charged to the ledger as ``mixer/dga_gradients``.

Choices (documented at :class:`DGAConfig`): raw inner products scale with the model's gradient norms (they
differ by orders of magnitude between a tiny CPU model and a 1B model), so ``rule: dga`` by default makes the
step scale-free, â = a / max_d |a_d| (the most aligned domain gets exp(η)); ``normalize: none`` applies
exp(η·a) to the raw products, as the formula reads. DoGE's rule is scale-aware through lr_t/mean‖ĝ‖ instead.
Unlike DoGE, which trains its proxy on the α-weighted sum of the batch's per-domain gradients, both rules here
change the mixture the main run *samples*, from gradients of separate probe samples. DoGE's own output for a
final run is the average of α over the updates; it is reported in ``info['average_weights']``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from tikmix.config import Number, check_choice, need
from tikmix.errors import DataError
from tikmix.method.influence import PARAM_SETS, PROJECTIONS, InfluenceResult, gradient_alignment
from tikmix.mixer import Mixer, MixerConfig, MixerContext, Probe, register
from tikmix.mixer_helpers import take_tokens, wdict

NORMALIZE = ("max_abs", "none")
# the keys each rule uses, with their defaults; a key set for the other rule is refused
RULE_KEYS: dict[str, dict[str, Any]] = {
    "dga": {"update_every": 10, "eta": 1.0, "ema": 0.5, "normalize": "max_abs"},
    "doge": {"update_every": 1, "mu": 0.01, "score_clip": [0.0, 5.0], "grad_clip": 5.0},  # DoGE config/doge.json
}


def dga_update(
    alpha: np.ndarray, a: np.ndarray, eta: float, ema: float, normalize: str
) -> tuple[np.ndarray, np.ndarray]:
    """One update: (new α, the step â actually used). Pure function."""
    a = np.asarray(a, dtype=np.float64)
    if normalize == "max_abs":
        s = np.abs(a).max()
        a_hat = a / s if s > 0 else np.zeros_like(a)
    else:
        a_hat = a
    with np.errstate(divide="ignore"):
        logit = np.log(np.asarray(alpha, dtype=np.float64)) + float(eta) * a_hat
    logit -= logit[np.isfinite(logit)].max()
    w = np.exp(logit)
    w /= w.sum()
    new = float(ema) * np.asarray(alpha, dtype=np.float64) + (1.0 - float(ema)) * w
    return new / new.sum(), a_hat


def clip_factors(norms: np.ndarray, max_norm: float | None) -> np.ndarray:
    """torch.nn.utils.clip_grad_norm_'s scale per gradient: min(1, max_norm / (‖g‖ + 1e-6)); 1 when off."""
    norms = np.asarray(norms, dtype=np.float64)
    if not max_norm:
        return np.ones_like(norms)
    return np.minimum(1.0, float(max_norm) / (norms + 1e-6))


def doge_scores(
    S: np.ndarray,
    dom_norms: np.ndarray,
    tgt_norms: np.ndarray,
    lr: float,
    score_clip: tuple[float, float],
    grad_clip: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """DoGE's per-domain step before /μ: (clipped scores, raw scores). S [n, m] = ⟨∇L_d, ∇L_v⟩ unclipped."""
    cd, cv = clip_factors(dom_norms, grad_clip), clip_factors(tgt_norms, grad_clip)
    a = (np.asarray(S, dtype=np.float64) * cv[:, None] * cd[None, :]).sum(axis=0)
    raw = float(lr) * a / (float(np.mean(np.asarray(dom_norms, dtype=np.float64) * cd)) + 1e-6)
    lo, hi = score_clip
    return np.clip(raw, float(lr) * lo, float(lr) * hi), raw


def doge_update(alpha: np.ndarray, scores: np.ndarray, mu: float) -> np.ndarray:
    """α ← softmax(log α + scores / μ). Pure function."""
    with np.errstate(divide="ignore"):
        logit = np.log(np.asarray(alpha, dtype=np.float64)) + np.asarray(scores, dtype=np.float64) / float(mu)
    logit -= logit[np.isfinite(logit)].max()
    w = np.exp(logit)
    return w / w.sum()


@dataclass
class DGAConfig(MixerConfig):
    """DGA's parameters (conf/mixer/dga.yaml); gradient passes are charged as mixer/dga_gradients."""

    # dga: a = mean_v S[v, :], α ← ema·α + (1−ema)·normalise(α ⊙ exp(η·â)), every 10 steps: this suite's
    #   scale-free step, kept as the default because the mixer is the DGA column of the comparison and DoGE's
    #   per-step rule multiplies the gradient overhead by 10 (below)
    # doge: DoGE's step (Olivia-fsm/DoGE@88400e9, src/trainer.py update_domain_weights; constants of
    #   config/doge.json): ĝ = g·min(1, grad_clip/‖g‖) for every domain and target gradient,
    #   s_d = lr_t·Σ_v <ĝ_d, ĝ_v> / mean_d ‖ĝ_d‖ clipped to lr_t·score_clip, α ← softmax(log α + s/μ), every step
    #   (lr_t = the learning rate of the step about to be taken)
    rule: str = "dga"
    update_every: Optional[int] = (
        None  # steps between updates (probe steps 0, u, 2u, ...); null = 10 (dga) or 1 (doge, as published)
    )
    # rule dga only (null = the default shown; must stay null with rule doge):
    eta: Optional[Number] = None  # step size η of the multiplicative update (1.0)
    ema: Optional[Number] = None  # weight of the previous α in the EMA (0.5; 0 = no smoothing)
    # max_abs (default): â = a / max_d |a_d| (scale-free: the most aligned domain gets exp(η)); none: â = a
    normalize: Optional[str] = None
    # rule doge only (null = DoGE's config/doge.json value; must stay null with rule dga):
    mu: Optional[Number] = None  # μ, the Bregman step: α ← softmax(log α + s/μ) (0.01; DoGE's OOD configs use 0.05)
    # [low, high] in units of lr_t ([0, 5]: a domain's log-weight moves by at most 5·lr_t/μ per update)
    score_clip: Any = None
    grad_clip: Optional[Number] = (
        None  # per-gradient norm clip before the inner products and the mean norm (5.0; 0 = off)
    )
    tokens_per_domain: int = 1024  # input tokens of each domain's gradient sample per update
    # input tokens of each target set's gradient per update (null = the whole set). Cost per update:
    # (m·tokens_per_domain + n_targets·targets_tokens) forward+backward tokens; on the demo budget (m = n = 6,
    # 4,096 tokens/step) about 30% of training every 10 steps, about 3x training every step (rule doge)
    targets_tokens: Optional[int] = 1024
    params: str = "all"  # all | no_embeddings: the parameters the gradients are taken over
    projection_dim: Optional[int] = (
        None  # random projection of gradients to this many dimensions (for large models); null = exact
    )
    projection_kind: str = "rademacher"  # rademacher | gaussian
    seed: Optional[int] = None  # projection seed base; null = the run seed

    def __post_init__(self) -> None:
        """Fill the rule's defaults into the keys left null; refuse keys only the other rule uses."""
        rule = self.rule
        need(rule in RULE_KEYS, "mixer.rule", f"one of {tuple(RULE_KEYS)}, got {rule!r}")
        for key, default in RULE_KEYS[rule].items():
            if getattr(self, key) is None:
                setattr(self, key, default)
        for other, keys in RULE_KEYS.items():
            for key in set(keys) - set(RULE_KEYS[rule]):
                need(
                    getattr(self, key) is None,
                    f"mixer.{key}",
                    f"only used by rule {other!r}; leave it null with rule {rule!r}",
                )
        for key in ("update_every", "tokens_per_domain", "targets_tokens", "projection_dim"):
            v = getattr(self, key)
            need(v is None or v >= 1, f"mixer.{key}", f"must be >= 1, got {v}")
        check_choice("mixer.params", self.params, PARAM_SETS)
        check_choice("mixer.projection_kind", self.projection_kind, PROJECTIONS)
        if rule == "dga":
            self._check_dga()
        else:
            self._check_doge()

    def _check_dga(self) -> None:
        need(math.isfinite(self.eta) and self.eta >= 0, "mixer.eta", f"must be >= 0, got {self.eta}")
        need(0 <= self.ema < 1, "mixer.ema", f"must be in [0, 1) (0 = no EMA; 1 would never update), got {self.ema}")
        check_choice("mixer.normalize", self.normalize, NORMALIZE)

    def _check_doge(self) -> None:
        need(math.isfinite(self.mu) and self.mu > 0, "mixer.mu", f"must be > 0, got {self.mu}")
        sc = self.score_clip
        try:
            lo, hi = (float(x) for x in sc)
        except (TypeError, ValueError):
            lo, hi = np.nan, np.nan
        need(
            np.isfinite(lo) and np.isfinite(hi) and lo <= hi,
            "mixer.score_clip",
            f"[low, high]: multiples of the learning rate with low <= high, got {sc!r}",
        )
        self.score_clip = [lo, hi]
        need(
            math.isfinite(self.grad_clip) and self.grad_clip >= 0,
            "mixer.grad_clip",
            f"must be >= 0 (0 = off), got {self.grad_clip}",
        )


@register("dga", DGAConfig)
class DGA(Mixer):
    """Online DoGE / DGA as a Mixer (module doc)."""

    family = "baseline"
    summary = "online DoGE: each domain's gradient alignment with the targets"
    help_rank, table_rank = 5, 3

    def __init__(self, cfg: Mapping[str, Any] | DGAConfig, domains: list[str], ctx: MixerContext):
        c = self.c = self.parse_config(cfg)
        self.rule, self.update_every = c.rule, c.update_every
        if self.rule == "dga":
            self.eta, self.ema, self.normalize = float(c.eta), float(c.ema), c.normalize
        else:
            self.mu, self.score_clip, self.grad_clip = float(c.mu), tuple(c.score_clip), float(c.grad_clip)
        self.tokens_per_domain, self.targets_tokens, self.projection_dim = (
            c.tokens_per_domain,
            c.targets_tokens,
            c.projection_dim,
        )
        self.seed = c.seed if c.seed is not None else int(ctx.seed)
        super().__init__(c, domains, ctx)
        self._sum_w = np.zeros(self.m)
        self._n_updates = 0
        self.info = {
            "rule": self.rule,
            "update_every": self.update_every,
            "gradient_flops": 0.0,
            "updates": 0,
            **{k: getattr(c, k) for k in RULE_KEYS[self.rule] if k != "update_every"},
        }

    def probe_steps(self) -> list[int]:
        return list(range(0, int(self.ctx.total_steps), self.update_every))

    def _alignment(self, probe: Probe) -> InfluenceResult:
        targets = {name: take_tokens(b, self.targets_tokens) for name, b in probe.targets.items()}
        if not targets:
            raise DataError("DGA needs at least one target set (config: targets.domains)")
        seed = int(np.random.SeedSequence([self.seed, int(probe.step), 0xD6A]).generate_state(1)[0])
        return gradient_alignment(
            probe.model,
            targets,
            {d: (lambda d=d: probe.domain_batches(d, self.tokens_per_domain)) for d in self.domains},
            params=self.c.params,
            projection_dim=self.projection_dim,
            projection_seed=seed,
            projection_kind=self.c.projection_kind,
            autocast=probe.autocast,
            device=probe.device,
            flops_per_token=probe.flops_per_token,
        )

    def _doge_step(self, res: InfluenceResult, probe: Probe) -> tuple[np.ndarray, dict[str, Any]]:
        lr = float(probe.optimizer.param_groups[0]["lr"])
        dom_norms = np.array([res.info["groups"][d]["grad_norm"] for d in self.domains])
        tgt_norms = np.array([res.info["norms"]["target_grad"][v] for v in res.targets])
        s, raw = doge_scores(res.S, dom_norms, tgt_norms, lr, self.score_clip, self.grad_clip)
        rec = {"lr": lr, "score_raw": wdict(self.domains, raw), "grad_norm": wdict(self.domains, dom_norms)}
        return doge_update(self._w, s, self.mu), {"a_step": wdict(self.domains, s), **rec}

    def on_probe(self, probe: Probe) -> None:
        t0 = time.perf_counter()
        res = self._alignment(probe)
        flops = float(res.info["flops"])
        probe.charge(flops, "dga_gradients")
        a = res.S.mean(axis=0)  # [m]: mean over targets
        w_prev = self._w
        if self.rule == "doge":
            self._w, rec = self._doge_step(res, probe)
        else:
            self._w, a_hat = dga_update(w_prev, a, self.eta, self.ema, self.normalize)
            rec = {"a_step": wdict(self.domains, a_hat)}
        self._sum_w += self._w
        self._n_updates += 1
        self.history.append(
            {
                "step": int(probe.step),
                "alignment": res.as_dict(),
                "a": wdict(self.domains, a),
                **rec,
                "weights_before": wdict(self.domains, w_prev),
                "weights": wdict(self.domains, self._w),
                "flops": flops,
                "wall_s": time.perf_counter() - t0,
            }
        )
        self.info["gradient_flops"] += flops
        self.info["updates"] = self._n_updates
        self.info["final_weights"] = wdict(self.domains, self._w)
        self.info["average_weights"] = wdict(self.domains, self._sum_w / self._n_updates)

    def state_dict(self) -> dict:
        return self._envelope(
            2, rule=self.rule, w=self._w.tolist(), sum_w=self._sum_w.tolist(), n_updates=self._n_updates
        )

    def load_state_dict(self, d: dict) -> None:
        self._check_envelope(d)
        if d.get("rule", "dga") != self.rule:  # version 1 states had the dga rule only
            raise ValueError(f"state is for rule {d.get('rule', 'dga')!r}, this run uses rule {self.rule!r}")
        self._w = np.asarray(d["w"], dtype=np.float64)
        self._sum_w = np.asarray(d["sum_w"], dtype=np.float64)
        self._n_updates = int(d["n_updates"])
        self._load_records(d)
