"""Ground truth for dynamic mixing: the best schedule, measured (README, "Ground truth: the best schedule").

    python -m eval.schedule_oracle run OUT --candidates FILE --stages 0.5 [--jobs 2] [-- overrides]  # search, seed 0
    python -m eval.schedule_oracle confirm OUT [--top 3] [--seeds 0,1,2] [--jobs 2]               # best few, 3 seeds
    python -m eval.schedule_oracle report OUT [--static results/oracle] --dest results/oracle_schedule

A schedule picks one mixture per stage from a candidate set C (a YAML list of {name, weights: {domain: w}}), so
K stages give |C|^K schedules. ``run`` trains all of them at seed 0, stage by stage: each prefix of k stages is
trained once (``trainer.stop_at_stage=k``) and every schedule that shares it continues from its checkpoint
(``trainer.init_from``), which gives the same result as training the schedule from scratch (tested) at
Σ_k |C|^k stage-runs instead of |C|^K whole runs. ``confirm`` trains the ``top`` best schedules that change the
mixture, and the best constant one, at more seeds, each with its **matched-exposure static mixture**
w̄ = Σ_k γ_k w_k (γ_k = the share of the steps stage k holds), so schedule − w̄ is the effect of the order alone.
``report`` names the best schedule (lowest mean over the confirmation seeds), pairs it by seed with its
matched static mixture and with the best static mixture of ``--static`` (eval.oracle's oracle.json), and writes
``oracle_schedule.json`` (the input of ``python -m eval.tables --schedule-oracle``), ``oracle_schedule.md`` and
``schedule.png`` (the best schedule's stages beside the best static mixture).

Every job is ``python train.py`` in its own run directory under OUT/runs/; re-running a command resumes what did
not finish (a finished run is skipped, an interrupted one resumes from its checkpoint). One line per finished job
on the console; a failed job is reported at the end (exit 1) and its run directory holds error.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from eval import figures
from eval.oracle import _extras, _headline, _sign, metric_value, paired

REPO = Path(__file__).resolve().parent.parent
JOB_DEFAULTS = ["logger=none", "trainer.progress=false", "trainer.save_final_model=false"]


# ------------------------------------------------------------------------------------------ the plan
@dataclass
class Plan:
    """What a schedule oracle trains: the candidates, the stage boundaries and the overrides of every job."""

    out: Path
    names: list[str]
    weights: list[dict[str, float]]
    stages: list[float]  # stage boundaries as fractions (budget.stages); K = len + 1
    overrides: list[str]
    metric: str = "in_domain_bpb"

    @property
    def k(self) -> int:
        return len(self.stages) + 1

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        rec = {
            "candidates": [{"name": n, "weights": w} for n, w in zip(self.names, self.weights)],
            "stages": self.stages,
            "overrides": self.overrides,
            "metric": self.metric,
        }
        (self.out / "plan.json").write_text(json.dumps(rec, indent=1))

    @classmethod
    def load(cls, out: Path) -> "Plan":
        p = out / "plan.json"
        if not p.is_file():
            raise SystemExit(
                f"error: {p} not found: start the oracle with `python -m eval.schedule_oracle run {out} ...`"
            )
        rec = json.loads(p.read_text())
        c = rec["candidates"]
        return cls(
            out, [x["name"] for x in c], [x["weights"] for x in c], rec["stages"], rec["overrides"], rec["metric"]
        )


def read_candidates(path: Path) -> tuple[list[str], list[dict[str, float]]]:
    """The candidate set: a YAML/JSON list of {name, weights: {domain: weight}} (weights renormalised)."""
    try:
        rows = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SystemExit(f"error: --candidates: cannot read {path}: {e}") from None
    ok = (
        isinstance(rows, list)
        and rows
        and all(isinstance(r, dict) and isinstance(r.get("weights"), dict) for r in rows)
    )
    if not ok:
        raise SystemExit(f"error: --candidates: {path} must be a YAML list of {{name, weights: {{domain: weight}}}}")
    names, weights = [], []
    for i, r in enumerate(rows):
        w = {str(d): float(v) for d, v in r["weights"].items()}
        s = sum(w.values())
        if s <= 0 or any(v < 0 for v in w.values()):
            raise SystemExit(f"error: --candidates: entry {i} needs non-negative weights with a positive sum")
        names.append(str(r.get("name", i)))
        weights.append({d: v / s for d, v in w.items()})
    if len(set(names)) != len(names):
        raise SystemExit("error: --candidates: names must be unique")
    return names, weights


def schedule_id(pick: tuple[int, ...]) -> str:
    """A schedule's directory name: its candidates' indices, stage by stage (``2-0``)."""
    return "-".join(str(i) for i in pick)


def matched_static(stage_weights: list[dict[str, float]], gammas: list[float]) -> dict[str, float]:
    """w̄ = Σ_k γ_k w_k: the static mixture that gives every domain the exposure the schedule gives it."""
    if len(stage_weights) != len(gammas) or abs(sum(gammas) - 1.0) > 1e-9 or min(gammas) < 0:
        raise ValueError(f"need one share per stage, summing to 1: {gammas}")
    doms = sorted({d for w in stage_weights for d in w})
    return {d: float(sum(g * w.get(d, 0.0) for g, w in zip(gammas, stage_weights))) for d in doms}


def stage_shares(res: dict) -> list[float]:
    """γ_k of a finished schedule run: the share of its steps each stage held (from its own record)."""
    starts = list((res.get("mixer_info") or {}).get("stage_steps") or [])
    total = int(res["steps"])
    if not starts or starts[0] != 0:
        raise ValueError("not a schedule run (mixer_info.stage_steps missing)")
    ends = starts[1:] + [total]
    return [(e - s) / total for s, e in zip(starts, ends)]


# ------------------------------------------------------------------------------------------ the jobs
@dataclass
class Job:
    run_dir: Path
    args: list[str]
    label: str
    after: Path | None = None  # the prefix this job continues (must have finished first)


def _stage_file(plan: Plan, pick: tuple[int, ...]) -> Path:
    p = plan.out / "schedules" / f"{schedule_id(pick)}.yaml"
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(yaml.safe_dump([plan.weights[i] for i in pick], sort_keys=True))
    return p


def schedule_jobs(plan: Plan, picks: list[tuple[int, ...]], seed: int) -> list[list[Job]]:
    """The jobs that train ``picks`` at ``seed``, level by level: level k holds every distinct prefix of k stages
    (the last level: the whole schedules, evaluated); a level starts once the one before it has finished."""
    levels: list[list[Job]] = []
    for k in range(1, plan.k + 1):
        prefixes = sorted({p[:k] for p in picks})
        jobs = []
        for pre in prefixes:
            args = [f"mixer.stages_file={_stage_file(plan, pre)}", f"seed={seed}"]
            if k < plan.k:
                args.append(f"trainer.stop_at_stage={k}")
            after = None
            if k > 1:
                after = plan.out / "runs" / f"s{seed}" / schedule_id(pre[:-1])
                args.append(f"trainer.init_from={after}")
            rd = plan.out / "runs" / f"s{seed}" / schedule_id(pre)
            jobs.append(Job(rd, ["mixer=schedule", *args], f"s{seed} {' > '.join(plan.names[i] for i in pre)}", after))
        levels.append(jobs)
    return levels


def static_job(plan: Plan, pick: tuple[int, ...], seed: int, gammas: list[float]) -> Job:
    w = matched_static([plan.weights[i] for i in pick], gammas)
    f = plan.out / "schedules" / f"static-{schedule_id(pick)}.yaml"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(yaml.safe_dump(w, sort_keys=True))
    rd = plan.out / "runs" / f"s{seed}" / f"static-{schedule_id(pick)}"
    return Job(
        rd,
        ["mixer=fixed", f"mixer.weights_file={f}", "mixer.renormalize=true", f"seed={seed}"],
        f"s{seed} matched static of {' > '.join(plan.names[i] for i in pick)}",
    )


def _command(plan: Plan, job: Job) -> list[str]:
    stages = "[" + ",".join(repr(float(s)) for s in plan.stages) + "]"
    return [
        sys.executable,
        str(REPO / "train.py"),
        *JOB_DEFAULTS,
        *plan.overrides,
        f"budget.stages={stages}",
        *job.args,
        f"hydra.run.dir={job.run_dir}",
    ]


def _run_one(plan: Plan, job: Job) -> tuple[Job, int, float]:
    if (job.run_dir / "results.json").exists():
        return job, 0, 0.0
    if job.after is not None and not (job.after / "results.json").exists():
        return job, -1, 0.0  # its prefix failed: nothing to continue from
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    t = time.perf_counter()
    job.run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(str(job.run_dir) + ".log", "w") as log:
        rc = subprocess.call(_command(plan, job), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return job, rc, time.perf_counter() - t


def run_levels(plan: Plan, levels: list[list[Job]], jobs: int) -> list[Job]:
    """Run each level's jobs ``jobs`` at a time, one level after another; the jobs that failed."""
    failed: list[Job] = []
    total, done = sum(len(lv) for lv in levels), 0
    for lv in levels:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for job, rc, dt in pool.map(lambda j: _run_one(plan, j), lv):
                done += 1
                if rc != 0:
                    failed.append(job)
                score = _score(job.run_dir, plan.metric)
                what = (
                    "failed"
                    if rc > 0
                    else "skipped (its prefix failed)"
                    if rc < 0
                    else (f"{plan.metric} {score:.4f}" if score is not None else "prefix done")
                )
                print(
                    f"[schedule-oracle] {done}/{total} {job.label}: {what}" + (f" ({dt:.0f} s)" if dt else ""),
                    flush=True,
                )
    return failed


def _results(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return None


def _score(run_dir: Path, metric: str) -> float | None:
    res = _results(run_dir)
    return metric_value(res, metric) if res is not None and not res.get("prefix", {}).get("stop_at_stage") else None


def all_picks(plan: Plan) -> list[tuple[int, ...]]:
    return list(itertools.product(range(len(plan.names)), repeat=plan.k))


def search_scores(plan: Plan, seed: int = 0) -> dict[tuple[int, ...], float]:
    out = {}
    for pick in all_picks(plan):
        v = _score(plan.out / "runs" / f"s{seed}" / schedule_id(pick), plan.metric)
        if v is not None:
            out[pick] = v
    return out


def chosen(plan: Plan, top: int) -> list[tuple[int, ...]]:
    """The ``top`` best schedules of the search that change the mixture, and the best constant one."""
    scores = search_scores(plan)
    if not scores:
        raise SystemExit(f"error: no finished schedules under {plan.out}/runs/s0: run the search first")
    sign = _sign(plan.metric)
    ranked = sorted(scores, key=lambda p: sign * scores[p])
    moving = [p for p in ranked if len(set(p)) > 1][:top]
    constant = [p for p in ranked if len(set(p)) == 1][:1]
    return moving + constant


# ------------------------------------------------------------------------------------------ commands
def cmd_run(a: argparse.Namespace) -> int:
    out = Path(a.out)
    names, weights = read_candidates(Path(a.candidates))
    plan = Plan(out, names, weights, [float(x) for x in a.stages.split(",")], list(a.overrides), a.metric)
    if (out / "plan.json").exists():
        old = Plan.load(out)
        if (old.names, old.weights, old.stages, old.overrides) != (
            plan.names,
            plan.weights,
            plan.stages,
            plan.overrides,
        ):
            raise SystemExit(f"error: {out} holds another schedule oracle (plan.json differs): choose another folder")
    plan.save()
    print(
        f"[schedule-oracle] {len(names)} candidates x {plan.k} stages = {len(names) ** plan.k} schedules in "
        f"{sum(len(names) ** k for k in range(1, plan.k + 1))} stage-runs, seed 0, {a.jobs} at a time"
    )
    failed = run_levels(plan, schedule_jobs(plan, all_picks(plan), 0), a.jobs)
    return _finish(failed)


def cmd_confirm(a: argparse.Namespace) -> int:
    plan = Plan.load(Path(a.out))
    picks = chosen(plan, a.top)
    seeds = [int(s) for s in a.seeds.split(",")]
    levels: list[list[Job]] = [[] for _ in range(plan.k)]
    for seed in seeds:
        for k, lv in enumerate(schedule_jobs(plan, picks, seed)):
            levels[k] += lv
    statics = []
    for pick in picks:
        if len(set(pick)) == 1:
            continue  # a constant schedule is its own matched static mixture
        ref = _results(plan.out / "runs" / "s0" / schedule_id(pick))
        statics += [static_job(plan, pick, seed, stage_shares(ref)) for seed in seeds]
    levels[0] = statics + levels[0]  # no prefix to wait for
    (plan.out / "confirm.json").write_text(json.dumps({"picks": [schedule_id(p) for p in picks], "seeds": seeds}))
    print(f"[schedule-oracle] confirming {len(picks)} schedules and their matched static mixtures at seeds {seeds}")
    return _finish(run_levels(plan, levels, a.jobs))


def _finish(failed: list[Job]) -> int:
    if failed:
        print(
            f"[schedule-oracle] {len(failed)} job(s) did not finish: "
            + ", ".join(str(j.run_dir) for j in failed)
            + " (see each <run dir>.log and error.json; run the same command again to resume)"
        )
        return 1
    return 0


# ------------------------------------------------------------------------------------------ report
def _seed_scores(plan: Plan, name: str) -> tuple[dict[int, float], dict[int, dict]]:
    """{seed: score} and {seed: results.json} of one run name (a schedule id or static-<id>) over every seed."""
    scores, res = {}, {}
    for d in sorted((plan.out / "runs").glob(f"s*/{name}")):
        r = _results(d)
        v = _score(d, plan.metric)
        if r is not None and v is not None:
            scores[int(r["seed"])], res[int(r["seed"])] = v, r
    return scores, res


def _entry(plan: Plan, name: str, label: str, weights: Any) -> dict | None:
    scores, res = _seed_scores(plan, name)
    if not scores:
        return None
    vals = list(scores.values())
    return {
        "name": label,
        "id": name,
        "weights": weights,
        "seeds": sorted(scores),
        "mean": float(np.mean(vals)),
        "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
        "scores": {str(s): v for s, v in sorted(scores.items())},
        "per_seed": {str(s): _headline(r) for s, r in sorted(res.items())},
        "extra": _extras(res),
    }


def _beats(p: dict | None, sign: float) -> dict | None:
    if p is not None:
        p["beats_by_more_than_2_paired_std"] = bool(sign * p["mean"] < 0 and abs(p["mean"]) > 2 * p["std"])
    return p


def _scores_of(e: dict) -> dict[int, float]:
    return {int(s): v for s, v in e["scores"].items()}


def confirmed_picks(plan: Plan) -> list[tuple[int, ...]]:
    """The schedules ``confirm`` chose (confirm.json)."""
    p = plan.out / "confirm.json"
    if not p.is_file():
        raise SystemExit(f"error: {p} not found: run `python -m eval.schedule_oracle confirm {plan.out}` first")
    return [tuple(int(i) for i in sid.split("-")) for sid in json.loads(p.read_text())["picks"]]


def report(out: Path, dest: Path, static: Path | None) -> dict:
    plan = Plan.load(out)
    sign = _sign(plan.metric)
    confirmed: dict[str, dict] = {}
    for pick in confirmed_picks(plan):
        sid = schedule_id(pick)
        ws = [plan.weights[i] for i in pick]
        e = _entry(plan, sid, " > ".join(plan.names[i] for i in pick), ws)
        if e is None:
            continue
        r0 = _results(out / "runs" / "s0" / sid)
        e["gammas"] = stage_shares(r0)
        e["stage_steps"] = (r0.get("mixer_info") or {}).get("stage_steps")
        e["constant"] = len(set(pick)) == 1
        ms = (
            None
            if e["constant"]
            else _entry(plan, f"static-{sid}", f"matched static of {e['name']}", matched_static(ws, e["gammas"]))
        )
        e["matched_static"] = ms
        e["vs_matched"] = _beats(paired(_scores_of(e), _scores_of(ms)), sign) if ms else None
        confirmed[sid] = e
    if not confirmed:
        raise SystemExit(
            f"error: no confirmed schedules under {out}: run `python -m eval.schedule_oracle confirm {out}`"
        )
    multi = {k: e for k, e in confirmed.items() if len(e["seeds"]) > 1} or confirmed
    best_id = min(multi, key=lambda k: sign * multi[k]["mean"])
    best = confirmed[best_id]
    res = {
        "metric": plan.metric,
        "lower_is_better": sign > 0,
        "stages": plan.stages,
        "candidates": [{"name": n, "weights": w} for n, w in zip(plan.names, plan.weights)],
        "overrides": plan.overrides,
        "best": best,
        "confirmed": confirmed,
        "search": _search_rows(plan),
        "static_best": None,
        "vs_static_best": None,
        "flops": _flops(out),
    }
    if static is not None:  # eval.oracle's best static mixture (a dense design, confirmed at 3 seeds)
        st = json.loads((static / "oracle.json").read_text())
        res["static_best"] = {
            "name": st["best"]["name"],
            "weights": st["best"]["weights"],
            "source": str(static),
            "mean": st["best"]["mean"],
            "std": st["best"]["std"],
            "scores": st["best"]["scores"],
            "per_seed": st["best"].get("per_seed", {}),
        }
    else:
        res["static_best"] = _best_static_here(confirmed, sign, str(out))
    if res["static_best"] is not None:
        res["vs_static_best"] = _beats(paired(_scores_of(best), _scores_of(res["static_best"])), sign)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "oracle_schedule.json").write_text(json.dumps(res, indent=1))
    (dest / "oracle_schedule.md").write_text(markdown(res))
    fig = figure(res, dest)
    print(markdown(res))
    print(
        f"[schedule-oracle] wrote {dest / 'oracle_schedule.json'}, {dest / 'oracle_schedule.md'}"
        + (f", {fig}" if fig else "")
    )
    return res


def _best_static_here(confirmed: dict, sign: float, where: str) -> dict | None:
    """Without --static: the best of the static mixtures this oracle confirmed (its constant schedules and the
    matched static mixtures), named as such: a lower bound on what a dense static design would find."""
    cands = []
    for e in confirmed.values():
        if e["constant"]:
            cands.append({**e, "weights": e["weights"][0]})
        elif e.get("matched_static"):
            cands.append(e["matched_static"])
    cands = [c for c in cands if len(c["seeds"]) > 1]
    if not cands:
        return None
    b = min(cands, key=lambda c: sign * c["mean"])
    keep = ("name", "weights", "mean", "std", "scores", "per_seed", "seeds")
    return {**{k: b[k] for k in keep}, "source": f"the static mixtures confirmed under {where}"}


def _search_rows(plan: Plan) -> list[dict]:
    scores = search_scores(plan)
    sign = _sign(plan.metric)
    return [
        {
            "id": schedule_id(p),
            "name": " > ".join(plan.names[i] for i in p),
            "score": scores[p],
            "constant": len(set(p)) == 1,
        }
        for p in sorted(scores, key=lambda p: sign * scores[p])
    ]


def _flops(out: Path) -> dict:
    """Compute and run time of every stage-run (a continued run's record includes its prefix: counted once)."""
    tot, wall, n = 0.0, 0.0, 0
    for f in sorted((out / "runs").glob("s*/*/results.json")):
        r = _results(f.parent)
        if r is None:
            continue
        c = float((r.get("compute") or {}).get("total", 0.0))
        w = float(r.get("total_time_s") or 0.0)
        src = (r.get("prefix") or {}).get("init_from")
        if src:  # subtract what the prefix it continued already counted
            p = _results(Path(src)) or {}
            c -= float((p.get("compute") or {}).get("total", 0.0))
        tot, wall, n = tot + c, wall + w, n + 1
    return {"runs": n, "total_flops": tot, "run_wall_s": wall}


def _pfmt(p: dict | None) -> str:
    if not p:
        return "n/a (fewer than 2 seeds)"
    return (
        f"{p['mean']:+.4f} ± {p['std']:.4f} [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}] "
        f"{'(beats it by > 2 paired std)' if p['beats_by_more_than_2_paired_std'] else ''}"
    ).strip()


def markdown(res: dict) -> str:
    m, b = res["metric"], res["best"]
    lines = [
        f"# The best schedule ({m}, {'lower' if res['lower_is_better'] else 'higher'} is better)",
        "",
        f"Stage boundaries {res['stages']} (shares of the steps {[round(g, 4) for g in b['gammas']]}); "
        f"{len(res['candidates'])} candidate mixtures; job overrides: `{' '.join(res['overrides']) or '(none)'}`.",
        "",
        f"Best: **{b['name']}**, {m} {b['mean']:.4f} ± {b['std'] or 0:.4f} over seeds {b['seeds']}",
        "",
        "| stage | " + " | ".join(sorted(b["weights"][0])) + " |",
        "|---|" + "---|" * len(b["weights"][0]),
    ]
    doms = sorted({d for w in b["weights"] for d in w})
    lines[-2] = "| stage | " + " | ".join(doms) + " |"
    lines[-1] = "|---|" + "---|" * len(doms)
    for k, w in enumerate(b["weights"]):
        lines.append(f"| {k + 1} | " + " | ".join(f"{w.get(d, 0):.3f}" for d in doms) + " |")
    if b.get("matched_static"):
        ms = b["matched_static"]["weights"]
        lines.append("| matched static | " + " | ".join(f"{ms.get(d, 0):.3f}" for d in doms) + " |")
    if res.get("static_best"):
        sb = res["static_best"]["weights"]
        lines.append("| best static | " + " | ".join(f"{sb.get(d, 0):.3f}" for d in doms) + " |")
    lines += ["", "| the best schedule against | mean difference ± paired std [95% interval] |", "|---|---|"]
    if b.get("vs_matched") is not None or b.get("matched_static"):
        lines.append(f"| its matched-exposure static mixture (order alone) | {_pfmt(b.get('vs_matched'))} |")
    if res.get("static_best"):
        sb = res["static_best"]
        lines.append(f"| the best static mixture ({sb['name']}, {sb['source']}) | {_pfmt(res.get('vs_static_best'))} |")
    lines += [
        "",
        "Confirmed schedules (mean ± std over seeds; Δ = schedule − its matched static mixture):",
        "",
        f"| schedule | {m} | seeds | matched static {m} | Δ order alone |",
        "|---|---|---|---|---|",
    ]
    for e in res["confirmed"].values():
        ms = e.get("matched_static")
        ms_txt = f"{ms['mean']:.4f} ± {ms['std'] or 0:.4f}" if ms else "(itself)"
        lines.append(
            f"| {e['name']}{' (constant)' if e['constant'] else ''} | {e['mean']:.4f} ± {e['std'] or 0:.4f} | "
            f"{e['seeds']} | {ms_txt} | {_pfmt(e.get('vs_matched')) if ms else ''} |"
        )
    lines += [
        "",
        f"Search (seed 0, every schedule; {len(res['search'])} finished):",
        "",
        f"| rank | schedule | {m} |",
        "|---|---|---|",
    ]
    lines += [
        f"| {i + 1} | {r['name']}{' (constant)' if r['constant'] else ''} | {r['score']:.4f} |"
        for i, r in enumerate(res["search"])
    ]
    f = res["flops"]
    lines += [
        "",
        f"Compute: {f['runs']} stage-runs, {f['total_flops']:.3g} FLOPs, {f['run_wall_s'] / 60:.0f} min of "
        "run time (summed over jobs).",
    ]
    return "\n".join(lines) + "\n"


def figure(res: dict, dest: Path) -> Path | None:
    """The best schedule's stages as stacked bars beside its matched static mixture and the best static one."""
    plt = figures._plt()
    b = res["best"]
    bars = [(f"stage {k + 1}\n({g:.0%} of steps)", w) for k, (w, g) in enumerate(zip(b["weights"], b["gammas"]))]
    if b.get("matched_static"):
        bars.append(("matched\nstatic", b["matched_static"]["weights"]))
    if res.get("static_best"):
        bars.append(("best\nstatic", res["static_best"]["weights"]))
    doms = sorted({d for _, w in bars for d in w if w.get(d, 0) > 0})
    fig, ax = plt.subplots(figsize=(2 + 1.3 * len(bars), 4.5))
    bottom = np.zeros(len(bars))
    cmap = plt.get_cmap("tab20")
    for i, d in enumerate(doms):
        h = np.array([w.get(d, 0.0) for _, w in bars])
        ax.bar(range(len(bars)), h, bottom=bottom, color=cmap(i % 20), label=d)
        bottom += h
    ax.set_xticks(range(len(bars)), [n for n, _ in bars], fontsize=8)
    ax.set_ylabel("mixture weight")
    ax.set_title(f"best schedule: {b['name']}\n{res['metric']} {b['mean']:.3f}", fontsize=9)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    return figures.save_figure(plt, fig, dest, "schedule")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.schedule_oracle", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train every schedule at seed 0, each prefix once")
    r.add_argument("out")
    r.add_argument("--candidates", required=True, help="YAML list of {name, weights: {domain: weight}}")
    r.add_argument("--stages", default="0.5", help="stage boundaries as fractions, comma-separated (budget.stages)")
    r.add_argument("--metric", default="in_domain_bpb")
    c = sub.add_parser("confirm", help="the best few schedules and their matched static mixtures at more seeds")
    c.add_argument("out")
    c.add_argument("--top", type=int, default=3)
    c.add_argument("--seeds", default="0,1,2")
    for p in (r, c):
        p.add_argument("--jobs", type=int, default=2)
    s = sub.add_parser("report", help="name the best schedule; oracle_schedule.json, .md and schedule.png")
    s.add_argument("out")
    s.add_argument("--static", type=Path, default=None, help="eval.oracle's output folder (oracle.json)")
    s.add_argument("--dest", "--out-dir", dest="dest", type=Path, default=Path("results/oracle_schedule"))
    a, rest = ap.parse_known_args(argv)
    a.overrides = [x for x in rest if x != "--"]  # Hydra overrides of every job (run), e.g. -- model=20m
    if rest and a.cmd != "run" or any(x.startswith("-") for x in a.overrides):
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    if a.cmd == "run":
        return cmd_run(a)
    if a.cmd == "confirm":
        return cmd_confirm(a)
    report(Path(a.out), a.dest, a.static)
    return 0


if __name__ == "__main__":
    sys.exit(main())
