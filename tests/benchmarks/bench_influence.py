"""TiKMiX's influence cost per stage as a fraction of that stage's training compute (FLOPs and wall time).

    python tests/benchmarks/bench_influence.py                 # runs tikmix_d and tikmix_m at the demo budget
    python tests/benchmarks/bench_influence.py RUN_DIR [...]    # or reads finished tikmix runs

Training wall time per stage comes from the run's tokens/s (metrics.jsonl); FLOPs from the ledger
(6·N + attention per token). Goal (issue 3 of 8): influence <= 10% of a stage at the defaults.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def report(run_dir: Path) -> None:
    res = json.loads((run_dir / "results.json").read_text())
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tps = float(np.median([r["train/tokens_per_s"] for r in rows if "train/tokens_per_s" in r]))
    fpt = res["flops_per_token"]
    tokens_per_step = sum(res["tokens_seen"].values()) / res["steps"]
    bounds = [h["step"] for h in res["mixer_history"]] + [res["steps"]]
    print(f"{res['mixer']} seed {res['seed']} ({run_dir}): median training speed {tps:,.0f} tokens/s")
    print(
        f"  {'stage@step':>10}  {'influence FLOPs':>15}  {'stage FLOPs':>12}  {'FLOPs %':>7}  {'wall s':>7}  {'stage s':>8}  {'wall %':>6}"
    )
    for h, end in zip(res["mixer_history"], bounds[1:]):
        stage_tokens = (end - h["step"]) * tokens_per_step
        f_stage, t_stage = fpt * stage_tokens, stage_tokens / tps
        f, t = h["cost"]["flops"], h["cost"]["wall_s"]
        print(
            f"  {h['step']:>10}  {f:>15.3g}  {f_stage:>12.3g}  {100 * f / f_stage:>6.1f}%  {t:>7.2f}  {t_stage:>8.1f}  {100 * t / t_stage:>5.1f}%"
        )
    c = res["compute"]
    print(f"  whole run: mixer {c['mixer_total']:.3g} FLOPs = {100 * c['mixer_total'] / c['train']:.1f}% of training")


def main() -> None:
    dirs = [Path(a) for a in sys.argv[1:]]
    if not dirs:
        tmp = Path(tempfile.mkdtemp())
        for mixer in ("tikmix_d", "tikmix_m"):
            d = tmp / mixer
            subprocess.run(
                [
                    sys.executable,
                    str(REPO / "train.py"),
                    f"mixer={mixer}",
                    "logger=none",
                    "eval.limit=0.1",
                    "trainer.progress=false",
                    f"hydra.run.dir={d}",
                ],
                cwd=REPO,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            dirs.append(d)
    for d in dirs:
        report(d)


if __name__ == "__main__":
    main()
