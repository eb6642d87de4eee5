"""Faults: SIGKILL at random moments, non-finite losses, W&B failures, unwritable checkpoints."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.conftest import REPO, run_until_crash
from tikmix.errors import CheckpointError
from tikmix.run import run
from tikmix.trainer import NonFiniteLoss, Trainer


def _env(**kw):
    return dict(os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **kw)


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(smoke_overrides, tmp_path):
    args = smoke_overrides + ["budget.total_tokens=32768", "trainer.ckpt_every=1", "trainer.save_final_model=false"]
    ref = tmp_path / "ref"
    r = subprocess.run([sys.executable, str(REPO / "train.py"), *args, f"hydra.run.dir={ref}"], env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rd = tmp_path / "killed"
    cmd = [sys.executable, str(REPO / "train.py"), *args, f"hydra.run.dir={rd}"]
    rng = random.Random(0)
    kills = 0
    for _ in range(3):
        p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while not (rd / "checkpoints" / "last.pt").exists() and p.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))  # lands anywhere, checkpoint writes (every step) included
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
        if (rd / "results.json").exists():
            break
    assert kills >= 1
    # no torn checkpoint under the final name: it always loads
    torch.load(rd / "checkpoints" / "last.pt", weights_only=True)
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    a = json.loads((ref / "results.json").read_text())
    b = json.loads((rd / "results.json").read_text())
    assert a["val_loss"] == b["val_loss"] and a["test_loss"] == b["test_loss"] and a["tokens_seen"] == b["tokens_seen"]


def _nan_at(step_to_poison: int):
    orig = Trainer.token_losses

    def poisoned(self, windows, model=None):
        tl = orig(self, windows, model)
        if self.state.step == step_to_poison:
            return tl * float("nan")
        return tl

    return poisoned


def test_nan_loss_stops_with_step_and_domains_and_keeps_last_checkpoint(make_cfg, tmp_path, monkeypatch):
    rd = tmp_path / "r"
    monkeypatch.setattr(Trainer, "token_losses", _nan_at(5))
    with pytest.raises(NonFiniteLoss, match=r"non-finite training loss at step 5; domains in the batch: \[.*'arith'"):
        run(make_cfg("trainer.ckpt_every=2", run_dir=rd))
    ck = torch.load(rd / "checkpoints" / "last.pt", weights_only=True)
    assert ck["step"] == 4 and all(torch.isfinite(v).all() for v in ck["model"].values())


def test_nan_loss_skip_mode_counts_skipped_batches(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "token_losses", _nan_at(3))
    res = run(make_cfg("trainer.on_nonfinite=skip", run_dir=tmp_path / "r"))
    assert [s["step"] for s in res["skipped_steps"]] == [3]
    assert res["steps"] == 8 and all(np.isfinite(v) for v in res["val_loss"].values())
    assert sum(res["tokens_seen"].values()) == 7 * 16 * 64  # the skipped batch was not trained on


@pytest.mark.parametrize("mixer", [
    ["mixer=odm", "mixer.history_every=1"],
    ["mixer=doremi", "mixer.online=true"],
    ["mixer=aioli", "budget.total_tokens=20480", "budget.batch_size=8", "mixer.k=1", "mixer.interval_steps=2",
     "mixer.rounds=2", "mixer.eval_tokens=256"],
], ids=["odm", "doremi-online", "aioli"])
def test_nan_loss_skip_mode_with_every_per_step_mixer(make_cfg, tmp_path, monkeypatch, mixer):
    """A skipped batch still reaches mixer.observe (marked skipped): mixers that check consecutive steps go on,
    and none learns from the skipped batch (ODM's rewards, Aioli's counts, DoReMi's α are untouched by it)."""
    monkeypatch.setattr(Trainer, "token_losses", _nan_at(3))
    res = run(make_cfg("trainer.on_nonfinite=skip", "trainer.save_final_model=false", *mixer, run_dir=tmp_path / "r"))
    assert [s["step"] for s in res["skipped_steps"]] == [3]
    assert all(np.isfinite(v) for v in res["val_loss"].values())
    info = res["mixer_info"]
    if res["mixer"] in ("odm", "aioli"):
        assert info["steps_observed"] == res["steps"]
    if res["mixer"] == "odm":
        h = {r["step"]: r for r in res["mixer_history"]}
        assert all(v is None for v in h[3]["loss"].values()) and h[3]["reward"] == h[2]["reward"]


@pytest.mark.parametrize("mode_env", [
    {"WANDB_MODE": "online", "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": "x" * 40, "WANDB_INIT_TIMEOUT": "3"},
    {"WANDB_MODE": "bogus-mode"},
])
def test_wandb_unreachable_or_misconfigured_never_fails_the_run(make_cfg, tmp_path, monkeypatch, mode_env):
    for k, v in mode_env.items():
        monkeypatch.setenv(k, v)
    rd = tmp_path / "run"
    res = run(make_cfg("logger=wandb", "trainer.save_final_model=false", run_dir=rd))
    assert res["steps"] == 8 and (rd / "results.json").exists() and (rd / "metrics.jsonl").exists()


def test_wandb_killed_mid_run_never_fails_the_run(make_cfg, tmp_path, monkeypatch):
    import wandb

    calls = {"n": 0}

    class DyingRun:  # a W&B run whose service dies after init
        id = "dying"
        summary: dict = {}

        def log(self, *a, **k):
            calls["n"] += 1
            raise ConnectionError("wandb service died")

        def finish(self):
            raise ConnectionError("wandb service died")

    monkeypatch.setattr(wandb, "init", lambda *a, **k: DyingRun())
    rd = tmp_path / "run"
    res = run(make_cfg("logger=wandb", "trainer.save_final_model=false", "trainer.log_every=1", run_dir=rd))
    assert calls["n"] == 1  # the first failure switches W&B off; the run goes on
    assert res["steps"] == 8 and len((rd / "metrics.jsonl").read_text().splitlines()) >= 8


def test_wandb_offline_by_default_without_a_key(make_cfg, tmp_path, monkeypatch):
    for k in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    rd = tmp_path / "run"
    run(make_cfg("logger=wandb", "trainer.save_final_model=false", run_dir=rd))
    assert list((rd / "wandb").glob("offline-run-*")), "expected an offline W&B run in the run dir"


def test_unwritable_checkpoint_fails_clearly_and_keeps_saved_progress(make_cfg, tmp_path, monkeypatch):
    rd = tmp_path / "r"
    run_until_crash(make_cfg("trainer.ckpt_every=2", run_dir=rd), 4)
    saved = (rd / "checkpoints" / "last.pt").read_bytes()

    import tikmix.checkpoint as ckm

    real_open = open

    def full_disk(path, mode="r", *a, **k):
        if "w" in mode and ".last.pt.tmp" in str(path):
            raise OSError(28, "No space left on device")
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(ckm, "open", full_disk, raising=False)
    with pytest.raises(CheckpointError, match="cannot write checkpoint .*No space left on device.*previous checkpoint .* intact"):
        run(make_cfg("trainer.ckpt_every=2", run_dir=rd))
    assert (rd / "checkpoints" / "last.pt").read_bytes() == saved
    assert not list((rd / "checkpoints").glob(".last.pt.tmp*"))


class _Payload:
    """Unpickling this would run code (create a file) — what a weights-only loader must refuse."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_checkpoint_with_code_is_refused_not_executed(tmp_path):
    from tikmix.checkpoint import load_checkpoint

    target = tmp_path / "pwned"
    bad = tmp_path / "last.pt"
    torch.save({"format": 1, "model": _Payload(str(target))}, bad)
    with pytest.raises(CheckpointError, match="weights-only loader refused it"):
        load_checkpoint(bad)
    assert not target.exists()


def test_no_config_or_data_string_reaches_eval_exec_or_a_shell():
    """A static guard over the product code: no eval/exec, no shell, no unsafe YAML or pickle loading."""
    import re

    banned = [r"(?<![.\w])eval\(", r"(?<![.\w])exec\(", r"shell\s*=\s*True", r"os\.system\(", r"os\.popen\(",
              r"subprocess\.", r"weights_only\s*=\s*False", r"pickle\.loads?\(", r"yaml\.load\((?!.*Loader=(_Loader|(yaml\.)?C?SafeLoader)\b)",
              r"yaml\.unsafe_load", r"marshal\.loads"]
    hits = []
    for folder in ("tikmix", "baselines", "eval"):
        for f in sorted((REPO / folder).rglob("*.py")):
            for n, line in enumerate(f.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                hits += [f"{f.relative_to(REPO)}:{n}: {line.strip()}" for pat in banned if re.search(pat, code)]
    hits += [f"train.py: {pat}" for pat in banned if re.search(pat, (REPO / "train.py").read_text())]
    assert not hits, "\n".join(hits)
