"""Benchmark-derived targets: a task's non-test split as context + gold answer, loss on the answer only.

methods.md ("Targets"): the mixers may optimise toward in-domain benchmarks, never toward the data the
evaluation scores (a task's test split) and never toward out-of-domain benchmarks (they measure transfer).
The documents are rendered through the lm-eval task's own ``doc_to_text`` / ``doc_to_target`` /
``doc_to_choice`` and ``target_delimiter``, from the same task objects the evaluation stage builds, and
tokenised exactly as lm-eval's HFLM splits a (context, continuation) pair: trailing spaces of the context
move to the continuation, the whole string is encoded and the answer is what follows the context's tokens.

``targets.loss`` chooses what of the answer is scored: ``answer`` (every answer token), ``first_token`` (the
answer's first token only) or ``margin`` (every choice of a multiple-choice document scored as lm-eval scores
it, the loss −(log p(gold) − max over wrong choices of log p(choice)) per document: see
:func:`tikmix.losses.margin_loss_sum`). Held-out domain text has no answer and keeps its loss on every token.
"""

from __future__ import annotations

import random
from typing import Any, Iterable

import torch

from eval import tasks as T
from eval.stage import _quiet
from tikmix.config import TARGET_LOSSES, EvalConfig, TargetsConfig, check_choice
from tikmix.errors import ConfigError, DataError
from tikmix.trainer import eval_windows

# Preferred order of splits to draw target documents from; the split lm-eval evaluates is never used.
_SPLIT_ORDER = ("validation", "training", "fewshot")


def eval_split(task: Any) -> str | None:
    """The split lm-eval scores: the test split, or the validation split when the task has no test split."""
    c = task.config
    return c.test_split or c.validation_split


def target_split(task: Any, field: str = "targets.tasks") -> tuple[str, list]:
    """(split name, docs) of the first usable non-evaluation split of ``task``: validation (when it is not
    the evaluated split), else train, else the few-shot split. Raises ConfigError when the task has only
    its evaluation split."""
    c = task.config
    scored = eval_split(task)
    candidates = [
        ("validation", c.validation_split, task.validation_docs),
        ("training", c.training_split, task.training_docs),
        (
            "fewshot",
            getattr(task.fewshot_cfg, "split", None) if getattr(task, "fewshot_cfg", None) else None,
            task.fewshot_docs,
        ),
    ]
    for _kind, split, getter in candidates:
        if split and split != scored and split != c.test_split:
            docs = getter()
            if docs is not None and len(docs) > 0:
                return split, list(docs)
    raise ConfigError(
        field,
        f"task {task.task_name!r} has only its evaluation split ({scored!r}); a target needs a dev, "
        f"validation or train split that is not scored, and the test split is never used",
    )


def render(task: Any, doc: dict) -> tuple[str, str]:
    """(context, gold continuation with the task's target delimiter) of one document."""
    ctx = task.doc_to_text(doc)
    tgt = task.doc_to_target(doc)
    choices = task.doc_to_choice(doc) if task.config.doc_to_choice is not None else None
    if isinstance(ctx, int) and choices is not None:  # multiple inputs (winogrande-style): contexts are choices
        ctx, ans = choices[ctx], tgt
    elif choices is not None and isinstance(tgt, int):
        ans = choices[tgt]
    elif isinstance(tgt, list):
        ans = tgt[0]
        if isinstance(ans, int) and choices is not None:
            ans = choices[ans]
    else:
        ans = tgt
    if isinstance(ans, int) and choices is None:
        ans = str(ans)
    delim = task.config.target_delimiter if task.config.target_delimiter is not None else " "
    return str(ctx), f"{delim}{ans}"


def render_choices(task: Any, doc: dict) -> tuple[list[tuple[str, str]], int]:
    """Every (context, continuation) pair lm-eval scores for one multiple-choice document (zero-shot), and the
    index of the gold pair (-1 when the gold is not among the choices: lm-eval scores such a document wrong)."""
    choices = list(task.doc_to_choice(doc))
    ctx = task.doc_to_text(doc)
    tgt = task.doc_to_target(doc)
    delim = task.config.target_delimiter if task.config.target_delimiter is not None else " "
    if isinstance(ctx, int):  # multiple inputs (winogrande-style): the choices are the contexts
        pairs, gold = [(str(c), f"{delim}{tgt}") for c in choices], ctx
    else:
        pairs, gold = [(str(ctx), f"{delim}{c}") for c in choices], tgt
    if isinstance(gold, list):  # several golds: the first, as render() takes it
        gold = gold[0]
    if isinstance(gold, str):
        gold = choices.index(gold) if gold in choices else -1
    gold = int(gold)
    return pairs, gold if 0 <= gold < len(pairs) else -1


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval HFLM's split of a (context, continuation) pair into token ids (causal models)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return whole[: len(ctx)], whole[len(ctx) :]


def _docs_of(obj: Any, field: str) -> list[tuple[Any, dict]]:
    """(leaf task, doc) pairs of a task or group: the groups' subtasks interleaved round-robin, each
    subtask's documents in a fixed shuffled order (so a token budget covers every subtask)."""
    per = []
    for leaf in T.leaf_tasks(obj):
        _split, docs = target_split(leaf, field)
        order = list(range(len(docs)))
        random.Random(f"targets|{leaf.task_name}").shuffle(order)
        per.append([(leaf, docs[i]) for i in order])
    out = []
    for i in range(max(len(p) for p in per)):
        out.extend(p[i] for p in per if i < len(p))
    return out


def _batches(
    rows: list[tuple[list[int], list[int]]], pad_id: int, micro_batch: int, first_token: bool = False
) -> list[dict]:
    """Right-padded batches of (context, answer) rows, labelled on the answer (``first_token``: its first token)."""
    out = []
    for i in range(0, len(rows), micro_batch):
        chunk = rows[i : i + micro_batch]
        T_ = max(len(c) + len(a) for c, a in chunk)
        ids = torch.full((len(chunk), T_), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), T_), -100, dtype=torch.long)
        for r, (c, a) in enumerate(chunk):
            seq = c + a
            ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            scored = a[:1] if first_token else a
            labels[r, len(c) : len(c) + len(scored)] = torch.tensor(scored, dtype=torch.long)
        out.append({"input_ids": ids, "labels": labels})
    return out


def _margin_batches(docs: list[list[tuple[list[int], list[int], bool]]], pad_id: int, micro_batch: int) -> list[dict]:
    """Margin batches (tikmix.losses.margin_loss_sum): one row per choice, labelled on the choice, a document's
    rows contiguous and never split across batches (a document with more choices than ``micro_batch`` is a
    batch of its own); ``doc_index`` numbers the documents of a batch from 0, ``is_gold`` marks the gold rows."""
    groups: list[list[list[tuple[list[int], list[int], bool]]]] = []
    for d in docs:
        if groups and sum(len(x) for x in groups[-1]) + len(d) <= micro_batch:
            groups[-1].append(d)
        else:
            groups.append([d])
    out = []
    for g in groups:
        rows = [(c, a) for d in g for c, a, _ in d]
        b = _batches(rows, pad_id, len(rows))[0]
        b["doc_index"] = torch.tensor([i for i, d in enumerate(g) for _ in d], dtype=torch.long)
        b["is_gold"] = torch.tensor([gold for d in g for _, _, gold in d], dtype=torch.bool)
        out.append(b)
    return out


def _margin_doc(leaf: Any, doc: dict, tokenizer: Any, seq_len: int) -> list[tuple[list[int], list[int], bool]] | None:
    """(context ids, choice ids, is gold) of every choice of one document, each cut to ``seq_len`` from the left
    as an answer row is; None when the document has no usable gold, no wrong choice, or a choice that does not
    fit (lm-eval would still score it; a margin target leaves it out)."""
    pairs, gold = render_choices(leaf, doc)
    if gold < 0 or len(pairs) < 2:
        return None
    rows = []
    for i, (ctx, cont) in enumerate(pairs):
        c, a = encode_pair(tokenizer, ctx, cont)
        if not a or len(a) >= seq_len:
            return None
        rows.append((c[-(seq_len - len(a)) :], a, i == gold))
    return rows


def benchmark_targets(
    task_names: Iterable[str],
    eval_cfg: Any,
    tokenizer: Any,
    seq_len: int,
    n_tokens: int,
    micro_batch: int,
    loss: str = "answer",
) -> dict[str, list[dict]]:
    """Target sets ``{"task/<name>": [batch, ...]}`` from lm-eval tasks' non-test splits.

    Each batch is ``{"input_ids": LongTensor[b, T], "labels": LongTensor[b, T]}`` (HF convention: labels
    unshifted, the model shifts) with ``labels == -100`` everywhere except the gold answer's tokens;
    one document per row, right-padded with the tokenizer's pad id (labels -100 there), T <= seq_len
    (a long context is cut from the left, as lm-eval does; a document whose answer alone does not fit is
    skipped); documents are added until their tokens would exceed ``n_tokens`` (at least one).
    ``loss`` (``targets.loss``): ``answer`` labels every answer token, ``first_token`` the first only (same
    rows); ``margin`` makes one row per choice of each document, labelled on the choice, with ``doc_index``
    and ``is_gold`` (:func:`_margin_batches`; a document's tokens are all its rows'), and refuses a task
    without choices. Out-of-domain tasks of the eval preset are refused (they measure transfer), and so is a
    task with only a test split; unknown names get close matches.
    """
    check_choice("targets.loss", loss, TARGET_LOSSES)
    names = [str(n) for n in (task_names or [])]
    if not names:
        return {}
    cfg = T.eval_config(eval_cfg)
    ood = set(cfg.out_of_domain)
    bad = [n for n in names if n in ood]
    if bad:
        raise ConfigError(
            "targets.tasks",
            f"{bad} are out-of-domain benchmarks of eval={cfg.name}: they "
            f"measure transfer and are never targets; in-domain ones: "
            f"{cfg.in_domain}",
        )
    if seq_len < 2 or n_tokens < 1 or micro_batch < 1:
        raise ConfigError(
            "targets.tasks",
            f"need seq_len >= 2, n_tokens >= 1, micro_batch >= 1 (got {seq_len}, {n_tokens}, {micro_batch})",
        )
    paths = T.include_paths(cfg)
    out: dict[str, list[dict]] = {}
    with _quiet(cfg.log_level):
        tm = T.resolve(cfg, names, field="targets.tasks")
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        for name in names:
            loaded = T.load_task(tm, name, paths)
            objs = [loaded["groups"][name]] if name in loaded["groups"] else list(loaded["tasks"].values())
            if loss == "margin":
                plain = [
                    leaf.task_name for obj in objs for leaf in T.leaf_tasks(obj) if leaf.config.doc_to_choice is None
                ]
                if plain:
                    raise ConfigError(
                        "targets.loss",
                        f"margin scores the choices of multiple-choice tasks (lm-eval's doc_to_choice), and target "
                        f"task {name!r} has none{'' if plain == [name] else f' (its subtasks {plain})'}; use "
                        f"targets.loss=answer or first_token, or leave {name!r} out of targets.tasks",
                    )
            pairs = [p for obj in objs for p in _docs_of(obj, "targets.tasks")]
            rows, total = [], 0
            for leaf, doc in pairs:
                if loss == "margin":
                    item = _margin_doc(leaf, doc, tokenizer, seq_len)
                    if item is None:
                        continue
                    n = sum(len(c) + len(a) for c, a, _ in item)
                else:
                    ctx, ans = render(leaf, doc)
                    c, a = encode_pair(tokenizer, ctx, ans)
                    if not a or len(a) >= seq_len:
                        continue
                    item = (c[-(seq_len - len(a)) :], a)
                    n = len(item[0]) + len(a)
                if rows and total + n > n_tokens:
                    break
                rows.append(item)
                total += n
            if not rows:
                raise DataError(
                    f"target task {name!r}: no document fits seq_len={seq_len} with its answer"
                    + (" (margin: with every choice)" if loss == "margin" else "")
                )
            if loss == "margin":
                out[f"task/{name}"] = _margin_batches(rows, int(pad_id), int(micro_batch))
            else:
                out[f"task/{name}"] = _batches(rows, int(pad_id), int(micro_batch), first_token=loss == "first_token")
    return out


# ------------------------------------------------------------------- the target sets of a run (every mixer's)
def target_tasks(targets: TargetsConfig, eval_cfg: EvalConfig) -> list[str]:
    """The task targets: ``targets.tasks``, where ``auto`` = the eval preset's in-domain tasks."""
    tasks = targets.tasks
    if tasks == "auto":
        return list(eval_cfg.in_domain or []) if eval_cfg.name != "none" else []
    if tasks is None or isinstance(tasks, str):
        raise ConfigError("targets.tasks", f"auto, or a list of in-domain task names, got {tasks!r}")
    return list(tasks)


def targets_auto(targets: TargetsConfig, eval_cfg: EvalConfig) -> bool:
    """True when the targets are the automatic per-domain held-out texts (no task targets, domains auto)."""
    return targets.domains == "auto" and not target_tasks(targets, eval_cfg)


def build_targets(
    targets: TargetsConfig, eval_cfg: EvalConfig, shards: Any, domains: list[str], seq_len: int, micro_batch: int
) -> dict[str, list[dict]]:
    """Target sets the mixers optimise for (methods.md, "Targets"), the same for every mixer of a comparison.

    ``targets.tasks``: benchmark-derived sets (a task's dev split, scored by ``targets.loss``: the gold
    answer, its first token, or the margin over the wrong choices); ``auto`` = the in-domain tasks of the eval
    preset. ``targets.domains``: held-out (val split) text of domains, loss on every token whatever
    ``targets.loss`` says (text has no answer); ``auto`` = every domain when there are no task targets, else none.
    """
    loss, n_tokens, mb = targets.loss, int(targets.tokens), int(micro_batch)
    tasks = target_tasks(targets, eval_cfg)
    names = targets.domains
    if names == "auto":
        names = [] if tasks else domains
    elif names is None or isinstance(names, str):
        raise ConfigError("targets.domains", f"auto, or a list of domain names, got {names!r}")
    names = list(names)
    unknown = [d for d in names if d not in domains]
    if unknown:
        raise ConfigError("targets.domains", f"unknown domain(s) {unknown}; the data has {domains}")
    if not names and not tasks:
        raise ConfigError("targets", "no target sets: give targets.domains or targets.tasks (or leave them auto)")
    out: dict[str, list[dict]] = {}
    for d in names:
        w = eval_windows(shards.tokens(d, "val"), seq_len, n_tokens)
        x = torch.from_numpy(w[:, :-1])
        out[f"val/{d}"] = [{"input_ids": x[i : i + mb], "labels": x[i : i + mb]} for i in range(0, len(x), mb)]
    if tasks:
        out.update(benchmark_targets(list(tasks), eval_cfg, shards.tokenizer, seq_len, n_tokens, mb, loss=loss))
    return out


def describe_targets(targets: TargetsConfig, eval_cfg: EvalConfig, sets: dict[str, list[dict]]) -> str:
    """One console line: what the mixers optimise for (the target sets, their tokens) and where they come from."""
    sizes = ", ".join(f"{n} ({sum(int(b['input_ids'].numel()) for b in bs):,})" for n, bs in sets.items())
    if target_tasks(targets, eval_cfg):
        why = f"targets.tasks: dev splits of eval={eval_cfg.name}'s in-domain tasks"
        if targets.loss != "answer":  # the default's line is as it was
            why += f", targets.loss={targets.loss}"
    elif targets_auto(targets, eval_cfg):
        why = (
            f"targets.domains=auto with no task targets (eval={eval_cfg.name}): every domain's held-out text; "
            "TiKMiX averages them into one target"
        )
    else:
        why = "targets.domains"
    return f"[tikmix] targets ({why}), tokens per set: {sizes}"
