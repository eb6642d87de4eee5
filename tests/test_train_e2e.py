"""End-to-end runs of the real entry point on the smoke budget: results, resume (bad input: test_bad_inputs.py)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_until_crash
from tikmix.errors import CheckpointError
from tikmix.run import run


@pytest.fixture(scope="session")
def finished_run(smoke_overrides, tmp_path_factory):
    from tests.conftest import compose

    rd = tmp_path_factory.mktemp("full") / "run"
    cfg = compose(smoke_overrides + [f"run_dir={rd}", "trainer.ckpt_every=3", "trainer.eval_every=4"])
    res = run(cfg)
    return rd, res


def test_results_json_contract(finished_run):
    rd, res = finished_run
    on_disk = json.loads((rd / "results.json").read_text())
    for key in (
        "mixer",
        "seed",
        "domains",
        "final_weights",
        "weights_history",
        "val_loss",
        "tokens_seen",
        "compute",
        "wall_time_s",
    ):
        assert key in on_disk, key
    doms = on_disk["domains"]
    assert set(on_disk["final_weights"]) == set(doms) and abs(sum(on_disk["final_weights"].values()) - 1) < 1e-9
    assert on_disk["weights_history"][0]["step"] == 0
    assert sum(on_disk["tokens_seen"].values()) == 8192  # the smoke budget, exactly
    assert on_disk["compute"]["train"] > 0 and on_disk["compute"]["mixer_total"] == 0
    # per-domain validation losses differ (the domains are not interchangeable) and are finite
    vl = on_disk["val_loss"]
    assert len(set(round(v, 3) for v in vl.values())) > 1
    assert (rd / "config.yaml").exists() and (rd / "checkpoints" / "last.pt").exists()
    # the final model loads with transformers as it is
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(rd / "final_model")
    tok = AutoTokenizer.from_pretrained(rd / "final_model")
    assert m.config.vocab_size >= len(tok) and tok.pad_token is not None


def test_final_model_tokenizer_loads_in_transformers_4_and_5(finished_run):
    """transformers 5 records a trained tokenizer's class as TokenizersBackend, which 4.x (pyproject allows >= 4.46)
    cannot load; the saved config names PreTrainedTokenizerFast, which both have (final_model/ was loaded by
    4.46.3 and 5.24 when this was written), and the model's context as model_max_length."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    rd, res = finished_run
    conf = json.loads((rd / "final_model" / "tokenizer_config.json").read_text())
    assert conf["tokenizer_class"] == "PreTrainedTokenizerFast" and conf["model_max_length"] == 512  # tiny's context
    assert not {"is_local", "local_files_only"} & set(conf)  # how it was loaded, not what it is
    tok = PreTrainedTokenizerFast.from_pretrained(rd / "final_model")
    auto = AutoTokenizer.from_pretrained(rd / "final_model")
    assert tok("37 + 45 = 82.")["input_ids"] == auto("37 + 45 = 82.")["input_ids"] and tok.model_max_length == 512


def test_loss_falls(finished_run):
    rd, res = finished_run
    rows = [json.loads(l) for l in (rd / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss/mean"] for r in rows if "val_loss/mean" in r]
    assert val[-1] < val[0]


def test_resume_equals_uninterrupted(finished_run, make_cfg, tmp_path):
    rd_full, res_full = finished_run
    rd = tmp_path / "interrupted"
    cfg = make_cfg("trainer.ckpt_every=3", "trainer.eval_every=4", run_dir=rd)
    run_until_crash(cfg, 5)
    ck = torch.load(rd / "checkpoints" / "last.pt", weights_only=True)
    assert ck["step"] == 3 and not (rd / "results.json").exists()
    res = run(cfg)
    assert res["val_loss"] == res_full["val_loss"]  # bit-exact on CPU
    assert res["test_loss"] == res_full["test_loss"]
    a = torch.load(rd / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(rd_full / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a finished run dir is left alone
    before = (rd / "results.json").read_bytes()
    run(cfg)
    assert (rd / "results.json").read_bytes() == before


def test_checkpoint_of_other_config_is_refused_and_kept(make_cfg, tmp_path):
    rd = tmp_path / "r"
    run_until_crash(make_cfg("trainer.ckpt_every=2", run_dir=rd), 4)
    before = (rd / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(CheckpointError, match="different config"):
        run(make_cfg("trainer.ckpt_every=2", "trainer.lr=1e-4", run_dir=rd))
    assert (rd / "checkpoints" / "last.pt").read_bytes() == before


# Bad input (configs, mixtures, data files, task folders, checkpoints): tests/test_bad_inputs.py
