"""The Mixer interface: the one seam every data-mixing method plugs into.

A mixer owns the mixture. The trainer never knows which method it runs: it asks ``weights(step)`` for the
mixture in force, reports cheap per-step statistics through ``observe``, and, at the steps the mixer asks
for (``probe_steps``), hands it a :class:`Probe` with access to the model, the data and the targets.
Everything a mixer needs to resume exactly goes through ``state_dict``/``load_state_dict``.

Adding a method = one module with a ``@register("name")`` class + one ``conf/mixer/<name>.yaml``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from tikmix.errors import ConfigError

_REGISTRY: dict[str, type["Mixer"]] = {}


def register(name: str) -> Callable[[type["Mixer"]], type["Mixer"]]:
    def deco(cls: type[Mixer]) -> type[Mixer]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise RuntimeError(f"mixer {name!r} registered twice")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return deco


def _import_builtin_mixers() -> None:
    # Importing the modules registers their classes. Kept lazy so `tikmix.mixer` has no heavy imports.
    import importlib

    for mod in ("tikmix.static_mixers", "tikmix.tikmix_mixers", "baselines"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a module that does not exist yet is fine; a broken import is not
            if e.name != mod:
                raise


def available() -> list[str]:
    _import_builtin_mixers()
    return sorted(_REGISTRY)


def build_mixer(cfg: Mapping[str, Any], domains: Sequence[str], context: "MixerContext") -> "Mixer":
    _import_builtin_mixers()
    name = cfg.get("name")
    if name not in _REGISTRY:
        raise ConfigError("mixer", f"unknown mixer {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](cfg, list(domains), context)


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
    human_weights: dict[str, float] | None = None  # the data preset's published proportions, if any
    # the targets are the automatic per-domain held-out texts (targets.domains=auto, no task targets): a
    # mixer may combine them into one averaged target (TiKMiX: mixer.combine_targets)
    targets_auto: bool = False
    run_dir: str | None = None
    # set by the trainer: launch a sub-run (proxy/reference model) through the same trainer, charged to
    # the mixer. Signature: run_subrun(overrides: dict, name: str) -> dict (the sub-run's results).
    run_subrun: Callable[..., dict] | None = None
    # set by the trainer: charge(flops, what) adds mixer overhead to the compute ledger as mixer/<what>
    charge: Callable[[float, str], None] | None = None


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


class Probe:
    """Model access at the steps a mixer asked for. Implemented by the trainer.

    * ``model``: the model being trained (train mode is restored by the trainer afterwards).
    * ``optimizer``: the optimiser (e.g. for Adam's second moment as a diagonal preconditioner).
    * ``domain_batches(domain, n_tokens, split="train", weights=None)``: iterator of LongTensor batches
      ``[b, seq_len+1]`` from the domain, deterministic given the run seed and step.
    * ``mixture_batches(weights, n_tokens)``: a :class:`MixtureSample` of batches drawn with a mixture; its
      ``counts`` are the sequences drawn per domain (the realised composition).
    * ``targets``: dict name -> list of (input_ids [b, T], loss_mask [b, T]) batches.
    * ``val_losses()``: per-domain validation loss.
    * ``target_losses()``: mean loss on each target set (the supervised tokens).
    * ``charge(flops, what)``: add mixer overhead to the compute ledger.
    """

    step: int
    model: Any
    optimizer: Any
    targets: dict

    def domain_batches(self, domain: str, n_tokens: int, split: str = "train") -> Iterator[Any]:
        raise NotImplementedError

    def val_losses(self) -> dict[str, float]:
        raise NotImplementedError

    def charge(self, flops: float, what: str) -> None:
        raise NotImplementedError


class Mixer:
    """Base class. Static mixers override ``initial_weights`` only."""

    name = "base"

    def __init__(self, cfg: Mapping[str, Any], domains: list[str], ctx: MixerContext):
        self.cfg = cfg
        self.domains = list(domains)
        self.ctx = ctx
        self.m = len(domains)
        self._w = check_simplex(self.initial_weights(), "mixer", self.domains)
        self.history: list[dict] = []  # per-stage / per-update records, logged to results.json
        self.info: dict[str, Any] = {}  # method-specific summary for results.json

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

    def weights_dict(self, step: int) -> dict[str, float]:
        return {d: float(x) for d, x in zip(self.domains, self.weights(step))}


def check_simplex(w: Any, field_name: str, domains: Sequence[str], atol: float = 1e-6) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    if w.shape != (len(domains),):
        raise ConfigError(field_name, f"expected {len(domains)} weights (one per domain {list(domains)}), got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ConfigError(field_name, f"weights must be finite and >= 0, got {w.tolist()}")
    s = w.sum()
    if abs(s - 1.0) > atol:
        raise ConfigError(field_name, f"weights must sum to 1, got {s:.6g}")
    return w / s


def weights_from_mapping(
    mapping: Mapping[str, Any], domains: Sequence[str], field_name: str, renormalize: bool
) -> np.ndarray:
    """Domain-name -> weight mapping to a vector in domain order; unknown names and bad values are refused."""
    unknown = [k for k in mapping if k not in domains]
    if unknown:
        raise ConfigError(field_name, f"unknown domain(s) {unknown}; the data has {list(domains)}")
    vals = []
    for d in domains:
        v = mapping.get(d, 0.0)
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{field_name}.{d}", f"weight must be a number, got {v!r}") from None
        if not np.isfinite(v) or v < 0:
            raise ConfigError(f"{field_name}.{d}", f"weight must be finite and >= 0, got {v}")
        vals.append(v)
    w = np.asarray(vals)
    s = w.sum()
    if s <= 0:
        raise ConfigError(field_name, "weights sum to 0; give at least one domain a positive weight")
    if abs(s - 1.0) > 1e-6:
        if not renormalize:
            raise ConfigError(
                field_name,
                f"weights sum to {s:.6g}, not 1; fix them or set mixer.renormalize=true to rescale them explicitly",
            )
        w = w / s
    return w
