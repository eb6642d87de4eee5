"""The one causal-LM loss and the one autocast policy (tikmix/losses.py), and the passes that use them."""

from __future__ import annotations

import contextlib

import pytest
import torch

from baselines.doremi import ReferenceModel
from tikmix.config import ModelConfig
from tikmix.errors import ConfigError
from tikmix.losses import amp_dtype_for, autocast, batch_loss_sum, causal_lm_loss
from tikmix.model import build_model

V, T = 97, 16


@pytest.fixture(scope="module")
def model():
    cfg = dict(
        hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64, max_position_embeddings=64
    )
    return build_model(ModelConfig(name="test", **cfg), V, seed=0).eval()


def windows(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (n, T + 1), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_a_window_and_a_labelled_batch_score_the_same_positions_alike(model):
    w = windows()
    per_token = causal_lm_loss(model, w[:, :-1], w)  # a training window: every input position scored
    assert per_token.shape == (4, T)
    labels = w[:, :-1].clone()
    labels[:, :6] = -100  # a target set's context: not scored
    loss, scored, inputs = batch_loss_sum(model, {"input_ids": w[:, :-1], "labels": labels})
    assert (scored, inputs) == (4 * (T - 6), 4 * T)
    # position t predicts token t+1 in both forms; the batch form scores labels[:, 6:] (positions 5..T-2)
    assert float(loss) == pytest.approx(float(per_token[:, 5 : T - 1].sum()), rel=1e-6)
    assert batch_loss_sum(model, {"input_ids": w[:, :-1]})[1] == 4 * (T - 1)  # no labels: the inputs, all scored


@pytest.mark.parametrize(
    "setting,device,expected",
    [
        ("auto", "cpu", None),
        ("fp32", "cpu", None),
        ("bf16", "cpu", torch.bfloat16),
        ("auto", "cuda", torch.bfloat16),
        ("fp32", "cuda", None),
        ("bf16", "cuda", torch.bfloat16),
    ],
)
def test_the_autocast_policy_follows_trainer_dtype(setting, device, expected):
    assert amp_dtype_for(setting, torch.device(device)) is expected


def test_an_unknown_dtype_names_the_field():
    with pytest.raises(ConfigError, match=r"trainer\.dtype.*allowed: auto, fp32, bf16"):
        amp_dtype_for("fp16", torch.device("cpu"))


@torch.no_grad()
def test_bf16_autocast_changes_the_forward_not_the_loss_dtype(model):
    w = windows()
    fp32 = causal_lm_loss(model, w[:, :-1], w)
    bf16 = causal_lm_loss(model, w[:, :-1], w, autocast=lambda: autocast(torch.device("cpu"), torch.bfloat16))
    assert bf16.dtype == torch.float32 and not torch.equal(fp32, bf16)
    assert torch.allclose(fp32, bf16, atol=0.1)


def test_doremi_reference_runs_under_the_runs_autocast(model):
    """The reference pass used to hard-code bf16 on CUDA whatever trainer.dtype said; it now takes the run's."""
    entered = []

    def recording():
        entered.append(1)
        return contextlib.nullcontext()

    ref = ReferenceModel("unused")
    ref.model, ref.seq_len = model, T
    w = windows(40).numpy()
    out = ref.token_losses(w, "cpu", recording, chunk=32)
    assert len(entered) == 2  # one forward per chunk of 32 windows, each inside the run's autocast
    with torch.no_grad():
        assert torch.allclose(out, causal_lm_loss(model, torch.from_numpy(w[:, :-1]), torch.from_numpy(w)), atol=1e-6)
