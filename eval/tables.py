"""The paper's tables and figures from finished runs: ``python -m eval.tables <dirs or sweep dir>``.

    python -m eval.tables multirun/2026-01-01/12-00-00               # a sweep: mixers x seeds
    python -m eval.tables run_a run_b run_c --out report/ --wandb     # + a W&B run with the tables and figures,
                                                                      #   in the runs' W&B group (their sweep)
    python -m eval.tables SWEEP --oracle results/oracle               # + regret against the best static mixture
    python -m eval.tables SWEEP --oracle results/oracle --schedule-oracle results/oracle_schedule
                                                                      # + against the best schedule, gain captured

Every ``results.json`` under the given folders is one run (sub-runs of mixers, under ``subruns/``, are
skipped). Runs are grouped by setting (model / budget / data) and, within a setting, by mixer across seeds.
``--preset P`` reports each run's latest evaluation of preset P, its own or a re-scoring by ``python -m eval``
(``results.json["rescored"]``), a full one before a limited one. Every table marks a limited evaluation
(``eval.limit``: a subset of each task's examples) with † and names it in a note.

Written into ``--out`` (default: the first folder):

* ``table1.md`` / ``table1.csv``: TiKMiX Table 1's layout: benchmarks as rows (in-domain, then
  out-of-domain), mixers as columns, mean ± std over seeds (sample std, n-1), the in-domain /
  out-of-domain / overall Average rows and the "Mixture-search FLOPs" row (``compute.mixer_total``, mean
  over seeds). Scores are percent. Then the same layout for the gold answer's bits per byte (lower is
  better) and mean log-probability, with their group averages, over the log-likelihood tasks (rows with
  metric ``bpb`` / ``logprob`` in the CSV). A run that crashed (no results.json) or has no evaluation
  leaves its cells out, "—" when no seed is left; the notes under the table list such runs.
* ``perplexity.md`` / ``perplexity.csv``: Aioli Table 2's layout: for each setting, the change in average
  test perplexity against the ``stratified`` mixer (paired by seed when both have it), and the number of
  settings where a mixer beats stratified; then the per-domain test perplexities of each setting.
* ``mixture_<mixer>.png``: each mixer's mixture weights over training (stacked area, mean over seeds);
  ``score_vs_compute.png``: downstream average against mixture-search FLOPs; ``bpb_vs_compute.png``: the
  average gold-answer BPB against them (lower is better); ``ppl_vs_compute.png``: average test perplexity
  against mixture-search FLOPs (the comparison when there are no downstream tasks); ``influence_<mixer>.png``:
  per-domain influence on each target over the stages, when the mixer's history records it (TiKMiX).
* with ``--oracle PATH`` (an ``oracle.json`` of ``python -m eval.oracle report``, or a folder holding one):
  ``regret.md`` / ``regret.csv``, per setting one row per mixer: its regret against the best static mixture
  (mixer − oracle, paired by seed, mean and 95% Student t-interval) in in-domain and average BPB and accuracy,
  the L1 distance of its final and time-averaged mixture to the oracle's weights, its mixture-search FLOPs and
  whether it beats the best static mixture (the interval of the regret in the oracle's metric clear of 0); the
  same block closes each setting of ``table1.md``, and ``regret_vs_compute.png`` plots the regret against FLOPs.
* with ``--schedule-oracle PATH`` (an ``oracle_schedule.json`` of ``python -m eval.schedule_oracle report``, or a
  folder holding one): ``regret_schedule.md`` / ``regret_schedule.csv``, per setting one row per mixer: its regret
  against the best schedule (same columns and pairing as above), the L1 distance of its mixture averaged over each
  of the schedule's stages to that stage's mixture, whether it beats the best schedule, and with ``--oracle`` too
  the gain captured (S − M) / (S − B): the share of the best schedule's gain over the best static mixture that the
  mixer recovers; the same block follows the regret block in each setting of ``table1.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from tikmix.mixer import table_order
from tikmix.report import _plt, dominated_linthresh, wandb_groups  # noqa: F401 — tables._plt: the one figure backend
from tikmix.runlog import RunLogger

_SKIP_PARTS = {"subruns", "final_model", "checkpoints", "wandb", "eval_tasks", ".cache", "__pycache__", ".hydra"}
DASH = "—"


@dataclass
class Run:
    path: Path
    mixer: str
    seed: Any
    setting: str
    res: dict | None = None
    problem: str | None = None  # why the run is missing or partial
    eval: dict | None = field(default=None)


# ------------------------------------------------------------------------------------------ collect


def _skip(p: Path, roots: list[Path]) -> bool:
    for r in roots:
        try:
            rel = p.relative_to(r)
        except ValueError:
            continue
        return any(part in _SKIP_PARTS for part in rel.parts[:-1])
    return any(part in _SKIP_PARTS for part in p.parts[:-1])


def _setting(model: Any, budget: Any, data: Any, tokens: Any = None) -> str:
    b = f"{budget or '?'}" + (f" ({int(tokens):,} tokens)" if isinstance(tokens, (int, float)) and tokens else "")
    return f"{model or '?'} / {b} / {data or '?'}"


def _config_tokens(d: Path) -> Any:
    """budget.total_tokens from a run's config.yaml (budgets overridden on the command line differ here)."""
    try:
        import yaml

        c = yaml.safe_load((d / "config.yaml").read_text()) or {}
        return (c.get("budget") or {}).get("total_tokens")
    except Exception:  # noqa: BLE001
        return None


def _eval_entry(res: dict, preset: str | None) -> dict | None:
    """The evaluation a table reports: the run's own (``results.json["eval"]``), or with ``preset`` the latest
    evaluation of that preset among the run's own and its re-scorings (``results.json["rescored"]``, written by
    ``python -m eval``; ``"evals"`` of older versions), a full one before a limited one (eval.limit)."""
    if preset:
        own = res.get("eval") if isinstance(res.get("eval"), dict) and res["eval"].get("preset") == preset else None
        legacy = (res.get("evals") or {}).get(preset) if isinstance(res.get("evals"), dict) else None
        cands = [e for e in (own, legacy) if isinstance(e, dict)]
        cands += [e for e in res.get("rescored") or [] if isinstance(e, dict) and e.get("preset") == preset]
        cands = [e for e in cands if e.get("tasks") is not None]
        full = [e for e in cands if eval_limit(e) is None]
        return (full or cands)[-1] if cands else None
    ev = res.get("eval")
    return ev if isinstance(ev, dict) and ev.get("tasks") is not None else None


def collect(dirs: Iterable[str | Path], preset: str | None = None) -> list[Run]:
    """Every run under ``dirs``: finished ones (results.json) and crashed ones (a config.yaml of a run,
    no results.json). Never raises on a bad run: it becomes a Run with ``problem`` set."""
    roots = [Path(d).expanduser().resolve() for d in dirs]
    runs: list[Run] = []
    seen: set[Path] = set()
    for root in roots:
        if not root.exists():
            runs.append(Run(root, "?", None, "?", problem=f"{root} does not exist"))
            continue
        files = [root / "results.json"] if (root / "results.json").exists() else []
        files += [p for p in sorted(root.rglob("results.json")) if p != root / "results.json"]
        for f in files:
            d = f.parent
            if d in seen or _skip(f, roots):
                continue
            seen.add(d)
            try:
                res = json.loads(f.read_text())
                if not isinstance(res, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as e:
                m, s, st = _from_config(d)
                runs.append(Run(d, m, s, st, problem=f"unreadable results.json ({type(e).__name__})"))
                continue
            tokens = _config_tokens(d) or (sum((res.get("tokens_seen") or {}).values()) or None)
            run = Run(
                d,
                str(res.get("mixer", "?")),
                res.get("seed"),
                _setting(res.get("model"), res.get("budget"), res.get("data"), tokens),
                res=res,
            )
            run.eval = _eval_entry(res, preset)
            if run.eval is None and not (preset is None and _eval_off(d)):  # eval=none is a choice, not a gap
                run.problem = f"no evaluation{f' for preset {preset}' if preset else ''} in results.json"
            runs.append(run)
        for c in sorted(root.rglob("config.yaml")) + (
            [root / "config.yaml"] if (root / "config.yaml").exists() else []
        ):
            d = c.parent
            if d in seen or _skip(c, roots) or (d / "results.json").exists():
                continue
            m, s, st = _from_config(d)
            if m is None:
                continue
            seen.add(d)
            runs.append(Run(d, m, s, st, problem="crashed or unfinished (no results.json)"))
    return runs


def eval_limit(entry: Any) -> Any:
    """The ``eval.limit`` an evaluation ran with (examples per task, or a fraction), None for a full evaluation."""
    return entry.get("limit") if isinstance(entry, dict) and entry.get("limit") not in (None, 0) else None


def _eval_off(d: Path) -> bool:
    """The run was configured without downstream tasks (eval=none), per its config.yaml."""
    try:
        import yaml

        ev = (yaml.safe_load((d / "config.yaml").read_text()) or {}).get("eval")
        return isinstance(ev, dict) and "tasks" in ev and not ev["tasks"]
    except Exception:  # noqa: BLE001 - no or unreadable config: not known to be off
        return False


def _from_config(d: Path) -> tuple[str | None, Any, str]:
    try:
        import yaml

        c = yaml.safe_load((d / "config.yaml").read_text()) or {}
        if not isinstance(c, dict) or "mixer" not in c:
            return None, None, "?"
        g = lambda k: (c.get(k) or {}).get("name") if isinstance(c.get(k), dict) else c.get(k)  # noqa: E731
        data = c.get("data", {}).get("source") if isinstance(c.get("data"), dict) else None
        tokens = (c.get("budget") or {}).get("total_tokens") if isinstance(c.get("budget"), dict) else None
        return str(g("mixer")), c.get("seed"), _setting(g("model"), g("budget"), data, tokens)
    except Exception:  # noqa: BLE001 - a broken config is just an unknown run
        return None, None, "?"


def __getattr__(name: str) -> Any:
    # MIXER_ORDER, the tables' row order (references, then the baselines, then TiKMiX), is made from the registry
    # when first asked for, not at import: discovery imports every mixer module, and some build on tikmix.run,
    # which imports this module
    if name == "MIXER_ORDER":
        return table_order()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def mixer_sort_key(m: str) -> tuple:
    """The tables' row order: each mixer's class says where it goes (tikmix.mixer.table_order); mixers of another
    family or not registered follow, by name."""
    order = table_order()
    return (order.index(m), m) if m in order else (len(order), m)


# ------------------------------------------------------------------------------------------- stats


def mean_std(xs: list[float]) -> tuple[float | None, float | None, int]:
    xs = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    if not xs:
        return None, None, 0
    return float(np.mean(xs)), (float(np.std(xs, ddof=1)) if len(xs) > 1 else None), len(xs)


def fmt_ms(m: float | None, s: float | None, nd: int = 1) -> str:
    if m is None:
        return DASH
    return f"{m:.{nd}f} ± {s:.{nd}f}" if s is not None else f"{m:.{nd}f}"


def fmt_flops(x: float | None) -> str:
    if x is None:
        return DASH
    return "0" if x == 0 else f"{x:.2g}".replace("e+", "e")


def _by(runs: list[Run], key) -> dict:
    out: dict = {}
    for r in runs:
        out.setdefault(key(r), []).append(r)
    return out


# ---------------------------------------------------------------------------------------- Table 1


# (benchmark label, accuracy key in results.json["eval"], prefix of its bpb/logprob keys)
_AVERAGES = (
    ("In-domain average", "in_domain_avg", "in_domain"),
    ("Out-of-domain average", "out_of_domain_avg", "out_of_domain"),
    ("Average", "average", "average"),
)
# the continuous sections of Table 1: (metric, title, decimals)
CONTINUOUS = (
    ("bpb", "Bits per byte of the gold answer (lower is better)", 3),
    ("logprob", "Mean log-probability of the gold answer (nats; higher is better)", 2),
)


def _tasks_of(r: Run) -> dict:
    return (r.eval or {}).get("tasks") or {}


def _cells(rs: list[Run], mixers: list[str], value) -> dict:
    return {m: mean_std([value(r) for r in rs if r.mixer == m]) for m in mixers}


def _task_order(rs: list[Run]) -> tuple[list[str], dict[str, str]]:
    """Benchmarks in-domain first, then out-of-domain, each in first-seen order; {task: group}."""
    order: dict[str, str] = {}
    for r in rs:
        for t, v in _tasks_of(r).items():
            order.setdefault(t, v.get("group", "other"))
    rank = {"in_domain": 0, "out_of_domain": 1}
    return sorted(order, key=lambda t: (rank.get(order[t], 2), list(order).index(t))), order


def _score_rows(rs: list[Run], mixers: list[str], tasks: list[str], order: dict[str, str]) -> list[dict]:
    rows = []
    for t in tasks:
        metric = next((_tasks_of(r)[t].get("metric") for r in rs if _tasks_of(r).get(t)), "")
        rows.append(
            {
                "benchmark": t,
                "group": order[t],
                "metric": metric,
                "section": "score",
                "cells": _cells(rs, mixers, lambda r: _tasks_of(r).get(t, {}).get("value")),
            }
        )
    for label, key, _ in _AVERAGES:
        cells = _cells(rs, mixers, lambda r: (r.eval or {}).get(key))
        if any(c[2] for c in cells.values()):
            rows.append({"benchmark": label, "group": "average", "metric": "", "section": "score", "cells": cells})
    return rows


def _continuous_rows(rs: list[Run], mixers: list[str], tasks: list[str], order: dict[str, str], k: str) -> list[dict]:
    """One metric's rows (bpb or logprob): the tasks that have it (log-likelihood tasks; runs from before
    it was recorded have none) and the group averages."""
    rows = [
        {
            "benchmark": t,
            "group": order[t],
            "metric": k,
            "section": k,
            "cells": _cells(rs, mixers, lambda r: _tasks_of(r).get(t, {}).get(k)),
        }
        for t in tasks
    ]
    rows += [
        {
            "benchmark": label,
            "group": "average",
            "metric": k,
            "section": k,
            "cells": _cells(rs, mixers, lambda r: (r.eval or {}).get(f"{prefix}_{k}")),
        }
        for label, _, prefix in _AVERAGES
    ]
    return [row for row in rows if any(c[2] for c in row["cells"].values())]


def table1(runs: list[Run]) -> tuple[list[dict], list[str]]:
    """Per setting: {"setting", "mixers", "rows": [{"benchmark", "group", "metric", "section", "cells": {mixer:
    (mean, std, n)}}]}; ``section`` is "score" (accuracy, percent), "compute", "bpb" or "logprob"."""
    blocks, notes = [], []
    for setting, rs in sorted(_by([r for r in runs if r.setting != "?" or r.res], lambda r: r.setting).items()):
        mixers = sorted({r.mixer for r in rs}, key=mixer_sort_key)
        tasks, order = _task_order(rs)
        rows = _score_rows(rs, mixers, tasks, order)
        flops = _cells([r for r in rs if r.res], mixers, lambda r: (r.res.get("compute") or {}).get("mixer_total"))
        rows.append(
            {
                "benchmark": "Mixture-search FLOPs",
                "group": "compute",
                "metric": "FLOPs",
                "section": "compute",
                "cells": flops,
            }
        )
        for k, _, _ in CONTINUOUS:
            rows += _continuous_rows(rs, mixers, tasks, order, k)
        seeds = {m: sum(1 for r in rs if r.mixer == m and r.eval is not None) for m in mixers}
        runs_n = {m: sum(1 for r in rs if r.mixer == m) for m in mixers}
        limited = {
            m: [(r.seed, eval_limit(r.eval), r.path) for r in rs if r.mixer == m and eval_limit(r.eval) is not None]
            for m in mixers
        }
        if any(limited.values()):  # CSV and W&B: the largest limit per mixer, n = its limited seeds
            rows.append(
                {
                    "benchmark": "Evaluation limit (eval.limit)",
                    "group": "limit",
                    "metric": "limit",
                    "section": "limit",
                    "cells": {
                        m: (max((lv for _, lv, _ in limited[m]), default=None), None, len(limited[m])) for m in mixers
                    },
                }
            )
        blocks.append(
            {"setting": setting, "mixers": mixers, "rows": rows, "seeds": seeds, "runs": runs_n, "limited": limited}
        )
        dup = [(m, s) for (m, s), g in _by([r for r in rs if r.res], lambda r: (r.mixer, r.seed)).items() if len(g) > 1]
        if dup:
            notes.append(f"{setting}: several runs share a (mixer, seed): {dup}; all are averaged")
    for r in runs:
        if r.problem:
            notes.append(f"missing: {r.mixer} seed {r.seed} ({r.setting}) at {r.path}: {r.problem}")
        elif eval_limit(r.eval) is not None:
            notes.append(
                f"limited evaluation ({LIMIT_MARK}): {r.mixer} seed {r.seed} ({r.setting}) at {r.path}: "
                f"eval.limit={eval_limit(r.eval)}"
            )
    return blocks, notes


LIMIT_MARK = "†"


def limit_note(limited: dict[str, list]) -> str | None:
    """One line naming the limited evaluations (eval.limit) behind a table's cells, None when there are none."""
    parts = [
        f"{m} seed{'s' if len(v) > 1 else ''} {', '.join(str(s) for s, _, _ in v)} "
        f"(eval.limit={', '.join(sorted({str(lv) for _, lv, _ in v}))})"
        for m, v in limited.items()
        if v
    ]
    if not parts:
        return None
    return (
        f"{LIMIT_MARK} **Limited evaluation** (eval.limit: a subset of each task's examples, not comparable with a "
        f"full evaluation): " + "; ".join(parts) + "."
    )


def _md_rows(b: dict, rows: list[dict], nd: int = 1) -> list[str]:
    lim = b.get("limited") or {}
    mark = {m: LIMIT_MARK if lim.get(m) else "" for m in b["mixers"]}
    head = ["Benchmark"] + [
        f"{m} (n={b['seeds'][m]}/{b['runs'][m]})" + (f" {LIMIT_MARK} {len(lim[m])} limited" if lim.get(m) else "")
        for m in b["mixers"]
    ]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if row["group"] == "compute":
            cells = [fmt_flops(row["cells"][m][0]) for m in b["mixers"]]
            name = f"**{row['benchmark']}**"
        else:
            cells = [
                fmt_ms(*row["cells"][m][:2], nd=nd) + (mark[m] if row["cells"][m][0] is not None else "")
                for m in b["mixers"]
            ]
            tag = {"in_domain": " (in)", "out_of_domain": " (out)"}.get(row["group"], "")
            name = f"**{row['benchmark']}**" if row["group"] == "average" else f"{row['benchmark']}{tag}"
        out.append("| " + " | ".join([name] + cells) + " |")
    return out


def table1_markdown(
    blocks: list[dict],
    notes: list[str],
    reg: list[dict] | None = None,
    oracle: dict | None = None,
    sreg: list[dict] | None = None,
    so: dict | None = None,
) -> str:
    """Table 1 per setting; with ``reg`` (regret()) and ``oracle``, each setting's regret block under it; with
    ``sreg`` (schedule_regret()) and ``so``, the block against the best schedule after it."""
    out = ["# Table 1: downstream scores (%, mean ± std over seeds)", ""]
    if oracle is not None:
        out += [
            oracle_note(oracle) + " Regret against it: the last block of each setting, and regret.md / regret.csv.",
            "",
        ]
    if so is not None:
        out += [schedule_note(so) + " Regret against it: a block of each setting, and regret_schedule.md / .csv.", ""]
    for b in blocks:
        if len(blocks) > 1:
            out += [f"## {b['setting']}", ""]
        else:
            out += [f"Setting: {b['setting']}", ""]
        if not any(b["seeds"].values()):
            out += [
                "No downstream evaluation in this setting (eval=none); per-domain test perplexity is in "
                "perplexity.md. The compute row still holds.",
                "",
            ]
        note = limit_note(b.get("limited") or {})
        if note:
            out += [note, ""]
        out += _md_rows(b, [r for r in b["rows"] if r["section"] in ("score", "compute")]) + [""]
        for k, title, nd in CONTINUOUS:
            rows = [r for r in b["rows"] if r["section"] == k]
            if rows:
                out += [f"**{title}**, mean ± std over seeds", ""] + _md_rows(b, rows, nd) + [""]
        out += _reference_blocks(b["setting"], reg, oracle, sreg, so)
    out.append(
        "n = seeds with an evaluation / runs found. In-domain benchmarks may serve as mixer targets; "
        "out-of-domain ones never do. FLOPs: compute spent choosing the mixture (compute.mixer_total). "
        "Bits per byte: -log2 p(gold | context) over the UTF-8 bytes of the gold continuation as scored "
        "(its leading space included), mean over documents (OLMES's bits_per_byte_corr); log-probability: "
        "log p(gold | context) in nats, summed over the answer's tokens; both for log-likelihood "
        "(multiple-choice) tasks only, so generation tasks (exact match) are absent from them and from "
        "their averages."
    )
    if oracle is not None:
        out += ["", REGRET_FOOTNOTE]
    if so is not None:
        out += ["", schedule_footnote(oracle is not None)]
    if notes:
        out += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def _reference_blocks(
    setting: str, reg: list[dict] | None, oracle: dict | None, sreg: list[dict] | None, so: dict | None
) -> list[str]:
    """One setting's regret blocks of Table 1: against the best static mixture, then against the best schedule."""
    out: list[str] = []
    rb = next((x for x in reg or [] if x["setting"] == setting), None)
    if oracle is not None and rb is not None:
        out += ["**Regret against the best static mixture** ([regret.md](regret.md))", ""]
        out += regret_table_md(rb, oracle) + [""]
        out += [f"- {n}" for n in rb["notes"]] + ([""] if rb["notes"] else [])
    sb = next((x for x in sreg or [] if x["setting"] == setting), None)
    if so is not None and sb is not None:
        out += ["**Regret against the best schedule** ([regret_schedule.md](regret_schedule.md))", ""]
        out += schedule_table_md(sb, so, oracle) + [""]
        out += [f"- {n}" for n in sb["notes"]] + ([""] if sb["notes"] else [])
    return out


def table1_csv(blocks: list[dict], path: Path) -> None:
    mixers = sorted({m for b in blocks for m in b["mixers"]}, key=mixer_sort_key)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["setting", "benchmark", "group", "metric"] + [f"{m}{s}" for m in mixers for s in ("", "_std", "_n")]
        )
        for b in blocks:
            for row in b["rows"]:
                vals = []
                for m in mixers:
                    c = row["cells"].get(m, (None, None, 0))
                    vals += ["" if c[0] is None else c[0], "" if c[1] is None else c[1], c[2]]
                w.writerow([b["setting"], row["benchmark"], row["group"], row["metric"]] + vals)


# ------------------------------------------------------------------------------- perplexity (Aioli)


def _avg_ppl(r: Run) -> float | None:
    p = (r.res or {}).get("test_ppl") or {}
    vals = [float(v) for v in p.values() if v is not None and math.isfinite(float(v))]
    return float(np.mean(vals)) if vals else None


def perplexity(runs: list[Run], reference: str = "stratified") -> dict:
    """Aioli Table 2 numbers: per setting and mixer, Δ average test ppl vs ``reference`` (paired by seed
    when possible), plus per-domain perplexities."""
    done = [r for r in runs if r.res and r.res.get("test_ppl")]
    settings = sorted({r.setting for r in done})
    mixers = sorted({r.mixer for r in done}, key=mixer_sort_key)
    delta: dict[tuple[str, str], tuple] = {}
    absolute: dict[tuple[str, str], tuple] = {}
    per_domain: dict[str, dict] = {}
    for st in settings:
        rs = [r for r in done if r.setting == st]
        ref = {r.seed: _avg_ppl(r) for r in rs if r.mixer == reference}
        ref_mean = mean_std(list(ref.values()))[0]
        domains: list[str] = []
        for r in rs:
            domains += [d for d in r.res["test_ppl"] if d not in domains]
        per_domain[st] = {"domains": domains, "cells": {}}
        for m in mixers:
            mine = [r for r in rs if r.mixer == m]
            if not mine:
                continue
            absolute[(st, m)] = mean_std([_avg_ppl(r) for r in mine])
            if ref_mean is not None and m != reference:
                ds = [
                    (_avg_ppl(r) - (ref[r.seed] if ref.get(r.seed) is not None else ref_mean))
                    for r in mine
                    if _avg_ppl(r) is not None
                ]
                delta[(st, m)] = mean_std(ds)
            for d in domains:
                per_domain[st]["cells"][(d, m)] = mean_std([r.res["test_ppl"].get(d) for r in mine])
    wins = {}
    for m in mixers:
        compared = [delta[(st, m)] for st in settings if (st, m) in delta and delta[(st, m)][0] is not None]
        wins[m] = (sum(1 for c in compared if c[0] < 0), len(compared))
    return {
        "settings": settings,
        "mixers": mixers,
        "delta": delta,
        "absolute": absolute,
        "wins": wins,
        "per_domain": per_domain,
        "reference": reference,
    }


def perplexity_markdown(p: dict) -> str:
    ref = p["reference"]
    out = [f"# Test perplexity (Aioli Table 2 layout): change in average test perplexity vs `{ref}`", ""]
    if not p["settings"]:
        return "\n".join(out + ["No finished runs with per-domain test perplexity.", ""])
    head = ["Mixer"] + p["settings"] + ["wins"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    if ref in p["mixers"]:
        out.append(
            "| "
            + " | ".join(
                [f"{ref} (avg ppl)"]
                + [fmt_ms(*p["absolute"].get((st, ref), (None, None))[:2], nd=3) for st in p["settings"]]
                + [""]
            )
            + " |"
        )
    for m in p["mixers"]:
        if m == ref:
            continue
        cells = [fmt_ms(*p["delta"].get((st, m), (None, None))[:2], nd=3) for st in p["settings"]]
        w, n = p["wins"][m]
        out.append("| " + " | ".join([m] + cells + [f"{w}/{n}" if n else DASH]) + " |")
    out += [
        "",
        f"Δ = average over domains of test perplexity, minus `{ref}`'s (same seed when it exists, else its mean "
        f"over seeds); mean ± std over seeds; lower is better; wins = settings where Δ < 0.",
    ]
    if ref not in p["mixers"]:
        out += ["", f"No `{ref}` runs: no differences to report."]
    for st in p["settings"]:
        pd_ = p["per_domain"][st]
        ms = [m for m in p["mixers"] if any((d, m) in pd_["cells"] for d in pd_["domains"])]
        out += ["", f"## Per-domain test perplexity: {st}", ""]
        out.append("| Domain | " + " | ".join(ms) + " |")
        out.append("|" + "---|" * (len(ms) + 1))
        for d in pd_["domains"] + ["average"]:
            cells = []
            for m in ms:
                c = (
                    p["absolute"].get((st, m), (None, None, 0))
                    if d == "average"
                    else pd_["cells"].get((d, m), (None, None, 0))
                )
                cells.append(fmt_ms(c[0], c[1], nd=2))
            out.append("| " + " | ".join([f"**{d}**" if d == "average" else d] + cells) + " |")
    return "\n".join(out) + "\n"


def perplexity_csv(p: dict, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["setting", "mixer", "domain", "ppl_mean", "ppl_std", "n", "delta_vs_" + p["reference"], "delta_std"]
        )
        for st in p["settings"]:
            pd_ = p["per_domain"][st]
            for m in p["mixers"]:
                if (st, m) not in p["absolute"]:
                    continue
                a = p["absolute"][(st, m)]
                dl = p["delta"].get((st, m), (None, None, 0))
                w.writerow([st, m, "average", _c(a[0]), _c(a[1]), a[2], _c(dl[0]), _c(dl[1])])
                for d in pd_["domains"]:
                    c = pd_["cells"].get((d, m), (None, None, 0))
                    w.writerow([st, m, d, _c(c[0]), _c(c[1]), c[2], "", ""])


def _c(x: Any) -> Any:
    return "" if x is None else x


# ------------------------------------------------------------------------- regret (the best static mixture)


def shown_path(p: str | Path) -> str:
    """A path as published tables name it: relative to the working directory (the repository, for the README's
    commands) when it lies under it, so a results file never names the machine that made it."""
    q = Path(p).expanduser().resolve()
    try:
        return str(q.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(q)


class OracleError(ValueError):
    """The --oracle input is missing or not an oracle.json of ``python -m eval.oracle report``."""


# (key in results.json["eval"] and in the oracle's per_seed, column label, decimals)
REGRET_METRICS = (
    ("in_domain_bpb", "in-domain BPB", 4),
    ("average_bpb", "average BPB", 4),
    ("in_domain_avg", "in-domain accuracy, pp", 2),
    ("average", "average accuracy, pp", 2),
)
_HIGHER_IS_BETTER = {"in_domain_avg", "out_of_domain_avg", "average"}


def load_oracle(path: str | Path) -> dict:
    """``oracle.json`` (or a folder holding one) checked for what the regret columns read; OracleError if not."""
    return _load_reference(
        path,
        "oracle",
        "oracle.json",
        "python -m eval.oracle report",
        "python -m eval.oracle report",
        _oracle_problem,
        OracleError,
    )


def _load_reference(
    path: str | Path, kind: str, name: str, made_by: str, valid_of: str, problem_of: Any, error: type
) -> dict:
    """A reference file (``name``, or a folder holding one) read and checked by ``problem_of``; ``error`` names
    the file and what is wrong. The path is kept as published tables show it (:func:`shown_path`)."""
    p = Path(path).expanduser()
    f = p / name if p.is_dir() else p
    if not f.is_file():
        raise error(f"no {kind} file at {f} (give an {name}, or a folder holding one, from {made_by})")
    try:
        o = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise error(f"{f} is not readable JSON ({type(e).__name__})") from None
    problem = problem_of(o)
    if problem:
        raise error(f"{f} is not an {name} of {valid_of}: {problem}")
    return {**o, "path": shown_path(f)}


def _oracle_problem(o: Any) -> str | None:
    if not isinstance(o, dict):
        return "not a JSON object"
    best = o.get("best")
    if not isinstance(o.get("metric"), str) or not isinstance(best, dict):
        return "no 'metric' or 'best'"
    w = best.get("weights")
    if not isinstance(w, dict) or not w or not all(isinstance(v, (int, float)) for v in w.values()):
        return "best.weights is not {domain: weight}"
    if not isinstance(best.get("per_seed") or best.get("scores"), dict):
        return "best has neither per_seed nor scores"
    return None


def _oracle_lower(o: dict) -> bool:
    lib = o.get("lower_is_better")
    return bool(lib) if isinstance(lib, bool) else o["metric"] not in _HIGHER_IS_BETTER


def oracle_seed_values(o: dict) -> dict[str, dict[str, float]]:
    """{seed (str): {metric: value}} of the best static mixture; ``scores`` fills in the oracle's own metric."""
    best = o["best"]
    out = {
        str(s): {k: float(v) for k, v in (vals or {}).items() if _finite(v)}
        for s, vals in (best.get("per_seed") or {}).items()
    }
    for s, v in (best.get("scores") or {}).items():
        if _finite(v):
            out.setdefault(str(s), {}).setdefault(o["metric"], float(v))
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _run_value(r: Run, key: str) -> float | None:
    """A headline number of a run: ``eval[key]``, else top-level (target_loss_mean), as eval.oracle reads it."""
    v = (r.eval or {}).get(key, (r.res or {}).get(key))
    return float(v) if _finite(v) else None


def t975(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def paired_regret(mine: dict[str, float], ref: dict[str, float]) -> dict:
    """mine − ref over the seeds both have: mean and 95% Student t-interval (df = n − 1); no interval if n < 2."""
    seeds = sorted(set(mine) & set(ref))
    d = np.array([mine[s] - ref[s] for s in seeds], dtype=float)
    out = {"n": len(d), "seeds": seeds, "mean": float(d.mean()) if len(d) else None, "lo": None, "hi": None}
    if len(d) >= 2:
        half = t975(len(d) - 1) * float(d.std(ddof=1)) / math.sqrt(len(d))
        out.update(lo=out["mean"] - half, hi=out["mean"] + half)
    return out


def beats_oracle(reg: dict, lower_is_better: bool) -> str:
    """yes / no when the 95% interval of the regret is entirely on the better / worse side of 0."""
    if not reg["n"]:
        return DASH
    if reg["lo"] is None:
        return "n<2"
    if reg["hi"] < 0 or reg["lo"] > 0:
        return "yes" if (reg["hi"] < 0) == lower_is_better else "no"
    return "within noise"


def l1(w: dict | None, ref: dict) -> float | None:
    """Σ_d |w_d − ref_d| (0 to 2); None when the domains differ (another corpus: no distance to report)."""
    if not w or set(w) != set(ref):
        return None
    return float(sum(abs(float(w[d]) - float(ref[d])) for d in ref))


def time_averaged_weights(res: dict) -> dict[str, float] | None:
    """The mixture averaged over training: each weights_history entry weighted by the steps it held (from its
    step to the next entry's, the last one to ``steps``)."""
    hist = sorted(
        (h for h in res.get("weights_history") or [] if isinstance(h, dict) and isinstance(h.get("weights"), dict)),
        key=lambda h: h["step"],
    )
    if not hist:
        return None
    end = int(res.get("steps") or hist[-1]["step"] + 1)
    bounds = [int(h["step"]) for h in hist] + [max(end, int(hist[-1]["step"]))]
    held = np.array([max(0, b - a) for a, b in zip(bounds, bounds[1:])], dtype=float)
    if held.sum() <= 0:
        return None
    doms = list(dict.fromkeys(d for h in hist for d in h["weights"]))
    return {d: float(sum(t * float(h["weights"].get(d, 0.0)) for t, h in zip(held, hist)) / held.sum()) for d in doms}


def _mixer_seed_values(rs: list[Run], key: str) -> dict[str, float]:
    """{seed (str): value} of one mixer, duplicate runs of a seed averaged."""
    by: dict[str, list[float]] = {}
    for r in rs:
        v = _run_value(r, key)
        if v is not None and r.seed is not None:
            by.setdefault(str(r.seed), []).append(v)
    return {s: float(np.mean(vs)) for s, vs in by.items()}


def regret_metrics(o: dict) -> list[tuple[str, str, int]]:
    """The regret columns: the four headline numbers, and the oracle's own metric when it is not one of them."""
    keys = [k for k, _, _ in REGRET_METRICS]
    return list(REGRET_METRICS) + ([] if o["metric"] in keys else [(o["metric"], o["metric"], 4)])


def _regret_row(m: str, rs: list[Run], o: dict, ref: dict[str, dict[str, float]]) -> dict:
    w_star = o["best"]["weights"]
    done = [r for r in rs if r.res]
    regs = {
        k: paired_regret(_mixer_seed_values(done, k), {s: v[k] for s, v in ref.items() if k in v})
        for k, _, _ in regret_metrics(o)
    }
    flops = mean_std([(r.res.get("compute") or {}).get("mixer_total") for r in done])[0]
    return {
        "mixer": m,
        "regret": regs,
        "n": regs[o["metric"]]["n"],
        "limited": [(r.seed, eval_limit(r.eval)) for r in done if eval_limit(r.eval) is not None],
        "l1_final": mean_std([l1(r.res.get("final_weights"), w_star) for r in done])[0],
        "l1_time_avg": mean_std([l1(time_averaged_weights(r.res), w_star) for r in done])[0],
        "flops": flops,
        "beats": beats_oracle(regs[o["metric"]], _oracle_lower(o)),
    }


def regret(runs: list[Run], o: dict) -> list[dict]:
    """Per setting: {"setting", "rows": [one per mixer, see _regret_row], "notes"}."""
    ref = oracle_seed_values(o)
    blocks = []
    for setting, rs in sorted(_by([r for r in runs if r.res], lambda r: r.setting).items()):
        by_m = _by(rs, lambda r: r.mixer)
        rows = [_regret_row(m, by_m[m], o, ref) for m in sorted(by_m, key=mixer_sort_key)]
        blocks.append({"setting": setting, "rows": rows, "notes": _regret_notes(rs, o, ref)})
    return blocks


def _regret_notes(rs: list[Run], o: dict, ref: dict) -> list[str]:
    notes = []
    note = limit_note(
        {
            m: [(r.seed, eval_limit(r.eval), r.path) for r in g if eval_limit(r.eval) is not None]
            for m, g in sorted(_by(rs, lambda r: r.mixer).items(), key=lambda x: mixer_sort_key(x[0]))
        }
    )
    if note:
        notes.append(note)
    unpaired = sorted(
        {(r.mixer, str(r.seed)) for r in rs if str(r.seed) not in ref}, key=lambda x: (mixer_sort_key(x[0]), x[1])
    )
    if unpaired:
        notes.append(
            "not paired (the best static mixture has no such seed): " + ", ".join(f"{m} seed {s}" for m, s in unpaired)
        )
    doms = {tuple(sorted(r.res.get("final_weights") or {})) for r in rs} - {()}
    if any(set(d) != set(o["best"]["weights"]) for d in doms):
        notes.append(
            f"the best static mixture's domains ({', '.join(o['best']['weights'])}) differ from some runs' "
            f"(another corpus?): their L1 distances are left out"
        )
    return notes


def _fmt_reg(reg: dict, nd: int, n_row: int) -> str:
    if reg["mean"] is None:
        return DASH
    cell = f"{reg['mean']:+.{nd}f} " + (
        f"[{reg['lo']:+.{nd}f}, {reg['hi']:+.{nd}f}]" if reg["lo"] is not None else "(n<2)"
    )
    return cell + (f" (n={reg['n']})" if reg["n"] != n_row else "")


def _better_side(key: str) -> str:
    return "> 0 = better" if key in _HIGHER_IS_BETTER else "< 0 = better"


def regret_table_md(block: dict, o: dict) -> list[str]:
    """One setting's regret table, one row per mixer."""
    mets = regret_metrics(o)
    head = (
        ["Mixer", "seeds paired (n)"]
        + [f"Δ {label} ({_better_side(k)})" for k, label, _ in mets]
        + [
            "L1 final mixture",
            "L1 time-averaged mixture",
            "Mixture-search FLOPs",
            f"Beats the best static mixture? (by {o['metric']})",
        ]
    )
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in block["rows"]:
        name = row["mixer"] + (f" {LIMIT_MARK}" if row.get("limited") else "")
        cells = [name, str(row["n"])] + [_fmt_reg(row["regret"][k], nd, row["n"]) for k, _, nd in mets]
        cells += [DASH if row[k] is None else f"{row[k]:.3f}" for k in ("l1_final", "l1_time_avg")]
        out.append("| " + " | ".join(cells + [fmt_flops(row["flops"]), row["beats"]]) + " |")
    return out


def oracle_note(o: dict) -> str:
    """Which mixture the regret is measured against, and where it came from."""
    b = o["best"]
    w = ", ".join(f"{d} {float(v):.3f}" for d, v in b["weights"].items())
    score = o["metric"]
    if _finite(b.get("mean")):
        score += f" {fmt_ms(b['mean'], b.get('std') if _finite(b.get('std')) else None, 4)} over seeds {b.get('seeds')}"
    src = (o.get("sources") or {}).get("confirm")
    return (
        f"Best static mixture: **{b.get('name', '?')}** ({score}; {'lower' if _oracle_lower(o) else 'higher'} "
        f"is better; weights: {w}), from `{o['path']}` (python -m eval.oracle report"
        + (f", confirmation runs under {', '.join(map(str, src))}" if src else "")
        + ")."
    )


REGRET_FOOTNOTE = (
    "Δ = mixer − best static mixture, per seed over the seeds both have (n), then the mean and its 95% Student "
    "t-interval [df = n − 1]; n<2: the mean difference only. BPB: lower is better, so Δ < 0 is better; accuracy in "
    "percentage points: Δ > 0 is better. L1: Σ_d |w_d − w*_d| (0 to 2) to the best static mixture's weights w*, for the "
    "final mixture and for the time-averaged one (each weights_history entry weighted by the steps it held), mean over "
    "seeds. Mixture-search FLOPs: compute.mixer_total, mean over seeds. Beats the best static mixture: yes when the "
    "95% interval of the regret in the oracle's metric lies entirely on the better side of 0, no when entirely on the "
    "worse side, within noise otherwise."
)


def regret_markdown(blocks: list[dict], o: dict) -> str:
    out = ["# Regret against the best static mixture", "", oracle_note(o), ""]
    for b in blocks:
        out += [f"## {b['setting']}" if len(blocks) > 1 else f"Setting: {b['setting']}", ""]
        out += regret_table_md(b, o) + [""] + [f"- {n}" for n in b["notes"]] + ([""] if b["notes"] else [])
    if not blocks:
        out += ["No finished runs.", ""]
    return "\n".join(out + [REGRET_FOOTNOTE]) + "\n"


def regret_rows(blocks: list[dict], o: dict) -> tuple[list[str], list[list[Any]]]:
    """The regret table as flat columns (regret.csv and W&B)."""
    mets = regret_metrics(o)
    cols = ["setting", "mixer", "n"] + [f"{k}_regret{s}" for k, _, _ in mets for s in ("", "_lo95", "_hi95", "_n")]
    cols += ["l1_final", "l1_time_avg", "mixer_flops", "beats_best_static", "decided_by", "oracle", "limited_evals"]
    rows = []
    for b in blocks:
        for row in b["rows"]:
            vals = [_c(row["regret"][k][f]) for k, _, _ in mets for f in ("mean", "lo", "hi", "n")]
            rows.append(
                [b["setting"], row["mixer"], row["n"]]
                + vals
                + [
                    _c(row["l1_final"]),
                    _c(row["l1_time_avg"]),
                    _c(row["flops"]),
                    row["beats"],
                    o["metric"],
                    o["best"].get("name", ""),
                    len(row.get("limited") or []),
                ]
            )
    return cols, rows


def regret_csv(blocks: list[dict], o: dict, path: Path) -> None:
    cols, rows = regret_rows(blocks, o)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(rows)


# ---------------------------------------------------------------------------- regret (the best schedule)


class ScheduleOracleError(OracleError):
    """The --schedule-oracle input is missing or not an oracle_schedule.json of ``python -m eval.schedule_oracle``."""


def load_schedule_oracle(path: str | Path) -> dict:
    """``oracle_schedule.json`` (or a folder holding one) checked for what the schedule columns read."""
    return _load_reference(
        path,
        "schedule oracle",
        "oracle_schedule.json",
        "python -m eval.schedule_oracle report",
        "python -m eval.schedule_oracle",
        _schedule_oracle_problem,
        ScheduleOracleError,
    )


def _schedule_oracle_problem(so: Any) -> str | None:
    if not isinstance(so, dict):
        return "not a JSON object"
    best = so.get("best")
    if not isinstance(so.get("metric"), str) or not isinstance(best, dict):
        return "no 'metric' or 'best'"
    ws = best.get("weights")
    if not isinstance(ws, list) or not ws or not all(isinstance(w, dict) and w for w in ws):
        hint = " (a static oracle.json? that one goes to --oracle)" if isinstance(ws, dict) else ""
        return "best.weights is not a list of {domain: weight}, one per stage" + hint
    if not all(_finite(v) for w in ws for v in w.values()):
        return "best.weights holds a weight that is not a number"
    starts = best.get("stage_steps")
    ok = isinstance(starts, list) and len(starts) == len(ws) and all(isinstance(s, int) for s in starts)
    if not ok or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
        return f"best.stage_steps is not the {len(ws)} stages' first steps (0, then increasing): {starts!r}"
    if not isinstance(best.get("per_seed") or best.get("scores"), dict):
        return "best has neither per_seed nor scores"
    return None


def window_averaged_weights(res: dict, start: float, end: float) -> dict[str, float] | None:
    """The mixture averaged over the steps [start, end): each weights_history entry weighted by the steps of the
    window it held (from its step to the next entry's, the last one to ``steps``); None when none falls inside."""
    hist = sorted(
        (h for h in res.get("weights_history") or [] if isinstance(h, dict) and isinstance(h.get("weights"), dict)),
        key=lambda h: h["step"],
    )
    if not hist:
        return None
    stop = int(res.get("steps") or hist[-1]["step"] + 1)
    bounds = [int(h["step"]) for h in hist] + [max(stop, int(hist[-1]["step"]))]
    held = np.array([max(0.0, min(b, end) - max(a, start)) for a, b in zip(bounds, bounds[1:])], dtype=float)
    if held.sum() <= 0:
        return None
    doms = list(dict.fromkeys(d for h in hist for d in h["weights"]))
    return {d: float(sum(t * float(h["weights"].get(d, 0.0)) for t, h in zip(held, hist)) / held.sum()) for d in doms}


def stage_l1(w: dict | None, ref: dict) -> float | None:
    """L1 to one stage's mixture. mixer=schedule trains a domain its stage does not name at 0, so such a domain
    counts as 0; a named domain the run lacks means another corpus: None."""
    if not w or not set(ref) <= set(w):
        return None
    return l1(w, {d: float(ref.get(d, 0.0)) for d in w})


def stage_l1s(res: dict, best: dict) -> list[float | None]:
    """Per stage k of the best schedule: L1 of the run's mixture averaged over the stage's steps (stage_steps[k]
    to the next boundary; the last stage to the run's end) to the schedule's stage-k mixture."""
    starts = [int(s) for s in best["stage_steps"]]
    ends = starts[1:] + [math.inf]  # window_averaged_weights ends the last entry at the run's own steps
    return [stage_l1(window_averaged_weights(res, a, b), w) for a, b, w in zip(starts, ends, best["weights"])]


def gain_captured(mine: dict[str, float], static: dict[str, float], sched: dict[str, float], lower: bool) -> dict:
    """(S − M) / (S − B) over the seeds all three have: S, M, B the means of the best static mixture, the mixer and
    the best schedule. Undefined ("why" set, "gain" None) when no seed is shared or the schedule does not beat S."""
    seeds = sorted(set(mine) & set(static) & set(sched))
    out: dict[str, Any] = {"n": len(seeds), "S": None, "M": None, "B": None, "gain": None, "why": None}
    if not seeds:
        out["why"] = "no seed shared by the mixer, the best static mixture and the best schedule"
        return out
    s, m, b = (float(np.mean([v[x] for x in seeds])) for v in (static, mine, sched))
    out.update(S=s, M=m, B=b)
    if (s - b if lower else b - s) <= 0:  # no gain to capture: the ratio would be meaningless or flip sign
        out["why"] = "the best schedule does not beat the best static mixture"
    else:
        out["gain"] = (s - m) / (s - b)
    return out


def _metric_of(ref: dict[str, dict[str, float]], k: str) -> dict[str, float]:
    return {s: v[k] for s, v in ref.items() if k in v}


def _schedule_row(m: str, rs: list[Run], so: dict, ref: dict, o: dict | None, static_ref: dict | None) -> dict:
    done = [r for r in rs if r.res]
    regs = {k: paired_regret(_mixer_seed_values(done, k), _metric_of(ref, k)) for k, _, _ in regret_metrics(so)}
    per_run = [stage_l1s(r.res, so["best"]) for r in done]
    gain = None
    if static_ref is not None:
        k = o["metric"]
        mine = _mixer_seed_values(done, k)
        gain = gain_captured(mine, _metric_of(static_ref, k), _metric_of(ref, k), _oracle_lower(o))
    return {
        "mixer": m,
        "regret": regs,
        "n": regs[so["metric"]]["n"],
        "limited": [(r.seed, eval_limit(r.eval)) for r in done if eval_limit(r.eval) is not None],
        "stage_l1": [mean_std([p[k] for p in per_run])[0] for k in range(len(so["best"]["weights"]))],
        "beats": beats_oracle(regs[so["metric"]], _oracle_lower(so)),
        "gain": gain,
    }


def schedule_regret(runs: list[Run], so: dict, o: dict | None = None) -> list[dict]:
    """Per setting: {"setting", "rows": [one per mixer, see _schedule_row], "notes"}; with ``o`` (the best static
    mixture) each row also holds its gain captured."""
    ref = oracle_seed_values(so)
    static_ref = oracle_seed_values(o) if o is not None else None
    blocks = []
    for setting, rs in sorted(_by([r for r in runs if r.res], lambda r: r.setting).items()):
        by_m = _by(rs, lambda r: r.mixer)
        rows = [_schedule_row(m, by_m[m], so, ref, o, static_ref) for m in sorted(by_m, key=mixer_sort_key)]
        notes = _schedule_notes(rs, so, ref) + (_gain_notes(so, ref, o, static_ref) if static_ref is not None else [])
        blocks.append({"setting": setting, "rows": rows, "notes": notes})
    return blocks


def _schedule_steps(so: dict) -> int | None:
    """The best schedule's run length, from its stage shares: γ_last = (steps − last start) / steps."""
    starts, g = so["best"]["stage_steps"], so["best"].get("gammas")
    if len(starts) < 2 or not isinstance(g, list) or len(g) != len(starts) or not _finite(g[-1]) or g[-1] >= 1:
        return None
    return round(starts[-1] / (1 - g[-1]))


def _schedule_notes(rs: list[Run], so: dict, ref: dict) -> list[str]:
    notes = []
    note = limit_note(
        {
            m: [(r.seed, eval_limit(r.eval), r.path) for r in g if eval_limit(r.eval) is not None]
            for m, g in sorted(_by(rs, lambda r: r.mixer).items(), key=lambda x: mixer_sort_key(x[0]))
        }
    )
    if note:
        notes.append(note)
    unpaired = sorted(
        {(r.mixer, str(r.seed)) for r in rs if str(r.seed) not in ref}, key=lambda x: (mixer_sort_key(x[0]), x[1])
    )
    if unpaired:
        notes.append(
            "not paired (the best schedule has no such seed): " + ", ".join(f"{m} seed {s}" for m, s in unpaired)
        )
    named = {d for w in so["best"]["weights"] for d in w}
    if any(not named <= set(r.res.get("domains") or r.res.get("final_weights") or named) for r in rs):
        notes.append(
            f"the best schedule names domains ({', '.join(sorted(named))}) some runs do not have (another corpus?): "
            "their stage L1 distances are left out"
        )
    total = _schedule_steps(so)
    other = sorted({int(r.res["steps"]) for r in rs if _finite(r.res.get("steps"))} - {total}) if total else []
    if other:
        notes.append(
            f"some runs train {', '.join(map(str, other))} steps, the best schedule {total}: their stage windows "
            f"are still the schedule's steps {so['best']['stage_steps']}, so their stage L1 compares other phases"
        )
    return notes


def _gain_notes(so: dict, ref: dict, o: dict, static_ref: dict) -> list[str]:
    k, notes = o["metric"], []
    sched, static = _metric_of(ref, k), _metric_of(static_ref, k)
    seeds = sorted(set(sched) & set(static))
    if not seeds:
        notes.append(f"gain captured is left out: the best schedule has no {k} at the best static mixture's seeds")
    else:
        s, b = (float(np.mean([v[x] for x in seeds])) for v in (static, sched))
        if (s - b if _oracle_lower(o) else b - s) <= 0:
            notes.append(
                f"gain captured is n/a: over seeds {seeds} the best schedule ({k} {b:.4f}) does not beat the best "
                f"static mixture ({s:.4f}), so there is no gain to capture"
            )
    if so["metric"] != k:
        notes.append(f"the best schedule was chosen by {so['metric']}; gain captured is in the static oracle's {k}")
    sb = so["static_best"].get("name") if isinstance(so.get("static_best"), dict) else None
    if sb and sb != o["best"].get("name"):
        notes.append(
            f"the schedule oracle was reported against the static mixture {sb}, --oracle names {o['best'].get('name')}"
        )
    return notes


def _fmt_stage_l1(vals: list[float | None]) -> str:
    if all(v is None for v in vals):
        return DASH
    return " / ".join(DASH if v is None else f"{v:.3f}" for v in vals)


def _fmt_gain(g: dict | None, n_row: int) -> str:
    if g is None or not g["n"]:
        return DASH
    if g["gain"] is None:
        return "n/a"
    return f"{g['gain']:.2f}" + (f" (n={g['n']})" if g["n"] != n_row else "")


def schedule_table_md(block: dict, so: dict, o: dict | None = None) -> list[str]:
    """One setting's table against the best schedule, one row per mixer; gain captured when ``o`` is given."""
    mets = regret_metrics(so)
    k = len(so["best"]["weights"])
    head = (
        ["Mixer", "seeds paired (n)"]
        + [f"Δ {label} ({_better_side(key)})" for key, label, _ in mets]
        + [
            f"L1 per stage ({' / '.join(f'stage {i + 1}' for i in range(k))})",
            f"Beats the best schedule? (by {so['metric']})",
        ]
        + ([f"Gain captured (by {o['metric']})"] if o is not None else [])
    )
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in block["rows"]:
        name = row["mixer"] + (f" {LIMIT_MARK}" if row.get("limited") else "")
        cells = [name, str(row["n"])] + [_fmt_reg(row["regret"][key], nd, row["n"]) for key, _, nd in mets]
        cells += [_fmt_stage_l1(row["stage_l1"]), row["beats"]]
        cells += [_fmt_gain(row["gain"], row["n"])] if o is not None else []
        out.append("| " + " | ".join(cells) + " |")
    return out


def schedule_note(so: dict) -> str:
    """Which schedule the regret is measured against: its stages, score and file."""
    b = so["best"]
    stages = "; ".join(
        f"stage {k + 1} from step {s}: " + ", ".join(f"{d} {float(v):.3f}" for d, v in w.items())
        for k, (s, w) in enumerate(zip(b["stage_steps"], b["weights"]))
    )
    score = so["metric"]
    if _finite(b.get("mean")):
        score += f" {fmt_ms(b['mean'], b.get('std') if _finite(b.get('std')) else None, 4)} over seeds {b.get('seeds')}"
    return (
        f"Best schedule: **{b.get('name', '?')}** ({score}; {'lower' if _oracle_lower(so) else 'higher'} is better; "
        f"{stages}), from `{so['path']}` (python -m eval.schedule_oracle report)."
    )


def schedule_footnote(with_gain: bool) -> str:
    text = (
        "Against the best schedule: Δ = mixer − best schedule, per seed over the seeds both have (n), then the mean "
        "and its 95% Student t-interval [df = n − 1]; n<2: the mean difference only; BPB: Δ < 0 is better; accuracy "
        "in percentage points: Δ > 0 is better. Beats the best schedule: yes / no when the 95% interval in the "
        "schedule oracle's metric lies entirely on the better / worse side of 0, within noise otherwise. L1 per "
        "stage: for each stage k of the best schedule (from its stage_steps[k] to the next boundary, the last stage "
        "to the run's end), the mixer's mixture averaged over those steps (each weights_history entry weighted by "
        "the steps of the stage it held), then Σ_d |w_d − w*_k,d| (0 to 2) to the schedule's stage-k mixture w*_k "
        "(a domain it does not name counts as 0), mean over seeds; stages in order, separated by /."
    )
    if with_gain:
        text += (
            " Gain captured = (S − M) / (S − B) in the static oracle's metric, with S, M and B the means of the best "
            "static mixture, the mixer and the best schedule over the seeds all three have (n shown when fewer than "
            "the paired seeds): the share of the best schedule's gain over the best static mixture that the mixer "
            "recovers (1 = as good as the best schedule, 0 = no better than the best static mixture, < 0 worse "
            "than it, > 1 better than the best schedule); n/a when the best schedule does not beat the best static "
            "mixture over those seeds (S − B is 0 or on the worse side), so there is no gain to capture."
        )
    return text


def schedule_markdown(blocks: list[dict], so: dict, o: dict | None = None) -> str:
    out = ["# Regret against the best schedule", "", schedule_note(so), ""]
    if o is not None:
        out += [oracle_note(o) + " Gain captured is measured between the two.", ""]
    for b in blocks:
        out += [f"## {b['setting']}" if len(blocks) > 1 else f"Setting: {b['setting']}", ""]
        out += schedule_table_md(b, so, o) + [""] + [f"- {n}" for n in b["notes"]] + ([""] if b["notes"] else [])
    if not blocks:
        out += ["No finished runs.", ""]
    return "\n".join(out + [schedule_footnote(o is not None)]) + "\n"


def schedule_rows(blocks: list[dict], so: dict, o: dict | None = None) -> tuple[list[str], list[list[Any]]]:
    """The table against the best schedule as flat columns (regret_schedule.csv and W&B)."""
    mets = regret_metrics(so)
    k = len(so["best"]["weights"])
    cols = ["setting", "mixer", "n"] + [f"{key}_regret{s}" for key, _, _ in mets for s in ("", "_lo95", "_hi95", "_n")]
    cols += [f"l1_stage{i + 1}" for i in range(k)] + ["beats_best_schedule", "decided_by", "schedule", "limited_evals"]
    if o is not None:
        cols += ["gain_captured", "gain_n", "gain_static_mean", "gain_mixer_mean", "gain_schedule_mean", "gain_metric"]
    rows = []
    for b in blocks:
        for row in b["rows"]:
            vals = [_c(row["regret"][key][f]) for key, _, _ in mets for f in ("mean", "lo", "hi", "n")]
            vals += [_c(v) for v in row["stage_l1"]]
            vals += [row["beats"], so["metric"], so["best"].get("name", ""), len(row.get("limited") or [])]
            if o is not None:
                g = row["gain"]
                gain = "n/a" if g["n"] and g["gain"] is None else _c(g["gain"])
                vals += [gain, g["n"], _c(g["S"]), _c(g["M"]), _c(g["B"]), o["metric"]]
            rows.append([b["setting"], row["mixer"], row["n"]] + vals)
    return cols, rows


def schedule_csv(blocks: list[dict], so: dict, o: dict | None, path: Path) -> None:
    cols, rows = schedule_rows(blocks, so, o)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(rows)


# ----------------------------------------------------------------------------------------- figures


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "x"


def _save(
    plt, fig, out: Path, kind: str, mixer: str | None = None, setting: str | None = None, multi_setting: bool = False
) -> Path:
    """Lay out, write and close a figure: ``out/<kind>.png``, or per mixer ``out/<kind>_<mixer>[_<setting>].png``."""
    name = kind if mixer is None else f"{kind}_{_slug(mixer)}" + (f"_{_slug(setting)}" if multi_setting else "")
    if fig.get_layout_engine() is None:  # a figure made with layout="constrained" lays itself out
        fig.tight_layout()
    p = out / (name if name.endswith(".png") else name + ".png")
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def _weights_curve(res: dict) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    hist = res.get("weights_history") or []
    doms = list(res.get("domains") or (hist[0]["weights"].keys() if hist else []))
    if not hist or not doms:
        return None
    total = int(res.get("steps") or max(h["step"] for h in hist) + 1)
    steps = np.arange(total + 1)
    w = np.zeros((len(doms), len(steps)))
    for h in sorted(hist, key=lambda h: h["step"]):
        vec = np.array([float(h["weights"].get(d, 0.0)) for d in doms])
        w[:, int(h["step"]) :] = vec[:, None]
    return doms, steps, w


def fig_mixtures(runs: list[Run], out: Path, multi_setting: bool) -> list[Path]:
    plt = _plt()
    written = []
    for (st, m), rs in sorted(_by([r for r in runs if r.res], lambda r: (r.setting, r.mixer)).items()):
        curves = [c for c in (_weights_curve(r.res) for r in rs) if c is not None]
        if not curves:
            continue
        doms, steps, _ = curves[0]
        same = [c for c in curves if c[0] == doms and len(c[1]) == len(steps)]
        w = np.mean([c[2] for c in same], axis=0)
        fig, ax = plt.subplots(figsize=(7, 3.6))
        ax.stackplot(steps, w, labels=doms, step="post", alpha=0.9)
        ax.set_xlim(0, steps[-1])
        ax.set_ylim(0, 1)
        ax.set_xlabel("training step")
        ax.set_ylabel("mixture weight")
        ax.set_title(
            f"{m}: mixture over training"
            + (f" (mean of {len(same)} seeds)" if len(same) > 1 else "")
            + (f"\n{st}" if multi_setting else ""),
            fontsize=10,
        )
        h, lab = ax.get_legend_handles_labels()  # top to bottom, as the bands are stacked
        ax.legend(h[::-1], lab[::-1], loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
        written.append(_save(plt, fig, out, "mixture", m, st, multi_setting))
    return written


def _finite_vals(xs: Iterable[Any]) -> list[float]:
    return [float(x) for x in xs if _finite(x)]


def _plain_log_ticks(axis, lo: float, hi: float) -> None:
    """Tick labels of a log axis as plain numbers (250, not 2.5×10²); minor ticks labelled only over a short span."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:,.4g}")
    axis.set_major_formatter(fmt)
    axis.set_minor_formatter(fmt if hi / lo < 30 else NullFormatter())


def _fig_vs_compute(
    runs: list[Run], out: Path, value, name: str, ylabel: str, title: str, logy: bool = False, from_eval: bool = False
) -> Path | None:
    """One point per (setting, mixer): the mean over seeds of ``value(run)`` against mixture-search FLOPs, the bars
    spanning the seeds' range (min to max: inside the data, so never below 0 on a log axis). x is a log axis with a
    separate "0" for static mixtures; points at the same x are moved apart a little; the mixers are named in a
    legend beside the axes. ``from_eval``: the values come from downstream evaluations, and a point with a limited
    one (eval.limit) is drawn hollow and labelled."""
    pts = []
    for (st, m), rs in _by([r for r in runs if _finite(value(r))], lambda r: (r.setting, r.mixer)).items():
        ys = _finite_vals(value(r) for r in rs)
        xs = _finite_vals(((r.res or {}).get("compute") or {}).get("mixer_total", 0.0) or 0.0 for r in rs)
        lim = sorted({str(lv) for r in rs for lv in [eval_limit(r.eval)] if lv is not None}) if from_eval else []
        pts.append((st, m, xs or [0.0], ys, lim))
    if not pts:
        return None
    pts.sort(key=lambda p: (mixer_sort_key(p[1]), p[0]))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 4.6))
    xmean = [float(np.mean(p[2])) for p in pts]
    x0 = _zero_left_log_axis(ax, xmean)
    xs_plot = _spread([x if x > 0 else x0 for x in xmean])
    settings = sorted({p[0] for p in pts})
    mixers = sorted({p[1] for p in pts}, key=mixer_sort_key)
    colors = plt.get_cmap("tab10" if len(mixers) <= 10 else "tab20")
    markers = "osD^v<>P*X"
    ends = []
    for (st, m, xs, ys, lim), x, xm in zip(pts, xs_plot, xmean):
        y, lo, hi = float(np.mean(ys)), min(ys), max(ys)
        ends += [lo, hi]
        yerr = [[y - lo], [hi - y]] if len(ys) > 1 else None
        xerr = None
        if xm > 0 and len(xs) > 1 and (max(xs) - min(xs)) > 0.05 * xm:  # FLOPs that differ by seed (reused proxies)
            xerr = [[x - x * min(xs) / xm], [x * max(xs) / xm - x]]
        label = (
            m
            + (f" ({st})" if len(settings) > 1 else "")
            + f" (n={len(ys)})"
            + (f" [eval.limit={','.join(lim)}]" if lim else "")
        )
        c = colors(mixers.index(m) % colors.N)
        ax.errorbar(
            [x],
            [y],
            yerr=yerr,
            xerr=xerr,
            fmt=markers[settings.index(st) % len(markers)],
            color=c,
            mfc="none" if lim else c,
            capsize=3,
            ms=6,
            label=label,
        )
    lo, hi = min(ends), max(ends)
    if logy and lo > 0:
        pad = (hi / lo) ** 0.08 if hi > lo else 1.2
        ax.set_ylim(lo / pad, hi * pad)
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis, lo, hi)
    else:
        pad = 0.08 * (hi - lo) if hi > lo else max(abs(hi) * 0.05, 1e-6)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("mixture-search FLOPs (log; 0 = static mixture, no search)")
    ax.set_ylabel(ylabel)
    sub = "mean over seeds; bars: min–max over seeds" + (f"; {settings[0]}" if len(settings) == 1 else "")
    ax.set_title(f"{title}\n{sub}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return _save(plt, fig, out, name)


def fig_score_vs_compute(runs: list[Run], out: Path) -> Path | None:
    return _fig_vs_compute(
        runs,
        out,
        lambda r: r.eval.get("average") if r.eval else None,
        "score_vs_compute.png",
        "average downstream score (%)",
        "Downstream score vs mixture-search compute (higher is better)",
        from_eval=True,
    )


def fig_bpb_vs_compute(runs: list[Run], out: Path) -> Path | None:
    return _fig_vs_compute(
        runs,
        out,
        lambda r: r.eval.get("average_bpb") if r.eval else None,
        "bpb_vs_compute.png",
        "average bits per byte of the gold answer",
        "Gold-answer BPB vs mixture-search compute (lower is better)",
        from_eval=True,
    )


def fig_ppl_vs_compute(runs: list[Run], out: Path) -> Path | None:
    """Average test perplexity (over domains) against mixture-search FLOPs: the comparison when there are
    no downstream tasks (eval=none), and the language-modelling side of it when there are."""
    return _fig_vs_compute(
        runs,
        out,
        _avg_ppl,
        "ppl_vs_compute.png",
        "average test perplexity over domains (log)",
        "Test perplexity vs mixture-search compute (lower is better)",
        logy=True,
    )


def _influence_records(res: dict) -> list[dict]:
    return [
        h
        for h in (res.get("mixer_history") or [])
        if isinstance(h, dict) and isinstance(h.get("influence"), dict) and "step" in h
    ]


def fig_influence(runs: list[Run], out: Path, multi_setting: bool) -> list[Path]:
    """Per mixer: one panel per target, each domain's influence on it over the stages (mean over seeds). A panel in
    which one domain's influence dwarfs the others' (typically the target's own domain) is drawn on a
    symmetric-log y axis, linear within the typical size, so the other domains stay readable. One colour per
    domain in every panel, named in one legend beside the panels."""
    written = []
    for (st, m), rs in sorted(
        _by([r for r in runs if r.res and _influence_records(r.res)], lambda r: (r.setting, r.mixer)).items()
    ):
        # values[target][domain][step] -> list over seeds
        values: dict[str, dict[str, dict[int, list[float]]]] = {}
        for r in rs:
            for h in _influence_records(r.res):
                for tgt, per in h["influence"].items():
                    if not isinstance(per, dict):
                        continue
                    for d, v in per.items():
                        if v is not None and math.isfinite(float(v)):
                            values.setdefault(str(tgt), {}).setdefault(str(d), {}).setdefault(
                                int(h["step"]), []
                            ).append(float(v))
        if not values:
            continue
        plt = _plt()
        targets = sorted(values)
        doms = list(dict.fromkeys(d for tgt in targets for d in values[tgt]))
        colors = plt.get_cmap("tab10" if len(doms) <= 10 else "tab20")
        ncol = min(3, len(targets))
        nrow = math.ceil(len(targets) / ncol)
        fig, axes = plt.subplots(
            nrow, ncol, figsize=(4.2 * ncol + 1.6, 3.0 * nrow + 0.6), squeeze=False, sharex=True, layout="constrained"
        )
        handles = {}
        any_symlog = False
        for i, tgt in enumerate(targets):
            ax = axes[i // ncol][i % ncol]
            panel = []
            for d in doms:
                by_step = values[tgt].get(d)
                if not by_step:
                    continue
                steps = sorted(by_step)
                ys = [float(np.mean(by_step[s])) for s in steps]
                panel += ys
                (line,) = ax.plot(steps, ys, marker="o", ms=4, color=colors(doms.index(d) % colors.N), label=d)
                handles.setdefault(d, line)
            lin = dominated_linthresh(panel)
            if lin:
                from matplotlib.ticker import FuncFormatter, NullLocator

                any_symlog = True
                ax.set_yscale("symlog", linthresh=lin, linscale=0.5)
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.yaxis.set_minor_locator(NullLocator())
                ax.axhspan(-lin, lin, color="0.94", zorder=0)
                lo, hi = ax.get_ylim()  # reach the next labelled power of ten when it is close (a reference tick)
                nxt = lambda v: 10.0 ** math.ceil(math.log10(abs(v)))  # noqa: E731
                ax.set_ylim(
                    -nxt(lo) * 1.05 if lo < -lin and nxt(lo) <= 3 * abs(lo) else lo,
                    nxt(hi) * 1.05 if hi > lin and nxt(hi) <= 3 * hi else hi,
                )
            ax.axhline(0, color="k", lw=0.5)
            ax.set_title(tgt + (f"  (symlog; linear within ±{lin:g})" if lin else ""), fontsize=9)
            if i // ncol == nrow - 1 or i + ncol >= len(targets):
                ax.set_xlabel("step (stage boundary)")
                ax.tick_params(labelbottom=True)
            if i % ncol == 0:
                ax.set_ylabel("influence (benefit)")
            ax.grid(alpha=0.3)
        for j in range(len(targets), nrow * ncol):
            axes[j // ncol][j % ncol].axis("off")
        fig.legend(
            [handles[d] for d in doms if d in handles],
            [d for d in doms if d in handles],
            loc="outside right center",
            fontsize=8,
            frameon=False,
            title="domain",
            title_fontsize=8,
        )
        fig.suptitle(
            f"{m}: group influence of each domain on each target over stages (mean over {len(rs)} seed"
            f"{'s' if len(rs) != 1 else ''})"
            + (f"\n{st}" if multi_setting else "")
            + ("\nshaded: the linear part of a symmetric-log axis" if any_symlog else ""),
            fontsize=10,
        )
        written.append(_save(plt, fig, out, "influence", m, st, multi_setting))
    return written


def _zero_left_log_axis(ax, xs: list[float]) -> float:
    """A log x axis whose left edge holds x = 0 (a log axis has no 0): returns where to draw 0 and labels it "0",
    a decade below the smallest positive x, with a dotted break between them."""
    pos = [x for x in xs if x > 0]
    k_min = math.floor(math.log10(min(pos))) if pos else 0
    k_max = math.ceil(math.log10(max(pos))) if pos else 0
    x0 = 10.0 ** (k_min - 1)
    ax.set_xscale("log")
    ax.set_xlim(10 ** (k_min - 1.5), max(pos) * 10**0.5 if pos else 10 ** (k_max + 0.5))
    step = max(1, math.ceil((k_max - k_min + 1) / 6))  # at most ~7 tick labels, never crowded
    ks = list(range(k_min, k_max + 1, step)) if pos else []
    ax.set_xticks([x0] + [10.0**k for k in ks], ["0"] + [f"$10^{{{k}}}$" for k in ks])
    from matplotlib.ticker import NullLocator

    ax.xaxis.set_minor_locator(NullLocator())
    if pos:
        ax.axvline(10 ** (k_min - 0.5), color="0.6", ls=":", lw=1)
    return x0


def _spread(xs: list[float]) -> list[float]:
    """Points at the same x moved apart a little (in log space) so their error bars do not hide each other."""
    groups = _by(list(range(len(xs))), lambda i: round(math.log10(xs[i]), 1))
    out = list(xs)
    for idx in groups.values():
        for j, i in enumerate(idx):
            out[i] = xs[i] * 10 ** (min(0.08, 0.6 / len(idx)) * (j - (len(idx) - 1) / 2))
    return out


def _regret_ylim(ax, regs: list[dict]) -> None:
    """Every interval inside the axis; a symlog y when one interval dwarfs the typical regret."""
    ends = [v for r in regs for v in (r["mean"], r["lo"], r["hi"]) if v is not None] + [0.0]
    lo, hi = min(ends), max(ends)
    pad = 0.08 * (hi - lo or 1.0)
    typical = float(np.median([abs(r["mean"]) for r in regs if r["mean"]] or [0.0]))
    if typical > 0 and max(abs(lo), abs(hi)) > 30 * typical:
        ax.set_yscale("symlog", linthresh=typical)
        ax.set_ylim(lo * 1.5 if lo < 0 else -typical, hi * 1.5 if hi > 0 else typical)
    else:
        ax.set_ylim(lo - pad, hi + pad)


def _label_zero_line(fig, ax, pts: list[tuple[float, dict]]) -> None:
    """Write "best static mixture" on the 0 line where it covers no point or error bar (first free spot)."""
    r = fig.canvas.get_renderer()
    boxes = []
    for x, reg in pts:
        lo, hi = (reg["lo"], reg["hi"]) if reg["lo"] is not None else (reg["mean"], reg["mean"])
        (x1, y1), (x2, y2) = ax.transData.transform([(x, lo), (x, hi)])
        boxes.append((x1 - 8, min(y1, y2) - 6, x1 + 8, max(y1, y2) + 6))
    t = None
    for fx, ha in ((0.99, "right"), (0.5, "center"), (0.25, "center"), (0.75, "center"), (0.01, "left")):
        for dy, va in ((2, "bottom"), (-2, "top")):
            if t is not None:
                t.remove()
            t = ax.annotate(
                "best static mixture",
                (fx, 0),
                xycoords=("axes fraction", "data"),
                xytext=(0, dy),
                textcoords="offset points",
                ha=ha,
                va=va,
                fontsize=8,
            )
            bb = t.get_window_extent(r)
            if not any(bb.x0 < b[2] and b[0] < bb.x1 and bb.y0 < b[3] and b[1] < bb.y1 for b in boxes):
                return


def fig_regret_vs_compute(blocks: list[dict], o: dict, out: Path) -> Path | None:
    """Regret in the oracle's metric (mean, 95% t-interval) against mixture-search FLOPs; 0 = the best static mixture."""
    key = o["metric"]
    pts = [
        (b["setting"], row["mixer"], row["flops"], row["regret"][key])
        for b in blocks
        for row in b["rows"]
        if row["regret"][key]["mean"] is not None and row["flops"] is not None
    ]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    x0 = _zero_left_log_axis(ax, [p[2] for p in pts])
    xs = _spread([p[2] if p[2] > 0 else x0 for p in pts])
    settings = sorted({p[0] for p in pts})
    colors = plt.get_cmap("tab10" if len(pts) <= 10 else "tab20")
    for i, ((st, m, _, reg), x) in enumerate(zip(pts, xs)):
        err = None if reg["lo"] is None else [[reg["mean"] - reg["lo"]], [reg["hi"] - reg["mean"]]]
        label = (
            m
            + (f" ({st})" if len(settings) > 1 else "")
            + (" (n<2: no interval)" if err is None else f" (n={reg['n']})")
        )
        lim = next(
            (row.get("limited") for b in blocks for row in b["rows"] if b["setting"] == st and row["mixer"] == m), None
        )
        label += f" [{len(lim)} limited eval]" if lim else ""
        ax.errorbar(
            [x],
            [reg["mean"]],
            yerr=err,
            fmt="osD^v<>P*X"[settings.index(st) % 10],
            color=colors(i % colors.N),
            mfc="none" if err is None else None,
            capsize=3,
            ms=6,
            label=label,
        )
    ax.axhline(0, color="k", lw=1, ls="--", label="best static mixture (Δ = 0)")
    _regret_ylim(ax, [p[3] for p in pts])
    ax.set_xlabel("mixture-search FLOPs (log; 0 = no search)")
    ax.set_ylabel(f"Δ {key}, mixer − best static\n({'< 0' if _oracle_lower(o) else '> 0'} = better)")
    ax.set_title(
        f"Regret against the best static mixture ({o['best'].get('name', '?')}) vs mixture-search compute\n"
        f"mean and 95% t-interval over paired seeds" + (f"; {settings[0]}" if len(settings) == 1 else ""),
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()  # the label's place is chosen in the final layout
    _label_zero_line(fig, ax, [(x, p[3]) for x, p in zip(xs, pts)])
    return _save(plt, fig, out, "regret_vs_compute.png")


# -------------------------------------------------------------------------------------------- main


def build(
    dirs: list[str | Path],
    out: str | Path | None = None,
    preset: str | None = None,
    logger_cfg: dict | None = None,
    quiet: bool = False,
    oracle: str | Path | dict | None = None,
    schedule_oracle: str | Path | dict | None = None,
) -> dict:
    """Collect runs under ``dirs`` and write the tables and figures into ``out``; returns what was written.
    ``oracle``: an oracle.json, a folder holding one, or load_oracle()'s dict: adds the regret table.
    ``schedule_oracle``: an oracle_schedule.json, a folder holding one, or load_schedule_oracle()'s dict: adds the
    table against the best schedule (with ``oracle`` too: each mixer's gain captured)."""
    if not dirs:
        raise ValueError("give at least one run or sweep folder")
    # both are read before anything is written, so a bad file leaves no half-written report
    o = oracle if isinstance(oracle, dict) or oracle is None else load_oracle(oracle)
    so = (
        schedule_oracle
        if isinstance(schedule_oracle, dict) or schedule_oracle is None
        else load_schedule_oracle(schedule_oracle)
    )
    out = Path(out or dirs[0]).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    runs = collect(dirs, preset)
    blocks, notes = table1(runs)
    reg = regret(runs, o) if o is not None else None
    sreg = schedule_regret(runs, so, o) if so is not None else None
    md = table1_markdown(blocks, notes, reg, o, sreg, so)
    p = perplexity(runs)
    files = _write_tables(out, md, blocks, p, reg, o)
    if sreg is not None:
        (out / "regret_schedule.md").write_text(schedule_markdown(sreg, so, o))
        schedule_csv(sreg, so, o, out / "regret_schedule.csv")
        files.update(regret_schedule_md=out / "regret_schedule.md", regret_schedule_csv=out / "regret_schedule.csv")
    figs = files["figures"] = _figures(runs, out, reg, o)
    if logger_cfg:
        tabs = {"tables/regret": regret_rows(reg, o) if reg is not None else None}
        tabs["tables/regret_schedule"] = schedule_rows(sreg, so, o) if sreg is not None else None
        _log_wandb(attach_to_runs(logger_cfg, runs, out), out, blocks, p, figs, [str(d) for d in dirs], tabs)
    if not quiet:
        print(md)
        print(
            f"[tables] {len(runs)} runs; wrote {', '.join(str(v.name) for k, v in files.items() if k != 'figures')}"
            f"{', ' + ', '.join(f.name for f in figs) if figs else ''} in {out}"
        )
    files["runs"] = runs
    files["notes"] = notes
    return files


def _write_tables(out: Path, md: str, blocks: list[dict], p: dict, reg: list[dict] | None, o: dict | None) -> dict:
    (out / "table1.md").write_text(md)
    table1_csv(blocks, out / "table1.csv")
    (out / "perplexity.md").write_text(perplexity_markdown(p))
    perplexity_csv(p, out / "perplexity.csv")
    files: dict[str, Any] = dict(
        table1_md=out / "table1.md",
        table1_csv=out / "table1.csv",
        perplexity_md=out / "perplexity.md",
        perplexity_csv=out / "perplexity.csv",
    )
    if reg is not None:
        (out / "regret.md").write_text(regret_markdown(reg, o))
        regret_csv(reg, o, out / "regret.csv")
        files.update(regret_md=out / "regret.md", regret_csv=out / "regret.csv")
    return files


def _figures(runs: list[Run], out: Path, reg: list[dict] | None, o: dict | None) -> list[Path]:
    figs: list[Path] = []
    multi = len({r.setting for r in runs if r.res}) > 1
    for fn in (
        lambda: fig_mixtures(runs, out, multi),
        lambda: fig_score_vs_compute(runs, out),
        lambda: fig_bpb_vs_compute(runs, out),
        lambda: fig_ppl_vs_compute(runs, out),
        lambda: fig_influence(runs, out, multi),
        lambda: reg and fig_regret_vs_compute(reg, o, out),
    ):
        try:
            got = fn()
        except Exception as e:  # noqa: BLE001 - a figure must never cost the tables
            print(f"[tables] a figure failed: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        figs += [got] if isinstance(got, Path) else list(got or [])
    return figs


def _log_wandb(
    logger_cfg: dict,
    out: Path,
    blocks: list[dict],
    p: dict,
    figs: list[Path],
    dirs: list[str],
    ref_tables: dict[str, tuple[list[str], list[list[Any]]] | None] | None = None,
) -> None:
    ident = {"job_type": "tables", "tags": ["tables"]}
    lg = RunLogger(
        logger_cfg,
        out,
        {"dirs": dirs, "job": "tables"},
        name=logger_cfg.get("run_name") or "tables",
        write_metrics=False,
        identity=ident,
    )
    if lg.wandb_info:
        print(
            f"[tables] W&B: run {lg.wandb_info['name']!r} in project {lg.wandb_info['project']!r}"
            + (f", group {lg.wandb_info['group']!r} (the runs' sweep)" if lg.wandb_info.get("group") else "")
        )
    try:
        for b in blocks:
            cols = ["setting", "benchmark", "group", "metric"] + [
                c for m in b["mixers"] for c in (m, f"{m}_std", f"{m}_n")
            ]
            rows = [
                [b["setting"], r["benchmark"], r["group"], r["metric"]]
                + [v for m in b["mixers"] for v in r["cells"][m]]
                for r in b["rows"]
            ]
            lg.table("tables/table1" + (f"/{_slug(b['setting'])}" if len(blocks) > 1 else ""), cols, rows)
        rows = []
        for st in p["settings"]:
            for m in p["mixers"]:
                if (st, m) in p["absolute"]:
                    a, d = p["absolute"][(st, m)], p["delta"].get((st, m), (None, None, 0))
                    rows.append([st, m, a[0], a[1], a[2], d[0], d[1]])
        lg.table(
            "tables/perplexity",
            ["setting", "mixer", "avg_ppl", "avg_ppl_std", "n", "delta_vs_" + p["reference"], "delta_std"],
            rows,
        )
        for key, tab in (ref_tables or {}).items():
            if tab is not None:
                lg.table(key, *tab)
        for f in figs:  # every figure this command drew
            lg.images(f"figures/{f.stem}", [f])
    finally:
        lg.finish()


def attach_to_runs(logger_cfg: dict, runs: list[Run], out: Path) -> dict:
    """The tables' W&B run joins the runs it describes: their group (the sweep) and project, as recorded in their
    results.json (``results["wandb"]``), unless --group / --project name others; named after the group."""
    cfg = dict(logger_cfg)
    groups, projects = wandb_groups([r.res for r in runs if r.res])
    if not cfg.get("group") and len(groups) == 1:
        cfg["group"] = next(iter(groups))
    if not cfg.get("project"):
        cfg["project"] = next(iter(projects)) if len(projects) == 1 else "tikmix"
    if not cfg.get("run_name"):
        cfg["run_name"] = f"tables-{_slug(cfg.get('group') or out.name)}"
    if len(groups) > 1 and not logger_cfg.get("group"):
        print(
            f"[tables] the runs belong to {len(groups)} W&B groups ({', '.join(sorted(groups))}): the tables' run is "
            f"in none of them (--group names one)"
        )
    return cfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.tables", description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", help="run folders and/or sweep folders (searched recursively for results.json)")
    ap.add_argument("--out", default=None, help="where to write tables and figures (default: the first folder)")
    ap.add_argument(
        "--preset", default=None, help="use results.json['evals'][PRESET] (from python -m eval) instead of 'eval'"
    )
    ap.add_argument(
        "--oracle",
        default=None,
        metavar="PATH",
        help="oracle.json of python -m eval.oracle report (or a folder holding one, e.g. results/oracle): "
        "adds each mixer's regret against the best static mixture (regret.md, regret.csv, Table 1)",
    )
    ap.add_argument(
        "--schedule-oracle",
        default=None,
        metavar="PATH",
        help="oracle_schedule.json of python -m eval.schedule_oracle report (or a folder holding one, e.g. "
        "results/oracle_schedule): adds each mixer's regret against the best schedule and its per-stage L1 "
        "(regret_schedule.md, regret_schedule.csv, Table 1); with --oracle also the gain captured",
    )
    ap.add_argument("--wandb", action="store_true", help="also log the tables and figures to a W&B run")
    ap.add_argument("--project", default=None, help="W&B project (default: the runs' own, else tikmix)")
    ap.add_argument("--entity", default=None)
    ap.add_argument("--group", default=None, help="W&B group (default: the runs' own group, i.e. their sweep)")
    ap.add_argument("--name", default=None, help="W&B run name (default: tables-<group>)")
    a = ap.parse_args(argv)
    logger_cfg = (
        {
            "name": "wandb",
            "project": a.project,
            "entity": a.entity,
            "group": a.group,
            "tags": ["tables"],
            "mode": None,
            "run_name": a.name,
        }
        if a.wandb
        else None
    )
    missing = [d for d in a.dirs if not Path(d).exists()]
    if len(missing) == len(a.dirs):
        print(f"error: no such folder(s): {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        oracle = load_oracle(a.oracle) if a.oracle else None
        sched = load_schedule_oracle(a.schedule_oracle) if a.schedule_oracle else None
    except OracleError as e:  # ScheduleOracleError too
        print(f"error: {e}", file=sys.stderr)
        return 2
    build(a.dirs, a.out, a.preset, logger_cfg, oracle=oracle, schedule_oracle=sched)
    return 0


if __name__ == "__main__":
    sys.exit(main())
