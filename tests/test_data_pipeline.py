"""The data pipeline end to end on tiny data: sources -> tokenizer -> cached token shards."""

from __future__ import annotations

import gzip
import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest
import zstandard

from tikmix.data import shards as shards_mod
from tikmix.data.shards import ShardSet, cache_key, prepare_data
from tikmix.data.sources import iter_documents, list_domains
from tikmix.data.synthetic import BENCHMARKS, DEFAULT_BENCHMARK
from tikmix.data.tokenizer import EOT, load_tokenizer, save_tokenizer, train_bpe
from tikmix.errors import ConfigError, DataError

DOMAINS = BENCHMARKS[DEFAULT_BENCHMARK]  # the default benchmark's domains (v4 adds four more)
SPLITS = ("train", "val", "test")


@pytest.fixture(autouse=True)
def _quiet_tokenizers(monkeypatch):
    # The concurrency test forks; tokenizers warns (and disables its threads) after a fork otherwise.
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


def synthetic_cfg(cache: Path, n: int = 20, **over) -> dict:
    cfg = {
        "source": "synthetic",
        "synthetic": {"seed": 0, "docs": {s: {d: n for d in DOMAINS} for s in SPLITS}},
        "tokenizer": {"name": None, "vocab_size": 300, "train_docs_per_domain": 2000},
        "cache_dir": str(cache),
    }
    cfg.update(over)
    return cfg


def write_jsonl(path: Path, rows: list[dict], frames: int = 1) -> None:
    """Rows as .jsonl, .jsonl.gz or .jsonl.zst (zst optionally in several frames, as big dumps are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    if path.name.endswith(".zst"):
        cut = [len(rows) * i // frames for i in range(frames + 1)]
        parts = ["".join(json.dumps(r) + "\n" for r in rows[a:b]).encode() for a, b in zip(cut, cut[1:])]
        path.write_bytes(b"".join(zstandard.ZstdCompressor().compress(p) for p in parts))
    elif path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def pile_rows(split: str, domains: list[str], n: int, field: str = "pile_set_name") -> list[dict]:
    return [
        {"text": f"{split} doc {i} of {d}: the {d.lower()} says hello {i * 7}.", "meta": {field: d}}
        for i in range(n)
        for d in domains
    ]


def decode_docs(ss: ShardSet, domain: str, split: str) -> list[str]:
    toks, off = ss.tokens(domain, split), ss.doc_offsets(domain, split)
    return [ss.tokenizer.decode(toks[off[i] : off[i + 1] - 1]) for i in range(len(off) - 1)]


# ------------------------------------------------------------------------------------------ synthetic


def test_synthetic_end_to_end_and_cache_reuse(tmp_path, monkeypatch):
    cfg = synthetic_cfg(tmp_path / "cache")
    ss = prepare_data(cfg)
    assert ss.domains == sorted(DOMAINS)
    assert ss.vocab_size == len(ss.tokenizer) <= 300
    assert ss.eos_id == ss.tokenizer.eos_token_id == ss.tokenizer.pad_token_id
    assert ss.tokenizer.bos_token == ss.tokenizer.unk_token == ss.tokenizer.pad_token == EOT
    assert ss.root == tmp_path / "cache" / cache_key(cfg)
    for domain in DOMAINS:
        for split in SPLITS:
            toks, off = ss.tokens(domain, split), ss.doc_offsets(domain, split)
            assert toks.dtype == np.uint16 and toks.ndim == 1 and not toks.flags.writeable
            assert off.dtype == np.int64 and len(off) == 21 and off[0] == 0
            assert off[-1] == len(toks) == ss.num_tokens(domain, split)
            assert np.all(np.diff(off) >= 2)  # every doc: >= 1 token + eos
            assert np.all(toks[off[1:] - 1] == ss.eos_id)  # each document ends with eos
            assert np.count_nonzero(toks == ss.eos_id) == 20  # ... and eos appears nowhere else
            expected = [t for d, t in iter_documents(cfg, split) if d == domain]
            assert decode_docs(ss, domain, split) == expected
            rec = ss.manifest["domains"][domain]["splits"][split]
            assert rec["n_docs"] == 20 and rec["dtype"] == "uint16"
            assert rec["bin"]["bytes"] == 2 * rec["n_tokens"]
    assert ss.manifest["tokenizer"]["vocab_size"] == ss.vocab_size
    assert ss.manifest["config"]["synthetic"]["docs"]["val"]["copy"] == 20

    # Second call: loaded from the cache, not rebuilt.
    bin_path = ss.root / "arith" / "train.bin"
    mtime = bin_path.stat().st_mtime_ns

    def no_build(*a, **k):
        raise AssertionError("rebuilt a valid cache entry")

    monkeypatch.setattr(shards_mod, "_build", no_build)
    again = prepare_data(cfg)
    assert again.manifest == ss.manifest and bin_path.stat().st_mtime_ns == mtime
    # A different tokenizer config is a different entry.
    assert cache_key(dict(cfg, tokenizer={"vocab_size": 320})) != cache_key(cfg)


def test_corrupt_cache_refused_then_rebuilt(tmp_path):
    cfg = synthetic_cfg(tmp_path / "cache", n=5)
    ss = prepare_data(cfg)
    entry = ss.root
    bin_path = entry / "noise" / "val.bin"
    good = bin_path.read_bytes()

    # Same size, one token changed: caught by the checksum (on by default), not by the size check.
    bin_path.write_bytes(bytes([good[0] ^ 1]) + good[1:])
    with pytest.raises(DataError, match="sha256"):
        prepare_data(cfg)
    prepare_data(cfg, verify_checksums=False)

    bin_path.write_bytes(good[:-2])  # truncated
    with pytest.raises(DataError) as err:
        prepare_data(cfg, verify_checksums=False)
    msg = str(err.value)
    assert str(bin_path) in msg and "corrupt" in msg and f"Delete {entry}" in msg

    rebuilt = prepare_data(cfg, rebuild_corrupt=True)
    assert rebuilt.root == entry and (entry / "noise" / "val.bin").read_bytes() == good
    assert len(list((tmp_path / "cache").glob(f"{entry.name}.corrupt-*"))) == 1

    (entry / "manifest.json").unlink()
    with pytest.raises(DataError, match="manifest.json is missing"):
        prepare_data(cfg)


def test_synthetic_include_exclude_max_docs(tmp_path):
    cfg = synthetic_cfg(tmp_path, domains=["arith", "copy", "noise"], exclude=["noise"], max_docs=3)
    assert list_domains(cfg) == ["arith", "copy"]
    docs = list(iter_documents(cfg, "val"))
    assert [d for d, _ in docs] == ["arith"] * 3 + ["copy"] * 3
    with pytest.raises(ConfigError, match="data.domains.*unknown domain"):
        list(iter_documents(synthetic_cfg(tmp_path, domains=["poetry"]), "train"))
    with pytest.raises(ConfigError, match="data.source.*synthetic, jsonl, text_dir, hf"):
        list(iter_documents({"source": "parquet"}, "train"))


# -------------------------------------------------------------------------------------------- jsonl


def test_pile_layout_jsonl_zst(tmp_path):
    root = tmp_path / "pile"
    names = ["Pile-CC", "PubMed Central", "Github"]
    write_jsonl(root / "train" / "00.jsonl.zst", pile_rows("train", names, 6), frames=3)
    write_jsonl(root / "train" / "01.jsonl.zst", pile_rows("train2", names, 4))
    write_jsonl(root / "val.jsonl.zst", pile_rows("val", names, 3))
    write_jsonl(root / "test.jsonl.zst", pile_rows("test", names, 2))
    cfg = {
        "source": "jsonl",
        "root": str(root),
        "train_files": "train/*.jsonl.zst",
        "val_files": "val.jsonl.zst",
        "test_files": "test.jsonl.zst",
        "domain_field": "meta.pile_set_name",
        "exclude": ["Github"],
        "cache_dir": str(tmp_path / "cache"),
        "tokenizer": {"vocab_size": 300},
    }
    train = list(iter_documents(cfg, "train"))
    assert len(train) == 20 and {d for d, _ in train} == {"Pile-CC", "PubMed Central"}
    assert train[0] == ("Pile-CC", "train doc 0 of Pile-CC: the pile-cc says hello 0.")
    assert all(t.startswith("val doc") for _, t in iter_documents(cfg, "val"))

    ss = prepare_data(dict(cfg, max_docs=4))
    assert ss.domains == ["Pile-CC", "PubMed Central"]
    assert [ss.num_docs("PubMed Central", s) for s in SPLITS] == [4, 3, 2]
    assert decode_docs(ss, "PubMed Central", "test") == [
        t for d, t in iter_documents(cfg, "test") if d == "PubMed Central"
    ]
    folder = ss.manifest["domains"]["PubMed Central"]["dir"]
    assert " " not in folder and (ss.root / folder / "train.bin").is_file()

    only = dict(cfg, domains=["Github"], exclude=[])
    assert {d for d, _ in iter_documents(only, "test")} == {"Github"}


def test_slimpajama_layout_and_carved_holdout(tmp_path):
    root = tmp_path / "slim"
    names = ["RedPajamaC4", "RedPajamaGithub"]
    for chunk in (1, 2):
        write_jsonl(
            root / "train" / f"chunk{chunk}" / "example_train_0.jsonl.zst",
            pile_rows(f"train{chunk}", names, 5, "redpajama_set_name"),
        )
    write_jsonl(
        root / "validation" / "chunk1" / "example_val_0.jsonl.zst", pile_rows("val", names, 2, "redpajama_set_name")
    )
    write_jsonl(
        root / "test" / "chunk1" / "example_test_0.jsonl.zst", pile_rows("test", names, 2, "redpajama_set_name")
    )
    cfg = {
        "source": "jsonl",
        "root": str(root),
        "train_files": "train/**/*.jsonl.zst",
        "val_files": "validation/**/*.jsonl.zst",
        "test_files": "test/**/*.jsonl.zst",
        "domain_field": "meta.redpajama_set_name",
        "cache_dir": str(tmp_path / "cache"),
        "tokenizer": {"vocab_size": 300},
    }
    counts = {s: len(list(iter_documents(cfg, s))) for s in SPLITS}
    assert counts == {"train": 20, "val": 4, "test": 4}
    ss = prepare_data(cfg)
    assert ss.domains == names

    # No val/test files: carved from train by a stable hash, disjoint, nothing lost.
    carved = dict(cfg, val_files=None, test_files=None, holdout={"val": 0.25, "test": 0.25})
    parts = {s: [t for _, t in iter_documents(carved, s)] for s in SPLITS}
    every = [t for _, t in iter_documents(cfg, "train")]
    assert sorted(sum(parts.values(), [])) == sorted(every)
    assert all(parts[s] for s in SPLITS)
    assert parts == {s: [t for _, t in iter_documents(carved, s)] for s in SPLITS}


def test_jsonl_errors(tmp_path):
    root = tmp_path / "data"
    rows = pile_rows("train", ["A"], 3)
    rows.insert(2, {"text": "no domain here", "meta": {}})
    write_jsonl(root / "bad.jsonl", rows)
    cfg = {
        "source": "jsonl",
        "root": str(root),
        "train_files": "bad.jsonl",
        "val_files": "bad.jsonl",
        "test_files": "bad.jsonl",
    }
    with pytest.raises(DataError) as err:
        list(iter_documents(cfg, "train"))
    assert "bad.jsonl:3" in str(err.value) and "meta.pile_set_name" in str(err.value)

    blob = zstandard.ZstdCompressor().compress(
        b"".join(json.dumps(r).encode() + b"\n" for r in pile_rows("t", ["A"], 200))
    )
    (root / "cut.jsonl.zst").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"cut\.jsonl\.zst: truncated zstd"):
        list(iter_documents(dict(cfg, train_files="cut.jsonl.zst"), "train"))
    (root / "junk.jsonl.zst").write_bytes(b"this is not zstd at all")
    with pytest.raises(DataError, match=r"junk\.jsonl\.zst: corrupt zstd"):
        list(iter_documents(dict(cfg, train_files="junk.jsonl.zst"), "train"))
    write_jsonl(root / "ok.jsonl.gz", pile_rows("g", ["A"], 2))
    assert (
        len(
            list(
                iter_documents(
                    dict(cfg, train_files="*.jsonl.gz", val_files=None, holdout={"val": 0, "test": 0}), "train"
                )
            )
        )
        == 2
    )

    with pytest.raises(DataError, match="no .* files match data.train_files"):
        list(iter_documents(dict(cfg, train_files="nothing/*.jsonl"), "train"))
    with pytest.raises(ConfigError, match="data.root"):
        list(iter_documents(dict(cfg, root=None), "train"))
    with pytest.raises(ConfigError, match="data.root"):
        list(iter_documents(dict(cfg, root=str(tmp_path / "missing")), "train"))
    with pytest.raises(ConfigError, match="data.root"):
        prepare_data({"source": "text_dir", "root": str(tmp_path / "missing"), "cache_dir": str(tmp_path / "c")})

    # A domain with no val documents is refused by name, with the fix.
    write_jsonl(root / "v.jsonl", pile_rows("v", ["A"], 2))
    write_jsonl(root / "t.jsonl", pile_rows("t", ["A", "B"], 2))
    with pytest.raises(DataError, match="domain 'B' has no documents in split 'val'"):
        prepare_data(
            dict(
                cfg,
                train_files="t.jsonl",
                val_files="v.jsonl",
                test_files="t.jsonl",
                cache_dir=str(tmp_path / "c"),
                tokenizer={"vocab_size": 260},
            )
        )
    assert not list((tmp_path / "c").glob("*.tmp-*"))


# ----------------------------------------------------------------------------------- text_dir and hf


def test_text_dir_with_holdout(tmp_path):
    root = tmp_path / "mine"
    for domain in ("legal", "code"):
        for i in range(30):
            sub = root / domain / ("deep" if i % 2 else "")
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"{i:02d}.txt").write_text(f"{domain} file {i}: " + "lorem ipsum " * (i % 5 + 1))
    (root / "code" / "notes.md").write_text("not a .txt, ignored")
    cfg = {
        "source": "text_dir",
        "root": str(root),
        "holdout": {"val": 0.2, "test": 0.2},
        "cache_dir": str(tmp_path / "cache"),
        "tokenizer": {"vocab_size": 280},
    }
    assert list_domains(cfg) == ["code", "legal"]
    parts = {s: list(iter_documents(cfg, s)) for s in SPLITS}
    assert sum(len(p) for p in parts.values()) == 60
    assert len({t for p in parts.values() for _, t in p}) == 60
    ss = prepare_data(cfg)
    for s in SPLITS:
        assert decode_docs(ss, "legal", s) == [t for d, t in parts[s] if d == "legal"]


def test_hf_json_streaming_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"text": f"row {i} about {d}", "src": d} for i in range(20) for d in ("web", "wiki")])
    cfg = {
        "source": "hf",
        "hf": {
            "path": "json",
            "data_files": str(path),
            "streaming": True,
            "splits": {"train": "train", "val": None, "test": None},
        },
        "domain_field": "src",
        "holdout": {"val": 0.2, "test": 0.2},
        "cache_dir": str(tmp_path / "cache"),
        "tokenizer": {"vocab_size": 270},
    }
    parts = {s: list(iter_documents(cfg, s)) for s in SPLITS}
    assert sum(len(p) for p in parts.values()) == 40 and all(parts.values())
    ss = prepare_data(cfg)
    assert ss.domains == ["web", "wiki"]
    assert sum(ss.num_docs(d, s) for d in ss.domains for s in SPLITS) == 40

    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="hub access or a local copy"):
        list(iter_documents(dict(cfg, hf={"path": "EleutherAI/pile"}), "train"))


def test_tokenizer_deterministic_and_roundtrip(tmp_path):
    texts = [f"copy: {i % 7} {i % 5} -> {i % 7} {i % 5}\n{i} + {i} = {2 * i}." for i in range(200)]
    a, b = train_bpe(iter(texts), 300), train_bpe(iter(texts), 300)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    save_tokenizer(a, tmp_path / "tok")
    c = load_tokenizer(tmp_path / "tok")
    assert c.pad_token == c.eos_token == EOT and len(c) == len(a)
    assert c.decode(c(texts[3])["input_ids"]) == texts[3]


def test_pretrained_tokenizer_by_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = train_bpe(iter([f"{d} text number {i}" for i in range(50) for d in DOMAINS]), 290)
    tok.pad_token = None  # a pretrained tokenizer without pad gets eos as pad
    save_tokenizer(tok, tmp_path / "pretrained")
    cfg = synthetic_cfg(tmp_path / "cache", n=3, tokenizer={"name": str(tmp_path / "pretrained")})
    ss = prepare_data(cfg)
    assert len(ss.tokenizer) == len(tok) and ss.tokenizer.pad_token_id == ss.eos_id
    assert decode_docs(ss, "copy", "val") == [t for d, t in iter_documents(cfg, "val") if d == "copy"]
    with pytest.raises(ConfigError, match="data.tokenizer.name"):
        prepare_data(synthetic_cfg(tmp_path / "cache", n=3, tokenizer={"name": str(tmp_path / "nope")}))


def test_tokenizer_sample_stops_without_known_domains():
    from tikmix.data.tokenizer import _training_sample

    consumed = 0

    def stream():
        nonlocal consumed
        for i in range(100_000):
            consumed += 1
            yield ("A" if i % 3 else "B"), f"doc {i}"

    assert len(list(_training_sample(stream(), 5, None))) == 10
    assert consumed < 11_000


# ---------------------------------------------------------------------------------------- concurrency


def _prepare_worker(cfg: dict, barrier, queue) -> None:
    barrier.wait()
    ss = prepare_data(cfg)
    queue.put((os.getpid(), json.dumps(ss.manifest, sort_keys=True)))


def test_concurrent_prepare_builds_one_entry(tmp_path):
    cache = tmp_path / "cache"
    cfg = synthetic_cfg(cache, n=8)
    cache.mkdir()
    (cache / f"{cache_key(cfg)}.tmp-999999-dead").mkdir()  # left by a killed build
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_prepare_worker, args=(cfg, barrier, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len({m for _, m in results}) == 1  # identical manifests (same creation time: one build)
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == [cache_key(cfg)]
    assert not list(cache.glob("*.tmp-*"))
