"""Faults: SIGKILL at random moments, non-finite losses, W&B failures, unwritable checkpoints; and (issue 16) one
process per run directory, a full disk at every write, damaged files, SIGTERM in every phase, silent surprises."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    r = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args, f"hydra.run.dir={ref}"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
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


@pytest.mark.parametrize(
    "mixer",
    [
        ["mixer=odm", "mixer.history_every=1"],
        ["mixer=doremi", "mixer.online=true"],
        [
            "mixer=aioli",
            "budget.total_tokens=24576",
            "budget.batch_size=8",
            "mixer.k=1",
            "mixer.interval_steps=2",
            "mixer.rounds=2",
            "mixer.eval_tokens=256",
        ],
    ],
    ids=["odm", "doremi-online", "aioli"],
)
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


@pytest.mark.parametrize(
    "mode_env",
    [
        {
            "WANDB_MODE": "online",
            "WANDB_BASE_URL": "http://127.0.0.1:9",
            "WANDB_API_KEY": "x" * 40,
            "WANDB_INIT_TIMEOUT": "3",
        },
        {"WANDB_MODE": "bogus-mode"},
    ],
)
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
    with pytest.raises(
        CheckpointError, match="cannot write checkpoint .*No space left on device.*previous checkpoint .* intact"
    ):
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

    banned = [
        r"(?<![.\w])eval\(",
        r"(?<![.\w])exec\(",
        r"shell\s*=\s*True",
        r"os\.system\(",
        r"os\.popen\(",
        r"subprocess\.",
        r"weights_only\s*=\s*False",
        r"pickle\.loads?\(",
        r"yaml\.load\((?!.*Loader=(_Loader|(yaml\.)?C?SafeLoader)\b)",
        r"yaml\.unsafe_load",
        r"marshal\.loads",
    ]
    # the one place that starts processes: the schedule oracle runs `python train.py` jobs, each from an argument
    # list (no shell: nothing of a config value is parsed by one); any other use of subprocess is still refused
    allowed = {("eval/schedule_oracle.py", "rc = subprocess.call(_command(plan, job), cwd=REPO")}
    hits = []
    for folder in ("tikmix", "baselines", "eval"):
        for f in sorted((REPO / folder).rglob("*.py")):
            for n, line in enumerate(f.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if any(f.relative_to(REPO).as_posix() == a and code.strip().startswith(b) for a, b in allowed):
                    continue
                hits += [f"{f.relative_to(REPO)}:{n}: {line.strip()}" for pat in banned if re.search(pat, code)]
    hits += [f"train.py: {pat}" for pat in banned if re.search(pat, (REPO / "train.py").read_text())]
    assert not hits, "\n".join(hits)


# ------------------------------------------------------------------------------------------------------------
# Issue 16: one process per run directory; disk-full, damaged files and SIGTERM at every phase
# ------------------------------------------------------------------------------------------------------------


def _main_in_process(cfg, capsys) -> tuple[int, str]:
    """What `python train.py` does once Hydra has composed ``cfg``: exit code and stderr."""
    from tikmix.run import main

    capsys.readouterr()
    try:
        main(cfg)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def _error_lines(err: str, prefix: str = "error:") -> list[str]:
    return [line for line in err.splitlines() if line.startswith(prefix)]


def test_run_dir_held_by_a_live_process_is_refused_naming_it_and_freed_when_it_dies(make_cfg, tmp_path, capsys):
    """Case 1: a second command on a run directory in use gets one error line naming the holder (exit 2) and
    writes nothing there; once the holder is killed (SIGKILL), the directory is free again."""
    import socket

    rd = tmp_path / "run"
    rd.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY)\nfcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\ntime.sleep(120)\n",
            str(rd),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        cfg = make_cfg("trainer.save_final_model=false", run_dir=rd)
        code, err = _main_in_process(cfg, capsys)
        lines = _error_lines(err)
        assert code == 2 and len(lines) == 1, err[-2000:]
        assert f"is in use by another run (pid {holder.pid} on {socket.gethostname()})" in lines[0]
        assert sorted(p.name for p in rd.iterdir()) == []  # nothing written by the refused command
    finally:
        holder.kill()
        holder.wait()
    code, err = _main_in_process(cfg, capsys)
    assert code == 0 and (rd / "results.json").exists(), err[-2000:]


def test_resume_cuts_metrics_back_to_the_checkpoint_and_a_full_disk_leaves_no_torn_line(
    make_cfg, tmp_path, monkeypatch, capsys
):
    """Case 2: metrics.jsonl after kill + resume holds each step once and no torn line; a metrics write that
    fails on a full disk is cut back off (one error line, exit 74)."""
    import tikmix.runlog as runlog

    rd = tmp_path / "r"
    args = ("trainer.ckpt_every=2", "trainer.log_every=1", "trainer.eval_every=0", "trainer.save_final_model=false")
    run_until_crash(make_cfg(*args, run_dir=rd), 5)  # checkpoint at step 4, steps 1..5 logged
    with open(rd / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "train/lo')  # what a kill or a full disk in the middle of a write leaves
    run(make_cfg(*args, run_dir=rd))
    lines = (rd / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]  # every line is whole
    train_steps = [r["step"] for r in recs if "train/loss" in r]
    assert train_steps == list(range(1, 9)), train_steps

    rd2 = tmp_path / "r2"

    def torn(fd, data):  # writes half of what is asked, then fails as a full disk does (ENOSPC)
        os.write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runlog, "_write", torn)
    code, err = _main_in_process(make_cfg(*args, run_dir=rd2), capsys)
    lines = _error_lines(err)
    assert code == 74 and len(lines) == 1 and "No space left on device" in lines[0], err[-2000:]
    assert "Traceback" not in err
    text = (rd2 / "metrics.jsonl").read_text()
    assert text == "" or text.endswith("\n")


def test_checkpoint_claiming_more_steps_than_the_budget_is_refused(make_cfg, tmp_path):
    """Case 3: a checkpoint of this config whose step does not fit the budget is refused before use."""
    rd = tmp_path / "r"
    run_until_crash(make_cfg("trainer.ckpt_every=2", run_dir=rd), 4)
    ck = torch.load(rd / "checkpoints" / "last.pt", weights_only=True)
    ck["step"] = 1000
    torch.save(ck, rd / "checkpoints" / "last.pt")
    with pytest.raises(CheckpointError, match="inconsistent: it claims step 1000, but this run has 8 steps"):
        run(make_cfg("trainer.ckpt_every=2", run_dir=rd))
    assert not (rd / "results.json").exists()


def test_any_checkpoint_writer_failure_keeps_the_previous_one_and_stale_temp_files_are_cleaned(
    make_cfg, tmp_path, monkeypatch, capsys
):
    """Case 4: torch.save failing as on a full disk (RuntimeError 'unexpected pos') after writing part of the
    file is one error line, exit 74, the previous checkpoint intact and no temporary file left; temporary
    files of killed writers are removed when a run starts."""
    import tikmix.checkpoint as ckm

    rd = tmp_path / "r"
    run_until_crash(make_cfg("trainer.ckpt_every=2", run_dir=rd), 4)
    saved = (rd / "checkpoints" / "last.pt").read_bytes()
    stale = [rd / "checkpoints" / ".last.pt.tmp-999999", rd / ".results.json.tmp-999998"]
    for p in stale:
        p.write_bytes(b"\0" * 4096)  # left by writers that were killed
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        real_save({"part": torch.zeros(1000)}, f)
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 1472 vs 1408")

    monkeypatch.setattr(ckm.torch, "save", full_disk)
    code, err = _main_in_process(make_cfg("trainer.ckpt_every=2", run_dir=rd), capsys)
    lines = _error_lines(err)
    assert code == 74 and len(lines) == 1, err[-2000:]
    assert "cannot write checkpoint" in lines[0] and "unexpected pos" in lines[0] and "previous checkpoint" in lines[0]
    assert (rd / "checkpoints" / "last.pt").read_bytes() == saved
    assert not list(rd.rglob("*.tmp*")), list(rd.rglob("*.tmp*"))


def test_damaged_subrun_results_are_recreated_from_its_checkpoint(make_cfg, cache_dir, tmp_path):
    """Case 5: a torn results.json of a cached sub-run (a RegMix proxy that later runs reuse) is moved aside
    and re-created from the sub-run's final checkpoint, with the same values."""
    from tikmix.ledger import Ledger
    from tikmix.run import make_subrun

    sub = make_subrun(make_cfg("trainer.save_final_model=false", run_dir=tmp_path / "parent"), Ledger())
    ov = {"trainer": {"final_eval": "targets"}, "budget": {"stages": []}}
    first = sub(ov, name="damaged-proxy")
    res_path = next((cache_dir / "subruns").glob("damaged-proxy-*")) / "results.json"
    for damage in ("{", "", "[1, 2]"):
        res_path.write_text(damage)
        again = sub(ov, name="damaged-proxy")
        assert again["target_loss"] == first["target_loss"] and again["steps"] == first["steps"]
        assert json.loads(res_path.read_text())["target_loss"] == first["target_loss"]
    assert len(list(res_path.parent.glob("results.json.damaged-*"))) >= 1


def _jsonl_config(smoke_overrides: list[str], tmp_path: Path, root: Path, vocab_size: int, *extra: str):
    """The smoke config on a jsonl corpus at ``root`` (train/, val/, test/; the domain in each row's ``domain``)."""
    from tests.conftest import compose

    return compose(
        [o for o in smoke_overrides if not o.startswith("data.")]
        + [
            f"data.cache_dir={tmp_path / 'cache'}",
            "data=jsonl",
            f"data.root={root}",
            "data.domain_field=domain",
            "data.val_files=val/*.jsonl",
            "data.test_files=test/*.jsonl",
            f"data.tokenizer.vocab_size={vocab_size}",
            *extra,
        ]
    )


def test_many_domains_build_under_a_low_open_files_limit(smoke_overrides, tmp_path):
    """Case 7: the cache build holds no file open per domain (1000 domains under `ulimit -n 1024` ran out; here
    150 domains with ~100 free descriptors), and the run's soft limit is raised to fit its memory maps."""
    import resource

    from tikmix.data.shards import prepare_data

    n = 150
    root = tmp_path / "corpus"
    for split, k in (("train", 2), ("val", 1), ("test", 1)):
        (root / split).mkdir(parents=True)
        rows = [
            json.dumps({"text": f"document {i} of domain d{d:04d}, some words " * 3, "domain": f"d{d:04d}"})
            for d in range(n)
            for i in range(k)
        ]
        (root / split / "part0.jsonl").write_text("\n".join(rows) + "\n")
    cfg = _jsonl_config(smoke_overrides, tmp_path, root, vocab_size=300)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 100, hard))  # fewer than two per domain
    try:
        shards = prepare_data(cfg.data)
        raised = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(shards.domains) == n and all(shards.num_docs(d, "train") == 2 for d in shards.domains)
    assert raised >= 3 * n  # room for a memory map per domain and split


def test_long_documents_are_tokenised_in_pieces_with_the_same_tokens(smoke_overrides, tmp_path, monkeypatch):
    """Case 12: a document longer than LONG_DOC_CHARS reaches the tokenizer in pieces (memory stays flat;
    measured in tests/benchmarks/bench_cache.py), and its tokens equal those of the whole document."""
    from tikmix.data import shards as sh
    from tikmix.data import tokenizer as tkm

    rng = random.Random(0)
    words = ["".join(rng.choice("etaoinshrdlu") for _ in range(rng.randint(1, 8))) for _ in range(300)]
    long_doc = " ".join(rng.choice(words) + rng.choice(["", "", ",", ".\n", "  "]) for _ in range(6000))
    root = tmp_path / "corpus"
    for split, texts in (
        ("train", [long_doc, "a short one"]),
        ("val", [" ".join(words)]),
        ("test", [" ".join(words[::-1])]),
    ):
        (root / split).mkdir(parents=True)
        (root / split / "part0.jsonl").write_text(
            "".join(json.dumps({"text": t, "domain": "web"}) + "\n" for t in texts)
        )
    for mod in (sh, tkm):
        monkeypatch.setattr(mod, "LONG_DOC_CHARS", 2000, raising=False)
        monkeypatch.setattr(mod, "PIECE_CHARS", 500, raising=False)
    longest = []
    real_encoder = sh._encoder

    def spy(tok):
        enc = real_encoder(tok)
        return lambda texts: (longest.append(max(map(len, texts))), enc(texts))[1]

    monkeypatch.setattr(sh, "_encoder", spy)
    cfg = _jsonl_config(smoke_overrides, tmp_path, root, vocab_size=400)
    shards = sh.prepare_data(cfg.data)
    assert len(long_doc) > 20000 and max(longest) <= 2000  # no text longer than LONG_DOC_CHARS in one call
    whole = shards.tokenizer(long_doc, add_special_tokens=False)["input_ids"]
    off = shards.doc_offsets("web", "train")
    assert list(shards.tokens("web", "train")[off[0] : off[1]]) == whole + [shards.eos_id]
    pieces = list(tkm.pieces(long_doc, 500))
    assert "".join(pieces) == long_doc and len(pieces) > 40
    # the tokenizer trained on the pieces is the one the whole document trains
    assert tkm.train_bpe([long_doc, "a short one"], 400).get_vocab() == shards.tokenizer.get_vocab()


def test_small_budgets_say_what_they_do(make_cfg, tmp_path, capsys):
    """Case 13: a budget of one step and 32% unused tokens, with a warmup that rounds to nothing, says so."""
    run(
        make_cfg(
            "budget.total_tokens=1500",
            "budget.stages=[]",
            "budget.warmup_frac=0.1",
            "trainer.save_final_model=false",
            run_dir=tmp_path / "r",
        )
    )
    err = capsys.readouterr().err
    assert "warning: budget.total_tokens=1500 is 1 step(s) of 1,024 tokens: 476 tokens (32%) go unused" in err
    assert "warning: the warmup rounds to no step at all in a 1-step budget" in err


def test_multirun_with_a_failed_job_exits_nonzero_after_all_jobs_ran(smoke_overrides, tmp_path):
    """Case 11: a sweep whose jobs wrote error.json exits 1, after every job ran, naming the failed ones. The bad
    value is of the right type (a string is refused while composing, before any job runs): its job fails."""
    sweep = tmp_path / "sweep"
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "-m",
            *smoke_overrides,
            "trainer.save_final_model=false",
            "trainer.lr=-1,0.003",
            f"hydra.sweep.dir={sweep}",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert r.returncode == 1, r.stderr[-3000:]
    assert len(list(sweep.glob("*/results.json"))) == 1 and len(list(sweep.glob("*/error.json"))) == 1
    line = [x for x in r.stderr.splitlines() if "job(s) of the sweep did not finish" in x]
    assert len(line) == 1 and line[0].startswith("error: 1 job(s)") and "trainer.lr" in line[0], r.stderr[-3000:]


# --- SIGTERM in every phase (case 9): exit 75 with one line, and the resumed run equals an uninterrupted one ---

_HOOKS = {
    # the last training step: the request used to be dropped when the loop ended
    "final-step": """
from tikmix.trainer import Trainer
_orig = Trainer.train_step
def _hook(self, step, w):
    if step == self.total_steps - 1:
        os.kill(os.getpid(), signal.SIGTERM)
    return _orig(self, step, w)
Trainer.train_step = _hook
""",
    # the final evaluation, after training (target losses): the process used to die with 143 and no message
    "final-evaluation": """
from tikmix.trainer import Trainer
_orig = Trainer.target_loss
def _hook(self, batches):
    if self.state.step == self.total_steps:
        os.kill(os.getpid(), signal.SIGTERM)
    return _orig(self, batches)
Trainer.target_loss = _hook
""",
    # TiKMiX-D's probe at the stage boundary (step 4): stopped at once, not after the probe and one more step
    "probe": """
from tikmix.method.mixers import TiKMiXD
_orig = TiKMiXD.on_probe
def _hook(self, probe):
    os.kill(os.getpid(), signal.SIGTERM)
    return _orig(self, probe)
TiKMiXD.on_probe = _hook
""",
    # RegMix's proxy search, during the last step of the second proxy: the request used to be lost
    "regmix-proxies": """
from tikmix.trainer import Trainer
_orig, _seen = Trainer.train_step, []
def _hook(self, step, w):
    if "regmix-proxy" in str(self.run_dir) and step == self.total_steps - 1:
        _seen.append(step)
        if len(_seen) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
    return _orig(self, step, w)
Trainer.train_step = _hook
""",
    # building the data cache: nothing to save; the half-built entry is removed
    "data-cache": """
from tikmix.data import shards
_orig, _n = shards._SplitWriter.add, [0]
def _hook(self, text):
    _n[0] += 1
    if _n[0] == 200:
        os.kill(os.getpid(), signal.SIGTERM)
    return _orig(self, text)
shards._SplitWriter.add = _hook
""",
}

_PHASES = {  # phase -> (extra overrides, what the one line says, the step checkpointed)
    "final-step": ([], "SIGTERM received: checkpointed at step 8", 8),
    "final-evaluation": ([], "during the final evaluation (training is complete and checkpointed at step 8)", 8),
    "probe": (["mixer=tikmix_d"], "SIGTERM received: checkpointed at step 4", 4),
    "regmix-proxies": (
        ["mixer=regmix", "mixer.n_candidates=4", "mixer.proxy_budget.min_steps=3"],
        "during regmix's regmix-proxy run",
        None,
    ),
    "data-cache": ([], "before training started (nothing to checkpoint yet)", None),
}


def _same_results(a: dict, b: dict) -> None:
    for k in (
        "steps",
        "val_loss",
        "test_loss",
        "target_loss",
        "tokens_seen",
        "final_weights",
        "weights_history",
        "compute",
    ):
        assert a[k] == b[k], k


@pytest.fixture(scope="module")
def uninterrupted(smoke_overrides, tmp_path_factory):
    """The results of an uninterrupted run per config, computed once (phases share the plain config)."""
    from tests.conftest import compose

    done: dict[tuple, dict] = {}

    def get(base: list[str]) -> dict:
        if tuple(base) not in done:
            done[tuple(base)] = run(compose(base + [f"run_dir={tmp_path_factory.mktemp('ref')}"]))
        return done[tuple(base)]

    return get


@pytest.mark.parametrize("phase", list(_PHASES))
def test_sigterm_in_every_phase_exits_75_then_resumes_to_the_same_results(
    phase, smoke_overrides, cache_dir, tmp_path, uninterrupted
):
    import shutil

    from tests.conftest import compose

    extra, says, step = _PHASES[phase]
    base = smoke_overrides + ["trainer.save_final_model=false", *extra]
    ref = uninterrupted(base)
    # a fresh cache for the interrupted run when the phase builds it, or trains sub-runs (cached there)
    own_cache = tmp_path / "cache"
    if phase != "data-cache":
        own_cache.mkdir()
        for entry in cache_dir.iterdir():
            if entry.is_dir() and (entry / "manifest.json").exists():
                shutil.copytree(entry, own_cache / entry.name)
    ov = [o for o in base if not o.startswith("data.cache_dir=")] + [
        f"data.cache_dir={own_cache}",
        f"run_dir={tmp_path / 'run'}",
    ]
    script = (
        f"import os, signal, sys\nfrom tests.conftest import compose\n{_HOOKS[phase]}\n"
        f"from tikmix.run import main\nmain(compose({ov!r}))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300
    )
    lines = [x for x in r.stderr.splitlines() if "SIGTERM" in x]
    assert r.returncode == 75, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("[tikmix] SIGTERM received") and says in lines[0], lines
    assert "Traceback" not in r.stderr and not (tmp_path / "run" / "results.json").exists()
    if step is not None:
        assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["step"] == step
    assert not list(own_cache.glob("*.tmp-*"))
    _same_results(run(compose(ov)), ref)


def test_a_full_disk_while_building_the_cache_is_one_line_and_leaves_nothing(
    smoke_overrides, tmp_path, monkeypatch, capsys
):
    """Case 4, for the data cache: a shard write that fails on a full disk is one error line naming the cache
    (exit 74), and neither a half-built entry nor its temporary folder stays."""
    from tests.conftest import compose
    from tikmix.data import shards as sh

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sh._SplitWriter, "_flush", full_disk)
    cache = tmp_path / "cache"
    cfg = compose(
        [o for o in smoke_overrides if not o.startswith("data.cache_dir=")]
        + [f"data.cache_dir={cache}", f"run_dir={tmp_path / 'run'}"]
    )
    code, err = _main_in_process(cfg, capsys)
    lines = _error_lines(err)
    assert code == 74 and len(lines) == 1 and "cannot build the data cache in" in lines[0], err[-2000:]
    assert "No space left on device" in lines[0]
    assert [p.name for p in cache.iterdir()] == [f"{sh.cache_key(cfg.data)}.lock"]


@pytest.fixture
def full_fs(tmp_path):
    """A 64 KiB tmpfs filled to the last page: writes there fail as on a really full disk (ENOSPC), with no
    patched writer in between. Needs root (mount); skipped where it cannot be mounted."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({(r.stderr or r.stdout).strip()[:80]})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(mnt: Path) -> None:
    with open(mnt / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def test_a_full_disk_while_appending_metrics_is_one_storage_error_and_no_torn_line(full_fs):
    """[5 of 6] case 2: appending to metrics.jsonl on a really full filesystem raises StorageError (one line, exit
    74), not the bare OSError a buffered file raised again when it was closed; the file ends at its last line."""
    from tikmix.errors import StorageError
    from tikmix.runlog import append_line

    path = full_fs / "metrics.jsonl"
    first = json.dumps({"step": 1, "pad": "x" * 4070})  # the file ends near a page boundary ...
    append_line(path, first)
    _fill(full_fs)
    with pytest.raises(StorageError, match="No space left on device; it ends at its last complete line"):
        append_line(path, json.dumps({"step": 2, "loss": 1.5}))  # ... so a short line needs a new page
    assert path.read_text() == first + "\n"


def test_ctrl_c_twice_checkpoints_exits_130_in_one_line_then_resumes_to_the_same_results(
    smoke_overrides, tmp_path, uninterrupted
):
    """[5 of 6] case 3: SIGINT (Ctrl-C, here twice) is handled as SIGTERM: the step ends, is checkpointed, one
    `[tikmix] SIGINT received` line, exit 130 (not a KeyboardInterrupt traceback and death by signal); the same
    command resumes to the uninterrupted run's results."""
    from tests.conftest import compose

    base = smoke_overrides + ["trainer.save_final_model=false"]
    ref = uninterrupted(base)
    ov = base + [f"run_dir={tmp_path / 'run'}"]
    hook = """
from tikmix.trainer import Trainer
_orig = Trainer.train_step
def _hook(self, step, w):
    if step == 4:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
    return _orig(self, step, w)
Trainer.train_step = _hook
"""
    script = f"import os, signal, sys\nfrom tests.conftest import compose\n{hook}\nfrom tikmix.run import main\nmain(compose({ov!r}))\n"
    r = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300
    )
    lines = [x for x in r.stderr.splitlines() if "SIGINT" in x]
    assert r.returncode == 130, r.stderr[-3000:]
    assert lines == ["[tikmix] SIGINT received (Ctrl-C): checkpointed at step 5; run the same command again to resume"]
    assert "Traceback" not in r.stderr and "KeyboardInterrupt" not in r.stderr
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["step"] == 5
    _same_results(run(compose(ov)), ref)


def test_a_resume_with_another_thread_count_is_said_and_the_count_is_recorded(make_cfg, tmp_path, capsys):
    """[5 of 6] case 4: a checkpoint records the torch thread count; resuming it with another one is accepted
    with one note (equal within float tolerance, not bit for bit). With the same count the resume tests of this
    file (bit-equal results) run silently."""
    cfg = make_cfg("trainer.ckpt_every=2", run_dir=tmp_path / "run")
    run_until_crash(cfg, crash_at=5)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["torch_threads"] == torch.get_num_threads()
    capsys.readouterr()
    before = torch.get_num_threads()
    torch.set_num_threads(before + 1)
    try:
        run(make_cfg("trainer.ckpt_every=2", run_dir=tmp_path / "run"))
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err
    assert f"written with {before} torch threads, the run now has {before + 1}" in err
    assert "within float tolerance, not bit for bit" in err


def test_a_run_dir_that_is_a_file_and_a_refused_config_leave_nothing_behind(tmp_path):
    """[5 of 6] case 5: a run folder that is an existing file is one error line (exit 2), not Hydra's traceback;
    a config refused at start leaves no empty run folder behind (a folder the user made beforehand stays)."""
    afile = tmp_path / "afile"
    afile.write_text("mine")
    base = [sys.executable, str(REPO / "train.py"), "budget=smoke", "logger=none"]
    r = subprocess.run(base + [f"hydra.run.dir={afile}"], cwd=REPO, env=_env(), capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: config error: hydra.run.dir: {afile} is an existing file, not a folder; choose another "
        "hydra.run.dir (hydra.sweep.dir for a multirun)"
    )
    assert afile.read_text() == "mine"
    new = tmp_path / "new"
    r = subprocess.run(
        base + ["trainer.lr=-1", f"hydra.run.dir={new}"], cwd=REPO, env=_env(), capture_output=True, text=True
    )
    assert r.returncode == 2 and "trainer.lr: must be a number > 0" in r.stderr
    assert not new.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    os.utime(mine, (time.time() - 3600, time.time() - 3600))  # made by the user, before the run
    r = subprocess.run(
        base + ["trainer.lr=-1", f"hydra.run.dir={mine}"], cwd=REPO, env=_env(), capture_output=True, text=True
    )
    assert r.returncode == 2 and mine.is_dir()


def test_hydra_cli_leaves_hydra_full_error_as_it_found_it(monkeypatch, capsys):
    """train.py's wrapper sets HYDRA_FULL_ERROR to catch Hydra's errors; called in-process (a test, a notebook) it
    must put it back, or every later command started from that process shows tracebacks instead of error lines."""
    from tikmix.cli import hydra_cli

    def bad():
        raise FileExistsError(17, "File exists", "/no/such/folder/afile")

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    hydra_cli(lambda: None)
    assert "HYDRA_FULL_ERROR" not in os.environ
    with pytest.raises(SystemExit) as e:
        hydra_cli(bad)
    assert e.value.code == 2 and "hydra.run.dir" in capsys.readouterr().err
    assert "HYDRA_FULL_ERROR" not in os.environ
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    hydra_cli(lambda: None)
    assert os.environ["HYDRA_FULL_ERROR"] == "0"
