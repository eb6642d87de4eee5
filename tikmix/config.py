"""Typed configs: the schema of every config section, and the one place its defaults and checks live.

Each section of a run's config is a dataclass here (a mixer's parameters: a dataclass beside the mixer's class,
e.g. ``baselines/aioli.py``). :func:`tikmix.mixer.register_configs` stores them all in Hydra's ConfigStore
under ``schema/``, and every preset ``conf/<group>/<preset>.yaml`` starts with a defaults list naming its schema
(``/schema/model@model``, ``/schema/mixer/aioli@_here_``, ...). The dataclass holds every default; a preset
sets its name and what differs; the comments beside each field say what it means and why its default is what
it is. ``python train.py --cfg job`` prints the composed result.

Checks happen twice, by one mechanism. While composing, Hydra refuses a key the schema lacks and a value of
the wrong type (:func:`omegaconf_error_line` turns that into one line naming the field). When a run is built,
:func:`validate` turns the resolved config into the dataclasses (``OmegaConf.to_object``), which runs each
one's ``__post_init__``: the value checks, each a :class:`~tikmix.errors.ConfigError` naming the field and
what is allowed. Sub-run configs made in code (RegMix's proxies, DoReMi's reference) pass the same checks.

Numbers that may be integers or floats are typed :data:`Number`, not ``float``: OmegaConf would store ``1`` as
``1.0``, and the run fingerprint hashes the config as given, so a command line that resumes a run must
compose to the same values it did.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Sequence, Union

from omegaconf import II, MISSING, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from tikmix.errors import ConfigError
from tikmix.losses import CPU_BF16_MIN_HIDDEN

Number = Union[int, float]  # an int stays an int, a float a float; bools and strings are refused


# ----------------------------------------------------------------------------------- the checks' vocabulary
def need(cond: bool, field_name: str, allowed: str) -> None:
    """Refuse a value: ``field_name`` and what is allowed, when ``cond`` does not hold."""
    if not cond:
        raise ConfigError(field_name, allowed)


def is_number(v: Any, integer: bool = False) -> bool:
    return not isinstance(v, bool) and isinstance(v, int if integer else (int, float)) and math.isfinite(v)


def check_number(
    field_name: str,
    v: Any,
    *,
    integer: bool = False,
    low: float | None = None,
    strict: bool = False,
    high: float | None = None,
    high_strict: bool = False,
    null: bool = False,
) -> None:
    """Refuse a value that is not a finite number in range (a string, a bool, nan), naming the field."""
    if v is None and null:
        return
    ok = is_number(v, integer)
    ok = (
        ok
        and (low is None or (v > low if strict else v >= low))
        and (high is None or (v < high if high_strict else v <= high))
    )
    if not ok:
        rng = [f"{'>' if strict else '>='} {low}"] if low is not None else []
        rng += [f"{'<' if high_strict else '<='} {high}"] if high is not None else []
        raise ConfigError(
            field_name,
            f"must be {'an integer' if integer else 'a number'}"
            f"{' ' + ' and '.join(rng) if rng else ''}{' or null' if null else ''}, got {v!r}",
        )


def check_choice(field_name: str, v: Any, allowed: Sequence[Any]) -> None:
    need(v in allowed, field_name, f"unknown {v!r}; allowed: {', '.join(map(str, allowed))}")


# ---------------------------------------------------------------------------------- OmegaConf's errors, named
def _hint_words(hint: Any) -> str:
    """What a type hint allows, in words ("an integer or null")."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Union:
        kinds = [a for a in args if a is not type(None)]
        if {int, float} <= set(kinds):  # Number: one word for both
            kinds = [float] + [a for a in kinds if a not in (int, float)]
        return " or ".join(_hint_words(a) for a in kinds) + (" or null" if type(None) in args else "")
    if typing.get_origin(hint) in (list, tuple):
        return "a list"
    if typing.get_origin(hint) is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        hint, "a value of its type"
    )


def _allowed(object_type: Any, key: Any) -> str:
    """What a field allows: its ``metadata["allowed"]`` when the type says too little, else its type in words."""
    f = {f.name: f for f in dataclasses.fields(object_type)}.get(key) if dataclasses.is_dataclass(object_type) else None
    if f is not None and "allowed" in f.metadata:
        return f.metadata["allowed"]
    hint = _field_hint(object_type, key)
    return _hint_words(hint) if hint is not None else "a value of its declared type"


def _field_hint(object_type: Any, key: Any) -> Any:
    if not (dataclasses.is_dataclass(object_type) and isinstance(key, str)):
        return None
    try:
        return typing.get_type_hints(object_type).get(key)
    except (NameError, TypeError):  # pragma: no cover - a hint that cannot be evaluated
        return None


def omegaconf_error(
    e: OmegaConfBaseException, prefix: str = "", key: str | None = None, what: str = ""
) -> ConfigError | None:
    """The ConfigError for an OmegaConf error met while merging a config onto its schema: an unknown key, a value
    of the wrong type, a value left missing. ``prefix``: where the merged node sits (``mixer``); ``key``: the
    full key when the caller knows it better (Hydra's override); ``what``: whose keys, for an unknown top-level
    one (``mixer 'aioli'``). None for other errors."""
    inner = getattr(e, "full_key", None)
    full = key or ".".join(str(p) for p in (prefix, inner) if p not in (None, ""))
    obj = getattr(e, "object_type", None)
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)):
        known = [f.name for f in dataclasses.fields(obj)] if dataclasses.is_dataclass(obj) else []
        whose = f" for {what}" if what and "." not in str(inner) else ""
        return ConfigError(full, f"unknown key{whose}; known keys: {', '.join(known)}")
    if isinstance(e, MissingMandatoryValue):
        return ConfigError(full, "missing: this key has no default, give it a value")
    if isinstance(e, ValidationError):
        return ConfigError(full, f"must be {_allowed(obj, getattr(e, 'key', None))}, got {getattr(e, 'value', None)!r}")
    return None


def typed(schema: type, value: Any, prefix: str = "", what: str = "") -> Any:
    """``value`` (a dict or DictConfig) merged over ``schema``'s defaults and turned into the dataclass: its keys,
    types and ``__post_init__`` checks applied. OmegaConf's own errors come out as ConfigErrors naming the field."""
    if isinstance(value, schema):
        return value
    try:
        if OmegaConf.is_config(value):  # plain values: a node composed with another schema merges as well
            value = OmegaConf.to_container(value, resolve=True)
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), value))
    except ConfigError as e:
        raise _rerooted(e, schema, prefix) from None
    except OmegaConfBaseException as e:
        err = omegaconf_error(e, prefix, what=what)
        if err is None:
            raise ConfigError(prefix or "config", str(e).splitlines()[0]) from None
        raise err from None


def _rerooted(e: ConfigError, schema: type, prefix: str) -> ConfigError:
    """A section's check names its own key (``model.num_heads``); raised by a section nested in ``schema`` (RegMix's
    ``proxy_model``), the error names where it sits instead (``mixer.proxy_model.num_heads``)."""
    head, _, rest = e.field.partition(".")
    section = GROUPS.get(head)
    if not prefix or head == prefix or section is None or not dataclasses.is_dataclass(schema):
        return e
    hints = typing.get_type_hints(schema)
    holder = next((f.name for f in dataclasses.fields(schema) if hints.get(f.name) is section), None)
    return e if holder is None else ConfigError(".".join(p for p in (prefix, holder, rest) if p), e.detail)


# ------------------------------------------------------------------------------------------------ trainer
TRAINER_CHOICES = {
    "optimizer": ("adamw",),
    "schedule": ("cosine", "wsd", "constant"),
    "dtype": ("auto", "fp32", "bf16"),
    "on_nonfinite": ("stop", "skip"),
    "parallel": ("ddp", "fsdp"),
    "final_eval": ("full", "targets", "none"),
}


@dataclass
class TrainerConfig:
    """``trainer``: the optimiser, schedule, precision, logging and checkpoint cadence of the one trainer."""

    # peak learning rate and warmup: the model preset sets the published values for its shape (conf/model/*.yaml);
    # override them as any key: trainer.lr=1e-3 trainer.warmup_steps=500
    lr: Number = MISSING
    warmup_steps: Optional[int] = None  # null = budget.warmup_frac of the run; used while <= a tenth of the run
    optimizer: str = "adamw"
    betas: Any = field(default_factory=lambda: [0.9, 0.95])  # [beta1, beta2] in [0, 1)
    eps: Number = 1.0e-8
    weight_decay: Number = 0.1
    grad_clip: Optional[Number] = 1.0  # null or 0 = no clipping
    schedule: str = "cosine"  # cosine | wsd | constant (all after linear warmup: warmup_steps, else budget.warmup_frac)
    min_lr_ratio: Number = 0.1  # final LR of cosine / WSD as a fraction of peak
    wsd_decay_frac: Number = 0.2  # WSD: fraction of steps in the final linear decay
    # auto | fp32 | bf16 (autocast; weights and optimiser state stay fp32). auto = bf16 on a GPU, and on a CPU with
    # bf16 matrix instructions (AVX512-BF16 or AMX) for a model of hidden_size >= cpu_bf16_min_hidden; else fp32.
    # The run start prints the choice and why; results.json["dtype"] records it
    dtype: str = "auto"
    # the model width from which auto uses bf16 on such a CPU (tests/benchmarks/bench_trainer.py --dtypes: 1.6x
    # faster from 256 up; narrower models gain less and less reliably, and model=tiny's runs stay the fp32 runs
    # they were). It changes what a run computes only through the resolved dtype, which the fingerprint hashes
    cpu_bf16_min_hidden: int = CPU_BF16_MIN_HIDDEN
    log_every: int = 10  # steps between console/W&B/metrics.jsonl training logs
    eval_every: int = 50  # steps between per-domain validation losses (0 = only at the end)
    # validation / test tokens per domain (contiguous windows of the val / test split): the budget's, which
    # budget=smoke lowers to take seconds
    val_tokens: int = II("budget.val_tokens")
    test_tokens: int = II("budget.test_tokens")  # the final per-domain perplexity
    ckpt_every: int = 100  # steps between checkpoints (atomic; the last one is always kept)
    save_final_model: bool = True  # save the final model in Hugging Face format (+ tokenizer) under final_model/
    progress: bool = True  # progress bar on the console
    # after this many seconds (this process), checkpoint and exit (code 75), for schedulers; SIGTERM does the
    # same; null or 0 = no limit
    max_wall_s: Optional[Number] = None
    # a NaN/inf training loss: stop (the message names the step and domains; the last checkpoint is intact) |
    # skip (drop the batch, counted in results.json skipped_steps)
    on_nonfinite: str = "stop"
    # under torchrun: ddp (data parallel) | fsdp (FSDP2 sharding, for models that do not fit one device)
    parallel: str = "ddp"
    # wrap the model in torch.compile for the training forward/backward (checkpoints, probes and evaluation use
    # the plain module; needs a C++ compiler on CPU; a failure names this key): false | true | auto = compile when
    # it pays: one process on a GPU or on a CPU with a C++ compiler, and an estimated training time (the planned
    # steps' FLOPs / the measured matmul peak of the run's dtype) of at least compile_min_seconds. The compile
    # time is part of the run's wall and training time, printed and in results.json["compile"]
    compile: Union[bool, str] = False
    compile_mode: str = "default"  # default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs
    # compile=auto compiles when the estimated training time is at least this (seconds). A compile of model=tiny
    # took 55 s on a 2-core CPU and then ran 1.28x faster, paying for itself after ~250 s of eager training;
    # the estimate assumes the peak rate (real steps are 1.5-2x slower), so 600 leaves a margin
    compile_min_seconds: Number = 600
    # peak FLOP/s per device for MFU (train/mfu = FLOPs/token x tokens/s / peak x ranks): null = auto (the
    # published dense bf16 peak of a known GPU when training in bf16, else a matmul peak measured once, < 1 s) |
    # a number, e.g. 989.0e12 | 0 = no MFU. Any: YAML reads 989e12 (no dot) as a string (tikmix.perf checks it)
    peak_flops: Any = None
    # refuse a mixture whose initial weights would repeat some domain more than this many epochs over the
    # budget (null = allow; epochs are always reported)
    max_repeat_epochs: Optional[Number] = None
    # what a run computes after training: full (validation, test and target losses, downstream evaluation) |
    # targets (the target losses only: RegMix's proxies) | none (nothing: DoReMi's reference and proxy)
    final_eval: str = "full"
    # end the run at this stage boundary (1 = the first of budget.stages), checkpointed, computing nothing after
    # training: a prefix that schedules sharing it continue from (trainer.init_from). null = train to the end
    stop_at_stage: Optional[int] = None
    # start a fresh run from another run's checkpoint taken at one of this run's stage boundaries (a run stopped
    # with trainer.stop_at_stage): its config must equal this one but for the mixture of the later stages
    # (mixer=schedule); the result equals training the whole schedule from scratch, bit for bit on CPU
    init_from: Optional[str] = None

    def __post_init__(self) -> None:
        if self.lr == MISSING:  # the prototype OmegaConf builds for RunConfig's schema; checked once lr is given
            return
        for key, allowed in TRAINER_CHOICES.items():
            check_choice(f"trainer.{key}", getattr(self, key), allowed)
        for key in ("lr", "eps"):
            check_number(f"trainer.{key}", getattr(self, key), low=0, strict=True)
        check_number("trainer.weight_decay", self.weight_decay, low=0)
        check_number("trainer.grad_clip", self.grad_clip, low=0, null=True)
        for key in ("min_lr_ratio", "wsd_decay_frac"):
            check_number(f"trainer.{key}", getattr(self, key), low=0, high=1)
        check_number("trainer.log_every", self.log_every, integer=True, low=1)
        for key in ("eval_every", "ckpt_every"):
            check_number(f"trainer.{key}", getattr(self, key), integer=True, low=0)
        for key in ("val_tokens", "test_tokens"):
            check_number(f"trainer.{key}", getattr(self, key), integer=True, low=1)
        check_number("trainer.max_wall_s", self.max_wall_s, low=0, null=True)  # 0, like null, means no limit
        check_number("trainer.warmup_steps", self.warmup_steps, integer=True, low=0, null=True)
        check_number("trainer.stop_at_stage", self.stop_at_stage, integer=True, low=1, null=True)
        check_number("trainer.cpu_bf16_min_hidden", self.cpu_bf16_min_hidden, integer=True, low=0)
        check_number("trainer.compile_min_seconds", self.compile_min_seconds, low=0)
        need(
            isinstance(self.compile, bool) or self.compile in ("auto", "on", "off"),
            "trainer.compile",
            f"must be true (on), false (off) or auto, got {self.compile!r}",
        )
        b = self.betas
        need(
            isinstance(b, (list, tuple)) and len(b) == 2,
            "trainer.betas",
            f"must be two numbers [beta1, beta2] in [0, 1), got {b!r}",
        )
        for i, x in enumerate(b):
            check_number(f"trainer.betas[{i}]", x, low=0, high=1, high_strict=True)


@dataclass
class TrainerOverrides:
    """Trainer keys a mixer sets for its sub-runs (a proxy, a reference model); null = the main run's value."""

    lr: Optional[Number] = None
    schedule: Optional[str] = None
    betas: Any = None
    weight_decay: Optional[Number] = None
    grad_clip: Optional[Number] = None
    eval_every: Optional[int] = None


# ------------------------------------------------------------------------------------------- targets, model
TARGET_LOSSES = ("answer", "first_token", "margin")


@dataclass
class TargetsConfig:
    """``targets``: what the mixers optimise for (methods.md, "Targets"); the same for every mixer of a comparison."""

    # benchmark-derived sets: a task's dev split, loss on the gold answer only; auto = the eval preset's
    # in-domain tasks; [] = none. auto | list of task names
    tasks: Any = "auto"
    # held-out (val split) text of these domains; auto = every domain when there are no task targets, else none.
    # auto | list of domain names
    domains: Any = "auto"
    tokens: int = 8192  # tokens per target set (a mixer's probe may use fewer: see its own *_tokens keys)
    # the loss of a task target (README, "Targets"): answer = the gold answer's tokens (every one of them);
    # first_token = the answer's first token only (the rest is mostly spelling and punctuation a look-alike
    # domain teaches as well); margin = -(log p(gold) - max over wrong choices of log p(choice)) per document,
    # for multiple-choice tasks (what accuracy depends on; the max is not smooth, on purpose). Held-out domain
    # text targets (val/<domain>) have no answer: they keep the loss on every token under every kind.
    # answer (today's behaviour, the default until the measurement of tests/benchmarks/bench_target_loss.py
    # chooses) | first_token | margin
    loss: str = "answer"

    def __post_init__(self) -> None:
        check_choice("targets.loss", self.loss, TARGET_LOSSES)


MODEL_SHAPE = (
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "intermediate_size",
    "max_position_embeddings",
)


@dataclass
class ModelConfig:
    """``model``: a Llama architecture (RoPE, SwiGLU, RMSNorm), built from config, random init (conf/model/*.yaml)."""

    name: str = MISSING
    hidden_size: int = MISSING
    num_layers: int = MISSING
    num_heads: int = MISSING
    num_kv_heads: int = MISSING
    intermediate_size: int = MISSING
    max_position_embeddings: int = 2048
    vocab_size: Optional[int] = None  # null = the tokenizer's vocabulary size
    tie_embeddings: bool = False
    rope_theta: Number = 10000.0
    init_std: Number = 0.02

    def __post_init__(self) -> None:
        if MISSING in (self.name, *(getattr(self, k) for k in MODEL_SHAPE)):  # a prototype; checked once given
            return
        for key in MODEL_SHAPE:
            v = getattr(self, key)
            need(is_number(v, integer=True) and v > 0, f"model.{key}", f"must be a positive integer, got {v!r}")
        need(not self.hidden_size % self.num_heads, "model.num_heads", f"must divide hidden_size={self.hidden_size}")
        need(not self.num_heads % self.num_kv_heads, "model.num_kv_heads", f"must divide num_heads={self.num_heads}")
        head = self.hidden_size // self.num_heads
        need(
            not head % 2,
            "model.hidden_size",
            f"hidden_size / num_heads (the head size, rotated by RoPE) must be even, got "
            f"{self.hidden_size} / {self.num_heads} = {head}",
        )


# ----------------------------------------------------------------------------------------------- budget
@dataclass
class BudgetConfig:
    """``budget``: total tokens, sequence length, batch, warmup and mixture-stage boundaries (conf/budget/*.yaml)."""

    name: str = MISSING
    total_tokens: int = MISSING
    seq_len: int = MISSING
    batch_size: int = MISSING  # global batch in sequences (tokens per step = batch_size * seq_len)
    micro_batch: int = MISSING  # sequences per forward/backward (gradient accumulation makes up the rest)
    warmup_frac: Number = (
        0.0  # fraction of steps in linear warmup (when the model's trainer.warmup_steps does not apply)
    )
    stages: List[float] = field(default_factory=list)  # mixture-stage boundaries as fractions of the budget
    # evaluation sized to the budget (budget=smoke lowers them, so the whole run takes seconds):
    val_tokens: int = 16384  # validation tokens per domain (trainer.val_tokens)
    test_tokens: int = 32768  # test tokens per domain (trainer.test_tokens)
    eval_limit: Any = None  # examples per downstream task (eval.limit); null = all

    def __post_init__(self) -> None:
        check_number("budget.warmup_frac", self.warmup_frac, low=0, high=1, high_strict=True)


# ------------------------------------------------------------------------------------------------- data
@dataclass
class Holdout:
    val: Number = 0.01
    test: Number = 0.01


@dataclass
class HFSplits:
    train: Optional[str] = "train"
    val: Optional[str] = "validation"
    test: Optional[str] = "test"


@dataclass
class HFSource:
    path: Optional[str] = None  # a hub dataset, a local dataset folder, or `json` with data_files
    name: Optional[str] = None
    splits: HFSplits = field(default_factory=HFSplits)
    streaming: bool = True
    data_files: Any = None


@dataclass
class SyntheticSource:
    seed: int = 0  # the generator's seed (the knowledge base, held-out arithmetic problems, documents)
    # {split: {domain: n}} overrides of the benchmark's documents (tikmix.data.synthetic.DEFAULT_DOCS_BY)
    docs: Any = None
    # v3: ten domains in web-crawl proportions (four teach the tasks; two harmful look-alikes; near-duplicates,
    # noise and an irrelevant source take the rest), 200 facts, agreement scored on the verb alone | v2: the same
    # with 500 facts and agreement on the whole verb phrase (data=synthetic_v2) | v1: the first six domains
    # (data=synthetic_v1)
    benchmark: str = "v3"


@dataclass
class TokenizerConfig:
    # a pretrained tokenizer (name or local path; the papers used EleutherAI/gpt-neox-20b); null = train a
    # byte-level BPE on the train split
    name: Optional[str] = None
    vocab_size: int = 2048  # size of the trained BPE
    train_docs_per_domain: int = 2000  # documents per domain used to train it


DATA_SOURCES = ("synthetic", "jsonl", "text_dir", "hf")


def _str_list(value: Any, field_name: str, allow_none: bool) -> list[str] | None:
    """A string or a list of strings (or numbers) as a list of strings; null as None (``allow_none``) or []."""
    if value is None:
        return None if allow_none else []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, (str, int)) for v in value):
        return [str(v) for v in value]
    raise ConfigError(
        field_name, f"must be a string or a list of strings{' or null' if allow_none else ''}, got {value!r}"
    )


@dataclass
class DataConfig:
    """``data``: the source, domain field, include/exclude lists, held-out splits, tokenizer, shard cache.
    ``__post_init__`` checks the values and normalises them: file globs and domain lists as lists of strings,
    the holdout fractions as floats (what tikmix.data.shards' cache key hashes)."""

    source: str = "synthetic"  # synthetic | jsonl | text_dir | hf
    root: Optional[str] = None  # folder or URL prefix of the files (jsonl, text_dir)
    train_files: Any = None  # glob(s) under root for the train split (jsonl)
    val_files: Any = None  # glob(s) for validation; null = carve `holdout.val` of the train documents by a stable hash
    test_files: Any = None  # glob(s) for test; null = carve `holdout.test` likewise
    text_field: str = "text"  # dotted path of the text in each JSON row
    domain_field: str = "meta.pile_set_name"  # dotted path of the domain name in each JSON row
    domains: Any = None  # keep only these domains (null = every domain found)
    exclude: Any = field(default_factory=list)  # drop these domains
    max_docs: Optional[int] = None  # cap on documents per domain and split (null = all)
    holdout: Holdout = field(default_factory=Holdout)
    hf: HFSource = field(default_factory=HFSource)
    synthetic: SyntheticSource = field(default_factory=SyntheticSource)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    # token shards, built once per (source, tokenizer); relative = to the launch directory
    cache_dir: str = II("oc.env:TIKMIX_CACHE,.cache/tikmix")
    human_weights: Any = None  # the dataset's published default proportions (domain -> weight), used by mixer=human

    def __post_init__(self) -> None:
        need(
            self.source in DATA_SOURCES,
            "data.source",
            f"must be one of {', '.join(DATA_SOURCES)}; got {self.source!r}",
        )
        for key in ("train_files", "val_files", "test_files", "domains"):
            setattr(self, key, _str_list(getattr(self, key), f"data.{key}", allow_none=True))
        self.exclude = _str_list(self.exclude, "data.exclude", allow_none=False)
        for key in ("text_field", "domain_field"):
            v = getattr(self, key)
            need(isinstance(v, str) and bool(v), f"data.{key}", f"must be a non-empty dotted field name, got {v!r}")
        md = self.max_docs
        need(
            md is None or (is_number(md, integer=True) and md >= 1),
            "data.max_docs",
            f"must be a positive integer or null, got {md!r}",
        )
        self._check_holdout()
        self._check_tokenizer()
        # data.root, which jsonl and text_dir need, is required where the data is read (tikmix.data.sources): their
        # presets leave it to the user, and each preset composes and checks without it (tests/test_configs.py)
        if self.root is not None and not isinstance(self.root, str):
            self.root = str(self.root)

    def _check_holdout(self) -> None:
        total = 0.0
        for s in ("val", "test"):
            v = getattr(self.holdout, s)
            v = 0.0 if v is None else v
            need(is_number(v) and 0.0 <= v < 1.0, f"data.holdout.{s}", f"must be a fraction in [0, 1), got {v!r}")
            setattr(self.holdout, s, float(v))
            total += float(v)
        need(total < 1.0, "data.holdout", f"val + test must be below 1 (train keeps the rest), got {total}")

    def _check_tokenizer(self) -> None:
        tk = self.tokenizer
        if tk.name is not None:
            need(
                isinstance(tk.name, str) and bool(tk.name),
                "data.tokenizer.name",
                f"must be a tokenizer name/path or null, got {tk.name!r}",
            )
            return
        vs, n = tk.vocab_size, tk.train_docs_per_domain
        need(
            is_number(vs, integer=True) and vs >= 258,
            "data.tokenizer.vocab_size",
            f"must be an integer >= 258 (256 bytes + <|endoftext|> + merges), got {vs!r}",
        )
        need(
            is_number(n, integer=True) and n >= 1,
            "data.tokenizer.train_docs_per_domain",
            f"must be a positive integer, got {n!r}",
        )


# ------------------------------------------------------------------------------------------------- eval
@dataclass
class SyntheticTasks:
    """How eval=synthetic9's task files are generated (dev = targets / few-shot, test = evaluation)."""

    n_dev: int = 200  # dev examples per task
    # test examples per task (arith tasks hold ~1,000 held-out test problems; fact tasks ~700 in v1, 350 in v2
    # and 145 in v3, whose knowledge bases are smaller: they write all they have)
    n_test: int = 500
    seed: int = II(
        "data.synthetic.seed"
    )  # must be the corpus's seed: the knowledge base and held-out problems follow it
    benchmark: str = II(
        "data.synthetic.benchmark"
    )  # must be the corpus's: each benchmark has its own knowledge base (the fact tasks)
    cache_dir: str = II("data.cache_dir")


EVAL_DTYPES = ("auto", "bf16", "fp32")


def name_list(x: Any, field_name: str) -> list[str]:
    """One name or a list of names (task names, folders) as a list of strings; null = none."""
    if x is None:
        return []
    if isinstance(x, str):
        return [x]
    try:
        return [str(v) for v in x]
    except TypeError:
        raise ConfigError(field_name, f"must be a list of task names, got {x!r}") from None


@dataclass
class EvalConfig:
    """``eval``: the downstream evaluation stage (lm-eval, in-process; conf/eval/*.yaml).

    Some keys take one of two shapes OmegaConf cannot type together (it has no union of a string and a list, nor
    of a number and a mapping): they are ``Any`` here, and ``__post_init__`` checks them and gives the lists as
    lists (``tasks``, ``in_domain``, ``out_of_domain``, ``include_path``)."""

    name: str = MISSING
    tasks: Any = field(default_factory=list)  # task names: a list, or one name
    # tasks averaged as in-domain (the only ones benchmark targets may use): a list, or one name
    in_domain: Any = field(default_factory=list)
    # averaged as out-of-domain; others count only in the overall average: a list, or one name
    out_of_domain: Any = field(default_factory=list)
    metric: Any = None  # null = acc_norm, else acc, else exact_match, else the first metric; a name; or {task: metric}
    num_fewshot: Any = None  # null = each task's own default (0 when it has none); an integer; or {task: shots}
    include_path: Any = None  # a folder (or list of folders) of your own lm-eval task YAMLs (used as they are)
    synthetic: Optional[SyntheticTasks] = None  # eval=synthetic9 only
    # examples per task: null = all, a positive integer, or a fraction in (0, 1) = that share (a float >= 1 counts
    # as an integer); default: the budget's eval_limit (budget=smoke: a few, to take seconds), else all. Any: the
    # budget's eval_limit is, and the check below words the refusal of a string
    limit: Any = II("budget.eval_limit")
    batch_size: Union[int, str] = 32  # sequences per forward pass, or "auto" (lm-eval finds the largest that fits)
    max_batch_size: int = 64  # upper bound when batch_size is "auto"
    bootstrap_iters: int = 1000  # the final evaluation: standard errors (mean metrics use the analytic stderr)
    stage_bootstrap_iters: int = 0  # evaluations during training: 0 = no standard errors (fast)
    every_stage: bool = False  # also evaluate at every mixture-stage boundary (logged at that step)
    dtype: str = "auto"  # auto = bf16 autocast on GPU for fp32 weights, none on CPU | bf16 | fp32
    log_level: str = "ERROR"  # lm-eval's own logging during the evaluation (WARNING / INFO to see it)

    def __post_init__(self) -> None:
        if self.name == MISSING:  # a prototype; checked once the preset is chosen
            return
        self._check_tasks()
        limit = self.limit
        need(
            limit is None or (not isinstance(limit, bool) and isinstance(limit, (int, float)) and limit > 0),
            "eval.limit",
            f"must be null (all examples), a positive integer, or a fraction in (0, 1); got {limit!r}",
        )
        if isinstance(limit, float) and limit >= 1:
            self.limit = int(limit)
        self._check_shots_and_metric()
        bs = self.batch_size
        need(
            (is_number(bs, integer=True) and bs > 0) or (isinstance(bs, str) and bs.startswith("auto")),
            "eval.batch_size",
            f"must be a positive integer or 'auto'; got {bs!r}",
        )
        for key in ("bootstrap_iters", "stage_bootstrap_iters"):
            v = getattr(self, key)
            need(is_number(v, integer=True) and v >= 0, f"eval.{key}", f"must be an integer >= 0; got {v!r}")
        need(str(self.dtype) in EVAL_DTYPES, "eval.dtype", f"must be auto, bf16 or fp32; got {self.dtype!r}")

    def _check_tasks(self) -> None:
        # an evaluation needs tasks (eval.stage asks where it evaluates): eval=custom leaves them to the user, and each
        # preset composes and checks without them (tests/test_configs.py)
        self.tasks = name_list(self.tasks, "eval.tasks")
        dup = sorted({t for t in self.tasks if self.tasks.count(t) > 1})
        need(not dup, "eval.tasks", f"task(s) listed twice: {dup}")
        self.in_domain = name_list(self.in_domain, "eval.in_domain")
        self.out_of_domain = name_list(self.out_of_domain, "eval.out_of_domain")
        both = sorted(set(self.in_domain) & set(self.out_of_domain))
        need(not both, "eval.in_domain", f"task(s) {both} are listed both in-domain and out-of-domain")
        self.include_path = name_list(self.include_path, "eval.include_path")

    def _check_shots_and_metric(self) -> None:
        shots = self.num_fewshot
        if isinstance(shots, Mapping):
            bad = [k for k, v in shots.items() if v is not None and not (is_number(v, integer=True) and v >= 0)]
            need(
                not bad,
                "eval.num_fewshot",
                f"shots must be integers >= 0 (or null = the task's default), bad for {bad}",
            )
        else:
            need(
                shots is None or (is_number(shots, integer=True) and shots >= 0),
                "eval.num_fewshot",
                f"must be an integer >= 0, a mapping task -> shots, or null; got {shots!r}",
            )
        need(
            self.metric is None or isinstance(self.metric, (str, Mapping)),
            "eval.metric",
            f"must be a metric name, a mapping task -> metric, or null; got {self.metric!r}",
        )

    def shots_for(self, task: str) -> int | None:
        """The few-shot count of ``task``: its own, the mapping's ``default``, or the one for every task."""
        s = self.num_fewshot
        return s.get(task, s.get("default")) if isinstance(s, Mapping) else s

    def metric_for(self, task: str) -> str | None:
        """The headline metric of ``task``: its own, the mapping's ``default``, or the one for every task."""
        m = self.metric
        return m.get(task, m.get("default")) if isinstance(m, Mapping) else m


# ----------------------------------------------------------------------------------------------- logger
@dataclass
class WandbLogger:
    """``logger=wandb``: offline into the run dir when no key is configured; a W&B failure never fails a run."""

    name: str = MISSING
    project: str = "tikmix"
    entity: Optional[str] = None
    group: Optional[str] = None  # null = the Hydra sweep (hydra.sweep.dir) for a multirun job, none for a single run
    tags: List[str] = field(
        default_factory=list
    )  # added to the automatic mixer:<name> model:... budget:... data:... eval:...
    mode: Optional[str] = None  # null = online if a key is configured, else offline; or online | offline | disabled
    system_metrics: bool = False  # W&B's CPU/GPU utilisation sampling; off by default: it costs CPU on small machines


@dataclass
class NoLogger:
    """``logger=none``: metrics.jsonl and results.json in the run directory only."""

    name: str = MISSING


LOGGERS: dict[str, type] = {"wandb": WandbLogger, "none": NoLogger}


# ------------------------------------------------------------------------------------------------- a run
@dataclass
class RunConfig:
    """The root: one section per group (conf/config.yaml's defaults list chooses their presets) and the trainer's."""

    # the samplers key their streams on 32 bits of the seed: a larger one would repeat a smaller one's data
    seed: int = field(default=0, metadata={"allowed": f"an integer from 0 to {2**32 - 1}"})
    device: str = "auto"  # auto | cpu | cuda | cuda:N  (auto = cuda when available)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    run_dir: str = II("hydra:runtime.output_dir")
    # the groups: each preset names its section's schema (conf/<group>/*.yaml), checked by validate()
    mixer: Any = MISSING  # each mixer's own dataclass (tikmix.mixer.mixer_config)
    model: Any = MISSING  # ModelConfig
    budget: Any = MISSING  # BudgetConfig
    data: Any = MISSING  # DataConfig
    eval: Any = MISSING  # EvalConfig
    logger: Any = MISSING  # one of LOGGERS

    def __post_init__(self) -> None:
        need(
            is_number(self.seed, integer=True) and 0 <= self.seed < 2**32,
            "seed",
            f"must be {_allowed(RunConfig, 'seed')}, got {self.seed!r}",
        )


def validate(cfg: Mapping[str, Any]) -> RunConfig:
    """The resolved run config checked against the schemas, once, before the run writes anything: unknown keys,
    types and each section's ``__post_init__`` checks, as ConfigErrors naming the field. The mixer's section is
    checked by :func:`tikmix.mixer.mixer_config`, which knows the mixers."""
    run = typed(RunConfig, cfg)
    for section, schema in GROUPS.items():
        setattr(run, section, typed(schema, cfg[section], section))
    name = (cfg.get("logger") or {}).get("name")
    check_choice("logger.name", name, tuple(LOGGERS))
    run.logger = typed(LOGGERS[name], cfg["logger"], "logger")
    return run


GROUPS: dict[str, type] = {"model": ModelConfig, "budget": BudgetConfig, "data": DataConfig, "eval": EvalConfig}


SCHEMAS: dict[str, type] = {"run": RunConfig, **GROUPS}


def omegaconf_error_line(e: BaseException) -> str | None:
    """One line for a composition error caused by a value its schema refuses (a wrong type, a missing value),
    whether an override's or a preset's; None for any other error."""
    cause = e.__cause__
    if not isinstance(cause, (ValidationError, MissingMandatoryValue)):
        return None
    key = getattr(cause, "full_key", None)
    if not isinstance(key, str) or not key:  # an item of a list: name the override instead
        key = _override_key(str(e))
    err = omegaconf_error(cause, key=key)
    return None if err is None else str(err)


def _override_key(message: str) -> str | None:
    # Hydra: "Error merging override trainer.lr=abc" / "Could not override 'trainer.lrr'."
    for head in ("Error merging override ", "Could not override '"):
        if message.startswith(head):
            return message[len(head) :].split("=", 1)[0].rstrip("'.").lstrip("+~") or None
    return None
