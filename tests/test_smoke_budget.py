"""budget=smoke is a first check that takes seconds: a small evaluation it reports, and every mixer completes.

The smoke budget sets budget.val_tokens / test_tokens / eval_limit, which trainer.val_tokens, trainer.test_tokens
and eval.limit default to (the command line still wins; other budgets keep the full evaluation). Every mixer
runs at the smoke budget (one session cache, so these runs take seconds each); Aioli, whose published
LearnParams round is longer than the whole budget, scales its schedule and prints one line saying how.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tests.conftest import CONF, compose
from tikmix.mixer import available, mixer_class
from tikmix.run import run

# every mixer preset (conf/mixer), with the overrides its class says it needs to run at all (Mixer.smoke)
PRESETS = sorted(p.stem for p in (CONF / "mixer").glob("*.yaml"))
MIXERS = {name: list(mixer_class(name).smoke) for name in PRESETS if name in available()}


def check_smoke(res: dict) -> None:
    """What every mixer's smoke run must show: the whole budget trained, a mixture on the simplex."""
    w = np.array(list(res["final_weights"].values()))
    assert res["steps"] == 8 and np.all(w >= 0) and abs(w.sum() - 1) < 1e-9


def test_smoke_budget_sizes_the_evaluation_and_the_command_line_wins():
    smoke = compose(["budget=smoke"])
    assert (smoke.trainer.val_tokens, smoke.trainer.test_tokens, smoke.eval.limit) == (1024, 2048, 20)
    demo = compose([])
    assert (demo.trainer.val_tokens, demo.trainer.test_tokens, demo.eval.limit) == (16384, 32768, None)
    mine = compose(["budget=smoke", "eval.limit=5", "trainer.val_tokens=99", "trainer.test_tokens=77"])
    assert (mine.trainer.val_tokens, mine.trainer.test_tokens, mine.eval.limit) == (99, 77, 5)


def test_smoke_run_reports_its_eval_limit(smoke_overrides, tmp_path, capsys):
    # the tests' smoke overrides set eval=none and their own token counts; this is the preset's own evaluation
    rd = tmp_path / "run"
    t0 = time.perf_counter()
    run(
        compose(
            smoke_overrides
            + [
                "eval=synthetic9",
                "trainer.val_tokens=${budget.val_tokens}",
                "trainer.test_tokens=${budget.test_tokens}",
                f"run_dir={rd}",
            ]
        )
    )
    wall = time.perf_counter() - t0
    on_disk = json.loads((rd / "results.json").read_text())
    assert on_disk["eval"]["limit"] == 20 and on_disk["eval"]["tasks"]
    assert {t["n_samples"] for t in on_disk["eval"]["tasks"].values()} == {20}
    assert "[eval] synthetic9 at step 8, limit 20" in capsys.readouterr().out
    print(f"smoke run with its evaluation: {wall:.1f}s")


def test_every_mixer_preset_is_a_registered_mixer():
    assert sorted(MIXERS) == PRESETS


@pytest.mark.parametrize("name", list(MIXERS))
def test_mixer_completes_at_smoke(name, make_cfg, tmp_path, capsys):
    res = run(make_cfg(f"mixer={name}", *MIXERS[name], "trainer.save_final_model=false"), quiet=True)
    check_smoke(res)
    if name == "aioli":  # the default synthetic data has 10 domains, smoke 8 steps: not one LearnParams round fits
        out = capsys.readouterr().out
        assert "[aioli] the published schedule" in out and "no LearnParams round runs" in out


def test_aioli_scales_its_round_to_the_smoke_budget(make_cfg, tmp_path, capsys):
    six = "data.domains=[arith,copy,facts,grammar,boiler,noise]"
    res = run(make_cfg("mixer=aioli", six, "trainer.save_final_model=false", run_dir=tmp_path / "a"), quiet=True)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("[aioli]"))
    assert "200-step rounds" in line
    assert "scaled to 1 round, k=1, 1-step intervals: 6 exploration + 2 exploitation" in line
    info = res["mixer_info"]
    assert info["scaled"] in line and info["rounds"] == 1 and info["explore_steps_per_round"] == 6
    assert len(res["mixer_history"]) == 1  # the round measured, solved and updated the mixture ...
    hist = res["mixer_history"][0]
    assert hist["weights"] == res["final_weights"] and hist["weights"] != hist["weights_before"]  # ... and moved it
