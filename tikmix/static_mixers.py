"""Static mixers: one mixture for the whole run, no feedback."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import yaml

from tikmix.config import Number, check_number, need
from tikmix.errors import ConfigError
from tikmix.mixer import Mixer, MixerConfig, register
from tikmix.mixer_helpers import wdict, weights_from_mapping


@register("stratified")
class Stratified(Mixer):
    """Uniform over domains."""

    family = "static"
    summary = "uniform over the domains"
    help_rank, table_rank = 1, 3


@register("natural")
class Natural(Mixer):
    """Each domain's share of the training tokens."""

    family = "static"
    summary = "each domain's share of the train tokens"
    help_rank, table_rank = 2, 2

    def initial_weights(self) -> np.ndarray:
        t = np.array([self.ctx.train_tokens[d] for d in self.domains], dtype=np.float64)
        return t / t.sum()


@dataclass
class FixedConfig(MixerConfig):
    weights: Any = None  # {domain: weight}; domains not named get 0; must sum to 1 unless renormalize=true
    weights_file: Optional[str] = None  # a .yaml/.json file with the same mapping (used when weights is null)
    renormalize: bool = False  # true = rescale weights that do not sum to 1 (said on the console), false = refuse them


@register("fixed", FixedConfig)
class Fixed(Mixer):
    """A user-given mixture by domain name (inline or from a YAML/JSON file)."""

    family = "static"
    summary = "your weights: mixer.weights='{arith: 0.5, copy: 0.5}' or mixer.weights_file=FILE"
    help_rank, table_rank = 3, 4
    smoke = ("mixer.weights={arith: 0.5, copy: 0.5}",)

    def initial_weights(self) -> np.ndarray:
        weights = self.c.weights
        field = "mixer.weights"
        if weights is None:
            path = self.c.weights_file
            if not path:
                raise ConfigError(
                    "mixer.weights", "mixer=fixed needs mixer.weights={domain: weight, ...} or mixer.weights_file=PATH"
                )
            field = "mixer.weights_file"
            p = Path(path)
            if not p.is_file():
                raise ConfigError(field, f"file not found: {p}")
            try:
                text = p.read_text()
                weights = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
            except (OSError, ValueError, yaml.YAMLError) as e:
                raise ConfigError(field, f"cannot parse {p}: {e}") from None
        if not hasattr(weights, "items"):
            raise ConfigError(field, f"expected a mapping domain -> weight, got {weights!r}")
        return weights_from_mapping(dict(weights.items()), self.domains, field, self.c.renormalize)


@register("human")
class Human(Mixer):
    """The data preset's published default proportions (The Pile's, SlimPajama's)."""

    family = "static"
    summary = "the data preset's published proportions (pile, slimpajama)"
    help_rank, table_rank = 4, 1
    smoke = ("data.human_weights={arith: 2, copy: 1, grammar: 1}",)

    def initial_weights(self) -> np.ndarray:
        hw = self.ctx.human_weights
        if not hw:
            raise ConfigError(
                "data.human_weights", "this data preset has no published proportions; use mixer=natural or mixer=fixed"
            )
        known = {k: v for k, v in hw.items() if k in self.domains}
        return weights_from_mapping(known, self.domains, "data.human_weights", renormalize=True)


@dataclass
class DesignConfig(MixerConfig):
    """One static mixture of the oracle design (:func:`static_design`; +sweep=oracle runs every index), or of
    ``design_file``."""

    index: int = 0  # which mixture of the design (python -m eval.oracle lists them; out of range = error)
    # a YAML list of {name, weights: {domain: w}} (python -m eval.oracle --select writes one)
    design_file: Optional[str] = None
    grid_domains: Optional[List[str]] = None  # domains of the simplex grid (the others at 0); null = every domain
    grid_step: int = 3  # grid resolution: weights in multiples of 1/grid_step over grid_domains
    vertex_weight: Number = 0.7  # near-vertex mixtures: this weight on one domain, the rest spread evenly
    n_uniform: int = 16  # Dirichlet draws around uniform ...
    uniform_concentration: Number = 2.0  # ... Dir(2, ..., 2): spread over the whole simplex
    n_natural: int = 8  # Dirichlet draws around the natural (token-share) mixture ...
    natural_concentration: Number = 20.0  # ... Dir(20 · natural)
    seed: int = 0  # the design's seed (not the run's: every seed of a confirmation trains the same mixture)

    def __post_init__(self) -> None:
        check_number("mixer.index", self.index, integer=True, low=0)
        check_number("mixer.grid_step", self.grid_step, integer=True, low=1)
        for key in ("n_uniform", "n_natural"):
            check_number(f"mixer.{key}", getattr(self, key), integer=True, low=0)
        need(0 < self.vertex_weight < 1, "mixer.vertex_weight", f"must be in (0, 1), got {self.vertex_weight!r}")


def static_design(
    domains: list[str],
    natural: np.ndarray,
    grid_domains: list[str] | None = None,
    grid_step: int = 3,
    vertex_weight: float = 0.7,
    n_uniform: int = 16,
    uniform_concentration: float = 2.0,
    n_natural: int = 8,
    natural_concentration: float = 20.0,
    seed: int = 0,
) -> list[tuple[str, np.ndarray]]:
    """The oracle sweep's design of static mixtures, a pure function of its arguments (README, "ground truth"):
    stratified and natural; near-vertices (``vertex_weight`` on one domain, the rest spread evenly); Dirichlet
    draws around uniform and around natural; and a simplex grid of step 1/``grid_step`` over ``grid_domains``
    (the domains that matter; the others at 0; null = all domains)."""
    m = len(domains)
    natural = np.asarray(natural, dtype=np.float64) / np.sum(natural)
    out: list[tuple[str, np.ndarray]] = [("stratified", np.full(m, 1.0 / m)), ("natural", natural)]
    for i, d in enumerate(domains):
        w = np.full(m, (1.0 - vertex_weight) / (m - 1))
        w[i] = vertex_weight
        out.append((f"vertex:{d}", w))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x0AC1E]))
    out += [(f"dirichlet_uniform:{k}", rng.dirichlet(np.full(m, uniform_concentration))) for k in range(n_uniform)]
    out += [
        (f"dirichlet_natural:{k}", rng.dirichlet(np.maximum(natural * natural_concentration, 1e-3)))
        for k in range(n_natural)
    ]
    grid = list(grid_domains) if grid_domains else list(domains)
    idx = [domains.index(d) for d in grid]
    w = np.zeros(m)
    w[idx] = 1.0 / len(idx)
    out.append(("grid_uniform", w))  # uniform over the domains that matter: the first guess a user makes
    for parts in _compositions(grid_step, len(idx)):
        w = np.zeros(m)
        w[idx] = np.asarray(parts, dtype=np.float64) / grid_step
        out.append(("grid:" + ",".join(f"{d}={p}/{grid_step}" for d, p in zip(grid, parts) if p), w))
    return out


def _compositions(total: int, k: int) -> list[tuple[int, ...]]:
    """Every way to write ``total`` as an ordered sum of ``k`` non-negative integers, in a fixed order."""
    if k == 1:
        return [(total,)]
    return [(first,) + rest for first in range(total, -1, -1) for rest in _compositions(total - first, k - 1)]


@register("design", DesignConfig)
class Design(Mixer):
    """Mixture ``index`` of the oracle design (:func:`static_design`) or of ``design_file`` (a YAML list of
    {name, weights: {domain: w}} written by ``python -m eval.oracle``): one job of the oracle sweeps."""

    family = "part"

    def __init__(self, cfg, domains, ctx):
        self.c = self.parse_config(cfg)
        idx = self.c.index
        self.points = self._points(list(domains), ctx)
        if idx >= len(self.points):
            raise ConfigError(
                "mixer.index",
                f"{idx} is out of range: the design has {len(self.points)} mixtures (0..{len(self.points) - 1})",
            )
        super().__init__(self.c, domains, ctx)
        self.info = {"index": idx, "point": self.points[idx][0], "n_design": len(self.points)}

    def _points(self, domains: list[str], ctx) -> list[tuple[str, np.ndarray]]:
        c = self.c
        if c.design_file:
            return _read_design_file(c.design_file, domains)
        grid = c.grid_domains
        if grid is not None:
            bad = [d for d in grid if d not in domains]
            if bad:
                raise ConfigError("mixer.grid_domains", f"unknown domain(s) {bad}; the data has {domains}")
        natural = np.array([ctx.train_tokens[d] for d in domains], dtype=np.float64)
        return static_design(
            domains,
            natural,
            grid,
            c.grid_step,
            float(c.vertex_weight),
            c.n_uniform,
            float(c.uniform_concentration),
            c.n_natural,
            float(c.natural_concentration),
            c.seed,
        )

    def initial_weights(self) -> np.ndarray:
        return self.points[self.c.index][1]


def _read_design_file(path: str, domains: list[str]) -> list[tuple[str, np.ndarray]]:
    p = Path(path)
    try:
        rows = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError("mixer.design_file", f"cannot read {p}: {e}") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("weights"), dict) for r in rows):
        raise ConfigError("mixer.design_file", f"{p} must be a YAML list of {{name, weights: {{domain: weight}}}}")
    return [
        (str(r.get("name", i)), weights_from_mapping(r["weights"], domains, "mixer.design_file", renormalize=True))
        for i, r in enumerate(rows)
    ]


@dataclass
class ScheduleConfig(MixerConfig):
    """A fixed schedule: one mixture per stage of ``budget.stages`` (K boundaries = K + 1 stages), no feedback."""

    # a list with one {domain: weight} per stage (domains not named get 0), e.g.
    # mixer.stages='[{facts: 0.5, grammar: 0.5}, {arith: 0.5, grammar: 0.5}]'
    stages: Any = None
    stages_file: Optional[str] = None  # a .yaml/.json file holding that list (used when stages is null)
    renormalize: bool = False  # true = rescale a stage whose weights do not sum to 1, false = refuse it


def read_stages(c: ScheduleConfig) -> tuple[list[Any], str]:
    """The schedule's stages as given (inline or from ``stages_file``) and the field they came from."""
    stages, field_name = c.stages, "mixer.stages"
    if stages is None:
        if not c.stages_file:
            raise ConfigError(
                "mixer.stages", "mixer=schedule needs mixer.stages=[{domain: weight}, ...] or mixer.stages_file=PATH"
            )
        field_name = "mixer.stages_file"
        p = Path(c.stages_file)
        try:
            text = p.read_text()
            stages = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as e:
            raise ConfigError(field_name, f"cannot read {p}: {e}") from None
        if isinstance(stages, dict) and "stages" in stages:
            stages = stages["stages"]
    if not isinstance(stages, (list, tuple)) or not stages or not all(hasattr(s, "items") for s in stages):
        raise ConfigError(field_name, f"expected a non-empty list of {{domain: weight}} mappings, got {stages!r}")
    return list(stages), field_name


def stage_of(step: int, stage_steps: list[int]) -> int:
    """The stage (0-based) that ``step`` trains in: the number of boundaries at or before it."""
    return sum(1 for s in stage_steps if s <= step)


@register("schedule", ScheduleConfig)
class Schedule(Mixer):
    """A mixture per stage, set in advance: the reference a dynamic method is measured against (README,
    "Ground truth: the best schedule"). A run stopped early (``trainer.stop_at_stage=k``) needs only its first
    k mixtures: that is how the schedule oracle trains a shared prefix once."""

    family = "static"
    summary = "one mixture per stage: mixer.stages='[{facts: 1}, {arith: 0.5, copy: 0.5}]' or mixer.stages_file=FILE"
    help_rank, table_rank = 5, 5
    smoke = ("mixer.stages=[{facts: 1.0}, {arith: 0.5, copy: 0.5}]",)

    def __init__(self, cfg, domains, ctx):
        self.c = self.parse_config(cfg)
        raw, field_name = read_stages(self.c)
        self.stages = np.stack(
            [
                weights_from_mapping(dict(s.items()), list(domains), f"{field_name}[{k}]", self.c.renormalize)
                for k, s in enumerate(raw)
            ]
        )
        n_need = len(ctx.stage_steps) + 1
        if len(raw) > n_need or (len(raw) < n_need and len(raw) < (ctx.stop_at_stage or n_need)):
            raise ConfigError(
                field_name,
                f"{len(raw)} mixtures for a budget of {n_need} stages (budget.stages has {n_need - 1} "
                f"boundaries): give one mixture per stage",
            )
        super().__init__(self.c, domains, ctx)
        starts = [0] + list(ctx.stage_steps)
        self.history = [
            {"step": starts[k], "stage": k, "weights": wdict(self.domains, w)} for k, w in enumerate(self.stages)
        ]
        self.info = {"stages": [wdict(self.domains, w) for w in self.stages], "stage_steps": starts[: len(raw)]}

    def initial_weights(self) -> np.ndarray:
        return self.stages[0]

    def weights(self, step: int) -> np.ndarray:
        return self.stages[min(stage_of(step, self.ctx.stage_steps), len(self.stages) - 1)]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "stages": self.stages.tolist()}

    def load_state_dict(self, d: dict) -> None:
        mine = self.stages.tolist()
        super().load_state_dict(d)
        self.stages = np.asarray(mine, dtype=np.float64)  # the config's schedule, not the checkpoint's copy
