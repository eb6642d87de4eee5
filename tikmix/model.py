"""Model builder: Llama architecture (RoPE, SwiGLU, RMSNorm) from config, random initialisation."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tikmix.config import ModelConfig, typed


def model_section(cfg: ModelConfig | Mapping[str, Any]) -> ModelConfig:
    """A model section as its dataclass (a plain dict, e.g. a reference run's config.yaml section, merged over
    the schema's defaults and checked)."""
    return typed(ModelConfig, cfg, "model")


def llama_config(m: ModelConfig, vocab_size: int, pad_id: int | None = None, eos_id: int | None = None) -> LlamaConfig:
    """The Transformers config of a model section (its shape checked by ModelConfig itself)."""
    v = m.vocab_size or vocab_size
    return LlamaConfig(
        vocab_size=int(v),
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads,
        num_key_value_heads=m.num_kv_heads,
        max_position_embeddings=m.max_position_embeddings,
        rope_theta=float(m.rope_theta),
        initializer_range=float(m.init_std),
        tie_word_embeddings=bool(m.tie_embeddings),
        rms_norm_eps=1e-5,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=eos_id,
        use_cache=False,
    )


def build_model(
    m: ModelConfig, vocab_size: int, seed: int, pad_id: int | None = None, eos_id: int | None = None
) -> LlamaForCausalLM:
    conf = llama_config(m, vocab_size, pad_id, eos_id)
    conf._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(conf)
    return model


def param_counts(model: torch.nn.Module) -> dict[str, int]:
    """Total parameters (tied weights once) and non-embedding parameters (no token embedding, no LM head)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    embed = emb.numel() + (0 if head is emb else head.numel())
    return {"total": total, "non_embedding": total - embed}


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token: 6·N (embedding and LM head included) + attention.

    Attention scores and weighted sum add 12·L·d·T per token (PaLM's appendix B formula); forward only is a
    third of the total.
    """
    c = model.config
    n = param_counts(model)["total"]
    return 6.0 * n + 12.0 * c.num_hidden_layers * c.hidden_size * seq_len
