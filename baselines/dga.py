"""DGA: online DoGE (Fan et al. 2023, arXiv 2310.15393; online form as in Fan, Grangier & Ablin 2024,
"Dynamic Gradient Alignment for Online Data Mixing").

Every ``update_every`` steps (probe steps 0, u, 2u, ...), on the current model:

    a_d = mean over target sets v of ⟨∇L_d, ∇L_v⟩             (gradient alignment, identity Hessian)
    α̂   = α ⊙ exp(η · â) / Z                                  (â = a, or a / max_d |a_d|: see ``normalize``)
    α   ← ema·α + (1 − ema)·α̂                                 (EMA of the weights; ema = weight on the past)

∇L_d is the mean-token-loss gradient of a ``tokens_per_domain`` sample of domain d (``probe.domain_batches``),
∇L_v that of the first ``targets_tokens`` input tokens of target set v. The alignment matrix comes from
:func:`tikmix.influence.gradient_alignment`: it *is* TiKMiX's Group Influence with the identity Hessian
(same code, benefit sign convention: a_d > 0 = a step on domain d lowers the targets' loss), holding the n
target gradients and streaming one domain gradient at a time. Its forward+backward passes are charged to
the ledger as ``mixer/dga_gradients``.

Choices (documented in conf/mixer/dga.yaml): raw inner products scale with the model's gradient norms (they
differ by orders of magnitude between a tiny CPU model and a 1B model), so by default the step is made
scale-free, â = a / max_d |a_d| (the most aligned domain gets exp(η)); ``normalize: none`` applies
exp(η·a) to the raw products, as the formula reads. DoGE's own output for a final run is the average of
α over the updates; it is reported in ``info['average_weights']``.
"""
from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np

from baselines.aioli import as_float, as_int, need, read_config, take_tokens, wdict
from tikmix.errors import DataError
from tikmix.influence import PARAM_SETS, PROJECTIONS, gradient_alignment
from tikmix.mixer import Mixer, MixerContext, register

KEYS: dict[str, Any] = {
    "name": "dga",
    "update_every": 10,
    "eta": 1.0,
    "ema": 0.5,
    "normalize": "max_abs",
    "tokens_per_domain": 1024,
    "targets_tokens": 1024,
    "params": "all",
    "projection_dim": None,
    "projection_kind": "rademacher",
    "seed": None,
}
NORMALIZE = ("max_abs", "none")


def dga_update(alpha: np.ndarray, a: np.ndarray, eta: float, ema: float, normalize: str) -> tuple[np.ndarray, np.ndarray]:
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


@register("dga")
class DGA(Mixer):
    """Online DoGE / DGA as a Mixer (module doc)."""

    def __init__(self, cfg: Mapping[str, Any], domains: list[str], ctx: MixerContext):
        c = read_config(cfg, KEYS)
        self.update_every = as_int(c, "update_every", 1)
        self.eta = as_float(c, "eta", 0.0)
        self.ema = as_float(c, "ema", 0.0, 1.0)
        need(self.ema < 1.0, "ema", f"must be in [0, 1) (0 = no EMA; 1 would never update), got {self.ema}")
        need(c["normalize"] in NORMALIZE, "normalize", f"one of {NORMALIZE}, got {c['normalize']!r}")
        self.normalize = c["normalize"]
        self.tokens_per_domain = as_int(c, "tokens_per_domain", 1)
        self.targets_tokens = as_int(c, "targets_tokens", 1, allow_none=True)
        need(c["params"] in PARAM_SETS, "params", f"one of {PARAM_SETS}, got {c['params']!r}")
        need(c["projection_kind"] in PROJECTIONS, "projection_kind", f"one of {PROJECTIONS}, got {c['projection_kind']!r}")
        self.projection_dim = as_int(c, "projection_dim", 1, allow_none=True)
        self.c = c
        self.seed = int(c["seed"]) if c["seed"] is not None else int(ctx.seed)
        super().__init__(cfg, domains, ctx)
        self._sum_w = np.zeros(self.m)
        self._n_updates = 0
        self.info = {"update_every": self.update_every, "eta": self.eta, "ema": self.ema, "normalize": self.normalize,
                     "gradient_flops": 0.0, "updates": 0}

    def probe_steps(self) -> list[int]:
        return list(range(0, int(self.ctx.total_steps), self.update_every))

    def on_probe(self, probe: Any) -> None:
        t0 = time.perf_counter()
        step = int(probe.step)
        targets = {name: take_tokens(b, self.targets_tokens) for name, b in probe.targets.items()}
        if not targets:
            raise DataError("DGA needs at least one target set (config: targets.domains)")
        seed = int(np.random.SeedSequence([self.seed, step, 0xD6A]).generate_state(1)[0])
        res = gradient_alignment(
            probe.model,
            targets,
            {d: (lambda d=d: probe.domain_batches(d, self.tokens_per_domain)) for d in self.domains},
            params=self.c["params"],
            projection_dim=self.projection_dim,
            projection_seed=seed,
            projection_kind=self.c["projection_kind"],
            autocast=getattr(probe, "autocast", None),
            device=getattr(probe, "device", None),
            flops_per_token=getattr(probe, "flops_per_token", None),
        )
        flops = float(res.info["flops"])
        probe.charge(flops, "dga_gradients")
        a = res.S.mean(axis=0)  # [m]: mean over targets
        w_prev = self._w
        self._w, a_hat = dga_update(w_prev, a, self.eta, self.ema, self.normalize)
        self._sum_w += self._w
        self._n_updates += 1
        self.history.append({
            "step": step,
            "alignment": res.as_dict(),
            "a": wdict(self.domains, a),
            "a_step": wdict(self.domains, a_hat),
            "weights_before": wdict(self.domains, w_prev),
            "weights": wdict(self.domains, self._w),
            "flops": flops,
            "wall_s": time.perf_counter() - t0,
        })
        self.info["gradient_flops"] += flops
        self.info["updates"] = self._n_updates
        self.info["final_weights"] = wdict(self.domains, self._w)
        self.info["average_weights"] = wdict(self.domains, self._sum_w / self._n_updates)

    def state_dict(self) -> dict:
        return {"version": 1, "mixer": self.name, "domains": list(self.domains), "w": self._w.tolist(),
                "sum_w": self._sum_w.tolist(), "n_updates": self._n_updates, "history": list(self.history),
                "info": dict(self.info)}

    def load_state_dict(self, d: dict) -> None:
        if d.get("mixer") != self.name:
            raise ValueError(f"state is for mixer {d.get('mixer')!r}, not {self.name!r}")
        if list(d.get("domains", [])) != self.domains:
            raise ValueError(f"state is for domains {d.get('domains')}, this run has {self.domains}")
        self._w = np.asarray(d["w"], dtype=np.float64)
        self._sum_w = np.asarray(d["sum_w"], dtype=np.float64)
        self._n_updates = int(d["n_updates"])
        self.history = list(d.get("history", []))
        self.info = dict(d.get("info", self.info))
