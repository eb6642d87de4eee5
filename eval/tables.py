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

This module owns Table 1, the perplexity table and the command line; the runs it reads (``eval.runs``), regret
(``eval.regret``), the figures (``eval.figures``) and the W&B run (``eval.wandb_report``) live beside it, and their
public names are importable from here.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

from eval.figures import (
    fig_bpb_vs_compute,
    fig_influence,
    fig_mixtures,
    fig_ppl_vs_compute,
    fig_regret_vs_compute,
    fig_score_vs_compute,
)
from eval.regret import (
    REGRET_FOOTNOTE,
    REGRET_METRICS,
    OracleError,
    ScheduleOracleError,
    beats_oracle,
    finite,
    gain_captured,
    l1,
    load_oracle,
    load_schedule_oracle,
    oracle_note,
    oracle_seed_values,
    paired_regret,
    regret,
    regret_csv,
    regret_markdown,
    regret_metrics,
    regret_rows,
    regret_table_md,
    schedule_csv,
    schedule_footnote,
    schedule_markdown,
    schedule_note,
    schedule_regret,
    schedule_rows,
    schedule_table_md,
    shown_path,
    stage_l1,
    stage_l1s,
    t975,
    time_averaged_weights,
    window_averaged_weights,
)
from eval.runs import (
    DASH,
    LIMIT_MARK,
    Run,
    avg_test_ppl,
    collect,
    csv_cell,
    eval_limit,
    fmt_flops,
    fmt_ms,
    group_by,
    limit_note,
    mean_std,
    mixer_sort_key,
)
from eval.wandb_report import attach_to_runs, log_report
from tikmix.mixer import table_order

# The table tool's public names, its own and those of the modules it was split into (eval.runs, eval.regret,
# eval.figures, eval.wandb_report), importable from here as before.
__all__ = [
    "CONTINUOUS",
    "DASH",
    "LIMIT_MARK",
    "OracleError",
    "REGRET_FOOTNOTE",
    "REGRET_METRICS",
    "Run",
    "ScheduleOracleError",
    "attach_to_runs",
    "beats_oracle",
    "build",
    "collect",
    "eval_limit",
    "fig_bpb_vs_compute",
    "fig_influence",
    "fig_mixtures",
    "fig_ppl_vs_compute",
    "fig_regret_vs_compute",
    "fig_score_vs_compute",
    "fmt_flops",
    "fmt_ms",
    "gain_captured",
    "l1",
    "limit_note",
    "load_oracle",
    "load_schedule_oracle",
    "main",
    "mean_std",
    "mixer_sort_key",
    "oracle_note",
    "oracle_seed_values",
    "paired_regret",
    "perplexity",
    "perplexity_csv",
    "perplexity_markdown",
    "regret",
    "regret_csv",
    "regret_markdown",
    "regret_metrics",
    "regret_rows",
    "regret_table_md",
    "schedule_csv",
    "schedule_footnote",
    "schedule_markdown",
    "schedule_note",
    "schedule_regret",
    "schedule_rows",
    "schedule_table_md",
    "shown_path",
    "stage_l1",
    "stage_l1s",
    "t975",
    "table1",
    "table1_csv",
    "table1_markdown",
    "time_averaged_weights",
    "window_averaged_weights",
]


def __getattr__(name: str) -> Any:
    # MIXER_ORDER, the tables' row order (references, then the baselines, then TiKMiX), is made from the registry
    # when first asked for, not at import: discovery imports every mixer module, and some build on tikmix.run,
    # which imports this module
    if name == "MIXER_ORDER":
        return table_order()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    for setting, rs in sorted(group_by([r for r in runs if r.setting != "?" or r.res], lambda r: r.setting).items()):
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
        dup = [
            (m, s)
            for (m, s), g in group_by([r for r in rs if r.res], lambda r: (r.mixer, r.seed)).items()
            if len(g) > 1
        ]
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
        ref = {r.seed: avg_test_ppl(r) for r in rs if r.mixer == reference}
        ref_mean = mean_std(list(ref.values()))[0]
        domains: list[str] = []
        for r in rs:
            domains += [d for d in r.res["test_ppl"] if d not in domains]
        per_domain[st] = {"domains": domains, "cells": {}}
        for m in mixers:
            mine = [r for r in rs if r.mixer == m]
            if not mine:
                continue
            absolute[(st, m)] = mean_std([avg_test_ppl(r) for r in mine])
            if ref_mean is not None and m != reference:
                ds = [
                    (avg_test_ppl(r) - (ref[r.seed] if ref.get(r.seed) is not None else ref_mean))
                    for r in mine
                    if avg_test_ppl(r) is not None
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
                w.writerow([st, m, "average", csv_cell(a[0]), csv_cell(a[1]), a[2], csv_cell(dl[0]), csv_cell(dl[1])])
                for d in pd_["domains"]:
                    c = pd_["cells"].get((d, m), (None, None, 0))
                    w.writerow([st, m, d, csv_cell(c[0]), csv_cell(c[1]), c[2], "", ""])


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
    notes = notes + tikmix_m_fit_notes(runs)
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
        log_report(attach_to_runs(logger_cfg, runs, out), out, blocks, p, figs, [str(d) for d in dirs], tabs)
    if not quiet:
        print(md)
        print(
            f"[tables] {len(runs)} runs; wrote {', '.join(str(v.name) for k, v in files.items() if k != 'figures')}"
            f"{', ' + ', '.join(f.name for f in figs) if figs else ''} in {out}"
        )
    files["runs"] = runs
    files["notes"] = notes
    return files


def tikmix_m_fit_notes(runs: list[Run]) -> list[str]:
    """Per setting, how often TiKMiX-M's fitted surface was trusted: its boundaries that moved to the fitted optimum
    (mixer_history ... tikmix_m.status "ok") out of all, and the held-out R² of the fits; else M kept w_D."""
    notes = []
    for st, rs in sorted(group_by([r for r in runs if r.res and r.mixer == "tikmix_m"], lambda r: r.setting).items()):
        recs = [h.get("tikmix_m") or {} for r in rs for h in r.res.get("mixer_history") or [] if isinstance(h, dict)]
        recs = [m for m in recs if m.get("status")]
        if not recs:
            continue
        ok = sum(m["status"] == "ok" for m in recs)
        r2 = [float(m["fit"]["r2_holdout"]) for m in recs if finite((m.get("fit") or {}).get("r2_holdout"))]
        span = f"; held-out R² of the fits {min(r2):.2f} to {max(r2):.2f}" if r2 else ""
        notes.append(
            f"TiKMiX-M ({st}): the fitted optimum was taken at {ok} of {len(recs)} boundaries over {len(rs)} runs, "
            f"w_D kept at the others (margin × held-out RMSE not cleared, or no usable fit){span}."
        )
    return notes


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
