"""Peak memory of building the token-shard cache must not grow with the corpus.

Run by hand (not collected by pytest):  python tests/benchmarks/bench_cache.py [--scales 1,10]

Each scale builds the synthetic corpus's cache (tokenizer training + shards, tikmix.data.shards.prepare_data)
from scratch in a fresh subprocess, with every split and domain of ``DEFAULT_DOCS`` multiplied by the scale
(``data.synthetic.docs``). The child reports its own peak RSS (ru_maxrss) after its imports and after the
build; the figure that must stay flat is the build's peak, and the ratio of the largest scale's to 1x's.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(scale: int, cache: str) -> None:
    sys.path.insert(0, str(REPO))
    from tests.conftest import compose
    from tikmix.data import synthetic
    from tikmix.data.shards import prepare_data

    docs = {s: {d: n * scale for d, n in per.items()} for s, per in synthetic.DEFAULT_DOCS.items()}
    docs_arg = json.dumps(docs).replace('"', "")
    cfg = compose([f"data.cache_dir={cache}", f"data.synthetic.docs={docs_arg}"])
    after_imports = _rss_mib()
    t0 = time.perf_counter()
    shards = prepare_data(cfg.data)
    wall = time.perf_counter() - t0
    tokens = sum(shards.num_tokens(d, s) for d in shards.domains for s in ("train", "val", "test"))
    n_docs = sum(sum(per.values()) for per in docs.values())
    print(json.dumps({"scale": scale, "docs": n_docs, "tokens": tokens, "wall_s": wall,
                      "rss_after_imports_mib": after_imports, "peak_rss_mib": _rss_mib()}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scales", default="1,10", help="comma-separated multiples of the default corpus")
    ap.add_argument("--child", nargs=2, metavar=("SCALE", "CACHE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(int(args.child[0]), args.child[1])
        return
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    rows = []
    for scale in (int(x) for x in args.scales.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            r = subprocess.run([sys.executable, __file__, "--child", str(scale), tmp], env=env, cwd=REPO,
                               capture_output=True, text=True)
            if r.returncode:
                sys.exit(f"scale {scale} failed:\n{r.stderr[-3000:]}")
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    print(f"{'scale':>5}  {'docs':>9}  {'tokens':>12}  {'build s':>8}  {'RSS after imports':>17}  {'peak RSS':>9}")
    for x in rows:
        print(f"{x['scale']:>5}  {x['docs']:>9,}  {x['tokens']:>12,}  {x['wall_s']:>8.1f}  "
              f"{x['rss_after_imports_mib']:>13,.0f} MiB  {x['peak_rss_mib']:>5,.0f} MiB")
    base, top = rows[0], rows[-1]
    print(f"peak RSS ratio {top['scale']}x / {base['scale']}x: {top['peak_rss_mib'] / base['peak_rss_mib']:.3f}   "
          f"(build increment over imports: {base['peak_rss_mib'] - base['rss_after_imports_mib']:,.0f} -> "
          f"{top['peak_rss_mib'] - top['rss_after_imports_mib']:,.0f} MiB; target: ratio ~1)")


if __name__ == "__main__":
    main()
