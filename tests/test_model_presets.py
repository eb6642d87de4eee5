"""Model presets carry their published learning rate and warmup, and every one of them trains.

Each preset sets trainer.lr and trainer.warmup_steps to the values published for its shape (conf/model/*.yaml
cites them); the trainer uses the published warmup while it is at most a tenth of the run and otherwise falls
back to budget.warmup_frac, saying so. Every preset trains a few steps with a finite, falling loss: the large
ones (160m and up) at one or two layers, with their own width, LR and initialisation, on a few tokens per step.
Before training a run prints its FLOPs and the wall time at the device's peak (tikmix.estimate).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.conftest import CONF, compose
from tikmix.estimate import estimate_line, eval_passes, run_flops
from tikmix.perf import Peak
from tikmix.trainer import Trainer, warmup_steps

# (peak LR, warmup steps) published for each shape; the sources are cited in each preset's header
PUBLISHED = {
    "tiny": (3e-3, None),
    "20m": (4e-4, 100),
    "60m": (4e-4, 100),
    "160m": (6e-4, 1430),
    "410m": (3e-4, 1430),
    "1b": (4e-4, 2000),
    "7b": (3e-4, 2000),
}
# The training check keeps each preset's width, LR and initialisation and cuts depth: the small presets whole,
# 160m/410m at two layers, 1b at one. 7b's 4096-wide layer (206M parameters) takes 5-10 s a step on one CPU
# thread (AdamW over 206M parameters alone is 1-4 s), so the default suite trains 7b's LR at half its width
# (2048, head size 128 as 7b's: the largest that fits in seconds) and the whole width runs with -m slow.
SHRINK = {
    "tiny": [],
    "20m": [],
    "60m": [],
    "160m": ["model.num_layers=2"],
    "410m": ["model.num_layers=2"],
    "1b": ["model.num_layers=1"],
    "7b": [
        "model.num_layers=1",
        "model.hidden_size=2048",
        "model.num_heads=16",
        "model.num_kv_heads=16",
        "model.intermediate_size=5504",
    ],
}
# 6 steps of 2 x 16 tokens of one domain (same-kind batches: the loss trend is not hidden by which domains a
# 2-sequence batch drew), 2 of them warmup (the published warmups are thousands of steps: far more than a tenth)
FEW_STEPS = [
    "budget.seq_len=16",
    "budget.batch_size=2",
    "budget.micro_batch=2",
    "budget.total_tokens=192",
    "budget.warmup_frac=0.34",
    "budget.stages=[]",
    "mixer=fixed",
    "mixer.weights={arith: 1.0}",
    "trainer.log_every=1",
    "trainer.eval_every=0",
    "trainer.final_eval=none",
    "trainer.save_final_model=false",
]


def test_every_preset_is_listed_here():
    assert sorted(PUBLISHED) == sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_sets_its_published_lr_and_warmup(name):
    cfg = compose([f"model={name}"])
    assert (cfg.trainer.lr, cfg.trainer.warmup_steps) == PUBLISHED[name]
    # every trainer key a preset writes must survive composition (the root schema's trainer defaults come before it)
    own = yaml.safe_load((CONF / "model" / f"{name}.yaml").read_text())["trainer"]
    assert {k: cfg.trainer[k] for k in own} == own and set(own) == {"lr", "warmup_steps"}
    assert "lr" not in cfg.model  # the model section stays the architecture (it goes into config.json)


def test_command_line_lr_and_warmup_win_and_default_trainer_is_unchanged():
    cfg = compose(["model=1b", "trainer.lr=1e-3", "trainer.warmup_steps=50"])
    assert (cfg.trainer.lr, cfg.trainer.warmup_steps) == (1e-3, 50)
    d = compose([])  # python train.py: tiny at demo trains as before (lr 3e-3, 5 % of 300 steps of warmup)
    assert d.trainer.lr == 3e-3 and warmup_steps(d.trainer, d.budget, 300) == (15, None)


def test_published_warmup_is_used_until_it_exceeds_a_tenth_of_the_run():
    t, b = SimpleNamespace(warmup_steps=2000), SimpleNamespace(warmup_frac=0.01)
    assert warmup_steps(t, b, 23_842) == (2000, None)  # model=1b budget=25b: TinyLlama's 2,000 steps
    n, note = warmup_steps(t, b, 8)  # budget=smoke: the budget's own fraction, said
    assert n == 0 and "trainer.warmup_steps=2000" in note and "budget.warmup_frac=0.01" in note
    assert warmup_steps(SimpleNamespace(warmup_steps=None), SimpleNamespace(warmup_frac=0.1), 80) == (8, None)


def _train_losses(rd: Path) -> list[float]:
    rows = [json.loads(line) for line in (rd / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def _trains(overrides: list[str], rd: Path, steps: int) -> list[float]:
    from tikmix.run import run

    cfg = compose(overrides + [f"run_dir={rd}"])
    assert cfg.model.init_std == 0.02
    res = run(cfg, quiet=True)
    losses = _train_losses(rd)
    assert res["steps"] == len(losses) == steps and all(math.isfinite(x) for x in losses), losses
    # 2-sequence batches make single steps noisy (7b's last step has come out above its first): the second
    # half's mean must be below the first step's loss
    half = losses[len(losses) // 2 :]
    assert sum(half) / len(half) < losses[0], losses
    return losses


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_preset_trains_with_finite_falling_loss(name, smoke_overrides, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "save", lambda self: None)  # no checkpoint: nothing here resumes
    assert compose([f"model={name}", *SHRINK[name]]).trainer.lr == PUBLISHED[name][0]
    _trains(smoke_overrides + [f"model={name}", *SHRINK[name], *FEW_STEPS], tmp_path / "run", 6)


@pytest.mark.slow
def test_7b_at_its_full_width_trains_with_finite_falling_loss(smoke_overrides, tmp_path, monkeypatch):
    """One 4096-wide layer at 7b's LR (about a minute on one CPU thread): 6 steps of 4 x 32 tokens, 3 warmup."""
    monkeypatch.setattr(Trainer, "save", lambda self: None)  # a 2.5 GB checkpoint otherwise
    wide = [
        "budget.seq_len=32",
        "budget.batch_size=4",
        "budget.micro_batch=4",
        "budget.total_tokens=768",
        "budget.warmup_frac=0.5",
    ]
    _trains(smoke_overrides + ["model=7b", "model.num_layers=1", *FEW_STEPS, *wide], tmp_path / "run", 6)


def test_run_prints_its_flops_and_time_before_training(make_cfg, capsys):
    from tikmix.run import run

    run(make_cfg("trainer.save_final_model=false"))
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("[tikmix] compute:"))
    assert "FLOPs = train" in line and "at the measured peak" in line and "GPU" not in line


def test_estimate_names_a_gpu_for_runs_over_an_hour_on_a_cpu():
    flops = run_flops(
        6e9,
        total_steps=1000,
        tokens_per_step=1024,
        val_tokens=10_000,
        n_val_passes=eval_passes(1000, 100, True),
        test_tokens=20_000,
        target_tokens=5_000,
    )
    assert flops["train"] == 6e9 * 1000 * 1024 and flops["eval"] == pytest.approx(2e9 * (10_000 * 10 + 25_000))
    peak = Peak(1e11, "measured", "float32 matmul")
    assert "a GPU is the sensible place" in estimate_line(flops, peak, "cpu")  # 17 h at 1e11 FLOP/s
    assert "GPU" not in estimate_line(flops, peak, "cuda")
    assert "GPU" not in estimate_line({"train": 1e12, "eval": 0.0, "total": 1e12}, peak, "cpu")  # 10 s
    assert "no peak" in estimate_line(flops, None, "cpu")
