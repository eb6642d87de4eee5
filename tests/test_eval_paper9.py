"""eval=paper9: the nine benchmarks resolve in lm-eval's registry, their protocol is as documented, and a
missing hub dataset stops at once with a clear message. Everything short of the download.

Indexing lm-eval's built-in tasks takes ~10 s; it is done once per session (eval.tasks caches it).
"""

from __future__ import annotations

import time

import pytest

from eval import tasks as T
from eval.stage import evaluate
from tests.conftest import compose
from tikmix.errors import ConfigError, DataError

PAPER_IN = ["mmlu", "hellaswag", "arc_easy", "arc_challenge", "triviaqa"]
PAPER_OUT = ["piqa", "openbookqa", "boolq", "mathqa"]


@pytest.fixture(scope="module")
def paper_cfg():
    return compose(["eval=paper9"]).eval


@pytest.fixture(scope="module")
def registry(paper_cfg):
    return T.resolve(T.eval_config(paper_cfg), PAPER_IN + PAPER_OUT)


def test_paper9_protocol_is_explicit(paper_cfg):
    assert list(paper_cfg.tasks) == PAPER_IN + PAPER_OUT
    assert list(paper_cfg.in_domain) == PAPER_IN and list(paper_cfg.out_of_domain) == PAPER_OUT
    assert dict(paper_cfg.metric) == {
        "mmlu": "acc",
        "hellaswag": "acc_norm",
        "arc_easy": "acc_norm",
        "arc_challenge": "acc_norm",
        "triviaqa": "exact_match",
        "piqa": "acc_norm",
        "openbookqa": "acc_norm",
        "boolq": "acc",
        "mathqa": "acc_norm",
    }
    assert set(paper_cfg.num_fewshot) == set(PAPER_IN + PAPER_OUT)
    assert paper_cfg.num_fewshot.mmlu == 5 and paper_cfg.num_fewshot.hellaswag == 0


def test_paper9_names_resolve_and_metrics_exist(registry):
    from lm_eval.tasks._yaml_loader import load_yaml

    for name in PAPER_IN + PAPER_OUT:
        assert name in registry.task_index and name in registry.all_tasks, name
    assert registry.task_index["mmlu"].kind.name == "GROUP"
    # the configured headline metric is one the harness's task reports ("acc_norm where it has it")
    cfg = compose(["eval=paper9"]).eval
    for name in PAPER_IN[1:] + PAPER_OUT:  # mmlu is a group of 57 tasks: acc
        y = load_yaml(registry.task_index[name].yaml_path, resolve_func=False, recursive=True)
        metrics = [m["metric"] for m in y.get("metric_list", [])]
        assert cfg.metric[name] in metrics, (name, metrics)
        if name != "triviaqa" and name != "boolq":
            assert "acc_norm" in metrics, name


def test_unknown_task_lists_close_matches(registry, paper_cfg):
    cfg = T.eval_config(paper_cfg)
    with pytest.raises(
        ConfigError, match=r"eval.tasks: unknown lm-eval task\(s\) 'hellaswg' \(did you mean: hellaswag"
    ):
        T.resolve(cfg, ["hellaswg"])


def _tiny_model():
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<unk>", eos_token="<unk>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=2,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=1,
            num_key_value_heads=1,
            max_position_embeddings=32,
        )
    )
    return model, hf_tok


def _skip_if_cached(fragment: str) -> None:
    """These tests need the dataset to be absent from the local Hugging Face caches (as on CI)."""
    from pathlib import Path

    import datasets.config
    import huggingface_hub.constants as hc

    for root in (datasets.config.HF_DATASETS_CACHE, hc.HF_HUB_CACHE):
        if any(fragment in p.name.lower() for p in Path(root).glob("*")):
            pytest.skip(f"a local copy of {fragment} is cached in {root}")


def test_missing_hub_dataset_fails_fast_and_clearly(registry, paper_cfg, tmp_path):
    _skip_if_cached("mmlu")
    model, tok = _tiny_model()
    model.train()
    t0 = time.perf_counter()
    with pytest.raises(DataError) as ei:  # HF_DATASETS_OFFLINE=1 (conftest): the dataset is not cached here
        evaluate(paper_cfg, model, tok, tmp_path)
    msg = str(ei.value)
    assert time.perf_counter() - t0 < 10
    assert "eval task 'mmlu'" in msg and "needs Hugging Face hub access or a local copy" in msg
    assert "eval=synthetic9" in msg and "\n" not in msg
    assert model.training  # nothing touched the model


def test_unreachable_hub_without_offline_env_fails_fast(registry, paper_cfg, monkeypatch):
    """No offline variables set and no route to the hub: offline mode is switched on while the task
    loads, so the error comes at once instead of after a minute of retries."""
    _skip_if_cached("boolq")
    for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(T, "hub_reachable", lambda timeout=3.0: (False, "huggingface.co:443 unreachable (simulated)"))
    import datasets.config

    before = datasets.config.HF_HUB_OFFLINE
    t0 = time.perf_counter()
    with pytest.raises(
        DataError,
        match=r"eval task 'boolq'.*hub access or a local copy \(the hub is unreachable from here: huggingface.co:443 unreachable \(simulated\)\)",
    ):
        T.load_task(registry, "boolq", [])
    assert time.perf_counter() - t0 < 10
    assert datasets.config.HF_HUB_OFFLINE == before  # restored


def test_targets_refuse_out_of_domain_and_unknown_tasks(registry, paper_cfg):
    from eval.targets import benchmark_targets

    with pytest.raises(ConfigError, match=r"targets.tasks: \['piqa'\] are out-of-domain"):
        benchmark_targets(["hellaswag", "piqa"], paper_cfg, tokenizer=None, seq_len=64, n_tokens=100, micro_batch=2)
    with pytest.raises(
        ConfigError, match=r"targets.tasks: unknown lm-eval task\(s\) 'hellaswg' \(did you mean: hellaswag"
    ):
        benchmark_targets(["hellaswg"], paper_cfg, tokenizer=None, seq_len=64, n_tokens=100, micro_batch=2)
