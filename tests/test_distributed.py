"""torchrun on CPU (gloo): two ranks give the same losses as one process at the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO


def _env():
    return dict(
        os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false"
    )


@pytest.fixture(scope="module")
def prebuilt(smoke_overrides):
    # build the data cache once in-process so the ranks only load it
    from tests.conftest import compose
    from tikmix.data.shards import prepare_data

    prepare_data(compose(smoke_overrides + ["run_dir=/tmp/unused"]).data)
    return smoke_overrides


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_match_one_process(prebuilt, tmp_path, parallel):
    args = prebuilt + ["trainer.save_final_model=false", f"trainer.parallel={parallel}"]
    one = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args, f"hydra.run.dir={tmp_path / 'one'}"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(REPO / "train.py"),
            *args,
            f"hydra.run.dir={tmp_path / 'two'}",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    r1 = json.loads((tmp_path / "one" / "results.json").read_text())
    r2 = json.loads((tmp_path / "two" / "results.json").read_text())
    assert r2["world_size"] == 2 and r2["tokens_seen"] == r1["tokens_seen"]
    for d in r1["val_loss"]:  # same data, same global batch; only float summation order differs
        assert abs(r1["val_loss"][d] - r2["val_loss"][d]) < 2e-3, (d, r1["val_loss"][d], r2["val_loss"][d])


def test_sigterm_checkpoints_and_exits_cleanly_then_resumes(prebuilt, tmp_path):
    rd = tmp_path / "run"
    args = prebuilt + ["budget.total_tokens=65536", "trainer.ckpt_every=1000", f"hydra.run.dir={rd}"]
    p = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (rd / "metrics.jsonl").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert time.time() - t0 < 30
    assert p.returncode == 75, err[-2000:]
    assert "SIGTERM received: checkpointed at step" in err
    assert (rd / "checkpoints" / "last.pt").exists() and not (rd / "results.json").exists()
    r = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0 and "resumed from" in r.stdout, r.stderr[-2000:]
    assert json.loads((rd / "results.json").read_text())["steps"] == 65536 // (16 * 64)
