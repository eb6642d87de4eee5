"""The budget of a run in steps: total steps, stage boundaries, what the splits must hold, and what a small budget
silently does (warnings)."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from tikmix.config import BudgetConfig, TrainerConfig
from tikmix.errors import ConfigError, DataError
from tikmix.sampler import check_budget
from tikmix.trainer import warmup_steps


def plan_steps(
    b: BudgetConfig, trainer: TrainerConfig, max_positions: int, shards: Any, final_eval: str, warn: bool
) -> tuple[int, list[int]]:
    """(total steps, stage-boundary steps) of the budget on this data; refuses a budget the model (its
    ``max_positions``) or the data cannot hold and, with ``warn``, says on stderr what a small budget does."""
    total_steps = check_budget(b.total_tokens, b.seq_len, b.batch_size, b.micro_batch, max_positions)
    stage_steps = stage_steps_from(b.stages, total_steps)
    check_eval_splits(shards, list(shards.domains), b.seq_len, final_eval)
    if warn:
        for line in budget_warnings(b, trainer, total_steps):
            print(f"[tikmix] warning: {line}", file=sys.stderr)
    return total_steps, stage_steps


def stage_steps_from(fracs: Any, total_steps: int) -> list[int]:
    """The step of each stage boundary. A boundary that rounds onto the first or last step, or onto another
    boundary, is refused: dropping it would silently skip a dynamic mixer's re-mixing."""
    fracs = list(fracs or [])
    for f in fracs:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1:
            raise ConfigError("budget.stages", f"stage boundaries are fractions strictly between 0 and 1, got {fracs}")
    if fracs != sorted(fracs):
        raise ConfigError("budget.stages", f"stage boundaries must be increasing, got {fracs}")
    steps = [int(round(f * total_steps)) for f in fracs]
    for i, (f, s) in enumerate(zip(fracs, steps)):
        if not 0 < s < total_steps or (i and s == steps[i - 1]):
            where = "the start" if s <= 0 else "the end" if s >= total_steps else f"step {s}, the boundary before it"
            raise ConfigError(
                "budget.stages",
                f"boundary {f} of a {total_steps}-step budget falls on {where}, so its "
                f"stage would be empty; give fewer boundaries or a larger budget.total_tokens",
            )
    return steps


def budget_warnings(b: BudgetConfig, trainer: TrainerConfig, total_steps: int) -> list[str]:
    """What a small budget silently does: leave most of total_tokens unused, round the warmup to nothing, or
    spend the whole run in warmup."""
    out = []
    per_step = int(b.seq_len) * int(b.batch_size)
    unused = int(b.total_tokens) - total_steps * per_step
    if unused > 0.1 * int(b.total_tokens):
        out.append(
            f"budget.total_tokens={b.total_tokens} is {total_steps} step(s) of {per_step:,} tokens: "
            f"{unused:,} tokens ({unused / int(b.total_tokens):.0%}) go unused"
        )
    warmup, _ = warmup_steps(trainer, b, total_steps)
    asked = float(b.warmup_frac) > 0 or bool(trainer.warmup_steps)
    if asked and warmup == 0:
        out.append(f"the warmup rounds to no step at all in a {total_steps}-step budget (budget.warmup_frac)")
    elif warmup >= total_steps > 0:
        out.append(
            f"the warmup ({warmup} steps) is the whole {total_steps}-step run: the learning rate never reaches its peak"
        )
    return out


def check_eval_splits(shards: Any, domains: list[str], seq_len: int, final_eval: str) -> None:
    """Every domain's val split (validation, targets) and, for a full final evaluation, its test split must
    hold one evaluation window of seq_len + 1 tokens (the train split is checked by the sampler)."""
    for split in ("val", "test") if final_eval == "full" else ("val",):
        for d in domains:
            n = shards.num_tokens(d, split)
            if n < seq_len + 1:
                raise DataError(
                    f"domain {d!r} has {n} {split} tokens, fewer than one evaluation window of "
                    f"budget.seq_len+1={seq_len + 1}; give its {split} split more text (or lower budget.seq_len)"
                )


def check_repeats(max_epochs: Any, w: np.ndarray, domains: list[str], train_tokens: dict[str, int], total: int) -> None:
    """Refuse a mixture that would repeat some domain more than trainer.max_repeat_epochs times (static estimate)."""
    if max_epochs is None:
        return
    if not isinstance(max_epochs, (int, float)) or max_epochs <= 0:
        raise ConfigError("trainer.max_repeat_epochs", f"must be a positive number or null, got {max_epochs!r}")
    for d, x in zip(domains, w):
        ep = x * total / train_tokens[d]
        if ep > max_epochs:
            raise ConfigError(
                "trainer.max_repeat_epochs",
                f"the mixture gives domain {d!r} weight {x:.3f}, i.e. {ep:.1f} epochs over its {train_tokens[d]:,} tokens "
                f"(limit {max_epochs}); lower its weight or raise the limit",
            )
