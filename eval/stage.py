"""The evaluation stage: lm-eval tasks scored in-process on the model object, no reload.

:func:`evaluate` wraps the (trained) model in lm-eval's ``HFLM`` with the run's tokenizer, scores the
tasks of the ``eval=`` preset with ``simple_evaluate``, prints a table, logs a W&B table (one row per task
and metric) and summary values, and returns the entry that goes into ``results.json["eval"]``.

Scores are in percent (0-100, like the paper's tables) for proportion metrics (acc, acc_norm,
exact_match, ...), with their standard errors in the same unit; other metrics (perplexities, ...) are kept
as lm-eval reports them and left out of the averages. ``average`` is the mean over all tasks, and
``in_domain_avg`` / ``out_of_domain_avg`` over the preset's two groups (TiKMiX Table 1: in-domain MMLU,
HellaSwag, ARC-E, ARC-C, TriviaQA; out-of-domain PIQA, OpenBookQA, BoolQ, MathQA).

Continuous metrics, beside accuracy, for every log-likelihood (multiple-choice) task, taken from lm-eval's
per-sample log-likelihoods (``log_samples``), no second pass over the model: ``logprob``, the mean over
documents of log p(gold continuation | context) (natural log, summed over the continuation's tokens), and
``bpb``, the mean over documents of -log2 p(gold | context) / UTF-8 bytes of the gold continuation as scored
(OLMES's ``bits_per_byte_corr``; lower is better). Groups (mmlu) combine their leaves as lm-eval combines
their accuracy; ``in_domain_bpb`` / ``out_of_domain_bpb`` / ``average_bpb`` (and ``*_logprob``) average the
tasks that have them: generation tasks (TriviaQA) have none.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import random
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from tqdm import tqdm as _Tqdm

from eval import tasks as T
from tikmix.config import EvalConfig
from tikmix.errors import ConfigError

PERCENT_METRICS = {
    "acc",
    "acc_norm",
    "acc_mutual_info",
    "exact_match",
    "em",
    "f1",
    "mcc",
    "contains",
    "pass@1",
    "acc_bytes",
}
_METRIC_PREFERENCE = ("acc_norm", "acc", "exact_match", "em", "f1")


# -------------------------------------------------------------------------------------------- config


def named_tasks(cfg: EvalConfig) -> list[str]:
    """The tasks an evaluation scores: ``eval.tasks``, which a preset may leave to the user (eval=custom)."""
    if not cfg.tasks:
        raise ConfigError("eval.tasks", f"eval={cfg.name} names no tasks; give eval.tasks=[...] or use eval=none")
    return cfg.tasks


def task_group(name: str, ind: list[str], ood: list[str]) -> str:
    return "in_domain" if name in ind else "out_of_domain" if name in ood else "other"


# ------------------------------------------------------------------------------------------ helpers


@contextlib.contextmanager
def _quiet(level: str | None) -> Iterator[None]:
    """lm-eval's log at ``level`` (eval.log_level) and none of its progress bars (one per task building its
    requests, tokenizing, running the log-likelihoods): the stage prints one line of its own."""
    lg = logging.getLogger("lm_eval")
    old = lg.level
    lg.setLevel(getattr(logging, str(level or "ERROR").upper(), logging.ERROR))
    bars = _silence_lm_eval_bars()
    try:
        yield
    finally:
        lg.setLevel(old)
        for mod, orig in bars:
            mod.tqdm = orig


def _silence_lm_eval_bars() -> list[tuple[Any, Any]]:
    """Every lm_eval module's ``tqdm`` replaced by one that is off; returns what to put back."""
    for name in ("lm_eval.api.task", "lm_eval.api.model", "lm_eval.models.huggingface", "lm_eval.evaluator"):
        try:
            importlib.import_module(name)
        except ImportError:  # an lm-eval version without it
            pass
    out = []
    for name, mod in list(sys.modules.items()):
        if name.startswith("lm_eval") and getattr(mod, "tqdm", None) is _Tqdm:
            out.append((mod, _Tqdm))
            mod.tqdm = _off
    return out


def _off(*args: Any, **kwargs: Any) -> Any:
    """A progress bar that is off whatever its caller asks (lm-eval passes disable=False explicitly)."""
    kwargs["disable"] = True
    return _Tqdm(*args, **kwargs)


@contextlib.contextmanager
def _rng_preserved() -> Iterator[None]:
    """simple_evaluate seeds random/numpy/torch globally; keep the training process's streams intact."""
    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def _light_env_info() -> Iterator[None]:
    """simple_evaluate records torch's collect_env report (~2.5 s of subprocesses) and the git hash of the
    working directory (printing "fatal: not a git repository" outside one) into its results; we keep
    neither, so skip both. Only names that exist are replaced (lm-eval versions differ)."""
    try:
        import lm_eval.evaluator as ev
    except ImportError:  # pragma: no cover
        yield
        return

    def env_info(storage: dict) -> None:
        import transformers

        storage.update({"lm_eval_version": version("lm_eval"), "transformers_version": transformers.__version__})

    saved = {}
    for name, repl in (("add_env_info", env_info), ("get_git_commit_hash", lambda: None)):
        if hasattr(ev, name):
            saved[name] = getattr(ev, name)
            setattr(ev, name, repl)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(ev, name, fn)


def _split_key(k: str) -> tuple[str, str]:
    metric, _, filt = k.partition(",")
    return metric, filt


def _metrics_of(res: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{metric: {"value", "stderr", "filter"}} from one lm-eval results entry (one filter per metric:
    'none' when present, else the first)."""
    out: dict[str, dict[str, Any]] = {}
    for k, v in res.items():
        if "," not in k or "_stderr" in k.split(",")[0]:
            continue
        metric, filt = _split_key(k)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if metric in out and out[metric]["filter"] == "none":
            continue
        if metric in out and filt != "none":
            continue
        se = res.get(f"{metric}_stderr,{filt}")
        se = float(se) if isinstance(se, (int, float)) and not isinstance(se, bool) and math.isfinite(se) else None
        out[metric] = {"value": float(v), "stderr": se, "filter": filt}
    return out


def _scale(metric: str, x: float | None) -> float | None:
    if x is None:
        return None
    return 100.0 * x if metric in PERCENT_METRICS else x


def _pick_metric(wanted: str | None, available: list[str], task: str) -> str | None:
    if wanted and wanted in available:
        return wanted
    if wanted:
        print(
            f"[eval] {task}: reports {available}, not {wanted!r}; using "
            f"{next((m for m in _METRIC_PREFERENCE if m in available), available[0] if available else None)!r}",
            file=sys.stderr,
        )
    for m in _METRIC_PREFERENCE:
        if m in available:
            return m
    return available[0] if available else None


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


# ------------------------------------------------------------------------------- continuous metrics

CONTINUOUS = ("bpb", "logprob")
_LN2 = math.log(2.0)
# (accuracy average, prefix of its bpb/logprob averages)
_GROUPS = (("in_domain_avg", "in_domain"), ("out_of_domain_avg", "out_of_domain"), ("average", "average"))
_AVGS = tuple(a for a, _ in _GROUPS) + tuple(f"{p}_{k}" for k in CONTINUOUS for _, p in _GROUPS)


def _loglik(resp: Any) -> float | None:
    """The log-likelihood of one loglikelihood request's response (``[(ll, is_greedy)]``), else None
    (a generation's string, a rolling log-likelihood)."""
    r = resp[0] if isinstance(resp, list) and len(resp) == 1 else resp
    if (
        isinstance(r, (tuple, list))
        and len(r) == 2
        and isinstance(r[1], (bool, np.bool_))
        and isinstance(r[0], (int, float, np.floating))
    ):
        return float(r[0])
    return None


def _is_index(g: Any, n: int) -> bool:
    return isinstance(g, (int, np.integer)) and not isinstance(g, (bool, np.bool_)) and 0 <= int(g) < n


def _gold_indices(sample: Mapping[str, Any], task: Any, conts: list[str]) -> list[int]:
    """The gold request(s) of one document, resolved as lm-eval's ConfigurableTask.process_results does.

    ``task`` (the leaf Task) is needed for tasks whose logged ``target`` is not the gold index: a
    multiple_input task (winogrande: the gold is the context, ``doc_to_text``) and a string target
    (``doc_to_choice(doc).index``). Without it a string target is matched against the continuations with
    their leading delimiter whitespace stripped."""
    doc = sample.get("doc")
    if task is not None and getattr(task, "OUTPUT_TYPE", None) == "loglikelihood":
        return [0] if conts else []
    multi_input = task is not None and bool(getattr(task, "multiple_input", False))
    gold = task.doc_to_text(doc) if multi_input else sample.get("target")
    if isinstance(gold, str):
        choices = list(task.doc_to_choice(doc)) if task is not None else [c.lstrip() for c in conts]
        gold = choices.index(gold) if gold in choices else None
    golds = list(gold) if isinstance(gold, (list, tuple)) else [gold]
    return [int(g) for g in golds if _is_index(g, len(conts))]


def gold_scores(sample: Mapping[str, Any], task: Any = None) -> tuple[float, float] | None:
    """(log p(gold | context), bits per byte of the gold) of one logged lm-eval document; None when it has
    no log-likelihood requests (generation) or no valid gold.

    The bytes are those of the continuation exactly as scored: the request's continuation (for
    multiple_choice ``target_delimiter + choice``, e.g. " teal."), plus any trailing whitespace of the
    context, which lm-eval's TemplateLM moves into the continuation before scoring. The delimiter counts
    because its token's log-probability is in the sum (OLMES divides by the bytes of the request's
    continuation as well). Several golds (a list target): the most likely one, the answer that would earn
    the accuracy credit."""
    args, resps = list(sample.get("arguments") or []), list(sample.get("resps") or [])
    lls = [_loglik(r) for r in resps]
    if (
        not args
        or len(args) != len(lls)
        or any(x is None for x in lls)
        or not all(isinstance(a, (tuple, list)) and len(a) >= 2 and isinstance(a[1], str) for a in args)
    ):
        return None
    golds = _gold_indices(sample, task, [a[1] for a in args])
    if not golds:
        return None
    i = max(golds, key=lambda g: lls[g])
    ctx, cont = args[i][0], args[i][1]
    scored = (ctx[len(ctx.rstrip()) :] if isinstance(ctx, str) else "") + cont
    return lls[i], -lls[i] / _LN2 / max(len(scored.encode("utf-8")), 1)


def continuous_scores(samples: list[Mapping[str, Any]], task: Any = None) -> dict | None:
    """{"bpb", "logprob", "n"}: means over the documents of one task's logged samples (one filter's, as a
    task with several filters logs each document once per filter); None when no document has a
    log-likelihood gold (generation tasks)."""
    filters = [s.get("filter") for s in samples]
    keep = "none" if "none" in filters else (filters[0] if filters else None)
    got = [g for s in samples if s.get("filter") == keep for g in [gold_scores(s, task)] if g is not None]
    if not got:
        return None
    return {"logprob": float(np.mean([g[0] for g in got])), "bpb": float(np.mean([g[1] for g in got])), "n": len(got)}


def _over_leaves(leaves: list[str], cont: Mapping[str, dict | None], by_size: bool) -> dict:
    """A group's continuous metrics from its leaves', combined as lm-eval combines a group's accuracy
    (``aggregate_subtask_metrics``: weighted by documents when ``weight_by_size``, else a plain mean)."""
    got = [cont[t] for t in leaves if cont.get(t)]
    if not got:
        return {k: None for k in CONTINUOUS}
    w = [float(g["n"]) if by_size else 1.0 for g in got]
    return {k: float(np.dot([g[k] for g in got], w) / sum(w)) for k in CONTINUOUS}


def group_weighting(objs: list) -> dict[str, dict[str, bool]]:
    """{group: {metric: weight_by_size}} from the group objects' ``aggregate_metric_list``."""
    from lm_eval.api.group import Group

    return {
        o.name: {str(a.metric): bool(a.weight_by_size) for a in (o.aggregate_metric_list or [])}
        for o in objs
        if isinstance(o, Group)
    }


def _pop_continuous(raw: dict, objs: list) -> dict[str, dict | None]:
    """{leaf task: :func:`continuous_scores`} from lm-eval's logged samples, which are dropped from ``raw``:
    they hold every document and request, and only the per-task means are kept (never written to disk)."""
    leaf_objs = {leaf.task_name: leaf for obj in objs for leaf in T.leaf_tasks(obj)}
    return {t: continuous_scores(s, leaf_objs.get(t)) for t, s in (raw.pop("samples", None) or {}).items()}


def _by_size(weighting: Mapping[str, Mapping[str, bool]], group: str, metric: str) -> bool:
    w = weighting.get(group) or {}
    return bool(w.get(metric, next(iter(w.values()), True)))


def summarise(
    raw: Mapping[str, Any],
    cfg: EvalConfig,
    names: list[str],
    expand: Mapping[str, list[str]],
    ind: list[str],
    ood: list[str],
    continuous: Mapping[str, dict | None] | None = None,
    weighting: Mapping[str, Mapping[str, bool]] | None = None,
) -> dict:
    """The results.json entry from lm-eval's output ``raw`` (see the module docstring).

    ``continuous``: {leaf task: :func:`continuous_scores`} from the logged samples; ``weighting``:
    {group: {metric: weight_by_size}} (:func:`group_weighting`), how a group combines its leaves."""
    results = raw.get("results", {})
    tasks: dict[str, dict] = {}
    for name in names:
        for leaf in expand.get(name, [name]):
            if results.get(leaf) is None:
                continue
            metrics = _metrics_of(results[leaf])
            m = _pick_metric(cfg.metric_for(name), list(metrics), leaf)
            if m is None:
                continue
            tasks[leaf] = _task_entry(raw, leaf, m, metrics, task_group(name, ind, ood))
            leaves = _all_leaves(raw, leaf)
            tasks[leaf].update(_over_leaves(leaves, continuous or {}, _by_size(weighting or {}, leaf, m)))

    def avg(group: str | None, key: str = "value") -> float | None:
        # accuracy averages only proportion metrics; bpb/logprob exist only for log-likelihood tasks
        return _mean(
            [
                t[key]
                for t in tasks.values()
                if t.get(key) is not None
                and (group is None or t["group"] == group)
                and (key != "value" or t["percent"])
            ]
        )

    out = {
        "tasks": tasks,
        "in_domain_avg": avg("in_domain"),
        "out_of_domain_avg": avg("out_of_domain"),
        "average": avg(None),
        "n_shot": {k: v["n_shot"] for k, v in tasks.items()},
    }
    for k in CONTINUOUS:
        out.update(
            {
                f"in_domain_{k}": avg("in_domain", k),
                f"out_of_domain_{k}": avg("out_of_domain", k),
                f"average_{k}": avg(None, k),
            }
        )
    return out


def _task_entry(raw: Mapping[str, Any], leaf: str, m: str, metrics: dict, group: str) -> dict:
    leaves = _all_leaves(raw, leaf)
    ns = [raw.get("n-samples", {}).get(t, {}).get("effective") for t in leaves]
    n_shot = raw.get("n-shot", {})
    shots = sorted({n_shot.get(t) for t in leaves if n_shot.get(t) is not None})
    return {
        "metric": m,
        "value": _scale(m, metrics[m]["value"]),
        "stderr": _scale(m, metrics[m]["stderr"]),
        "group": group,
        "percent": m in PERCENT_METRICS,
        "n_shot": shots[0] if len(shots) == 1 else (shots or None),
        "n_samples": int(sum(x for x in ns if x is not None)) if any(x is not None for x in ns) else None,
        "subtasks": len(leaves) if raw.get("group_subtasks", {}).get(leaf) else None,
        "metrics": {
            k: {"value": _scale(k, v["value"]), "stderr": _scale(k, v["stderr"]), "filter": v["filter"]}
            for k, v in metrics.items()
        },
    }


def _all_leaves(raw: Mapping[str, Any], name: str) -> list[str]:
    gs = raw.get("group_subtasks", {})
    if name not in gs or not gs[name]:
        return [name]
    out = []
    for c in gs[name]:
        out.extend(_all_leaves(raw, c))
    return out


def _fmt(x: float | None, nd: int = 2) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def format_table(entry: Mapping[str, Any]) -> str:
    tasks = entry["tasks"]
    w = max([len("out-of-domain average")] + [len(t) for t in tasks])
    lines = [f"{'task':<{w}}  {'group':<13}  {'metric':<11}  {'value':>7}  {'± stderr':>8}  {'n':>6}  {'bpb':>6}"]
    for name, t in tasks.items():
        lines.append(
            f"{name:<{w}}  {t['group'].replace('_', '-'):<13}  {t['metric']:<11}  {_fmt(t['value']):>7}  "
            f"{_fmt(t['stderr']):>8}  {t['n_samples'] if t['n_samples'] is not None else '':>6}  "
            f"{_fmt(t.get('bpb'), 3):>6}"
        )
    for (key, prefix), label in zip(_GROUPS, ("in-domain average", "out-of-domain average", "average")):
        val, bpb = entry.get(key), entry.get(f"{prefix}_bpb")
        if val is not None or bpb is not None:
            lines.append(f"{label:<{w}}  {'':<13}  {'':<11}  {_fmt(val):>7}  {'':>8}  {'':>6}  {_fmt(bpb, 3):>6}")
    return "\n".join(lines)


def preflight(eval_cfg: Any) -> None:
    """Check an eval config before training, so that a mistake in it fails in seconds, not after the run:
    the values, the task folders, that every task name is known, and that the tasks from the user's own
    folders (``eval.include_path``) load with their data. Built-in tasks are not loaded here (that may need
    the hub). Raises ConfigError / DataError."""
    cfg = T.eval_config(eval_cfg)
    if cfg.name == "none":
        return
    names = named_tasks(cfg)
    paths = T.include_paths(cfg)
    user = [Path(p).expanduser().resolve() for p in cfg.include_path]
    with _quiet(cfg.log_level):
        tm = T.resolve(cfg, names)
        for n in names:
            if user and T._from_folders(tm, n, user):
                T.load_task(tm, n, paths)


# ---------------------------------------------------------------------------------------- the stage


def _load_tasks(cfg: EvalConfig, names: list[str], tm: Any, paths: list) -> tuple[list, dict[str, list[str]]]:
    """The lm-eval task objects of ``names`` with their few-shot counts set, and what each name reports: itself (a
    task or a group) or, for a tag, each of its tasks."""
    objs, expand = [], {}
    for n in names:
        loaded = T.load_task(tm, n, paths)
        if n in loaded["groups"]:
            top = [loaded["groups"][n]]
            expand[n] = [n]
        elif n in loaded["tasks"]:
            top = [loaded["tasks"][n]]
            expand[n] = [n]
        else:  # a tag: its tasks, each reported on its own
            top = list(loaded["tasks"].values())
            expand[n] = list(loaded["tasks"])
        k = cfg.shots_for(n)
        for obj in top:
            for leaf in T.leaf_tasks(obj):
                if k is not None:
                    leaf.set_config(key="num_fewshot", value=int(k))
        objs.extend(top)
    return objs, expand


def _score(
    cfg: EvalConfig, model: torch.nn.Module, tokenizer: Any, device: Any, objs: list, tm: Any, boot: int
) -> tuple[dict | None, int]:
    """lm-eval's ``simple_evaluate`` on the model (its mode and the RNG streams restored afterwards): the raw
    results, and the tokens its forward passes saw (the compute ledger's count)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    if device is not None:
        model.to(device)
    was_training = model.training
    counter = {"tokens": 0}

    def count(_mod: Any, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs.get("input_ids")
        if isinstance(x, torch.Tensor):
            counter["tokens"] += int(x.numel())

    hook = model.register_forward_pre_hook(count, with_kwargs=True)
    dev = next(model.parameters()).device
    mp = None
    if dev.type == "cuda" and cfg.dtype in ("auto", "bf16") and next(model.parameters()).dtype == torch.float32:
        mp = torch.bfloat16
    try:
        with _rng_preserved(), _light_env_info():
            lm = HFLM(
                pretrained=model,
                tokenizer=tokenizer,
                batch_size=cfg.batch_size,
                max_batch_size=int(cfg.max_batch_size or 64),
                mixed_precision_dtype=mp,
            )
            raw = simple_evaluate(
                model=lm,
                tasks=objs,
                num_fewshot=None,
                limit=cfg.limit,
                bootstrap_iters=boot,
                task_manager=tm,
                log_samples=True,
                random_seed=0,
                numpy_random_seed=1234,
                torch_random_seed=1234,
                fewshot_random_seed=1234,
            )
    finally:
        hook.remove()
        model.train(was_training)
    return raw, counter["tokens"]


def evaluate(
    eval_cfg: Any,
    model: torch.nn.Module,
    tokenizer: Any,
    run_dir: Path,
    logger: Any = None,
    step: int | None = None,
    device: Any = None,
    *,
    final: bool = True,
    quiet: bool = False,
) -> dict | None:
    """Score the tasks of ``eval_cfg`` on ``model`` in-process; the results.json "eval" entry, or None.

    None when ``eval_cfg.name == "none"``, and on ranks other than 0 under torch.distributed (evaluate on
    rank 0 only, with the unwrapped model). ``final=False`` marks an in-training evaluation (stage
    boundaries): ``eval.stage_bootstrap_iters`` (default 0, no standard errors) instead of
    ``eval.bootstrap_iters``, and no W&B summary. The model's train/eval mode and the global RNG streams
    are restored afterwards. ``forward_tokens`` counts the tokens the model's forward passes saw, for the
    compute ledger (forward FLOPs ~ flops_per_token / 3 per token).
    """
    cfg = T.eval_config(eval_cfg)
    name = cfg.name
    if name == "none":
        return None
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return None
    names, ind, ood = named_tasks(cfg), cfg.in_domain, cfg.out_of_domain
    t0 = time.perf_counter()
    paths = T.include_paths(cfg)
    with _quiet(cfg.log_level):
        tm = T.resolve(cfg, names)
        objs, expand = _load_tasks(cfg, names, tm, paths)
        boot = int(cfg.bootstrap_iters if final else cfg.stage_bootstrap_iters)
        raw, forward_tokens = _score(cfg, model, tokenizer, device, objs, tm, boot)
    if raw is None:  # not rank 0 inside lm-eval's own accounting
        return None
    entry = {
        "preset": name,
        "units": "percent (0-100) for proportion metrics; stderr in the same unit; bpb: bits "
        "per UTF-8 byte of the gold answer (lower is better); logprob: nats",
    }
    entry.update(summarise(raw, cfg, names, expand, ind, ood, _pop_continuous(raw, objs), group_weighting(objs)))
    entry.update(
        {
            "limit": cfg.limit,
            "bootstrap_iters": boot,
            "step": step,
            "final": final,
            "forward_tokens": forward_tokens,
            "wall_time_s": time.perf_counter() - t0,
            "lm_eval_version": raw.get("lm_eval_version"),
        }
    )
    if not quiet:
        where = f" at step {step}" if step is not None else ""
        lim = f", limit {cfg.limit}" if cfg.limit is not None else ""
        print(f"\n[eval] {name}{where}{lim} ({entry['wall_time_s']:.1f}s; scores in %)")
        print(format_table(entry))
    if logger is not None:
        log_entry(logger, entry, step, final)
    return entry


def log_entry(logger: Any, entry: Mapping[str, Any], step: int | None, final: bool = True) -> None:
    """W&B: a table (one row per task and metric, bpb and logprob included), scalars at ``step``, summary
    values at the end."""
    rows = []
    for task, t in entry["tasks"].items():
        for m, v in t["metrics"].items():
            rows.append([task, t["group"], m, v["value"], v["stderr"], m == t["metric"], t["n_samples"], t["n_shot"]])
        rows += [
            [task, t["group"], k, t[k], None, False, t["n_samples"], t["n_shot"]]
            for k in CONTINUOUS
            if t.get(k) is not None
        ]
    for key, prefix in _GROUPS:
        if entry.get(key) is not None:
            rows.append([key, "", "mean", entry[key], None, True, None, None])
        rows += [
            [key, "", k, entry[f"{prefix}_{k}"], None, False, None, None]
            for k in CONTINUOUS
            if entry.get(f"{prefix}_{k}") is not None
        ]
    cols = ["task", "group", "metric", "value", "stderr", "headline", "n_samples", "n_shot"]
    logger.table(f"eval/{entry['preset']}" + ("" if final else "_stage"), cols, rows, step)
    cont = {f"eval/{task}/{k}": t[k] for task, t in entry["tasks"].items() for k in CONTINUOUS if t.get(k) is not None}
    avgs = {f"eval/{k}": entry[k] for k in _AVGS if entry.get(k) is not None}
    if step is not None:
        logger.log({**{f"eval/{task}": t["value"] for task, t in entry["tasks"].items()}, **cont, **avgs}, step)
    if final:
        summ = {f"eval/{task}/{t['metric']}": t["value"] for task, t in entry["tasks"].items()}
        summ.update(
            {
                f"eval/{task}/{t['metric']}_stderr": t["stderr"]
                for task, t in entry["tasks"].items()
                if t["stderr"] is not None
            }
        )
        logger.summary({**summ, **cont, **avgs})


def stage_evaluator(
    eval_cfg: Any,
    tokenizer: Any,
    run_dir: Path,
    logger: Any = None,
    ledger: Any = None,
    flops_per_token: float | None = None,
):
    """For ``eval.every_stage: true``: a function ``(model, step) -> entry`` to call at each mixture-stage
    boundary (before that step's training), or None when the config asks for no stage evaluations.

    Each call evaluates in-training (``final=False``: no standard errors unless
    ``eval.stage_bootstrap_iters`` > 0), logs the scores at ``step`` and charges the forward passes to
    ``ledger`` as "eval" (``flops_per_token / 3`` per token: forward only)."""
    cfg = T.eval_config(eval_cfg)
    if cfg.name == "none" or not cfg.every_stage:
        return None

    def run_stage_eval(model: torch.nn.Module, step: int) -> dict | None:
        entry = evaluate(cfg, model, tokenizer, run_dir, logger=logger, step=step, final=False)
        charge(ledger, flops_per_token, entry)
        return entry

    return run_stage_eval


def charge(ledger: Any, flops_per_token: float | None, entry: Mapping[str, Any] | None) -> None:
    """Charge an evaluation's forward passes to the compute ledger's "eval" category."""
    if ledger is not None and flops_per_token and entry and entry.get("forward_tokens"):
        ledger.add("eval", float(flops_per_token) / 3.0 * float(entry["forward_tokens"]))
