"""Multirun sweeps: a crashed job never takes down its siblings; re-running the sweep skips finished runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO


def test_multirun_survives_a_bad_job_and_resubmission_skips_finished(smoke_overrides, tmp_path):
    sweep = tmp_path / "sweep"
    env = dict(os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    args = [
        sys.executable,
        str(REPO / "train.py"),
        "-m",
        *smoke_overrides,
        "trainer.save_final_model=false",
        "mixer=fixed",
        "mixer.weights={arith: 0.5, grammar: 0.5},{arith: 2.0, nosuch: 1.0}",
        f"hydra.sweep.dir={sweep}",
    ]
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    # the good job finishes; the sweep exits 1 and names the job that did not (README, "Exit codes")
    assert r.returncode == 1 and "1 job(s) of the sweep did not finish (1_fixed_s0)" in r.stderr, r.stderr[-3000:]
    dirs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(dirs) == 2
    good, bad = dirs
    assert (good / "results.json").exists()
    err = json.loads((bad / "error.json").read_text())
    assert "mixer.weights" in err["error"] and not (bad / "results.json").exists()
    before = (good / "results.json").read_bytes()
    r2 = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 1
    assert "already holds a finished run" in r2.stdout
    assert (good / "results.json").read_bytes() == before


def test_launcher_presets_compose():
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tikmix.mixer import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        c = hcompose(
            config_name="config",
            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
        assert c.hydra.launcher._target_.endswith("SlurmLauncher") and c.hydra.launcher.partition == "gpu"
        c = hcompose(
            config_name="config",
            overrides=["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
            return_hydra_config=True,
        )
        assert c.hydra.launcher._target_.endswith("JoblibLauncher") and c.hydra.launcher.n_jobs == 2
    GlobalHydra.instance().clear()


def test_every_sweep_preset_composes_and_names_real_mixers():
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tikmix.mixer import available, register_configs

    register_configs()
    names = sorted(p.stem for p in (REPO / "sweeps" / "sweep").glob("*.yaml"))
    assert {"compare", "paper_table1", "regmix_table4", "aioli_table2", "regmix_proxies"} <= set(names)
    mixers = set(available())
    for name in names:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            c = hcompose(config_name="config", overrides=[f"+sweep={name}"], return_hydra_config=True)
        params = c.hydra.sweeper.params or {}
        for m in str(params.get("mixer", "")).split(","):
            assert not m or m in mixers, (name, m)
    GlobalHydra.instance().clear()
