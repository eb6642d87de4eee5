"""The Mixer interface: the one seam every data-mixing method plugs into.

A mixer owns the mixture. The trainer never knows which method it runs: it asks ``weights(step)`` for the
mixture in force, reports cheap per-step statistics through ``observe``, and, at the steps the mixer asks
for (``probe_steps``), hands it a :class:`Probe` with access to the model, the data and the targets.
Everything a mixer needs to resume exactly goes through ``state_dict``/``load_state_dict``.

Adding a method = one module with a ``@register("name", NameConfig)`` class and its parameters' dataclass, in
``baselines/`` or ``tikmix/method/`` (found by :func:`discover`, no list to edit), + one ``conf/mixer/<name>.yaml``
naming that dataclass as its schema. The class also says how the suite lists it (``family``, ``summary``, ``smoke``:
``python train.py --help``, the tables' row order, the smoke test), so no list elsewhere names the mixers.
"""

from __future__ import annotations

import abc
import importlib
import importlib.metadata
import pkgutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator, Mapping, Protocol, Sequence

import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from tikmix.config import LOGGERS, SCHEMAS, typed
from tikmix.errors import ConfigError
from tikmix.mixer_helpers import check_simplex, wdict

if TYPE_CHECKING:  # annotations only: this module stays free of torch
    import torch

_REGISTRY: dict[str, type["Mixer"]] = {}
# Where mixers are found (:func:`discover`): every module of these packages, and every module or object an
# installed distribution names in the entry-point group ENTRY_POINTS. A new method is one module there (or in
# a package of its own, named in that group) and one conf/mixer/<name>.yaml; no list to edit.
MIXER_PACKAGES = ("tikmix.static_mixers", "tikmix.method", "baselines")
ENTRY_POINTS = "tikmix.mixers"
_discovered = False
# Mixer.family, in the order of each list. --help leads with the default and the static choices, then this
# suite's method; the tables read references, then the baselines, then TiKMiX. A mixer of another family follows
# in both; family "part" (a sweep's job, a sub-run's mixer: not a choice on its own) is not in --help.
HELP_FAMILIES = ("static", "tikmix", "baseline")
TABLE_FAMILIES = ("static", "baseline", "tikmix")
_LISTING = ("family", "summary", "help_rank", "table_rank", "smoke")  # Mixer's attributes for the lists
_STORED: tuple | None = None  # the mixers whose schemas ConfigStore holds, as (name, config class)


@dataclass
class MixerConfig:
    """The parameters every mixer has. A mixer's own dataclass extends it, beside its class, and holds its
    defaults and their checks (``__post_init__``); its preset conf/mixer/<name>.yaml names it as its schema."""

    name: str = MISSING


def register(name: str, config: type[MixerConfig] = MixerConfig) -> Callable[[type["Mixer"]], type["Mixer"]]:
    """Class decorator: the mixer ``mixer=<name>`` builds, with its parameters' dataclass ``config``."""

    def deco(cls: type[Mixer]) -> type[Mixer]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise RuntimeError(f"mixer {name!r} registered twice")
        _REGISTRY[name] = cls
        cls.name = name
        cls.config_class = config
        for attr in _LISTING:  # a subclass registered under its own name is listed as it says, not as its parent
            if attr not in vars(cls):
                setattr(cls, attr, getattr(Mixer, attr))
        return cls

    return deco


def discover() -> None:
    """Import every mixer module (:data:`MIXER_PACKAGES`, :data:`ENTRY_POINTS`): importing one registers its mixers."""
    global _discovered
    if _discovered:
        return
    for name in MIXER_PACKAGES:
        mod = importlib.import_module(name)
        for info in pkgutil.iter_modules(getattr(mod, "__path__", []), f"{name}."):
            importlib.import_module(info.name)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINTS):
        ep.load()
    _discovered = True


def available() -> list[str]:
    discover()
    return sorted(_REGISTRY)


def _listed(families: tuple[str, ...], rank: str) -> list[str]:
    def key(name: str) -> tuple:
        cls = _REGISTRY[name]
        fam = families.index(cls.family) if cls.family in families else len(families)
        return fam, getattr(cls, rank), name

    return sorted((n for n in available() if _REGISTRY[n].family != "part"), key=key)


def help_order() -> list[str]:
    """The mixers ``python train.py --help`` lists, in its order (families :data:`HELP_FAMILIES`, then ``help_rank``)."""
    return _listed(HELP_FAMILIES, "help_rank")


def table_order() -> list[str]:
    """The tables' row order of the mixers of :data:`TABLE_FAMILIES` (then ``table_rank``); others follow them."""
    return [n for n in _listed(TABLE_FAMILIES, "table_rank") if _REGISTRY[n].family in TABLE_FAMILIES]


def help_lines(default: str = "") -> str:
    """The mixer group's lines of ``python train.py --help`` (conf/hydra/help/tikmix.yaml interpolates them):
    one per listed mixer, its name and its ``summary``; ``default`` is marked [default]."""
    lines = []
    for name in help_order():
        text = _REGISTRY[name].summary
        lines.append(f"  {name:<14}  {'[default] ' if name == default else ''}{text}".rstrip())
    return "\n".join(lines)


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore, where the presets' defaults lists find them: ``schema/<section>``,
    ``schema/logger/<name>`` and ``schema/mixer/<name>`` for every mixer found (:func:`discover`), and the help
    text's resolver ``${tikmix_mixers:<default>}`` (:func:`help_lines`). Call it before composing a config
    (train.py, python -m eval, the tests' compose)."""
    global _STORED
    if not OmegaConf.has_resolver("tikmix_mixers"):
        OmegaConf.register_new_resolver("tikmix_mixers", help_lines)
    mixers = tuple((name, mixer_class(name).config_class) for name in available())
    if _STORED == mixers:  # every compose calls this; storing 30 structured configs again costs ~0.2 s each time
        return
    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(group="schema", name=name, node=node)
    for name, node in LOGGERS.items():
        cs.store(group="schema/logger", name=name, node=node)
    for name, node in mixers:
        cs.store(group="schema/mixer", name=name, node=node)
    _STORED = mixers


def mixer_class(name: Any) -> type["Mixer"]:
    discover()
    if name not in _REGISTRY:
        raise ConfigError("mixer", f"unknown mixer {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def mixer_config(cfg: Mapping[str, Any] | MixerConfig) -> MixerConfig:
    """A mixer's config as its dataclass: ``cfg`` (a dict or DictConfig naming the mixer) merged over the
    dataclass's defaults, its keys, types and values checked (ConfigErrors name ``mixer.<key>``)."""
    if isinstance(cfg, MixerConfig):
        return cfg
    return mixer_class(cfg.get("name")).parse_config(cfg)


def build_mixer(cfg: Mapping[str, Any] | MixerConfig, domains: Sequence[str], context: "MixerContext") -> "Mixer":
    c = mixer_config(cfg)
    return mixer_class(c.name)(c, list(domains), context)


class SubRuns(Protocol):
    """Sub-runs for a mixer (implemented by :class:`tikmix.run.SubRunner`): ``run_subrun(overrides, name,
    charge_as)`` trains the run with ``overrides`` (nested config values) merged over this run's config and returns
    its results, cached by config fingerprint and charged to this run's ledger as ``mixer/<charge_as>``."""

    def __call__(self, overrides: dict, name: str = "subrun", charge_as: str = "subruns") -> dict: ...

    def detached(self) -> "SubRuns":
        """The same runner for a worker process (picklable): it fills the sub-run cache and charges nothing."""
        ...


@dataclass
class MixerContext:
    """What a mixer may know at construction: the data it mixes and the run it belongs to."""

    domains: list[str]
    train_tokens: dict[str, int]  # tokens each domain holds in its train split
    total_steps: int
    tokens_per_step: int
    seq_len: int
    seed: int
    stage_steps: list[int] = field(default_factory=list)  # steps at which a new stage begins (excl. 0)
    stop_at_stage: int | None = None  # trainer.stop_at_stage: the run ends at that stage boundary (a shared prefix)
    human_weights: dict[str, float] | None = None  # the data preset's published proportions, if any
    # the targets are the automatic per-domain held-out texts (targets.domains=auto, no task targets): a
    # mixer may combine them into one averaged target (TiKMiX: mixer.combine_targets)
    targets_auto: bool = False
    run_dir: str | None = None
    # set by the run (tikmix.run.SubRunner): launch a sub-run (proxy/reference model) through the same trainer,
    # charged to the mixer; a mixer never imports the run (README, layers)
    run_subrun: SubRuns | None = None
    # set by the trainer: charge(flops, what) adds mixer overhead to the compute ledger as mixer/<what>
    charge: Callable[[float, str], None] | None = None
    # set by the trainer: the run's autocast policy (trainer.dtype) for a mixer's own forward passes outside a
    # probe (DoReMi's reference model); None = fp32
    autocast: Callable[[], ContextManager] | None = None


@dataclass
class DomainStats:
    """Cheap per-step feedback from the training batch (same forward pass, no extra compute)."""

    step: int
    counts: np.ndarray  # sequences per domain in this step's batch
    loss: np.ndarray  # mean token loss per domain in this batch (nan where the domain had no sequence)
    tokens: np.ndarray  # tokens per domain in this batch
    windows: np.ndarray | None = None  # the batch itself: [B, seq_len+1] token windows (int64)
    row_domains: np.ndarray | None = None  # domain index of each row [B]
    token_loss: Any = None  # detached per-token training loss [B, seq_len] (torch tensor, on the device)
    # the batch was drawn but not trained on (a non-finite loss under trainer.on_nonfinite=skip): loss is nan
    # and tokens 0 everywhere; a mixer counts the step and learns nothing from it
    skipped: bool = False


class MixtureSample(list):
    """Batches drawn with a mixture (a list, iterable like any batch source) and ``counts``: the sequences
    drawn from each domain, so a mixer can use the composition actually measured, not the nominal one."""

    def __init__(self, batches: Iterator[Any], counts: Any):
        super().__init__(batches)
        self.counts = np.asarray(counts)


class TargetLosses(dict):
    """The mean loss of each target set (name -> float) and ``flops``: the forward FLOPs the pass cost."""

    def __init__(self, losses: Mapping[str, float], flops: float):
        super().__init__(losses)
        self.flops = float(flops)


class Probe(abc.ABC):
    """Everything a mixer may use at the steps it asked for (``Mixer.probe_steps``); implemented by the trainer
    (:class:`tikmix.trainer.TrainerProbe`). Batches are dicts ``{"input_ids": [b, T], "labels": [b, T]}`` of
    LongTensors on ``device``, labels unshifted (Hugging Face convention, -100 = not scored). The trainer puts the
    model back in train mode and clears its gradients afterwards."""

    step: int  # the step about to be taken
    model: torch.nn.Module  # the model being trained (under torchrun DDP-wrapped: a backward pass reduces across ranks)
    optimizer: torch.optim.Optimizer  # its AdamW (second moments as a diagonal preconditioner; the current LR)
    device: torch.device
    flops_per_token: float  # training FLOPs per token (6·N + attention); a forward pass costs a third of it
    stage_tokens: int  # training tokens from this step to the next stage boundary (or the end of the run)
    seq_len: int
    domains: list[str]
    train_tokens: dict[str, int]  # tokens each domain holds in its train split
    targets: dict[str, list[dict]]  # the target sets the mixer optimises for: name -> batches

    @abc.abstractmethod
    def autocast(self) -> ContextManager:
        """The run's autocast policy (``trainer.dtype``): wrap a forward pass in it."""

    @abc.abstractmethod
    def domain_batches(self, domain: str, n_tokens: int, split: str = "train") -> Iterator[dict]:
        """Batches of about ``n_tokens`` training tokens of one domain, deterministic given the run seed and step."""

    @abc.abstractmethod
    def mixture_batches(self, weights: np.ndarray, n_tokens: int) -> MixtureSample:
        """Batches of about ``n_tokens`` tokens drawn with a mixture; ``counts`` = the sequences drawn per domain."""

    @abc.abstractmethod
    def val_losses(self) -> dict[str, float]:
        """The per-domain validation loss (booked as evaluation)."""

    @abc.abstractmethod
    def target_losses(self, n_tokens: int | None = None, charge_as: str | None = None) -> TargetLosses:
        """The mean loss over the scored tokens of each target set, from its first ``n_tokens`` input tokens (whole
        rows; None = all). Its forward FLOPs are booked as evaluation, or with ``charge_as`` as the mixer's own
        overhead ``mixer/<charge_as>``."""

    @abc.abstractmethod
    def charge(self, flops: float, what: str) -> None:
        """Add the mixer's own overhead to the compute ledger as ``mixer/<what>``."""


class Mixer:
    """Base class. Static mixers override ``initial_weights`` only."""

    name = "base"
    config_class: type[MixerConfig] = MixerConfig  # set by @register
    # How the suite lists it. family: one of HELP_FAMILIES / TABLE_FAMILIES, or "part" (run only inside a sweep or
    # as a sub-run: not in --help); summary: its one line in --help; help_rank / table_rank: its place within its
    # family in --help and in the tables (ties by name); smoke: the overrides it needs to run at all on the
    # synthetic data at budget=smoke (tests/test_smoke_budget.py runs every preset with them).
    family: str = "other"
    summary: str = ""
    help_rank: int = 99
    table_rank: int = 99
    smoke: tuple[str, ...] = ()

    def __init__(self, cfg: Mapping[str, Any] | MixerConfig, domains: list[str], ctx: MixerContext):
        self.c = self.parse_config(cfg)  # the parameters, typed and checked
        self.domains = list(domains)
        self.ctx = ctx
        self.m = len(domains)
        self._w = check_simplex(self.initial_weights(), "mixer", self.domains)
        self.history: list[dict] = []  # per-stage / per-update records, logged to results.json
        self.info: dict[str, Any] = {}  # method-specific summary for results.json

    @classmethod
    def parse_config(cls, cfg: Mapping[str, Any] | MixerConfig) -> MixerConfig:
        """This mixer's parameters as its dataclass: a dict or DictConfig merged over its defaults and checked."""
        if isinstance(cfg, cls.config_class):
            return cfg
        return typed(cls.config_class, cfg, "mixer", what=f"mixer {cls.name!r}")

    # --- the interface -------------------------------------------------------------------------------
    def initial_weights(self) -> np.ndarray:
        return np.full(self.m, 1.0 / self.m)

    def prepare(self) -> None:
        """Optional offline phase before the main run (may launch sub-runs via ctx.run_subrun)."""

    def weights(self, step: int) -> np.ndarray:
        return self._w

    def observe(self, stats: DomainStats) -> None:
        """Per-step feedback from the training batch."""

    def loss_weights(self, step: int) -> np.ndarray | None:
        """Per-domain weights of the training objective, or None for the plain token mean.

        When given (DoReMi's proxy), the step's loss is sum_d a_d * (mean token loss of domain d in the batch).
        """
        return None

    def probe_steps(self) -> list[int]:
        """Steps (before which) the mixer wants ``on_probe`` called."""
        return []

    def on_probe(self, probe: Probe) -> None:
        """Model access at a requested step; may change the mixture for the following steps."""

    def state_dict(self) -> dict:
        return {"w": self._w.tolist(), "history": list(self.history), "info": dict(self.info)}

    def load_state_dict(self, d: dict) -> None:
        self._w = np.asarray(d["w"], dtype=np.float64)
        self.history = list(d.get("history", []))
        self.info = dict(d.get("info", {}))

    # The envelope of a state richer than the weights (Aioli, DGA, ODM): its version, whose state it is (mixer and
    # domains, checked on load: a checkpoint of another run must not be resumed silently), the mixer's own fields,
    # then history and info.
    def _envelope(self, version: int, **state: Any) -> dict:
        return {
            "version": version,
            "mixer": self.name,
            "domains": list(self.domains),
            **state,
            "history": list(self.history),
            "info": dict(self.info),
        }

    def _check_envelope(self, d: dict) -> None:
        if d.get("mixer") != self.name:
            raise ValueError(f"state is for mixer {d.get('mixer')!r}, not {self.name!r}")
        if list(d.get("domains", [])) != self.domains:
            raise ValueError(f"state is for domains {d.get('domains')}, this run has {self.domains}")

    def _load_records(self, d: dict) -> None:
        self.history = list(d.get("history", []))
        self.info = dict(d.get("info", self.info))

    def weights_dict(self, step: int) -> dict[str, float]:
        return wdict(self.domains, self.weights(step))
