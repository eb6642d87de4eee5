"""Schedules as a static mixer (mixer=schedule), prefix sharing (trainer.stop_at_stage / trainer.init_from) and the
schedule oracle (eval/schedule_oracle.py): its selection on a planted problem, matched exposure, and a branched
schedule equal to the same schedule trained from scratch."""

from __future__ import annotations

import json

import pytest
import yaml

from eval import schedule_oracle as so
from tikmix.errors import ConfigError
from tikmix.mixer import MixerContext, build_mixer

DOMAINS = ["a", "b", "c"]
FG = "{facts: 0.5, grammar: 0.5}"
AC = "{arith: 0.5, copy: 0.5}"


def _ctx(stage_steps, stop=None):
    return MixerContext(
        domains=DOMAINS,
        train_tokens={d: 1000 for d in DOMAINS},
        total_steps=10,
        tokens_per_step=64,
        seq_len=8,
        seed=0,
        stage_steps=stage_steps,
        stop_at_stage=stop,
    )


def test_schedule_mixer_holds_each_stage_mixture_over_its_steps():
    stages = [{"a": 1.0}, {"b": 0.5, "c": 0.5}, {"c": 1.0}]
    m = build_mixer({"name": "schedule", "stages": stages}, DOMAINS, _ctx([3, 7]))
    got = [tuple(m.weights(s)) for s in range(10)]
    assert got[:3] == [(1.0, 0.0, 0.0)] * 3
    assert got[3:7] == [(0.0, 0.5, 0.5)] * 4
    assert got[7:] == [(0.0, 0.0, 1.0)] * 3
    assert m.info["stage_steps"] == [0, 3, 7]
    assert [h["step"] for h in m.history] == [0, 3, 7]


def test_schedule_mixer_refuses_a_wrong_number_of_stages_and_bad_weights(tmp_path):
    with pytest.raises(ConfigError, match=r"mixer.stages: 2 mixtures for a budget of 3 stages"):
        build_mixer({"name": "schedule", "stages": [{"a": 1.0}, {"b": 1.0}]}, DOMAINS, _ctx([3, 7]))
    # a prefix run (stop_at_stage=1) needs only its first mixture
    m = build_mixer({"name": "schedule", "stages": [{"a": 1.0}]}, DOMAINS, _ctx([3, 7], stop=1))
    assert m.weights(2).tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match=r"mixer.stages\[1\]: unknown domain"):
        build_mixer({"name": "schedule", "stages": [{"a": 1.0}, {"zz": 1.0}]}, DOMAINS, _ctx([3]))
    with pytest.raises(ConfigError, match=r"mixer.stages\[0\]: weights sum to 0.5"):
        build_mixer({"name": "schedule", "stages": [{"a": 0.5}, {"b": 1.0}]}, DOMAINS, _ctx([3]))
    with pytest.raises(ConfigError, match="mixer.stages: mixer=schedule needs"):
        build_mixer({"name": "schedule"}, DOMAINS, _ctx([3]))
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump([{"a": 1.0}, {"c": 1.0}]))
    m = build_mixer({"name": "schedule", "stages_file": str(f)}, DOMAINS, _ctx([3]))
    assert m.weights(9).tolist() == [0.0, 0.0, 1.0]


def test_matched_static_gives_every_domain_the_schedules_exposure():
    w = so.matched_static([{"a": 1.0}, {"b": 0.5, "c": 0.5}], [0.25, 0.75])
    assert w == pytest.approx({"a": 0.25, "b": 0.375, "c": 0.375})
    assert sum(w.values()) == pytest.approx(1.0)
    # the shares come from the run's own stage boundaries, not the nominal fractions
    res = {"steps": 300, "mixer_info": {"stage_steps": [0, 75, 150]}}
    assert so.stage_shares(res) == pytest.approx([0.25, 0.25, 0.5])
    with pytest.raises(ValueError):
        so.matched_static([{"a": 1.0}], [0.5])


# ------------------------------------------------------------------------------- real runs at smoke scale
@pytest.fixture(scope="module")
def branched(smoke_overrides, tmp_path_factory):
    """A two-stage schedule trained from scratch, the same schedule continued from its prefix's checkpoint, and
    the matched static mixture; all at smoke scale in this process."""
    from tests.conftest import compose
    from tikmix.run import run

    root = tmp_path_factory.mktemp("sched")
    base = smoke_overrides + ["mixer=schedule", "budget.stages=[0.5]", "trainer.save_final_model=false"]
    full = run(compose(base + [f"mixer.stages=[{FG}, {AC}]", f"run_dir={root / 'full'}"]), quiet=True)
    run(compose(base + [f"mixer.stages=[{FG}]", "trainer.stop_at_stage=1", f"run_dir={root / 'pre'}"]), quiet=True)
    br = run(
        compose(base + [f"mixer.stages=[{FG}, {AC}]", f"trainer.init_from={root / 'pre'}", f"run_dir={root / 'br'}"]),
        quiet=True,
    )
    w = so.matched_static([yaml.safe_load(FG), yaml.safe_load(AC)], so.stage_shares(full))
    static = run(
        compose(
            smoke_overrides
            + [
                "mixer=fixed",
                "mixer.weights={" + ", ".join(f"{d}: {v!r}" for d, v in w.items()) + "}",
                "mixer.renormalize=true",
                f"run_dir={root / 'st'}",
            ]
        ),
        quiet=True,
    )
    return {"root": root, "full": full, "br": br, "static": static, "base": base}


def test_a_branched_schedule_equals_the_schedule_trained_from_scratch(branched):
    full, br = branched["full"], branched["br"]
    for key in ("val_loss", "test_loss", "target_loss", "tokens_seen", "weights_history", "val_history", "compute"):
        assert br[key] == full[key], key
    pre = json.loads((branched["root"] / "pre" / "results.json").read_text())
    assert pre["steps"] == full["mixer_info"]["stage_steps"][1]  # stopped at the boundary
    assert pre["prefix"]["stop_at_stage"] == 1 and not pre["test_loss"]  # nothing computed after training
    assert not (branched["root"] / "pre" / "final_model").exists()


def test_the_matched_static_mixture_sees_each_domain_as_often_as_the_schedule(branched):
    a, b = branched["full"]["tokens_seen"], branched["static"]["tokens_seen"]
    batch = 16 * 64  # budget=smoke: one batch of tokens
    assert set(a) == set(b)
    for d in a:  # per-domain counts follow the mixture exactly up to the rounding of each step's batch
        assert abs(a[d] - b[d]) <= 2 * 64 * 8, (d, a[d], b[d])
    assert sum(a.values()) == sum(b.values()) and sum(a.values()) % batch == 0


def test_a_branch_of_another_config_or_another_prefix_is_refused(branched):
    from tests.conftest import compose
    from tikmix.run import run

    root, base = branched["root"], branched["base"]
    with pytest.raises(ConfigError, match=r"trainer.init_from: .* is a run of another config: trainer.lr"):
        run(
            compose(
                base
                + [
                    f"mixer.stages=[{FG}, {AC}]",
                    "trainer.lr=1e-3",
                    f"trainer.init_from={root / 'pre'}",
                    f"run_dir={root / 'x1'}",
                ]
            ),
            quiet=True,
        )
    with pytest.raises(ConfigError, match=r"trainer.init_from: .* did not train this run's first 1 stage"):
        run(
            compose(
                base + [f"mixer.stages=[{AC}, {FG}]", f"trainer.init_from={root / 'pre'}", f"run_dir={root / 'x2'}"]
            ),
            quiet=True,
        )
    with pytest.raises(ConfigError, match=r"trainer.init_from: .* is at step \d+, not at a stage boundary"):
        run(
            compose(
                base + [f"mixer.stages=[{FG}, {AC}]", f"trainer.init_from={root / 'full'}", f"run_dir={root / 'x3'}"]
            ),
            quiet=True,
        )
    with pytest.raises(ConfigError, match=r"trainer.stop_at_stage: 2 is past the last stage boundary"):
        run(
            compose(base + [f"mixer.stages=[{FG}, {AC}]", "trainer.stop_at_stage=2", f"run_dir={root / 'x4'}"]),
            quiet=True,
        )
    for d in ("x1", "x2", "x3", "x4"):
        assert not (root / d / "config.yaml").exists()  # refused before anything was written


# ------------------------------------------------------------------------------- the oracle on a planted problem
NAMES = ["early", "late", "both"]
# A planted two-stage problem: stage 1 wants "early", stage 2 wants "late"; a per-seed offset shared by every run
# of a seed (paired differences cancel it). The best schedule is early > late, the best constant one both > both.
FIRST = {0: 0.0, 1: 0.3, 2: 0.1}
SECOND = {0: 0.3, 1: 0.0, 2: 0.1}


def planted(pick, seed):
    return 1.0 + FIRST[pick[0]] + SECOND[pick[1]] + 0.05 * seed + 0.001 * ((7 * pick[0] + 3 * pick[1] + seed) % 5)


def _write(out, name, seed, score, final=True):
    d = out / "runs" / f"s{seed}" / name
    d.mkdir(parents=True, exist_ok=True)
    res = {
        "seed": seed,
        "steps": 10,
        "mixer_info": {"stage_steps": [0, 4]},
        "compute": {"total": 1e9},
        "total_time_s": 1.0,
        "eval": {"in_domain_bpb": score, "in_domain_avg": 50 - score},
    }
    if not final:
        res["prefix"] = {"stop_at_stage": 1, "init_from": None}
    (d / "results.json").write_text(json.dumps(res))


def test_the_oracle_finds_the_planted_best_schedule_and_pairs_it_with_its_matched_static(tmp_path, monkeypatch):
    cands = tmp_path / "c.yaml"
    cands.write_text(yaml.safe_dump([{"name": n, "weights": {n: 1.0, "x": 1.0}} for n in NAMES]))
    out = tmp_path / "oracle"
    calls = []

    def fake_run_one(plan, job):  # instead of training: the planted score of what the job would train
        calls.append(job)
        seed = int(job.run_dir.parent.name[1:])
        name = job.run_dir.name
        if name.startswith("static-"):
            pick = tuple(int(i) for i in name[len("static-") :].split("-"))
            _write(plan.out, name, seed, planted(pick, seed) + 0.05)  # the matched static: 0.05 worse
        else:
            pick = tuple(int(i) for i in name.split("-"))
            _write(plan.out, name, seed, planted(pick, seed) if len(pick) == 2 else 0.0, final=len(pick) == 2)
        return job, 0, 0.0

    monkeypatch.setattr(so, "_run_one", fake_run_one)
    assert so.main(["run", str(out), "--candidates", str(cands), "--stages", "0.4", "--jobs", "1"]) == 0
    # every prefix once: 3 first stages, then 9 schedules each continuing its prefix's run
    assert len(calls) == 3 + 9
    cont = [j for j in calls if j.after is not None]
    assert len(cont) == 9 and all(f"trainer.init_from={j.after}" in j.args for j in cont)
    assert all("trainer.stop_at_stage=1" in j.args for j in calls[:3])
    calls.clear()
    assert so.main(["confirm", str(out), "--top", "2", "--seeds", "0,1,2"]) == 0
    picks = json.loads((out / "confirm.json").read_text())["picks"]
    assert picks[0] == "0-1" and picks[-1] == "2-2"  # the best moving schedule first, the best constant last
    res = so.report(out, tmp_path / "dest", None)
    assert res["best"]["name"] == "early > late"
    assert res["best"]["seeds"] == [0, 1, 2]
    vm = res["best"]["vs_matched"]
    assert vm["mean"] == pytest.approx(-0.05) and vm["n"] == 3
    assert res["best"]["matched_static"]["weights"] == pytest.approx({"early": 0.2, "late": 0.3, "x": 0.5})
    assert res["search"][0]["name"] == "early > late" and len(res["search"]) == 9
    # without --static the reference is the best static mixture this oracle confirmed, named as such
    assert res["static_best"]["name"] == "matched static of early > late"
    assert res["vs_static_best"]["mean"] == pytest.approx(-0.05)
    assert (tmp_path / "dest" / "oracle_schedule.md").exists()


def test_the_oracle_refuses_a_folder_holding_another_plan(tmp_path):
    c1, c2 = tmp_path / "a.yaml", tmp_path / "b.yaml"
    c1.write_text(yaml.safe_dump([{"name": "x", "weights": {"a": 1}}]))
    c2.write_text(yaml.safe_dump([{"name": "y", "weights": {"b": 1}}]))
    so.Plan(tmp_path / "o", ["x"], [{"a": 1.0}], [0.5], []).save()
    with pytest.raises(SystemExit, match="holds another schedule oracle"):
        so.main(["run", str(tmp_path / "o"), "--candidates", str(c2)])
