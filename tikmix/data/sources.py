"""Document sources: stream ``(domain, text)`` pairs for one split from the configured data.

Four sources share one config (``tikmix.config.DataConfig``):

- ``synthetic``: the embedded procedural domains (``tikmix.data.synthetic``), no download.
- ``jsonl``: ``.jsonl`` / ``.jsonl.zst`` / ``.jsonl.gz`` files, local or remote (any fsspec URL), one
  document per row; the domain is read from a dotted field (``meta.pile_set_name``).
- ``text_dir``: ``root/<domain>/**/*.txt``, each file one document.
- ``hf``: a Hugging Face dataset through ``datasets.load_dataset`` (streamed by default).

A split without files of its own (``val_files: null``, ``hf.splits.val: null``, and always for
``text_dir``) is carved from the train documents by a stable hash (``holdout`` fractions); the train split
then leaves those documents out, so no document is in two splits. Everything streams: no file is ever
loaded whole, and memory does not grow with the corpus.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import json
import posixpath
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tikmix.config import DATA_SOURCES, DataConfig, Holdout, typed
from tikmix.errors import ConfigError, DataError

SOURCES = DATA_SOURCES
SPLITS = ("train", "val", "test")
JSONL_SUFFIXES = (".jsonl", ".jsonl.zst", ".jsonl.gz")

_READ_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------- config


def data_config(cfg: DataConfig | Mapping[str, Any] | None) -> DataConfig:
    """The data section as its dataclass, every default filled in and every value checked and normalised
    (DataConfig's ``__post_init__``): the run's typed section as it is, a mapping of its keys (a test's, a composed
    node) through the schema. ``data.root`` is required here, where the data is read, for jsonl and text_dir."""
    c = typed(DataConfig, {} if cfg is None else cfg, "data")
    if c.source in ("jsonl", "text_dir") and c.root in (None, ""):
        raise ConfigError("data.root", f"required for source={c.source}: the folder (or URL prefix) of the data")
    return c


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _keep_domain(cfg: DataConfig) -> Callable[[str], bool]:
    include = set(cfg.domains) if cfg.domains is not None else None
    exclude = set(cfg.exclude)
    return lambda d: (include is None or d in include) and d not in exclude


def _hash_unit(key: str) -> float:
    """A stable pseudo-random number in [0, 1) from a string (same on every machine and run)."""
    h = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


def _carve(split: str, own: Mapping[str, bool], holdout: Holdout) -> Callable[[str], bool]:
    """For documents read from the train source: does the document with this hash key belong to `split`?

    Each document falls in one bucket (val: u < h_val, test: next h_test, train: the rest); a bucket whose
    split has files of its own goes back to train.
    """
    hv, ht = holdout.val, holdout.test

    def bucket(key: str) -> str:
        u = _hash_unit(key)
        return "val" if u < hv else "test" if u < hv + ht else "train"

    if split == "train":
        if own["val"] and own["test"]:
            return lambda key: True
        return lambda key: (b := bucket(key)) == "train" or own[b]
    return lambda key: bucket(key) == split


def _get_field(row: Mapping[str, Any], dotted: str) -> Any:
    """``row["meta"]["pile_set_name"]`` for ``"meta.pile_set_name"``; KeyError when absent."""
    if dotted in row:
        return row[dotted]
    cur: Any = row
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            raise KeyError(dotted)
        cur = cur[part]
    return cur


# -------------------------------------------------------------------------------------------- public


def list_domains(cfg: DataConfig | Mapping[str, Any]) -> list[str] | None:
    """The sorted domains of the data after include/exclude, where that is cheap to know.

    synthetic and text_dir: always. jsonl and hf: the include list (``data.domains``) minus ``exclude`` when
    one is given, else None: their domains are discovered while streaming (``ShardSet.domains`` is the
    definitive list after ``prepare_data``).
    """
    c = data_config(cfg)
    keep = _keep_domain(c)
    if c.source == "synthetic":
        found = list(synthetic_domains(c))
    elif c.source == "text_dir":
        found = _text_dir_domains(c)
    else:
        return sorted(d for d in c.domains if keep(d)) if c.domains is not None else None
    if c.domains is not None:
        unknown = sorted(set(c.domains) - set(found))
        if unknown:
            raise ConfigError(
                "data.domains", f"unknown domain(s) {', '.join(unknown)}; available: {', '.join(sorted(found))}"
            )
    return sorted(d for d in found if keep(d))


def iter_documents(cfg: DataConfig | Mapping[str, Any], split: str) -> Iterator[tuple[str, str]]:
    """Stream ``(domain, text)`` for one split (train | val | test), include/exclude and max_docs applied.

    Empty documents are skipped. Order is the source's order (deterministic for a fixed source).
    """
    c = data_config(cfg)
    _check_split(split)
    keep = _keep_domain(c)
    reader = {"synthetic": _iter_synthetic, "jsonl": _iter_jsonl, "text_dir": _iter_text_dir, "hf": _iter_hf}[c.source]
    cap = c.max_docs
    wanted = {d for d in c.domains if keep(d)} if c.domains is not None else None
    counts: Counter[str] = Counter()
    full = 0
    for domain, text in reader(c, split, keep):
        if not keep(domain) or not text:
            continue
        if cap is not None:
            if counts[domain] >= cap:
                continue
            counts[domain] += 1
            if counts[domain] == cap:
                full += 1
        yield domain, text
        # Every wanted domain has its quota: stop instead of reading the rest of a large corpus.
        if cap is not None and wanted is not None and full >= len(wanted):
            return


# ----------------------------------------------------------------------------------------- synthetic


def _synthetic_module() -> Any:
    return importlib.import_module("tikmix.data.synthetic")


def synthetic_domains(cfg: DataConfig | Mapping[str, Any]) -> tuple[str, ...]:
    """The domains of ``data.synthetic.benchmark`` (v3, the default, v2 or v1)."""
    syn = _synthetic_module()
    bm = data_config(cfg).synthetic.benchmark
    if bm not in syn.BENCHMARKS:
        raise ConfigError("data.synthetic.benchmark", f"unknown benchmark {bm!r}; allowed: {', '.join(syn.BENCHMARKS)}")
    return syn.BENCHMARKS[bm]


def synthetic_docs(cfg: DataConfig | Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """The benchmark's default documents with ``data.synthetic.docs`` merged over it: split -> domain -> documents."""
    c = data_config(cfg)
    syn = _synthetic_module()
    domains = synthetic_domains(c)
    default = syn.DEFAULT_DOCS_BY[c.synthetic.benchmark]
    docs = {s: dict(default.get(s, {})) for s in SPLITS}
    over = c.synthetic.docs or {}
    if not isinstance(over, dict):
        raise ConfigError("data.synthetic.docs", f"must be a mapping {{split: {{domain: n}}}} or null, got {over!r}")
    for split, per in over.items():
        if split not in SPLITS:
            raise ConfigError("data.synthetic.docs", f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
        if not isinstance(per, dict):
            raise ConfigError(f"data.synthetic.docs.{split}", f"must be a mapping {{domain: n}}, got {per!r}")
        for domain, n in per.items():
            if domain not in domains:
                raise ConfigError(
                    f"data.synthetic.docs.{split}", f"unknown domain {domain!r}; available: {', '.join(domains)}"
                )
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ConfigError(f"data.synthetic.docs.{split}.{domain}", f"must be an integer >= 0, got {n!r}")
            docs[split][domain] = n
    return docs


def _iter_synthetic(c: DataConfig, split: str, keep: Callable[[str], bool]) -> Iterator[tuple[str, str]]:
    syn = _synthetic_module()
    list_domains(c)  # checks the include list against the known domains
    docs = synthetic_docs(c)
    seed = c.synthetic.seed
    for domain in synthetic_domains(c):
        if not keep(domain):
            continue
        n = docs[split].get(domain, 0)
        if c.max_docs is not None:
            n = min(n, c.max_docs)
        for text in syn.iter_documents(domain, split, n, seed=seed, benchmark=c.synthetic.benchmark):
            yield domain, text


# ------------------------------------------------------------------------------------------- text_dir


def _text_dir_root(c: DataConfig) -> Path:
    root = Path(c.root).expanduser()
    if not root.is_dir():
        raise ConfigError(
            "data.root", f"{c.root!r} is not an existing folder (source=text_dir wants root/<domain>/**/*.txt)"
        )
    return root


def _text_dir_domains(c: DataConfig) -> list[str]:
    root = _text_dir_root(c)
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(f"data.root: {c.root!r} holds no domain folders (source=text_dir wants root/<domain>/**/*.txt)")
    return found


def _iter_text_dir(c: DataConfig, split: str, keep: Callable[[str], bool]) -> Iterator[tuple[str, str]]:
    root = _text_dir_root(c)
    belongs = _carve(split, {"train": True, "val": False, "test": False}, c.holdout)
    for domain in list_domains(c) or []:
        n = 0
        files = sorted(
            p
            for p in (root / domain).rglob("*.txt")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        for path in files:
            if not belongs(path.relative_to(root).as_posix()):
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: not valid UTF-8 text ({e})") from e
            except OSError as e:
                raise DataError(f"{path}: cannot read ({e})") from e
            if not text:
                continue
            yield domain, text
            n += 1
            if c.max_docs is not None and n >= c.max_docs:
                break


# ---------------------------------------------------------------------------------------------- jsonl


def _open_fs(root: str) -> tuple[Any, str]:
    import fsspec

    try:
        return fsspec.core.url_to_fs(root)
    except (ImportError, ValueError) as e:
        raise ConfigError("data.root", f"cannot open {root!r}: {e}") from e


def jsonl_files(cfg: DataConfig | Mapping[str, Any], field: str) -> list[tuple[Any, str, str]]:
    """The files matched by ``data.<field>`` (train_files | val_files | test_files) under ``data.root``.

    Returns ``(filesystem, path, display_name)`` sorted by path. Patterns are fsspec globs (``**`` spans
    folders); a pattern without glob characters names one file. Only .jsonl, .jsonl.zst, .jsonl.gz match.
    """
    from fsspec.implementations.local import LocalFileSystem

    c = data_config(cfg)
    patterns = getattr(c, field)
    if not patterns:
        raise ConfigError(
            f"data.{field}", "required for source=jsonl: glob(s) under data.root, e.g. 'train/*.jsonl.zst'"
        )
    fs, root_path = _open_fs(c.root)
    local = isinstance(fs, LocalFileSystem)
    if local and not Path(root_path).is_dir():
        raise ConfigError("data.root", f"{c.root!r} is not an existing folder")
    out: dict[str, tuple[Any, str, str]] = {}
    for pat in patterns:
        full = posixpath.join(root_path.rstrip("/") if root_path != "/" else "/", pat)
        if any(ch in pat for ch in "*?["):
            try:
                matches = [m for m in fs.glob(full) if m.endswith(JSONL_SUFFIXES)]
            except Exception as e:  # noqa: BLE001 - remote listings fail in many ways
                raise DataError(f"cannot list {full!r} (data.{field}={pat!r} under data.root): {e}") from e
            if not matches:
                raise DataError(f"no {'/'.join(JSONL_SUFFIXES)} files match data.{field}={pat!r} under {c.root}")
        else:
            if not full.endswith(JSONL_SUFFIXES):
                raise ConfigError(f"data.{field}", f"{pat!r}: supported files are {', '.join(JSONL_SUFFIXES)}")
            if local and not Path(full).is_file():
                raise DataError(f"{full}: file not found (data.{field}={pat!r} under data.root={c.root})")
            matches = [full]
        for m in matches:
            out[m] = (fs, m, m if local else fs.unstrip_protocol(m))
    return [out[k] for k in sorted(out)]


def local_inputs(cfg: DataConfig | Mapping[str, Any]) -> list[Path]:
    """The local files a file-based source reads (jsonl's matched files, text_dir's .txt files, hf's local
    data_files), sorted: what an edit in place changes. Remote files and generated sources give none."""
    from fsspec.implementations.local import LocalFileSystem

    c = data_config(cfg)
    out: set[Path] = set()
    if c.source == "jsonl":
        for field in ("train_files", "val_files", "test_files"):
            if getattr(c, field):
                out |= {Path(p) for fs, p, _ in jsonl_files(c, field) if isinstance(fs, LocalFileSystem)}
    elif c.source == "text_dir":
        root = _text_dir_root(c)
        for domain in list_domains(c) or []:
            out |= {
                p
                for p in (root / domain).rglob("*.txt")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
            }
    elif c.source == "hf":
        files = _hf_data_files(c)
        flat = [f for v in (files.values() if isinstance(files, dict) else [files]) for f in _as_list(v)]
        for f in flat:
            if isinstance(f, str) and "://" not in f:
                p = Path(f).expanduser()
                out |= {q for q in p.rglob("*") if q.is_file()} if p.is_dir() else ({p} if p.is_file() else set())
    return sorted(p.resolve() for p in out)


def _as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, (list, tuple)) else [] if v is None else [v]


def _zstd_chunks(f: Any, name: str) -> Iterator[bytes]:
    """Decompress a (possibly multi-frame) zstd stream, raising DataError on a truncated or corrupt file.

    zstandard's stream_reader ends silently on a truncated frame, and fsspec's reads only the first frame:
    both would hand back part of a file as if it were all of it.
    """
    import zstandard

    dctx = zstandard.ZstdDecompressor(max_window_size=2**31)
    obj = dctx.decompressobj()
    in_frame = False
    try:
        while True:
            data = f.read(_READ_CHUNK)
            if not data:
                break
            while data:
                in_frame = True
                out = obj.decompress(data)
                if out:
                    yield out
                if obj.eof:
                    data, obj, in_frame = obj.unused_data, dctx.decompressobj(), False
                else:
                    data = b""
    except zstandard.ZstdError as e:
        raise DataError(f"{name}: corrupt zstd file ({e})") from e
    if in_frame:
        raise DataError(f"{name}: truncated zstd file (the last frame is incomplete)")


def _raw_chunks(f: Any, name: str) -> Iterator[bytes]:
    if name.endswith(".zst"):
        yield from _zstd_chunks(f, name)
        return
    if name.endswith(".gz"):
        f = gzip.GzipFile(fileobj=f, mode="rb")
    try:
        while data := f.read(_READ_CHUNK):
            yield data
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{name}: corrupt or truncated gzip file ({e})") from e


def _iter_lines(fs: Any, path: str, name: str) -> Iterator[tuple[int, bytes]]:
    """``(line number, line)`` of a local or remote, plain or compressed, text file; streamed."""
    try:
        f = fs.open(path, "rb")
    except FileNotFoundError as e:
        raise DataError(f"{name}: file not found") from e
    except Exception as e:  # noqa: BLE001 - remote filesystems raise many types
        raise DataError(f"{name}: cannot open ({type(e).__name__}: {e})") from e
    with f:
        lineno, parts = 0, []  # the chunks of an unfinished line, joined once (a long line is not re-copied per chunk)
        try:
            for chunk in _raw_chunks(f, name):
                if b"\n" not in chunk:
                    parts.append(chunk)
                    continue
                lines = chunk.split(b"\n")
                if parts:
                    lines[0] = b"".join([*parts, lines[0]])
                last = lines.pop()
                parts = [last] if last else []
                for line in lines:
                    lineno += 1
                    yield lineno, line
        except DataError:
            raise
        except OSError as e:
            raise DataError(f"{name}: read failed after line {lineno} ({e})") from e
        if parts:
            yield lineno + 1, b"".join(parts)


def _row_doc(row: Any, c: DataConfig, where: str) -> tuple[str, str]:
    if not isinstance(row, Mapping):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    try:
        text = _get_field(row, c.text_field)
    except KeyError:
        raise DataError(f"{where}: row has no field {c.text_field!r} (data.text_field)") from None
    try:
        domain = _get_field(row, c.domain_field)
    except KeyError:
        raise DataError(f"{where}: row has no field {c.domain_field!r} (data.domain_field)") from None
    if not isinstance(text, str):
        raise DataError(f"{where}: field {c.text_field!r} must be a string, got {type(text).__name__}")
    if domain is None or isinstance(domain, (dict, list)):
        raise DataError(f"{where}: field {c.domain_field!r} must be a domain name, got {domain!r}")
    for field, value in ((c.text_field, text), (c.domain_field, str(domain))):
        if value.isascii():
            continue
        try:  # JSON may escape a lone surrogate ("\\ud800"), which no tokenizer (nor UTF-8) accepts
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise DataError(
                f"{where}: field {field!r} holds {value[e.start]!r} at character {e.start}, a lone "
                "UTF-16 surrogate that is not text; fix or drop the row"
            ) from None
    return str(domain), text


def _iter_jsonl(c: DataConfig, split: str, keep: Callable[[str], bool]) -> Iterator[tuple[str, str]]:
    own = {"train": True, "val": c.val_files is not None, "test": c.test_files is not None}
    files = jsonl_files(c, f"{split}_files" if own[split] else "train_files")
    belongs = (lambda key: True) if own[split] and split != "train" else _carve(split, own, c.holdout)
    for fs, path, name in files:
        for lineno, line in _iter_lines(fs, path, name):
            if not line.strip():
                continue
            where = f"{name}:{lineno}"
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DataError(f"{where}: not valid JSON ({e})") from e
            domain, text = _row_doc(row, c, where)
            if keep(domain) and belongs(text):
                yield domain, text


# ------------------------------------------------------------------------------------------------- hf


def _hf_data_files(c: DataConfig) -> Any:
    """``hf.data_files`` with local relative paths resolved against ``data.root`` when one is given."""
    files = c.hf.data_files
    root = c.root
    if files is None or root is None or "://" in root:
        return files

    def fix(p: Any) -> Any:
        if isinstance(p, str) and "://" not in p and not Path(p).is_absolute():
            return str(Path(root).expanduser() / p)
        if isinstance(p, list):
            return [fix(x) for x in p]
        return p

    return {k: fix(v) for k, v in files.items()} if isinstance(files, dict) else fix(files)


_HF_HINT = (
    "It needs hub access or a local copy: network with HF_HUB_OFFLINE unset, or data.hf.path set to a local "
    "dataset folder or script, or data.hf.path=json with data.hf.data_files"
)


def _iter_hf(c: DataConfig, split: str, keep: Callable[[str], bool]) -> Iterator[tuple[str, str]]:
    hf = c.hf
    if not hf.path:
        raise ConfigError("data.hf.path", "required for source=hf: a dataset name, a local folder or script, or 'json'")
    if hf.splits.train is None:
        raise ConfigError("data.hf.splits.train", "required: the dataset split to train on, e.g. 'train'")
    own = {s: getattr(hf.splits, s) is not None for s in SPLITS}
    hf_split = getattr(hf.splits, split) if own[split] else hf.splits.train
    belongs = (lambda key: True) if own[split] and split != "train" else _carve(split, own, c.holdout)
    what = f"Hugging Face dataset {hf.path!r}" + (f" ({hf.name})" if hf.name else "") + f" split {hf_split!r}"
    kwargs: dict[str, Any] = {"split": hf_split, "streaming": bool(hf.streaming)}
    data_files = _hf_data_files(c)
    if data_files is not None:
        kwargs["data_files"] = data_files
    try:
        import datasets

        ds = datasets.load_dataset(hf.path, hf.name, **kwargs)
    except Exception as e:  # noqa: BLE001 - the hub, the network and dataset scripts raise anything
        msg = str(e).splitlines()[0] if str(e) else ""
        if "split" in msg.lower():
            hint = f"Check data.hf.splits.{split}" + (
                ""
                if split == "train"
                else f", or set data.hf.splits.{split}: null to carve it from train (data.holdout.{split})"
            )
        else:
            hint = _HF_HINT
        raise DataError(f"cannot load {what}: {type(e).__name__}: {msg[:300]}. {hint}") from e
    it = iter(ds)
    index = 0
    while True:
        try:
            row = next(it)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001
            raise DataError(
                f"reading {what} failed at row {index}: {type(e).__name__}: {str(e)[:300]}. {_HF_HINT}"
            ) from e
        domain, text = _row_doc(row, c, f"{what} row {index}")
        index += 1
        if keep(domain) and belongs(text):
            yield domain, text
