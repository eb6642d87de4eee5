"""Static mixers: one mixture for the whole run, no feedback."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from tikmix.errors import ConfigError
from tikmix.mixer import Mixer, register, weights_from_mapping


@register("stratified")
class Stratified(Mixer):
    """Uniform over domains."""


@register("natural")
class Natural(Mixer):
    """Each domain's share of the training tokens."""

    def initial_weights(self) -> np.ndarray:
        t = np.array([self.ctx.train_tokens[d] for d in self.domains], dtype=np.float64)
        return t / t.sum()


@register("fixed")
class Fixed(Mixer):
    """A user-given mixture by domain name (inline or from a YAML/JSON file)."""

    def initial_weights(self) -> np.ndarray:
        weights = self.cfg.get("weights")
        field = "mixer.weights"
        if weights is None:
            path = self.cfg.get("weights_file")
            if not path:
                raise ConfigError("mixer.weights", "mixer=fixed needs mixer.weights={domain: weight, ...} or mixer.weights_file=PATH")
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
        w = weights_from_mapping(dict(weights.items()), self.domains, field, bool(self.cfg.get("renormalize", False)))
        return w


@register("human")
class Human(Mixer):
    """The data preset's published default proportions (The Pile's, SlimPajama's)."""

    def initial_weights(self) -> np.ndarray:
        hw = self.ctx.human_weights
        if not hw:
            raise ConfigError("data.human_weights", "this data preset has no published proportions; use mixer=natural or mixer=fixed")
        known = {k: v for k, v in hw.items() if k in self.domains}
        return weights_from_mapping(known, self.domains, "data.human_weights", renormalize=True)
