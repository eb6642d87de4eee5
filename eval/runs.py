"""The finished runs a report reads: every ``results.json`` under some folders (:func:`collect`), grouped by setting
and mixer, and what every table shares (mean ± std over seeds, number formats, the † of a limited evaluation)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from tikmix.mixer import table_order

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


def group_by(runs: list[Run], key) -> dict:
    out: dict = {}
    for r in runs:
        out.setdefault(key(r), []).append(r)
    return out


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


def avg_test_ppl(r: Run) -> float | None:
    p = (r.res or {}).get("test_ppl") or {}
    vals = [float(v) for v in p.values() if v is not None and math.isfinite(float(v))]
    return float(np.mean(vals)) if vals else None


def csv_cell(x: Any) -> Any:
    return "" if x is None else x
