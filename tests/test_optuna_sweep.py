"""The optimiser sweeper (the `optuna` extra): it minimises what a run returns, and a study in which every run
failed ends with one line. Runs only where hydra-optuna-sweeper is installed (pip install -e '.[optuna]')."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from tests.conftest import REPO

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")


def _sweep(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", "hydra/sweeper=optuna", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_optuna_minimises_the_mean_validation_loss(smoke_overrides, tmp_path):
    sweep = tmp_path / "sweep"
    r = _sweep(
        [
            *smoke_overrides,
            "trainer.save_final_model=false",
            "hydra.sweeper.n_trials=1",
            "trainer.lr=interval(1e-3, 3e-3)",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    (res_path,) = sweep.glob("*/results.json")
    res = json.loads(res_path.read_text())
    assert best["best_value"] == pytest.approx(float(np.mean(list(res["val_loss"].values()))))  # the objective
    assert 1e-3 <= best["best_params"]["trainer.lr"] <= 3e-3


def test_a_study_whose_every_run_failed_ends_with_one_line(smoke_overrides, tmp_path):
    r = _sweep(
        [
            *smoke_overrides,
            "hydra.sweeper.n_trials=2",
            "trainer.lr=interval(1e-3, 3e-3)",
            "trainer.schedule=linear",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ]
    )
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines[:2] == ["error: config error: trainer.schedule: unknown 'linear'; allowed: cosine, wsd, constant"] * 2
    assert lines[-1].startswith("error: the optimiser sweep has no finished trial") and len(lines) == 3
    assert r.stderr.rstrip().splitlines()[-1] == lines[-1]  # the study ends with that line
