"""python -m eval.tables on fake results.json files: 2 mixers x 2 seeds, one crashed run, one without eval."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from eval import figures, tables

DOMAINS = ["arith", "copy", "grammar"]
IN = ["arith_mc", "copy_complete"]
OUT = ["sorting"]


def _bpb(v: float) -> float:  # a made-up gold-answer BPB per score (logprob = -10 * bpb)
    return 3.0 - v / 50


def _eval(scores: dict[str, float]) -> dict:
    tasks = {
        t: {
            "metric": "acc_norm",
            "value": v,
            "stderr": 1.0,
            "group": "in_domain" if t in IN else "out_of_domain",
            "percent": True,
            "n_shot": 0,
            "n_samples": 100,
            "metrics": {"acc_norm": {"value": v, "stderr": 1.0}},
            "bpb": _bpb(v),
            "logprob": -10 * _bpb(v),
        }
        for t, v in scores.items()
    }
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    ind = [v for t, v in scores.items() if t in IN]
    ood = [v for t, v in scores.items() if t in OUT]
    out = {
        "preset": "synthetic9",
        "tasks": tasks,
        "in_domain_avg": mean(ind),
        "out_of_domain_avg": mean(ood),
        "average": mean(list(scores.values())),
    }
    for prefix, vs in (("in_domain", ind), ("out_of_domain", ood), ("average", list(scores.values()))):
        out[f"{prefix}_bpb"] = mean([_bpb(v) for v in vs])
        out[f"{prefix}_logprob"] = mean([-10 * _bpb(v) for v in vs])
    return out


def _results(
    mixer: str,
    seed: int,
    scores: dict | None,
    ppl: dict,
    mixer_total: float,
    history: list | None = None,
    weights: list | None = None,
) -> dict:
    w0 = {d: 1 / 3 for d in DOMAINS}
    res = {
        "mixer": mixer,
        "seed": seed,
        "model": "tiny",
        "budget": "smoke",
        "data": "synthetic",
        "domains": DOMAINS,
        "steps": 8,
        "final_weights": w0,
        "weights_history": weights or [{"step": 0, "weights": w0}],
        "test_ppl": ppl,
        "compute": {"train": 1e12, "eval": 1e10, "mixer_total": mixer_total, "total": 1e12 + mixer_total},
        "mixer_history": history or [],
    }
    if scores is not None:
        res["eval"] = _eval(scores)
    return res


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")

    def infl(step, a):
        return {
            "step": step,
            "influence": {"val/arith": {"arith": a, "copy": -a / 2, "grammar": 0.1}},  # noqa: E731
            "weights": {"arith": 0.5, "copy": 0.25, "grammar": 0.25},
        }

    def tik_w():
        return [
            {"step": 0, "weights": {d: 1 / 3 for d in DOMAINS}},  # noqa: E731
            {"step": 4, "weights": {"arith": 0.6, "copy": 0.3, "grammar": 0.1}},
        ]

    runs = {
        "0_stratified_s0": _results(
            "stratified",
            0,
            {"arith_mc": 40.0, "copy_complete": 30.0, "sorting": 20.0},
            {"arith": 10.0, "copy": 20.0, "grammar": 30.0},
            0.0,
        ),
        "1_stratified_s1": _results(
            "stratified",
            1,
            {"arith_mc": 42.0, "copy_complete": 32.0, "sorting": 22.0},
            {"arith": 12.0, "copy": 22.0, "grammar": 32.0},
            0.0,
        ),
        "2_tikmix_d_s0": _results(
            "tikmix_d",
            0,
            {"arith_mc": 50.0, "copy_complete": 30.0, "sorting": 25.0},
            {"arith": 9.0, "copy": 19.0, "grammar": 31.0},
            7.0e17,
            [infl(0, 1.0), infl(4, 0.5)],
            tik_w(),
        ),
        "3_tikmix_d_s1": _results(
            "tikmix_d",
            1,
            {"arith_mc": 54.0, "copy_complete": 34.0, "sorting": 27.0},
            {"arith": 11.0, "copy": 21.0, "grammar": 33.0},
            7.4e17,
            [infl(0, 2.0), infl(4, 1.0)],
            tik_w(),
        ),
        "5_regmix_s0": _results("regmix", 0, None, {"arith": 11.0, "copy": 21.0, "grammar": 31.0}, 3.7e18),  # no eval
    }
    for name, res in runs.items():
        d = root / name
        d.mkdir()
        (d / "results.json").write_text(json.dumps(res))
        (d / "config.yaml").write_text(f"mixer:\n  name: {res['mixer']}\nseed: {res['seed']}\n")
    crashed = root / "4_aioli_s0"  # crashed: a config and a checkpoint folder, no results.json
    (crashed / "checkpoints").mkdir(parents=True)
    (crashed / "config.yaml").write_text(
        "mixer:\n  name: aioli\nseed: 0\nmodel:\n  name: tiny\nbudget:\n  name: smoke\ndata:\n  source: synthetic\n"
    )
    # a mixer's sub-run lives in its cache: never a column of the table
    sub = root / "cache" / "subruns" / "proxy-abc"
    sub.mkdir(parents=True)
    (sub / "results.json").write_text(json.dumps(_results("fixed", 0, None, {"arith": 1.0}, 0.0)))
    return root


@pytest.fixture(scope="module")
def built(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert tables.main([str(sweep), "--out", str(out)]) == 0
    return out


def _section(md: str, title: str) -> str:
    """The markdown from the line that starts with ``title`` to the next blank line after its table."""
    part = md[md.index(title) :]
    return part[: part.index("\n\n", part.index("| Benchmark"))]


def _row(md: str, name: str) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].strip("*").split(" (")[0] == name:
            return cells
    raise AssertionError(f"no row {name!r} in\n{md}")


def test_table1_layout_mean_std_and_missing(built):
    md = (built / "table1.md").read_text()
    header = next(l for l in md.splitlines() if l.startswith("| Benchmark"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    # mixers as columns in the canonical order; the crashed and the eval-less runs are columns with missing cells
    assert [c.split(" (")[0] for c in cols[1:]] == ["stratified", "aioli", "regmix", "tikmix_d"]
    assert "stratified (n=2/2)" in cols and "aioli (n=0/1)" in cols and "regmix (n=0/1)" in cols
    assert "fixed" not in header  # sub-runs are skipped
    # benchmarks as rows, in-domain first; mean ± sample std over seeds
    assert _row(md, "arith_mc")[1:] == ["41.0 ± 1.4", "—", "—", "52.0 ± 2.8"]
    assert _row(md, "sorting")[1] == "21.0 ± 1.4"
    body = [l.split("|")[1].strip() for l in md.splitlines() if l.startswith("| ") and not l.startswith("| Benchmark")]
    assert body.index("arith_mc (in)") < body.index("copy_complete (in)") < body.index("sorting (out)")
    avg = _row(md, "Average")
    assert avg[1] == f"{(30 + 32) / 2:.1f} ± {math.sqrt(2):.1f}"
    flops = _row(md, "Mixture-search FLOPs")
    assert flops[1:] == ["0", "—", "3.7e18", "7.2e17"]
    # the notes name the crashed run and the one without an evaluation
    assert "4_aioli_s0" in md and "crashed or unfinished" in md
    assert "5_regmix_s0" in md and "no evaluation" in md


def test_table1_csv_numbers(built):
    rows = list(csv.DictReader(open(built / "table1.csv")))
    arith = next(r for r in rows if r["benchmark"] == "arith_mc")
    assert float(arith["tikmix_d"]) == pytest.approx(52.0) and float(arith["tikmix_d_std"]) == pytest.approx(
        math.sqrt(8)
    )
    assert arith["tikmix_d_n"] == "2" and arith["aioli"] == "" and arith["aioli_n"] == "0"
    fl = next(r for r in rows if r["benchmark"] == "Mixture-search FLOPs")
    assert float(fl["tikmix_d"]) == pytest.approx(7.2e17)


def test_table1_bpb_and_logprob_sections(built):
    md = (built / "table1.md").read_text()
    bpb = _section(md, "**Bits per byte of the gold answer (lower is better)**")
    # stratified arith_mc: scores 40, 42 -> bpb 2.2, 2.16; tikmix_d: 50, 54 -> 2.0, 1.92
    assert _row(bpb, "arith_mc")[1:] == ["2.180 ± 0.028", "—", "—", "1.960 ± 0.057"]
    assert _row(bpb, "sorting")[1] == f"{(2.6 + 2.56) / 2:.3f} ± {0.04 / math.sqrt(2):.3f}"
    ind = [(2.2 + 2.4) / 2, (2.16 + 2.36) / 2]  # stratified's in-domain BPB per seed
    assert _row(bpb, "In-domain average")[1] == f"{sum(ind) / 2:.3f} ± {abs(ind[0] - ind[1]) / math.sqrt(2):.3f}"
    assert _row(bpb, "Out-of-domain average")[4] == f"{(2.5 + 2.46) / 2:.3f} ± {0.04 / math.sqrt(2):.3f}"
    assert "Mixture-search FLOPs" not in bpb and "Average" in bpb
    lp = _section(md, "**Mean log-probability of the gold answer")
    assert _row(lp, "arith_mc")[1] == "-21.80 ± 0.28" and "higher is better" in lp
    assert "Bits per byte: -log2 p(gold | context)" in md.split("Notes:")[0].strip().split("\n\n")[-1]  # footnote
    rows = list(csv.DictReader(open(built / "table1.csv")))
    b = next(r for r in rows if r["benchmark"] == "arith_mc" and r["metric"] == "bpb")
    assert b["group"] == "in_domain" and float(b["tikmix_d"]) == pytest.approx(1.96) and b["tikmix_d_n"] == "2"
    avg = next(r for r in rows if r["benchmark"] == "Average" and r["metric"] == "logprob")
    assert float(avg["stratified"]) == pytest.approx(-10 * (2.4 + 2.36) / 2)


def test_results_without_bpb_have_no_bpb_section(tmp_path):
    """results.json from before bpb was recorded: Table 1 as before, no empty BPB section."""
    res = _results("stratified", 0, {"arith_mc": 40.0, "copy_complete": 30.0, "sorting": 20.0}, {"arith": 10.0}, 0.0)
    for t in res["eval"]["tasks"].values():
        del t["bpb"], t["logprob"]
    res["eval"] = {k: v for k, v in res["eval"].items() if not k.endswith(("_bpb", "_logprob"))}
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text(json.dumps(res))
    md = tables.build([tmp_path], tmp_path / "out", quiet=True)["table1_md"].read_text()
    assert _row(md, "arith_mc")[1] == "40.0" and "**Bits per byte" not in md and "**Mean log-probability" not in md


def test_perplexity_aioli_layout(built):
    md = (built / "perplexity.md").read_text()
    # tikmix_d minus stratified, paired by seed: avg ppl s0 = 19.67 vs 20, s1 = 21.67 vs 22 -> -1/3 each
    row = _row(md, "tikmix_d")
    assert row[1] == "-0.333 ± 0.000" and row[2] == "1/1"
    assert _row(md, "regmix")[1:] == ["1.000", "0/1"]  # one seed, worse than stratified's seed 0 (21 vs 20)
    assert "Per-domain test perplexity" in md and "| arith |" in md
    rows = list(csv.DictReader(open(built / "perplexity.csv")))
    avg = next(r for r in rows if r["mixer"] == "tikmix_d" and r["domain"] == "average")
    assert float(avg["delta_vs_stratified"]) == pytest.approx(-1 / 3)


def test_figures(built):
    for name in (
        "mixture_stratified.png",
        "mixture_tikmix_d.png",
        "score_vs_compute.png",
        "bpb_vs_compute.png",
        "ppl_vs_compute.png",
        "influence_tikmix_d.png",
    ):
        p = built / name
        assert p.exists() and p.stat().st_size > 1000, name
    assert not (built / "influence_stratified.png").exists()  # no influence records: no figure


def test_empty_and_broken_inputs_never_crash(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text("{not json")
    (tmp_path / "a" / "config.yaml").write_text("mixer:\n  name: doremi\nseed: 3\n")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "results.json").write_text(json.dumps({"mixer": "odm", "seed": 0}))  # partial: almost nothing
    out = tables.build([tmp_path], tmp_path / "out", quiet=True)
    md = out["table1_md"].read_text()
    assert "unreadable results.json" in md and "doremi" in md
    assert (tmp_path / "out" / "perplexity.md").exists()
    assert tables.main([str(tmp_path / "nope")]) == 2


def test_wandb_tables_never_fail_the_command(sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")  # a no-op W&B run: the tables still go through RunLogger
    assert tables.main([str(sweep), "--out", str(tmp_path), "--wandb", "--project", "tikmix-test"]) == 0
    assert (tmp_path / "table1.md").exists()


def test_eval_none_runs_are_not_reported_missing(tmp_path):
    """A run configured with eval=none has no downstream scores by choice: no 'missing' note, a clear line
    in table1.md; a run whose eval preset had tasks but whose results lack them is still reported."""

    def run(name, tasks):
        d = tmp_path / name
        d.mkdir()
        (d / "config.yaml").write_text(f"mixer:\n  name: stratified\nseed: 0\neval:\n  name: x\n  tasks: {tasks}\n")
        (d / "results.json").write_text(
            json.dumps(
                {
                    "mixer": "stratified",
                    "seed": 0,
                    "model": "tiny",
                    "budget": "b",
                    "data": "jsonl",
                    "test_ppl": {"a": 10.0},
                    "compute": {"mixer_total": 0},
                }
            )
        )

    run("off", "[]")
    out = tables.build([tmp_path], tmp_path / "out", quiet=True)
    md = out["table1_md"].read_text()
    assert "missing" not in md and "No downstream evaluation in this setting (eval=none)" in md
    run("lost", "[arith_qa]")
    md = tables.build([tmp_path], tmp_path / "out2", quiet=True)["table1_md"].read_text()
    assert "/lost: no evaluation in results.json" in md and "/off:" not in md


# ------------------------------------------------------------------------------------------ regret (--oracle)

W_STAR = {"arith": 0.5, "copy": 0.3, "grammar": 0.2}  # the best static mixture's weights
ORACLE_BPB = {0: 2.00, 1: 2.10, 2: 2.05}
ORACLE_ACC = {0: 40.0, 1: 42.0, 2: 41.0}
T2 = 4.302653  # Student t, 0.975 quantile, 2 degrees of freedom (n = 3 paired seeds), from a printed table
# per mixer: seed -> (in-domain BPB, in-domain accuracy); the oracle has seeds 0-2 only
PLANTED = {
    "tikmix_d": {0: (1.90, 41.0), 1: (2.05, 45.0), 2: (1.93, 41.0), 3: (0.0, 99.0)},  # seed 3: unpaired, an outlier
    "dga": {0: (2.02, 40.0), 1: (2.07, 42.0), 2: (2.09, 41.0)},  # diffs +0.02, -0.03, +0.04: within noise
    "stratified": {0: (2.10, 39.0), 1: (2.22, 41.0), 2: (2.16, 40.0)},  # diffs +0.10, +0.12, +0.11: worse
    "odm": {1: (2.30, 30.0)},  # one paired seed
    "regmix": {7: (1.0, 50.0)},  # no paired seed
}
# tikmix_d's mixture: 2 of the 8 steps at (0.2, 0.4, 0.4), then 6 at (0.6, 0.2, 0.2)
TIK_HISTORY = [
    {"step": 0, "weights": {"arith": 0.2, "copy": 0.4, "grammar": 0.4}},
    {"step": 2, "weights": {"arith": 0.6, "copy": 0.2, "grammar": 0.2}},
]


def _oracle_json(metric: str = "in_domain_bpb") -> dict:
    per_seed = {
        str(s): {
            "in_domain_bpb": ORACLE_BPB[s],
            "average_bpb": ORACLE_BPB[s] + 0.5,
            "in_domain_avg": ORACLE_ACC[s],
            "average": ORACLE_ACC[s] - 5,
        }
        for s in ORACLE_BPB
    }
    best = {
        "name": "best1:d0007",
        "mean": 2.05,
        "std": 0.05,
        "seeds": [0, 1, 2],
        "weights": W_STAR,
        "scores": {s: v[metric] for s, v in per_seed.items()},
        "extra": {},
        "per_seed": per_seed,
    }
    return {
        "metric": metric,
        "lower_is_better": metric.endswith("bpb"),
        "best": best,
        "mixtures": {"best1:d0007": best},
        "vs": {},
        "laws": None,
        "sources": {"design": ["multirun/design"], "confirm": ["multirun/confirm"]},
    }


@pytest.fixture(scope="module")
def regret_sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("regret")
    for m, per in PLANTED.items():
        for s, (bpb, acc) in per.items():
            res = _results(
                m,
                s,
                {"arith_mc": 40.0, "copy_complete": 30.0, "sorting": 20.0},
                {"arith": 10.0},
                float(s + 1) * 1e15 if m == "tikmix_d" else 0.0,
                weights=TIK_HISTORY if m == "tikmix_d" else [{"step": 0, "weights": W_STAR}],
            )
            res["final_weights"] = res["weights_history"][-1]["weights"]
            res["eval"].update(in_domain_bpb=bpb, average_bpb=bpb + 0.5, in_domain_avg=acc, average=acc - 5)
            (root / "runs" / f"{m}_s{s}").mkdir(parents=True)
            (root / "runs" / f"{m}_s{s}" / "results.json").write_text(json.dumps(res))
    (root / "oracle").mkdir()
    (root / "oracle" / "oracle.json").write_text(json.dumps(_oracle_json()))
    assert tables.main([str(root / "runs"), "--out", str(root / "report"), "--oracle", str(root / "oracle")]) == 0
    return root


def _regret_csv(root: Path) -> dict[str, dict]:
    return {r["mixer"]: r for r in csv.DictReader(open(root / "report" / "regret.csv"))}


def test_regret_paired_mean_and_t_interval_by_hand(regret_sweep):
    row = _regret_csv(regret_sweep)["tikmix_d"]
    # paired over seeds 0-2 (seed 3 has no oracle run): -0.10, -0.05, -0.12
    mean, sd = -0.09, math.sqrt((0.01**2 + 0.04**2 + 0.03**2) / 2)
    half = T2 * sd / math.sqrt(3)
    assert row["n"] == "3" and row["in_domain_bpb_regret_n"] == "3"
    assert float(row["in_domain_bpb_regret"]) == pytest.approx(mean)
    assert float(row["in_domain_bpb_regret_lo95"]) == pytest.approx(mean - half, abs=1e-5)
    assert float(row["in_domain_bpb_regret_hi95"]) == pytest.approx(mean + half, abs=1e-5)
    assert float(row["average_bpb_regret"]) == pytest.approx(mean)  # average BPB = in-domain + 0.5 on both sides
    # accuracy in percentage points, mixer - oracle: +1, +3, 0
    acc_sd = math.sqrt(((1 - 4 / 3) ** 2 + (3 - 4 / 3) ** 2 + (0 - 4 / 3) ** 2) / 2)
    assert float(row["in_domain_avg_regret"]) == pytest.approx(4 / 3)
    assert float(row["in_domain_avg_regret_lo95"]) == pytest.approx(4 / 3 - T2 * acc_sd / math.sqrt(3), abs=1e-4)
    assert float(row["average_regret_hi95"]) == pytest.approx(4 / 3 + T2 * acc_sd / math.sqrt(3), abs=1e-4)
    assert tables.t975(2) == pytest.approx(T2, abs=1e-6)


def test_regret_verdicts_in_planted_cases(regret_sweep):
    rows = _regret_csv(regret_sweep)
    assert rows["tikmix_d"]["beats_best_static"] == "yes"  # [-0.1796, -0.0004]: entirely below 0
    assert rows["dga"]["beats_best_static"] == "within noise"  # +0.01 ± 0.087
    assert rows["stratified"]["beats_best_static"] == "no"  # [+0.085, +0.135]
    assert float(rows["stratified"]["in_domain_bpb_regret_lo95"]) == pytest.approx(
        0.11 - T2 * 0.01 / math.sqrt(3), abs=1e-5
    )
    assert rows["odm"]["beats_best_static"] == "n<2" and rows["odm"]["in_domain_bpb_regret_lo95"] == ""
    assert float(rows["odm"]["in_domain_bpb_regret"]) == pytest.approx(0.20)
    assert rows["regmix"]["n"] == "0" and rows["regmix"]["in_domain_bpb_regret"] == ""
    assert {r["decided_by"] for r in rows.values()} == {"in_domain_bpb"}
    # a higher-is-better oracle metric flips which side of 0 is better
    assert tables.beats_oracle({"n": 3, "mean": 1.0, "lo": 0.5, "hi": 1.5}, lower_is_better=False) == "yes"
    assert tables.beats_oracle({"n": 3, "mean": 1.0, "lo": 0.5, "hi": 1.5}, lower_is_better=True) == "no"


def test_regret_pairs_only_shared_seeds():
    # seeds 0 and 1 pair (differences 0.5, 1.0); seed 3 of the mixer and seed 2 of the oracle are left out
    reg = tables.paired_regret({"0": 1.0, "1": 2.0, "3": 50.0}, {"0": 0.5, "1": 1.0, "2": 9.0})
    half = 12.7062 * math.sqrt(0.125) / math.sqrt(2)  # t(0.975, df=1) * sd / sqrt(n)
    assert reg["n"] == 2 and reg["seeds"] == ["0", "1"]
    assert (reg["mean"], reg["lo"], reg["hi"]) == pytest.approx((0.75, 0.75 - half, 0.75 + half), abs=1e-4)


def test_regret_l1_final_and_time_averaged(regret_sweep):
    # time-averaged: (2 * (0.2, 0.4, 0.4) + 6 * (0.6, 0.2, 0.2)) / 8 = (0.5, 0.25, 0.25)
    avg = tables.time_averaged_weights({"steps": 8, "weights_history": TIK_HISTORY})
    assert avg == pytest.approx({"arith": 0.5, "copy": 0.25, "grammar": 0.25})
    rows = _regret_csv(regret_sweep)
    assert float(rows["tikmix_d"]["l1_final"]) == pytest.approx(0.2)  # |0.6-0.5| + |0.2-0.3| + |0.2-0.2|
    assert float(rows["tikmix_d"]["l1_time_avg"]) == pytest.approx(0.1)  # 0 + 0.05 + 0.05
    assert float(rows["stratified"]["l1_final"]) == pytest.approx(0.0)
    assert float(rows["tikmix_d"]["mixer_flops"]) == pytest.approx(2.5e15)  # mean of 1e15..4e15 over its 4 runs
    assert tables.l1({"arith": 1.0}, W_STAR) is None  # another corpus: no distance


def test_regret_tables_figure_and_table1_block(regret_sweep):
    rep = regret_sweep / "report"
    md = (rep / "regret.md").read_text()
    assert "**best1:d0007**" in md and str(regret_sweep / "oracle" / "oracle.json") in md
    assert "Beats the best static mixture? (by in_domain_bpb)" in md and "< 0 = better" in md
    lo, hi = -0.09 - T2 * math.sqrt(0.0013) / math.sqrt(3), -0.09 + T2 * math.sqrt(0.0013) / math.sqrt(3)
    assert _row(md, "tikmix_d")[1:3] == ["3", f"-0.0900 [{lo:+.4f}, {hi:+.4f}]"]  # [-0.1796, -0.0004]
    assert _row(md, "odm")[2] == "+0.2000 (n<2)"
    assert "not paired" in md and "tikmix_d seed 3" in md and "regmix seed 7" in md
    t1 = (rep / "table1.md").read_text()
    assert "[regret.md](regret.md)" in t1 and "Best static mixture: **best1:d0007**" in t1
    assert _row(t1, "stratified")[-1] == "no"
    fig = rep / "regret_vs_compute.png"
    assert fig.exists() and fig.stat().st_size > 5000


def test_oracle_missing_or_malformed_is_a_clear_error(regret_sweep, tmp_path, capsys):
    runs = str(regret_sweep / "runs")
    assert tables.main([runs, "--out", str(tmp_path / "o"), "--oracle", str(tmp_path / "nope")]) == 2
    assert "no oracle file at" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written before the error
    (tmp_path / "bad.json").write_text(json.dumps({"metric": "in_domain_bpb", "best": {"name": "x"}}))
    assert tables.main([runs, "--out", str(tmp_path / "o"), "--oracle", str(tmp_path / "bad.json")]) == 2
    assert "best.weights" in capsys.readouterr().err
    (tmp_path / "junk.json").write_text("{not json")
    assert tables.main([runs, "--oracle", str(tmp_path / "junk.json")]) == 2
    assert "not readable JSON" in capsys.readouterr().err


def test_regret_logged_to_wandb(regret_sweep, tmp_path, monkeypatch):
    from tikmix import runlog

    logged = []
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(
        runlog.RunLogger, "table", lambda self, key, cols, rows, step=None: logged.append((key, cols, rows))
    )
    assert (
        tables.main(
            [
                str(regret_sweep / "runs"),
                "--out",
                str(tmp_path),
                "--wandb",
                "--oracle",
                str(regret_sweep / "oracle" / "oracle.json"),
            ]
        )
        == 0
    )
    reg = next((c, r) for k, c, r in logged if k == "tables/regret")
    assert "in_domain_bpb_regret_lo95" in reg[0] and {row[1] for row in reg[1]} >= {"tikmix_d", "dga", "stratified"}


# ------------------------------------------------------------------------------ limited evaluations, re-scorings


def _limited_sweep(root: Path) -> Path:
    """stratified: 2 full seeds; tikmix_d: seed 0 full, seed 1 evaluated with eval.limit=20 (and a full re-scoring of
    another preset); an oracle for the regret block."""
    full = {"arith_mc": 40.0, "copy_complete": 30.0, "sorting": 20.0}
    for m, s, lim in (("stratified", 0, None), ("stratified", 1, None), ("tikmix_d", 0, None), ("tikmix_d", 1, 20)):
        res = _results(m, s, full, {"arith": 10.0}, 0.0, weights=[{"step": 0, "weights": W_STAR}])
        res["final_weights"] = W_STAR
        res["eval"].update(limit=lim, in_domain_bpb=2.0, average_bpb=2.5, in_domain_avg=40.0, average=35.0)
        if m == "tikmix_d" and s == 1:  # python -m eval ... eval=paper9 eval.limit=5, then the same in full
            res["rescored"] = [
                {**_eval({"arith_mc": 1.0, "sorting": 1.0}), "preset": "paper9", "limit": 5},
                {**_eval({"arith_mc": 77.0, "sorting": 1.0}), "preset": "paper9", "limit": None},
                {**_eval({"arith_mc": 2.0, "sorting": 1.0}), "preset": "paper9", "limit": 5},
            ]
        (root / f"{m}_s{s}").mkdir(parents=True)
        (root / f"{m}_s{s}" / "results.json").write_text(json.dumps(res))
    return root


def test_every_table_marks_limited_evaluations(tmp_path):
    runs = _limited_sweep(tmp_path / "runs")
    (tmp_path / "oracle.json").write_text(json.dumps(_oracle_json()))
    assert tables.main([str(runs), "--out", str(tmp_path / "rep"), "--oracle", str(tmp_path / "oracle.json")]) == 0
    md = (tmp_path / "rep" / "table1.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Benchmark"))
    assert "tikmix_d (n=2/2) † 1 limited" in header and "stratified (n=2/2) |" in header
    row = _row(md, "arith_mc")
    assert row[1] == "40.0 ± 0.0" and row[2] == "40.0 ± 0.0†"  # the limited mixer's cells are marked, the other's not
    assert _row(md, "Average")[2].endswith("†") and not _row(md, "Average")[1].endswith("†")
    assert "**Limited evaluation**" in md and "tikmix_d seed 1 (eval.limit=20)" in md
    assert "limited evaluation (†): tikmix_d seed 1" in md  # the notes name the run's folder
    lim = next(r for r in csv.DictReader(open(tmp_path / "rep" / "table1.csv")) if r["group"] == "limit")
    assert (
        lim["tikmix_d"] == "20" and lim["tikmix_d_n"] == "1" and lim["stratified"] == "" and lim["stratified_n"] == "0"
    )
    reg = (tmp_path / "rep" / "regret.md").read_text()
    assert "\n| tikmix_d † | 2 |" in reg and "\n| stratified | 2 |" in reg
    assert "**Limited evaluation**" in reg
    rows = {r["mixer"]: r for r in csv.DictReader(open(tmp_path / "rep" / "regret.csv"))}
    assert rows["tikmix_d"]["limited_evals"] == "1" and rows["stratified"]["limited_evals"] == "0"
    # no limited run: no mark anywhere
    full = tables.build([runs / "stratified_s0", runs / "stratified_s1"], tmp_path / "rep2", quiet=True)
    assert "†" not in full["table1_md"].read_text() and "limit" not in (tmp_path / "rep2" / "table1.csv").read_text()


def test_preset_reads_rescorings_full_before_limited(tmp_path):
    runs = _limited_sweep(tmp_path / "runs")
    got = tables.build([runs / "tikmix_d_s1"], tmp_path / "rep", preset="paper9", quiet=True)
    (r,) = got["runs"]
    assert r.eval["tasks"]["arith_mc"]["value"] == 77.0  # the full re-scoring, though a limited one came later
    assert "†" not in got["table1_md"].read_text()
    only_limited = json.loads((runs / "tikmix_d_s1" / "results.json").read_text())
    only_limited["rescored"] = [e for e in only_limited["rescored"] if e["limit"]]
    (runs / "tikmix_d_s1" / "results.json").write_text(json.dumps(only_limited))
    got = tables.build([runs / "tikmix_d_s1"], tmp_path / "rep2", preset="paper9", quiet=True)
    assert got["runs"][0].eval["tasks"]["arith_mc"]["value"] == 2.0 and "eval.limit=5" in got["table1_md"].read_text()
    # without --preset: the run's own evaluation, whatever was re-scored
    assert tables.build([runs / "tikmix_d_s1"], tmp_path / "rep3", quiet=True)["runs"][0].eval["limit"] == 20


def test_oracle_report_marks_limited_confirmation_runs():
    from eval import oracle

    res = _oracle_json()
    res["mixtures"] = {
        "best1:d0007": {**res["best"], "limited": {}},
        "stratified": {**res["best"], "mean": 2.2, "limited": {"1": 10}},
    }
    md = oracle.markdown(res)
    assert "| stratified † |" in md and "| best1:d0007 |" in md and "stratified seed 1 (eval.limit=10)" in md
    assert "†" not in oracle.markdown(_oracle_json())


# ------------------------------------------------------------------------------------------ figures, readable


@pytest.fixture
def drawn(monkeypatch):
    """Every figure the table tool draws, laid out as saved, kept open for inspection: {file name: figure}."""
    figs = {}
    real = figures.save_figure

    def keep(plt, fig, out, kind, mixer=None, setting=None, multi_setting=False):
        plt_close = plt.close
        plt.close = lambda f=None: None
        try:
            p = real(plt, fig, out, kind, mixer, setting, multi_setting)
        finally:
            plt.close = plt_close
        figs[p.name] = fig
        return p

    monkeypatch.setattr(figures, "save_figure", keep)
    yield figs
    import matplotlib.pyplot as plt

    for f in figs.values():
        plt.close(f)


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_vs_compute_figures_are_readable(tmp_path, drawn):
    """A static mixer (0 FLOPs) beside searches at 8e11 and 3e13 FLOPs (results/localtext), and a mixer whose perplexity spread across seeds is
    larger than its mean (mean − std < 0): the "0" and the decade ticks apart, the title inside the figure, every
    error bar inside a log axis."""
    specs = {"stratified": (0.0, [240.0, 250.0]), "regmix": (8e11, [10.5, 14.0, 165.0]), "dga": (3e13, [230.0, 260.0])}
    for m, (fl, ppls) in specs.items():
        for s, p in enumerate(ppls):
            d = tmp_path / "runs" / f"{m}_s{s}"
            d.mkdir(parents=True)
            (d / "results.json").write_text(
                json.dumps(_results(m, s, {"arith_mc": 40.0 + s, "sorting": 20.0}, {"arith": p}, fl))
            )
    tables.build([tmp_path / "runs"], tmp_path / "rep", quiet=True)
    fig = drawn["ppl_vs_compute.png"]
    ax = fig.axes[0]
    r = fig.canvas.get_renderer()
    labels = [
        t
        for t in ax.get_xticklabels()
        if t.get_visible() and t.get_text() and ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]
    ]
    assert labels[0].get_text().replace("$\\mathdefault{0}$", "0") == "0" and len(labels) >= 2
    boxes = [t.get_window_extent(r) for t in labels]
    assert not any(_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]), [t.get_text() for t in labels]
    fb = fig.bbox
    for t in (ax.title, ax.xaxis.label, ax.yaxis.label):
        bb = t.get_window_extent(r)
        assert fb.x0 <= bb.x0 and bb.x1 <= fb.x1 and fb.y0 <= bb.y0 and bb.y1 <= fb.y1, t.get_text()
    assert ax.get_yscale() == "log"
    lo, hi = ax.get_ylim()
    ends = [y for line in ax.get_lines() if line.get_marker() not in (None, "None", "") for y in line.get_ydata()]
    assert 0 < lo <= min(ends) and max(ends) <= hi and min(ends) == pytest.approx(10.5)


def test_influence_panels_readable_when_one_domain_dominates(tmp_path, drawn):
    """The target's own domain at ~100, the others at ~0.05: the small ones must not be a flat line at 0."""
    hist = [
        {"step": st, "influence": {"val/arith": {"arith": 100.0 + st, "copy": 0.05 * (1 + st), "grammar": -0.04}}}
        for st in (2, 4, 6)
    ]
    d = tmp_path / "runs" / "tikmix_d_s0"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps(_results("tikmix_d", 0, None, {"arith": 1.0}, 1e12, hist)))
    tables.build([tmp_path / "runs"], tmp_path / "rep", quiet=True)
    fig = drawn["influence_tikmix_d.png"]
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}
    to_px = lambda ln: ax.transData.transform(list(zip(ln.get_xdata(), ln.get_ydata())))[:, 1]  # noqa: E731
    height = ax.get_window_extent().height
    # copy's influence doubles and more between stages: visibly apart, and apart from grammar's
    copy, grammar = to_px(lines["copy"]), to_px(lines["grammar"])
    assert copy.max() - copy.min() > 0.05 * height and abs(copy.min() - grammar.max()) > 0.03 * height
    assert ax.get_yscale() == "symlog" and "symlog" in ax.get_title()
    # one legend for the figure, beside the panels, not over a panel's lines
    assert ax.get_legend() is None and len(fig.legends) == 1
    # a panel without a dominating domain stays linear
    assert (
        figures.dominated_linthresh([1.0, 0.8, -0.5, 0.6]) is None
        and figures.dominated_linthresh([100, 0.05, 0.04]) == 0.01
    )


def test_wandb_tables_attach_to_the_runs_sweep_with_every_figure(sweep, tmp_path, monkeypatch):
    """--wandb: a run of job type tables in the group and project the runs recorded (results.json["wandb"]), with
    Table 1, the perplexity table and every figure the command drew."""
    import shutil
    import sys
    import types

    from tests.test_wandb_report import FakeImage, FakeRun, FakeTable

    runs_dir = tmp_path / "runs"
    shutil.copytree(sweep, runs_dir)
    for f in runs_dir.glob("*/results.json"):
        res = json.loads(f.read_text())
        res["wandb"] = {"id": f.parent.name, "group": "multirun/2026-01-01/12-00-00", "project": "proj1"}
        f.write_text(json.dumps(res))
    made = []
    mod = types.ModuleType("wandb")
    mod.init = lambda **kw: made.append(FakeRun(**kw)) or made[-1]
    mod.Table, mod.Image, mod.Settings = FakeTable, FakeImage, (lambda **k: k)
    monkeypatch.setitem(sys.modules, "wandb", mod)
    out = tables.build([runs_dir], tmp_path / "rep", logger_cfg={"name": "wandb", "tags": ["tables"]}, quiet=True)
    (r,) = made
    assert r.init["group"] == "multirun/2026-01-01/12-00-00" and r.init["project"] == "proj1"
    assert r.init["job_type"] == "tables" and r.init["name"] == "tables-multirun_2026-01-01_12-00-00"
    keys = {k for _, d in r.logs for k in d}
    assert {"tables/table1", "tables/perplexity"} <= keys
    assert {f"figures/{f.stem}" for f in out["figures"]} <= keys and len(out["figures"]) >= 5
    # an explicit --group wins; runs of several groups: none chosen
    made.clear()
    assert tables.main([str(runs_dir), "--out", str(tmp_path / "rep2"), "--wandb", "--group", "mine"]) == 0
    assert made[0].init["group"] == "mine" and made[0].init["project"] == "proj1"


def test_a_runs_hydra_record_is_not_another_run(tmp_path):
    """Every run dir holds Hydra's record, ``.hydra/config.yaml``: it is part of that run, not a crashed one."""
    d = tmp_path / "0_stratified_s0"
    (d / ".hydra").mkdir(parents=True)
    cfg = "mixer:\n  name: stratified\nseed: 0\neval:\n  name: none\n  tasks: []\n"
    (d / "config.yaml").write_text(cfg)
    (d / ".hydra" / "config.yaml").write_text(cfg)
    (d / "results.json").write_text(
        json.dumps(
            {"mixer": "stratified", "seed": 0, "model": "tiny", "budget": "b", "data": "x", "test_ppl": {"a": 1.0}}
        )
    )
    runs = tables.collect([tmp_path])
    assert [(r.path.name, r.problem) for r in runs] == [("0_stratified_s0", None)]


def test_tikmix_m_fit_notes_count_accepted_boundaries():
    from eval.runs import Run

    def run(seed, statuses_r2):
        hist = [
            {"step": 75 * (i + 1), "tikmix_m": {"status": st, "fit": {"r2_holdout": r2}}}
            for i, (st, r2) in enumerate(statuses_r2)
        ]
        return Run(Path(f"m{seed}"), "tikmix_m", seed, "tiny / demo / synthetic", res={"mixer_history": hist})

    runs = [
        run(0, [("ok", 0.9), ("kept_w_D", -0.7), ("ok", 0.5)]),
        run(1, [("ok", 0.96), ("ok", 0.41), ("kept_w_D", 0.2)]),
        Run(Path("d0"), "tikmix_d", 0, "tiny / demo / synthetic", res={"mixer_history": [{"step": 75}]}),
    ]
    (note,) = tables.tikmix_m_fit_notes(runs)
    assert "taken at 4 of 6 boundaries over 2 runs" in note and "-0.70 to 0.96" in note
    assert tables.tikmix_m_fit_notes(runs[2:]) == []  # no TiKMiX-M run: no note
