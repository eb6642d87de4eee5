"""Helpers the mixers share: weight vectors checked onto the simplex, read from a domain -> weight mapping,
written back as one; the leading rows of a target set. Pure numpy (no torch), like :mod:`tikmix.mixer`."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from tikmix.errors import ConfigError


def check_simplex(w: Any, field_name: str, domains: Sequence[str], atol: float = 1e-6) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    if w.shape != (len(domains),):
        raise ConfigError(
            field_name, f"expected {len(domains)} weights (one per domain {list(domains)}), got shape {w.shape}"
        )
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


def wdict(domains: Sequence[str], w: Any) -> dict[str, float]:
    """A weight vector as {domain: weight} (for histories and results.json)."""
    return {d: float(x) for d, x in zip(domains, w)}


def take_tokens(batches: Sequence[dict], n_tokens: int | None, whole_batches: bool = False) -> list[dict]:
    """The leading rows of a target set up to ``n_tokens`` input tokens, rounded up to whole rows (None = all).

    The last batch is cut to the rows needed, so the compute spent is what the config says, whatever the
    micro-batch size; a margin batch (``doc_index``: one row per choice of a document) is cut after a whole
    document, never between the choices of one. With ``whole_batches`` it is kept whole: the take overshoots
    ``n_tokens`` by up to a batch less one row (TiKMiX's targets, see tikmix/method/mixers.py).
    """
    if n_tokens is None:
        return list(batches)
    out, seen = [], 0
    for b in batches:
        if seen >= n_tokens:
            break
        if whole_batches:
            out.append(b)
            seen += int(b["input_ids"].numel())
            continue
        rows, T = b["input_ids"].shape[0], b["input_ids"].shape[-1]
        need = -(-(n_tokens - seen) // T)
        if need < rows and "doc_index" in b:  # rows up to the end of the last document begun
            doc = b["doc_index"]
            need = int((doc <= doc[need - 1]).sum())
        if need < rows:
            b = {
                k: (v[:need] if hasattr(v, "shape") and len(v.shape) and v.shape[0] == rows else v)
                for k, v in b.items()
            }
            rows = need
        out.append(b)
        seen += rows * T
    return out
