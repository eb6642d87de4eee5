"""Does a comparison's ranking transfer to another scale? (results/README.md, "Does the ranking transfer?")

    python -m eval.transfer multirun/scale --out results/scale_v3

Reads every finished run under the folders (the same mixers, usually ``+sweep=scale``, at two or more settings:
model / budget / data), and writes ``transfer.md``, ``transfer.csv``, ``transfer.json`` and ``transfer.png``:

- per setting, each mixer's mean ± std over seeds of each ranking metric, its rank, and its paired difference to
  the setting's static reference (the oracle's confirmation mixture run there, ``mixer=design``), when it exists;
- for each pair of settings and each metric, Spearman's ρ between the mixers' rankings (the mixers both have),
  with a 95% bootstrap interval that resamples each mixer's seeds (the rankings are of seed means, and a seed std
  the size of the gaps between ranks makes ρ itself noisy);
- per downstream task, its chance accuracy and, per setting, the mean accuracy over every run and the best
  mixer's: a task counts as learned at a setting when the best mixer's mean exceeds chance by more than three
  binomial standard errors of a mean over its seeds (three, not two: it is the best of several mixers).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from eval.figures import save_figure
from eval.regret import HIGHER_IS_BETTER, finite, paired_regret, run_value, shown_path
from eval.runs import DASH, Run, collect, group_by, mean_std, mixer_sort_key
from tikmix.data import synthetic
from tikmix.report import _plt

METRICS = ("in_domain_bpb", "in_domain_avg", "average_bpb", "average")  # the oracle's metric first
STATIC = "design"  # the static reference's mixer: the oracle's confirmation mixture (+sweep=oracle_confirm)
LEARNED_SE = 3.0  # how many binomial standard errors above chance make a task "learned" (see the module's doc)


class TransferError(ValueError):
    """Nothing to compare: fewer than two settings with finished, evaluated runs."""


# ------------------------------------------------------------------------------------------ reading
def label(r: Run) -> str:
    """A run's row: its mixer, or for a static reference ``static <point>`` (the oracle's name for the mixture)."""
    if r.mixer == STATIC:
        return f"static {((r.res or {}).get('mixer_info') or {}).get('point', '?')}"
    return r.mixer


def _train_flops(rs: list[Run]) -> float:
    """A setting's training compute (results.json's compute.train, FLOPs), mean over its runs: the scale's order."""
    vals = [float((r.res.get("compute") or {}).get("train") or 0) for r in rs]
    return float(np.mean(vals)) if vals else 0.0


def usable(runs: list[Run]) -> dict[str, list[Run]]:
    """{setting: its finished, evaluated runs}, settings in order of training compute (smallest first)."""
    ok = [r for r in runs if r.res is not None and r.eval and not r.problem]
    by = group_by(ok, lambda r: r.setting)
    if len(by) < 2:
        found = ", ".join(sorted(by)) or "none"
        raise TransferError(f"need finished, evaluated runs at two or more settings; found: {found}")
    return dict(sorted(by.items(), key=lambda kv: _train_flops(kv[1])))


def seed_values(rs: list[Run], metric: str) -> dict[str, dict[str, float]]:
    """{label: {seed: value}} of one setting's runs."""
    out: dict[str, dict[str, float]] = {}
    for r in rs:
        v = run_value(r, metric)
        if v is not None:
            out.setdefault(label(r), {})[str(r.seed)] = v
    return out


def seed_means(vals: dict[str, dict[str, float]]) -> dict[str, float]:
    """{label: mean over its seeds} of seed_values()."""
    return {m: float(np.mean(list(v.values()))) for m, v in vals.items()}


def _order(labels) -> list[str]:
    return sorted(labels, key=lambda m: (m.startswith("static"), mixer_sort_key(m)))


# ------------------------------------------------------------------------------------------ ranks
def ranks(means: dict[str, float], metric: str) -> dict[str, int]:
    """1 = best; ties share the better rank."""
    sign = -1.0 if metric in HIGHER_IS_BETTER else 1.0
    ordered = sorted(means, key=lambda m: sign * means[m])
    return {m: 1 + sum(sign * means[o] < sign * means[m] for o in ordered) for m in ordered}


def spearman(a: dict[str, float], b: dict[str, float]) -> tuple[float | None, int]:
    """Spearman's ρ of two {mixer: mean} over the mixers both have (None below 3 or when one side is constant)."""
    from scipy.stats import rankdata

    common = sorted(set(a) & set(b))
    if len(common) < 3:
        return None, len(common)
    x, y = [a[m] for m in common], [b[m] for m in common]
    if len(set(x)) < 2 or len(set(y)) < 2:
        return None, len(common)
    # Spearman's ρ: Pearson's r of the (tie-averaged) ranks; scipy.stats.spearmanr's overhead dominates the bootstrap
    return float(np.corrcoef(rankdata(x), rankdata(y))[0, 1]), len(common)


def bootstrap_rho(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]], iters: int = 2000, seed: int = 0):
    """95% interval of ρ when each mixer's seeds are resampled with replacement at each setting (None: too few)."""
    rng = np.random.default_rng(seed)
    common = sorted(set(a) & set(b))
    if len(common) < 3:
        return None
    xa = [np.array(list(a[m].values())) for m in common]
    xb = [np.array(list(b[m].values())) for m in common]
    rhos = []
    for _ in range(iters):
        ma = {m: float(rng.choice(v, len(v)).mean()) for m, v in zip(common, xa)}
        mb = {m: float(rng.choice(v, len(v)).mean()) for m, v in zip(common, xb)}
        rho, _n = spearman(ma, mb)
        if rho is not None:
            rhos.append(rho)
    if len(rhos) < iters // 2:
        return None
    return float(np.percentile(rhos, 2.5)), float(np.percentile(rhos, 97.5))


def setting_rows(rs: list[Run], metric: str) -> list[dict]:
    """One row per mixer of a setting: mean ± std over seeds, rank, and the paired Δ to the static reference."""
    vals = seed_values(rs, metric)
    rk = ranks(seed_means(vals), metric)
    static = [m for m in vals if m.startswith("static")]
    rows = []
    for m in _order(vals):
        mean, std, n = mean_std(list(vals[m].values()))
        delta = paired_regret(vals[m], vals[static[0]]) if static and m != static[0] else None
        rows.append({"mixer": m, "n": n, "mean": mean, "std": std, "rank": rk[m], "delta": delta})
    return rows


# ------------------------------------------------------------------------------------------ tasks
def chance(task: str) -> float | None:
    """1 / the number of choices of a synthetic task (None: not a synthetic task, not judged)."""
    if task not in synthetic.TASKS:
        return None
    return 1.0 / len(synthetic.task_examples(task, "test", 1)[0]["choices"])


def _task_acc(rs: list[Run], task: str) -> tuple[dict[str, list[float]], int]:
    """{label: accuracies (%) over seeds} of one task, and its examples per run."""
    acc: dict[str, list[float]] = {}
    n = 0
    for r in rs:
        t = (r.eval.get("tasks") or {}).get(task)
        if isinstance(t, dict) and finite(t.get("value")):
            acc.setdefault(label(r), []).append(float(t["value"]))
            n = max(n, int(t.get("n_samples") or 0))
    return acc, n


def task_rows(by: dict[str, list[Run]]) -> list[dict]:
    """Per task: chance, and per setting the mean over runs, the best mixer's mean and whether it is learned."""
    tasks = sorted({t for rs in by.values() for r in rs for t in (r.eval.get("tasks") or {})})
    rows = []
    for task in tasks:
        c = chance(task)
        row: dict[str, Any] = {"task": task, "chance": None if c is None else 100.0 * c, "settings": {}}
        for st, rs in by.items():
            acc, n = _task_acc(rs, task)
            if not acc:
                continue
            best = max(acc, key=lambda m: np.mean(acc[m]))
            k = len(acc[best])
            learned = None
            if c is not None and n:
                se = 100.0 * math.sqrt(c * (1 - c) / (n * k))
                learned = float(np.mean(acc[best])) - 100.0 * c > LEARNED_SE * se
            everyone = [a for v in acc.values() for a in v]
            row["settings"][st] = {
                "mean": float(np.mean(everyone)),
                "best": best,
                "best_mean": float(np.mean(acc[best])),
                "learned": learned,
            }
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ report
def analyse(runs: list[Run], metrics=METRICS) -> dict:
    """Everything the report shows, as plain data (written to transfer.json)."""
    by = usable(runs)
    settings = list(by)
    out: dict[str, Any] = {"settings": settings, "metrics": list(metrics), "rows": {}, "rho": [], "tasks": []}
    for metric in metrics:
        out["rows"][metric] = {st: setting_rows(by[st], metric) for st in settings}
        vals = {st: seed_values(by[st], metric) for st in settings}
        for i, a in enumerate(settings):
            for b in settings[i + 1 :]:
                rho, n = spearman(seed_means(vals[a]), seed_means(vals[b]))
                ci = bootstrap_rho(vals[a], vals[b])
                out["rho"].append({"metric": metric, "a": a, "b": b, "rho": rho, "n": n, "ci": ci})
    out["tasks"] = task_rows(by)
    out["wall_time_s"] = {st: float(sum(r.res.get("total_time_s") or 0.0 for r in by[st])) for st in settings}
    return out


def _f(x: float | None, nd: int = 3, sign: bool = False) -> str:
    if x is None:
        return DASH
    return f"{x:+.{nd}f}" if sign else f"{x:.{nd}f}"


def _delta(d: dict | None, nd: int) -> str:
    if not d or not d["n"]:
        return DASH
    iv = f" [{_f(d['lo'], nd, True)}, {_f(d['hi'], nd, True)}]" if d["lo"] is not None else ""
    return f"{_f(d['mean'], nd, True)}{iv}"


def _metric_table(a: dict, metric: str) -> list[str]:
    nd = 1 if metric in HIGHER_IS_BETTER else 4
    better = "higher" if metric in HIGHER_IS_BETTER else "lower"
    head = "| Mixer | " + " | ".join(f"{st}: mean ± std (rank) | Δ to static" for st in a["settings"]) + " |"
    lines = [f"### {metric} ({better} is better)", "", head, "|" + "---|" * (1 + 2 * len(a["settings"]))]
    cells: dict[str, dict[str, dict]] = {}
    for st in a["settings"]:
        for row in a["rows"][metric][st]:
            cells.setdefault(row["mixer"], {})[st] = row
    for m in _order(cells):
        parts = []
        for st in a["settings"]:
            r = cells[m].get(st)
            ms = f"{_f(r['mean'], nd)} ± {_f(r['std'], nd)} ({r['rank']})" if r else DASH
            parts += [ms, _delta(r["delta"], nd) if r else DASH]
        lines.append(f"| {m} | " + " | ".join(parts) + " |")
    return lines + [""]


def _rho_table(a: dict) -> list[str]:
    lines = ["## Spearman's ρ between the settings' rankings", ""]
    lines += ["| metric | settings | mixers | ρ | 95% bootstrap interval |", "|---|---|---|---|---|"]
    for r in a["rho"]:
        ci = f"[{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}]" if r["ci"] else DASH
        lines.append(f"| {r['metric']} | {r['a']} → {r['b']} | {r['n']} | {_f(r['rho'], 2, True)} | {ci} |")
    return lines + [""]


def _task_table(a: dict) -> list[str]:
    lines = ["## Which tasks are learned", ""]
    head = "| task | chance % | " + " | ".join(f"{st}: mean, best mixer (learned?)" for st in a["settings"]) + " |"
    lines += [head, "|" + "---|" * (2 + len(a["settings"]))]
    for t in a["tasks"]:
        parts = []
        for st in a["settings"]:
            s = t["settings"].get(st)
            mark = {True: "yes", False: "no", None: "?"}[s["learned"]] if s else ""
            parts.append(f"{s['mean']:.1f}, {s['best']} {s['best_mean']:.1f} ({mark})" if s else DASH)
        lines.append(f"| {t['task']} | {_f(t['chance'], 1)} | " + " | ".join(parts) + " |")
    return lines + [""]


NOTES = (
    "Δ to static: the mixer minus the static reference run at the same setting (the oracle's best static mixture, "
    "`mixer=design`), paired by seed, mean and 95% Student t-interval. Ranks: 1 = best, over every row of the "
    "setting including the static reference. ρ: Spearman's rank correlation of the mixers' seed means between two "
    "settings; its interval resamples each mixer's seeds with replacement (2,000 draws). A task is learned "
    f"(yes) when the best mixer's mean accuracy exceeds chance by more than {LEARNED_SE:g} binomial standard "
    "errors of a mean over its seeds; `?`: chance unknown (not a synthetic task)."
)


def markdown(a: dict) -> str:
    lines = ["# Does the ranking transfer?", ""]
    for st in a["settings"]:
        lines.append(f"- {st}: {a['wall_time_s'][st] / 60:.0f} min of run time summed over its runs")
    lines.append("")
    lines += _rho_table(a)
    lines += ["## Each mixer at each setting", ""]
    for metric in a["metrics"]:
        lines += _metric_table(a, metric)
    lines += _task_table(a)
    return "\n".join(lines + [NOTES, ""])


def write_csv(a: dict, path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "setting", "mixer", "n", "mean", "std", "rank", "delta", "delta_lo", "delta_hi"])
        for metric in a["metrics"]:
            for st in a["settings"]:
                for r in a["rows"][metric][st]:
                    d = r["delta"] or {}
                    w.writerow(
                        [metric, st, r["mixer"], r["n"], r["mean"], r["std"], r["rank"]]
                        + ["" if d.get(k) is None else d[k] for k in ("mean", "lo", "hi")]
                    )


def figure(a: dict, out: Path, metric: str = METRICS[0]) -> Path | None:
    """The metric's seed mean ± std per mixer at each setting, a line per mixer: crossings are rank changes."""
    rows = a["rows"].get(metric)
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    mixers = _order({r["mixer"] for st in a["settings"] for r in rows[st]})
    cmap = plt.get_cmap("tab10" if len(mixers) <= 10 else "tab20")
    for i, m in enumerate(mixers):
        pts = [(j, r) for j, st in enumerate(a["settings"]) for r in rows[st] if r["mixer"] == m]
        xs = [j + 0.03 * (i - len(mixers) / 2) for j, _ in pts]
        ys = [r["mean"] for _, r in pts]
        es = [r["std"] or 0.0 for _, r in pts]
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=cmap(i), label=m)
    ax.set_xticks(range(len(a["settings"])), [st.replace(" / ", "\n") for st in a["settings"]], fontsize=8)
    better = "higher" if metric in HIGHER_IS_BETTER else "lower"
    ax.set_ylabel(f"{metric} ({better} is better)")
    ax.set_title("Each mixer at each scale (mean ± std over seeds)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(plt, fig, out, "transfer")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.transfer", description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", help="sweep folders with the same mixers at two or more settings")
    ap.add_argument("--out", required=True, help="where to write transfer.md/.csv/.json/.png")
    ap.add_argument("--metrics", default=",".join(METRICS), help=f"comma-separated eval keys (default {METRICS})")
    args = ap.parse_args(argv)
    try:
        a = analyse(collect(args.dirs), tuple(args.metrics.split(",")))
    except TransferError as e:
        print(f"[transfer] {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    a["sources"] = [shown_path(d) for d in args.dirs]
    (out / "transfer.md").write_text(markdown(a))
    write_csv(a, out / "transfer.csv")
    (out / "transfer.json").write_text(json.dumps(a, indent=1))
    fig = figure(a, out)
    print(markdown(a))
    print(f"[transfer] wrote {out / 'transfer.md'}, transfer.csv, transfer.json" + (f", {fig.name}" if fig else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
