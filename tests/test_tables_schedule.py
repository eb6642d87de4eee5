"""python -m eval.tables --schedule-oracle: regret against the best schedule, per-stage L1 and gain captured, on
planted results.json files and a planted oracle_schedule.json (numbers worked out by hand in the comments)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from eval import tables
from tests.test_eval_tables import _results, _row

T2 = 4.302653  # Student t, 0.975 quantile, df = 2 (3 paired seeds), from a printed table
# the best schedule: 8 steps, stage 2 from step 4; stage 1 does not name arith (mixer=schedule trains it at 0)
STAGE1 = {"copy": 0.5, "grammar": 0.5}
STAGE2 = {"arith": 0.6, "copy": 0.2, "grammar": 0.2}
SCHED_BPB = {0: 1.30, 1: 1.28, 2: 1.32}  # mean B = 1.30
SCHED_ACC = {0: 45.0, 1: 46.0, 2: 44.0}
STATIC_BPB = {0: 1.50, 1: 1.52, 2: 1.48}  # mean S = 1.50
A = {"arith": 0.2, "copy": 0.4, "grammar": 0.4}
B = {"arith": 0.5, "copy": 0.3, "grammar": 0.2}
C = {"arith": 0.0, "copy": 0.6, "grammar": 0.4}
D = {"arith": 0.8, "copy": 0.2, "grammar": 0.0}
# tikmix_d changes its mixture exactly at the boundary: A on stage 1, B on stage 2
#   L1(A, stage 1) = |0.2 - 0| + |0.4 - 0.5| + |0.4 - 0.5| = 0.4;  L1(B, stage 2) = 0.1 + 0.1 + 0 = 0.2
AT_BOUNDARY = [{"step": 0, "weights": A}, {"step": 4, "weights": B}]
# dga changes mid-stage: stage 1 = (3 A + 1 C) / 4 = (0.15, 0.45, 0.40) -> L1 0.15 + 0.05 + 0.10 = 0.3;
#   stage 2 = (3 C + 1 D) / 4 = (0.20, 0.50, 0.30) -> L1 0.4 + 0.3 + 0.1 = 0.8
#   (an unweighted mean of the entries would give 0.2 / 0.4; the entry at the stage's start 0.4 / 1.2)
MID_STAGE = [{"step": 0, "weights": A}, {"step": 3, "weights": C}, {"step": 7, "weights": D}]
# per mixer: seed -> (in-domain BPB, in-domain accuracy)
PLANTED = {
    "tikmix_d": {0: (1.42, 44.0), 1: (1.38, 47.0), 2: (1.40, 44.0), 3: (0.0, 99.0)},  # seed 3: unpaired outlier
    "dga": {0: (1.25, 45.0), 1: (1.20, 46.0), 2: (1.30, 44.0)},
}


def _per_seed(bpb: dict, acc: dict) -> dict:
    return {
        str(s): {"in_domain_bpb": bpb[s], "average_bpb": bpb[s] + 0.5, "in_domain_avg": acc[s], "average": acc[s] - 5}
        for s in bpb
    }


def schedule_json(bpb: dict = SCHED_BPB) -> dict:
    """The shape python -m eval.schedule_oracle report writes (the fields eval.tables reads, and some it does not)."""
    per_seed = _per_seed(bpb, SCHED_ACC)
    best = {
        "name": "copy-heavy > arith-heavy",
        "id": "0-1",
        "weights": [STAGE1, STAGE2],
        "gammas": [0.5, 0.5],
        "stage_steps": [0, 4],
        "seeds": [0, 1, 2],
        "mean": sum(bpb.values()) / 3,
        "std": 0.02,
        "scores": {s: v["in_domain_bpb"] for s, v in per_seed.items()},
        "per_seed": per_seed,
        "extra": {},
        "constant": False,
        "matched_static": None,
        "vs_matched": None,
    }
    return {"metric": "in_domain_bpb", "lower_is_better": True, "stages": [0.5], "best": best, "static_best": None}


def static_json() -> dict:
    per_seed = _per_seed(STATIC_BPB, {0: 40.0, 1: 41.0, 2: 42.0})
    best = {
        "name": "best1:d0007",
        "mean": 1.5,
        "std": 0.02,
        "seeds": [0, 1, 2],
        "weights": {"arith": 0.3, "copy": 0.4, "grammar": 0.3},
        "scores": {s: v["in_domain_bpb"] for s, v in per_seed.items()},
        "per_seed": per_seed,
    }
    return {"metric": "in_domain_bpb", "lower_is_better": True, "best": best}


def _write_runs(root: Path) -> Path:
    for m, per in PLANTED.items():
        for s, (bpb, acc) in per.items():
            hist = AT_BOUNDARY if m == "tikmix_d" else MID_STAGE
            res = _results(
                m, s, {"arith_mc": 40.0, "copy_complete": 30.0, "sorting": 20.0}, {"arith": 10.0}, 0.0, None, hist
            )
            res["final_weights"] = hist[-1]["weights"]
            res["eval"].update(in_domain_bpb=bpb, average_bpb=bpb + 0.5, in_domain_avg=acc, average=acc - 5)
            (root / "runs" / f"{m}_s{s}").mkdir(parents=True)
            (root / "runs" / f"{m}_s{s}" / "results.json").write_text(json.dumps(res))
    return root / "runs"


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sched")
    runs = _write_runs(root)
    (root / "oracle_schedule").mkdir()
    (root / "oracle_schedule" / "oracle_schedule.json").write_text(json.dumps(schedule_json()))
    (root / "static.json").write_text(json.dumps(static_json()))
    args = [str(runs), "--out", str(root / "report"), "--schedule-oracle", str(root / "oracle_schedule")]
    assert tables.main(args + ["--oracle", str(root / "static.json")]) == 0
    return root


def _csv(path: Path) -> dict[str, dict]:
    return {r["mixer"]: r for r in csv.DictReader(open(path))}


def test_regret_against_the_best_schedule_by_hand(planted):
    rows = _csv(planted / "report" / "regret_schedule.csv")
    tik, dga = rows["tikmix_d"], rows["dga"]
    # tikmix_d - schedule over seeds 0-2 (seed 3 has no schedule run): +0.12, +0.10, +0.08 -> mean 0.10, sd 0.02
    half = T2 * 0.02 / math.sqrt(3)
    assert tik["n"] == "3"
    assert float(tik["in_domain_bpb_regret"]) == pytest.approx(0.10)
    assert float(tik["in_domain_bpb_regret_lo95"]) == pytest.approx(0.10 - half, abs=1e-6)
    assert float(tik["in_domain_bpb_regret_hi95"]) == pytest.approx(0.10 + half, abs=1e-6)
    assert float(tik["average_bpb_regret"]) == pytest.approx(0.10)
    # accuracy, mixer - schedule: -1, +1, 0 -> mean 0, sd 1
    assert float(tik["in_domain_avg_regret"]) == pytest.approx(0.0, abs=1e-12)
    assert float(tik["average_regret_hi95"]) == pytest.approx(T2 / math.sqrt(3), abs=1e-6)
    assert tik["beats_best_schedule"] == "no"  # [+0.050, +0.150]: entirely worse
    # dga: -0.05, -0.08, -0.02 -> mean -0.05, sd 0.03, half 0.0745: the interval spans 0
    assert float(dga["in_domain_bpb_regret"]) == pytest.approx(-0.05)
    assert float(dga["in_domain_bpb_regret_lo95"]) == pytest.approx(-0.05 - T2 * 0.03 / math.sqrt(3), abs=1e-6)
    assert dga["beats_best_schedule"] == "within noise"
    assert {r["decided_by"] for r in rows.values()} == {"in_domain_bpb"}
    assert {r["schedule"] for r in rows.values()} == {"copy-heavy > arith-heavy"}


def test_stage_l1_at_the_boundary_and_mid_stage(planted):
    best = schedule_json()["best"]
    assert tables.stage_l1s({"steps": 8, "weights_history": AT_BOUNDARY}, best) == pytest.approx([0.4, 0.2])
    assert tables.stage_l1s({"steps": 8, "weights_history": MID_STAGE}, best) == pytest.approx([0.3, 0.8])
    win = tables.window_averaged_weights({"steps": 8, "weights_history": MID_STAGE}, 4, 8)
    assert win == pytest.approx({"arith": 0.2, "copy": 0.5, "grammar": 0.3})
    whole = {"steps": 8, "weights_history": MID_STAGE}
    assert tables.window_averaged_weights(whole, 0, math.inf) == pytest.approx(tables.time_averaged_weights(whole))
    assert tables.window_averaged_weights(whole, 8, 12) is None  # past the run's end: nothing held there
    rows = _csv(planted / "report" / "regret_schedule.csv")
    assert float(rows["tikmix_d"]["l1_stage1"]) == pytest.approx(0.4)
    assert float(rows["tikmix_d"]["l1_stage2"]) == pytest.approx(0.2)
    assert float(rows["dga"]["l1_stage1"]) == pytest.approx(0.3)
    assert float(rows["dga"]["l1_stage2"]) == pytest.approx(0.8)
    md = (planted / "report" / "regret_schedule.md").read_text()
    assert _row(md, "tikmix_d")[6] == "0.400 / 0.200" and _row(md, "dga")[6] == "0.300 / 0.800"
    # a stage naming a domain the run does not have: another corpus, no distance
    assert tables.stage_l1({"arith": 1.0}, STAGE1) is None


def test_gain_captured_planted(planted):
    # S = 1.50, B = 1.30, tikmix_d M = 1.40 -> (1.5 - 1.4) / (1.5 - 1.3) = 0.5; dga M = 1.25 -> 1.25
    rows = _csv(planted / "report" / "regret_schedule.csv")
    assert float(rows["tikmix_d"]["gain_captured"]) == pytest.approx(0.5)
    assert rows["tikmix_d"]["gain_n"] == "3"  # seed 3 has neither reference
    assert float(rows["tikmix_d"]["gain_static_mean"]) == pytest.approx(1.5)
    assert float(rows["tikmix_d"]["gain_mixer_mean"]) == pytest.approx(1.4)
    assert float(rows["tikmix_d"]["gain_schedule_mean"]) == pytest.approx(1.3)
    assert float(rows["dga"]["gain_captured"]) == pytest.approx(1.25)
    md = (planted / "report" / "regret_schedule.md").read_text()
    assert _row(md, "tikmix_d")[-1] == "0.50" and _row(md, "dga")[-1] == "1.25"
    # higher is better (accuracy): S = 40, B = 45, M = 42.5 -> 0.5 again; a schedule below S has no gain
    g = tables.gain_captured({"0": 42.5}, {"0": 40.0}, {"0": 45.0}, lower=False)
    assert g["gain"] == pytest.approx(0.5) and g["n"] == 1
    assert tables.gain_captured({"0": 42.5}, {"0": 40.0}, {"0": 38.0}, lower=False)["gain"] is None
    assert tables.gain_captured({"0": 1.0}, {"1": 1.5}, {"1": 1.3}, lower=True)["n"] == 0


def test_gain_is_na_when_the_schedule_does_not_beat_the_static_mixture(planted, tmp_path):
    (tmp_path / "worse.json").write_text(json.dumps(schedule_json({0: 1.55, 1: 1.50, 2: 1.52})))  # B 1.523 > S 1.5
    args = [str(planted / "runs"), "--out", str(tmp_path / "r"), "--schedule-oracle", str(tmp_path / "worse.json")]
    assert tables.main(args + ["--oracle", str(planted / "static.json")]) == 0
    rows = _csv(tmp_path / "r" / "regret_schedule.csv")
    assert rows["tikmix_d"]["gain_captured"] == "n/a" and rows["dga"]["gain_captured"] == "n/a"
    md = (tmp_path / "r" / "regret_schedule.md").read_text()
    assert _row(md, "tikmix_d")[-1] == "n/a"
    assert "gain captured is n/a: over seeds ['0', '1', '2'] the best schedule (in_domain_bpb 1.5233)" in md
    assert "n/a when the best schedule does not beat the best static mixture" in md  # the footnote
    # S = B exactly: no gain either
    assert tables.gain_captured({"0": 1.4}, {"0": 1.5}, {"0": 1.5}, lower=True)["gain"] is None


def test_without_oracle_no_gain_column(planted, tmp_path):
    args = [str(planted / "runs"), "--out", str(tmp_path), "--schedule-oracle", str(planted / "oracle_schedule")]
    assert tables.main(args) == 0
    rows = _csv(tmp_path / "regret_schedule.csv")
    assert "gain_captured" not in rows["tikmix_d"] and float(rows["tikmix_d"]["in_domain_bpb_regret"]) == pytest.approx(
        0.1
    )
    assert "Gain captured" not in (tmp_path / "regret_schedule.md").read_text()
    assert not (tmp_path / "regret.md").exists()


def test_table1_block_and_footnote(planted):
    t1 = (planted / "report" / "table1.md").read_text()
    assert "Best schedule: **copy-heavy > arith-heavy**" in t1 and "stage 2 from step 4: arith 0.600" in t1
    static_at, sched_at = (
        t1.index("**Regret against the best static mixture**"),
        t1.index("**Regret against the best schedule**"),
    )
    assert static_at < sched_at  # the static block untouched, the schedule block after it
    block = t1[sched_at : t1.index("\n\n", t1.index("| tikmix_d", sched_at))]
    assert _row(block, "tikmix_d")[6:] == ["0.400 / 0.200", "no", "0.50"]
    assert "not paired (the best schedule has no such seed): tikmix_d seed 3" in t1
    assert "Gain captured = (S − M) / (S − B)" in t1 and "L1 per stage" in t1
    md = (planted / "report" / "regret_schedule.md").read_text()
    assert (
        str(planted / "oracle_schedule" / "oracle_schedule.json") in md and "Best static mixture: **best1:d0007**" in md
    )


def test_malformed_schedule_oracle_is_a_clear_error(planted, tmp_path, capsys):
    runs, out = str(planted / "runs"), str(tmp_path / "o")
    assert tables.main([runs, "--out", out, "--schedule-oracle", str(tmp_path / "nope")]) == 2
    assert "no schedule oracle file at" in capsys.readouterr().err
    (tmp_path / "static.json").write_text(json.dumps(static_json()))  # the static oracle given to the wrong flag
    assert tables.main([runs, "--out", out, "--schedule-oracle", str(tmp_path / "static.json")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "static.json") in err and "best.weights is not a list" in err and "--oracle" in err
    bad = schedule_json()
    bad["best"]["stage_steps"] = [0]  # one start for two stages
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert tables.main([runs, "--out", out, "--schedule-oracle", str(tmp_path / "bad.json")]) == 2
    assert "best.stage_steps is not the 2 stages' first steps" in capsys.readouterr().err
    (tmp_path / "junk.json").write_text("{not json")
    assert tables.main([runs, "--out", out, "--schedule-oracle", str(tmp_path / "junk.json")]) == 2
    assert "not readable JSON" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was written
    with pytest.raises(tables.OracleError, match="best has neither per_seed nor scores"):
        bad = schedule_json()
        del bad["best"]["per_seed"], bad["best"]["scores"]
        (tmp_path / "bad2.json").write_text(json.dumps(bad))
        tables.load_schedule_oracle(tmp_path / "bad2.json")


def test_reads_what_schedule_oracle_report_writes(tmp_path):
    """The real writer's file: python -m eval.schedule_oracle report on two planted confirmation runs."""
    from eval import schedule_oracle as so

    out = tmp_path / "sched"
    so.Plan(out, ["c", "a"], [STAGE1, STAGE2], [0.5], []).save()
    (out / "confirm.json").write_text(json.dumps({"picks": ["0-1"], "seeds": [0, 1]}))
    for s in (0, 1):
        d = out / "runs" / f"s{s}" / "0-1"
        d.mkdir(parents=True)
        ev = {"in_domain_bpb": SCHED_BPB[s], "average_bpb": SCHED_BPB[s] + 0.5, "in_domain_avg": 45.0, "average": 40.0}
        res = {"seed": s, "steps": 8, "mixer_info": {"stage_steps": [0, 4]}, "compute": {"total": 1e9}, "eval": ev}
        (d / "results.json").write_text(json.dumps(res))
    so.report(out, tmp_path / "dest", None)
    loaded = tables.load_schedule_oracle(tmp_path / "dest")
    assert loaded["best"]["stage_steps"] == [0, 4] and loaded["path"].endswith("oracle_schedule.json")
    root = tmp_path / "x"
    runs = _write_runs(root)
    files = tables.build([runs], root / "rep", quiet=True, schedule_oracle=tmp_path / "dest")
    rows = _csv(files["regret_schedule_csv"])
    # paired over seeds 0, 1 only: +0.12, +0.10
    assert rows["tikmix_d"]["n"] == "2" and float(rows["tikmix_d"]["in_domain_bpb_regret"]) == pytest.approx(0.11)
    assert float(rows["dga"]["l1_stage2"]) == pytest.approx(0.8)


def test_notes_for_another_budget_and_another_static_oracle(tmp_path):
    runs = tables.collect([_write_runs(tmp_path)])
    for r in runs:
        if r.mixer == "dga":
            r.res["steps"] = 16  # another budget: the schedule's stage windows (8 steps) no longer line up
    so = {**schedule_json(), "path": "s.json", "static_best": {"name": "other:d0001"}}
    o = {**static_json(), "path": "o.json"}
    notes = tables.schedule_regret(runs, so, o)[0]["notes"]
    assert any("some runs train 16 steps, the best schedule 8" in n for n in notes)
    assert any("reported against the static mixture other:d0001, --oracle names best1:d0007" in n for n in notes)


def test_schedule_table_logged_to_wandb(planted, tmp_path, monkeypatch):
    from tikmix import runlog

    logged = []
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(
        runlog.RunLogger, "table", lambda self, key, cols, rows, step=None: logged.append((key, cols, rows))
    )
    args = [str(planted / "runs"), "--out", str(tmp_path), "--wandb"]
    assert tables.main(args + ["--schedule-oracle", str(planted / "oracle_schedule")]) == 0
    cols, rows = next((c, r) for k, c, r in logged if k == "tables/regret_schedule")
    assert "l1_stage2" in cols and {row[1] for row in rows} == {"tikmix_d", "dga"}
    assert not any(k == "tables/regret" for k, _, _ in logged)  # no --oracle: no static table


def test_published_tables_name_the_oracles_relative_to_the_working_directory(tmp_path, monkeypatch):
    """A results file never names the machine that made it: the oracle's path is shown relative to the working
    directory (the repository, where README's commands run) when it lies under it."""
    from eval.tables import shown_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "results" / "oracle").mkdir(parents=True)
    f = tmp_path / "results" / "oracle" / "oracle.json"
    f.write_text("{}")
    assert shown_path(f) == "results/oracle/oracle.json"
    assert shown_path("results/oracle/oracle.json") == "results/oracle/oracle.json"
    assert shown_path("/elsewhere/oracle.json") == "/elsewhere/oracle.json"
