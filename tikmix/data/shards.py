"""Per-domain token shards: built once per data config, cached atomically, memory-mapped.

A cache entry is ``<cache_dir>/<key>/`` where ``key`` is a short sha256 of the canonical JSON of the config
fields that determine its content (:func:`cache_config`). It holds::

    tokenizer/                  the tokenizer (Hugging Face format)
    <domain>/<split>.bin        the split's documents tokenised and concatenated, each followed by eos
    <domain>/<split>.idx.npy    int64 document starts, n_docs + 1 entries (the last = total tokens)
    manifest.json               sizes and sha256 of every file, the config, the format version (written last)

Building happens in ``<key>.tmp-<pid>-<rand>/`` under an exclusive ``flock`` on ``<key>.lock`` and is
renamed into place only when complete, so concurrent callers (ranks, sweep jobs) get one valid entry and
never see a torn one. A corrupt entry (a truncated or edited file) is refused with a DataError, or moved
aside to ``<key>.corrupt-<time>`` and rebuilt when ``rebuild_corrupt=True``; it is never used silently.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import resource
import secrets
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from tikmix.config import DataConfig
from tikmix.data import sources
from tikmix.data.sources import SPLITS, data_config, iter_documents
from tikmix.data.tokenizer import LONG_DOC_CHARS, PIECE_CHARS, build_tokenizer, load_tokenizer, pieces, save_tokenizer
from tikmix.errors import ConfigError, DataError, StorageError

FORMAT_VERSION = 1
_BATCH_DOCS = 256  # documents tokenised per call (per domain)
_BATCH_CHARS = 4 << 20  # ... or this many characters, whichever comes first
_LONG_BATCH_CHARS = 1 << 18  # characters per tokenizer call for the pieces of one long document
_PENDING_CHARS = 4 * _BATCH_CHARS  # characters waiting in all domains' batches before every domain writes
_PROGRESS_EVERY_S = 10.0
_RESERVED = {"tokenizer", "manifest.json"}


def _log(msg: str) -> None:
    print(f"[data] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ cache key


def _abs_root(root: str | None) -> str | None:
    if root is None or "://" in root:
        return root
    return str(Path(root).expanduser().resolve())


def cache_config(cfg: DataConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The config fields that determine a cache entry's content, normalised (what the key hashes).

    Fields a source does not read are left out, so e.g. changing ``hf`` defaults does not invalidate a
    synthetic cache; local roots are made absolute.
    """
    c = data_config(cfg)
    src = c.source
    tk = c.tokenizer
    out: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "source": src,
        "domains": sorted(c.domains) if c.domains is not None else None,
        "exclude": sorted(c.exclude),
        "max_docs": c.max_docs,
        "tokenizer": {"name": tk.name}
        if tk.name is not None
        else {"name": None, "vocab_size": tk.vocab_size, "train_docs_per_domain": tk.train_docs_per_domain},
    }
    if src == "synthetic":
        syn = sources._synthetic_module()
        out["synthetic"] = {
            "seed": c.synthetic.seed,
            "docs": sources.synthetic_docs(c),
            **({} if c.synthetic.benchmark == "v1" else {"benchmark": c.synthetic.benchmark}),
            "version": getattr(syn, "VERSION", None),
        }
    elif src == "jsonl":
        out.update(
            root=_abs_root(c.root),
            train_files=c.train_files,
            val_files=c.val_files,
            test_files=c.test_files,
            text_field=c.text_field,
            domain_field=c.domain_field,
        )
        if c.val_files is None or c.test_files is None:
            out["holdout"] = dataclasses.asdict(c.holdout)
    elif src == "text_dir":
        out.update(root=_abs_root(c.root), holdout=dataclasses.asdict(c.holdout))
    elif src == "hf":
        hf = dataclasses.asdict(c.hf)
        if c.hf.data_files is not None:
            hf["data_files"] = sources._hf_data_files(c)
        hf.pop("streaming")  # same rows either way
        out.update(hf=hf, text_field=c.text_field, domain_field=c.domain_field)
        if c.hf.splits.val is None or c.hf.splits.test is None:
            out["holdout"] = dataclasses.asdict(c.holdout)
    return out


_HASH_FILE_MAX = 1 << 20  # inputs up to 1 MiB are also hashed (an edit that keeps size and mtime is still seen) ...
_HASH_TOTAL_MAX = 64 << 20  # ... until 64 MiB have been read: beyond that, size and mtime (a stat per file)


def input_signature(cfg: DataConfig | Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each local input file's path, size and modification time (and sha256 where cheap): the data itself, which
    the source config does not pin. An input edited in place changes it, so the cache key, and a resumed run's
    check, see the edit."""
    out, hashed = [], 0
    for p in sources.local_inputs(cfg):
        st = p.stat()
        rec: dict[str, Any] = {"path": str(p), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
        if st.st_size <= _HASH_FILE_MAX and hashed + st.st_size <= _HASH_TOTAL_MAX:
            rec["sha256"] = _sha256(p)
            hashed += st.st_size
        out.append(rec)
    return out


def signature_digest(signature: list[dict[str, Any]]) -> str | None:
    """16 hex of the signature's sha256; None when the source reads no local file (synthetic, remote)."""
    if not signature:
        return None
    blob = json.dumps(signature, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def changed_inputs(old: list[dict[str, Any]], new: list[dict[str, Any]], limit: int = 3) -> str:
    """The input files that differ between two signatures, in words (edited / added / removed)."""
    a, b = {r["path"]: r for r in old}, {r["path"]: r for r in new}
    words = [f"{p} (edited)" for p in sorted(set(a) & set(b)) if a[p] != b[p]]
    words += [f"{p} (added)" for p in sorted(set(b) - set(a))] + [f"{p} (removed)" for p in sorted(set(a) - set(b))]
    more = f" and {len(words) - limit} more" if len(words) > limit else ""
    return ", ".join(words[:limit]) + more


def cache_key(cfg: DataConfig | Mapping[str, Any], inputs: str | None = None) -> str:
    """Short (16 hex) sha256 of the canonical JSON of :func:`cache_config` and, for local files, the digest of
    their :func:`input_signature` (``inputs``): an input edited in place is another entry, built afresh."""
    c = cache_config(cfg)
    if inputs is not None:
        c["inputs"] = inputs
    blob = json.dumps(c, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cache_dir(c: DataConfig) -> Path:
    d = c.cache_dir
    if d is None or d == "":
        raise ConfigError("data.cache_dir", "required: the folder where token shards are cached")
    return Path(str(d)).expanduser().resolve()


# ------------------------------------------------------------------------------------------- ShardSet


def _dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


class ShardSet:
    """A loaded cache entry: the tokenizer and, per domain and split, a memory-mapped token array."""

    def __init__(self, root: Path, manifest: dict[str, Any], tokenizer: Any):
        self.root = Path(root)
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.domains: list[str] = sorted(manifest["domains"])
        self.eos_id: int = int(manifest["tokenizer"]["eos_id"])
        self.vocab_size: int = len(tokenizer)
        self.dtype = np.dtype(manifest["dtype"])
        self._maps: dict[tuple[str, str, str], np.ndarray] = {}
        self.key = self.root.name  # the cache entry: the data a run trained on
        self.inputs: list[dict[str, Any]] = list(manifest.get("inputs") or [])
        self.inputs_digest = signature_digest(self.inputs)

    def __repr__(self) -> str:
        return f"ShardSet({str(self.root)!r}, domains={self.domains}, vocab_size={self.vocab_size})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}  # memmaps are reopened on demand in the receiving process
        return state

    def _split(self, domain: str, split: str) -> dict[str, Any]:
        if domain not in self.manifest["domains"]:
            raise KeyError(f"unknown domain {domain!r}; this data has: {', '.join(self.domains)}")
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
        return self.manifest["domains"][domain]["splits"][split]

    def tokens(self, domain: str, split: str) -> np.ndarray:
        """Read-only memmap, 1-D: the split's documents concatenated, each followed by eos."""
        key = (domain, split, "bin")
        if key not in self._maps:
            s = self._split(domain, split)
            self._maps[key] = np.memmap(
                self.root / s["bin"]["path"], dtype=self.dtype, mode="r", shape=(s["n_tokens"],)
            )
        return self._maps[key]

    def doc_offsets(self, domain: str, split: str) -> np.ndarray:
        """int64 start of each document in :meth:`tokens`, n_docs + 1 entries (the last = total tokens)."""
        key = (domain, split, "idx")
        if key not in self._maps:
            s = self._split(domain, split)
            self._maps[key] = np.load(self.root / s["idx"]["path"], mmap_mode="r")
        return self._maps[key]

    def num_tokens(self, domain: str, split: str) -> int:
        return int(self._split(domain, split)["n_tokens"])

    def num_docs(self, domain: str, split: str) -> int:
        return int(self._split(domain, split)["n_docs"])


# ------------------------------------------------------------------------------------------- building


def _domain_dirname(domain: str) -> str:
    """A folder name for a domain: the name itself when it is safe, else a slug plus a hash."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", domain) and domain not in _RESERVED:
        return domain
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", domain).strip("._")[:60] or "domain"
    return f"{slug}-{hashlib.sha256(domain.encode()).hexdigest()[:8]}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class _SplitWriter:
    """Streams one domain/split to ``<split>.bin`` (and offsets to a side file). Memory stays bounded: a long
    document is tokenised in pieces (tokenizer.pieces). No file stays open between flushes, so a corpus of
    thousands of domains does not run out of file descriptors (it held two per domain)."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, eos_id: int, encode: Any):
        directory.mkdir(parents=True, exist_ok=True)
        self.bin_path = directory / f"{split}.bin"
        self.idx_path = directory / f"{split}.idx.npy"
        self._off_path = directory / f"{split}.offsets.tmp"
        for path in (self.bin_path, self._off_path):
            path.write_bytes(b"")
        self._sha = hashlib.sha256()
        self._dtype, self._eos, self._encode = dtype, eos_id, encode
        self._pending: list[str] = []
        self._pending_chars = 0
        self.n_docs = 0
        self.n_tokens = 0

    def add(self, text: str) -> None:
        self._pending.append(text)
        self._pending_chars += len(text)
        if len(self._pending) >= _BATCH_DOCS or self._pending_chars >= _BATCH_CHARS:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        texts, self._pending, self._pending_chars = self._pending, [], 0
        with open(self.bin_path, "ab") as out, open(self._off_path, "ab") as off:
            i = 0
            while i < len(texts):  # runs of ordinary documents in one call each; a long one on its own
                j = i
                while j < len(texts) and len(texts[j]) <= LONG_DOC_CHARS:
                    j += 1
                if j > i:
                    self._write_docs(self._encode(texts[i:j]), out, off)
                else:
                    self._write_long(texts[i], out, off)
                    j = i + 1
                i = j

    def _write(self, out: BinaryIO, arr: np.ndarray) -> None:
        data = arr.tobytes()
        out.write(data)
        self._sha.update(data)

    def _write_docs(self, ids: list[list[int]], out: BinaryIO, off: BinaryIO) -> None:
        lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
        arr = np.empty(int(lengths.sum()), dtype=self._dtype)
        pos = 0
        for x, n in zip(ids, lengths.tolist()):
            arr[pos : pos + n - 1] = x
            arr[pos + n - 1] = self._eos
            pos += n
        starts = self.n_tokens + np.concatenate(([0], np.cumsum(lengths)[:-1]))
        self._write(out, arr)
        off.write(starts.astype(np.int64).tobytes())
        self.n_docs += len(ids)
        self.n_tokens += int(lengths.sum())

    def _write_long(self, text: str, out: BinaryIO, off: BinaryIO) -> None:
        """One long document, tokenised a few pieces per call (as much text per call as a batch of ordinary
        documents) and written as it goes: memory does not grow with the document."""
        off.write(np.array([self.n_tokens], dtype=np.int64).tobytes())
        batch: list[str] = []
        for piece in [*pieces(text, PIECE_CHARS), None]:
            if piece is not None:
                batch.append(piece)
            if batch and (piece is None or len(batch) * PIECE_CHARS >= _LONG_BATCH_CHARS):
                for x in self._encode(batch):
                    self._write(out, np.asarray(x, dtype=self._dtype))
                    self.n_tokens += len(x)
                batch = []
        self._write(out, np.array([self._eos], dtype=self._dtype))
        self.n_tokens += 1
        self.n_docs += 1

    def close(self) -> dict[str, Any]:
        """Finish both files; returns the split's manifest record (paths relative to the entry)."""
        self._flush()
        with open(self.bin_path, "rb+") as f:
            os.fsync(f.fileno())
        idx = np.lib.format.open_memmap(self.idx_path, mode="w+", dtype=np.int64, shape=(self.n_docs + 1,))
        with open(self._off_path, "rb") as f:
            pos = 0
            while block := f.read(8 << 20):
                part = np.frombuffer(block, dtype=np.int64)
                idx[pos : pos + len(part)] = part
                pos += len(part)
        idx[self.n_docs] = self.n_tokens
        idx.flush()
        del idx
        self._off_path.unlink()
        entry = self.bin_path.parent.parent
        return {
            "n_docs": self.n_docs,
            "n_tokens": self.n_tokens,
            "dtype": self._dtype.name,
            "bin": {
                "path": self.bin_path.relative_to(entry).as_posix(),
                "bytes": self.bin_path.stat().st_size,
                "sha256": self._sha.hexdigest(),
            },
            "idx": {
                "path": self.idx_path.relative_to(entry).as_posix(),
                "bytes": self.idx_path.stat().st_size,
                "sha256": _sha256(self.idx_path),
            },
        }

    def abort(self) -> None:
        """Nothing to release: no file stays open between flushes (the caller removes the folder)."""


def _encoder(tok: Any) -> Any:
    backend = tok.backend_tokenizer

    def encode(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]

    return encode


def _entry_tokenizer(c: DataConfig, tmp: Path) -> Any:
    """The entry's tokenizer, trained or loaded, saved into ``tmp/tokenizer`` and read back from there."""
    tk = c.tokenizer
    if tk.name is None:
        _log(
            f"training a byte-level BPE (vocab {tk.vocab_size}) on up to {tk.train_docs_per_domain} "
            "train documents per domain"
        )
        per = tk.train_docs_per_domain
        tok_cfg = c
        # A per-domain cap saves work only where the source can stop early: synthetic and text_dir read one
        # domain at a time, jsonl/hf with an include list stop when all are full. Otherwise the sampler
        # must see every document to know when no new domain is showing up.
        if c.source in ("synthetic", "text_dir") or c.domains is not None:
            tok_cfg = dataclasses.replace(c, max_docs=min(per, c.max_docs) if c.max_docs is not None else per)
        tok = build_tokenizer(c, lambda: iter_documents(tok_cfg, "train"))
    else:
        _log(f"loading tokenizer {tk.name!r}")
        tok = build_tokenizer(c, lambda: iter([]))
    save_tokenizer(tok, tmp / "tokenizer")
    tok = load_tokenizer(tmp / "tokenizer")  # shards are made by exactly what the entry holds
    if tok.eos_token_id is None:
        raise ConfigError("data.tokenizer.name", "the tokenizer has no eos token")
    return tok


def _write_split(
    c: dict[str, Any],
    split: str,
    tmp: Path,
    dtype: Any,
    eos_id: int,
    encode: Any,
    records: dict[str, dict[str, Any]],
    dirnames: dict[str, str],
) -> None:
    """Tokenise one split into ``tmp``, one writer per domain as it shows up; each domain's record is added to
    ``records`` and its folder name to ``dirnames`` (shared by the splits: a domain keeps one folder)."""
    writers: dict[str, _SplitWriter] = {}
    docs = split_tokens = split_domains = pending = 0
    last = time.time()
    try:
        for domain, text in iter_documents(c, split):
            w = writers.get(domain)
            if w is None:
                if domain not in dirnames:
                    name = _domain_dirname(domain)
                    if name in dirnames.values():
                        raise DataError(f"domains {domain!r} and another map to the same folder {name!r}")
                    dirnames[domain] = name
                w = writers[domain] = _SplitWriter(tmp / dirnames[domain], split, dtype, eos_id, encode)
            w.add(text)
            docs += 1
            pending += len(text)
            if pending > _PENDING_CHARS:  # thousands of domains, each holding part of a batch
                for x in writers.values():
                    x._flush()
                pending = 0
            if time.time() - last > _PROGRESS_EVERY_S:
                last = time.time()
                ntok = sum(x.n_tokens for x in writers.values())
                _log(f"{split}: {docs:,} docs, {ntok:,} tokens so far, {len(writers)} domains")
        for domain in sorted(writers):
            rec = writers.pop(domain).close()
            records.setdefault(domain, {})[split] = rec
            split_tokens += rec["n_tokens"]
            split_domains += 1
            _log(f"{split}/{domain}: {rec['n_docs']:,} docs, {rec['n_tokens']:,} tokens")
    finally:
        for w in writers.values():
            w.abort()
    _log(f"{split}: {docs:,} docs, {split_tokens:,} tokens in {split_domains} domains")


def _check_every_split(c: DataConfig, records: dict[str, dict[str, Any]]) -> None:
    """Refuse a build with no documents, or a domain (found or asked for) without all its splits."""
    if not records:
        raise DataError(
            f"no documents found (source={c.source}); check data.root, the file globs and data.domains / data.exclude"
        )
    expected = set(records)
    if c.domains is not None:
        expected |= {d for d in c.domains if d not in set(c.exclude)}
    for domain in sorted(expected):
        for split in SPLITS:
            if split not in records.get(domain, {}):
                hint = " (raise data.holdout fractions, or give the split its own files)" if split != "train" else ""
                raise DataError(
                    f"domain {domain!r} has no documents in split {split!r}{hint}; every domain needs "
                    "train, val and test documents (drop it with data.exclude)"
                )


def _build(c: DataConfig, key: str, tmp: Path, inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """Build a complete entry in `tmp` (manifest last); returns the manifest."""
    t0 = time.time()
    tk = c.tokenizer
    tok = _entry_tokenizer(c, tmp)
    eos_id = int(tok.eos_token_id)
    vocab = len(tok)
    dtype = _dtype_for(vocab)
    encode = _encoder(tok)
    _log(f"tokenizer ready: {vocab} tokens, eos id {eos_id} ({time.time() - t0:.1f}s)")

    records: dict[str, dict[str, Any]] = {}
    dirnames: dict[str, str] = {}
    for split in SPLITS:
        _write_split(c, split, tmp, dtype, eos_id, encode, records, dirnames)
    _check_every_split(c, records)

    tok_files = {
        p.relative_to(tmp).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted((tmp / "tokenizer").rglob("*"))
        if p.is_file()
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(time.time() - t0, 2),
        "config": cache_config(c),
        "inputs": inputs,  # the local files read, as they were (input_signature)
        "tokenizer": {
            "dir": "tokenizer",
            "vocab_size": vocab,
            "eos_id": eos_id,
            "name": tk.name,
            "files": tok_files,
        },
        "dtype": dtype.name,
        "domains": {d: {"dir": dirnames[d], "splits": records[d]} for d in sorted(records)},
    }
    with open(tmp / "manifest.json.tmp", "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp / "manifest.json.tmp", tmp / "manifest.json")
    _log(f"built {sum(r[s]['n_tokens'] for r in records.values() for s in SPLITS):,} tokens in {time.time() - t0:.1f}s")
    return manifest


# -------------------------------------------------------------------------------------- load / verify


def _corrupt(entry: Path, detail: str) -> DataError:
    return DataError(
        f"cache entry {entry} is corrupt: {detail}. Delete {entry} to rebuild it "
        "(or call prepare_data(..., rebuild_corrupt=True))"
    )


def _load(entry: Path, verify_checksums: bool) -> ShardSet:
    mpath = entry / "manifest.json"
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise _corrupt(entry, "manifest.json is missing") from None
    except (OSError, ValueError) as e:
        raise _corrupt(entry, f"manifest.json is unreadable ({e})") from e
    try:
        if manifest.get("format_version") != FORMAT_VERSION:
            raise _corrupt(entry, f"format version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}")
        files: list[tuple[str, dict[str, Any]]] = list(manifest["tokenizer"]["files"].items())
        itemsize = np.dtype(manifest["dtype"]).itemsize
        for _domain, d in manifest["domains"].items():
            for split in SPLITS:
                s = d["splits"][split]
                files += [(s["bin"]["path"], s["bin"]), (s["idx"]["path"], s["idx"])]
                if s["bin"]["bytes"] != s["n_tokens"] * itemsize:
                    raise _corrupt(entry, f"{s['bin']['path']}: manifest size disagrees with its token count")
    except (KeyError, TypeError, AttributeError) as e:
        raise _corrupt(entry, f"manifest.json is malformed (missing {e})") from e
    for rel, meta in files:
        path = entry / rel
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise _corrupt(entry, f"{path} is missing") from None
        if size != meta["bytes"]:
            raise _corrupt(entry, f"{path} has {size} bytes, the manifest says {meta['bytes']} (truncated or edited)")
        if verify_checksums and _sha256(path) != meta["sha256"]:
            raise _corrupt(entry, f"{path} does not match its sha256 in the manifest (edited or damaged)")
    tok = load_tokenizer(entry / manifest["tokenizer"]["dir"])
    if len(tok) != manifest["tokenizer"]["vocab_size"]:
        raise _corrupt(
            entry, f"the tokenizer has {len(tok)} tokens, the manifest says {manifest['tokenizer']['vocab_size']}"
        )
    shards = ShardSet(entry, manifest, tok)
    for domain in shards.domains:  # cheap structural check of the offsets (the first and last entries)
        for split in SPLITS:
            try:
                off = shards.doc_offsets(domain, split)
            except ValueError as e:
                raise _corrupt(entry, f"{domain}/{split} offsets unreadable ({e})") from e
            if (
                off.shape != (shards.num_docs(domain, split) + 1,)
                or off[0] != 0
                or off[-1] != shards.num_tokens(domain, split)
            ):
                raise _corrupt(entry, f"{domain}/{split} offsets disagree with the manifest")
            del off
            shards._maps.clear()  # a memory map holds a file descriptor: one at a time, for many domains
    _ensure_open_files(len(shards.domains))
    return shards


def _ensure_open_files(n_domains: int) -> None:
    """A run memory-maps three splits per domain, and each map holds a file descriptor: raise the soft
    ``ulimit -n`` to fit (up to the hard limit), or refuse with the number needed."""
    need = 3 * n_domains + 256  # + the interpreter's, torch's and the tokenizer's own
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise DataError(
            f"{n_domains} domains need about {need} open files (a memory map per split), but `ulimit -n` "
            f"allows at most {hard}; raise the limit or merge domains"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


# ------------------------------------------------------------------------------------- locking, public


@contextmanager
def _flock(path: Path, exclusive: bool) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"waiting for another process to finish building {path.with_suffix('')} ...")
            fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def prepare_data(
    data_cfg: DataConfig | Mapping[str, Any], verify_checksums: bool = True, rebuild_corrupt: bool = False
) -> ShardSet:
    """The token shards for a data config: loaded from the cache, or built once and cached.

    Safe to call from many processes at once (ranks, sweep jobs): one builds, the others wait and load.
    A corrupt entry raises DataError naming the file and the folder to delete; with ``rebuild_corrupt`` it
    is moved aside to ``<key>.corrupt-<time>`` and rebuilt instead.
    """
    c = data_config(data_cfg)
    cache = _cache_dir(c)
    inputs = input_signature(c)
    key = cache_key(c, signature_digest(inputs))
    entry = cache / key
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError("data.cache_dir", f"cannot create {cache} ({e})") from e
    lock = cache / f"{key}.lock"

    # Fast path: readers share the lock, so many ranks verify an existing entry at once.
    if entry.exists():
        with _flock(lock, exclusive=False):
            if entry.exists():
                try:
                    return _load(entry, verify_checksums)
                except DataError:
                    if not rebuild_corrupt:
                        raise

    with _flock(lock, exclusive=True):
        # Nobody else builds this key while we hold the lock: any tmp dir left is from a dead build.
        for stale in cache.glob(f"{key}.tmp-*"):
            _log(f"removing {stale} left by an interrupted build")
            shutil.rmtree(stale, ignore_errors=True)
        if entry.exists():
            try:
                return _load(entry, verify_checksums)
            except DataError as e:
                if not rebuild_corrupt:
                    raise
                aside = cache / f"{key}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
                os.replace(entry, aside)
                _log(f"{e}\n[data] moved it aside to {aside}; rebuilding")
        tmp = cache / f"{key}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        _log(f"building token shards for source={c.source} into {entry}")
        try:
            _build(c, key, tmp, inputs)
            os.replace(tmp, entry)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError):  # reading the data raises DataError: this is writing (disk full, quota)
                raise StorageError(
                    f"cannot build the data cache in {cache}: {e.strerror or e}; nothing of it was "
                    "kept: free space (or set data.cache_dir) and run the same command again"
                ) from None
            raise
        return _load(entry, verify_checksums=False)
