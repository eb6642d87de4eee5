"""The one causal-LM loss every pass uses, and the one autocast policy.

Training steps, validation and target losses, and the mixers' own passes (influence gradients, Aioli's
target losses, DoReMi's reference model) all score next tokens with :func:`causal_lm_loss`, inside
:func:`autocast` of the run's ``trainer.dtype``. Logits are cast to fp32 (an fp64 model keeps fp64) before the
cross-entropy, so a loss does not depend on which pass computed it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from tikmix.errors import ConfigError

IGNORE = -100  # the label of a position that is not scored (Hugging Face convention)
DTYPES = ("auto", "fp32", "bf16")

Batch = Mapping[str, torch.Tensor]
# the extra keys of a margin batch (targets.loss: margin): per row, the batch-local index of its document (a
# document's rows are contiguous) and whether the row's continuation is the gold choice
MARGIN_KEYS = ("doc_index", "is_gold")
Autocast = Callable[[], ContextManager]


# model.hidden_size from which trainer.dtype=auto trains in bf16 autocast on a CPU with bf16 matrix instructions
# (trainer.cpu_bf16_min_hidden; README "Performance" has the measurements behind it)
CPU_BF16_MIN_HIDDEN = 256


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX tiles), by torch's own probes; they are
    private, so a torch without them counts as none."""
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except Exception:  # noqa: BLE001 — a probe that fails says nothing about the CPU: none
            continue
    return False


@dataclass(frozen=True)
class DtypeChoice:
    """What ``trainer.dtype`` resolved to on this device for this model, and why (console and results.json)."""

    setting: str  # auto | fp32 | bf16, as configured
    amp: torch.dtype | None  # the autocast dtype; None = fp32 (no autocast)
    reason: str

    @property
    def name(self) -> str:
        return "bf16" if self.amp is torch.bfloat16 else "fp32"

    def describe(self) -> str:
        what = "bf16 autocast" if self.amp is torch.bfloat16 else "fp32"
        return f"{what} ({self.reason})"

    def as_dict(self) -> dict:
        return {"setting": self.setting, "autocast": self.name, "reason": self.reason}


def resolve_dtype(
    setting: str,
    device: torch.device,
    hidden_size: int | None = None,
    cpu_bf16_min_hidden: int = CPU_BF16_MIN_HIDDEN,
) -> DtypeChoice:
    """``trainer.dtype`` on ``device`` for a model of ``hidden_size``: bf16 autocast when asked; under auto, on a GPU,
    and on a CPU with bf16 matrix instructions (:func:`cpu_has_bf16`) for a model at least ``cpu_bf16_min_hidden``
    wide (narrower ones gain less: their matmuls are small); else fp32. Without ``hidden_size``
    auto keeps fp32 on every CPU."""
    if setting not in DTYPES:
        raise ConfigError("trainer.dtype", f"unknown dtype {setting!r}; allowed: {', '.join(DTYPES)}")
    bf16 = torch.bfloat16
    if setting != "auto":
        return DtypeChoice(setting, bf16 if setting == "bf16" else None, f"trainer.dtype={setting}")
    if device.type == "cuda":
        return DtypeChoice(setting, bf16, "auto: GPU")
    if not cpu_has_bf16():
        return DtypeChoice(setting, None, f"auto: this {device.type} has no bf16 matrix instructions")
    if hidden_size is None:
        return DtypeChoice(setting, None, "auto: model width unknown")
    if int(hidden_size) >= int(cpu_bf16_min_hidden):
        why = f"hidden_size {hidden_size} >= trainer.cpu_bf16_min_hidden {cpu_bf16_min_hidden}"
        return DtypeChoice(setting, bf16, f"auto: CPU with bf16 matrix units, {why}")
    why = f"hidden_size {hidden_size} < trainer.cpu_bf16_min_hidden {cpu_bf16_min_hidden}"
    return DtypeChoice(setting, None, f"auto: CPU with bf16 matrix units, but {why}")


def amp_dtype_for(
    setting: str,
    device: torch.device,
    hidden_size: int | None = None,
    cpu_bf16_min_hidden: int = CPU_BF16_MIN_HIDDEN,
) -> torch.dtype | None:
    """The autocast dtype of ``trainer.dtype`` (:func:`resolve_dtype`); None = fp32."""
    return resolve_dtype(setting, device, hidden_size, cpu_bf16_min_hidden).amp


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> ContextManager:
    """The context every forward pass of a run runs in: autocast to ``amp_dtype`` on ``device``, or none (fp32)."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def causal_lm_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    *,
    autocast: Autocast | None = None,
    reduction: str = "none",
    attention_mask: torch.Tensor | None = None,
    sample_generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy of ``model`` on ``input_ids`` [b, T].

    ``labels`` are unshifted (Hugging Face convention): input position t is scored against ``labels[:, t+1]``,
    and positions labelled -100 are not scored. ``labels`` may be one token longer than the inputs (a training
    window [b, T+1] whose last input's next token is known): then every input position is scored.
    ``reduction="none"``: the per-position losses [b, labels.shape[1] - 1] (0 where not scored); ``"sum"``: their sum.
    With ``sample_generator`` the scored positions' labels are drawn from the model's own predictive
    distribution (the true Fisher that K-FAC estimates).
    """
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
    with autocast() if autocast is not None else contextlib.nullcontext():
        out = model(input_ids=input_ids, use_cache=False, **kwargs)
    logits = out.logits if hasattr(out, "logits") else out[0]
    tgt = labels[:, 1:]
    if logits.shape[1] != tgt.shape[1]:  # no slice when every position is scored: its backward would copy the logits
        logits = logits[:, : tgt.shape[1]]
    logits = logits if logits.dtype == torch.float64 else logits.float()
    flat = logits.reshape(-1, logits.shape[-1])
    if sample_generator is not None:
        tgt = _sampled_labels(flat, tgt, sample_generator)
    loss = F.cross_entropy(flat, tgt.reshape(-1), ignore_index=IGNORE, reduction=reduction)
    return loss.view(tgt.shape) if reduction == "none" else loss


def _sampled_labels(flat_logits: torch.Tensor, tgt: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``tgt`` with each scored position's label drawn from softmax(logits); unscored positions stay -100."""
    with torch.no_grad():
        probs = torch.softmax(flat_logits.detach(), dim=-1)
        sampled = torch.multinomial(probs, 1, generator=gen).squeeze(1)
    scored = (tgt != IGNORE).reshape(-1)
    return torch.where(scored, sampled, torch.full_like(sampled, IGNORE)).reshape(tgt.shape)


def batch_loss_sum(
    model: nn.Module,
    batch: Batch,
    *,
    device: torch.device | None = None,
    autocast: Autocast | None = None,
    sample_generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, int, int]:
    """Summed :func:`causal_lm_loss` of a batch ``{"input_ids", "labels" (default: the inputs), "attention_mask"?}``
    moved to ``device``. Returns (loss sum, scored tokens, input tokens).

    A margin batch (``targets.loss: margin``: it also holds ``doc_index`` and ``is_gold``) is scored by
    :func:`margin_loss_sum` instead, and its "scored" count is its number of documents: every consumer that
    divides by the scored count (mean target loss, mean-target gradient) then gets the mean over documents."""
    dev = device if device is not None else next(model.parameters()).device
    ids = batch["input_ids"].to(dev)
    labels = batch.get("labels")
    labels = ids if labels is None else labels.to(dev)
    mask = batch.get("attention_mask")
    if MARGIN_KEYS[0] in batch:
        if sample_generator is not None:
            raise ValueError("a margin batch has no token labels to sample (K-FAC samples training text only)")
        loss, n_docs = margin_loss_sum(
            model,
            ids,
            labels,
            batch["doc_index"].to(dev),
            batch["is_gold"].to(dev),
            autocast=autocast,
            attention_mask=None if mask is None else mask.to(dev),
        )
        return loss, n_docs, int(ids.numel())
    loss = causal_lm_loss(
        model,
        ids,
        labels,
        autocast=autocast,
        reduction="sum",
        attention_mask=None if mask is None else mask.to(dev),
        sample_generator=sample_generator,
    )
    return loss, int((labels[:, 1:] != IGNORE).sum().item()), int(ids.numel())


def margin_loss_sum(
    model: nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    doc_index: torch.Tensor,
    is_gold: torch.Tensor,
    *,
    autocast: Autocast | None = None,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Σ over documents of −(log p(gold) − max over wrong choices of log p(choice)), and the number of documents.

    Each row [r] is one (context, choice) pair, labelled on the choice's tokens only; its log-probability is the
    sum of those tokens' log-probabilities, as lm-eval's loglikelihood scores a choice (unnormalised: what its
    ``acc`` compares). A document's rows are contiguous, ``doc_index`` [r] numbers them 0..D-1 and ``is_gold``
    [r] marks the gold row (one per document) among at least one wrong one. The max over the wrong choices is
    not smooth (its gradient flows through the best wrong choice only, split evenly on a tie): that is intended,
    since accuracy depends on exactly that comparison.
    """
    per_pos = causal_lm_loss(model, input_ids, labels, autocast=autocast, attention_mask=attention_mask)
    logp = -per_pos.sum(dim=1)  # [r]
    n_docs = int(doc_index.max().item()) + 1 if doc_index.numel() else 0
    gold_mask = is_gold.bool()
    gold = torch.zeros(n_docs, dtype=logp.dtype, device=logp.device).index_add(0, doc_index[gold_mask], logp[gold_mask])
    wrong = torch.full((n_docs,), float("-inf"), dtype=logp.dtype, device=logp.device).scatter_reduce(
        0, doc_index[~gold_mask], logp[~gold_mask], reduce="amax", include_self=True
    )
    n_gold = torch.bincount(doc_index[gold_mask], minlength=n_docs)
    if n_docs and (bool((n_gold != 1).any()) or not bool(torch.isfinite(wrong).all())):
        raise ValueError("a margin batch needs exactly one gold row and at least one wrong row per document")
    return -(gold - wrong).sum(), n_docs
