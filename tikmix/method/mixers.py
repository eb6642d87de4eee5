"""TiKMiX-D and TiKMiX-M as Mixers (methods.md, "TiKMiX-D", "TiKMiX-M", "Schedule").

At each stage boundary (``ctx.stage_steps``) the trainer hands the mixer a probe of the current model:

* TiKMiX-D measures the Group Influence matrix S [targets × domains] (:mod:`tikmix.method.influence`) and solves
  Eq. 10 with SLSQP under Σw = 1, 0 ≤ w ≤ caps, S·w ≥ S·w_prev (:func:`tikmix.method.solvers.tikmix_d_solve`).
* TiKMiX-M starts from TiKMiX-D's answer w_D and measures N Latin-Hypercube candidate mixtures around it
  (and w_D itself): for each, the *finite-step* group influence of a sample actually drawn with it
  (:meth:`tikmix.method.influence.GroupInfluence.score_lookahead`: the target-loss change of a step of
  ``lookahead_steps`` optimiser steps along the sample's preconditioned gradient). At first order a
  group's influence is linear in its mixture (S·w, which TiKMiX-D already optimises); what a measured
  candidate adds is the second-order term, which couples domains (group influence is not additive). So
  the regression (one LightGBM per target) learns that correction from the candidates' *realised*
  compositions, the known parts (S·w and the objective's −γ·H(w)) are added analytically, the paper's
  Dirichlet search (Algorithm 1) stays inside the box the candidates span (a tree is constant outside
  its data), and the searched mixture replaces w_D only when the regressor, by its own held-out fit,
  predicts it better than w_D; otherwise w_D is kept and the reason logged.

All randomness (projection, KFAC label sampling, LHS, Dirichlet search, LightGBM) is derived from
(seed, step), so a resumed run re-derives it: the state is the mixture and the history.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import numpy as np

from tikmix.config import Number, check_choice, check_number, need
from tikmix.errors import ConfigError, DataError
from tikmix.method.influence import (
    FISHERS,
    HESSIANS,
    KFAC_REST,
    PARAM_SETS,
    PROJECTIONS,
    CombinedTarget,
    GroupInfluence,
)
from tikmix.method.solvers import (
    REGRESS,
    REGRESSORS,
    WEAK_SIGNAL_FRACTION,
    accept_search,
    epoch_caps,
    fit_influence_law,
    influence_scale,
    latin_hypercube_candidates,
    on_boundary,
    project_capped_simplex,
    tikmix_d_solve,
    tikmix_objective,
    tikmix_objective_from_p,
    weak_signal,
)
from tikmix.mixer import Mixer, MixerConfig, MixerContext, Probe, register
from tikmix.mixer_helpers import take_tokens
from tikmix.regression import dirichlet_search
from tikmix.runlog import to_builtin as _jsonable

log = logging.getLogger(__name__)

COMBINE = ("auto", True, False)
CANDIDATE_SAMPLES = ("composed", "own")


@dataclass
class TiKMiXDConfig(MixerConfig):
    """TiKMiX-D's parameters (conf/mixer/tikmix_d.yaml). Cost per boundary ≈ (num_domains·tokens_per_domain +
    num_targets·targets_tokens) tokens of forward+backward, charged to the compute ledger as "influence"."""

    first_stage: str = "natural"  # mixture of the first stage: natural (token-proportional, the paper) | uniform
    # --- objective (Eq. 10): alpha·std(P̂) − beta·ΣP̂ − gamma·H(w), P̂_v = (S·w)_v / max_d S_vd  (paper: all 1)
    alpha: Number = 1.0  # weight of the spread of normalised influence across targets (balance)
    beta: Number = 1.0  # weight of the total normalised influence (benefit)
    gamma: Number = 1.0  # weight of the mixture's entropy (diversity)
    # --- influence estimate (tikmix/method/influence.py)
    # H⁻¹: identity (cheap default; = DoGE gradient alignment) | adam (the optimiser's diagonal 1/(sqrt(v̂)+eps),
    # nearly free) | kfac (Kronecker-factored, the faithful variant: the ICLR paper used EK-FAC; the v1 paper is silent)
    hessian: str = "identity"
    damping: Number = 1.0e-3  # kfac only: each factor gets damping × its mean eigenvalue on the diagonal (our choice)
    kfac_tokens: int = (
        4096  # kfac only: training tokens (from the current mixture) used to estimate the factors (our choice)
    )
    # kfac only: a factor larger than this (e.g. an LM head's over a big vocabulary) is kept as its diagonal
    # (kfac_rest) instead of a full matrix (our choice: bounds the factor memory)
    kfac_max_dim: int = 4096
    # kfac only: sampled (labels drawn from the model: true Fisher, as EK-FAC influence work does) | empirical (the
    # data's labels)
    kfac_fisher: str = "sampled"
    # kfac only: parameters without full Kronecker factors (our choice; tikmix/method/influence.py, README).
    # diag = a Linear layer past kfac_max_dim keeps K-FAC with its oversized factor diagonal; embeddings, norms and
    # tied weights get a damped diagonal Fisher on the K-FAC blocks' per-token scale | diag_v1 = the diagonal
    # Fisher for all of them, oversized Linear layers included (before; tracks the exact Fisher worse once an LM
    # head is past the bound) | identity (first behaviour: those blocks then carried 1-5% of |S|)
    kfac_rest: str = "diag"
    # null = exact inner products; an integer k = JL random projection of gradients to k dims (TRAK/LESS-style,
    # bounds memory for big models; the paper is silent)
    projection_dim: Optional[int] = None
    projection_kind: str = (
        "gaussian"  # gaussian | rademacher entries of the projection (gaussian: faster to generate on CPU)
    )
    params: str = "all"  # parameters the gradients cover: all | no_embeddings (drops input embeddings and a tied head)
    # gradient sample per domain per boundary. The paper used 0.1B tokens at 1B-model scale; our default keeps the
    # whole influence measurement at 9% of a demo-budget stage on benchmark v2. Measured split-half reliability of
    # S (results/influence_snr.png): tiny >= 0.95 at 2048; 20m 0.60-0.81 at 2048, >= 0.83 at 4096 (16% of the
    # stage). Raise it for models of 20m and up when the compute allows
    tokens_per_domain: int = 2048
    # tokens (inputs, not only labelled ones) taken from each target set (null = all the probe provides, i.e.
    # targets.tokens); same cost reasoning as tokens_per_domain
    targets_tokens: Optional[int] = 2048
    # --- constraints and solver
    # cap: a stage may sample a domain at most this many epochs, w_d ≤ max_epochs·tokens_d / stage_tokens (the
    # paper has no cap; users need one). null = no cap
    max_epochs: Optional[Number] = 4.0
    # the paper's Pareto constraint S·w ≥ S·w_prev (no target may lose influence vs the previous mixture).
    # Beware: when every domain is also a target (n ≥ m, S near-diagonal) no other mixture satisfies it and the
    # mixture never moves; the history's solver.pareto_room says how much room it leaves (0 = none) and a
    # warning is logged (warn_fraction)
    pareto: bool = True
    # our relaxation: P̂(w) ≥ P̂(w_prev) − pareto_slack, in Eq. 9's normalised units (P̂ of a target's best single
    # domain is 1). 0 = the paper's constraint
    pareto_slack: Number = 0.0
    pareto_tol: Number = (
        1.0e-6  # numerical tolerance of the constraints and the simplex, on the normalised (Eq. 9) scale
    )
    solver_maxiter: int = 200  # SLSQP iteration limit (scipy's default is 100); on failure the mixture stays w_prev
    # auto = when the targets are the automatic per-domain held-out texts (targets.domains=auto, no task targets,
    # e.g. eval=none), combine them into ONE target, the average of the domains' losses (Aioli's objective): with
    # one target per domain S is near-diagonal and the Pareto constraint pins the mixture at its start (TiKMiX-D
    # would be natural mixing in disguise). true = always combine all targets into one; false = never (the
    # paper's n targets)
    combine_targets: Union[bool, str] = "auto"
    # warn (stderr, and the history's solver.warnings) when a stage's mixture is not the influence signal's: when
    # it realises less than this fraction of the influence gain on the way from the entropy term's own answer
    # (max H(w) under the same constraints: the uniform mixture under the caps where the Pareto constraint allows
    # it) to the influence terms' own answer (gamma=0), or when the
    # Pareto constraint allows less than this fraction of the move the objective asks for (solver.diagnosis
    # holds both shares; tikmix/method/solvers.py entropy_pull). Compared as objective values, not distances,
    # because the influence terms' own answer jumps between near-tied domains. Calibration: the eval=none smoke
    # boundary (tests/test_tikmix_e2e.py) realises 21% (influences spanning 13x give weights spanning 2.5x, L1 0.32
    # from uniform); 10 domains, 100 random S each: one target with benefits N(1, 0.2) realises 0-10%
    # (all warned), one target with benefits N(0.5, 0.5) median 17% (85% warned), five task targets with
    # benefits N(0.5, 0.5) median 49% (2% warned). 0 = never warn. Diagnostic only: the mixture is the same
    warn_fraction: Number = WEAK_SIGNAL_FRACTION
    seed: Optional[int] = (
        None  # seed of the projection / KFAC label sampling; null = the run seed (combined with the step)
    )

    def __post_init__(self) -> None:
        check_choice("mixer.first_stage", self.first_stage, ("natural", "uniform"))
        for key, allowed in (
            ("hessian", HESSIANS),
            ("params", PARAM_SETS),
            ("projection_kind", PROJECTIONS),
            ("kfac_fisher", FISHERS),
            ("kfac_rest", KFAC_REST),
            ("combine_targets", COMBINE),
        ):
            check_choice(f"mixer.{key}", getattr(self, key), allowed)
        for key in ("alpha", "beta", "gamma", "pareto_slack"):
            check_number(f"mixer.{key}", getattr(self, key), low=0)
        check_number("mixer.damping", self.damping, low=0, strict=True)
        check_number("mixer.pareto_tol", self.pareto_tol, low=0)
        check_number("mixer.warn_fraction", self.warn_fraction, low=0, high=1)
        for key in ("tokens_per_domain", "kfac_tokens", "kfac_max_dim", "solver_maxiter"):
            check_number(f"mixer.{key}", getattr(self, key), integer=True, low=1)
        for key in ("projection_dim", "targets_tokens"):
            check_number(f"mixer.{key}", getattr(self, key), integer=True, low=1, null=True)
        check_number("mixer.max_epochs", self.max_epochs, low=0, strict=True, null=True)


@dataclass
class TiKMiXMConfig(TiKMiXDConfig):
    """TiKMiX-M's parameters (conf/mixer/tikmix_m.yaml): every TiKMiX-D key, and the candidates, the regressor and
    the search. Extra cost per boundary: one forward pass of the targets per candidate (composed; own: + a
    forward+backward of candidate_tokens per candidate), charged as "candidates"; composed also holds one
    preconditioned gradient per domain in memory."""

    # H⁻¹ of the influence AND the direction of the lookahead step: Adam's own diagonal preconditioner, so that
    # lookahead_steps × lr is the step the optimiser would take on the sample (with identity the step would be
    # plain SGD's at Adam's LR: too small to see the second-order term). TiKMiX-D's default stays identity
    hessian: str = "adam"
    n_candidates: int = 16  # N measured candidate mixtures besides w_D (paper silent; its additivity study used 256)
    candidate_tokens: int = 2048  # own only: tokens sampled with each candidate mixture for its gradient
    # composed: a candidate's step mixes the domains' own preconditioned gradients (the samples S was measured on):
    # the composition measured is exactly the candidate and candidates differ only by their mixture (no sampling
    # noise between them) | own: a fresh sample drawn with each candidate (the paper's wording), regressed on its
    # REALISED composition (counts / N); noisier: see the README's measurement
    candidate_sample: str = "composed"
    # the candidates' influence is measured at the step of this many optimiser steps (our choice; the paper does
    # not say how a candidate's "measured influence" differs from the sum of its domains'). Measured on v3 at the
    # demo boundaries (tests/benchmarks/bench_tikmix_diagnostics.py --demo, 2 seeds x 3 boundaries, composed,
    # quadratic): at 0.125 / 0.25 / 0.5 / 1 steps the second-order term is 27 / 52 / 89 / 174% of S·x, the step
    # raises the target loss in 11 / 19 / 34 / 64% of candidate x target entries (it measures harm, not benefit,
    # from 1 step on: the default before, kept as lookahead_steps=1) and the fit's held-out R² is 0.96 / 0.96 /
    # 0.90 / 0.61. 0.25: the largest step that still measures benefit and fits as well as the smallest, with the
    # second order half of the first (near 0 = first order only: M re-finds w_D)
    lookahead_steps: Number = 0.25
    lookahead_lr: Optional[Number] = (
        None  # learning rate of the lookahead step; null = the optimiser's LR at the boundary
    )
    # what the regressor learns: second_order = the measured correction P − S·x (S·x, the first-order part
    # TiKMiX-D measured, is added back analytically) | influence = the measured P itself. Either way the
    # objective's std/sum/entropy are computed, not learnt
    regress: str = "second_order"
    # quadratic = ridge over w and w_i·w_j (the form of the second-order term; our deviation) | lightgbm (the
    # paper's; with ~17 points in 10 dimensions a tree cannot follow the smooth surface: held-out R² ≈ 0 at the
    # demo boundary)
    regressor: str = "quadratic"
    # keep the searched mixture only if pred(w_D) − pred(w_M) > accept_margin × the regressor's held-out RMSE (and
    # held-out R² > 0); else keep w_D, logged (our rule)
    accept_margin: Number = 1.0
    # candidate box per domain: [lhs_low·w_D, lhs_high·w_D] (the paper's additivity experiment perturbed by
    # ×U[0.5, 2.0]; its interval scales are otherwise unstated)
    lhs_low: Number = 0.5
    lhs_high: Number = 2.0
    search_rounds: int = 5  # T, rounds of Algorithm 1 (unstated; our choice)
    conc_start: Number = 10.0  # Dirichlet concentration of the first round (broad) ...
    conc_end: Number = 1000.0  # ... to the last (narrow), log-spaced (unstated; our choice)
    search_samples: int = (
        10000  # mixtures scored by the regressor per round (QuaDMix, the sibling method, used 100k in all)
    )
    top_k: int = 10  # w_best = mean of the top_k predicted mixtures of a round (QuaDMix averaged the top 10)
    n_estimators: int = 200  # LightGBM trees (small data: deterministic, one thread)
    learning_rate: Number = 0.05  # LightGBM learning rate
    num_leaves: int = 15  # LightGBM leaves per tree
    min_child_samples: int = 3  # LightGBM minimum samples per leaf (low: only n_candidates points to fit)
    cv_folds: int = 5  # K of the K-fold held-out R²/Spearman that is logged

    def __post_init__(self) -> None:
        super().__post_init__()
        need(self.n_candidates >= 4, "mixer.n_candidates", "need at least 4 measured candidates to fit a regressor")
        need(0 < self.lhs_low <= 1 <= self.lhs_high, "mixer.lhs_low", "need 0 < lhs_low <= 1 <= lhs_high")
        need(self.search_rounds >= 1, "mixer.search_rounds", "must be >= 1")
        need(0 < self.conc_start and 0 < self.conc_end, "mixer.conc_start", "concentrations must be > 0")
        need(1 <= self.top_k <= self.search_samples, "mixer.top_k", "need 1 <= top_k <= search_samples")
        need(self.candidate_tokens >= 1, "mixer.candidate_tokens", "must be a positive integer")
        need(
            self.lookahead_steps > 0,
            "mixer.lookahead_steps",
            "must be > 0 (the step the candidates' influence is measured at)",
        )
        check_number("mixer.lookahead_lr", self.lookahead_lr, low=0, strict=True, null=True)
        check_choice("mixer.regress", self.regress, REGRESS)
        check_choice("mixer.regressor", self.regressor, REGRESSORS)
        check_choice("mixer.candidate_sample", self.candidate_sample, CANDIDATE_SAMPLES)
        need(self.accept_margin >= 0, "mixer.accept_margin", "must be >= 0 (in units of the regressor's held-out RMSE)")
        for key in ("n_estimators", "num_leaves", "min_child_samples", "cv_folds"):
            check_number(f"mixer.{key}", getattr(self, key), integer=True, low=1)
        check_number("mixer.learning_rate", self.learning_rate, low=0, strict=True)


def _lgb_error() -> type[Exception]:
    try:
        from lightgbm.basic import LightGBMError

        return LightGBMError
    except ImportError:  # pragma: no cover
        return ValueError


@register("tikmix_d", TiKMiXDConfig)
class TiKMiXD(Mixer):
    """TiKMiX-D: the next stage's mixture minimises Eq. 10 over the measured influence matrix."""

    family = "tikmix"
    summary = "TiKMiX-D: Group Influence at each stage boundary sets the next stage's mixture"
    help_rank, table_rank = 1, 1

    def __init__(self, cfg: Mapping[str, Any] | TiKMiXDConfig, domains: list[str], ctx: MixerContext):
        self.c = self.parse_config(cfg)
        self.seed = int(self.c.seed) if self.c.seed is not None else int(ctx.seed)
        super().__init__(self.c, domains, ctx)
        self.info = {
            "hessian": self.c.hessian,
            "projection_dim": self.c.projection_dim,
            "flops": {"influence": 0.0, "candidates": 0.0},
        }

    # --- interface --------------------------------------------------------------------------------------
    def initial_weights(self) -> np.ndarray:
        if self.c.first_stage == "uniform":
            return np.full(self.m, 1.0 / self.m)
        tok = self._train_tokens()
        if tok.sum() <= 0:
            raise ConfigError("mixer.first_stage", "natural needs the domains' token counts; all are 0")
        return tok / tok.sum()

    def probe_steps(self) -> list[int]:
        return sorted(int(s) for s in self.ctx.stage_steps)

    def on_probe(self, probe: Probe) -> None:
        t0 = time.perf_counter()
        c = self.c
        w_prev = self._w.copy()
        caps = epoch_caps(self._train_tokens(), float(probe.stage_tokens), c.max_epochs)
        seed = self._probe_seed(probe.step)
        gi = self._influence(probe, w_prev, seed)
        record: dict[str, Any] = {
            "step": int(probe.step),
            "stage_tokens": int(probe.stage_tokens),
            "w_prev": self._wd(w_prev),
            "caps": self._wd(caps),
        }
        try:
            targets = self._targets(probe)
            gi.set_targets(targets)
            res = gi.matrix(
                {d: (lambda d=d: probe.domain_batches(d, int(c.tokens_per_domain))) for d in self.domains},
                keep_directions=self._keep_directions(),
            )
            S = res.S
            inf_flops, inf_wall = gi.total_flops(), gi.wall_s
            probe.charge(inf_flops, "influence")
            self.info["flops"]["influence"] += inf_flops
            w, sinfo = tikmix_d_solve(
                S,
                w_prev,
                float(c.alpha),
                float(c.beta),
                float(c.gamma),
                caps=caps,
                init="uniform",
                tol=float(c.pareto_tol),
                maxiter=int(c.solver_maxiter),
                pareto=bool(c.pareto),
                pareto_slack=float(c.pareto_slack),
            )
            sinfo["warnings"] = self._warn_weak_signal(probe.step, sinfo, len(targets), inf_flops)
            record.update(
                targets=list(targets),
                influence=res.as_dict(),
                influence_info=_jsonable(
                    {
                        k: res.info[k]
                        for k in (
                            "tokens",
                            "norms",
                            "n_params",
                            "hessian",
                            "projection_dim",
                            "kfac_skipped",
                            "kfac_diag",
                            "block_share",
                        )
                    }
                ),
                solver=_jsonable(sinfo),
                cost={"influence_flops": inf_flops, "influence_wall_s": inf_wall},
            )
            w = self._refine(probe, gi, S, w, w_prev, caps, seed, record)
        finally:
            gi.release()
        record["weights"] = self._wd(w)
        record["cost"]["flops"] = float(sum(v for k, v in record["cost"].items() if k.endswith("_flops")))
        record["cost"]["wall_s"] = time.perf_counter() - t0
        self._w = w
        self.history.append(_jsonable(record))

    def _influence(self, probe: Probe, w_prev: np.ndarray, seed: int) -> GroupInfluence:
        c = self.c
        return GroupInfluence(
            probe.model,
            hessian=c.hessian,
            optimizer=probe.optimizer,
            kfac_batches=(lambda: probe.mixture_batches(w_prev, int(c.kfac_tokens))) if c.hessian == "kfac" else None,
            params=c.params,
            projection_dim=None if c.projection_dim is None else int(c.projection_dim),
            projection_seed=seed,
            projection_kind=c.projection_kind,
            damping=float(c.damping),
            kfac_max_dim=int(c.kfac_max_dim),
            kfac_fisher=c.kfac_fisher,
            kfac_seed=seed,
            kfac_rest=c.kfac_rest,
            autocast=probe.autocast,
            device=probe.device,
            flops_per_token=probe.flops_per_token,
        )

    def _targets(self, probe: Probe) -> dict[str, Any]:
        """The probe's target sets cut to ``targets_tokens`` each; the automatic per-domain held-out targets
        combined into one averaged target (``combine_targets``): one target per domain makes S near-diagonal,
        and the Pareto constraint then pins the mixture where it started (methods.md, README)."""
        c = self.c
        # whole batches, not cut to targets_tokens as DGA's and the probe's targets are: TiKMiX's influence
        # measurements (and every result recorded with them) were made on whole target batches, and cutting the
        # last one would change the targets' gradients, hence the mixtures; a refactor keeps them
        targets = {name: take_tokens(b, c.targets_tokens, whole_batches=True) for name, b in probe.targets.items()}
        if not targets:
            raise DataError("TiKMiX needs at least one target set (config: targets)")
        combine = c.combine_targets is True or (c.combine_targets == "auto" and bool(self.ctx.targets_auto))
        if combine and len(targets) > 1:
            return {"mean(" + ", ".join(targets) + ")": CombinedTarget(targets)}
        return targets

    def _warn_weak_signal(self, step: int, sinfo: dict, n_targets: int, flops: float) -> list[str]:
        """One ``[tikmix] warning:`` line on stderr when the stage's mixture is held by the Pareto constraint or is
        mostly the entropy term's (:func:`tikmix.method.solvers.weak_signal`, threshold ``warn_fraction``); the
        lines are returned for the history (``solver.warnings``)."""
        c, d = self.c, sinfo.get("diagnosis") or {}
        frac = float(c.warn_fraction)
        kind = weak_signal(d, frac) if frac > 0 else None
        if kind == "pareto":
            msg = (
                f"step {step}: the Pareto constraint S·w >= S·w_prev holds the mixture within L1 {d['move_l1']:.3f} "
                f"of the previous one, {d['move_share']:.0%} of the L1 {d['free_move_l1']:.3f} the objective asks for "
                f"without it (room {sinfo.get('pareto_room', float('nan')):.3g}; mixer.warn_fraction={frac:g}), so "
                f"the mixture stays about as it was ({n_targets} targets; typical when every domain is also a "
                "target). Consider mixer.combine_targets=true, benchmark targets, mixer.pareto_slack>0 or "
                "mixer.pareto=false"
            )
        elif kind == "entropy":
            why = (
                "Without task targets (eval=none) the targets are the domains' own held-out texts combined into one "
                "(their average loss), which most domains help about equally, and Eq. 9 scales the best domain's "
                "influence to 1: with one target the best domain gets at most e^(beta/gamma) times the weight of a "
                "domain of no influence."
                if self.ctx.targets_auto and n_targets == 1
                else "The domains' normalised influences on the targets differ too little."
            )
            msg = (
                f"step {step}: TiKMiX-D's mixture is mostly the entropy term's (L1 {d['l1_from_uniform']:.2f} from "
                f"uniform under the caps, H(w) {d['entropy']:.2f} of {d['entropy_max']:.2f}): it realises "
                f"{max(d['influence_share'], 0.0):.0%} of the influence gain available over the max-entropy mixture "
                f"(mixer.warn_fraction={frac:g}). The influence signal is too weak to move it against "
                f"gamma·H(w) (mixer.gamma={float(c.gamma):g}), so this stage is close to stratified (uniform) mixing "
                f"at the price of {flops:.3g} FLOPs of influence measurement. {why} Give task targets "
                "(eval=<benchmark>, targets.tasks), lower mixer.gamma, or use mixer=stratified"
            )
        else:
            return []
        print(f"[tikmix] warning: {msg}", file=sys.stderr, flush=True)
        return [msg]

    def state_dict(self) -> dict:
        d = super().state_dict()
        d.update(version=1, mixer=self.name, domains=list(self.domains), seed=self.seed)
        return _jsonable(d)

    def load_state_dict(self, d: dict) -> None:
        if d.get("mixer", self.name) != self.name:
            raise ValueError(f"state is for mixer {d.get('mixer')!r}, not {self.name!r}")
        if "domains" in d and list(d["domains"]) != self.domains:
            raise ValueError(f"state is for domains {d['domains']}, this run has {self.domains}")
        super().load_state_dict(d)
        self.seed = int(d.get("seed", self.seed))
        self.info = dict(d.get("info", self.info))

    # --- helpers ----------------------------------------------------------------------------------------
    def _refine(self, probe, gi, S, w_d, w_prev, caps, seed, record) -> np.ndarray:
        """TiKMiX-D's answer is final; TiKMiX-M overrides this."""
        return w_d

    def _keep_directions(self) -> bool:
        return False

    def _train_tokens(self) -> np.ndarray:
        tt = self.ctx.train_tokens or {}
        missing = [d for d in self.domains if d not in tt]
        if missing:
            raise ConfigError("mixer", f"no train-token count for domain(s) {missing}")
        return np.array([float(tt[d]) for d in self.domains])

    def _probe_seed(self, step: int) -> int:
        return int(np.random.SeedSequence([self.seed, int(step), 0x71C]).generate_state(1)[0])

    def _wd(self, w: np.ndarray) -> dict[str, float]:
        return {d: float(x) for d, x in zip(self.domains, w)}


@register("tikmix_m", TiKMiXMConfig)
class TiKMiXM(TiKMiXD):
    """TiKMiX-M: a regression of measured finite-step group influence over candidate mixtures, searched à la
    Algorithm 1 inside the region it was fitted on (module doc)."""

    family = "tikmix"
    summary = "TiKMiX-M: TiKMiX-D plus the measured finite-step influence of candidate mixtures"
    help_rank, table_rank = 2, 2

    def _refine(self, probe, gi, S, w_d, w_prev, caps, seed, record) -> np.ndarray:
        c = self.c
        ab = {"alpha": float(c.alpha), "beta": float(c.beta), "gamma": float(c.gamma)}
        cands, linfo = latin_hypercube_candidates(
            w_d, int(c.n_candidates), float(c.lhs_low), float(c.lhs_high), seed=seed, return_info=True
        )
        nominal = np.vstack([w_d[None], cands])  # w_D itself is measured too: the centre of the fitted region
        eta = self._eta(probe)
        f0, wall0 = gi.total_flops(), gi.wall_s
        X, P, first = self._measure(probe, gi, nominal, eta, S)
        cand_flops, cand_wall = gi.total_flops() - f0, gi.wall_s - wall0
        probe.charge(cand_flops, "candidates")
        self.info["flops"]["candidates"] += cand_flops
        record["cost"].update(candidates_flops=cand_flops, candidates_wall_s=cand_wall)
        scale = influence_scale(S)
        m_rec: dict[str, Any] = {
            "w_D": self._wd(w_d),
            "lhs": linfo,
            "eta": eta,
            "nominal": nominal.tolist(),
            "realised": X.tolist(),
            "realised_l1_from_nominal": np.abs(X - nominal).sum(axis=1).tolist(),
            "measured_P": P.tolist(),
            "first_order_P": first.tolist(),
            "measured": np.asarray(tikmix_objective_from_p(P, X, scale, **ab)).tolist(),
            "linear": np.asarray(tikmix_objective(S, X, **ab)).tolist(),
        }
        record["tikmix_m"] = m_rec
        if len(X) < 4:
            return self._keep_w_d(m_rec, w_d, f"only {len(X)} candidates: too few to fit a regressor")
        try:
            w, law, region = self._search(S, X, P, w_d, caps, seed, ab, m_rec)
        except (
            ValueError,
            FloatingPointError,
            np.linalg.LinAlgError,
            _lgb_error(),
        ) as e:  # numerical failure: keep training
            return self._keep_w_d(m_rec, w_d, f"regression/search failed ({type(e).__name__}: {e})")
        pred_m, pred_d = float(law.predict(w[None])[0]), float(law.predict(w_d[None])[0])
        ok, why = accept_search(m_rec["fit"], pred_m, pred_d, float(c.accept_margin))
        m_rec.update(
            predicted_w=pred_m,
            predicted_w_D=pred_d,
            linear_w=float(tikmix_objective(S, w, **ab)),
            linear_w_D=float(tikmix_objective(S, w_d, **ab)),
            on_boundary=[self.domains[i] for i in on_boundary(w, region)],
            pareto_min_vs_prev=float(((S / scale[:, None]) @ (w - w_prev)).min()),
        )  # reported; M has no such constraint
        if m_rec["on_boundary"]:
            log.info(
                "tikmix_m: step %d: the searched mixture sits on the fitted region's boundary in %s",
                probe.step,
                m_rec["on_boundary"],
            )
        if not ok:
            return self._keep_w_d(m_rec, w_d, why)
        m_rec.update(status="ok", decision=why)
        return w

    def _keep_directions(self) -> bool:
        return self.c.candidate_sample == "composed"

    def _eta(self, probe: Probe) -> float:
        """The lookahead step: lookahead_steps optimiser steps at the current (or the given) learning rate."""
        c = self.c
        lr = c.lookahead_lr
        if lr is None:
            lr = probe.optimizer.param_groups[0]["lr"]
        return float(lr) * float(c.lookahead_steps)

    def _measure(
        self, probe, gi, nominal: np.ndarray, eta: float, S: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per candidate: the composition measured, its finite-step influence P [n] and its first order.
        ``composed``: the step mixes the domains' own preconditioned gradients (the samples S was measured
        on), so the composition is exactly the candidate and the first order exactly S·w. ``own``: a sample
        drawn with the candidate, its realised composition (counts / N) and its own first-order g_vᵀu."""
        if self.c.candidate_sample == "composed":
            P = np.array([gi.lookahead_composed(w, eta) for w in nominal])
            return nominal.copy(), P, nominal @ S.T
        X, P, first = [], [], []
        for wc in nominal:
            sample = probe.mixture_batches(wc, int(self.c.candidate_tokens))
            counts = np.asarray(sample.counts, dtype=np.float64)
            f, p, _ = gi.score_lookahead(sample, eta)
            X.append(counts / counts.sum())
            P.append(p)
            first.append(f)
        return np.array(X), np.array(P), np.array(first)

    def _search(self, S, X, P, w_d, caps, seed, ab, m_rec):
        c = self.c
        law, finfo = fit_influence_law(
            X,
            P,
            S,
            regress=c.regress,
            objective_kwargs=ab,
            seed=seed % (2**31),
            regressor=c.regressor,
            n_folds=int(c.cv_folds),
            lgbm=dict(
                n_estimators=int(c.n_estimators),
                learning_rate=float(c.learning_rate),
                num_leaves=int(c.num_leaves),
                min_child_samples=int(c.min_child_samples),
            ),
        )
        region = (X.min(axis=0), X.max(axis=0))
        start = X[0]  # w_D's realised composition: inside the region by construction
        capped = bool(np.any(caps < 1.0)) and caps.sum() >= 1
        project = (lambda W: project_capped_simplex(W, caps)) if capped else None
        w, trace = dirichlet_search(
            law.predict,
            start,
            T=int(c.search_rounds),
            conc_start=float(c.conc_start),
            conc_end=float(c.conc_end),
            n_samples=int(c.search_samples),
            top_k=int(c.top_k),
            seed=(seed + 1) % (2**32),
            project=project,
            region=region,
        )
        m_rec.update(fit=finfo, search=trace, region={"low": self._wd(region[0]), "high": self._wd(region[1])})
        return w, law, region

    def _keep_w_d(self, m_rec: dict, w_d: np.ndarray, why: str) -> np.ndarray:
        m_rec.update(status="kept_w_D", decision=why)
        print(f"[tikmix] tikmix_m keeps TiKMiX-D's mixture: {why}", file=sys.stderr, flush=True)
        return w_d
