"""What a run shows in W&B beyond its training curves: who it is (group, job type, tags, name) and what its
mixer measured and decided, read generically from ``mixer.history`` (JSON records) and ``mixer.info``.

A mixer that appends a record to ``self.history`` gets it into W&B with no code of its own:

* live, when the record carries an integer ``step`` and is appended during training: every number in it
  (nested dicts flattened with ``/``; booleans as 0/1) as a scalar ``mixer/<path>`` at the trainer's step;
* at the end of the run: one table row per record (``mixer/history``: every number and string leaf, and the
  record as JSON), every matrix in the records (a ``{row: {column: number}}`` mapping, e.g. an influence
  matrix target × domain) as a table ``mixer/<path>`` (one row per record and matrix row) and, when its columns
  are domains, a heatmap gallery ``mixer/<path>_heatmap``; every number or string in ``mixer.info`` as a summary
  value ``mixer_info/<path>``.

Records without a ``step`` (RegMix's proxies, DoReMi's reference rounds) are written before training, so they
reach W&B through the tables only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

MAX_LEAVES = 2000  # numbers and strings of one record that reach W&B (a bound, not a filter in practice)
MAX_HEATMAPS = 12  # heatmap images per matrix path and run (evenly spaced records)


# ------------------------------------------------------------------------------------------------ identity


def sweep_dir() -> str | None:
    """``hydra.sweep.dir`` of the Hydra multirun this process is a job of; None outside a multirun."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return None
        return str(hc.sweep.dir)
    except Exception:  # noqa: BLE001 — not under Hydra (tests, python -m eval)
        return None


def _preset(cfg: Mapping[str, Any], group: str, *keys: str) -> str | None:
    sub = cfg.get(group)
    if not isinstance(sub, Mapping):
        return None
    for k in keys:
        v = sub.get(k)
        if v not in (None, ""):
            return str(v)
    return None


def _group_name(sweep: str) -> str:
    """A sweep folder as a W&B group: as given when relative (``multirun/2026-01-01/12-00-00``), relative to the
    working directory when under it, else its last three parts; at most 128 characters (W&B's limit)."""
    p = Path(str(sweep).rstrip("/"))
    if p.is_absolute():
        try:
            p = p.relative_to(Path.cwd())
        except ValueError:
            p = Path(*p.parts[-3:])
    name = p.as_posix().removeprefix("./")
    return name[-128:]


def wandb_identity(cfg: Mapping[str, Any], run_dir: str | Path, sweep: str | None = None) -> dict[str, Any]:
    """W&B group / job_type / tags / name of a run.

    group: the Hydra sweep (``hydra.sweep.dir`` as given, e.g. ``multirun/2026-01-01/12-00-00``) so that every
    job of a sweep lands in one group, or None for a single run (``logger.group`` sets one explicitly); job_type:
    the mixer, so that grouping by job type aggregates a mixer's seeds; tags: the presets
    (``mixer:``, ``model:``, ``budget:``, ``data:``, ``eval:``); name: ``<mixer>_s<seed>-<6 hex of the run dir>``,
    unique per run directory and the same when the run resumes.
    """
    sweep = sweep if sweep is not None else sweep_dir()
    mixer = _preset(cfg, "mixer", "name") or "run"
    seed = cfg.get("seed")
    tags = [
        f"{g}:{v}"
        for g, v in (
            ("mixer", mixer),
            ("model", _preset(cfg, "model", "name")),
            ("budget", _preset(cfg, "budget", "name")),
            ("data", _preset(cfg, "data", "name", "source")),
            ("eval", _preset(cfg, "eval", "name")),
        )
        if v
    ]
    if sweep:
        tags.append("sweep")
    h = hashlib.sha1(str(Path(run_dir).expanduser().resolve()).encode()).hexdigest()[:6]
    group = _group_name(sweep) if sweep else None
    return {"group": group, "job_type": mixer, "tags": tags, "name": f"{mixer}_s{seed}-{h}"}


# ------------------------------------------------------------------------------------- records, generically


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def leaves(rec: Any, prefix: str = "", out: dict | None = None) -> dict[str, Any]:
    """Numbers, booleans, strings and None at dict paths of a record (``a/b/c``); lists are not entered."""
    out = {} if out is None else out
    if not isinstance(rec, Mapping):
        return out
    for k, v in rec.items():
        path = f"{prefix}{k}"
        if len(out) >= MAX_LEAVES:
            break
        if isinstance(v, Mapping):
            leaves(v, path + "/", out)
        elif v is None or isinstance(v, (bool, str)) or _is_num(v):
            out[path] = v
    return out


def scalars(rec: Mapping[str, Any], prefix: str = "mixer/") -> dict[str, float]:
    """The record's numbers as W&B scalars (booleans as 0/1; non-finite numbers and strings left out)."""
    out = {}
    for k, v in leaves(rec).items():
        if k == "step":
            continue
        if isinstance(v, bool):
            out[prefix + k] = int(v)
        elif _is_num(v) and math.isfinite(float(v)):
            out[prefix + k] = v
    return out


def matrices(rec: Any, prefix: str = "") -> dict[str, tuple[list[str], list[str], list[list[float | None]]]]:
    """Every ``{row: {column: number}}`` mapping in a record (at least one row and two columns, or two rows):
    {path: (row names, column names, values)}; a missing cell is None."""
    out: dict[str, tuple[list[str], list[str], list[list[float | None]]]] = {}
    if not isinstance(rec, Mapping):
        return out
    for k, v in rec.items():
        path = f"{prefix}{k}"
        if not isinstance(v, Mapping) or not v:
            continue
        rows = list(v.values())
        if all(isinstance(r, Mapping) and r and all(x is None or _is_num(x) for x in r.values()) for r in rows):
            cols = list(dict.fromkeys(c for r in rows for c in r))
            if len(rows) * len(cols) >= 2 and len(cols) >= 1:
                out[path] = (
                    [str(r) for r in v],
                    [str(c) for c in cols],
                    [[(float(r[c]) if _is_num(r.get(c)) else None) for c in cols] for r in rows],
                )
                continue
        out.update(matrices(v, path + "/"))
    return out


def _cell(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class HistoryStream:
    """Sends the records a mixer appends to its history during training to W&B as scalars, at the trainer's
    step. Records already there when it is made (written before training, or logged before a resume) are
    left to the end-of-run tables."""

    def __init__(self, logger: Any, mixer: Any):
        self.logger = logger
        self.mixer = mixer
        self.n = len(getattr(mixer, "history", None) or [])

    def flush(self, step: int) -> None:
        hist = getattr(self.mixer, "history", None) or []
        if len(hist) < self.n:  # a mixer that replaced its history
            self.n = 0
        new, self.n = hist[self.n :], len(hist)
        if not new or self.logger is None or getattr(self.logger, "wandb", None) is None:
            return
        out: dict[str, Any] = {}
        for rec in new:
            if isinstance(rec, Mapping) and _is_num(rec.get("step")):
                out.update(scalars(rec))
        if out:
            self.logger.log_wandb(out, step)


# ------------------------------------------------------------------------------------------- end of a run


def history_table(history: list) -> tuple[list[str], list[list[Any]]]:
    """One row per record: index, step, every number/string leaf (first-seen order) and the record as JSON."""
    flat = [leaves(r) if isinstance(r, Mapping) else {} for r in history]
    cols = list(dict.fromkeys(k for f in flat for k in f if k != "step"))[:MAX_LEAVES]
    # a W&B table column holds one type: a leaf that is a number in one record and a string (or bool) in another
    # becomes text in every row
    kind = lambda v: "bool" if isinstance(v, bool) else "num" if _is_num(v) else "str"  # noqa: E731
    mixed = {c for c in cols if len({kind(f[c]) for f in flat if f.get(c) is not None}) > 1}
    rows = []
    for i, (r, f) in enumerate(zip(history, flat)):
        cells = [_cell(f.get(c)) if c not in mixed or f.get(c) is None else str(f[c]) for c in cols]
        step = f.get("step") if _is_num(f.get("step")) else None
        rows.append([i, step] + cells + [json.dumps(r, default=str)[:100_000]])
    return ["index", "step", *cols, "record"], rows


def _plt():
    import matplotlib

    # its font cache's first build logs "generated new fontManager" at INFO, which Hydra's console logging
    # shows between the training bar and the evaluation table
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def dominated_linthresh(values: Iterable[Any], ratio: float = 20.0) -> float | None:
    """When the largest |value| is more than ``ratio`` times the typical one (the median of the non-zero |values|),
    the linear range of a symmetric-log scale that keeps the typical values readable: the power of ten at or below
    that median (typical values fall in the logarithmic part, spread out; smaller ones near 0); else None."""
    a = sorted(abs(float(v)) for v in values if _is_num(v) and math.isfinite(float(v)) and v != 0)
    if len(a) < 2:
        return None
    med = float(np.median(a))
    return 10.0 ** math.floor(math.log10(med)) if a[-1] > ratio * med else None


def heatmap_png(path: Path, rows: list[str], cols: list[str], values: list[list[float | None]], title: str) -> Path:
    """A diverging heatmap (0 = white), on a symmetric-log colour scale when one cell dwarfs the typical one,
    each cell annotated with its value when the matrix is small enough to read."""
    plt = _plt()
    from matplotlib.colors import Normalize, SymLogNorm

    a = np.array([[np.nan if v is None else v for v in r] for r in values], dtype=float)
    finite = a[np.isfinite(a)]
    vmax = float(np.abs(finite).max()) if finite.size else 1.0
    vmax = vmax or 1.0
    lin = dominated_linthresh(finite.tolist())
    norm = SymLogNorm(linthresh=lin, vmin=-vmax, vmax=vmax, base=10) if lin else Normalize(-vmax, vmax)
    short = [r if len(r) <= 32 else r[:20] + "…" + r[-10:] for r in rows]  # a combined target's long name
    fig, ax = plt.subplots(
        figsize=(min(16, 3.5 + 0.7 * len(cols)), min(12, 2.4 + 0.45 * len(rows))), layout="constrained"
    )
    im = ax.imshow(np.ma.masked_invalid(a), cmap="RdBu", norm=norm, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), short, fontsize=8)
    if len(rows) * len(cols) <= 150:
        for i in range(a.shape[0]):
            for j in range(a.shape[1]):
                if np.isfinite(a[i, j]):
                    dark = abs(norm(a[i, j]) - 0.5) > 0.3
                    ax.text(j, i, _num(a[i, j]), ha="center", va="center", fontsize=7, color="w" if dark else "k")
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    cb.set_label("symlog scale" if lin else "linear scale", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _num(v: float) -> str:
    """A cell's value, short and plain: 2,154 / 0.34 / 1.2e-05."""
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.2g}" if v == 0 or abs(v) >= 1e-3 else f"{v:.1e}"


def _matrix_records(history: list) -> dict[str, list[tuple[Any, tuple]]]:
    """{matrix path: [(step or index, (rows, cols, values)), ...]} over the records."""
    out: dict[str, list[tuple[Any, tuple]]] = {}
    for i, rec in enumerate(history):
        if not isinstance(rec, Mapping):
            continue
        at = rec.get("step", i) if _is_num(rec.get("step")) else i
        for path, m in matrices(rec).items():
            out.setdefault(path, []).append((at, m))
    return out


def _evenly(xs: list, k: int) -> list:
    if len(xs) <= k:
        return xs
    idx = sorted({round(i * (len(xs) - 1) / (k - 1)) for i in range(k)})
    return [xs[i] for i in idx]


def log_mixer(
    logger: Any,
    mixer_name: str,
    history: list,
    info: Mapping[str, Any] | None,
    workdir: Path,
    domains: Iterable[str] = (),
) -> None:
    """The mixer's whole history and info: tables, heatmaps, summary values (see the module doc). A heatmap is
    drawn for a matrix whose columns are domains (influence, alignment: something × domain); every matrix gets a
    table."""
    doms = {str(d) for d in domains}
    if logger is None or getattr(logger, "wandb", None) is None:
        return
    if history:
        cols, rows = history_table(history)
        logger.table("mixer/history", cols, rows)
        for path, recs in _matrix_records(history).items():
            cols = list(dict.fromkeys(c for _, (_, cs, _) in recs for c in cs))
            trows = []
            for at, (rn, cs, vals) in recs:
                for r, vs in zip(rn, vals):
                    by = dict(zip(cs, vs))
                    trows.append([at, r] + [_cell(by.get(c)) for c in cols])
            logger.table(f"mixer/{path}", ["step", "row", *cols], trows)
            if not doms or not set(cols) <= doms:
                continue
            pngs, caps = [], []
            for k, (at, (rn, cs, vals)) in enumerate(_evenly(recs, MAX_HEATMAPS)):
                p = workdir / f"{path.replace('/', '_')}_{k}.png"
                try:
                    pngs.append(heatmap_png(p, rn, cs, vals, f"{mixer_name}: {path} at step {at}"))
                    caps.append(f"step {at}")
                except Exception as e:  # noqa: BLE001 — a figure never costs the run its logging
                    print(f"[tikmix] W&B heatmap of {path} failed: {type(e).__name__}: {e}")
                    break
            logger.images(f"mixer/{path}_heatmap", pngs, caps)
    summ = {
        f"mixer_info/{k}": v
        for k, v in leaves(info or {}).items()
        if v is not None and not (isinstance(v, float) and not math.isfinite(v))
    }
    if summ:
        logger.summary(summ)


def final_scalars(res: Mapping[str, Any]) -> dict[str, Any]:
    """The run's end values as W&B scalars: per-domain test perplexity and loss, target losses, FLOPs by category,
    throughput and the mixer's share of the time."""
    out: dict[str, Any] = {}
    for k in ("test_ppl", "test_loss", "target_loss", "val_loss"):
        vals = res.get(k) or {}
        out.update({f"{k}/{d}": v for d, v in vals.items() if _is_num(v) and math.isfinite(v)})
        fin = [v for v in vals.values() if _is_num(v) and math.isfinite(v)]
        if fin:
            out[f"{k}/mean"] = sum(fin) / len(fin)
    out.update({f"compute/{k}_flops": v for k, v in (res.get("compute") or {}).items() if _is_num(v)})
    out.update({f"perf/{k}": v for k, v in (res.get("throughput") or {}).items() if _is_num(v)})
    return out


def log_results(
    logger: Any,
    res: Mapping[str, Any],
    step: int,
    figures: Callable[[Any, Mapping[str, Any], Path], None] | None = None,
) -> None:
    """End of a run: final scalars at ``step``, the mixture history table, the mixer's history and info, and, with
    ``figures(logger, res, folder)``, the run's own figures (tikmix.results.run_figures)."""
    if logger is None or getattr(logger, "wandb", None) is None:
        return
    vals = final_scalars(res)
    logger.log_wandb(vals, step)
    logger.summary(vals)
    doms = list(res.get("domains") or [])
    wh = res.get("weights_history") or []
    if wh and doms:
        logger.table(
            "mixer/weights_history",
            ["step", *doms],
            [[h.get("step")] + [(h.get("weights") or {}).get(d) for d in doms] for h in wh],
        )
    with tempfile.TemporaryDirectory(prefix="tikmix-wandb-") as tmp:
        try:
            log_mixer(
                logger,
                str(res.get("mixer")),
                list(res.get("mixer_history") or []),
                res.get("mixer_info"),
                Path(tmp),
                doms,
            )
        except Exception as e:  # noqa: BLE001 — W&B extras never fail a run
            print(f"[tikmix] W&B: the mixer's history was not logged ({type(e).__name__}: {e})")
        if figures is not None:
            try:
                figures(logger, res, Path(tmp))
            except Exception as e:  # noqa: BLE001
                print(f"[tikmix] W&B: the run's figures were not logged ({type(e).__name__}: {e})")


def wandb_groups(results: Iterable[Mapping[str, Any]]) -> tuple[set, set]:
    """The W&B groups and projects recorded in results.json files (``results["wandb"]``)."""
    groups, projects = set(), set()
    for r in results:
        w = r.get("wandb") if isinstance(r, Mapping) else None
        if isinstance(w, Mapping):
            if w.get("group"):
                groups.add(str(w["group"]))
            if w.get("project"):
                projects.add(str(w["project"]))
    return groups, projects
