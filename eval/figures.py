"""The table tool's figures (mixtures over training, scores and regret against mixture-search FLOPs, influence)
and the one place a figure is saved (:func:`save_figure`); the suite's figure backend is :func:`tikmix.report._plt`."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from eval.regret import finite, oracle_lower_is_better
from eval.runs import Run, avg_test_ppl, eval_limit, group_by, mixer_sort_key
from tikmix.report import _plt, dominated_linthresh

# ----------------------------------------------------------------------------------------- figures


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "x"


def save_figure(
    plt, fig, out: Path, kind: str, mixer: str | None = None, setting: str | None = None, multi_setting: bool = False
) -> Path:
    """Lay out, write and close a figure: ``out/<kind>.png``, or per mixer ``out/<kind>_<mixer>[_<setting>].png``."""
    name = kind if mixer is None else f"{kind}_{slug(mixer)}" + (f"_{slug(setting)}" if multi_setting else "")
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
    for (st, m), rs in sorted(group_by([r for r in runs if r.res], lambda r: (r.setting, r.mixer)).items()):
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
        written.append(save_figure(plt, fig, out, "mixture", m, st, multi_setting))
    return written


def _finite_vals(xs: Iterable[Any]) -> list[float]:
    return [float(x) for x in xs if finite(x)]


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
    for (st, m), rs in group_by([r for r in runs if finite(value(r))], lambda r: (r.setting, r.mixer)).items():
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
    return save_figure(plt, fig, out, name)


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
        avg_test_ppl,
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
        group_by([r for r in runs if r.res and _influence_records(r.res)], lambda r: (r.setting, r.mixer)).items()
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
        written.append(save_figure(plt, fig, out, "influence", m, st, multi_setting))
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
    groups = group_by(list(range(len(xs))), lambda i: round(math.log10(xs[i]), 1))
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
    ax.set_ylabel(f"Δ {key}, mixer − best static\n({'< 0' if oracle_lower_is_better(o) else '> 0'} = better)")
    ax.set_title(
        f"Regret against the best static mixture ({o['best'].get('name', '?')}) vs mixture-search compute\n"
        f"mean and 95% t-interval over paired seeds" + (f"; {settings[0]}" if len(settings) == 1 else ""),
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()  # the label's place is chosen in the final layout
    _label_zero_line(fig, ax, [(x, p[3]) for x, p in zip(xs, pts)])
    return save_figure(plt, fig, out, "regret_vs_compute.png")
