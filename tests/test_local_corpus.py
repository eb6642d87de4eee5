"""The real-text corpus builder (tikmix.data.local_corpus): Pile layout, natural proportions, disjoint splits,
never overwriting, and readable through data=jsonl."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pytest

from tikmix.data import local_corpus as lc
from tikmix.data.sources import iter_documents
from tikmix.errors import DataError


@pytest.fixture
def fake_sources(tmp_path, monkeypatch):
    """Three domains from small files of known size: big (3x), mid (2x), small (1x), one gzipped, one with
    fortune-style '%' separators and a duplicated file that must be dropped."""
    src = tmp_path / "src"
    src.mkdir()
    files = {}
    for name, n in (("big", 300), ("mid", 200)):
        paths = []
        for k in range(3):
            p = src / f"{name}{k}.txt"
            p.write_text("".join(f"{name} file {k} line {i} with some words in it\n" for i in range(n)))
            paths.append(str(p))
        files[name] = paths
    dup = src / "mid_dup.txt"
    dup.write_text((src / "mid0.txt").read_text())
    files["mid"].append(str(dup))
    q = src / "quotes.gz"
    with gzip.open(q, "wt") as f:
        f.write(
            "\n%\n".join(f"quote number {i}: brevity is the soul of wit, said someone, line {i}" for i in range(200))
        )
    files["small"] = [str(q)]
    monkeypatch.setattr(
        lc,
        "SOURCES",
        {
            "big": (lambda: files["big"], None, "test: big"),
            "mid": (lambda: files["mid"], None, "test: mid"),
            "small": (lambda: files["small"], lc._text_quotes, "test: small"),
            "missing": (lambda: [], None, "apt-get install nothing-here"),
        },
    )
    return tmp_path


def _rows(path):
    import zstandard

    with open(path, "rb") as f:
        text = zstandard.ZstdDecompressor().stream_reader(f).read().decode()
    return [json.loads(line) for line in text.splitlines()]


def test_pile_layout_natural_proportions_disjoint_splits(fake_sources):
    out = fake_sources / "corpus"
    m = lc.build(out, ("big", "mid", "small"), doc_chars=600, total_chars=10**9, holdout=0.05, min_holdout=3)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "test.jsonl.zst", "train", "val.jsonl.zst"]
    rows = {
        s: _rows(out / f)
        for s, f in (("train", "train/00.jsonl.zst"), ("val", "val.jsonl.zst"), ("test", "test.jsonl.zst"))
    }
    for split, rs in rows.items():
        assert all(set(r) == {"text", "meta"} and set(r["meta"]) == {"pile_set_name"} for r in rs)
        assert all(len(r["text"]) <= 600 for r in rs)
        assert m["domains"]["big"][split]["docs"] == sum(r["meta"]["pile_set_name"] == "big" for r in rs)
    texts = {s: {r["text"] for r in rs} for s, rs in rows.items()}
    assert (
        not (texts["train"] & texts["val"])
        and not (texts["train"] & texts["test"])
        and not (texts["val"] & texts["test"])
    )
    # the duplicated file adds nothing; chars follow the sources' sizes (big ~1.5x mid, mid ~ 2.2x small)
    chars = {d: sum(v[s]["chars"] for s in ("train", "val", "test")) for d, v in m["domains"].items()}
    assert chars["big"] == pytest.approx(1.5 * chars["mid"], rel=0.02)
    assert chars["mid"] > chars["small"]
    assert "%" not in "".join(r["text"] for r in rows["train"] if r["meta"]["pile_set_name"] == "small")
    assert min(m["domains"][d]["val"]["docs"] for d in chars) >= 3


def test_total_chars_scales_every_domain_alike(fake_sources):
    full = lc.build(
        fake_sources / "full", ("big", "mid", "small"), doc_chars=600, total_chars=10**9, holdout=0.05, min_holdout=3
    )
    everything = sum(sum(v[s]["chars"] for s in ("train", "val", "test")) for v in full["domains"].values())
    half = lc.build(
        fake_sources / "half",
        ("big", "mid", "small"),
        doc_chars=600,
        total_chars=everything // 2,
        holdout=0.05,
        min_holdout=3,
    )

    def tot(m, d):
        return sum(m["domains"][d][s]["chars"] for s in ("train", "val", "test"))

    for d in ("big", "mid", "small"):
        assert tot(half, d) / tot(full, d) == pytest.approx(0.5, abs=0.06), d


def test_refuses_existing_folder_missing_source_and_unknown_domain(fake_sources):
    out = fake_sources / "corpus"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="already exists"):
        lc.build(out, ("big",))
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    with pytest.raises(DataError, match="'missing' has no source files.*apt-get install nothing-here"):
        lc.build(fake_sources / "c2", ("big", "missing"))
    with pytest.raises(DataError, match="unknown domain"):
        lc.build(fake_sources / "c3", ("nosuch",))
    assert not (fake_sources / "c2").exists() and not list(fake_sources.glob(".c2.tmp-*"))
    assert lc.main([str(out), "--domains", "big"]) == 2


def test_loads_through_data_jsonl(fake_sources):
    out = fake_sources / "corpus"
    lc.build(out, ("big", "mid", "small"), doc_chars=600, total_chars=10**9, holdout=0.05, min_holdout=3)
    cfg = {
        "source": "jsonl",
        "root": str(out),
        "train_files": "train/*.jsonl.zst",
        "val_files": "val.jsonl.zst",
        "test_files": "test.jsonl.zst",
        "domain_field": "meta.pile_set_name",
    }
    got = {s: Counter(d for d, _ in iter_documents(cfg, s)) for s in ("train", "val", "test")}
    manifest = json.loads((out / "manifest.json").read_text())
    for s in got:
        assert got[s] == {d: v[s]["docs"] for d, v in manifest["domains"].items()}


def test_real_sources_of_this_machine_when_installed():
    """The code domain exists on every machine (the interpreter's stdlib); the Debian ones when installed."""
    docs = lc.domain_documents("code", 4000, 200_000)
    assert docs and all(len(d) <= 4000 for d in docs) and 180_000 < sum(map(len, docs)) < 220_000
    assert any("def " in d for d in docs)
