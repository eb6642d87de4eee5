"""eval/transfer.py on planted runs: rankings whose Spearman ρ is known by hand, the paired Δ to the static
reference, tasks learned or not against a known chance, and one clear error when there is nothing to compare."""

from __future__ import annotations

import json

import pytest

from eval import transfer
from eval.runs import collect

# planted in-domain BPB per mixer (seed offsets added below): small scale, large scale
SMALL = {"stratified": 1.60, "natural": 1.70, "dga": 1.55, "tikmix_d": 1.65}
LARGE_SAME = {"stratified": 1.40, "natural": 1.50, "dga": 1.35, "tikmix_d": 1.45}  # same order: ρ = +1
LARGE_REVERSED = {"stratified": 1.45, "natural": 1.35, "dga": 1.50, "tikmix_d": 1.40}  # reversed: ρ = -1
STATIC = 1.52  # the static reference at the small scale: best there


def _write(root, budget, mixer, seed, bpb, tasks, tokens, point=None):
    d = root / budget / f"{mixer}_s{seed}"
    d.mkdir(parents=True)
    res = {
        "mixer": mixer,
        "seed": seed,
        "model": "tiny",
        "budget": budget,
        "data": "synthetic",
        "flops_per_token": 6e6,
        "train_tokens": {"arith": tokens // 2, "copy": tokens - tokens // 2},  # per domain, as the trainer writes
        "compute": {"train": 6e6 * tokens, "eval": 1e9, "mixer_total": 0, "total": 6e6 * tokens + 1e9},
        "total_time_s": 120.0,
        "mixer_info": {"point": point} if point else {},
        "eval": {"in_domain_bpb": bpb, "in_domain_avg": 100 - 30 * bpb, "tasks": tasks},
    }
    (d / "results.json").write_text(json.dumps(res))


def _tasks(agreement: float, arith: float) -> dict:
    # agreement has 2 choices (chance 50%), arith_mc 4 (chance 25%); 500 examples each
    return {
        "agreement": {"value": agreement, "n_samples": 500},
        "arith_mc": {"value": arith, "n_samples": 500},
    }


def plant(root, large: dict, static_large: float = 1.32) -> None:
    for seed in range(3):
        off = 0.01 * seed  # shared by every mixer of a seed: paired differences cancel it
        for m, v in SMALL.items():
            _write(root, "demo", m, seed, v + off, _tasks(50.0, 25.0 + seed), 1_000)
        for m, v in large.items():
            learned = 60.0 if m == "dga" else 51.0
            _write(root, "demo4x", m, seed, v + off, _tasks(learned, 26.0), 4_000)
        _write(root, "demo", "design", seed, STATIC + off, _tasks(50.0, 25.0), 1_000, "best1:grid")
        _write(root, "demo4x", "design", seed, static_large + off, _tasks(50.0, 25.0), 4_000, "best1:grid")


def _rho(a: dict, metric: str) -> dict:
    (r,) = [r for r in a["rho"] if r["metric"] == metric]
    return r


# the static reference stays best (1.32) with the same order, and becomes worst (1.55) with the reversed one
@pytest.mark.parametrize("large, static_large, want", [(LARGE_SAME, 1.32, 1.0), (LARGE_REVERSED, 1.55, -1.0)])
def test_rho_of_planted_rankings(tmp_path, large, static_large, want):
    plant(tmp_path, large, static_large)
    a = transfer.analyse(collect([tmp_path]), metrics=("in_domain_bpb",))
    assert [s.split(" / ")[1] for s in a["settings"]] == ["demo", "demo4x"]  # in order of training compute
    r = _rho(a, "in_domain_bpb")
    # five rows (the four mixers and the static reference), each in the same or exactly the reversed order
    assert r["rho"] == pytest.approx(want) and r["n"] == 5
    # the seeds only shift every mixer alike, so resampling them barely moves the ranking
    assert r["ci"][0] <= r["rho"] <= r["ci"][1]


def test_settings_in_order_of_training_compute_not_name(tmp_path):
    # the larger scale's name sorts first: only compute.train (as the trainer writes it) puts it second
    for seed in range(2):
        for m, v in SMALL.items():
            _write(tmp_path, "b_small", m, seed, v, _tasks(50.0, 25.0), 1_000)
            _write(tmp_path, "a_large", m, seed, v - 0.2, _tasks(50.0, 25.0), 4_000)
    a = transfer.analyse(collect([tmp_path]), metrics=("in_domain_bpb",))
    assert [s.split(" / ")[1] for s in a["settings"]] == ["b_small", "a_large"]


def test_delta_to_static_is_paired_and_ranks_count_it(tmp_path):
    plant(tmp_path, LARGE_SAME)
    a = transfer.analyse(collect([tmp_path]), metrics=("in_domain_bpb", "in_domain_avg"))
    small = {r["mixer"]: r for r in a["rows"]["in_domain_bpb"][a["settings"][0]]}
    assert small["dga"]["delta"]["mean"] == pytest.approx(1.55 - 1.52)
    # the seed offsets cancel: a zero-width interval
    assert small["dga"]["delta"]["hi"] - small["dga"]["delta"]["lo"] == pytest.approx(0.0, abs=1e-9)
    assert small["static best1:grid"]["delta"] is None and small["static best1:grid"]["rank"] == 1
    assert small["natural"]["rank"] == 5
    acc = {r["mixer"]: r for r in a["rows"]["in_domain_avg"][a["settings"][0]]}
    assert acc["static best1:grid"]["rank"] == 1 and acc["natural"]["rank"] == 5  # higher is better there


def test_learned_tasks_against_chance(tmp_path):
    plant(tmp_path, LARGE_SAME)
    a = transfer.analyse(collect([tmp_path]), metrics=("in_domain_bpb",))
    tasks = {t["task"]: t for t in a["tasks"]}
    small, large = a["settings"]
    assert tasks["agreement"]["chance"] == pytest.approx(50.0) and tasks["arith_mc"]["chance"] == pytest.approx(25.0)
    # agreement: 50% everywhere at demo; dga reaches 60% at demo4x (3 SE of a 3-seed mean at 500 examples: 3.9 pp)
    assert tasks["agreement"]["settings"][small]["learned"] is False
    assert tasks["agreement"]["settings"][large]["learned"] is True
    assert tasks["agreement"]["settings"][large]["best"] == "dga"
    # arith: 25-27% (best mixer's mean 26) and 26% at demo4x: within 3 SE (5.8 pp) of chance
    assert tasks["arith_mc"]["settings"][large]["learned"] is False


def test_report_files_and_one_setting_is_an_error(tmp_path, capsys):
    plant(tmp_path / "runs", LARGE_SAME)
    out = tmp_path / "out"
    assert transfer.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    md = (out / "transfer.md").read_text()
    assert "Spearman" in md and "| dga |" in md and (out / "transfer.png").exists()
    assert json.loads((out / "transfer.json").read_text())["rho"][0]["rho"] == pytest.approx(1.0)
    # the planted runs have two of the four default metrics: 2 metrics x 2 settings x 5 rows
    assert (out / "transfer.csv").read_text().count("\n") == 1 + 2 * 2 * 5
    assert transfer.main([str(tmp_path / "runs" / "demo"), "--out", str(tmp_path / "o2")]) == 2
    assert "two or more settings" in capsys.readouterr().err
