"""TiKMiX-D through the real trainer: stage boundaries, task targets, exact resume around a boundary."""
from __future__ import annotations

import pytest

from tikmix.run import run
from tests.conftest import run_until_crash

# task targets (the in-domain synthetic tasks' dev splits) without paying for the downstream evaluation
ARGS = ("mixer=tikmix_d", "eval=synthetic9", "eval.limit=0.01", "budget.total_tokens=16384", "budget.stages=[0.5]",
        "trainer.ckpt_every=3", "trainer.save_final_model=false", "trainer.eval_every=0")


@pytest.fixture(scope="module")
def uninterrupted(smoke_overrides, tmp_path_factory):
    from tests.conftest import compose

    rd = tmp_path_factory.mktemp("tikmix") / "full"
    return run(compose(smoke_overrides + [f"run_dir={rd}", *ARGS]), quiet=True)


def test_boundary_sets_a_new_mixture_from_influence(uninterrupted):
    res = uninterrupted
    assert [h["step"] for h in res["mixer_history"]] == [8]  # 16 steps, boundary at 0.5
    rec = res["mixer_history"][0]
    assert set(rec["influence"]) == {f"task/{t}" for t in ("arith_mc", "fact_recall", "agreement", "copy_complete", "reverse_complete")}
    w = rec["weights"]
    assert abs(sum(w.values()) - 1) < 1e-9 and min(w.values()) >= -1e-12
    # the noise domain teaches none of the targets: it loses weight against stratified's 1/6
    assert w["noise"] < 1 / 6
    assert res["compute"]["mixer/influence"] > 0


@pytest.mark.parametrize("crash_at", [5, 10])  # mid-stage before the boundary (ckpt 3), right after it (ckpt 9)
def test_resume_around_the_boundary_equals_uninterrupted(uninterrupted, make_cfg, tmp_path, crash_at):
    cfg = make_cfg(*ARGS, run_dir=tmp_path / "r")
    run_until_crash(cfg, crash_at, quiet=True)
    res = run(cfg, quiet=True)
    assert res["val_loss"] == uninterrupted["val_loss"]
    assert res["final_weights"] == uninterrupted["final_weights"]
    assert res["mixer_history"][0]["influence"] == uninterrupted["mixer_history"][0]["influence"]
