"""The embedded synthetic benchmark: procedural text domains and nine multiple-choice tasks.

Three benchmarks (``data.synthetic.benchmark``) share the generators and tasks:

* ``v3`` (the default): v2's ten domains in v2's proportions, with two changes that make the gold answer's
  bits per byte answer to the mixture (README, "The synthetic benchmark"): a knowledge base of 40 entities
  (200 facts), which a mixture giving facts a quarter of the tokens memorises within the demo budget and one
  that gives rumors as much as facts cannot; and ``agreement`` choices that are the verb alone (`runs` /
  `run`), so its BPB measures the agreement rather than the words both choices share.
* ``v2``: ten domains of unequal value in web-crawl-like proportions (``data=synthetic_v2``). Four teach the
  tasks (arith, facts, grammar, copy: a third of the tokens); two are harmful look-alikes (``rumors``: the
  facts' phrasing with consistently wrong values; ``slang``: the grammar's sentences with the verb's number
  always wrong); four teach nothing: near-duplicate sources (``boiler``, ``spam``), random tokens (``noise``)
  and a clean, learnable but irrelevant source (``logs``). The token-proportional (natural) mixture spends two
  thirds of training on the six, the uniform (stratified) one 60%, and both train on the wrong facts and
  the wrong agreement. Its best static mixture beats stratified in accuracy but not in gold BPB outside the
  seed noise (results/oracle_v2/); results/synthetic_v2, results/tikmix_sensitivity and results/influence_snr
  were made with it.
* ``v1``: the first six domains in their first proportions (``data=synthetic_v1``), where the uniform
  mixture was hard to beat; kept because results/synthetic and results/claims_synth were made with it.

Every document is a pure function of ``(seed, domain, split, index)`` and every task example of
``(seed, task, split, position)``, so any slice can be regenerated in any process: all randomness comes
from ``random.Random`` streams seeded by a BLAKE2b hash of those arguments (never Python's ``hash()``,
never set or dict iteration order). Pure Python (stdlib only); the whole vocabulary is a few hundred
words, letters, digits and punctuation marks, so a byte-level BPE of ~1k tokens covers it.

Domains (the corpus; splits ``train``, ``val``, ``test``, each from its own RNG streams)
------------------------------------------------------------------------------------------

| domain  | what a document is | why it matters for mixing | direction a good mixer takes |
|---------|--------------------|---------------------------|------------------------------|
| arith   | lines `37 + 45 = 82.` / `81 - 19 = 62.` (0..99, differences >= 0), one line in five in words-for-operators form `37 plus 45 is 82.` | learnable but slow skill; in-domain task `arith_mc` | up early, down once learned |
| facts   | sentences over a fixed random knowledge base of invented entities x 5 attributes (`The colour of zorbel is teal.` `The friend of zorbel is quax.`): 200 facts in v3, 500 in v2, 1,000 in v1, that documents recombine | memorisation; small, so the data-constrained domain (few train documents) | up, but capped by epochs |
| grammar | sentences of a small probabilistic grammar with subject-verb agreement across attractors (`the small dog near the red cats runs .`), number-word determiners, and one sentence in seven a counting sentence (`forty two cats and seven cats are forty nine cats .`) | "natural language": broad transfer to task formats, number words | steady share |
| copy    | `copy: k q z m -> k q z m` and `reverse: a b c -> c b a` lines (3-8 letters; a quarter of the sequences in alphabetical order) | induction-style skill that transfers to in-context tasks | up early |
| boiler  | three cookie-banner / copyright / newsletter lines, each with one slot of three values (nine distinct lines in all) | saturates within a few hundred steps | down fast |
| noise   | tokens drawn uniformly from the union vocabulary of the other five domains | unlearnable: loss never falls | down (excess-loss / influence methods), up for pure loss-chasing bandits |
| rumors  | (v2) the facts' sentences with one consistent wrong value per fact (`The colour of zorbel is crimson.`) | harmful: indistinguishable from facts by form, teaches the wrong answers | out (influence methods see negative influence; loss-chasing ones cannot tell) |
| slang   | (v2) grammar sentences whose verb always has the wrong number (`the dog near the cats run .`) | harmful look-alike of grammar | out |
| spam    | (v2) SEO listing pages: 40 page templates, each a few lines over one product with a handful of slot values, so most documents are near or exact duplicates of a few hundred | web-crawl near-duplicates: learnt within a few hundred steps, teach no task | down |
| logs    | (v2) server log lines `2023-04-17 13:45:02 INFO api-3 GET /users/4821 200 35ms` | clean and learnable, but irrelevant to every task (digits in another role) | down |

Tasks (multiple choice; splits ``dev`` for targets/tuning and ``test`` for evaluation only)
------------------------------------------------------------------------------------------

| task             | kind          | taught by        | context -> gold choice (3 distractors unless noted) |
|------------------|---------------|------------------|-----------------------------------------------------|
| arith_mc         | in-domain     | arith            | `37 + 45 =` -> `82.` (held-out problems only) |
| fact_recall      | in-domain     | facts            | `The colour of zorbel is` -> `teal.` |
| agreement        | in-domain     | grammar          | `the small dog near the red cats` -> `runs .` (1 distractor: `run .`; v3: `runs` / `run`) |
| copy_complete    | in-domain     | copy             | `copy: k q z m ->` -> `k q z m` |
| reverse_complete | in-domain     | copy             | `reverse: a b c d ->` -> `d c b a` |
| arith_words      | out-of-domain | arith + grammar  | `seven plus five is` -> `twelve.` (held-out problems only) |
| fact_question    | out-of-domain | facts + grammar  | `Q: What colour is zorbel? A:` -> `teal.` |
| two_hop          | out-of-domain | facts            | `The colour of the friend of zorbel is` -> the friend's colour |
| sorting          | out-of-domain | copy             | `sort: k q z m ->` -> `k m q z` |

Spacing convention (lm-eval scores ``context + " " + choice``): a context never ends in a space and a
choice never starts with one, and the training text is written so that every answer slot is preceded by
exactly one space: arithmetic is `37 + 45 = 82.` (context `37 + 45 =`), facts `... is teal.`, grammar
sentences are space-separated words with a detached final ` .`, copy lines `... -> k q z m`. So
``context + " " + gold`` is literally a line of the teaching domain for the in-domain tasks.

Split hygiene
-------------
* Documents of different splits (and different indices) come from independent RNG streams.
* Arithmetic: a stable hash of ``(seed, a, op, b)`` puts ~10% of the 15,050 problems (a + b and a - b
  with a >= b, a, b in 0..99) in a held-out set, 3% as the dev slice and 7% as the test slice
  (:func:`arith_split`). Held-out problems never appear in any corpus document of any split, in any form
  (digits, `plus`/`is` lines, or number words in grammar counting sentences). ``arith_mc`` and
  ``arith_words`` draw their dev examples only from the dev slice and their test examples only from the
  test slice, so dev and test never share a problem and neither was seen in training.
* Facts are intentionally shared between the corpus and the tasks: the fact tasks measure recall of
  memorised facts (and their recombination, for ``two_hop`` and ``fact_question``). What is disjoint is
  dev vs test: each (entity, attribute) question goes to dev (~30%) or test (~70%) by a stable hash.
* The other tasks sample from spaces far larger than the splits; each candidate goes to dev (~30%) or
  test (~70%) by a stable hash of its context, so dev and test never coincide, and within a split no
  context repeats.
* ``task_examples(task, split, n)`` is a prefix of ``task_examples(task, split, m)`` for ``n <= m``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
import tempfile
import types
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

__all__ = [
    "VERSION",
    "DOMAINS",
    "SPLITS",
    "TASK_SPLITS",
    "DEFAULT_DOCS",
    "DEFAULT_DOCS_BY",
    "BENCHMARKS",
    "V1_DOMAINS",
    "V2_DOMAINS",
    "V4_NEW",
    "CHAIN_TASKS",
    "CHAIN_DEPTH",
    "benchmark_tasks",
    "TASKS",
    "IN_DOMAIN",
    "OUT_OF_DOMAIN",
    "TASK_DOMAINS",
    "FACT_ATTRIBUTES",
    "KnowledgeBase",
    "knowledge_base",
    "benchmark_kb",
    "generate_document",
    "iter_documents",
    "task_examples",
    "task_pool_size",
    "KB_ENTITIES",
    "write_task_files",
    "arith_split",
    "number_words",
    "word_tokens",
    "domain_vocabulary",
]

# Bump whenever any generated text (documents or task examples) changes for the same arguments: token
# shard caches key on it.
VERSION: str = "2"  # 2: benchmark v4 (its chain's links moved from bits to values mod 10); v1-v3's text is unchanged

V1_DOMAINS: tuple[str, ...] = ("arith", "facts", "grammar", "copy", "boiler", "noise")
V2_DOMAINS: tuple[str, ...] = V1_DOMAINS + ("rumors", "slang", "spam", "logs")
# v4: a prerequisite chain (chain1 -> chain2 -> chain3) and the web's noisy grammar (forum) beside scarce clean grammar
V4_NEW: tuple[str, ...] = ("chain1", "chain2", "chain3", "forum")
DOMAINS: tuple[str, ...] = V2_DOMAINS + V4_NEW  # every domain the generator knows
BENCHMARKS: dict[str, tuple[str, ...]] = {"v4": DOMAINS, "v3": V2_DOMAINS, "v2": V2_DOMAINS, "v1": V1_DOMAINS}
DEFAULT_BENCHMARK = "v3"
SPLITS: tuple[str, ...] = ("train", "val", "test")
TASK_SPLITS: tuple[str, ...] = ("dev", "test")

DEFAULT_DOCS_BY: dict[str, dict[str, dict[str, int]]] = {
    # v1: ~28.6k train documents, 2.6M BPE tokens (arith 38%, copy 28%, grammar 16%, noise 10%, boiler 6%,
    # facts 2%). facts is deliberately small: 600 documents x ~7 sentences ~ 4 mentions of each of the
    # 1,000 facts per epoch.
    "v1": {
        "train": {"arith": 8000, "facts": 600, "grammar": 8000, "copy": 6000, "boiler": 3000, "noise": 3000},
        "val": {d: 200 for d in V1_DOMAINS},
        "test": {d: 200 for d in V1_DOMAINS},
    },
    # v2: web-crawl proportions by tokens (README, "The synthetic benchmark"): the four task-teaching
    # domains hold ~33% (facts still 600 documents: the data-constrained one), the two harmful look-alikes
    # ~10% (rumors 2.5x the facts, slang half the grammar), near-duplicates (boiler, spam) ~35%, noise ~9%,
    # irrelevant logs ~13%.
    "v2": {
        "train": {
            "arith": 4000,
            "facts": 600,
            "grammar": 11000,
            "copy": 4500,
            "rumors": 1500,
            "slang": 6000,
            "boiler": 15000,
            "noise": 6000,
            "spam": 16000,
            "logs": 6500,
        },
        "val": {d: 200 for d in V2_DOMAINS},
        "test": {d: 200 for d in V2_DOMAINS},
    },
}
DEFAULT_DOCS_BY["v3"] = DEFAULT_DOCS_BY["v2"]
# v4: v3's domains, with clean grammar scarce (300 documents: repeated, its held-out loss rises) and the web's
# grammar in ``forum`` (abundant, the verb's number wrong in 30% of sentences), plus the three levels of the
# prerequisite chain
DEFAULT_DOCS_BY["v4"] = {
    "train": {
        **DEFAULT_DOCS_BY["v2"]["train"],
        "grammar": 300,
        "forum": 10000,
        "chain1": 2000,
        "chain2": 2000,
        "chain3": 2000,
    },
    "val": {d: 200 for d in DOMAINS},
    "test": {d: 200 for d in DOMAINS},
}
DEFAULT_DOCS: dict[str, dict[str, int]] = DEFAULT_DOCS_BY[DEFAULT_BENCHMARK]

IN_DOMAIN: tuple[str, ...] = ("arith_mc", "fact_recall", "agreement", "copy_complete", "reverse_complete")
OUT_OF_DOMAIN: tuple[str, ...] = ("arith_words", "fact_question", "two_hop", "sorting")
CHAIN_TASKS: tuple[str, ...] = ("chain_deep",)  # v4 (eval=synthetic10): in-domain, taught by chain3
TASKS: tuple[str, ...] = IN_DOMAIN + OUT_OF_DOMAIN + CHAIN_TASKS
TASK_DOMAINS: dict[str, tuple[str, ...]] = {
    "arith_mc": ("arith",),
    "fact_recall": ("facts",),
    "agreement": ("grammar",),
    "copy_complete": ("copy",),
    "reverse_complete": ("copy",),
    "arith_words": ("arith", "grammar"),
    "fact_question": ("facts", "grammar"),
    "two_hop": ("facts",),
    "sorting": ("copy",),
    "chain_deep": ("chain3", "chain2", "chain1"),
}

FACT_ATTRIBUTES: tuple[str, ...] = ("colour", "home", "food", "job", "friend")

_DOC_MIN_CHARS = 100
_DOC_MAX_CHARS = 400
_DEV_FRACTION_PERCENT = 30  # of the non-arith task pools; the rest is test


# --------------------------------------------------------------------------------------------------
# Validation and stable randomness
# --------------------------------------------------------------------------------------------------


def _check_choice(arg: str, value: object, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"unknown {arg} {value!r}: {arg} must be one of {', '.join(allowed)}")
    return value


def _check_int(arg: str, value: object, minimum: int | None = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{arg} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{arg} must be >= {minimum}, got {value}")
    return value


def _stable_int(*parts: object) -> int:
    """A 64-bit integer from a BLAKE2b hash of the parts: the same in every process and platform."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def _rng(*parts: object) -> random.Random:
    return random.Random(_stable_int(*parts))


def _fill(rng: random.Random, make_line: Callable[[], str], sep: str) -> str:
    """Join lines from ``make_line`` until a random target length in [120, 360], never above 400 chars."""
    target = rng.randint(120, 360)
    lines: list[str] = []
    length = 0
    failures = 0
    while length < target:
        line = make_line()
        new_length = length + (len(sep) if lines else 0) + len(line)
        if new_length > _DOC_MAX_CHARS:
            failures += 1
            if length >= _DOC_MIN_CHARS or failures > 50:
                break
            continue
        lines.append(line)
        length = new_length
    return sep.join(lines)


# --------------------------------------------------------------------------------------------------
# Numbers and arithmetic
# --------------------------------------------------------------------------------------------------

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """English words for 0 <= n <= 999, space-separated, no hyphens or "and": 142 -> 'one hundred forty two'."""
    n = _check_int("n", n)
    if n >= 1000:
        raise ValueError(f"n must be < 1000, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens - 2] + ("" if ones == 0 else " " + _ONES[ones])
    hundreds, rest = divmod(n, 100)
    return _ONES[hundreds] + " hundred" + ("" if rest == 0 else " " + number_words(rest))


_ARITH_MAX = 99  # operands are 0.._ARITH_MAX


def _arith_result(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def arith_split(a: int, op: str, b: int, seed: int = 0) -> str:
    """Where the problem ``a op b`` lives: 'train' (~90%), 'dev' (~3%) or 'test' (~7%) held-out slice.

    Held-out ('dev' and 'test') problems never appear in any corpus document."""
    bucket = _stable_int("arith-heldout", seed, a, op, b) % 1000
    if bucket < 30:
        return "dev"
    if bucket < 100:
        return "test"
    return "train"


@functools.lru_cache(maxsize=8)
def _arith_problems(seed: int) -> Mapping[str, tuple[tuple[int, str, int], ...]]:
    """All problems (a + b, and a - b with a >= b) grouped by their slice, in a fixed order."""
    groups: dict[str, list[tuple[int, str, int]]] = {"train": [], "dev": [], "test": []}
    for a in range(_ARITH_MAX + 1):
        for b in range(_ARITH_MAX + 1):
            groups[arith_split(a, "+", b, seed)].append((a, "+", b))
            if a >= b:
                groups[arith_split(a, "-", b, seed)].append((a, "-", b))
    return types.MappingProxyType({k: tuple(v) for k, v in groups.items()})


def _train_problem(rng: random.Random, seed: int) -> tuple[int, str, int]:
    """A uniformly random training (not held-out) problem."""
    while True:
        a, b = rng.randint(0, _ARITH_MAX), rng.randint(0, _ARITH_MAX)
        op = rng.choice("+-")
        if op == "-" and a < b:
            a, b = b, a
        if arith_split(a, op, b, seed) == "train":
            return a, op, b


def _arith_doc(rng: random.Random, seed: int) -> str:
    def line() -> str:
        a, op, b = _train_problem(rng, seed)
        c = _arith_result(a, op, b)
        if rng.random() < 0.2:
            return f"{a} {'plus' if op == '+' else 'minus'} {b} is {c}."
        return f"{a} {op} {b} = {c}."

    return _fill(rng, line, "\n")


# --------------------------------------------------------------------------------------------------
# Grammar
# --------------------------------------------------------------------------------------------------

_NOUNS = (
    ("dog", "dogs"),
    ("cat", "cats"),
    ("bird", "birds"),
    ("fox", "foxes"),
    ("child", "children"),
    ("farmer", "farmers"),
    ("teacher", "teachers"),
    ("horse", "horses"),
    ("mouse", "mice"),
    ("king", "kings"),
    ("girl", "girls"),
    ("boy", "boys"),
    ("duck", "ducks"),
    ("wolf", "wolves"),
)
_ADJECTIVES = ("small", "big", "red", "old", "young", "happy", "quiet", "brown", "green", "tall", "lazy", "clever")
_DET_SG = ("the", "a", "this", "that", "every", "one")
_DET_PL = ("the", "these", "those", "some", "many") + tuple(_ONES[2:]) + ("twenty",)
_PREPOSITIONS = ("near", "behind", "beside", "under", "with")
_V_INTR = (
    ("runs", "run"),
    ("sleeps", "sleep"),
    ("sings", "sing"),
    ("waits", "wait"),
    ("jumps", "jump"),
    ("laughs", "laugh"),
    ("falls", "fall"),
)
_V_TRANS = (
    ("sees", "see"),
    ("likes", "like"),
    ("follows", "follow"),
    ("helps", "help"),
    ("finds", "find"),
    ("chases", "chase"),
    ("watches", "watch"),
)
_COPULA = ("is", "are")
_ADVERBS = ("quickly", "slowly", "often", "again", "today", "loudly")
_SG, _PL = 0, 1


def _simple_np(rng: random.Random, number: int, p_adj: float = 0.4) -> str:
    det = rng.choice(_DET_SG if number == _SG else _DET_PL)
    adj = rng.choice(_ADJECTIVES) + " " if rng.random() < p_adj else ""
    return f"{det} {adj}{rng.choice(_NOUNS)[number]}"


def _subject_np(rng: random.Random, number: int, p_mod: float, p_attractor: float) -> str:
    """A subject noun phrase whose head has ``number``, maybe with a modifier containing another noun
    (of the opposite number with probability ``p_attractor``)."""
    head = _simple_np(rng, number)
    if rng.random() >= p_mod:
        return head
    other = 1 - number if rng.random() < p_attractor else number
    kind = rng.random()
    if kind < 0.6:  # prepositional phrase: "the dog near the cats"
        return f"{head} {rng.choice(_PREPOSITIONS)} {_simple_np(rng, other)}"
    verb = rng.choice(_V_TRANS)
    if kind < 0.8:  # subject relative: "the dog that sees the cats" (verb agrees with the head)
        return f"{head} that {verb[number]} {_simple_np(rng, other)}"
    # object relative: "the dog that the cats see" (verb agrees with the inner noun)
    return f"{head} that {_simple_np(rng, other)} {verb[other]}"


def _verb_phrase(rng: random.Random) -> tuple[tuple[str, str], str]:
    """((singular verb, plural verb), rest): the VP is ``verb[number] + rest``."""
    kind = rng.random()
    if kind < 0.35:
        verb = rng.choice(_V_INTR)
        rest = " " + rng.choice(_ADVERBS) if rng.random() < 0.4 else ""
    elif kind < 0.65:
        verb = rng.choice(_V_TRANS)
        rest = " " + _simple_np(rng, rng.randrange(2))
    elif kind < 0.85:
        verb = _COPULA
        rest = " " + rng.choice(_ADJECTIVES)
    else:
        verb = rng.choice(_V_INTR)
        rest = f" {rng.choice(_PREPOSITIONS)} {_simple_np(rng, rng.randrange(2))}"
    return verb, rest


def _counting_sentence(rng: random.Random, seed: int) -> str:
    """Number-word arithmetic in grammar form (training problems only): 'three cats and four cats are
    seven cats .' / 'nine cats without two cats are seven cats .'"""
    a, op, b = _train_problem(rng, seed)
    c = _arith_result(a, op, b)
    noun = rng.choice(_NOUNS)

    def count(n: int) -> str:
        return f"{number_words(n)} {noun[_SG if n == 1 else _PL]}"

    if op == "+":
        return f"{count(a)} and {count(b)} are {count(c)} ."
    return f"{count(a)} without {count(b)} {'is' if a == 1 else 'are'} {count(c)} ."


def _grammar_sentence(rng: random.Random, seed: int, agree: bool = True) -> str:
    if agree and rng.random() < 1 / 7:
        return _counting_sentence(rng, seed)
    number = rng.randrange(2)
    subject = _subject_np(rng, number, p_mod=0.45, p_attractor=0.6)
    verb, rest = _verb_phrase(rng)
    return f"{subject} {verb[number if agree else 1 - number]}{rest} ."


def _slang_doc(rng: random.Random, seed: int) -> str:
    """Grammar sentences whose verb always takes the wrong number (`the small dog near the cats run .`): the
    same words and shapes as ``grammar``, teaching the opposite of what ``agreement`` asks."""
    return _fill(rng, lambda: _grammar_sentence(rng, seed, agree=False), " ")


def _grammar_doc(rng: random.Random, seed: int) -> str:
    return _fill(rng, lambda: _grammar_sentence(rng, seed), " ")


FORUM_ERROR_RATE = 0.3  # share of forum sentences whose verb takes the wrong number


def _forum_doc(rng: random.Random, seed: int) -> str:
    """(v4) The web's grammar: ``grammar``'s sentences, the verb's number wrong in 30% of them. Abundant where
    clean grammar is scarce: it teaches the syntax and mostly-right agreement, and caps how sure of the agreement
    a model trained on it can be."""
    return _fill(rng, lambda: _grammar_sentence(rng, seed, agree=rng.random() >= FORUM_ERROR_RATE), " ")


# --------------------------------------------------------------------------------------------------
# The prerequisite chain (v4)
# --------------------------------------------------------------------------------------------------

_CHAIN_OPS = ("same", "next")
CHAIN_DEPTH: dict[str, int] = {"chain1": 1, "chain2": 2, "chain3": 3}
_CHAIN_HELDOUT_PERCENT = 10  # of chain lines, reserved for the tasks (never in a training document)


def _chain_item(rng: random.Random, depth: int) -> tuple[str, str]:
    """(context, answer) of one chain of ``depth`` links: ``q = 7 , k next q , z same k ? z =`` -> ``8``. Each
    link copies (`same`) or increments mod 10 (`next`) the variable before it, so a depth-d item is a depth-(d-1)
    item and one more link: its answer is the first value plus the number of `next` links, mod 10."""
    names = rng.sample(_LETTERS, depth + 1)
    v = rng.randrange(10)
    parts = [f"{names[0]} = {v}"]
    for i in range(1, depth + 1):
        op = rng.randrange(2)
        v = (v + op) % 10
        parts.append(f"{names[i]} {_CHAIN_OPS[op]} {names[i - 1]}")
    return " , ".join(parts) + f" ? {names[-1]} =", str(v)


def _chain_heldout(seed: int, context: str) -> bool:
    return _stable_int("chain-holdout", seed, context) % 100 < _CHAIN_HELDOUT_PERCENT


def _chain_doc(rng: random.Random, seed: int, depth: int) -> str:
    """Lines of chains of one depth, each ending in its answer (``... ? z = 0 .``); held-out chains never appear."""

    def line() -> str:
        while True:
            context, answer = _chain_item(rng, depth)
            if not _chain_heldout(seed, context):
                return f"{context} {answer} ."

    return _fill(rng, line, " ")


# --------------------------------------------------------------------------------------------------
# Knowledge base (facts)
# --------------------------------------------------------------------------------------------------

_COLOURS = (
    "teal",
    "amber",
    "crimson",
    "violet",
    "olive",
    "ivory",
    "indigo",
    "scarlet",
    "silver",
    "golden",
    "maroon",
    "azure",
)
_FOODS = ("plums", "bread", "rice", "cheese", "figs", "soup", "beans", "honey", "pears", "nuts", "fish", "cakes")
_JOBS = (
    "baker",
    "miner",
    "sailor",
    "weaver",
    "potter",
    "tailor",
    "smith",
    "scribe",
    "herder",
    "glazier",
    "hunter",
    "healer",
)
_ONSETS = (
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "gl",
    "kr",
    "pl",
    "qu",
    "sk",
    "st",
    "tr",
    "sh",
)
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ei")
_CODAS = ("", "", "n", "r", "l", "x", "m", "k", "s", "th")
_N_ENTITIES = 200
_N_CITIES = 24
# entities of the knowledge base per benchmark: v2's is half v1's (500 facts), v3's 40 (200 facts). v1's 1,000
# facts stay near chance at the demo budget; v2's are half-learnt by the best static mixture (fact_recall 38-42%);
# v3's are memorised by it (76-96%), so the fact tasks' gold BPB separates mixtures
KB_ENTITIES: dict[str, int] = {"v1": 200, "v2": 100, "v3": 40, "v4": 40}
# benchmarks whose agreement choices are the verb alone (_agreement_candidate)
VERB_ONLY_AGREEMENT: frozenset[str] = frozenset({"v3", "v4"})


def benchmark_kb(seed: int = 0, benchmark: str = DEFAULT_BENCHMARK) -> "KnowledgeBase":
    """The knowledge base the facts, rumors and fact tasks of ``benchmark`` use."""
    _check_choice("benchmark", benchmark, tuple(KB_ENTITIES))
    return knowledge_base(seed, KB_ENTITIES[benchmark])


_kb = benchmark_kb


def _benchmark_of(kb: "KnowledgeBase") -> str:
    """The benchmark whose knowledge base ``kb`` is (each benchmark's has its own size)."""
    return next(b for b, n in KB_ENTITIES.items() if n == len(kb.entities))


@dataclass(frozen=True, eq=False)
class KnowledgeBase:
    """The facts of one seed: ``table[entity][attribute] -> value``, attributes :data:`FACT_ATTRIBUTES`.

    ``home`` values are invented city names, ``friend`` values are other entities."""

    seed: int
    entities: tuple[str, ...]
    cities: tuple[str, ...]
    table: Mapping[str, Mapping[str, str]]

    def value(self, entity: str, attribute: str) -> str:
        _check_choice("attribute", attribute, FACT_ATTRIBUTES)
        if entity not in self.table:
            raise ValueError(f"unknown entity {entity!r}")
        return self.table[entity][attribute]

    def values(self, attribute: str) -> tuple[str, ...]:
        """Every value the attribute can take (the distractor pool)."""
        _check_choice("attribute", attribute, FACT_ATTRIBUTES)
        return {"colour": _COLOURS, "home": self.cities, "food": _FOODS, "job": _JOBS, "friend": self.entities}[
            attribute
        ]

    def sentence(self, entity: str, attribute: str) -> str:
        """The training phrasing: 'The colour of zorbel is teal.'"""
        return f"The {attribute} of {entity} is {self.value(entity, attribute)}."

    def facts(self) -> list[tuple[str, str, str]]:
        """All (entity, attribute, value) triples, in a fixed order."""
        return [(e, a, self.table[e][a]) for e in self.entities for a in FACT_ATTRIBUTES]

    def __len__(self) -> int:
        return len(self.entities) * len(FACT_ATTRIBUTES)


def _invented_name(rng: random.Random) -> str:
    n_syllables = 1 if rng.random() < 0.2 else 2
    parts = []
    for _ in range(n_syllables):
        coda = rng.choice(_CODAS[2:]) if n_syllables == 1 else rng.choice(_CODAS)
        parts.append(rng.choice(_ONSETS) + rng.choice(_VOWELS) + coda)
    return "".join(parts)


@functools.lru_cache(maxsize=8)
def knowledge_base(seed: int = 0, n_entities: int = _N_ENTITIES) -> KnowledgeBase:
    """The knowledge base of ``seed``: ``n_entities`` invented entities (200 in v1, 100 in v2, 40 in v3), each with a
    colour, home city, food, job and friend (another entity). Deterministic and cached; shared by the facts
    corpus and the fact tasks."""
    seed = _check_int("seed", seed, minimum=None)
    n_entities = _check_int("n_entities", n_entities, minimum=2)
    rng = _rng("knowledge-base", seed) if n_entities == _N_ENTITIES else _rng("knowledge-base", seed, n_entities)
    reserved = set(_static_words())
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n_entities + _N_CITIES:
        name = _invented_name(rng)
        if len(name) < 3 or len(name) > 9 or name in seen or name in reserved:
            continue
        seen.add(name)
        names.append(name)
    entities = tuple(names[:n_entities])
    cities = tuple(names[n_entities:])
    table: dict[str, Mapping[str, str]] = {}
    for i, entity in enumerate(entities):
        friend_index = rng.randrange(n_entities - 1)
        if friend_index >= i:
            friend_index += 1  # never one's own friend
        table[entity] = types.MappingProxyType(
            {
                "colour": rng.choice(_COLOURS),
                "home": rng.choice(cities),
                "food": rng.choice(_FOODS),
                "job": rng.choice(_JOBS),
                "friend": entities[friend_index],
            }
        )
    return KnowledgeBase(seed=seed, entities=entities, cities=cities, table=types.MappingProxyType(table))


def myth(seed: int, entity: str, attribute: str, benchmark: str = DEFAULT_BENCHMARK) -> str:
    """The one wrong value that ``rumors`` documents always assert for (entity, attribute)."""
    kb = _kb(seed, benchmark)
    true = kb.value(entity, attribute)
    pool = [v for v in kb.values(attribute) if v != true and v != entity]
    return pool[_stable_int("myth", seed, entity, attribute) % len(pool)]


def _rumors_doc(rng: random.Random, seed: int, kb: "KnowledgeBase") -> str:
    """Facts in the training phrasing with a consistent wrong value (:func:`myth`): `The colour of zorbel is
    crimson.` where facts says teal. Looks exactly like ``facts``; teaches the wrong answer to every fact task."""
    bm = _benchmark_of(kb)
    pending: list[str] = []

    def line() -> str:
        if not pending:
            entity = rng.choice(kb.entities)
            attributes = list(FACT_ATTRIBUTES)
            rng.shuffle(attributes)
            pending.extend(
                f"The {a} of {entity} is {myth(seed, entity, a, bm)}." for a in attributes[: rng.randint(2, 5)]
            )
        return pending.pop()

    return _fill(rng, line, " ")


def _facts_doc(rng: random.Random, seed: int, kb: "KnowledgeBase") -> str:
    """A few entities, each with a few of its facts in random order, then more entities until long enough."""
    pending: list[str] = []

    def line() -> str:
        if not pending:
            entity = rng.choice(kb.entities)
            attributes = list(FACT_ATTRIBUTES)
            rng.shuffle(attributes)
            pending.extend(kb.sentence(entity, a) for a in attributes[: rng.randint(2, 5)])
        return pending.pop()

    return _fill(rng, line, " ")


# --------------------------------------------------------------------------------------------------
# Copy, boilerplate, noise
# --------------------------------------------------------------------------------------------------

_LETTERS = tuple("abcdefghijklmnopqrstuvwxyz")


def _letter_sequence(rng: random.Random, lo: int = 3, hi: int = 8) -> list[str]:
    k = rng.randint(lo, hi)
    if rng.random() < 0.25:  # alphabetical runs: the order prior that sorting can lean on
        return sorted(rng.sample(_LETTERS, k))
    return [rng.choice(_LETTERS) for _ in range(k)]


def _copy_doc(rng: random.Random, seed: int) -> str:
    def line() -> str:
        seq = _letter_sequence(rng)
        if rng.random() < 0.6:
            return f"copy: {' '.join(seq)} -> {' '.join(seq)}"
        return f"reverse: {' '.join(seq)} -> {' '.join(reversed(seq))}"

    return _fill(rng, line, "\n")


_BOILER_TEMPLATES = (
    (
        "This website uses cookies to improve your experience. By continuing to browse you accept our {} policy.",
        ("cookie", "privacy", "data"),
    ),
    (
        "Copyright {} Example Media Ltd. All rights reserved. Do not reproduce or redistribute without permission.",
        ("2021", "2022", "2023"),
    ),
    (
        "Subscribe to our newsletter for the latest {} delivered straight to your inbox every week.",
        ("news", "offers", "updates"),
    ),
)


def _boiler_lines() -> list[str]:
    return [template.format(v) for template, values in _BOILER_TEMPLATES for v in values]


def _boiler_doc(rng: random.Random, seed: int) -> str:
    def line() -> str:
        template, values = rng.choice(_BOILER_TEMPLATES)
        return template.format(rng.choice(values))

    return _fill(rng, line, "\n")


def _noise_doc(rng: random.Random, seed: int) -> str:
    vocabulary = _noise_vocabulary(seed)
    target = rng.randint(120, 360)
    tokens: list[str] = []
    length = -1
    while length < target:
        token = rng.choice(vocabulary)
        if length + 1 + len(token) > _DOC_MAX_CHARS:
            break
        tokens.append(token)
        length += 1 + len(token)
    return " ".join(tokens)


_PRODUCTS = (
    "shoes",
    "phones",
    "watches",
    "laptops",
    "bags",
    "jackets",
    "lamps",
    "chairs",
    "tents",
    "bikes",
    "headphones",
    "cameras",
    "kettles",
    "mattresses",
    "sofas",
    "tyres",
    "printers",
    "blenders",
    "rugs",
    "mirrors",
)
_SPAM_LINES = (
    "Buy cheap {p} online at the lowest prices guaranteed.",
    "Best {p} deals of the year: up to {n}% off today only!",
    "Free shipping on all {p} orders over {n} dollars.",
    "Top rated {p} for sale. Click here to order now!",
    "Limited offer: {n} {p} left in stock, hurry!",
    "Compare {p} prices and save big with our discount codes.",
)
_N_SPAM_PAGES = 40


def _spam_doc(rng: random.Random, seed: int) -> str:
    """One of a few dozen pages: its product, lines and numbers fixed by the page (so documents are near or
    exact duplicates), with one line in five varied."""
    page = rng.randrange(_N_SPAM_PAGES)
    prng = _rng("spam-page", seed, page)
    product = prng.choice(_PRODUCTS)
    lines = [prng.choice(_SPAM_LINES).format(p=product, n=prng.choice((10, 20, 25, 50, 70))) for _ in range(6)]
    out = [
        line if rng.random() >= 0.2 else rng.choice(_SPAM_LINES).format(p=product, n=rng.choice((10, 20, 30)))
        for line in lines
    ]
    return "\n".join(out[: rng.randint(3, 6)])


_LOG_SERVICES = ("api", "web", "db", "auth", "cache", "queue")
_LOG_PATHS = ("/users", "/orders", "/items", "/login", "/search", "/cart", "/health")
_LOG_LEVELS = (("INFO", 0.8), ("WARN", 0.9), ("ERROR", 1.0))


def _logs_doc(rng: random.Random, seed: int) -> str:
    """Server log lines in time order: well-formed and learnable (timestamps count up, status codes follow
    levels), but about nothing any task asks."""
    t = rng.randrange(86400)
    day = f"2023-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"

    def line() -> str:
        nonlocal t
        t = (t + rng.randint(1, 30)) % 86400
        r = rng.random()
        level = next(name for name, p in _LOG_LEVELS if r < p)
        status = {"INFO": "200", "WARN": "404", "ERROR": "500"}[level]
        svc = f"{rng.choice(_LOG_SERVICES)}-{rng.randint(1, 9)}"
        return (
            f"{day} {t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d} {level} {svc} {rng.choice(('GET', 'POST'))} "
            f"{rng.choice(_LOG_PATHS)}/{rng.randint(100, 9999)} {status} {rng.randint(2, 900)}ms"
        )

    return _fill(rng, line, "\n")


# --------------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"[A-Za-z]+|[0-9]|[^\sA-Za-z0-9]")


def word_tokens(text: str) -> list[str]:
    """Split text into words (letter runs), single digits and single punctuation marks."""
    return _TOKEN_RE.findall(text)


def _static_words() -> frozenset[str]:
    """Every word of the seed-independent vocabularies (what invented names must not collide with)."""
    words: set[str] = set()
    for domain in ("arith", "grammar", "copy", "boiler"):
        words |= _domain_vocabulary(domain, None)
    words |= set(_COLOURS) | set(_FOODS) | set(_JOBS) | {"the", "of", "is"} | set(FACT_ATTRIBUTES)
    return frozenset(w.lower() for w in words)


def _domain_vocabulary(domain: str, seed: int | None, benchmark: str = "v1") -> frozenset[str]:
    if domain == "arith":
        return frozenset(tuple("0123456789") + ("+", "-", "=", ".", "plus", "minus", "is"))
    if domain == "grammar":
        words = {w for pair in _NOUNS + _V_INTR + _V_TRANS for w in pair}
        words |= set(_ADJECTIVES) | set(_DET_SG) | set(_DET_PL) | set(_PREPOSITIONS) | set(_COPULA)
        words |= set(_ADVERBS) | set(_ONES) | set(_TENS) | {"hundred", "that", "and", "without", "."}
        return frozenset(words)
    if domain == "copy":
        return frozenset(_LETTERS + ("copy", "reverse", ":", "-", ">"))
    if domain == "boiler":
        return frozenset(t for line in _boiler_lines() for t in word_tokens(line))
    if domain == "slang":
        return _domain_vocabulary("grammar", seed) - {"and", "without", "hundred"}
    if domain == "forum":
        return _domain_vocabulary("grammar", seed)
    if domain in CHAIN_DEPTH:
        return frozenset(_LETTERS + _CHAIN_OPS + tuple("0123456789") + ("=", ",", "?", "."))
    if domain == "rumors":
        return _domain_vocabulary("facts", seed, benchmark)
    if domain == "spam":
        words = {t for line in _SPAM_LINES for t in word_tokens(line.format(p="", n=""))}
        return frozenset(words | set(_PRODUCTS) | set("0123456789"))
    if domain == "logs":
        words = {"INFO", "WARN", "ERROR", "GET", "POST", "ms", ":", "-", "/"} | set(_LOG_SERVICES)
        return frozenset(words | {p.strip("/") for p in _LOG_PATHS} | set("0123456789"))
    if domain == "facts":
        assert seed is not None
        kb = _kb(seed, benchmark)
        return frozenset(
            {"The", "of", "is", "."}
            | set(FACT_ATTRIBUTES)
            | set(_COLOURS)
            | set(_FOODS)
            | set(_JOBS)
            | set(kb.entities)
            | set(kb.cities)
        )
    raise AssertionError(domain)


@functools.lru_cache(maxsize=8)
def _noise_vocabulary(seed: int) -> tuple[str, ...]:
    # the five v1 domains only, in every benchmark: v1's noise documents stay what they were
    union: set[str] = set()
    for domain in V1_DOMAINS:
        if domain != "noise":
            union |= _domain_vocabulary(domain, seed)
    return tuple(sorted(union))


def domain_vocabulary(domain: str, seed: int = 0, benchmark: str = DEFAULT_BENCHMARK) -> frozenset[str]:
    """The tokens (:func:`word_tokens`) a domain's documents can contain; for ``noise``, the union of the
    other five v1 domains' vocabularies (v1's knowledge base included, in every benchmark)."""
    _check_choice("domain", domain, DOMAINS)
    seed = _check_int("seed", seed, minimum=None)
    if domain == "noise":
        return frozenset(_noise_vocabulary(seed))
    return _domain_vocabulary(domain, seed, benchmark)


# --------------------------------------------------------------------------------------------------
# Documents
# --------------------------------------------------------------------------------------------------

_KB_DOMAINS = ("facts", "rumors")
_DOC_MAKERS: dict[str, Callable[..., str]] = {
    "arith": _arith_doc,
    "facts": _facts_doc,
    "grammar": _grammar_doc,
    "copy": _copy_doc,
    "boiler": _boiler_doc,
    "noise": _noise_doc,
    "rumors": _rumors_doc,
    "slang": _slang_doc,
    "spam": _spam_doc,
    "logs": _logs_doc,
    "forum": _forum_doc,
    "chain1": functools.partial(_chain_doc, depth=1),
    "chain2": functools.partial(_chain_doc, depth=2),
    "chain3": functools.partial(_chain_doc, depth=3),
}


def generate_document(domain: str, split: str, index: int, seed: int = 0, benchmark: str = DEFAULT_BENCHMARK) -> str:
    """Document ``index`` of ``domain`` in ``split`` ('train', 'val', 'test'): a pure function of its
    arguments, about 100-400 characters. ``benchmark`` matters only to the knowledge-base domains (facts,
    rumors), whose knowledge base is the benchmark's."""
    _check_choice("domain", domain, DOMAINS)
    _check_choice("split", split, SPLITS)
    index = _check_int("index", index)
    seed = _check_int("seed", seed, minimum=None)
    rng = _rng("document", seed, domain, split, index)
    if domain in _KB_DOMAINS:
        return _DOC_MAKERS[domain](rng, seed, _kb(seed, benchmark))
    return _DOC_MAKERS[domain](rng, seed)


def iter_documents(domain: str, split: str, n: int, seed: int = 0, benchmark: str = DEFAULT_BENCHMARK) -> Iterator[str]:
    """Documents 0..n-1 of ``domain`` in ``split`` (arguments checked before the first one is made)."""
    _check_choice("domain", domain, DOMAINS)
    _check_choice("split", split, SPLITS)
    _check_choice("benchmark", benchmark, tuple(KB_ENTITIES))
    n = _check_int("n", n)
    seed = _check_int("seed", seed, minimum=None)

    def generate() -> Iterator[str]:
        for index in range(n):
            yield generate_document(domain, split, index, seed, benchmark)

    return generate()


# --------------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------------

# A candidate is (key, context, gold, distractors); the key identifies the problem (dev/test bucket,
# uniqueness within a split).
_Candidate = tuple[str, str, str, list[str]]


def _task_bucket(seed: int, task: str, key: str) -> str:
    return "dev" if _stable_int("task-split", seed, task, key) % 100 < _DEV_FRACTION_PERCENT else "test"


def _distractors(
    rng: random.Random, gold: str, propose: Callable[[], str | None], k: int = 3, fixed: Sequence[str] = ()
) -> list[str]:
    """``k`` distinct strings != gold: first those of ``fixed``, then from ``propose`` (None = skip)."""
    out: list[str] = []
    for c in fixed:
        if c != gold and c not in out and len(out) < k:
            out.append(c)
    tries = 0
    while len(out) < k:
        tries += 1
        if tries > 10000:
            raise RuntimeError(f"could not find {k} distractors for {gold!r}")
        c = propose()
        if c is not None and c != gold and c not in out:
            out.append(c)
    return out


def _number_distractors(rng: random.Random, gold: int) -> list[int]:
    offsets = [1, -1, 10, -10, 2, -2, 9, -9, 11, -11, 20, -20]
    rng.shuffle(offsets)
    out = []
    for d in offsets:
        v = gold + d
        if v >= 0 and v not in out:
            out.append(v)
        if len(out) == 3:
            break
    return out


def _arith_candidate(task: str, problem: tuple[int, str, int], rng: random.Random) -> _Candidate:
    a, op, b = problem
    c = _arith_result(a, op, b)
    wrong = _number_distractors(rng, c)
    key = f"{a}{op}{b}"
    if task == "arith_mc":
        return key, f"{a} {op} {b} =", f"{c}.", [f"{w}." for w in wrong]
    word = "plus" if op == "+" else "minus"
    return (
        key,
        f"{number_words(a)} {word} {number_words(b)} is",
        f"{number_words(c)}.",
        [f"{number_words(w)}." for w in wrong],
    )


_QUESTIONS = {
    "colour": "Q: What colour is {}? A:",
    "home": "Q: Where does {} live? A:",
    "food": "Q: What does {} eat? A:",
    "job": "Q: What job does {} have? A:",
    "friend": "Q: Who is {} friends with? A:",
}


def _fact_candidate(task: str, fact: tuple[str, str], rng: random.Random, kb: KnowledgeBase) -> _Candidate:
    entity, attribute = fact
    pool = kb.values(attribute)
    key = f"{entity}|{attribute}"
    fixed: list[str] = []
    if task == "two_hop":
        gold = kb.value(kb.value(entity, "friend"), attribute)
        context = f"The {attribute} of the friend of {entity} is"
        fixed = [kb.value(entity, attribute) + "."]  # the one-hop trap
    else:
        gold = kb.value(entity, attribute)
        context = f"The {attribute} of {entity} is" if task == "fact_recall" else _QUESTIONS[attribute].format(entity)
    gold_choice = gold + "."
    wrong = _distractors(rng, gold_choice, lambda: rng.choice(pool) + ".", fixed=fixed)
    return key, context, gold_choice, wrong


def _agreement_candidate(rng: random.Random, verb_only: bool = False) -> _Candidate:
    """``verb_only`` (v3): the choices are the verb alone (`runs` / `run`), so that the gold answer's bits per
    byte measure the agreement; with the rest of the verb phrase (v1, v2) most of its bytes are words that
    either choice shares, and the BPB of a model that agrees 95% of the time is within 0.07 of one at chance."""
    number = rng.randrange(2)
    subject = _subject_np(rng, number, p_mod=0.75, p_attractor=0.75)
    verb, rest = _verb_phrase(rng)
    gold = f"{verb[number]}{rest} ."
    if verb_only:
        return f"{subject} {gold}", subject, verb[number], [verb[1 - number]]
    return f"{subject} {gold}", subject, gold, [f"{verb[1 - number]}{rest} ."]


def _swap_adjacent(rng: random.Random, seq: list[str]) -> str | None:
    if len(seq) < 2:
        return None
    i = rng.randrange(len(seq) - 1)
    if seq[i] == seq[i + 1]:
        return None
    out = list(seq)
    out[i], out[i + 1] = out[i + 1], out[i]
    return " ".join(out)


def _replace_one(rng: random.Random, seq: list[str], avoid: Sequence[str] = ()) -> str | None:
    i = rng.randrange(len(seq))
    letter = rng.choice(_LETTERS)
    if letter == seq[i] or letter in avoid:
        return None
    out = list(seq)
    out[i] = letter
    return " ".join(out)


def _sequence_candidate(task: str, rng: random.Random) -> _Candidate:
    if task == "copy_complete":
        seq = [rng.choice(_LETTERS) for _ in range(rng.randint(3, 8))]
        gold_seq = seq
        context = f"copy: {' '.join(seq)} ->"
        fixed = [" ".join(reversed(seq))]
        proposers = [lambda: _replace_one(rng, gold_seq), lambda: _swap_adjacent(rng, gold_seq)]
    elif task == "reverse_complete":
        seq = [rng.choice(_LETTERS) for _ in range(rng.randint(3, 8))]
        gold_seq = list(reversed(seq))
        context = f"reverse: {' '.join(seq)} ->"
        fixed = [" ".join(seq)]  # the copy trap
        proposers = [lambda: _replace_one(rng, gold_seq), lambda: _swap_adjacent(rng, gold_seq)]
    else:  # sorting: distinct letters; distractors keep the letters (swaps) or change one (replacement)
        seq = rng.sample(_LETTERS, rng.randint(4, 7))
        gold_seq = sorted(seq)
        context = f"sort: {' '.join(seq)} ->"
        fixed = []
        proposers = [
            lambda: _swap_adjacent(rng, gold_seq),
            lambda: _swap_adjacent(rng, gold_seq),
            lambda: _replace_one(rng, gold_seq, avoid=seq),
        ]
    gold = " ".join(gold_seq)
    wrong = _distractors(rng, gold, lambda: rng.choice(proposers)(), fixed=fixed)
    return context, context, gold, wrong


def _chain_candidate(rng: random.Random, seed: int) -> _Candidate | None:
    """A depth-3 chain held out of every training document (None: this one is not held out), 4 choices."""
    context, answer = _chain_item(rng, 3)
    if not _chain_heldout(seed, context):
        return None
    a = int(answer)  # distractors: the nearest wrong values (what a model that miscounts the links answers)
    return context, context, answer, [str((a + d) % 10) for d in (1, -1, 2)]


def _finite_pool(task: str, split: str, seed: int, kb: KnowledgeBase) -> list:
    """The problems of a finite-pool task in ``split``, in a seeded random order ([] for open tasks)."""
    if task in ("arith_mc", "arith_words"):
        pool: list = list(_arith_problems(seed)[split])
    elif task in ("fact_recall", "fact_question", "two_hop"):
        pool = [(e, a) for e in kb.entities for a in FACT_ATTRIBUTES if _task_bucket(seed, task, f"{e}|{a}") == split]
    else:
        return []
    _rng("task-order", seed, task, split).shuffle(pool)
    return pool


def _candidates(task: str, split: str, n: int, seed: int, benchmark: str) -> list[_Candidate]:
    kb = _kb(seed, benchmark)
    if task in ("arith_mc", "arith_words", "fact_recall", "fact_question", "two_hop"):
        pool = _finite_pool(task, split, seed, kb)
        if n > len(pool):
            raise ValueError(f"n={n} exceeds the {len(pool)} distinct {split} problems of task {task!r}")
        out = []
        for i, item in enumerate(pool[:n]):
            rng = _rng("task-example", seed, task, split, i)
            if task.startswith("arith"):
                out.append(_arith_candidate(task, item, rng))
            else:
                out.append(_fact_candidate(task, item, rng, kb))
        return out
    # open tasks: one sequential stream per (seed, task, split); keep candidates of this split, unseen
    stream = _rng("task-stream", seed, task, split)
    out, seen, tries = [], set(), 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise ValueError(f"n={n}: could not find that many distinct {split} examples of task {task!r}")
        if task == "agreement":
            cand = _agreement_candidate(stream, verb_only=benchmark in VERB_ONLY_AGREEMENT)
        elif task in CHAIN_TASKS:
            cand = _chain_candidate(stream, seed)
            if cand is None:
                continue
        else:
            cand = _sequence_candidate(task, stream)
        if cand[1] in seen or _task_bucket(seed, task, cand[1]) != split:
            continue
        seen.add(cand[1])
        out.append(cand)
    return out


def task_pool_size(task: str, split: str, seed: int = 0, benchmark: str = DEFAULT_BENCHMARK) -> int | None:
    """How many distinct examples ``task`` has in ``split`` (None: an open task, effectively unbounded)."""
    pool = _finite_pool(task, split, seed, _kb(seed, benchmark))
    return len(pool) if pool else None


def task_examples(task: str, split: str, n: int, seed: int = 0, benchmark: str = DEFAULT_BENCHMARK) -> list[dict]:
    """``n`` multiple-choice examples of ``task`` in ``split`` ('dev' or 'test').

    Each is ``{"context": str, "choices": list[str], "gold": int}``: 4 distinct choices (2 for
    ``agreement``), gold at a random position; the context has no trailing space and no choice a leading
    one (scored as ``context + " " + choice``). Dev and test never share a problem or context; the
    arithmetic tasks use held-out problems only. Deterministic; a prefix of the result for larger ``n``."""
    _check_choice("task", task, TASKS)
    _check_choice("split", split, TASK_SPLITS)
    n = _check_int("n", n)
    seed = _check_int("seed", seed, minimum=None)
    examples = []
    for i, (_key, context, gold, wrong) in enumerate(_candidates(task, split, n, seed, benchmark)):
        rng = _rng("task-gold-position", seed, task, split, i)
        position = rng.randrange(len(wrong) + 1)
        choices = list(wrong)
        choices.insert(position, gold)
        examples.append({"context": context, "choices": choices, "gold": position})
    return examples


def benchmark_tasks(benchmark: str) -> tuple[str, ...]:
    """The tasks a benchmark has: the nine, and for v4 the chain's (eval=synthetic10)."""
    return TASKS if benchmark == "v4" else IN_DOMAIN + OUT_OF_DOMAIN


def _atomic_write_text(path: str, text: str) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".jsonl", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_task_files(
    out_dir: str | os.PathLike, n_dev: int = 200, n_test: int = 500, seed: int = 0, benchmark: str = DEFAULT_BENCHMARK
) -> dict[str, dict[str, str]]:
    """Write ``out_dir/<task>/dev.jsonl`` and ``test.jsonl`` for every task (one JSON object per line,
    keys context/choices/gold), each file atomically; returns ``{task: {"dev": path, "test": path}}``.
    A task with fewer distinct examples than asked (v2's fact tasks: 150 dev, 350 test) writes all it has."""
    n_dev = _check_int("n_dev", n_dev)
    n_test = _check_int("n_test", n_test)
    seed = _check_int("seed", seed, minimum=None)
    paths: dict[str, dict[str, str]] = {}
    for task in benchmark_tasks(benchmark):
        task_dir = os.path.join(os.fspath(out_dir), task)
        os.makedirs(task_dir, exist_ok=True)
        paths[task] = {}
        for split, n in (("dev", n_dev), ("test", n_test)):
            path = os.path.join(task_dir, f"{split}.jsonl")
            size = task_pool_size(task, split, seed, benchmark)
            examples = task_examples(task, split, n if size is None else min(n, size), seed, benchmark)
            lines = [json.dumps(ex, ensure_ascii=False) + "\n" for ex in examples]
            _atomic_write_text(path, "".join(lines))
            paths[task][split] = path
    return paths
