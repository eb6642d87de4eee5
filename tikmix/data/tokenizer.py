"""The tokenizer: a byte-level BPE trained on the train split (offline), or a pretrained one by name.

The trained tokenizer has one special token, ``<|endoftext|>``, used as eos (the document separator in the
shards), bos, unk and pad: lm-eval needs a pad token, and a tokenizer without one would get ``<|pad|>``
added and outgrow the model's embedding table.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tikmix.config import DataConfig
from tikmix.data.sources import data_config, list_domains
from tikmix.errors import ConfigError, DataError

EOT = "<|endoftext|>"

# A document longer than LONG_DOC_CHARS is tokenised, and trained on, in pieces of at most PIECE_CHARS:
# a tokenizer's memory grows with the text of one call (one 50 MB document peaked at 6.4 GB whole, 0.5 GB in
# pieces: tests/benchmarks/bench_cache.py).
LONG_DOC_CHARS = 1 << 20
PIECE_CHARS = 1 << 16


def pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """``text`` in consecutive pieces of at most ``size`` characters, each cut just before a space that
    starts a word. The byte-level BPE's pre-tokenizer (GPT-2's split) always starts a new pre-token there,
    so the pieces tokenise to exactly the ids of the whole text (tested), and train the same tokenizer. A
    text with no such space in the second half of a piece is cut at ``size`` (mid-word)."""
    a, n = 0, len(text)
    while n - a > size:
        b = _cut(text, a + size // 2, a + size)
        yield text[a:b]
        a = b
    yield text[a:]


def _cut(text: str, lo: int, hi: int) -> int:
    """The last index in (lo, hi) of a space followed by a non-space, else hi."""
    b = text.rfind(" ", lo, hi)
    while b > lo:
        if not text[b + 1].isspace():
            return b
        b = text.rfind(" ", lo, b)
    return hi


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _training_sample(docs: Iterable[tuple[str, str]], per_domain: int, known: list[str] | None) -> Iterator[str]:
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
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, bos_token=EOT, unk_token=EOT, pad_token=EOT)


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
        raise ConfigError(
            "data.tokenizer.name", f"{name!r} has no eos token; the shards need one to separate documents"
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def build_tokenizer(
    cfg: DataConfig | Mapping[str, Any], docs_iter_factory: Callable[[], Iterable[tuple[str, str]]]
) -> PreTrainedTokenizerFast:
    """The tokenizer the data config asks for.

    ``data.tokenizer.name`` set: that pretrained tokenizer. Null: a byte-level BPE of
    ``data.tokenizer.vocab_size`` trained on up to ``train_docs_per_domain`` documents of each domain from
    ``docs_iter_factory()``, which yields ``(domain, text)`` of the train split. Deterministic: the same
    documents in the same order give the same tokenizer.
    """
    c = data_config(cfg)
    tk = c.tokenizer
    if tk.name is not None:
        return load_pretrained(tk.name)
    sample_size = 0

    def sample() -> Iterator[str]:
        nonlocal sample_size
        for text in _training_sample(docs_iter_factory(), tk.train_docs_per_domain, list_domains(c)):
            sample_size += 1
            if len(text) > LONG_DOC_CHARS:  # the same words, so the same merges, in flat memory
                yield from pieces(text, PIECE_CHARS)
            else:
                yield text

    tok = train_bpe(sample(), tk.vocab_size)
    if sample_size == 0:
        raise DataError(f"no train documents to train the tokenizer on (source={c.source})")
    return tok


# transformers 5 records its tokenizers as "TokenizersBackend", a class transformers 4 does not have;
# PreTrainedTokenizerFast is the same tokenizer.json-backed class under the name both versions load.
PORTABLE_CLASS = "PreTrainedTokenizerFast"
# Load-time options transformers 5 writes into tokenizer_config.json; they describe how it was loaded, not the
# tokenizer, and another loader would take them as constructor arguments.
_LOAD_OPTIONS = ("is_local", "local_files_only")


def save_tokenizer(
    tok: PreTrainedTokenizerFast, directory: str | os.PathLike[str], model_max_length: int | None = None
) -> None:
    """Save in Hugging Face format (``tokenizer.json`` + configs), loadable by ``AutoTokenizer`` of transformers
    4 and 5 (a trained BPE is recorded as PreTrainedTokenizerFast). ``model_max_length``: the context of the model
    saved beside it (without it, the limit is left as the tokenizer has it)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(directory))
    path = Path(directory) / "tokenizer_config.json"
    conf = json.loads(path.read_text())
    if conf.get("tokenizer_class") in (None, "TokenizersBackend"):  # a pretrained tokenizer keeps its own class
        conf["tokenizer_class"] = PORTABLE_CLASS
    for key in _LOAD_OPTIONS:
        conf.pop(key, None)
    if model_max_length is not None:
        conf["model_max_length"] = int(model_max_length)
    path.write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")


def load_tokenizer(directory: str | os.PathLike[str]) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved by :func:`save_tokenizer`, from local files only."""
    try:
        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot load the tokenizer in {directory} ({type(e).__name__}: {e})") from e
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok
