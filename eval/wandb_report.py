"""The table tool's W&B run (``python -m eval.tables ... --wandb``): its tables and figures, in the W&B group
and project of the runs it reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.figures import slug
from eval.runs import Run
from tikmix.report import wandb_groups
from tikmix.runlog import RunLogger


def log_report(
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
            lg.table("tables/table1" + (f"/{slug(b['setting'])}" if len(blocks) > 1 else ""), cols, rows)
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
        cfg["run_name"] = f"tables-{slug(cfg.get('group') or out.name)}"
    if len(groups) > 1 and not logger_cfg.get("group"):
        print(
            f"[tables] the runs belong to {len(groups)} W&B groups ({', '.join(sorted(groups))}): the tables' run is "
            f"in none of them (--group names one)"
        )
    return cfg
