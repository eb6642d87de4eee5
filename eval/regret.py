"""Regret against the ground truths: the best static mixture (``--oracle``: ``regret.md`` / ``regret.csv``) and the
best schedule (``--schedule-oracle``: ``regret_schedule.md`` / ``regret_schedule.csv``, the gain captured), and
their blocks in ``table1.md``. The files and columns are described in :mod:`eval.tables`."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from eval.runs import (
    DASH,
    LIMIT_MARK,
    Run,
    csv_cell,
    eval_limit,
    fmt_flops,
    fmt_ms,
    group_by,
    limit_note,
    mean_std,
    mixer_sort_key,
)

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
# the headline metrics where higher is better (accuracies); every other one (BPB, losses) is lower-is-better
HIGHER_IS_BETTER = {"in_domain_avg", "out_of_domain_avg", "average"}


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


def oracle_lower_is_better(o: dict) -> bool:
    lib = o.get("lower_is_better")
    return bool(lib) if isinstance(lib, bool) else o["metric"] not in HIGHER_IS_BETTER


def oracle_seed_values(o: dict) -> dict[str, dict[str, float]]:
    """{seed (str): {metric: value}} of the best static mixture; ``scores`` fills in the oracle's own metric."""
    best = o["best"]
    out = {
        str(s): {k: float(v) for k, v in (vals or {}).items() if finite(v)}
        for s, vals in (best.get("per_seed") or {}).items()
    }
    for s, v in (best.get("scores") or {}).items():
        if finite(v):
            out.setdefault(str(s), {}).setdefault(o["metric"], float(v))
    return out


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def run_value(r: Run, key: str) -> float | None:
    """A headline number of a run: ``eval[key]``, else top-level (target_loss_mean), as eval.oracle reads it."""
    v = (r.eval or {}).get(key, (r.res or {}).get(key))
    return float(v) if finite(v) else None


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
        v = run_value(r, key)
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
        "beats": beats_oracle(regs[o["metric"]], oracle_lower_is_better(o)),
    }


def regret(runs: list[Run], o: dict) -> list[dict]:
    """Per setting: {"setting", "rows": [one per mixer, see _regret_row], "notes"}."""
    ref = oracle_seed_values(o)
    blocks = []
    for setting, rs in sorted(group_by([r for r in runs if r.res], lambda r: r.setting).items()):
        by_m = group_by(rs, lambda r: r.mixer)
        rows = [_regret_row(m, by_m[m], o, ref) for m in sorted(by_m, key=mixer_sort_key)]
        blocks.append({"setting": setting, "rows": rows, "notes": _regret_notes(rs, o, ref)})
    return blocks


def _pairing_notes(rs: list[Run], ref: dict, reference: str) -> list[str]:
    """The notes every regret table carries: evaluations cut by a limit, and runs whose seed ``reference`` (the
    best static mixture or the best schedule) lacks, so they could not be paired."""
    notes = []
    note = limit_note(
        {
            m: [(r.seed, eval_limit(r.eval), r.path) for r in g if eval_limit(r.eval) is not None]
            for m, g in sorted(group_by(rs, lambda r: r.mixer).items(), key=lambda x: mixer_sort_key(x[0]))
        }
    )
    if note:
        notes.append(note)
    unpaired = sorted(
        {(r.mixer, str(r.seed)) for r in rs if str(r.seed) not in ref}, key=lambda x: (mixer_sort_key(x[0]), x[1])
    )
    if unpaired:
        notes.append(f"not paired ({reference} has no such seed): " + ", ".join(f"{m} seed {s}" for m, s in unpaired))
    return notes


def _regret_notes(rs: list[Run], o: dict, ref: dict) -> list[str]:
    notes = _pairing_notes(rs, ref, "the best static mixture")
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
    return "> 0 = better" if key in HIGHER_IS_BETTER else "< 0 = better"


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
    if finite(b.get("mean")):
        score += f" {fmt_ms(b['mean'], b.get('std') if finite(b.get('std')) else None, 4)} over seeds {b.get('seeds')}"
    src = (o.get("sources") or {}).get("confirm")
    return (
        f"Best static mixture: **{b.get('name', '?')}** ({score}; {'lower' if oracle_lower_is_better(o) else 'higher'} "
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
            vals = [csv_cell(row["regret"][k][f]) for k, _, _ in mets for f in ("mean", "lo", "hi", "n")]
            rows.append(
                [b["setting"], row["mixer"], row["n"]]
                + vals
                + [
                    csv_cell(row["l1_final"]),
                    csv_cell(row["l1_time_avg"]),
                    csv_cell(row["flops"]),
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
    if not all(finite(v) for w in ws for v in w.values()):
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
        gain = gain_captured(mine, _metric_of(static_ref, k), _metric_of(ref, k), oracle_lower_is_better(o))
    return {
        "mixer": m,
        "regret": regs,
        "n": regs[so["metric"]]["n"],
        "limited": [(r.seed, eval_limit(r.eval)) for r in done if eval_limit(r.eval) is not None],
        "stage_l1": [mean_std([p[k] for p in per_run])[0] for k in range(len(so["best"]["weights"]))],
        "beats": beats_oracle(regs[so["metric"]], oracle_lower_is_better(so)),
        "gain": gain,
    }


def schedule_regret(runs: list[Run], so: dict, o: dict | None = None) -> list[dict]:
    """Per setting: {"setting", "rows": [one per mixer, see _schedule_row], "notes"}; with ``o`` (the best static
    mixture) each row also holds its gain captured."""
    ref = oracle_seed_values(so)
    static_ref = oracle_seed_values(o) if o is not None else None
    blocks = []
    for setting, rs in sorted(group_by([r for r in runs if r.res], lambda r: r.setting).items()):
        by_m = group_by(rs, lambda r: r.mixer)
        rows = [_schedule_row(m, by_m[m], so, ref, o, static_ref) for m in sorted(by_m, key=mixer_sort_key)]
        notes = _schedule_notes(rs, so, ref) + (_gain_notes(so, ref, o, static_ref) if static_ref is not None else [])
        blocks.append({"setting": setting, "rows": rows, "notes": notes})
    return blocks


def _schedule_steps(so: dict) -> int | None:
    """The best schedule's run length, from its stage shares: γ_last = (steps − last start) / steps."""
    starts, g = so["best"]["stage_steps"], so["best"].get("gammas")
    if len(starts) < 2 or not isinstance(g, list) or len(g) != len(starts) or not finite(g[-1]) or g[-1] >= 1:
        return None
    return round(starts[-1] / (1 - g[-1]))


def _schedule_notes(rs: list[Run], so: dict, ref: dict) -> list[str]:
    notes = _pairing_notes(rs, ref, "the best schedule")
    named = {d for w in so["best"]["weights"] for d in w}
    if any(not named <= set(r.res.get("domains") or r.res.get("final_weights") or named) for r in rs):
        notes.append(
            f"the best schedule names domains ({', '.join(sorted(named))}) some runs do not have (another corpus?): "
            "their stage L1 distances are left out"
        )
    total = _schedule_steps(so)
    other = sorted({int(r.res["steps"]) for r in rs if finite(r.res.get("steps"))} - {total}) if total else []
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
        if (s - b if oracle_lower_is_better(o) else b - s) <= 0:
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
    if finite(b.get("mean")):
        score += f" {fmt_ms(b['mean'], b.get('std') if finite(b.get('std')) else None, 4)} over seeds {b.get('seeds')}"
    return (
        f"Best schedule: **{b.get('name', '?')}** ({score}; {'lower' if oracle_lower_is_better(so) else 'higher'} is better; "
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
            vals = [csv_cell(row["regret"][key][f]) for key, _, _ in mets for f in ("mean", "lo", "hi", "n")]
            vals += [csv_cell(v) for v in row["stage_l1"]]
            vals += [row["beats"], so["metric"], so["best"].get("name", ""), len(row.get("limited") or [])]
            if o is not None:
                g = row["gain"]
                gain = "n/a" if g["n"] and g["gain"] is None else csv_cell(g["gain"])
                vals += [gain, g["n"], csv_cell(g["S"]), csv_cell(g["M"]), csv_cell(g["B"]), o["metric"]]
            rows.append([b["setting"], row["mixer"], row["n"]] + vals)
    return cols, rows


def schedule_csv(blocks: list[dict], so: dict, o: dict | None, path: Path) -> None:
    cols, rows = schedule_rows(blocks, so, o)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(rows)
