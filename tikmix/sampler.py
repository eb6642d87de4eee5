"""Mixture sampler: per step, integer per-domain sequence counts and the token windows to train on.

Counts follow the mixture exactly in expectation for any weights on the simplex: each domain gets
floor(B·w_d) sequences, and the remaining r = B − Σ floor(B·w_d) sequences go to domains chosen by
systematic sampling on the fractional parts f_d = B·w_d − floor(B·w_d) (each f_d < 1 and Σ f_d = r, so
domain d receives one extra with probability exactly f_d). Counts are never negative and always sum to B.

Windows of seq_len+1 tokens start at uniformly random offsets of the domain's token array (documents are
concatenated with an end-of-text token between them). Everything is drawn from (seed, step, domain), so a
resumed run replays the same data and any step can be regenerated alone.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tikmix.errors import ConfigError, DataError


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]))


def mixture_counts(weights: np.ndarray, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Non-negative integer counts summing to ``batch`` with E[counts] = batch · weights."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or np.any(~np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be a finite non-negative vector with positive sum, got {w}")
    w = w / w.sum()
    expected = batch * w
    base = np.floor(expected).astype(np.int64)
    frac = expected - base
    r = int(batch - base.sum())
    if r > 0:
        # systematic sampling: points u, u+1, ..., u+r-1 on the cumulative fractional parts
        cum = np.cumsum(frac)
        cum[-1] = r  # guard against rounding: the total is exactly r
        points = rng.uniform() + np.arange(r)
        picks = np.searchsorted(cum, points, side="right")
        np.add.at(base, np.minimum(picks, len(w) - 1), 1)
    return base


class MixtureSampler:
    """Draws the training batch of a step: [B, seq_len+1] token windows and the domain of each row."""

    def __init__(
        self,
        arrays: Sequence[np.ndarray],
        seq_len: int,
        batch_size: int,
        seed: int,
        domains: Sequence[str] | None = None,
    ):
        self.arrays = list(arrays)
        self.seq_len = int(seq_len)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.domains = list(domains) if domains is not None else [str(i) for i in range(len(arrays))]
        for d, a in zip(self.domains, self.arrays):
            if len(a) < self.seq_len + 1:
                raise DataError(
                    f"domain {d!r} has {len(a)} training tokens, fewer than one window of budget.seq_len+1={self.seq_len + 1}"
                )
        self.offsets = np.arange(self.seq_len + 1, dtype=np.int64)

    def counts(self, step: int, weights: np.ndarray) -> np.ndarray:
        return mixture_counts(weights, self.batch_size, _rng(self.seed, step, 0xC0))

    def windows(self, domain_idx: int, n: int, rng: np.random.Generator) -> np.ndarray:
        a = self.arrays[domain_idx]
        starts = rng.integers(0, len(a) - self.seq_len, size=n)
        return np.asarray(a[starts[:, None] + self.offsets], dtype=np.int64)

    def batch(self, step: int, weights: np.ndarray, stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [B, seq_len+1] int64, domain index per row [B]); deterministic in (seed, step, stream)."""
        counts = (
            self.counts(step, weights)
            if stream == 0
            else mixture_counts(weights, self.batch_size, _rng(self.seed, step, 0xC0, stream))
        )
        rows, dom = [], []
        for d, c in enumerate(counts):
            if c:
                rows.append(self.windows(d, int(c), _rng(self.seed, step, d, stream)))
                dom.append(np.full(int(c), d, dtype=np.int64))
        return np.concatenate(rows), np.concatenate(dom)

    def domain_sample(self, domain_idx: int, n_seqs: int, key: int) -> np.ndarray:
        """n_seqs windows of one domain, deterministic in (seed, key, domain) — for mixer probes."""
        return self.windows(domain_idx, n_seqs, _rng(self.seed, key, domain_idx, 0x9B))


def check_budget(total_tokens: int, seq_len: int, batch_size: int, micro_batch: int, max_pos: int) -> int:
    """Validate the budget against the model; return the number of optimiser steps."""
    for k, v in (
        ("total_tokens", total_tokens),
        ("seq_len", seq_len),
        ("batch_size", batch_size),
        ("micro_batch", micro_batch),
    ):
        if not isinstance(v, int) or v <= 0:
            raise ConfigError(f"budget.{k}", f"must be a positive integer, got {v!r}")
    if seq_len > max_pos:
        raise ConfigError(
            "budget.seq_len", f"{seq_len} exceeds the model's context model.max_position_embeddings={max_pos}"
        )
    if batch_size % micro_batch:
        raise ConfigError("budget.micro_batch", f"must divide budget.batch_size={batch_size}, got {micro_batch}")
    per_step = seq_len * batch_size
    if total_tokens < per_step:
        raise ConfigError(
            "budget.total_tokens", f"{total_tokens} is smaller than one batch (batch_size*seq_len = {per_step})"
        )
    return total_tokens // per_step
