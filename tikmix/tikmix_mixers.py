"""TiKMiX-D and TiKMiX-M as Mixers (methods.md, "TiKMiX-D", "TiKMiX-M", "Schedule").

At each stage boundary (``ctx.stage_steps``) the trainer hands the mixer a probe of the current model:

* TiKMiX-D measures the Group Influence matrix S [targets × domains] (:mod:`tikmix.influence`) and solves
  Eq. 10 with SLSQP under Σw = 1, 0 ≤ w ≤ caps, S·w ≥ S·w_prev (:func:`tikmix.solvers.tikmix_d_solve`).
* TiKMiX-M starts from TiKMiX-D's answer w_D and measures N Latin-Hypercube candidate mixtures around it
  (and w_D itself): for each, the *finite-step* group influence of a sample actually drawn with it
  (:meth:`tikmix.influence.GroupInfluence.score_lookahead`: the target-loss change of a step of
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
from typing import Any, Mapping

import numpy as np

from tikmix.errors import ConfigError, DataError
from tikmix.influence import FISHERS, HESSIANS, KFAC_REST, PARAM_SETS, PROJECTIONS, CombinedTarget, GroupInfluence
from tikmix.mixer import Mixer, MixerContext, register
from tikmix.runlog import to_builtin as _jsonable
from tikmix.solvers import (
    REGRESS,
    REGRESSORS,
    accept_search,
    dirichlet_search,
    epoch_caps,
    fit_influence_law,
    influence_scale,
    latin_hypercube_candidates,
    on_boundary,
    project_capped_simplex,
    tikmix_d_solve,
    tikmix_objective,
    tikmix_objective_from_p,
)

log = logging.getLogger(__name__)

# key -> default. Documented in conf/mixer/tikmix_d.yaml / tikmix_m.yaml.
D_KEYS: dict[str, Any] = {
    "name": "tikmix_d",
    "first_stage": "natural",
    "alpha": 1.0,
    "beta": 1.0,
    "gamma": 1.0,
    "hessian": "identity",
    "damping": 1e-3,
    "kfac_tokens": 4096,
    "kfac_max_dim": 4096,
    "kfac_fisher": "sampled",
    "kfac_rest": "diag",
    "projection_dim": None,
    "projection_kind": "gaussian",
    "params": "all",
    "tokens_per_domain": 2048,
    "targets_tokens": 2048,
    "max_epochs": 4.0,
    "pareto": True,
    "pareto_slack": 0.0,
    "pareto_tol": 1e-6,
    "solver_maxiter": 200,
    "combine_targets": "auto",
    "seed": None,
}
COMBINE = ("auto", True, False)
CANDIDATE_SAMPLES = ("composed", "own")
M_KEYS: dict[str, Any] = {
    **D_KEYS,
    "name": "tikmix_m",
    "hessian": "adam",
    "n_candidates": 16,
    "candidate_tokens": 2048,
    "candidate_sample": "composed",
    "lookahead_steps": 1.0,
    "lookahead_lr": None,
    "regress": "second_order",
    "regressor": "quadratic",
    "accept_margin": 1.0,
    "lhs_low": 0.5,
    "lhs_high": 2.0,
    "search_rounds": 5,
    "conc_start": 10.0,
    "conc_end": 1000.0,
    "search_samples": 10000,
    "top_k": 10,
    "n_estimators": 200,
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_child_samples": 3,
    "cv_folds": 5,
}


def _lgb_error() -> type[Exception]:
    try:
        from lightgbm.basic import LightGBMError

        return LightGBMError
    except ImportError:  # pragma: no cover
        return ValueError


def _take_tokens(batches: list[dict], n_tokens: int | None) -> list[dict]:
    """The leading batches of a target set until ``n_tokens`` input tokens (compute, not labelled tokens)."""
    if n_tokens is None:
        return list(batches)
    out, seen = [], 0
    for b in batches:
        if seen >= n_tokens:
            break
        out.append(b)
        seen += int(b["input_ids"].numel())
    return out


class _Cfg:
    """Validated mixer config (attribute access)."""

    def __init__(self, cfg: Mapping[str, Any], keys: dict[str, Any]):
        raw = dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)
        unknown = sorted(set(raw) - set(keys))
        if unknown:
            raise ConfigError(f"mixer.{unknown[0]}", f"unknown key for mixer {keys['name']!r}; known keys: {', '.join(sorted(keys))}")
        vals = {k: raw.get(k, d) for k, d in keys.items()}
        numeric = {k for k, d in keys.items() if isinstance(d, (int, float)) and not isinstance(d, bool)}
        for k in sorted(numeric | {"projection_dim", "seed", "lookahead_lr"}):  # a string here would fail float()/int() below
            v = vals.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v)):
                raise ConfigError(f"mixer.{k}", f"must be a finite number, got {v!r}")
        self.__dict__.update(vals)
        self._check()

    def _check(self) -> None:
        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"mixer.{key}", msg)

        need(self.first_stage in ("natural", "uniform"), "first_stage", f"natural | uniform, got {self.first_stage!r}")
        need(self.hessian in HESSIANS, "hessian", f"one of {HESSIANS}, got {self.hessian!r}")
        need(self.params in PARAM_SETS, "params", f"one of {PARAM_SETS}, got {self.params!r}")
        need(self.projection_kind in PROJECTIONS, "projection_kind", f"one of {PROJECTIONS}, got {self.projection_kind!r}")
        need(self.kfac_fisher in FISHERS, "kfac_fisher", f"one of {FISHERS}, got {self.kfac_fisher!r}")
        need(self.kfac_rest in KFAC_REST, "kfac_rest", f"one of {KFAC_REST}, got {self.kfac_rest!r}")
        need(self.combine_targets in COMBINE, "combine_targets", f"auto | true | false, got {self.combine_targets!r}")
        need(self.projection_dim is None or int(self.projection_dim) >= 1, "projection_dim", "null or a positive integer")
        for k in ("alpha", "beta", "gamma"):
            need(float(getattr(self, k)) >= 0, k, "must be >= 0")
        need(float(self.damping) > 0, "damping", "must be > 0")
        for k in ("tokens_per_domain", "kfac_tokens", "kfac_max_dim", "solver_maxiter"):
            need(int(getattr(self, k)) >= 1, k, "must be a positive integer")
        need(self.targets_tokens is None or int(self.targets_tokens) >= 1, "targets_tokens", "null (all) or a positive integer")
        need(self.max_epochs is None or float(self.max_epochs) > 0, "max_epochs", "null (no cap) or > 0")
        need(isinstance(self.pareto, bool), "pareto", f"true | false, got {self.pareto!r}")
        need(float(self.pareto_slack) >= 0, "pareto_slack", "must be >= 0")
        if "n_candidates" in self.__dict__:
            need(int(self.n_candidates) >= 4, "n_candidates", "need at least 4 measured candidates to fit a regressor")
            need(0 < float(self.lhs_low) <= 1 <= float(self.lhs_high), "lhs_low", "need 0 < lhs_low <= 1 <= lhs_high")
            need(int(self.search_rounds) >= 1, "search_rounds", "must be >= 1")
            need(0 < float(self.conc_start) and 0 < float(self.conc_end), "conc_start", "concentrations must be > 0")
            need(int(self.top_k) >= 1 and int(self.search_samples) >= int(self.top_k), "top_k", "need 1 <= top_k <= search_samples")
            need(int(self.candidate_tokens) >= 1, "candidate_tokens", "must be a positive integer")
            need(float(self.lookahead_steps) > 0, "lookahead_steps", "must be > 0 (the step the candidates' influence is measured at)")
            need(self.lookahead_lr is None or float(self.lookahead_lr) > 0, "lookahead_lr", "null (the optimiser's current LR) or > 0")
            need(self.regress in REGRESS, "regress", f"one of {REGRESS}, got {self.regress!r}")
            need(self.regressor in REGRESSORS, "regressor", f"one of {REGRESSORS}, got {self.regressor!r}")
            need(self.candidate_sample in CANDIDATE_SAMPLES, "candidate_sample",
                 f"one of {CANDIDATE_SAMPLES}, got {self.candidate_sample!r}")
            need(float(self.accept_margin) >= 0, "accept_margin", "must be >= 0 (in units of the regressor's held-out RMSE)")


@register("tikmix_d")
class TiKMiXD(Mixer):
    """TiKMiX-D: the next stage's mixture minimises Eq. 10 over the measured influence matrix."""

    _keys = D_KEYS

    def __init__(self, cfg: Mapping[str, Any], domains: list[str], ctx: MixerContext):
        self.c = _Cfg(cfg, self._keys)
        self.seed = int(self.c.seed) if self.c.seed is not None else int(ctx.seed)
        super().__init__(cfg, domains, ctx)
        self.info = {"hessian": self.c.hessian, "projection_dim": self.c.projection_dim, "flops": {"influence": 0.0, "candidates": 0.0}}

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

    def on_probe(self, probe: Any) -> None:
        t0 = time.perf_counter()
        c = self.c
        w_prev = self._w.copy()
        caps = epoch_caps(self._train_tokens(), float(probe.stage_tokens), c.max_epochs)
        seed = self._probe_seed(probe.step)
        gi = self._influence(probe, w_prev, seed)
        record: dict[str, Any] = {"step": int(probe.step), "stage_tokens": int(probe.stage_tokens), "w_prev": self._wd(w_prev),
                                  "caps": self._wd(caps)}
        try:
            targets = self._targets(probe)
            gi.set_targets(targets)
            res = gi.matrix({d: (lambda d=d: probe.domain_batches(d, int(c.tokens_per_domain))) for d in self.domains},
                            keep_directions=self._keep_directions())
            S = res.S
            inf_flops, inf_wall = gi.total_flops(), gi.wall_s
            probe.charge(inf_flops, "influence")
            self.info["flops"]["influence"] += inf_flops
            w, sinfo = tikmix_d_solve(S, w_prev, float(c.alpha), float(c.beta), float(c.gamma), caps=caps,
                                      init="uniform", tol=float(c.pareto_tol), maxiter=int(c.solver_maxiter),
                                      pareto=bool(c.pareto), pareto_slack=float(c.pareto_slack))
            self._warn_pinned(probe.step, sinfo, len(targets))
            record.update(
                targets=list(targets),
                influence=res.as_dict(),
                influence_info=_jsonable({k: res.info[k] for k in ("tokens", "norms", "n_params", "hessian", "projection_dim",
                                                                   "kfac_skipped", "kfac_diag", "block_share")}),
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

    def _influence(self, probe: Any, w_prev: np.ndarray, seed: int) -> GroupInfluence:
        c = self.c
        return GroupInfluence(
            probe.model,
            hessian=c.hessian,
            optimizer=getattr(probe, "optimizer", None),
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
            autocast=getattr(probe, "autocast", None),
            device=getattr(probe, "device", None),
            flops_per_token=getattr(probe, "flops_per_token", None),
        )

    def _targets(self, probe: Any) -> dict[str, Any]:
        """The probe's target sets cut to ``targets_tokens`` each; the automatic per-domain held-out targets
        combined into one averaged target (``combine_targets``): one target per domain makes S near-diagonal,
        and the Pareto constraint then pins the mixture where it started (methods.md, README)."""
        c = self.c
        targets = {name: _take_tokens(b, c.targets_tokens) for name, b in probe.targets.items()}
        if not targets:
            raise DataError("TiKMiX needs at least one target set (config: targets)")
        combine = c.combine_targets is True or (c.combine_targets == "auto" and bool(self.ctx.targets_auto))
        if combine and len(targets) > 1:
            return {"mean(" + ", ".join(targets) + ")": CombinedTarget(targets)}
        return targets

    def _warn_pinned(self, step: int, sinfo: dict, n_targets: int) -> None:
        if self.c.pareto and sinfo.get("pareto_room", 1.0) <= 1e-9:
            print(f"[tikmix] warning: step {step}: the Pareto constraint S·w >= S·w_prev admits no better mixture, so the "
                  f"mixture stays as it was ({n_targets} targets; typical when every domain is also a target). Consider "
                  "mixer.combine_targets=true, benchmark targets, mixer.pareto_slack>0 or mixer.pareto=false",
                  file=sys.stderr, flush=True)

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


@register("tikmix_m")
class TiKMiXM(TiKMiXD):
    """TiKMiX-M: a regression of measured finite-step group influence over candidate mixtures, searched à la
    Algorithm 1 inside the region it was fitted on (module doc)."""

    _keys = M_KEYS

    def _refine(self, probe, gi, S, w_d, w_prev, caps, seed, record) -> np.ndarray:
        c = self.c
        ab = {"alpha": float(c.alpha), "beta": float(c.beta), "gamma": float(c.gamma)}
        cands, linfo = latin_hypercube_candidates(w_d, int(c.n_candidates), float(c.lhs_low), float(c.lhs_high),
                                                  seed=seed, return_info=True)
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
            "w_D": self._wd(w_d), "lhs": linfo, "eta": eta, "nominal": nominal.tolist(), "realised": X.tolist(),
            "realised_l1_from_nominal": np.abs(X - nominal).sum(axis=1).tolist(),
            "measured_P": P.tolist(), "first_order_P": first.tolist(),
            "measured": np.asarray(tikmix_objective_from_p(P, X, scale, **ab)).tolist(),
            "linear": np.asarray(tikmix_objective(S, X, **ab)).tolist(),
        }
        record["tikmix_m"] = m_rec
        if len(X) < 4:
            return self._keep_w_d(m_rec, w_d, f"only {len(X)} candidates: too few to fit a regressor")
        try:
            w, law, region = self._search(S, X, P, w_d, caps, seed, ab, m_rec)
        except (ValueError, FloatingPointError, np.linalg.LinAlgError, _lgb_error()) as e:  # numerical failure: keep training
            return self._keep_w_d(m_rec, w_d, f"regression/search failed ({type(e).__name__}: {e})")
        pred_m, pred_d = float(law.predict(w[None])[0]), float(law.predict(w_d[None])[0])
        ok, why = accept_search(m_rec["fit"], pred_m, pred_d, float(c.accept_margin))
        m_rec.update(predicted_w=pred_m, predicted_w_D=pred_d, linear_w=float(tikmix_objective(S, w, **ab)),
                     linear_w_D=float(tikmix_objective(S, w_d, **ab)), on_boundary=[self.domains[i] for i in on_boundary(w, region)],
                     pareto_min_vs_prev=float(((S / scale[:, None]) @ (w - w_prev)).min()))  # reported; M has no such constraint
        if m_rec["on_boundary"]:
            log.info("tikmix_m: step %d: the searched mixture sits on the fitted region's boundary in %s",
                     probe.step, m_rec["on_boundary"])
        if not ok:
            return self._keep_w_d(m_rec, w_d, why)
        m_rec.update(status="ok", decision=why)
        return w

    def _keep_directions(self) -> bool:
        return self.c.candidate_sample == "composed"

    def _eta(self, probe: Any) -> float:
        """The lookahead step: lookahead_steps optimiser steps at the current (or the given) learning rate."""
        c = self.c
        lr = c.lookahead_lr
        if lr is None:
            opt = getattr(probe, "optimizer", None)
            if opt is None:
                raise ConfigError("mixer.lookahead_lr", "the probe has no optimiser to read the learning rate from; set it")
            lr = opt.param_groups[0]["lr"]
        return float(lr) * float(c.lookahead_steps)

    def _measure(self, probe, gi, nominal: np.ndarray, eta: float, S: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
        law, finfo = fit_influence_law(X, P, S, regress=c.regress, objective_kwargs=ab, seed=seed % (2**31),
                                       regressor=c.regressor,
                                       n_folds=int(c.cv_folds), lgbm=dict(n_estimators=int(c.n_estimators),
                                       learning_rate=float(c.learning_rate), num_leaves=int(c.num_leaves),
                                       min_child_samples=int(c.min_child_samples)))
        region = (X.min(axis=0), X.max(axis=0))
        start = X[0]  # w_D's realised composition: inside the region by construction
        capped = bool(np.any(caps < 1.0)) and caps.sum() >= 1
        project = (lambda W: project_capped_simplex(W, caps)) if capped else None
        w, trace = dirichlet_search(law.predict, start, T=int(c.search_rounds), conc_start=float(c.conc_start),
                                    conc_end=float(c.conc_end), n_samples=int(c.search_samples), top_k=int(c.top_k),
                                    seed=(seed + 1) % (2**32), project=project, region=region)
        m_rec.update(fit=finfo, search=trace, region={"low": self._wd(region[0]), "high": self._wd(region[1])})
        return w, law, region

    def _keep_w_d(self, m_rec: dict, w_d: np.ndarray, why: str) -> np.ndarray:
        m_rec.update(status="kept_w_D", decision=why)
        print(f"[tikmix] tikmix_m keeps TiKMiX-D's mixture: {why}", file=sys.stderr, flush=True)
        return w_d
