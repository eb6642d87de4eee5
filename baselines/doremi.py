"""DoReMi (Xie et al. 2023, arXiv 2305.10429): Group DRO over the excess loss against a reference model.

methods.md, "DoReMi". ``mixer=doremi`` in ``prepare()``:

1. trains the reference model on the reference mixture (``reference_mixture``: natural token shares,
   uniform, or a {domain: weight} mapping) as a sub-run (``mixer/doremi_reference``);
2. trains the proxy as a sub-run with the ``doremi_proxy`` mixer below (``mixer/doremi_proxy``): batches
   sampled from the uniform mixture, and each step
       λ_d = mean over the domain's tokens in the batch of max(ℓ_θ − ℓ_ref, 0)
       α'  = α ⊙ exp(η λ);   α = (1 − c)·α'/Σα' + c·u           (η = 1, c = 1e-3 as published)
   while the proxy minimises Σ_d α_d · (mean loss of domain d in the batch) (``Mixer.loss_weights``);
3. takes ᾱ = the mean of α over the proxy's steps as the static mixture of the main run.
``rounds > 1`` is iterated DoReMi: the next round's reference is trained on ᾱ, until ‖Δᾱ‖∞ < ``round_tol``.
Reference and proxy are cached by config fingerprint, so a second run (or another η) reuses the reference.

``online: true``: the main run itself is the DRO model (methods.md: "the online variant where the main run
itself is the proxy"). Only the reference is trained beforehand; every step the main run's own per-token
losses against the reference update α by the same rule, and the main run *samples* its batches (resampling,
not loss reweighting, so its weights trajectory is the mixture it actually trained on and its objective stays
the plain token mean like every other mixer's) from ``online_sample``: ``mean`` (default) = ᾱ_t, the mean of α
over the steps so far, i.e. what offline DoReMi would hand over if stopped at step t; ``current`` = α_t itself.
Measured on the demo budget (η = 1): ``current`` collapsed onto one domain (arith 0.976 at the end, mean
validation loss 5.76 vs 1.9 for stratified), the documented DoReMi pitfall, because a collapsed α is fed back
into the data at once; the running mean moves by O(1/t) and stays spread (``mean`` on the same run: final mixture
arith 0.04, boiler 0.08, copy 0.64, facts 0.07, grammar 0.07, noise 0.10; mean validation loss 1.97).

Choices the paper leaves open, made here:
* The proxy's α for step t is computed from step t−1's batch (the suite's trainer needs the loss weights
  before the forward pass; the excess losses come from that same pass, at no extra proxy compute). The
  published code updates α on the current batch before its backward pass: one step of lag is the
  difference.
* A domain absent from a batch keeps its previous score λ_d, and that stale score still enters the update,
  as in the public DoReMi code (``perdomain_scores``); methods.md lists this pitfall. Before a domain's first
  batch its score is log|V| (``init_score: log_vocab``, |V| = the reference model's vocabulary), as the public
  code initialises ``perdomain_scores`` (sangmichaelxie/doremi@7cde52d doremi/train.py: ones · log(len(tokenizer)),
  the loss of a uniform predictor): a domain not yet seen is treated as maximally unlearned and up-weighted
  at once. It only matters while some domain is missing from the batches (batch < m, or non-uniform
  sampling online): with a uniform proxy batch of at least m sequences every domain is in the first batch and
  its score is overwritten before it is used. Measured on the synthetic smoke data (m = 8, 16k tokens): batch
  16, ᾱ bit-identical to ``init_score: 0``; batch 4, ᾱ moves (``0`` → ``log_vocab``: arith 0.096 → 0.004,
  boiler 0.010 → 0.023, facts 0.010 → 0.024, logs 0.211 → 0.294; mean validation loss 5.38 → 5.32, one seed).
* The proxy's objective is Σ_d α_d · (mean token loss of domain d in the batch) (``Mixer.loss_weights``).
  The public code weights each token by α of its domain divided by the sampling weight and normalises by the
  sum of those token weights over the batch, i.e. Σ_d α_d n_d L_d / Σ_d α_d n_d (n_d = domain d's tokens in
  the batch): the same objective when every domain has the same number of tokens in the batch, and here a
  domain's weight does not depend on how many of its rows the sampler happened to draw.
* The reference's per-token losses are recomputed on each batch (a forward pass of the reference model,
  charged as ``mixer/doremi_reference_fwd``) from ``<reference run>/checkpoints/last.pt`` (the final
  checkpoint every run writes), under the run's autocast (``trainer.dtype``, as every other pass).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch
import yaml

from tikmix.checkpoint import load_checkpoint
from tikmix.config import Number, TrainerOverrides, need
from tikmix.errors import CheckpointError, ConfigError, TikmixError
from tikmix.losses import Autocast, causal_lm_loss
from tikmix.mixer import DomainStats, Mixer, MixerConfig, MixerContext, register
from tikmix.mixer_helpers import weights_from_mapping
from tikmix.model import build_model, flops_per_token, model_section
from tikmix.runlog import to_builtin as _jsonable


@dataclass
class DROConfig(MixerConfig):
    """The Group DRO update's parameters, shared by mixer=doremi and its proxy sub-run (mixer=doremi_proxy)."""

    # step size of the exponentiated update alpha <- alpha * exp(eta * lambda) (paper 1; maintainers advise 0.1
    # against collapse)
    eta: Number = 1.0
    smoothing: Number = 1.0e-3  # c: alpha = (1-c) alpha'/sum + c/m, so every weight >= c/m (paper 1e-3)
    history_every: Optional[int] = (
        None  # record alpha every this many proxy steps in results.json (null = about 50 records)
    )
    # a domain's excess-loss score before its first batch: log_vocab = log|V| of the reference's vocabulary (the
    # public code's initial perdomain_scores, the loss of a uniform predictor: an unseen domain is up-weighted at
    # once) | a number (0 = this suite's former choice). Only matters while a domain is missing from the batches:
    # a uniform proxy batch of >= m sequences holds every domain at step 0
    init_score: Union[int, float, str] = "log_vocab"

    def __post_init__(self) -> None:
        need(math.isfinite(self.eta) and self.eta > 0, "mixer.eta", f"must be > 0, got {self.eta!r}")
        need(0 <= self.smoothing <= 1, "mixer.smoothing", f"must be in [0, 1], got {self.smoothing!r}")
        he = self.history_every
        need(he is None or he >= 1, "mixer.history_every", "null (about 50 records per run) or a positive integer")
        ini = self.init_score
        need(
            ini == "log_vocab" or (not isinstance(ini, str) and math.isfinite(ini)),
            "mixer.init_score",
            f"log_vocab (the public code's log|V|) or a finite number, got {ini!r}",
        )


@dataclass
class DoReMiProxyConfig(DROConfig):
    reference_run: Optional[str] = None  # the reference sub-run's directory (set by mixer=doremi)


@dataclass
class ProxyBudget:
    total_tokens: Optional[int] = (
        None  # tokens of the reference and of the proxy run; null = tokens_frac of the main run's
    )
    tokens_frac: Number = 0.5  # paper: as many steps as the main run (1.0); 0.5 halves the search on a CPU
    warmup_frac: Optional[Number] = None  # null = the main run's budget.warmup_frac


@dataclass
class DoReMiConfig(DROConfig):
    """DoReMi's parameters (conf/mixer/doremi.yaml)."""

    reference_mixture: Any = "natural"  # natural (token shares, paper) | uniform | {domain: weight}
    rounds: int = 1  # iterated DoReMi: >1 retrains the reference on the last round's weights ...
    round_tol: Number = 1.0e-3  # ... until max |change| < round_tol (paper 1e-3)
    # true = the main run is the DRO model: alpha is updated every step from its own excess loss (only the
    # reference is trained first)
    online: bool = False
    # online: the main run samples from `mean` = the running mean of alpha so far (what offline DoReMi would output
    # at this step) | `current` = alpha itself (collapses onto one domain at eta=1 on the demo; see the module doc)
    online_sample: str = "mean"
    # model keys of the reference and proxy, merged over the main run's model (null = the main run's; paper: a
    # 280M proxy for an 8B main model)
    proxy_model: Any = None
    proxy_budget: ProxyBudget = field(default_factory=ProxyBudget)
    # trainer overrides for the reference and proxy runs (null = the main run's value)
    proxy_trainer: TrainerOverrides = field(default_factory=TrainerOverrides)
    proxy_seed: Optional[int] = None  # null = the run's seed

    def __post_init__(self) -> None:
        super().__post_init__()
        need(self.rounds >= 1, "mixer.rounds", f"a positive integer, got {self.rounds!r}")
        need(self.round_tol >= 0, "mixer.round_tol", "must be >= 0")
        need(
            not (self.online and self.rounds > 1),
            "mixer.rounds",
            "online DoReMi has one round (the main run); set rounds=1",
        )
        need(
            self.online_sample in ("mean", "current"),
            "mixer.online_sample",
            f"mean | current, got {self.online_sample!r}",
        )
        pb = self.proxy_budget
        need(
            pb.total_tokens is None or pb.total_tokens > 0,
            "mixer.proxy_budget.total_tokens",
            "null (use tokens_frac) or a positive integer",
        )
        need(pb.tokens_frac > 0, "mixer.proxy_budget.tokens_frac", "must be > 0")
        need(
            self.proxy_model is None or isinstance(self.proxy_model, dict),
            "mixer.proxy_model",
            "null (the main run's model) or a mapping of model keys",
        )


# --------------------------------------------------------------------------------------------------------
# the DRO update: pure functions
# --------------------------------------------------------------------------------------------------------
def dro_update(alpha: np.ndarray, scores: np.ndarray, eta: float = 1.0, smoothing: float = 1e-3) -> np.ndarray:
    """α' = α ⊙ exp(η·scores), α = (1 − c)·α'/Σα' + c/m (in log space, so large η·λ cannot overflow).
    Every returned weight is ≥ c/m and they sum to 1."""
    alpha = np.asarray(alpha, dtype=np.float64)
    m = len(alpha)
    logits = np.log(np.clip(alpha, 1e-300, None)) + float(eta) * np.asarray(scores, dtype=np.float64)
    logits -= logits.max()
    a = np.exp(logits)
    a /= a.sum()
    return (1.0 - float(smoothing)) * a + float(smoothing) / m


def excess_loss(token_loss: Any, ref_token_loss: Any, row_domains: Any, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-domain clipped excess loss λ_d = mean over domain d's tokens of max(ℓ_θ − ℓ_ref, 0), and a mask of
    the domains present in the batch (λ_d = 0 where absent). ``token_loss``/``ref_token_loss``: [B, T]
    (numpy or torch), ``row_domains``: [B] domain index of each row."""
    tl = torch.as_tensor(token_loss).float()
    rl = torch.as_tensor(ref_token_loss).float().to(tl.device)
    dom = torch.as_tensor(np.asarray(row_domains), dtype=torch.long, device=tl.device)
    ex_row = (tl - rl).clamp_min(0.0).sum(dim=1)  # [B]
    tok_row = torch.full_like(ex_row, float(tl.shape[1]))
    ex = torch.zeros(m, device=tl.device).index_add_(0, dom, ex_row)
    n = torch.zeros(m, device=tl.device).index_add_(0, dom, tok_row)
    ex, n = ex.cpu().double().numpy(), n.cpu().double().numpy()
    present = n > 0
    lam = np.where(present, ex / np.maximum(n, 1.0), 0.0)
    return lam, present


class GroupDRO:
    """DoReMi's domain-weight state: α, the last score per domain, and the running mean of α over steps."""

    def __init__(self, m: int, eta: float, smoothing: float, init_score: float = 0.0):
        self.m, self.eta, self.smoothing = m, float(eta), float(smoothing)
        self.alpha = np.full(m, 1.0 / m)
        self.scores = np.full(m, float(init_score))  # the score of a domain until its first batch
        self.alpha_sum = np.zeros(m)
        self.n = 0

    def step(self, lam: np.ndarray, present: np.ndarray) -> np.ndarray:
        """Record the α used for this step in the running mean, then update α from this step's λ. Absent
        domains keep their previous score."""
        self.alpha_sum += self.alpha
        self.n += 1
        present = np.asarray(present, dtype=bool)
        self.scores = np.where(present, np.asarray(lam, dtype=np.float64), self.scores)
        self.alpha = dro_update(self.alpha, self.scores, self.eta, self.smoothing)
        return self.alpha

    def mean(self) -> np.ndarray:
        if self.n == 0:
            return self.alpha.copy()
        a = self.alpha_sum / self.n
        return a / a.sum()

    def state_dict(self) -> dict:
        return {
            "alpha": self.alpha.tolist(),
            "scores": self.scores.tolist(),
            "alpha_sum": self.alpha_sum.tolist(),
            "n": self.n,
        }

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        self.alpha = np.asarray(d["alpha"], dtype=np.float64)
        self.scores = np.asarray(d["scores"], dtype=np.float64)
        self.alpha_sum = np.asarray(d["alpha_sum"], dtype=np.float64)
        self.n = int(d["n"])


# --------------------------------------------------------------------------------------------------------
# the reference model
# --------------------------------------------------------------------------------------------------------
class ReferenceModel:
    """The reference run's final model (``<run_dir>/checkpoints/last.pt`` + its ``config.yaml``), loaded
    once onto the device of the batches it scores."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.model = None
        self.flops_per_token_fwd = 0.0
        self.seq_len = None
        self.vocab_size: int | None = None

    def _load(self, device: Any, seq_len: int) -> None:
        cfg_path = self.run_dir / "config.yaml"
        if not cfg_path.exists():
            raise CheckpointError(f"DoReMi reference run {self.run_dir} has no config.yaml")
        mcfg = (yaml.safe_load(cfg_path.read_text()) or {}).get("model")
        ck = load_checkpoint(self.run_dir / "checkpoints" / "last.pt")
        sd = ck["model"]
        emb = [k for k in sd if k.endswith("embed_tokens.weight")]
        if not emb or not mcfg:
            raise CheckpointError(f"{self.run_dir}/checkpoints/last.pt is not a reference model checkpoint")
        self.vocab_size = int(sd[emb[0]].shape[0])
        model = build_model(model_section(mcfg), self.vocab_size, seed=0)
        try:
            model.load_state_dict(sd)
        except RuntimeError as e:
            raise CheckpointError(
                f"reference checkpoint {self.run_dir} does not fit its config: {str(e).splitlines()[0]}"
            ) from None
        self.model = model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.flops_per_token_fwd = flops_per_token(self.model, seq_len) / 3.0
        self.seq_len = seq_len

    def token_losses(
        self, windows: np.ndarray, device: Any, autocast: Autocast | None = None, chunk: int = 32
    ) -> torch.Tensor:
        """Per-token loss [B, T] of the reference on windows [B, T+1] (no grad), under the run's ``autocast``."""
        T = windows.shape[1] - 1
        if self.model is None or self.seq_len != T:
            self._load(device, T)
        dev = torch.device(device)
        out = []
        with torch.no_grad():
            for i in range(0, len(windows), chunk):
                w = torch.from_numpy(np.ascontiguousarray(windows[i : i + chunk])).to(dev)
                out.append(causal_lm_loss(self.model, w[:, :-1], w, autocast=autocast))
        return torch.cat(out)

    def flops(self, n_tokens: int) -> float:
        return self.flops_per_token_fwd * n_tokens


class _DROMixin:
    """The per-step DRO machinery shared by the offline proxy and the online main run."""

    def _init_dro(
        self,
        eta: float,
        smoothing: float,
        reference_run: str | None,
        history_every: int | None,
        init_score: Any = "log_vocab",
    ) -> None:
        self.dro = GroupDRO(self.m, eta, smoothing)
        self.init_score = init_score
        self.reference = ReferenceModel(reference_run) if reference_run else None
        self.history_every = int(history_every) if history_every else max(1, self.ctx.total_steps // 50)

    def _dro_observe(self, stats: DomainStats) -> None:
        if stats.skipped:  # no loss to compare with the reference: α stays as it was for this step
            return
        if self.reference is None:
            raise ConfigError("mixer.reference_run", "DoReMi's DRO step needs a reference model run")
        if stats.token_loss is None or stats.windows is None or stats.row_domains is None:
            raise TikmixError("DoReMi needs per-token losses and the batch windows from the trainer (DomainStats)")
        tl = stats.token_loss
        ref = self.reference.token_losses(stats.windows, tl.device, self.ctx.autocast)
        if self.ctx.charge is not None:
            self.ctx.charge(self.reference.flops(int(ref.numel())), "doremi_reference_fwd")
        if self.dro.n == 0:  # the vocabulary is known once the reference is loaded
            v = self.init_score
            self.dro.scores = np.full(self.m, math.log(self.reference.vocab_size) if v == "log_vocab" else float(v))
        lam, present = excess_loss(tl, ref, stats.row_domains, self.m)
        used = self.dro.alpha.copy()
        self.dro.step(lam, present)
        if stats.step % self.history_every == 0 or stats.step == self.ctx.total_steps - 1:
            self.history.append(
                _jsonable(
                    {
                        "step": int(stats.step),
                        "alpha": dict(zip(self.domains, used)),
                        "excess_loss": {d: (float(x) if p else None) for d, x, p in zip(self.domains, lam, present)},
                    }
                )
            )
        self.info.update(
            _jsonable(
                {
                    "alpha_mean": dict(zip(self.domains, self.dro.mean())),
                    "alpha_last": dict(zip(self.domains, self.dro.alpha)),
                    "scores": dict(zip(self.domains, self.dro.scores)),
                    "updates": self.dro.n,
                }
            )
        )

    def _dro_state(self, base: dict) -> dict:
        base["dro"] = self.dro.state_dict()
        return base

    def _dro_load(self, d: dict) -> None:
        if "dro" in d:
            self.dro.load_state_dict(d["dro"])


@register("doremi_proxy", DoReMiProxyConfig)
class DoReMiProxy(_DROMixin, Mixer):
    """DoReMi's proxy run: uniform sampling, α-weighted per-domain loss, α updated by Group DRO each step.
    Its ᾱ lands in results.json as ``mixer_info.alpha_mean``."""

    family = "part"

    def __init__(self, cfg: Mapping[str, Any] | DoReMiProxyConfig, domains: list[str], ctx: MixerContext):
        c = self.c = self.parse_config(cfg)
        need(bool(c.reference_run), "mixer.reference_run", "the reference sub-run's directory (set by mixer=doremi)")
        super().__init__(c, domains, ctx)
        self._init_dro(c.eta, c.smoothing, c.reference_run, c.history_every, c.init_score)

    def loss_weights(self, step: int) -> np.ndarray:
        return self.dro.alpha

    def observe(self, stats: DomainStats) -> None:
        self._dro_observe(stats)

    def state_dict(self) -> dict:
        return self._dro_state(super().state_dict())

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self._dro_load(d)


@register("doremi", DoReMiConfig)
class DoReMi(_DROMixin, Mixer):
    """DoReMi: reference → DRO proxy → ᾱ as the static mixture (or, ``online``, the main run is the DRO model)."""

    family = "baseline"
    summary = "DoReMi: a reference model, then a Group-DRO proxy whose mean weights are the mixture"
    help_rank, table_rank = 2, 1

    def __init__(self, cfg: Mapping[str, Any] | DoReMiConfig, domains: list[str], ctx: MixerContext):
        c = self.c = self.parse_config(cfg)
        self._ref_w0 = self._reference_weights(c.reference_mixture, domains, ctx)
        super().__init__(c, domains, ctx)
        self._init_dro(c.eta, c.smoothing, None, c.history_every, c.init_score)
        self.info = {"online": bool(c.online), "eta": float(c.eta), "smoothing": float(c.smoothing)}

    @staticmethod
    def _reference_weights(rm: Any, domains: list[str], ctx: MixerContext) -> np.ndarray:
        if rm == "natural":
            t = np.array([float(ctx.train_tokens.get(d, 0)) for d in domains])
            return t / t.sum()
        if rm in ("uniform", "stratified"):
            return np.full(len(domains), 1.0 / len(domains))
        if isinstance(rm, Mapping):
            return weights_from_mapping(rm, domains, "mixer.reference_mixture", renormalize=True)
        raise ConfigError("mixer.reference_mixture", f"natural | uniform | {{domain: weight}}, got {rm!r}")

    # --- interface -------------------------------------------------------------------------------------
    def initial_weights(self) -> np.ndarray:
        return np.full(self.m, 1.0 / self.m)  # offline: replaced by ᾱ in prepare(); online: α starts uniform

    def weights(self, step: int) -> np.ndarray:
        if not self.c.online:
            return self._w
        return self.dro.mean() if self.c.online_sample == "mean" else self.dro.alpha

    def observe(self, stats: DomainStats) -> None:
        if self.c.online:
            self._dro_observe(stats)

    def state_dict(self) -> dict:
        d = self._dro_state(super().state_dict())
        d["reference_run"] = self.reference.run_dir.as_posix() if self.reference is not None else None
        return d

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self._dro_load(d)
        if d.get("reference_run"):
            self.reference = ReferenceModel(d["reference_run"])

    # --- sub-runs ------------------------------------------------------------------------------------
    def _steps(self) -> int:
        pb = self.c.proxy_budget
        if pb.total_tokens is not None:
            return max(1, pb.total_tokens // self.ctx.tokens_per_step)
        return max(1, int(math.ceil(float(pb.tokens_frac) * self.ctx.total_steps)))

    def _common(self, kind: str) -> dict[str, Any]:
        c = self.c
        budget: dict[str, Any] = {
            "name": f"doremi-{kind}",
            "total_tokens": self._steps() * self.ctx.tokens_per_step,
            "stages": [],
        }
        if c.proxy_budget.warmup_frac is not None:
            budget["warmup_frac"] = float(c.proxy_budget.warmup_frac)
        ov: dict[str, Any] = {"budget": budget}  # eval inherited: it defines the task targets
        if c.proxy_model:
            ov["model"] = dict(c.proxy_model)
        tr = {k: v for k, v in dataclasses.asdict(c.proxy_trainer).items() if v is not None}
        # the reference and the proxy are used only through their checkpoint and ᾱ: no final evaluation is
        # computed or charged (methods.md, "Compute": charge what the method needs)
        ov["trainer"] = {**tr, "final_eval": "none"}
        if c.proxy_seed is not None:
            ov["seed"] = int(c.proxy_seed)
        return ov

    def reference_overrides(self, w: np.ndarray) -> dict[str, Any]:
        ov = self._common("reference")
        ov["mixer"] = {
            "name": "fixed",
            "weights": {d: float(x) for d, x in zip(self.domains, w)},
            "weights_file": None,
            "renormalize": True,
        }
        return ov

    def proxy_overrides(self, reference_run: str) -> dict[str, Any]:
        ov = self._common("proxy")
        ov["mixer"] = {
            "name": "doremi_proxy",
            "reference_run": str(reference_run),
            "eta": float(self.c.eta),
            "smoothing": float(self.c.smoothing),
            "history_every": self.c.history_every,
            "init_score": self.c.init_score,
        }
        return ov

    def prepare(self) -> None:
        if self.ctx.run_subrun is None:
            raise ConfigError(
                "mixer",
                "DoReMi trains its reference and proxy through the trainer (ctx.run_subrun); run it through train.py",
            )
        c = self.c
        ref_w = self._ref_w0
        rounds: list[dict] = []
        alpha_bar = None
        for r in range(1, c.rounds + 1):
            ref = self.ctx.run_subrun(
                self.reference_overrides(ref_w), name="doremi-reference", charge_as="doremi_reference"
            )
            rec: dict[str, Any] = {
                "round": r,
                "reference_weights": dict(zip(self.domains, ref_w)),
                "reference_run": ref["run_dir"],
                "reference_reused": bool(ref.get("reused")),
                "reference_val_loss": ref.get("val_loss"),
            }
            print(
                f"[doremi] round {r}: reference ({'cached' if ref.get('reused') else 'trained'}) {ref['run_dir']}",
                flush=True,
            )
            if c.online:
                self.reference = ReferenceModel(ref["run_dir"])
                rounds.append(rec)
                break
            prox = self.ctx.run_subrun(
                self.proxy_overrides(ref["run_dir"]), name="doremi-proxy", charge_as="doremi_proxy"
            )
            mi = prox.get("mixer_info") or {}
            if "alpha_mean" not in mi:
                raise TikmixError(f"DoReMi proxy run {prox['run_dir']} reported no alpha_mean")
            new = np.array([float(mi["alpha_mean"][d]) for d in self.domains])
            new = new / new.sum()
            delta = None if alpha_bar is None else float(np.abs(new - alpha_bar).max())
            rec.update(
                {
                    "alpha_mean": dict(zip(self.domains, new)),
                    "proxy_run": prox["run_dir"],
                    "proxy_reused": bool(prox.get("reused")),
                    "delta_inf": delta,
                    "proxy_compute": prox.get("compute"),
                    "alpha_trajectory": prox.get("mixer_history"),
                }
            )
            rounds.append(rec)
            print(
                f"[doremi] round {r}: ᾱ = "
                + ", ".join(f"{d} {x:.3f}" for d, x in zip(self.domains, new))
                + ("" if delta is None else f"  (‖Δ‖∞ = {delta:.2e})"),
                flush=True,
            )
            alpha_bar = new
            if delta is not None and delta < float(c.round_tol):
                break
            ref_w = new
        if not c.online:
            self._w = alpha_bar
            self.info["alpha_mean"] = _jsonable(dict(zip(self.domains, alpha_bar)))
        self.info["rounds"] = len(rounds)
        self.info["proxy_steps"] = self._steps()
        self.history.extend(
            _jsonable([{k: v for k, v in rec.items() if k != "alpha_trajectory"} | {"kind": "round"} for rec in rounds])
        )
        self.info["round_records"] = _jsonable(rounds)
