"""The tokenizer: a byte-level BPE trained on the train split (offline), or a pretrained one by name.

The trained tokenizer has one special token, ``<|endoftext|>``, used as eos (the document separator in the
shards), bos, unk and pad: lm-eval needs a pad token, and a tokenizer without one would get ``<|pad|>``
added and outgrow the model's embedding table.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tikmix.data.sources import data_config, list_domains
from tikmix.errors import ConfigError, DataError

EOT = "<|endoftext|>"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _training_sample(
    docs: Iterable[tuple[str, str]], per_domain: int, known: list[str] | None
) -> Iterator[str]:
    """Up to `per_domain` texts of each domain, in stream order.

    Stops as soon as every known domain has its quota. When the domains are not known in advance (jsonl and
    hf without an include list) it stops once every domain seen so far is full and no new domain has shown
    up for ``max(10_000, 10 * per_domain)`` documents, so a large corpus is not read to its end.
    """
    counts: Counter[str] = Counter()
    seen: set[str] = set()
    full: set[str] = set()
    patience = max(10_000, 10 * per_domain)
    since_new = 0
    for domain, text in docs:
        if domain in seen:
            since_new += 1
        else:
            seen.add(domain)
            since_new = 0
        if counts[domain] < per_domain:
            counts[domain] += 1
            if counts[domain] == per_domain:
                full.add(domain)
            yield text
        if known is not None:
            if known and full >= set(known):
                return
        elif len(full) == len(seen) and since_new >= patience:
            return


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE of at most `vocab_size` tokens (fewer when the text has too few distinct merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOT, bos_token=EOT, unk_token=EOT, pad_token=EOT
    )


def load_pretrained(name: str) -> PreTrainedTokenizerFast:
    """A pretrained fast tokenizer by hub name or local path; pad set to eos when it has none."""
    try:
        tok = AutoTokenizer.from_pretrained(name, local_files_only=_offline())
    except Exception as e:  # noqa: BLE001 - hub, network and file errors all mean "cannot get it"
        raise ConfigError(
            "data.tokenizer.name",
            f"cannot load tokenizer {name!r} ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
            "it needs Hugging Face hub access or a local folder with tokenizer.json",
        ) from e
    if not getattr(tok, "is_fast", False):
        raise ConfigError("data.tokenizer.name", f"{name!r} is not a fast (tokenizers-backed) tokenizer")
    if tok.eos_token_id is None:
        raise ConfigError("data.tokenizer.name", f"{name!r} has no eos token; the shards need one to separate documents")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def build_tokenizer(
    cfg: Mapping[str, Any], docs_iter_factory: Callable[[], Iterable[tuple[str, str]]]
) -> PreTrainedTokenizerFast:
    """The tokenizer the data config asks for.

    ``data.tokenizer.name`` set: that pretrained tokenizer. Null: a byte-level BPE of
    ``data.tokenizer.vocab_size`` trained on up to ``train_docs_per_domain`` documents of each domain from
    ``docs_iter_factory()``, which yields ``(domain, text)`` of the train split. Deterministic: the same
    documents in the same order give the same tokenizer.
    """
    c = data_config(cfg)
    tk = c["tokenizer"]
    if tk["name"] is not None:
        return load_pretrained(tk["name"])
    sample_size = 0

    def sample() -> Iterator[str]:
        nonlocal sample_size
        for text in _training_sample(docs_iter_factory(), tk["train_docs_per_domain"], list_domains(c)):
            sample_size += 1
            yield text

    tok = train_bpe(sample(), tk["vocab_size"])
    if sample_size == 0:
        raise DataError(f"no train documents to train the tokenizer on (source={c['source']})")
    return tok


def save_tokenizer(tok: PreTrainedTokenizerFast, directory: str | os.PathLike[str]) -> None:
    """Save in Hugging Face format (``tokenizer.json`` + configs), loadable by ``AutoTokenizer``."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(directory))


def load_tokenizer(directory: str | os.PathLike[str]) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved by :func:`save_tokenizer`, from local files only."""
    try:
        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot load the tokenizer in {directory} ({type(e).__name__}: {e})") from e
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok
