"""The evaluation stage: lm-eval tasks scored in-process on the model object, no reload.

:func:`evaluate` wraps the (trained) model in lm-eval's ``HFLM`` with the run's tokenizer, scores the
tasks of the ``eval=`` preset with ``simple_evaluate``, prints a table, logs a W&B table (one row per task
and metric) and summary values, and returns the entry that goes into ``results.json["eval"]``.

Scores are in percent (0-100, like the paper's tables) for proportion metrics (acc, acc_norm,
exact_match, ...), with their standard errors in the same unit; other metrics (perplexities, ...) are kept
as lm-eval reports them and left out of the averages. ``average`` is the mean over all tasks, and
``in_domain_avg`` / ``out_of_domain_avg`` over the preset's two groups (TiKMiX Table 1: in-domain MMLU,
HellaSwag, ARC-E, ARC-C, TriviaQA; out-of-domain PIQA, OpenBookQA, BoolQ, MathQA).
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from eval import tasks as T
from tikmix.errors import ConfigError

PERCENT_METRICS = {"acc", "acc_norm", "acc_mutual_info", "exact_match", "em", "f1", "mcc", "contains",
                   "pass@1", "acc_bytes"}
_METRIC_PREFERENCE = ("acc_norm", "acc", "exact_match", "em", "f1")


# -------------------------------------------------------------------------------------------- config


def check_config(cfg: Mapping[str, Any]) -> dict:
    """Validate an eval config (a plain dict); returns normalised values. Raises ConfigError."""
    tasks = T.as_list(cfg.get("tasks"), "eval.tasks")
    if not tasks:
        raise ConfigError("eval.tasks", f"eval={cfg.get('name')} names no tasks; give eval.tasks=[...] or use eval=none")
    dup = sorted({t for t in tasks if tasks.count(t) > 1})
    if dup:
        raise ConfigError("eval.tasks", f"task(s) listed twice: {dup}")
    ind = T.as_list(cfg.get("in_domain"), "eval.in_domain")
    ood = T.as_list(cfg.get("out_of_domain"), "eval.out_of_domain")
    both = sorted(set(ind) & set(ood))
    if both:
        raise ConfigError("eval.in_domain", f"task(s) {both} are listed both in-domain and out-of-domain")
    limit = cfg.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        raise ConfigError("eval.limit", f"must be null (all examples), a positive integer, or a fraction in (0, 1); got {limit!r}")
    if isinstance(limit, float) and limit >= 1:
        limit = int(limit)
    shots = cfg.get("num_fewshot")
    if isinstance(shots, Mapping):
        bad = [k for k, v in shots.items() if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0)]
        if bad:
            raise ConfigError("eval.num_fewshot", f"shots must be integers >= 0 (or null = the task's default), bad for {bad}")
    elif shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 0):
        raise ConfigError("eval.num_fewshot", f"must be an integer >= 0, a mapping task -> shots, or null; got {shots!r}")
    metric = cfg.get("metric")
    if metric is not None and not isinstance(metric, (str, Mapping)):
        raise ConfigError("eval.metric", f"must be a metric name, a mapping task -> metric, or null; got {metric!r}")
    bs = cfg.get("batch_size", 32)
    if not ((isinstance(bs, int) and not isinstance(bs, bool) and bs > 0) or (isinstance(bs, str) and bs.startswith("auto"))):
        raise ConfigError("eval.batch_size", f"must be a positive integer or 'auto'; got {bs!r}")
    for key in ("bootstrap_iters", "stage_bootstrap_iters"):
        v = cfg.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"eval.{key}", f"must be an integer >= 0; got {v!r}")
    if str(cfg.get("dtype", "auto")) not in ("auto", "bf16", "fp32"):
        raise ConfigError("eval.dtype", f"must be auto, bf16 or fp32; got {cfg.get('dtype')!r}")
    return {"tasks": tasks, "in_domain": ind, "out_of_domain": ood, "limit": limit, "batch_size": bs}


def task_group(name: str, ind: list[str], ood: list[str]) -> str:
    return "in_domain" if name in ind else "out_of_domain" if name in ood else "other"


def shots_for(cfg: Mapping[str, Any], task: str) -> int | None:
    s = cfg.get("num_fewshot")
    if isinstance(s, Mapping):
        return s.get(task, s.get("default"))
    return s


def metric_for(cfg: Mapping[str, Any], task: str) -> str | None:
    m = cfg.get("metric")
    if isinstance(m, Mapping):
        return m.get(task, m.get("default"))
    return m


# ------------------------------------------------------------------------------------------ helpers


@contextlib.contextmanager
def _quiet(level: str | None) -> Iterator[None]:
    lg = logging.getLogger("lm_eval")
    old = lg.level
    lg.setLevel(getattr(logging, str(level or "ERROR").upper(), logging.ERROR))
    try:
        yield
    finally:
        lg.setLevel(old)


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
        from importlib.metadata import version

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
        print(f"[eval] {task}: reports {available}, not {wanted!r}; using "
              f"{next((m for m in _METRIC_PREFERENCE if m in available), available[0] if available else None)!r}",
              file=sys.stderr)
    for m in _METRIC_PREFERENCE:
        if m in available:
            return m
    return available[0] if available else None


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


def summarise(raw: Mapping[str, Any], cfg: Mapping[str, Any], names: list[str], expand: Mapping[str, list[str]],
              ind: list[str], ood: list[str]) -> dict:
    """The results.json entry from lm-eval's output ``raw`` (see the module docstring)."""
    results = raw.get("results", {})
    n_shot = raw.get("n-shot", {})
    n_samples = raw.get("n-samples", {})
    tasks: dict[str, dict] = {}
    for name in names:
        for leaf in expand.get(name, [name]):
            entry = results.get(leaf)
            if entry is None:
                continue
            metrics = _metrics_of(entry)
            m = _pick_metric(metric_for(cfg, name), list(metrics), leaf)
            if m is None:
                continue
            leaves = _all_leaves(raw, leaf)
            ns = [n_samples.get(t, {}).get("effective") for t in leaves]
            shots = sorted({n_shot.get(t) for t in leaves if n_shot.get(t) is not None})
            tasks[leaf] = {
                "metric": m,
                "value": _scale(m, metrics[m]["value"]),
                "stderr": _scale(m, metrics[m]["stderr"]),
                "group": task_group(name, ind, ood),
                "percent": m in PERCENT_METRICS,
                "n_shot": shots[0] if len(shots) == 1 else (shots or None),
                "n_samples": int(sum(x for x in ns if x is not None)) if any(x is not None for x in ns) else None,
                "subtasks": len(leaves) if raw.get("group_subtasks", {}).get(leaf) else None,
                "metrics": {k: {"value": _scale(k, v["value"]), "stderr": _scale(k, v["stderr"]), "filter": v["filter"]}
                            for k, v in metrics.items()},
            }
    def avg(group: str | None) -> float | None:
        return _mean([t["value"] for t in tasks.values() if t["percent"] and t["value"] is not None
                      and (group is None or t["group"] == group)])
    return {
        "tasks": tasks,
        "in_domain_avg": avg("in_domain"),
        "out_of_domain_avg": avg("out_of_domain"),
        "average": avg(None),
        "n_shot": {k: v["n_shot"] for k, v in tasks.items()},
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
    lines = [f"{'task':<{w}}  {'group':<13}  {'metric':<11}  {'value':>7}  {'± stderr':>8}  {'n':>6}"]
    for name, t in tasks.items():
        lines.append(f"{name:<{w}}  {t['group'].replace('_', '-'):<13}  {t['metric']:<11}  {_fmt(t['value']):>7}  "
                     f"{_fmt(t['stderr']):>8}  {t['n_samples'] if t['n_samples'] is not None else '':>6}")
    for label, key in (("in-domain average", "in_domain_avg"), ("out-of-domain average", "out_of_domain_avg"), ("average", "average")):
        if entry.get(key) is not None:
            lines.append(f"{label:<{w}}  {'':<13}  {'':<11}  {_fmt(entry[key]):>7}")
    return "\n".join(lines)


def preflight(eval_cfg: Any) -> None:
    """Check an eval config before training, so that a mistake in it fails in seconds, not after the run:
    the values, the task folders, that every task name is known, and that the tasks from the user's own
    folders (``eval.include_path``) load with their data. Built-in tasks are not loaded here (that may need
    the hub). Raises ConfigError / DataError."""
    cfg = T.cfg_dict(eval_cfg)
    if (cfg.get("name") or "none") == "none":
        return
    names = check_config(cfg)["tasks"]
    paths = T.include_paths(cfg)
    user = [Path(p).expanduser().resolve() for p in T.as_list(cfg.get("include_path"), "eval.include_path")]
    with _quiet(cfg.get("log_level")):
        tm = T.resolve(cfg, names)
        for n in names:
            if user and T._from_folders(tm, n, user):
                T.load_task(tm, n, paths)


# ---------------------------------------------------------------------------------------- the stage


def evaluate(eval_cfg: Any, model: torch.nn.Module, tokenizer: Any, run_dir: Path, logger: Any = None,
             step: int | None = None, device: Any = None, *, final: bool = True, quiet: bool = False) -> dict | None:
    """Score the tasks of ``eval_cfg`` on ``model`` in-process; the results.json "eval" entry, or None.

    None when ``eval_cfg.name == "none"``, and on ranks other than 0 under torch.distributed (evaluate on
    rank 0 only, with the unwrapped model). ``final=False`` marks an in-training evaluation (stage
    boundaries): ``eval.stage_bootstrap_iters`` (default 0, no standard errors) instead of
    ``eval.bootstrap_iters``, and no W&B summary. The model's train/eval mode and the global RNG streams
    are restored afterwards. ``forward_tokens`` counts the tokens the model's forward passes saw, for the
    compute ledger (forward FLOPs ~ flops_per_token / 3 per token).
    """
    cfg = T.cfg_dict(eval_cfg)
    name = cfg.get("name") or "none"
    if name == "none":
        return None
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return None
    chk = check_config(cfg)
    names, ind, ood = chk["tasks"], chk["in_domain"], chk["out_of_domain"]
    t0 = time.perf_counter()
    paths = T.include_paths(cfg)
    with _quiet(cfg.get("log_level")):
        tm = T.resolve(cfg, names)
        objs, expand, shots_used = [], {}, {}
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
            k = shots_for(cfg, n)
            for obj in top:
                for leaf in T.leaf_tasks(obj):
                    if k is not None:
                        leaf.set_config(key="num_fewshot", value=int(k))
            objs.extend(top)
            shots_used[n] = k

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
        if dev.type == "cuda" and str(cfg.get("dtype", "auto")) in ("auto", "bf16") and \
                next(model.parameters()).dtype == torch.float32:
            mp = torch.bfloat16
        boot = int(cfg.get("bootstrap_iters", 1000) if final else cfg.get("stage_bootstrap_iters", 0))
        try:
            with _rng_preserved(), _light_env_info():
                lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=chk["batch_size"],
                          max_batch_size=int(cfg.get("max_batch_size") or 64), mixed_precision_dtype=mp)
                raw = simple_evaluate(
                    model=lm, tasks=objs, num_fewshot=None, limit=chk["limit"], bootstrap_iters=boot,
                    task_manager=tm, log_samples=False, random_seed=0, numpy_random_seed=1234,
                    torch_random_seed=1234, fewshot_random_seed=1234,
                )
        finally:
            hook.remove()
            model.train(was_training)
    if raw is None:  # not rank 0 inside lm-eval's own accounting
        return None
    entry = {"preset": name, "units": "percent (0-100) for proportion metrics; stderr in the same unit"}
    entry.update(summarise(raw, cfg, names, expand, ind, ood))
    entry.update({
        "limit": chk["limit"],
        "bootstrap_iters": boot,
        "step": step,
        "final": final,
        "forward_tokens": counter["tokens"],
        "wall_time_s": time.perf_counter() - t0,
        "lm_eval_version": raw.get("lm_eval_version"),
    })
    if not quiet:
        where = f" at step {step}" if step is not None else ""
        lim = f", limit {chk['limit']}" if chk["limit"] is not None else ""
        print(f"\n[eval] {name}{where}{lim} ({entry['wall_time_s']:.1f}s; scores in %)")
        print(format_table(entry))
    if logger is not None:
        log_entry(logger, entry, step, final)
    return entry


def log_entry(logger: Any, entry: Mapping[str, Any], step: int | None, final: bool = True) -> None:
    """W&B: a table (one row per task and metric), scalars at ``step``, summary values at the end."""
    rows = []
    for task, t in entry["tasks"].items():
        for m, v in t["metrics"].items():
            rows.append([task, t["group"], m, v["value"], v["stderr"], m == t["metric"], t["n_samples"], t["n_shot"]])
    for label, key in (("in_domain_avg", "in_domain_avg"), ("out_of_domain_avg", "out_of_domain_avg"), ("average", "average")):
        if entry.get(key) is not None:
            rows.append([label, "", "mean", entry[key], None, True, None, None])
    cols = ["task", "group", "metric", "value", "stderr", "headline", "n_samples", "n_shot"]
    logger.table(f"eval/{entry['preset']}" + ("" if final else "_stage"), cols, rows, step)
    scalars = {f"eval/{task}": t["value"] for task, t in entry["tasks"].items()}
    scalars.update({f"eval/{k}": entry[k] for k in ("in_domain_avg", "out_of_domain_avg", "average") if entry.get(k) is not None})
    if step is not None:
        logger.log(scalars, step)
    if final:
        summ = {f"eval/{task}/{t['metric']}": t["value"] for task, t in entry["tasks"].items()}
        summ.update({f"eval/{task}/{t['metric']}_stderr": t["stderr"] for task, t in entry["tasks"].items() if t["stderr"] is not None})
        summ.update({f"eval/{k}": entry[k] for k in ("in_domain_avg", "out_of_domain_avg", "average") if entry.get(k) is not None})
        logger.summary(summ)


def stage_evaluator(eval_cfg: Any, tokenizer: Any, run_dir: Path, logger: Any = None, ledger: Any = None,
                    flops_per_token: float | None = None):
    """For ``eval.every_stage: true``: a function ``(model, step) -> entry`` to call at each mixture-stage
    boundary (before that step's training), or None when the config asks for no stage evaluations.

    Each call evaluates in-training (``final=False``: no standard errors unless
    ``eval.stage_bootstrap_iters`` > 0), logs the scores at ``step`` and charges the forward passes to
    ``ledger`` as "eval" (``flops_per_token / 3`` per token: forward only)."""
    cfg = T.cfg_dict(eval_cfg)
    if (cfg.get("name") or "none") == "none" or not cfg.get("every_stage"):
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
