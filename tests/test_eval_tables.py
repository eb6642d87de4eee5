"""python -m eval.tables on fake results.json files: 2 mixers x 2 seeds, one crashed run, one without eval."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from eval import tables

DOMAINS = ["arith", "copy", "grammar"]
IN = ["arith_mc", "copy_complete"]
OUT = ["sorting"]


def _bpb(v: float) -> float:  # a made-up gold-answer BPB per score (logprob = -10 * bpb)
    return 3.0 - v / 50


def _eval(scores: dict[str, float]) -> dict:
    tasks = {t: {"metric": "acc_norm", "value": v, "stderr": 1.0, "group": "in_domain" if t in IN else "out_of_domain",
                 "percent": True, "n_shot": 0, "n_samples": 100, "metrics": {"acc_norm": {"value": v, "stderr": 1.0}},
                 "bpb": _bpb(v), "logprob": -10 * _bpb(v)}
             for t, v in scores.items()}
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    ind = [v for t, v in scores.items() if t in IN]
    ood = [v for t, v in scores.items() if t in OUT]
    out = {"preset": "synthetic9", "tasks": tasks, "in_domain_avg": mean(ind), "out_of_domain_avg": mean(ood),
           "average": mean(list(scores.values()))}
    for prefix, vs in (("in_domain", ind), ("out_of_domain", ood), ("average", list(scores.values()))):
        out[f"{prefix}_bpb"] = mean([_bpb(v) for v in vs])
        out[f"{prefix}_logprob"] = mean([-10 * _bpb(v) for v in vs])
    return out


def _results(mixer: str, seed: int, scores: dict | None, ppl: dict, mixer_total: float, history: list | None = None,
             weights: list | None = None) -> dict:
    w0 = {d: 1 / 3 for d in DOMAINS}
    res = {
        "mixer": mixer, "seed": seed, "model": "tiny", "budget": "smoke", "data": "synthetic", "domains": DOMAINS,
        "steps": 8, "final_weights": w0,
        "weights_history": weights or [{"step": 0, "weights": w0}],
        "test_ppl": ppl, "compute": {"train": 1e12, "eval": 1e10, "mixer_total": mixer_total, "total": 1e12 + mixer_total},
        "mixer_history": history or [],
    }
    if scores is not None:
        res["eval"] = _eval(scores)
    return res


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    infl = lambda step, a: {"step": step, "influence": {"val/arith": {"arith": a, "copy": -a / 2, "grammar": 0.1}},  # noqa: E731
                            "weights": {"arith": 0.5, "copy": 0.25, "grammar": 0.25}}
    tik_w = lambda: [{"step": 0, "weights": {d: 1 / 3 for d in DOMAINS}},  # noqa: E731
                     {"step": 4, "weights": {"arith": 0.6, "copy": 0.3, "grammar": 0.1}}]
    runs = {
        "0_stratified_s0": _results("stratified", 0, {"arith_mc": 40.0, "copy_complete": 30.0, "sorting": 20.0},
                                    {"arith": 10.0, "copy": 20.0, "grammar": 30.0}, 0.0),
        "1_stratified_s1": _results("stratified", 1, {"arith_mc": 42.0, "copy_complete": 32.0, "sorting": 22.0},
                                    {"arith": 12.0, "copy": 22.0, "grammar": 32.0}, 0.0),
        "2_tikmix_d_s0": _results("tikmix_d", 0, {"arith_mc": 50.0, "copy_complete": 30.0, "sorting": 25.0},
                                  {"arith": 9.0, "copy": 19.0, "grammar": 31.0}, 7.0e17,
                                  [infl(0, 1.0), infl(4, 0.5)], tik_w()),
        "3_tikmix_d_s1": _results("tikmix_d", 1, {"arith_mc": 54.0, "copy_complete": 34.0, "sorting": 27.0},
                                  {"arith": 11.0, "copy": 21.0, "grammar": 33.0}, 7.4e17,
                                  [infl(0, 2.0), infl(4, 1.0)], tik_w()),
        "5_regmix_s0": _results("regmix", 0, None, {"arith": 11.0, "copy": 21.0, "grammar": 31.0}, 3.7e18),  # no eval
    }
    for name, res in runs.items():
        d = root / name
        d.mkdir()
        (d / "results.json").write_text(json.dumps(res))
        (d / "config.yaml").write_text(f"mixer:\n  name: {res['mixer']}\nseed: {res['seed']}\n")
    crashed = root / "4_aioli_s0"  # crashed: a config and a checkpoint folder, no results.json
    (crashed / "checkpoints").mkdir(parents=True)
    (crashed / "config.yaml").write_text("mixer:\n  name: aioli\nseed: 0\nmodel:\n  name: tiny\nbudget:\n  name: smoke\ndata:\n  source: synthetic\n")
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
    part = md[md.index(title):]
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
    assert float(arith["tikmix_d"]) == pytest.approx(52.0) and float(arith["tikmix_d_std"]) == pytest.approx(math.sqrt(8))
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
    for name in ("mixture_stratified.png", "mixture_tikmix_d.png", "score_vs_compute.png", "bpb_vs_compute.png",
                 "ppl_vs_compute.png", "influence_tikmix_d.png"):
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
        (d / "results.json").write_text(json.dumps({"mixer": "stratified", "seed": 0, "model": "tiny", "budget": "b",
                                                    "data": "jsonl", "test_ppl": {"a": 10.0}, "compute": {"mixer_total": 0}}))
    run("off", "[]")
    out = tables.build([tmp_path], tmp_path / "out", quiet=True)
    md = out["table1_md"].read_text()
    assert "missing" not in md and "No downstream evaluation in this setting (eval=none)" in md
    run("lost", "[arith_qa]")
    md = tables.build([tmp_path], tmp_path / "out2", quiet=True)["table1_md"].read_text()
    assert "/lost: no evaluation in results.json" in md and "/off:" not in md
