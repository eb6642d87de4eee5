"""What reaches W&B: a run's identity (group, job type, tags, name), the mixer's history generically (scalars at
the trainer's step, tables, heatmaps), final per-domain values and FLOPs, the run's figures; throughput that
excludes the mixer's probe time. W&B is replaced by a fake module that records every call to its API."""

from __future__ import annotations

import json
import sys
import time
import types
from pathlib import Path

import pytest

from tikmix.mixer import register
from tikmix.run import run
from tikmix.static_mixers import Stratified


class FakeRun:
    def __init__(self, **kw):
        self.init = kw
        self.id = kw.get("id") or f"fake{abs(hash(kw.get('name'))) % 10**6:06d}"
        self.logs: list[tuple[int | None, dict]] = []
        self.summary: dict = {}
        self.finished = False

    def log(self, d: dict, step: int | None = None) -> None:
        self.logs.append((step, dict(d)))

    def finish(self) -> None:
        self.finished = True


class FakeTable:
    def __init__(self, columns, data):
        self.columns, self.data = list(columns), [list(r) for r in data]


class FakeImage:
    def __init__(self, path, caption=None):
        assert Path(path).is_file() and Path(path).stat().st_size > 1000, path  # W&B reads the file when logged
        self.path, self.caption = str(path), caption


@pytest.fixture
def fake_wandb(monkeypatch):
    runs: list[FakeRun] = []
    mod = types.ModuleType("wandb")

    def init(**kw):
        runs.append(FakeRun(**kw))
        return runs[-1]

    mod.init, mod.Table, mod.Image, mod.Settings = init, FakeTable, FakeImage, (lambda **k: k)
    monkeypatch.setitem(sys.modules, "wandb", mod)
    return runs


def logged(r: FakeRun, kind: type | None = None) -> dict[str, list]:
    """{key: [(step, value), ...]} over every log call (values of type ``kind`` only, when given)."""
    out: dict[str, list] = {}
    for step, d in r.logs:
        for k, v in d.items():
            if kind is None or isinstance(v, kind) or (isinstance(v, list) and v and isinstance(v[0], kind)):
                out.setdefault(k, []).append((step, v))
    return out


def assert_steps_monotonic(r: FakeRun) -> None:
    """W&B drops what is logged at a step below its current one. A log with a step moves the current step there;
    a log without one goes into the current step and then advances it by one (so a stepless table logged at the
    end of training, followed by the final scalars at the last step, loses the scalars: W&B's "Tried to log to
    step 300 that is less than the current step 301")."""
    current, dropped = 0, []
    for step, d in r.logs:
        if step is None:
            current += 1
        elif step < current:
            dropped.append((step, current, sorted(d)[:3]))
        else:
            current = step
    assert not dropped, dropped


# ------------------------------------------------------------------------------------------ a generic mixer


@register("test_recorder")
class Recorder(Stratified):
    """A mixer that records made-up things: a record per probe (numbers, a string, a matrix over domains), and
    one before training with no step. None of it is known to the logging code."""

    def prepare(self) -> None:
        self.history.append({"kind": "proxy", "proxy": 0, "target_loss": 3.25})  # before training, no step

    def probe_steps(self) -> list[int]:
        return [2, 5]

    def on_probe(self, probe) -> None:
        k = len(self.history)
        self.history.append(
            {
                "step": int(probe.step),
                "status": f"probe {k} ok",
                "fit": {"r2": 0.5 + k / 10},
                "scores": {
                    "t1": {d: float(i + 10 * k) for i, d in enumerate(self.domains)},
                    "t2": {d: -float(i) for i, d in enumerate(self.domains)},
                },
                "flag": True,
                "vector": [1, 2, 3],
            }
        )
        self.info["probes"] = k


def test_any_mixers_history_reaches_wandb_at_the_right_steps(make_cfg, tmp_path, fake_wandb):
    rd = tmp_path / "rec"
    cfg = make_cfg("logger=wandb", "trainer.save_final_model=false", "trainer.log_every=1", run_dir=rd)
    cfg.mixer.name = "test_recorder"
    res = run(cfg, quiet=True)
    (r,) = fake_wandb
    doms = res["domains"]
    assert_steps_monotonic(r)
    sc = logged(r)
    # live: every number of a record with a step, at that step; strings and lists are not scalars
    assert sc["mixer/fit/r2"] == [(2, pytest.approx(0.6)), (5, pytest.approx(0.7))]
    assert sc[f"mixer/scores/t1/{doms[1]}"] == [(2, 11.0), (5, 21.0)] and sc["mixer/flag"] == [(2, 1), (5, 1)]
    assert "mixer/status" not in sc and "mixer/vector" not in sc and "mixer/target_loss" not in sc
    # end of run: the history as a table (every leaf, the record as JSON), the matrix as a table and heatmaps
    tabs = logged(r, FakeTable)
    hist = tabs["mixer/history"][-1][1]
    assert hist.columns[:2] == ["index", "step"] and hist.columns[-1] == "record"
    rows = [dict(zip(hist.columns, row)) for row in hist.data]
    assert [x["step"] for x in rows] == [None, 2, 5] and rows[0]["target_loss"] == 3.25
    assert rows[2]["status"] == "probe 2 ok" and json.loads(rows[2]["record"])["vector"] == [1, 2, 3]
    mat = tabs["mixer/scores"][-1][1]
    assert mat.columns == ["step", "row", *doms] and [(x[0], x[1]) for x in mat.data] == [
        (2, "t1"),
        (2, "t2"),
        (5, "t1"),
        (5, "t2"),
    ]
    heat = logged(r, FakeImage)["mixer/scores_heatmap"][-1][1]
    assert [im.caption for im in heat] == ["step 2", "step 5"]
    assert "figures/mixture" in logged(r, FakeImage)
    assert r.summary["mixer_info/probes"] == 2
    # the mixture per stage, as a table beside the per-interval weights/<domain> scalars
    wh = tabs["mixer/weights_history"][-1][1]
    assert wh.columns == ["step", *doms] and wh.data[0][0] == 0


def test_final_values_flops_and_identity(make_cfg, tmp_path, fake_wandb):
    rd = tmp_path / "tik"
    res = run(
        make_cfg("logger=wandb", "mixer=tikmix_d", "trainer.save_final_model=false", "logger.tags=[mine]", run_dir=rd),
        quiet=True,
    )
    (r,) = fake_wandb
    doms = res["domains"]
    init = r.init
    assert init["job_type"] == "tikmix_d" and init["group"] is None  # a single run: no sweep to group by
    assert set(init["tags"]) >= {"mixer:tikmix_d", "model:tiny", "budget:smoke", "data:synthetic", "eval:none", "mine"}
    assert init["name"].startswith("tikmix_d_s0-") and init["name"] == res["wandb"]["name"]
    assert res["wandb"]["id"] == r.id and r.finished
    assert_steps_monotonic(r)
    # per-domain test perplexity and target losses as scalars (summary), FLOPs by category
    for d in doms:
        assert r.summary[f"test_ppl/{d}"] == pytest.approx(res["test_ppl"][d])
    for t, v in res["target_loss"].items():
        assert r.summary[f"target_loss/{t}"] == pytest.approx(v)
    c = res["compute"]
    assert (
        r.summary["compute/train_flops"] == c["train"]
        and r.summary["compute/mixer_total_flops"] == c["mixer_total"] > 0
    )
    assert r.summary["compute/mixer/influence_flops"] == c["mixer/influence"]
    # TiKMiX's influence matrix at its boundary (step 4), live and as a table + heatmap; solver status in the table
    sc = logged(r)
    target = next(iter(res["mixer_history"][0]["influence"]))
    assert sc[f"mixer/influence/{target}/{doms[0]}"][0][0] == 4
    assert "mixer/solver/pareto_room" in sc or "mixer/solver/objective" in sc
    tabs = logged(r, FakeTable)
    assert "mixer/influence" in tabs and "solver/status" in tabs["mixer/history"][-1][1].columns
    assert "mixer/influence_heatmap" in logged(r, FakeImage) and "figures/influence" in logged(r, FakeImage)
    # a second run dir gets another name
    run(make_cfg("logger=wandb", "trainer.save_final_model=false", run_dir=tmp_path / "other"), quiet=True)
    assert fake_wandb[1].init["name"] != init["name"] and fake_wandb[1].init["job_type"] == "stratified"


def test_identity_from_a_hydra_sweep(tmp_path):
    from tikmix.report import wandb_identity

    cfg = {
        "mixer": {"name": "odm"},
        "seed": 2,
        "model": {"name": "20m"},
        "budget": {"name": "demo"},
        "data": {"name": "jsonl", "source": "jsonl"},
        "eval": {"name": "none"},
    }
    a = wandb_identity(cfg, tmp_path / "0_odm_s2", sweep="multirun/2026-01-01/12-00-00")
    b = wandb_identity(cfg, tmp_path / "1_odm_s2", sweep="multirun/2026-01-01/12-00-00")
    assert a["group"] == b["group"] == "multirun/2026-01-01/12-00-00" and a["job_type"] == "odm"
    assert a["name"] != b["name"] and a["name"].startswith("odm_s2-")
    assert {"model:20m", "budget:demo", "data:jsonl", "eval:none", "sweep"} <= set(a["tags"])
    assert wandb_identity(cfg, tmp_path / "x", sweep=None)["group"] is None


# ------------------------------------------------------------------------------------ throughput vs probes

SLEEP = 1.5


@register("test_slow_probe")
class SlowProbe(Stratified):
    """Stratified mixing with a probe that only sleeps: any change in training throughput is a measuring error."""

    def probe_steps(self) -> list[int]:
        return [4]

    def on_probe(self, probe) -> None:
        time.sleep(SLEEP)


def test_throughput_excludes_probe_time_and_reports_the_overhead(make_cfg, tmp_path, capsys):
    cfg = make_cfg(
        "trainer.log_every=8",
        "trainer.save_final_model=false",
        "trainer.progress=true",
        "trainer.eval_every=0",
        run_dir=tmp_path / "slow",
    )
    cfg.mixer.name = "test_slow_probe"
    res = run(cfg)
    err = capsys.readouterr()
    tp = res["throughput"]
    tokens = 8192  # the smoke budget
    # the probe's sleep is the mixer's overhead, not training time
    assert tp["probe_time_s"] >= SLEEP and tp["mixer_time_s"] >= SLEEP
    assert tp["train_time_s"] < tp["loop_time_s"] - SLEEP + 1e-6
    assert tp["mixer_share"] == pytest.approx(tp["mixer_time_s"] / (tp["loop_time_s"] + tp["prepare_time_s"]))
    # one log interval spans the probe: had the sleep counted, tokens/s would be below tokens / (loop time - sleep)
    rec = [json.loads(x) for x in (tmp_path / "slow" / "metrics.jsonl").read_text().splitlines()]
    (iv,) = [x for x in rec if "train/tokens_per_s" in x]
    assert iv["train/tokens_per_s"] == pytest.approx(tokens / tp["train_time_s"], rel=1e-6)
    assert iv["train/tokens_per_s"] > tokens / (tp["loop_time_s"] - SLEEP)
    assert iv["perf/wall_tokens_per_s"] < tokens / SLEEP and iv["perf/mixer_s"] >= SLEEP
    assert tp["train_tokens_per_s"] == pytest.approx(iv["train/tokens_per_s"], rel=1e-6)
    # the bar shows training tokens/s and the mixer's share apart; the console summary says both
    assert f"tok_s={iv['train/tokens_per_s']:,.0f}" in err.err and "mixer=" in err.err
    assert "(mixer probe)" in err.err
    assert "mixer overhead" in err.out and f"{tp['train_tokens_per_s']:,.0f} tokens/s" in err.out


FAKE_WANDB = """
import json, os
class _Run:
    def __init__(self, kw):
        self.id = "id-" + kw["name"]; self.summary = {}
        with open(os.environ["FAKE_WANDB_LOG"], "a") as f:
            f.write(json.dumps({k: kw.get(k) for k in ("name", "group", "job_type", "tags", "project")}) + "\\n")
    def log(self, *a, **k): pass
    def finish(self): pass
def init(**kw): return _Run(kw)
def Settings(**kw): return kw
class Table:
    def __init__(self, *a, **k): pass
class Image:
    def __init__(self, *a, **k): pass
"""


def test_a_hydra_sweep_is_one_wandb_group(smoke_overrides, tmp_path):
    """python train.py -m: every job of the sweep in the group named after hydra.sweep.dir, job type = mixer, names
    unique; the identity recorded in each results.json (what python -m eval and eval.tables attach to)."""
    import os
    import subprocess

    from tests.conftest import REPO

    (tmp_path / "fake" / "wandb").mkdir(parents=True)
    (tmp_path / "fake" / "wandb" / "__init__.py").write_text(FAKE_WANDB)
    log = tmp_path / "inits.jsonl"
    env = dict(
        os.environ, PYTHONPATH=f"{tmp_path / 'fake'}{os.pathsep}{REPO}", FAKE_WANDB_LOG=str(log), OMP_NUM_THREADS="1"
    )
    env.pop("WANDB_MODE", None)
    ov = [o for o in smoke_overrides if not o.startswith("logger=")]
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "-m",
        *ov,
        "logger=wandb",
        "trainer.save_final_model=false",
        "mixer=stratified,natural",
        "seed=0",
        "hydra.sweep.dir=multirun/wbgroup",
    ]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    inits = [json.loads(x) for x in log.read_text().splitlines()]
    assert [i["job_type"] for i in inits] == ["stratified", "natural"]
    assert {i["group"] for i in inits} == {"multirun/wbgroup"} and len({i["name"] for i in inits}) == 2
    assert all("sweep" in i["tags"] and "budget:smoke" in i["tags"] for i in inits)
    res = [json.loads(p.read_text()) for p in sorted((tmp_path / "multirun" / "wbgroup").glob("*/results.json"))]
    assert [x["wandb"]["group"] for x in res] == ["multirun/wbgroup"] * 2
    assert {x["wandb"]["name"] for x in res} == {i["name"] for i in inits}
