"""Data edited in place is never silently reused (README, "Reliability"): the cache records each local input file's
size, modification time and (where cheap) sha256; a fresh run over an edited file builds a new cache entry and
trains on the new text; a resumed run whose data changed is refused with one line naming the file, before
anything is written; a cached sub-run of the old data is not reused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_until_crash
from tests.test_reliability import _jsonl_config
from tikmix.data.shards import changed_inputs, input_signature, prepare_data
from tikmix.errors import CheckpointError
from tikmix.run import run

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def _corpus(root: Path, flavour: str = "") -> None:
    for split, n in (("train", 40), ("val", 12), ("test", 12)):
        (root / split).mkdir(parents=True, exist_ok=True)
        rows = [
            json.dumps({"text": f"{flavour}{' '.join(WORDS[(i + k) % 12] for k in range(30))} {d}", "domain": d})
            for d in ("left", "right")
            for i in range(n)
        ]
        (root / split / "part0.jsonl").write_text("\n".join(rows) + "\n")


def _cfg(smoke_overrides, tmp_path: Path, root: Path, *extra: str):
    return _jsonl_config(smoke_overrides, tmp_path, root, 300, *extra)


def _edit_in_place(path: Path, new_text: str) -> None:
    """Rewrite a file's content at the same path, keeping its size when the text allows and its mtime: the edit a
    size-and-mtime check alone would miss (the sha256 sees it)."""
    st = path.stat()
    path.write_text(new_text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_an_input_edited_in_place_is_another_cache_entry_with_the_new_tokens(smoke_overrides, tmp_path):
    root = tmp_path / "corpus"
    _corpus(root)
    cfg = _cfg(smoke_overrides, tmp_path, root)
    first = prepare_data(cfg.data)
    assert [r["path"] for r in first.inputs] == sorted(str(p.resolve()) for p in root.rglob("*.jsonl"))
    assert all({"bytes", "mtime_ns", "sha256"} <= set(r) for r in first.inputs)
    assert prepare_data(cfg.data).key == first.key  # unchanged data: the same entry, reused
    f = root / "train" / "part0.jsonl"
    text = f.read_text()
    _edit_in_place(f, text.replace("alpha", "omega"))  # same size, same mtime: only the content differs
    second = prepare_data(cfg.data)
    assert second.key != first.key
    assert changed_inputs(first.inputs, second.inputs) == f"{f.resolve()} (edited)"
    old, new = (s.tokenizer.decode(s.tokens("left", "train")[:400].tolist()) for s in (first, second))
    assert "omega" in new and "omega" not in old and "alpha" in old


def test_a_resume_over_edited_data_is_refused_naming_the_file_and_nothing_is_written(smoke_overrides, tmp_path):
    root = tmp_path / "corpus"
    _corpus(root)
    rd = tmp_path / "run"
    cfg = _cfg(smoke_overrides, tmp_path, root, f"run_dir={rd}", "trainer.ckpt_every=2")
    run_until_crash(cfg, crash_at=5)
    ckpt = rd / "checkpoints" / "last.pt"
    before = {p: p.read_bytes() for p in rd.rglob("*") if p.is_file()}
    f = root / "val" / "part0.jsonl"
    f.write_text(f.read_text() + json.dumps({"text": "one more document " * 5, "domain": "left"}) + "\n")
    with pytest.raises(CheckpointError, match=rf"was trained on other data: {f.resolve()} \(edited\)\. Resuming"):
        run(_cfg(smoke_overrides, tmp_path, root, f"run_dir={rd}", "trainer.ckpt_every=2"))
    assert {p: p.read_bytes() for p in rd.rglob("*") if p.is_file()} == before  # the run dir is untouched
    assert ckpt.exists()


def test_unchanged_data_resumes_and_a_checkpoint_without_the_record_is_still_accepted(smoke_overrides, tmp_path):
    root = tmp_path / "corpus"
    _corpus(root)
    rd = tmp_path / "run"
    cfg = _cfg(smoke_overrides, tmp_path, root, f"run_dir={rd}", "trainer.ckpt_every=2")
    run_until_crash(cfg, crash_at=5)
    import torch

    from tikmix.checkpoint import fingerprint, save_checkpoint
    from tikmix.run import resolved_container

    # a checkpoint written before the inputs were recorded carries the fingerprint without them
    path = rd / "checkpoints" / "last.pt"
    old = torch.load(path, weights_only=True)
    for k in ("data_key", "data_inputs"):
        old.pop(k)
    old["fingerprint"] = fingerprint(resolved_container(cfg))
    save_checkpoint(old, path)
    res = run(_cfg(smoke_overrides, tmp_path, root, f"run_dir={rd}", "trainer.ckpt_every=2"))
    assert res["steps"] == 8


def test_input_signature_is_empty_for_generated_data(make_cfg):
    assert input_signature(make_cfg().data) == []


def test_a_cached_sub_run_of_the_old_data_is_not_reused(smoke_overrides, tmp_path):
    from tikmix.ledger import Ledger
    from tikmix.run import make_subrun

    root = tmp_path / "corpus"
    _corpus(root)
    ov = {"trainer": {"final_eval": "targets"}, "budget": {"stages": []}}

    def proxy() -> dict:
        cfg = _cfg(smoke_overrides, tmp_path, root, f"run_dir={tmp_path / 'parent'}")
        digest = prepare_data(cfg.data).inputs_digest
        return make_subrun(cfg, Ledger(), digest)(ov, name="proxy")

    first = proxy()
    assert proxy()["reused"] is True  # same data: reused
    f = root / "train" / "part0.jsonl"
    _edit_in_place(f, f.read_text().replace("beta", "sigma"))
    again = proxy()
    assert again["reused"] is False and again["run_dir"] != first["run_dir"]
