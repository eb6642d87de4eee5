"""Peak memory of building the token-shard cache must not grow with the corpus.

Run by hand (not collected by pytest):  python tests/benchmarks/bench_cache.py [--scales 1,10] [--long-doc-mb 50]

Each scale builds the synthetic corpus's cache (tokenizer training + shards, tikmix.data.shards.prepare_data)
from scratch in a fresh subprocess, with every split and domain of ``DEFAULT_DOCS`` multiplied by the scale
(``data.synthetic.docs``). The child reports its own peak RSS (ru_maxrss) after its imports and after the
build; the figure that must stay flat is the build's peak, and the ratio of the largest scale's to 1x's.

``--long-doc-mb N`` (default 50; 0 = skip) also builds, in its own fresh subprocess, the cache of a jsonl
corpus whose train split is ONE document of N MB (word-like text), and prints its peak beside the first
scale's: long documents are tokenised in pieces, so the ratio must stay near 1 too.
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
    print(
        json.dumps(
            {
                "scale": scale,
                "docs": n_docs,
                "tokens": tokens,
                "wall_s": wall,
                "rss_after_imports_mib": after_imports,
                "peak_rss_mib": _rss_mib(),
            }
        )
    )


def write_long_doc_corpus(root: Path, mb: float, seed: int = 0) -> None:
    """A jsonl corpus: train = one document of ``mb`` MB of word-like text (Zipf-distributed words of 2-9
    letters, sentences, paragraphs); val and test = one ordinary document each."""
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    words = ["".join(rng.choice(letters, size=int(rng.integers(2, 10)))) for _ in range(20000)]
    p = 1.0 / np.arange(1, len(words) + 1)
    p /= p.sum()
    parts, size = [], 0
    while size < mb * 1e6:
        w = [words[i] for i in rng.choice(len(words), size=20000, p=p)]
        para = " ".join(w).replace(" e ", ". E ").replace(" a ", ", a ") + ".\n\n"
        parts.append(para)
        size += len(para)
    text = "".join(parts)[: int(mb * 1e6)]
    for split, rows in {"train": [text], "val": [" ".join(words[:400])], "test": [" ".join(words[400:800])]}.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        with open(root / split / "part0.jsonl", "w") as f:
            for t in rows:
                f.write(json.dumps({"text": t, "domain": "long"}) + "\n")


def child_long(mb: float, cache: str) -> None:
    """Build the cache of the corpus the parent wrote to ``<cache>/corpus`` (written there so that making
    the text does not count in this process's peak)."""
    sys.path.insert(0, str(REPO))
    from tests.conftest import compose
    from tikmix.data.shards import prepare_data

    root = Path(cache) / "corpus"
    cfg = compose(
        [
            f"data.cache_dir={cache}/cache",
            "data=jsonl",
            f"data.root={root}",
            "data.domain_field=domain",
            "data.train_files=train/*.jsonl",
            "data.val_files=val/*.jsonl",
            "data.test_files=test/*.jsonl",
        ]
    )
    after_imports = _rss_mib()
    t0 = time.perf_counter()
    shards = prepare_data(cfg.data)
    wall = time.perf_counter() - t0
    tokens = sum(shards.num_tokens(d, s) for d in shards.domains for s in ("train", "val", "test"))
    print(
        json.dumps(
            {
                "scale": f"{mb:g}MB",
                "docs": 3,
                "tokens": tokens,
                "wall_s": wall,
                "rss_after_imports_mib": after_imports,
                "peak_rss_mib": _rss_mib(),
            }
        )
    )


def _run_child(args: list[str], what: str, long_mb: float = 0.0) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with tempfile.TemporaryDirectory() as tmp:
        if long_mb:
            write_long_doc_corpus(Path(tmp) / "corpus", long_mb)
        r = subprocess.run([sys.executable, __file__, *args, tmp], env=env, cwd=REPO, capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"{what} failed:\n{r.stderr[-3000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scales", default="1,10", help="comma-separated multiples of the default corpus")
    ap.add_argument("--long-doc-mb", type=float, default=50.0, help="size of the single long document (0 = skip)")
    ap.add_argument("--child", nargs=2, metavar=("SCALE", "CACHE"), help=argparse.SUPPRESS)
    ap.add_argument("--child-long", nargs=2, metavar=("MB", "CACHE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(int(args.child[0]), args.child[1])
        return
    if args.child_long:
        child_long(float(args.child_long[0]), args.child_long[1])
        return
    rows = [_run_child(["--child", str(scale)], f"scale {scale}") for scale in (int(x) for x in args.scales.split(","))]
    long_row = (
        _run_child(["--child-long", str(args.long_doc_mb)], "the long document", args.long_doc_mb)
        if args.long_doc_mb > 0
        else None
    )
    print(f"{'scale':>5}  {'docs':>9}  {'tokens':>12}  {'build s':>8}  {'RSS after imports':>17}  {'peak RSS':>9}")
    for x in rows + ([long_row] if long_row else []):
        print(
            f"{x['scale']:>5}  {x['docs']:>9,}  {x['tokens']:>12,}  {x['wall_s']:>8.1f}  "
            f"{x['rss_after_imports_mib']:>13,.0f} MiB  {x['peak_rss_mib']:>5,.0f} MiB"
        )
    base, top = rows[0], rows[-1]
    print(
        f"peak RSS ratio {top['scale']}x / {base['scale']}x: {top['peak_rss_mib'] / base['peak_rss_mib']:.3f}   "
        f"(build increment over imports: {base['peak_rss_mib'] - base['rss_after_imports_mib']:,.0f} -> "
        f"{top['peak_rss_mib'] - top['rss_after_imports_mib']:,.0f} MiB; target: ratio ~1)"
    )
    if long_row:
        print(
            f"peak RSS ratio one {long_row['scale']} document / {base['scale']}x corpus: "
            f"{long_row['peak_rss_mib'] / base['peak_rss_mib']:.3f}   (build increment over imports: "
            f"{long_row['peak_rss_mib'] - long_row['rss_after_imports_mib']:,.0f} MiB; target: ratio ~1)"
        )


if __name__ == "__main__":
    main()
