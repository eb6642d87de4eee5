"""Build a small multi-domain corpus of *real* text from files a Debian/Python machine has, in The Pile's layout.

No hub can be reached from the machines this suite is developed on, so the real-text comparison uses text
that a package registry can install: six domains of different register, each from its own source.

=============  ==========================================================  ====================================
domain         source                                                      where it comes from
=============  ==========================================================  ====================================
code           the Python standard library's ``.py`` files                 the running interpreter (always)
docs           the Python documentation's reStructuredText sources         Debian ``python3.11-doc`` (or any
                                                                           ``python3.X-doc``)
legal          licence texts and packages' copyright files                 ``/usr/share/common-licenses``,
                                                                           ``/usr/share/doc/*/copyright``
changelogs     Debian package changelogs                                   ``/usr/share/doc/*/changelog.Debian.gz``
quotes         the fortune-cookie collections (quotes, jokes, verse)       Debian ``fortunes``
dictionary     GCIDE (Webster's 1913 + WordNet definitions)                Debian ``dict-gcide``
=============  ==========================================================  ====================================

Install the Debian sources with ``apt-get install fortunes dict-gcide python3.11-doc``, then::

    python -m tikmix.data.local_corpus /data/localtext
    python train.py data=jsonl data.root=/data/localtext data.val_files=val.jsonl.zst \\
        data.test_files=test.jsonl.zst eval=none           # or: +sweep=compare_text data.root=...

Each source is cut into documents of at most ``--doc-chars`` characters at line boundaries; a domain is
capped at ``--max-chars`` characters by taking documents evenly spread over the whole source (so the
dictionary is not all "A"); exact-duplicate documents (licences repeated in copyright files) are dropped.
Every domain keeps the same fraction of its source, so the corpus has the sources' *natural* proportions
(code ~32 %, dictionary ~41 %, quotes ~3 %) scaled to ``--total-chars``; ``natural`` and ``stratified``
mixing therefore differ. Documents go to val/test by a stable hash of their text (``--holdout`` each, at
least ``--min-holdout`` documents per domain). The output is
``OUT/train/00.jsonl.zst``, ``OUT/val.jsonl.zst``, ``OUT/test.jsonl.zst`` with rows
``{"text": ..., "meta": {"pile_set_name": <domain>}}``, and ``OUT/manifest.json`` (sources, counts,
characters per domain and split). The folder is written under a temporary name and renamed at the end:
an existing OUT is never touched.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import json
import os
import random
import shutil
import sys
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

from tikmix.errors import DataError

DOMAINS = ("code", "docs", "legal", "changelogs", "quotes", "dictionary")


def _read(path: str) -> str:
    opener = gzip.open if path.endswith((".gz", ".dz")) else open
    with opener(path, "rb") as f:  # type: ignore[operator]
        return f.read().decode("utf-8", errors="replace")


def _chunks(text: str, doc_chars: int) -> Iterator[str]:
    """Cut text into pieces of at most doc_chars at line boundaries (a longer line is cut where it must)."""
    buf: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        while len(line) > doc_chars:
            if buf:
                yield "".join(buf)
                buf, size = [], 0
            yield line[:doc_chars]
            line = line[doc_chars:]
        if size + len(line) > doc_chars and buf:
            yield "".join(buf)
            buf, size = [], 0
        buf.append(line)
        size += len(line)
    if buf:
        yield "".join(buf)


def _files_code() -> list[str]:
    stdlib = sysconfig.get_paths()["stdlib"]
    files = sorted(glob.glob(os.path.join(stdlib, "**", "*.py"), recursive=True))
    return [f for f in files if "site-packages" not in f and "dist-packages" not in f]


def _files_docs() -> list[str]:
    found: list[str] = []
    for root in sorted(glob.glob("/usr/share/doc/python3*/html/_sources")):
        found = sorted(glob.glob(os.path.join(root, "**", "*.txt"), recursive=True))
        if found:
            break
    return found


def _files_legal() -> list[str]:
    return sorted(glob.glob("/usr/share/common-licenses/*")) + sorted(glob.glob("/usr/share/doc/*/copyright"))


def _files_changelogs() -> list[str]:
    return sorted(glob.glob("/usr/share/doc/*/changelog.Debian.gz"))


def _files_quotes() -> list[str]:
    files = sorted(glob.glob("/usr/share/games/fortunes/*"))
    return [f for f in files if not f.endswith((".dat", ".u8")) and os.path.isfile(f) and not os.path.islink(f)]


def _files_dictionary() -> list[str]:
    return [f for f in ["/usr/share/dictd/gcide.dict.dz"] if os.path.exists(f)]


def _text_quotes(text: str) -> str:
    # fortune files separate entries by a line holding only '%'; a blank line reads better inside a document
    return "\n\n".join(p.strip("\n") for p in text.split("\n%\n") if p.strip())


def _text_dictionary(text: str) -> str:
    # drop the database header entries (00-database-*) before the first letter's file
    start = text.find("Begin file 1 of")
    return text[start:] if start >= 0 else text


SOURCES: dict[str, tuple[Callable[[], list[str]], Callable[[str], str] | None, str]] = {
    "code": (_files_code, None, "the Python standard library (always present)"),
    "docs": (_files_docs, None, "apt-get install python3.11-doc"),
    "legal": (_files_legal, None, "/usr/share/common-licenses (Debian base-files)"),
    "changelogs": (_files_changelogs, None, "Debian package docs (/usr/share/doc/*/changelog.Debian.gz)"),
    "quotes": (_files_quotes, _text_quotes, "apt-get install fortunes"),
    "dictionary": (_files_dictionary, _text_dictionary, "apt-get install dict-gcide"),
}


def domain_documents(domain: str, doc_chars: int, max_chars: float = float("inf")) -> list[str]:
    """The documents of one domain: chunks of its source, de-duplicated, evenly thinned to max_chars."""
    list_files, transform, how = SOURCES[domain]
    files = list_files()
    if not files:
        raise DataError(f"local corpus: domain {domain!r} has no source files on this machine ({how})")
    seen: set[bytes] = set()
    docs: list[str] = []
    for path in files:
        try:
            text = _read(path)
        except OSError as e:  # an unreadable file is skipped, not fatal
            print(f"  skip {path}: {e}", file=sys.stderr)
            continue
        if transform is not None:
            text = transform(text)
        for piece in _chunks(text, doc_chars):
            if len(piece.strip()) < 64:
                continue
            key = hashlib.blake2b(piece.encode(), digest_size=16).digest()
            if key in seen:
                continue
            seen.add(key)
            docs.append(piece)
    return _thin(docs, max_chars)


def _thin(docs: list[str], max_chars: float) -> list[str]:
    """Documents evenly spread over the list, about max_chars characters in all (all of them if fewer)."""
    total = sum(len(d) for d in docs)
    if total <= max_chars:
        return docs
    keep = max(1, int(len(docs) * max_chars / total))
    step = len(docs) / keep
    return [docs[int(i * step)] for i in range(keep)]


def _split(docs: list[str], holdout: float, min_holdout: int) -> dict[str, list[str]]:
    """val/test/train by a stable hash rank of each document's text (independent of file order)."""
    n = max(min_holdout, round(holdout * len(docs)))
    if 2 * n >= len(docs):
        raise DataError(
            f"local corpus: {len(docs)} documents cannot give {n} val + {n} test and still train; "
            "raise --total-chars or lower --holdout/--min-holdout"
        )
    order = sorted(range(len(docs)), key=lambda i: hashlib.blake2b(docs[i].encode(), digest_size=8).digest())
    rank = {i: r for r, i in enumerate(order)}
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i, text in enumerate(docs):
        out["val" if rank[i] < n else "test" if rank[i] < 2 * n else "train"].append(text)
    return out


def _write_jsonl_zst(path: Path, rows: list[dict]) -> None:
    import zstandard

    with open(path, "wb") as raw, zstandard.ZstdCompressor(level=10).stream_writer(raw) as w:
        for row in rows:
            w.write((json.dumps(row, ensure_ascii=False) + "\n").encode())


def build(
    out: str | os.PathLike,
    domains: tuple[str, ...] = DOMAINS,
    doc_chars: int = 4000,
    total_chars: int = 12_000_000,
    holdout: float = 0.02,
    min_holdout: int = 8,
    seed: int = 0,
) -> dict:
    """Write the corpus to `out` (which must not exist) and return its manifest."""
    out = Path(out)
    if out.exists():
        raise DataError(
            f"local corpus: {out} already exists; choose a new folder (an existing one is never overwritten)"
        )
    unknown = [d for d in domains if d not in SOURCES]
    if unknown:
        raise DataError(f"local corpus: unknown domain(s) {unknown}; allowed: {list(SOURCES)}")
    if not 0 < holdout < 0.5:
        raise DataError(f"local corpus: --holdout must be in (0, 0.5), got {holdout}")
    splits: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    manifest: dict = {
        "format": "pile-jsonl.zst",
        "doc_chars": doc_chars,
        "total_chars": total_chars,
        "holdout": holdout,
        "min_holdout": min_holdout,
        "domains": {},
    }
    full = {d: domain_documents(d, doc_chars) for d in domains}
    scale = min(1.0, total_chars / max(1, sum(len(t) for docs in full.values() for t in docs)))
    for domain, docs in full.items():
        docs = _thin(docs, scale * sum(len(t) for t in docs))
        parts = _split(docs, holdout, min_holdout)
        for split, texts in parts.items():
            splits[split].extend({"text": t, "meta": {"pile_set_name": domain}} for t in texts)
        manifest["domains"][domain] = {
            "source": SOURCES[domain][2],
            **{s: {"docs": len(t), "chars": sum(len(x) for x in t)} for s, t in parts.items()},
        }
        print(
            f"  {domain:<11} {len(parts['train']):>5} train docs {sum(map(len, parts['train'])) / 1e6:6.2f}M chars"
            f"  val {len(parts['val']):>3}  test {len(parts['test']):>3}",
            file=sys.stderr,
        )
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        (tmp / "train").mkdir(parents=True)
        random.Random(seed).shuffle(splits["train"])  # the Pile's shards interleave domains
        _write_jsonl_zst(tmp / "train" / "00.jsonl.zst", splits["train"])
        _write_jsonl_zst(tmp / "val.jsonl.zst", splits["val"])
        _write_jsonl_zst(tmp / "test.jsonl.zst", splits["test"])
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tikmix.data.local_corpus", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="output folder (must not exist)")
    p.add_argument("--domains", default=",".join(DOMAINS), help=f"comma-separated subset of {','.join(DOMAINS)}")
    p.add_argument("--doc-chars", type=int, default=4000, help="maximum characters per document (default 4000)")
    p.add_argument(
        "--total-chars",
        type=int,
        default=12_000_000,
        help="characters in all, every domain scaled by the same factor (default 12M)",
    )
    p.add_argument(
        "--holdout", type=float, default=0.02, help="fraction of documents for val and for test (default 0.02)"
    )
    p.add_argument("--min-holdout", type=int, default=8, help="at least this many val and test documents per domain")
    args = p.parse_args(argv)
    try:
        build(
            args.out,
            tuple(d for d in args.domains.split(",") if d),
            args.doc_chars,
            args.total_chars,
            args.holdout,
            args.min_holdout,
        )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
