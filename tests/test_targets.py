"""``targets.loss``: what of a task target's answer is scored (eval/targets.py, tikmix/losses.py).

* ``answer`` builds exactly the batches the code before ``targets.loss`` built, and keeps old fingerprints;
* ``first_token`` labels the first answer token of each row and nothing else, on the same rows;
* ``margin`` makes one row per choice; its loss equals −(log p(gold) − max wrong log p) computed directly,
  follows the model's preference in sign, and has the direct computation's gradient;
* a value outside the allowed list, or ``margin`` on a task without choices, is one ConfigError naming
  ``targets.loss``.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from tests.conftest import compose, typed_cfg
from tikmix.errors import ConfigError
from tikmix.losses import IGNORE, batch_loss_sum, margin_loss_sum
from tikmix.mixer_helpers import take_tokens

TASKS = ["agreement", "fact_recall", "arith_mc"]


@pytest.fixture(scope="module")
def synth(smoke_overrides, tmp_path_factory):
    """(eval config of eval=synthetic9, the smoke corpus's tokenizer)."""
    from tikmix.data.shards import prepare_data

    cfg = compose(smoke_overrides + ["eval=synthetic9", f"run_dir={tmp_path_factory.mktemp('t') / 'run'}"])
    return cfg.eval, prepare_data(cfg.data).tokenizer


def _targets(synth, loss: str, tasks=TASKS, n_tokens: int = 600, micro_batch: int = 4, seq_len: int = 64):
    from eval.targets import benchmark_targets

    ecfg, tok = synth
    return benchmark_targets(tasks, ecfg, tok, seq_len, n_tokens, micro_batch, loss=loss)


def _old_benchmark_targets(names, eval_cfg, tokenizer, seq_len, n_tokens, micro_batch) -> dict[str, list[dict]]:
    """The rendering and batching of task targets as they were before ``targets.loss`` (git 215fb1e), kept
    here verbatim in substance: the default must build the very same batches."""
    from eval import tasks as T
    from eval.stage import _quiet
    from eval.targets import _docs_of, encode_pair, render

    cfg = T.eval_config(eval_cfg)
    out = {}
    with _quiet(cfg.log_level):
        tm = T.resolve(cfg, names, field="targets.tasks")
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        for name in names:
            loaded = T.load_task(tm, name, T.include_paths(cfg))
            objs = [loaded["groups"][name]] if name in loaded["groups"] else list(loaded["tasks"].values())
            rows, total = [], 0
            for leaf, doc in [p for obj in objs for p in _docs_of(obj, "targets.tasks")]:
                c, a = encode_pair(tokenizer, *render(leaf, doc))
                if not a or len(a) >= seq_len:
                    continue
                c = c[-(seq_len - len(a)) :]
                if rows and total + len(c) + len(a) > n_tokens:
                    break
                rows.append((c, a))
                total += len(c) + len(a)
            batches = []
            for i in range(0, len(rows), micro_batch):
                chunk = rows[i : i + micro_batch]
                T_ = max(len(c) + len(a) for c, a in chunk)
                ids = torch.full((len(chunk), T_), int(pad_id), dtype=torch.long)
                labels = torch.full((len(chunk), T_), -100, dtype=torch.long)
                for r, (c, a) in enumerate(chunk):
                    ids[r, : len(c) + len(a)] = torch.tensor(c + a, dtype=torch.long)
                    labels[r, len(c) : len(c) + len(a)] = torch.tensor(a, dtype=torch.long)
                batches.append({"input_ids": ids, "labels": labels})
            out[f"task/{name}"] = batches
    return out


def test_answer_batches_are_the_old_ones(synth):
    ecfg, tok = synth
    new = _targets(synth, "answer")
    old = _old_benchmark_targets(TASKS, ecfg, tok, 64, 600, 4)
    assert list(new) == list(old)
    for name in old:
        assert len(new[name]) == len(old[name]) > 1
        for a, b in zip(new[name], old[name]):
            assert set(a) == {"input_ids", "labels"}
            assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])


def test_first_token_labels_exactly_the_first_answer_token(synth):
    ans, first = _targets(synth, "answer"), _targets(synth, "first_token")
    multi = 0
    for name in ans:
        for a, f in zip(ans[name], first[name]):
            assert torch.equal(a["input_ids"], f["input_ids"])  # the same rows
            for r in range(a["labels"].shape[0]):
                span = (a["labels"][r] != IGNORE).nonzero().flatten()
                kept = (f["labels"][r] != IGNORE).nonzero().flatten()
                assert kept.tolist() == [int(span[0])]  # the answer's first token, nothing else
                assert f["labels"][r, kept[0]] == a["input_ids"][r, kept[0]]
                multi += len(span) > 1
    assert multi > 0  # some answers have more than one token: the two kinds differ


def test_margin_rows_are_every_choice_and_one_gold(synth):
    from tikmix.data.synthetic import task_examples, task_pool_size

    _, tok = synth
    out = _targets(synth, "margin")
    dev = {}
    for t in TASKS:  # the dev split as eval=synthetic9 writes it (a finite pool may hold fewer than n_dev)
        size = task_pool_size(t, "dev", 0, "v3")
        dev.update({e["context"]: e for e in task_examples(t, "dev", 200 if size is None else min(200, size), 0)})
    docs = 0
    for batches in out.values():
        for b in batches:
            assert b["input_ids"].shape[0] <= 4 and b["doc_index"].shape == b["is_gold"].shape == (len(b["labels"]),)
            for d in range(int(b["doc_index"].max()) + 1):
                rows = (b["doc_index"] == d).nonzero().flatten().tolist()
                assert rows == list(range(rows[0], rows[-1] + 1))  # contiguous
                ctx, conts, gold = set(), [], []
                for r in rows:
                    keep = b["labels"][r] != IGNORE
                    start = int(keep.nonzero()[0])
                    ctx.add(tok.decode(b["input_ids"][r][:start]))
                    conts.append(tok.decode(b["input_ids"][r][keep]))
                    gold.append(bool(b["is_gold"][r]))
                (context,) = ctx
                ex = dev[context]
                assert conts == [" " + c for c in ex["choices"]]
                assert gold.index(True) == ex["gold"] and sum(gold) == 1
                docs += 1
    assert docs > 3


class Unigram(nn.Module):
    """A 'language model' whose next-token distribution is softmax(bias) at every position: log p of a
    continuation is the sum of its tokens' log_softmax(bias)."""

    def __init__(self, vocab: int = 8):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, input_ids, use_cache=False, **_):
        return (self.bias.expand(*input_ids.shape, -1),)


def _toy_batch() -> dict:
    # doc 0: context [1], gold [5], wrong [6] and [7, 7]; doc 1: context [2, 3], wrong [4], gold [5, 6]
    rows = [([1], [5], True, 0), ([1], [6], False, 0), ([1], [7, 7], False, 0), ([2, 3], [4], False, 1)]
    rows.append(([2, 3], [5, 6], True, 1))
    T = max(len(c) + len(a) for c, a, _, _ in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    for r, (c, a, _, _) in enumerate(rows):
        ids[r, : len(c) + len(a)] = torch.tensor(c + a)
        labels[r, len(c) : len(c) + len(a)] = torch.tensor(a)
    return {
        "input_ids": ids,
        "labels": labels,
        "doc_index": torch.tensor([d for *_, d in rows]),
        "is_gold": torch.tensor([g for _, _, g, _ in rows]),
    }


def test_margin_sign_follows_the_models_preference():
    m, b = Unigram(), _toy_batch()
    with torch.no_grad():
        m.bias[:] = torch.tensor([0.0, 0, 0, 0, 0, 3, 2, 0])  # 5 first, then 6: both golds win
    loss, n_docs, n_in = batch_loss_sum(m, b)
    lp = torch.log_softmax(m.bias.detach(), -1)
    want = -((lp[5] - lp[6]) + ((lp[5] + lp[6]) - lp[4]))
    assert n_docs == 2 and n_in == b["input_ids"].numel()
    assert float(loss.detach()) < 0 and torch.allclose(loss.detach(), want)
    with torch.no_grad():
        m.bias[:] = torch.tensor([0.0, 0, 0, 0, 4, 0, 1, 3])  # 7 and 4 preferred: both golds lose
    loss, _, _ = batch_loss_sum(m, b)
    assert float(loss.detach()) > 0


def test_margin_equals_a_direct_computation_and_its_gradient(synth):
    from tikmix.model import build_model

    _, tok = synth
    torch.manual_seed(0)
    cfg = typed_cfg(compose(["model=tiny", "run_dir=/tmp"])).model
    model = build_model(cfg, len(tok), 0, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id).double()
    batches = _targets(synth, "margin", tasks=["fact_recall", "agreement"], n_tokens=200)
    for b in (b for bs in batches.values() for b in bs):
        model.zero_grad()
        loss, n_docs, _ = batch_loss_sum(model, b)
        loss.backward()
        got = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        want = 0.0
        for d in range(n_docs):
            lps, golds = [], []
            for r in (b["doc_index"] == d).nonzero().flatten().tolist():
                logp = torch.log_softmax(model(b["input_ids"][r : r + 1]).logits[0], -1)
                pos = (b["labels"][r] != IGNORE).nonzero().flatten()
                lps.append(sum(logp[p - 1, b["labels"][r, p]] for p in pos.tolist()))
                golds.append(bool(b["is_gold"][r]))
            gold = lps[golds.index(True)]
            want = want - (gold - torch.stack([x for x, g in zip(lps, golds) if not g]).max())
        want.backward()
        assert n_docs == int(b["doc_index"].max()) + 1
        assert torch.allclose(loss, want, atol=1e-9, rtol=1e-9)
        norms = [float(g.norm()) for g in got]
        assert all(torch.isfinite(g).all() for g in got) and max(norms) > 0  # the gradient flows
        for g, p in zip(got, model.parameters()):
            assert torch.allclose(g, p.grad, atol=1e-9, rtol=1e-7)


def test_a_margin_batch_is_cut_between_documents_only():
    b = _toy_batch()  # 5 rows of 4 tokens; documents are rows 0-2 and 3-4
    cut = take_tokens([b], 4)  # one row asked for: the whole first document
    assert cut[0]["input_ids"].shape[0] == 3 and cut[0]["doc_index"].tolist() == [0, 0, 0]
    loss, n_docs, _ = batch_loss_sum(Unigram(), cut[0])
    assert n_docs == 1 and torch.isfinite(loss)
    assert take_tokens([b], 13)[0]["input_ids"].shape[0] == 5
    bad = dict(b, is_gold=torch.zeros(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="exactly one gold row"):
        margin_loss_sum(Unigram(), bad["input_ids"], bad["labels"], bad["doc_index"], bad["is_gold"])


def test_targets_loss_is_checked_and_keeps_old_fingerprints(tmp_path):
    from tikmix.checkpoint import fingerprint
    from tikmix.config import validate

    def container(*ov):
        return OmegaConf.to_container(compose([f"run_dir={tmp_path}", *ov]), resolve=True)

    with pytest.raises(ConfigError, match=r"targets.loss: unknown 'tokens'; allowed: answer, first_token, margin"):
        validate(container("targets.loss=tokens"))
    assert validate(container("targets.loss=margin")).targets.loss == "margin"
    today = container()
    assert today["targets"]["loss"] == "answer"
    before = container()
    del before["targets"]["loss"]  # a run made before the key existed
    assert fingerprint(today) == fingerprint(before)
    assert fingerprint(container("targets.loss=margin")) != fingerprint(today)
    assert fingerprint(container("targets.loss=first_token")) != fingerprint(today)


GEN_TASK = """task: my_gen_dev
dataset_path: json
dataset_kwargs:
  data_files:
    train: {root}/rows.jsonl
    test: {root}/rows.jsonl
output_type: generate_until
training_split: train
test_split: test
doc_to_text: "Q: {{{{question}}}} A:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
metric_list:
  - metric: exact_match
"""


def test_margin_on_a_task_without_choices_is_one_config_error(synth, tmp_path):
    from eval.targets import benchmark_targets

    _, tok = synth
    (tmp_path / "rows.jsonl").write_text('{"question": "a b", "answer": "b a"}\n{"question": "c d", "answer": "d c"}\n')
    (tmp_path / "my_gen_dev.yaml").write_text(GEN_TASK.format(root=tmp_path))
    ecfg = compose(["eval=custom", f"eval.include_path={tmp_path}", "eval.tasks=[my_gen_dev]", "run_dir=/tmp"]).eval
    assert benchmark_targets(["my_gen_dev"], ecfg, tok, 64, 1000, 4, loss="first_token")  # answers: fine
    with pytest.raises(ConfigError, match=r"targets.loss: margin .* target task 'my_gen_dev' has none"):
        benchmark_targets(["my_gen_dev"], ecfg, tok, 64, 1000, 4, loss="margin")
    with pytest.raises(ConfigError, match=r"targets.loss: unknown 'x'"):
        benchmark_targets(["my_gen_dev"], ecfg, tok, 64, 1000, 4, loss="x")


def test_domain_text_targets_ignore_the_loss_kind(make_cfg):
    from eval.targets import build_targets
    from tikmix.data.shards import prepare_data

    cfg = make_cfg("targets.loss=margin", "targets.domains=[arith]", "targets.tasks=[]")
    shards = prepare_data(cfg.data)
    rc = typed_cfg(cfg)
    out = build_targets(rc.targets, rc.eval, shards, list(shards.domains), 64, rc.budget.micro_batch)
    assert list(out) == ["val/arith"]
    b = out["val/arith"][0]
    assert set(b) == {"input_ids", "labels"} and torch.equal(b["input_ids"], b["labels"])  # every token


@pytest.mark.parametrize(
    "mixer",
    [
        ["mixer=dga", "mixer.update_every=4", "mixer.tokens_per_domain=256", "mixer.targets_tokens=300"],
        [
            "mixer=aioli",
            "budget.total_tokens=16384",
            "mixer.k=1",
            "mixer.interval_steps=1",
            "mixer.rounds=1",
            "mixer.init_steps=0",
            "mixer.eval_tokens=300",
        ],
    ],
    ids=["dga", "aioli"],
)
def test_margin_targets_through_the_other_consumers(make_cfg, mixer):
    """DGA's alignment (its targets cut by take_tokens, between documents) and Aioli's target losses before and
    after each interval (mean negative margins) run on margin batches."""
    from tikmix.run import run

    extra = ["eval=synthetic9", "eval.limit=0.01", "targets.loss=margin", "trainer.save_final_model=false"]
    res = run(make_cfg(*mixer, *extra, "trainer.eval_every=0"), quiet=True)
    assert set(res["target_loss"]) == {
        f"task/{t}" for t in ("arith_mc", "fact_recall", "agreement", "copy_complete", "reverse_complete")
    }
    assert all(torch.isfinite(torch.tensor(v)) for v in res["target_loss"].values())
    assert abs(sum(res["final_weights"].values()) - 1) < 1e-9
    assert res["compute"][f"mixer/{'dga_gradients' if res['mixer'] == 'dga' else 'aioli_eval'}"] > 0
