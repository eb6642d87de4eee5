"""The evaluation stage end to end on a smoke run: eval=synthetic9 through lm-eval in-process, trained vs
untrained, a user's task folder scored unchanged, benchmark targets, and `python -m eval <run dir>`.

One training run serves every test (session fixture): 128 steps of the copy domain only. That is enough for
the copy domain's alphabetical-order statistics (a quarter of its sequences are sorted) to show on the
`sorting` task (~32% vs ~16% untrained on its 500 test examples); copying itself needs induction heads,
hundreds of steps more, so copy_complete stays at chance at this budget.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, compose
from tikmix.errors import ConfigError


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # 2 shared cores: several intra-op threads on a tiny model only contend (10x slower under load)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def eval_run(smoke_overrides, tmp_path_factory):
    from tikmix.run import run

    rd = tmp_path_factory.mktemp("evalrun") / "run"
    cfg = compose(
        smoke_overrides
        + [
            f"run_dir={rd}",
            "eval=synthetic9",
            "eval.limit=40",
            "mixer=fixed",
            "mixer.weights={copy: 1.0}",
            "budget.total_tokens=131072",
            "budget.micro_batch=16",
        ]
    )
    res = run(cfg, quiet=True)
    return rd, res, cfg


@pytest.fixture(scope="module")
def trained(eval_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rd, _, _ = eval_run
    return AutoModelForCausalLM.from_pretrained(rd / "final_model"), AutoTokenizer.from_pretrained(rd / "final_model")


class FakeLogger:
    def __init__(self):
        self.tables, self.logs, self.summaries = [], [], []

    def table(self, key, columns, rows, step=None):
        self.tables.append((key, columns, rows, step))

    def log(self, metrics, step):
        self.logs.append((dict(metrics), step))

    def summary(self, values):
        self.summaries.append(dict(values))


# ------------------------------------------------------------------------------------------- stage


def test_run_results_hold_the_eval_entry(eval_run):
    from tikmix.data.synthetic import IN_DOMAIN, OUT_OF_DOMAIN

    rd, res, _ = eval_run
    assert "eval" in res, "tikmix.run.run does not call eval.stage.evaluate yet (see the eval wiring)"
    on_disk = json.loads((rd / "results.json").read_text())
    ev = on_disk["eval"]
    assert ev["preset"] == "synthetic9" and ev["limit"] == 40 and ev["bootstrap_iters"] > 0
    assert list(ev["tasks"]) == list(IN_DOMAIN + OUT_OF_DOMAIN)  # synthetic9: the nine (TASKS adds v4's chain_deep)
    for name, t in ev["tasks"].items():
        assert t["group"] == ("in_domain" if name in IN_DOMAIN else "out_of_domain")
        assert t["metric"] == "acc_norm" and t["n_samples"] == 40 and t["n_shot"] == 0
        assert 0 <= t["value"] <= 100 and t["stderr"] is not None and 0 <= t["stderr"] < 20  # percent
        assert set(t["metrics"]) == {"acc", "acc_norm"}
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert ev["in_domain_avg"] == pytest.approx(mean([ev["tasks"][t]["value"] for t in IN_DOMAIN]))
    assert ev["out_of_domain_avg"] == pytest.approx(mean([ev["tasks"][t]["value"] for t in OUT_OF_DOMAIN]))
    assert ev["average"] == pytest.approx(mean([t["value"] for t in ev["tasks"].values()]))
    assert ev["forward_tokens"] > 0
    assert on_disk["compute"]["eval"] > 0
    # continuous metrics beside accuracy: every synthetic task is multiple-choice, so all have them
    for t in ev["tasks"].values():
        assert math.isfinite(t["bpb"]) and t["bpb"] > 0 and math.isfinite(t["logprob"]) and t["logprob"] < 0
    for k in ("bpb", "logprob"):
        assert ev[f"in_domain_{k}"] == pytest.approx(mean([ev["tasks"][t][k] for t in IN_DOMAIN]))
        assert ev[f"out_of_domain_{k}"] == pytest.approx(mean([ev["tasks"][t][k] for t in OUT_OF_DOMAIN]))
        assert ev[f"average_{k}"] == pytest.approx(mean([t[k] for t in ev["tasks"].values()]))


def test_trained_beats_untrained_on_a_taught_task(eval_run, trained):
    from eval.stage import evaluate
    from tikmix.model import build_model, model_section

    rd, _, cfg = eval_run
    model, tok = trained
    untrained = build_model(
        model_section(cfg.model), model.config.vocab_size, 0, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id
    )
    ecfg = compose(
        ["eval=synthetic9", f"data.cache_dir={cfg.data.cache_dir}", "eval.tasks=[sorting]", "eval.bootstrap_iters=0"]
    ).eval
    a = evaluate(ecfg, model, tok, rd, quiet=True)["tasks"]["sorting"]
    b = evaluate(ecfg, untrained, tok, rd, quiet=True)["tasks"]["sorting"]
    assert a["n_samples"] == b["n_samples"] == 500
    assert a["value"] > b["value"] + 6, (a["value"], b["value"])


def test_saved_final_model_scores_like_the_in_process_model(eval_run, trained):
    """`lm_eval --model hf --model_args pretrained=<run>/final_model` (lm-eval loading the saved folder) gives
    the in-process score: the evaluation stage wraps the model object itself, with no reload."""
    from lm_eval import simple_evaluate

    from eval import tasks as T
    from eval.stage import evaluate

    rd, _, cfg = eval_run
    model, tok = trained
    ecfg = compose(
        [
            "eval=synthetic9",
            f"data.cache_dir={cfg.data.cache_dir}",
            "eval.tasks=[sorting]",
            "eval.limit=30",
            "eval.bootstrap_iters=0",
        ]
    ).eval
    ours = evaluate(ecfg, model, tok, rd, quiet=True)["tasks"]["sorting"]["metrics"]["acc"]["value"]
    tm = T.resolve(T.eval_config(ecfg), ["sorting"])
    raw = simple_evaluate(
        model="hf",
        model_args=f"pretrained={rd / 'final_model'},device=cpu,dtype=float32",
        tasks=["sorting"],
        limit=30,
        bootstrap_iters=0,
        task_manager=tm,
        log_samples=False,
    )
    assert 100 * raw["results"]["sorting"]["acc,none"] == pytest.approx(ours)


def test_bpb_is_computed_from_lm_evals_own_samples(eval_run, trained):
    """The stage's bpb and logprob equal -log p / ln 2 / bytes and log p of the gold continuation, computed
    here from the per-sample log-likelihoods lm-eval itself logs for the same model and documents."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from eval import tasks as T
    from eval.stage import evaluate

    rd, _, cfg = eval_run
    model, tok = trained
    ecfg = compose(
        [
            "eval=synthetic9",
            f"data.cache_dir={cfg.data.cache_dir}",
            "eval.tasks=[fact_recall,sorting]",
            "eval.limit=12",
            "eval.bootstrap_iters=0",
        ]
    ).eval
    ours = evaluate(ecfg, model, tok, rd, quiet=True)["tasks"]
    tm = T.resolve(T.eval_config(ecfg), ["fact_recall", "sorting"])
    raw = simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tok, batch_size=64),
        tasks=["fact_recall", "sorting"],
        limit=12,
        bootstrap_iters=0,
        task_manager=tm,
        log_samples=True,
    )
    for task in ("fact_recall", "sorting"):
        logp, bpb = [], []
        for s in raw["samples"][task]:
            ctx, cont = s["arguments"][s["target"]]
            assert cont.startswith(" ") and not ctx.endswith(" ")  # " " + choice is what lm-eval scored
            logp.append(s["resps"][s["target"]][0][0])
            bpb.append(-logp[-1] / math.log(2) / len(cont.encode("utf-8")))
        assert len(logp) == 12
        assert ours[task]["logprob"] == pytest.approx(sum(logp) / 12, rel=1e-6)
        assert ours[task]["bpb"] == pytest.approx(sum(bpb) / 12, rel=1e-6)


def test_modes_rng_and_logging(eval_run, trained):
    from eval.stage import evaluate, stage_evaluator
    from tikmix.ledger import Ledger

    rd, _, cfg = eval_run
    model, tok = trained
    ecfg = compose(
        [
            "eval=synthetic9",
            f"data.cache_dir={cfg.data.cache_dir}",
            "eval.tasks=[arith_mc,sorting]",
            "eval.in_domain=[arith_mc]",
            "eval.limit=8",
            "eval.every_stage=true",
        ]
    ).eval
    model.train()
    lg = FakeLogger()
    torch.manual_seed(5)
    entry = evaluate(ecfg, model, tok, rd, logger=lg, step=7, quiet=True)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))  # lm-eval's global reseeding does not leak into training
    assert model.training  # HFLM calls model.eval(); the stage restores train mode
    assert entry["out_of_domain_avg"] == entry["tasks"]["sorting"]["value"]
    key, cols, rows, step = lg.tables[0]
    assert key == "eval/synthetic9" and step == 7 and cols[:5] == ["task", "group", "metric", "value", "stderr"]
    assert {(r[0], r[2]) for r in rows} >= {("arith_mc", "acc"), ("arith_mc", "acc_norm"), ("sorting", "acc_norm")}
    assert lg.logs[0][1] == 7 and "eval/average" in lg.logs[0][0]
    assert "eval/arith_mc/acc_norm" in lg.summaries[0] and "eval/average" in lg.summaries[0]
    assert {(r[0], r[2]) for r in rows} >= {("arith_mc", "bpb"), ("sorting", "logprob"), ("average", "bpb")}
    assert lg.logs[0][0]["eval/sorting/bpb"] == entry["tasks"]["sorting"]["bpb"] > 0
    assert lg.summaries[0]["eval/average_bpb"] == entry["average_bpb"] and "eval/arith_mc/logprob" in lg.summaries[0]
    # in-training evaluations at stage boundaries: no stderr, no summary, charged to the ledger
    ledger, lg2 = Ledger(), FakeLogger()
    fn = stage_evaluator(ecfg, tok, rd, logger=lg2, ledger=ledger, flops_per_token=600.0)
    e2 = fn(model, 3)
    assert e2["tasks"]["sorting"]["stderr"] is None and e2["final"] is False
    assert lg2.tables[0][0] == "eval/synthetic9_stage" and lg2.tables[0][3] == 3 and not lg2.summaries
    assert ledger.flops["eval"] == pytest.approx(200.0 * e2["forward_tokens"])
    assert stage_evaluator(compose(["eval=synthetic9"]).eval, tok, rd) is None  # every_stage: false
    assert evaluate(compose(["eval=none"]).eval, model, tok, rd) is None


def test_bad_eval_config_is_one_clear_error(eval_run, trained):
    from eval.stage import evaluate

    rd, _, cfg = eval_run
    model, tok = trained
    base = ["eval=synthetic9", f"data.cache_dir={cfg.data.cache_dir}"]
    with pytest.raises(ConfigError, match="eval.limit"):
        evaluate(compose(base + ["eval.limit=-3"]).eval, model, tok, rd)
    with pytest.raises(ConfigError, match="eval.include_path: .*nonexistent is not a folder"):
        evaluate(compose(base + ["eval.include_path=/nonexistent"]).eval, model, tok, rd)
    with pytest.raises(ConfigError, match=r"eval=custom names no tasks"):
        evaluate(compose(["eval=custom"]).eval, model, tok, rd)


# ------------------------------------------------------------------ continuous metrics, by hand

LN2 = math.log(2)


def _mc(target, conts, lls, ctx="Q: a A:", filt="none", doc=None) -> dict:
    """A logged lm-eval multiple-choice document, as simple_evaluate(log_samples=True) returns it."""
    return {
        "doc": doc or {},
        "target": target,
        "arguments": [(ctx, c) for c in conts],
        "resps": [[(ll, False)] for ll in lls],
        "filtered_resps": [(ll, False) for ll in lls],
        "filter": filt,
    }


class FakeTask:  # the three things gold resolution asks of a leaf Task
    OUTPUT_TYPE = "multiple_choice"

    def __init__(self, multiple_input=False):
        self.multiple_input = multiple_input

    def doc_to_text(self, doc):
        return doc["gold_context"]

    def doc_to_choice(self, doc):
        return doc["choices"]


def test_gold_bpb_and_logprob_by_hand():
    from eval.stage import continuous_scores, gold_scores

    # gold 1: " é" is 3 UTF-8 bytes (the delimiter counts) and p = 2^-3, so exactly 1 bit per byte
    a = _mc(1, [" x", " é"], [-1.0, -3 * LN2])
    assert gold_scores(a) == pytest.approx((-3 * LN2, 1.0), rel=1e-12)
    # several golds: the most likely one (1); its continuation " abc" is 4 bytes
    b = _mc([0, 1], [" ab", " abc"], [-8 * LN2, -4 * LN2])
    assert gold_scores(b) == pytest.approx((-4 * LN2, 1.0), rel=1e-12)
    # a context's trailing space is scored as part of the continuation: " y" is 2 bytes
    c = _mc(0, ["y", "z"], [-4 * LN2, -1.0], ctx="Q: b A: ")
    assert gold_scores(c) == pytest.approx((-4 * LN2, 2.0), rel=1e-12)
    # a string target names the choice; without the task object it is matched delimiter-stripped
    d = _mc("é", [" x", " é"], [-1.0, -6 * LN2])
    assert gold_scores(d) == pytest.approx((-6 * LN2, 2.0), rel=1e-12)
    # with the task: doc_to_choice; and a multiple_input task's gold is its context (doc_to_text)
    e = _mc("bb", [" a", " bb"], [-1.0, -3 * LN2], doc={"choices": ["a", "bb"]})
    assert gold_scores(e, FakeTask()) == pytest.approx((-3 * LN2, 1.0), rel=1e-12)
    f = {
        "doc": {"gold_context": 0},
        "target": "good",
        "filter": "none",
        "arguments": [("x is", " good"), ("y is", " good")],
        "resps": [[(-5 * LN2, False)], [(-1.0, True)]],
    }
    assert gold_scores(f, FakeTask(multiple_input=True)) == pytest.approx((-5 * LN2, 1.0), rel=1e-12)
    # no log-likelihood gold: a generation, a gold index out of range
    gen = {"doc": {}, "target": "abcd", "filter": "none", "arguments": [("Q:", {"until": ["\n"]})], "resps": [["abcd"]]}
    assert gold_scores(gen) is None and gold_scores(_mc(5, [" a", " b"], [-1.0, -2.0])) is None
    assert continuous_scores([gen, gen]) is None
    # a task's means over documents, each document once (a second filter logs it again)
    dup = _mc(0, [" a", " b"], [-100.0, -1.0], filt="other")
    got = continuous_scores([a, b, c, dup, _mc(5, [" a"], [-1.0])])
    assert got == pytest.approx({"bpb": (1.0 + 1.0 + 2.0) / 3, "logprob": -(3 + 4 + 4) * LN2 / 3, "n": 3}, rel=1e-12)


def _raw(results: dict, subtasks: dict, n: dict) -> dict:
    return {
        "results": results,
        "group_subtasks": subtasks,
        "n-shot": {t: 0 for t in n},
        "n-samples": {t: {"original": k, "effective": k} for t, k in n.items()},
    }


def test_group_and_domain_averages_by_hand():
    """A size-weighted group (as lm-eval weights mmlu's accuracy), a multiple-choice task, and a generation
    task: the generation task has no bpb and stays out of the bpb averages."""
    from eval.stage import format_table, log_entry, summarise
    from tikmix.config import EvalConfig

    raw = _raw(
        {
            "grp": {"acc,none": 0.5},
            "l1": {"acc,none": 0.4},
            "l2": {"acc,none": 0.8},
            "mc": {"acc,none": 0.25, "acc_norm,none": 0.3},
            "gen": {"exact_match,none": 0.1},
        },
        {"grp": ["l1", "l2"]},
        {"l1": 3, "l2": 1, "mc": 4, "gen": 2},
    )
    cont = {
        "l1": {"bpb": 1.0, "logprob": -1.0, "n": 3},
        "l2": {"bpb": 3.0, "logprob": -5.0, "n": 1},
        "mc": {"bpb": 0.5, "logprob": -2.0, "n": 4},
        "gen": None,
    }
    cfg = EvalConfig(name="test", metric={"grp": "acc", "mc": "acc_norm"}, limit=None)
    e = summarise(raw, cfg, ["grp", "gen", "mc"], {}, ["grp", "gen"], ["mc"], cont, {"grp": {"acc": True}})
    t = e["tasks"]
    assert t["grp"]["bpb"] == pytest.approx((3 * 1.0 + 1 * 3.0) / 4) and t["grp"]["logprob"] == pytest.approx(-2.0)
    assert t["mc"]["bpb"] == 0.5 and t["gen"]["bpb"] is None and t["gen"]["logprob"] is None
    assert e["in_domain_bpb"] == pytest.approx(1.5) and e["out_of_domain_bpb"] == 0.5
    assert e["average_bpb"] == pytest.approx(1.0) and e["average_logprob"] == pytest.approx(-2.0)
    assert e["in_domain_avg"] == pytest.approx((50 + 10) / 2)  # accuracy averages keep the generation task
    unweighted = summarise(raw, cfg, ["grp"], {}, ["grp"], [], cont, {"grp": {"acc": False}})
    assert unweighted["tasks"]["grp"]["bpb"] == pytest.approx(2.0)
    # console table: a bpb column, "—" for the generation task
    table = format_table(e).splitlines()
    assert table[0].split()[-1] == "bpb"
    assert table[1].split()[-1] == "1.500" and table[2].split()[-1] == "—" and table[-1].split()[-1] == "1.000"
    # W&B: rows, scalars and summary values
    lg = FakeLogger()
    e["preset"] = "x"
    log_entry(lg, e, step=3)
    rows = {(r[0], r[2]): r[3] for r in lg.tables[0][2]}
    assert rows[("grp", "bpb")] == pytest.approx(1.5) and rows[("mc", "logprob")] == -2.0 and ("gen", "bpb") not in rows
    assert rows[("in_domain_avg", "bpb")] == pytest.approx(1.5) and rows[("average", "logprob")] == pytest.approx(-2.0)
    for vals in (lg.logs[0][0], lg.summaries[0]):
        assert vals["eval/grp/bpb"] == pytest.approx(1.5) and vals["eval/mc/logprob"] == -2.0
        assert vals["eval/out_of_domain_bpb"] == 0.5 and "eval/gen/bpb" not in vals


# ------------------------------------------------------------------------------- a user's task folder

USER_YAML = """task: my_colours
dataset_path: json
dataset_kwargs:
  data_files:
    train: {root}/train.jsonl
    test: {root}/test.jsonl
output_type: multiple_choice
training_split: train
test_split: test
doc_to_text: "Q: {{{{question}}}} A:"
doc_to_choice: "{{{{options}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
GEN_YAML = """task: my_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root}/train.jsonl
output_type: generate_until
test_split: test
doc_to_text: "Q: {{question}} A:"
doc_to_target: "{{options[label]}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 3
metric_list:
  - metric: exact_match
"""


@pytest.fixture(scope="module")
def user_tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("user_tasks")
    rows = [
        {
            "question": f"copy: {' '.join(s)} ->",
            "options": [" ".join(s), " ".join(reversed(s)), " ".join(sorted(s))],
            "label": i % 3,
        }
        for i, s in enumerate(
            ["abcd", "zqmk", "pqrs", "kmqz", "hgfe", "dcba", "mnop", "wxyz", "qwer", "asdf", "zxcv", "tyui"]
        )
    ]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[6:] + rows[:6]))
    (root / "my_colours.yaml").write_text(USER_YAML.format(root=root))
    grouped = root / "grouped"  # an mmlu-style group (leaves of 12 and 6 documents) and a generation task
    grouped.mkdir()
    short = USER_YAML.format(root=root).replace("task: my_colours", "task: my_short")
    (grouped / "my_short.yaml").write_text(short.replace(f"test: {root}/test.jsonl", f"test: {root}/train.jsonl"))
    (grouped / "my_group.yaml").write_text(
        "group: my_group\ntask: [my_colours, my_short]\naggregate_metric_list:\n"
        "  - metric: acc\n    weight_by_size: true\n"
    )
    (grouped / "my_gen.yaml").write_text(GEN_YAML.replace("{root}", str(root)))
    only_test = root / "only_test"
    only_test.mkdir()
    (only_test / "test_only_task.yaml").write_text(
        USER_YAML.format(root=root)
        .replace("task: my_colours", "task: test_only_task")
        .replace("training_split: train\n", "")
    )
    return root


def _manual_scores(model, tok, docs) -> tuple[float, float, float]:
    """What lm-eval should report, computed directly from the model: the accuracy (argmax over summed
    log-probs of ' ' + choice), and the gold continuation's mean log-prob and mean bits per byte."""
    from eval.targets import encode_pair

    hits, gold_logp, gold_bpb = 0, [], []
    model.eval()
    with torch.no_grad():
        for d in docs:
            scores = []
            for ch in d["options"]:
                c, a = encode_pair(tok, f"Q: {d['question']} A:", " " + ch)
                ids = torch.tensor([c + a])
                logp = torch.log_softmax(model(ids[:, :-1]).logits.float(), -1)[0]
                scores.append(sum(float(logp[len(c) - 1 + i, t]) for i, t in enumerate(a)))
            hits += int(max(range(len(scores)), key=scores.__getitem__) == d["label"])
            gold_logp.append(scores[d["label"]])
            gold_bpb.append(-scores[d["label"]] / math.log(2) / len((" " + d["options"][d["label"]]).encode("utf-8")))
    n = len(docs)
    return 100.0 * hits / n, sum(gold_logp) / n, sum(gold_bpb) / n


def test_user_task_folder_scored_unchanged(eval_run, trained, user_tasks):
    from eval.stage import evaluate

    rd, _, _ = eval_run
    model, tok = trained
    before = {p: p.read_bytes() for p in user_tasks.rglob("*") if p.is_file()}
    ecfg = compose(
        ["eval=custom", f"eval.include_path={user_tasks}", "eval.tasks=[my_colours]", "eval.in_domain=[my_colours]"]
    ).eval
    entry = evaluate(ecfg, model, tok, rd, quiet=True)
    t = entry["tasks"]["my_colours"]
    docs = [json.loads(l) for l in (user_tasks / "test.jsonl").read_text().splitlines()]
    assert t["metric"] == "acc" and t["n_samples"] == 12 and t["group"] == "in_domain"
    acc, logp, bpb = _manual_scores(model, tok, docs)
    assert t["value"] == pytest.approx(acc)
    assert t["logprob"] == pytest.approx(logp, abs=1e-3) and t["bpb"] == pytest.approx(bpb, abs=1e-4)
    assert entry["in_domain_bpb"] == t["bpb"] and entry["out_of_domain_bpb"] is None
    assert entry["in_domain_avg"] == t["value"] and entry["out_of_domain_avg"] is None
    assert {p: p.read_bytes() for p in user_tasks.rglob("*") if p.is_file()} == before  # used as it is


def test_group_bpb_weighted_like_its_accuracy_and_generation_has_none(eval_run, trained, user_tasks):
    from eval.stage import evaluate

    rd, _, _ = eval_run
    model, tok = trained
    base = ["eval=custom", f"eval.include_path={user_tasks}", "eval.bootstrap_iters=0"]
    leaves = evaluate(compose(base + ["eval.tasks=[my_colours,my_short]"]).eval, model, tok, rd, quiet=True)["tasks"]
    entry = evaluate(
        compose(base + ["eval.tasks=[my_group,my_gen]", "eval.in_domain=[my_group,my_gen]"]).eval,
        model,
        tok,
        rd,
        quiet=True,
    )
    g, gen = entry["tasks"]["my_group"], entry["tasks"]["my_gen"]
    assert g["subtasks"] == 2 and g["n_samples"] == 18
    a, b = leaves["my_colours"], leaves["my_short"]
    for k in ("bpb", "logprob"):  # weight_by_size: the leaves' means weighted by their documents (12 and 6)
        assert g[k] == pytest.approx((12 * a[k] + 6 * b[k]) / 18, rel=1e-9)
        assert g[k] != pytest.approx((a[k] + b[k]) / 2, rel=1e-6)
    assert gen["metric"] == "exact_match" and gen["n_samples"] == 6 and gen["bpb"] is None and gen["logprob"] is None
    assert entry["in_domain_bpb"] == g["bpb"] and entry["average_logprob"] == g["logprob"]
    assert entry["in_domain_avg"] == pytest.approx((g["value"] + gen["value"]) / 2)


# ----------------------------------------------------------------------------------------- targets


def test_benchmark_targets_answer_tokens_only_never_test(eval_run, trained, monkeypatch):
    from lm_eval.api.task import ConfigurableTask

    from eval.targets import benchmark_targets
    from tikmix.data.synthetic import task_examples

    rd, _, cfg = eval_run
    _, tok = trained

    def no_test(self):
        raise AssertionError("the test split was read")

    monkeypatch.setattr(ConfigurableTask, "test_docs", no_test)
    monkeypatch.setattr(ConfigurableTask, "eval_docs", property(lambda self: self.validation_docs()))
    out = benchmark_targets(["copy_complete", "arith_mc"], cfg.eval, tok, seq_len=64, n_tokens=400, micro_batch=4)
    assert list(out) == ["task/copy_complete", "task/arith_mc"]
    dev = {e["context"]: e["choices"][e["gold"]] for e in task_examples("copy_complete", "dev", 200, 0)}
    test = {e["context"] for e in task_examples("copy_complete", "test", 500, 0)}
    n_tok, seen = 0, 0
    for b in out["task/copy_complete"]:
        ids, labels = b["input_ids"], b["labels"]
        assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape and ids.shape[0] <= 4
        assert ids.shape[1] <= 64
        for r in range(ids.shape[0]):
            keep = labels[r] != -100
            assert torch.equal(labels[r][keep], ids[r][keep])  # unshifted: labels are the answer's own ids
            first = int(keep.nonzero()[0])
            last = int(keep.nonzero()[-1])
            assert keep[first : last + 1].all()  # one contiguous answer span
            assert (ids[r][last + 1 :] == tok.pad_token_id).all()  # right padding, masked
            context = tok.decode(ids[r][:first])
            answer = tok.decode(ids[r][keep])
            assert context in dev and context not in test
            assert answer == " " + dev[context]
            n_tok += last + 1
            seen += 1
    assert seen > 1 and n_tok <= 400
    with pytest.raises(ConfigError, match=r"targets.tasks: \['sorting'\] are out-of-domain"):
        benchmark_targets(["sorting"], cfg.eval, tok, 64, 400, 4)


def test_targets_refuse_a_task_with_only_its_test_split(trained, user_tasks):
    from eval.targets import benchmark_targets

    _, tok = trained
    ecfg = compose(["eval=custom", f"eval.include_path={user_tasks / 'only_test'}", "eval.tasks=[test_only_task]"]).eval
    with pytest.raises(
        ConfigError, match=r"targets.tasks: task 'test_only_task' has only its evaluation split \('test'\)"
    ):
        benchmark_targets(["test_only_task"], ecfg, tok, 64, 400, 4)
    ok = benchmark_targets(
        ["my_colours"], compose(["eval=custom", f"eval.include_path={user_tasks}"]).eval, tok, 64, 10_000, 4
    )
    rows = sum(b["input_ids"].shape[0] for b in ok["task/my_colours"])
    assert rows == 6  # the train split only (6 documents), never the 12 of the test split


# ------------------------------------------------------------------------------------ python -m eval


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        WANDB_MODE="disabled",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(REPO),
    )
    return subprocess.run(
        [sys.executable, "-m", "eval", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_python_m_eval_writes_beside_the_original_atomically(eval_run, tmp_path):
    rd, _, cfg = eval_run
    copy = tmp_path / "run"
    shutil.copytree(rd, copy, ignore=shutil.ignore_patterns("checkpoints"))
    before = json.loads((copy / "results.json").read_text())
    r = _cli(
        [
            str(copy),
            "eval=synthetic9",
            "eval.limit=10",
            "eval.tasks=[arith_mc,sorting]",
            f"data.cache_dir={cfg.data.cache_dir}",
        ],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "arith_mc" in r.stdout and "average" in r.stdout and "bpb" in r.stdout
    after = json.loads((copy / "results.json").read_text())
    (new,) = after["rescored"]
    assert new["tasks"]["arith_mc"]["bpb"] > 0 and new["average_bpb"] > 0
    assert new["limit"] == 10 and list(new["tasks"]) == ["arith_mc", "sorting"] and "eval.limit=10" in new["overrides"]
    for k, v in before.items():
        assert after[k] == v, k  # the run's own evaluation (results.json["eval"]) and everything else are kept
    assert "written beside the original as results.json['rescored'][0]" in r.stdout and "eval.limit=10" in r.stdout
    assert "results.json['eval'] (the run's own evaluation) is unchanged" in r.stdout
    assert not [p for p in copy.iterdir() if p.name.startswith(".results.json")]  # no temp file left
    # a second re-scoring is appended, the first kept
    from eval.__main__ import main

    assert (
        main(
            [
                str(copy),
                "eval=synthetic9",
                "eval.limit=4",
                "eval.tasks=[sorting]",
                f"data.cache_dir={cfg.data.cache_dir}",
            ]
        )
        == 0
    )
    again = json.loads((copy / "results.json").read_text())
    assert [e["limit"] for e in again["rescored"]] == [10, 4] and again["eval"] == before["eval"]


def test_python_m_eval_logs_into_the_runs_wandb_group(eval_run, tmp_path, monkeypatch):
    """With logger=wandb, a re-scoring is a W&B run beside the original: its project and group, job type rescore,
    its scores under rescore/ (never eval/, so a limited re-scoring cannot enter the group's eval charts)."""
    from eval.__main__ import main
    from tests.test_wandb_report import FakeTable

    rd, _, cfg = eval_run
    copy = tmp_path / "run"
    shutil.copytree(rd, copy, ignore=shutil.ignore_patterns("checkpoints"))
    res = json.loads((copy / "results.json").read_text())
    res["wandb"] = {
        "id": "orig01",
        "name": "fixed_s0-abcdef",
        "group": "multirun/2026-01-01/12-00-00",
        "project": "proj1",
        "entity": None,
        "tags": ["mixer:fixed", "model:tiny"],
    }
    (copy / "results.json").write_text(json.dumps(res))
    runs = []
    import types

    mod = types.ModuleType("wandb")

    def init(**kw):
        from tests.test_wandb_report import FakeRun

        runs.append(FakeRun(**kw))
        return runs[-1]

    mod.init, mod.Table, mod.Settings = init, FakeTable, (lambda **k: k)
    monkeypatch.setitem(sys.modules, "wandb", mod)
    assert (
        main(
            [
                str(copy),
                "eval=synthetic9",
                "eval.limit=4",
                "eval.tasks=[sorting]",
                "logger=wandb",
                f"data.cache_dir={cfg.data.cache_dir}",
            ]
        )
        == 0
    )
    (r,) = runs
    assert r.init["group"] == "multirun/2026-01-01/12-00-00" and r.init["project"] == "proj1"
    assert r.init["job_type"] == "rescore" and r.init["name"] == "fixed_s0-abcdef-rescore" and r.init["id"] is None
    assert r.init["config"]["rescore_of"]["id"] == "orig01" and "rescore" in r.init["tags"]
    keys = [k for _, d in r.logs for k in d] + list(r.summary)
    assert "rescore/sorting/acc_norm" in r.summary and "rescore/synthetic9" in keys
    assert not [k for k in keys if k.startswith("eval/")]
    after = json.loads((copy / "results.json").read_text())
    assert after["rescored"][-1]["wandb"]["group"] == "multirun/2026-01-01/12-00-00"
    assert (
        not (copy / "metrics.jsonl").exists()
        or (copy / "metrics.jsonl").read_text() == (rd / "metrics.jsonl").read_text()
    )


def test_python_m_eval_without_final_model_says_what_is_missing(eval_run, tmp_path):
    rd, _, _ = eval_run
    bare = tmp_path / "crashed_run"
    bare.mkdir()
    shutil.copy(rd / "config.yaml", bare / "config.yaml")
    r = _cli([str(bare), "eval.limit=5"], cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"run {bare} has no final model" in r.stderr and "final_model is missing" in r.stderr
    r = _cli([str(rd), "eval=nosuch"], cwd=tmp_path)
    assert r.returncode == 2 and "Could not find 'eval/nosuch'" in r.stderr and "Traceback" not in r.stderr
