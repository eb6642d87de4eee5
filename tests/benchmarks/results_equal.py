"""Are the results of a fixed seed the same before and after a change that must not change them?

    python tests/benchmarks/results_equal.py run OUT_DIR [--default] [--mixers all]   # run and record
    python tests/benchmarks/results_equal.py compare DIR_BEFORE DIR_AFTER              # list what differs

``run`` trains a smoke run of every mixer (and with ``--default`` the default run, ``python train.py``) into
OUT_DIR/<name>/ with logger=none, and keeps each results.json. ``compare`` prints every field that differs
between two such folders, ignoring what legitimately varies from one execution to the next (wall times,
run directories, throughput, MFU and its measured peak, whether a sub-run was reused from a shared cache).
Exit code 1 when something differs.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MIXERS = [
    "stratified",
    "natural",
    "fixed",
    "human",
    "design",
    "regmix",
    "doremi",
    "aioli",
    "odm",
    "dga",
    "tikmix_d",
    "tikmix_m",
]
EXTRA = {
    "fixed": ["mixer.weights={arith: 0.5, grammar: 0.5}"],
    "human": None,
}  # human: the synthetic data has no published mix
VOLATILE = (
    "wall_time_s",
    "total_time_s",
    "run_dir",
    "mfu",
    "tokens_per_s",
    "wall_s",
    "proxy_wall_s",
    "influence_wall_s",
    "candidates_wall_s",
    "matrix_wall_s",
    "wall_time",
    "reused",
    "time",
    "elapsed",
    "lm_eval_version",
    "console_log",
    "wandb",
    "mixer_share",
    "train_mfu",
)
# throughput.train_time_s, throughput.wall_tokens_per_s, ...; regmix.n_reused, doremi.reference_reused,
# doremi.proxy_reused: sub-runs found in a cache shared with an earlier execution, which compute the same result
VOLATILE_SUFFIXES = ("_time_s", "_tokens_per_s", "_reused")


def run(out: Path, default: bool, mixers: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    jobs = [("default", [])] if default else []
    jobs += [(m, ["budget=smoke", f"mixer={m}", *(EXTRA.get(m) or [])]) for m in mixers if EXTRA.get(m, []) is not None]
    for name, args in jobs:
        d = out / name
        if (d / "results.json").exists():
            continue
        cmd = [
            sys.executable,
            str(REPO / "train.py"),
            "logger=none",
            "trainer.progress=false",
            *args,
            f"hydra.run.dir={d}",
        ]
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        print(f"{name}: exit {r.returncode}" + (f"\n{r.stderr[-2000:]}" if r.returncode else ""), flush=True)


def _diff(a, b, path: str, out: list[str]) -> None:
    key = path.split(".")[-1]
    if key in VOLATILE or key.endswith(VOLATILE_SUFFIXES):
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only in {'after' if k not in a else 'before'}")
            else:
                _diff(a[k], b[k], f"{path}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: length {len(a)} -> {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{path}[{i}]", out)
    elif isinstance(a, float) and isinstance(b, float) and (math.isnan(a) and math.isnan(b)):
        return
    elif a != b:
        out.append(f"{path}: {a!r} -> {b!r}")


def compare(before: Path, after: Path) -> int:
    bad = 0
    for d in sorted(p for p in before.iterdir() if (p / "results.json").exists()):
        other = after / d.name / "results.json"
        if not other.exists():
            print(f"{d.name}: missing after")
            bad += 1
            continue
        diffs: list[str] = []
        _diff(json.loads((d / "results.json").read_text()), json.loads(other.read_text()), d.name, diffs)
        print(f"{d.name}: " + ("equal" if not diffs else f"{len(diffs)} differences"))
        for line in diffs[:40]:
            print("   ", line)
        bad += bool(diffs)
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("out", type=Path)
    r.add_argument("--default", action="store_true")
    r.add_argument("--mixers", default="all")
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    a = ap.parse_args()
    if a.cmd == "run":
        run(a.out, a.default, MIXERS if a.mixers == "all" else a.mixers.split(","))
        return 0
    return compare(a.before, a.after)


if __name__ == "__main__":
    sys.exit(main())
