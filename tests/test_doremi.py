"""DoReMi: the Group DRO update, excess losses, reference + proxy through the trainer (cache, compute charged),
iterated rounds, the online variant (and its exact resume), and the noise domain on the synthetic data."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from baselines.doremi import DoReMiProxy, GroupDRO, dro_update, excess_loss
from tests.conftest import run_until_crash
from tests.test_regmix import one_thread, prepared_mixer  # noqa: F401  (the fixture applies here too)
from tikmix.errors import ConfigError
from tikmix.mixer import DomainStats, MixerContext, build_mixer
from tikmix.run import run
from tikmix.trainer import Trainer


# --------------------------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------------------------
def test_dro_update_moves_toward_the_high_excess_domain():
    a = np.full(4, 0.25)
    lam = np.array([0.0, 0.1, 0.0, 0.9])  # domain 3 is far worse than the reference
    b = dro_update(a, lam, eta=1.0, smoothing=1e-3)
    assert abs(b.sum() - 1) < 1e-12
    assert b[3] > 0.25 > b[0] and b[1] > b[0] and b[0] == pytest.approx(b[2])
    dro = GroupDRO(4, eta=1.0, smoothing=1e-3)
    for _ in range(50):
        dro.step(lam, np.ones(4, bool))
    assert dro.alpha.argmax() == 3 and dro.alpha[3] > 0.9
    assert dro.mean()[3] > 0.5 and abs(dro.mean().sum() - 1) < 1e-12  # ᾱ averages the α used at each step


@pytest.mark.parametrize("c", [1e-3, 0.1])
def test_smoothing_keeps_every_weight_at_least_c_over_m(c):
    m = 6
    dro = GroupDRO(m, eta=1.0, smoothing=c)
    rng = np.random.default_rng(0)
    for _ in range(300):
        lam = np.zeros(m)
        lam[0] = 50.0  # extreme excess loss on one domain: the rest would underflow without the floor
        lam[1:] = rng.uniform(0, 0.1, m - 1)
        a = dro.step(lam, rng.uniform(size=m) < 0.7)
        assert np.all(a >= c / m * (1 - 1e-12)) and abs(a.sum() - 1) < 1e-12
    assert np.all(dro.mean() >= c / m * (1 - 1e-12))


def test_absent_domain_keeps_its_score():
    dro = GroupDRO(3, eta=1.0, smoothing=0.0)
    dro.step(np.array([0.5, 0.2, 0.1]), np.array([True, True, True]))
    a1 = dro.alpha.copy()
    dro.step(np.array([0.0, 0.2, 0.1]), np.array([False, True, True]))  # domain 0 absent: its 0.5 stays
    assert dro.scores[0] == 0.5
    expected = a1 * np.exp([0.5, 0.2, 0.1])
    assert np.allclose(dro.alpha, expected / expected.sum())


def test_excess_loss_is_the_clipped_per_domain_token_mean():
    tl = torch.tensor([[2.0, 1.0], [3.0, 3.0], [1.0, 1.0]])
    ref = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.5, 0.5]])
    lam, present = excess_loss(tl, ref, np.array([0, 0, 2]), 4)
    # domain 0: rows 0-1, excess max(.,0) = [1, 0, 2, 1] -> mean 1.0; domain 2: [0, 0.5] -> 0.25
    assert np.allclose(lam, [1.0, 0.0, 0.25, 0.0]) and present.tolist() == [True, False, True, False]


class StubReference:
    """The reference model's interface: per-token losses and its vocabulary (no checkpoint)."""

    def __init__(self, ref_loss, vocab_size):
        self.ref_loss, self.vocab_size = ref_loss, vocab_size

    def token_losses(self, windows, device, autocast=None):
        return self.ref_loss

    def flops(self, n_tokens):
        return 0.0


@pytest.mark.parametrize("init_score", ["log_vocab", 0.0, 2.5])
def test_a_domain_before_its_first_batch_scores_log_vocab_like_the_public_code(init_score):
    """sangmichaelxie/doremi train.py: perdomain_scores = ones · log(len(tokenizer)); a domain absent from the
    first batch keeps that score and it enters the first update (init_score: a number overrides it)."""
    doms = ["a", "b", "c"]
    ctx = MixerContext(
        domains=doms, train_tokens={d: 1 for d in doms}, total_steps=10, tokens_per_step=8, seq_len=2, seed=0
    )
    mx = DoReMiProxy({"name": "doremi_proxy", "reference_run": "unused", "init_score": init_score}, doms, ctx)
    tl = torch.tensor([[2.0, 1.0], [3.0, 3.0], [1.0, 1.0]])
    mx.reference = StubReference(torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.5, 0.5]]), vocab_size=512)
    rows = np.array([0, 0, 1])  # domain c is not in the batch
    mx.observe(
        DomainStats(
            step=0,
            counts=np.array([2, 1, 0]),
            loss=np.array([2.25, 1.0, np.nan]),
            tokens=np.array([4, 2, 0]),
            windows=np.zeros((3, 3), np.int64),
            row_domains=rows,
            token_loss=tl,
        )
    )
    s_c = math.log(512) if init_score == "log_vocab" else init_score
    lam = np.array([1.0, 0.25, s_c])  # a: max(ℓ−ℓ_ref, 0) = [1, 0, 2, 1] -> 1; b: [0, 0.5] -> 0.25
    assert np.allclose(mx.dro.scores, lam, rtol=1e-12, atol=0)
    assert np.allclose(mx.loss_weights(1), dro_update(np.full(3, 1 / 3), lam, 1.0, 1e-3), rtol=1e-12, atol=0)
    if init_score == "log_vocab":
        assert mx.loss_weights(1)[2] > 0.98  # unseen: treated as maximally unlearned


def test_bad_config_names_the_field_init_score():
    ctx = MixerContext(
        domains=["a", "b"], train_tokens={"a": 10, "b": 30}, total_steps=10, tokens_per_step=64, seq_len=16, seed=0
    )
    for bad in ("log_v", float("nan"), True):
        with pytest.raises(ConfigError, match=r"mixer.init_score"):
            build_mixer({"name": "doremi", "init_score": bad}, ["a", "b"], ctx)


def test_bad_config_names_the_field():
    ctx = MixerContext(
        domains=["a", "b"], train_tokens={"a": 10, "b": 30}, total_steps=10, tokens_per_step=64, seq_len=16, seed=0
    )
    with pytest.raises(ConfigError, match=r"mixer.eta"):
        build_mixer({"name": "doremi", "eta": -1}, ["a", "b"], ctx)
    with pytest.raises(ConfigError, match=r"mixer.rounds"):
        build_mixer({"name": "doremi", "online": True, "rounds": 2}, ["a", "b"], ctx)
    with pytest.raises(ConfigError, match=r"mixer.reference_mixture"):
        build_mixer({"name": "doremi", "reference_mixture": "human"}, ["a", "b"], ctx)


# --------------------------------------------------------------------------------------------------------
# through the trainer
# --------------------------------------------------------------------------------------------------------
def test_doremi_end_to_end_cache_and_compute(make_cfg, tmp_path):
    run(make_cfg("mixer=doremi", run_dir=tmp_path / "a"))
    on_disk = json.loads((tmp_path / "a" / "results.json").read_text())
    c = on_disk["compute"]
    assert c["mixer/doremi_reference"] > 0 and c["mixer/doremi_proxy"] > 0
    assert c["mixer_total"] == pytest.approx(c["mixer/doremi_reference"] + c["mixer/doremi_proxy"])
    rec = on_disk["mixer_info"]["round_records"][0]
    # the proxy's compute includes the reference forward passes it made (charged inside the proxy run)
    assert rec["proxy_compute"]["mixer/doremi_reference_fwd"] > 0
    assert rec["proxy_compute"]["total"] == pytest.approx(c["mixer/doremi_proxy"])
    w = np.array([on_disk["final_weights"][d] for d in on_disk["domains"]])
    a_bar = np.array([on_disk["mixer_info"]["alpha_mean"][d] for d in on_disk["domains"]])
    assert np.allclose(w, a_bar) and abs(w.sum() - 1) < 1e-9 and np.all(w >= 1e-3 / 6)
    assert len(rec["alpha_trajectory"]) >= 2  # α over the proxy's steps, from its results.json
    assert on_disk["weights_history"] == [{"step": 0, "weights": on_disk["final_weights"]}]  # static main run

    again, _ = prepared_mixer(make_cfg("mixer=doremi", run_dir=tmp_path / "b"))
    r = again.info["round_records"][0]
    assert r["reference_reused"] and r["proxy_reused"] and np.allclose(again.weights(0), w)
    other, _ = prepared_mixer(make_cfg("mixer=doremi", "mixer.eta=0.1", run_dir=tmp_path / "c"))
    r = other.info["round_records"][0]
    assert r["reference_reused"] and not r["proxy_reused"]  # a new η: same reference, new proxy


def test_proxy_step_gradient_is_the_alpha_weighted_per_domain_loss(make_cfg, tmp_path, monkeypatch):
    """DoReMi's proxy objective through the real trainer: the gradient of one proxy step (grad_clip 0, so .grad
    is left as computed) equals the gradient of Σ_d α_d · (mean token loss of domain d), with α the DRO weights
    of that step, computed by hand on a copy of the pre-step model. η = 4 spreads α well away from uniform
    within a few steps, so ignoring α (the plain token mean) or using 1/α gives a different gradient."""
    import torch.nn.functional as F

    got = {}
    orig = Trainer.train_step

    def rec(self, step, w):
        if self.mixer.name != "doremi_proxy" or step != 3:  # the last of the proxy's 4 smoke steps
            return orig(self, step, w)
        alpha, before = self.mixer.dro.alpha.copy(), copy.deepcopy(self.model)
        out = orig(self, step, w)
        tokens, dom = self.sampler.batch(step, w)
        x = torch.from_numpy(tokens)
        logits = before(input_ids=x[:, :-1]).logits.float()
        tl = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none").view(
            len(x), -1
        )
        sum(float(alpha[d]) * tl[torch.from_numpy(dom == d)].mean() for d in np.unique(dom)).backward()
        got.update(
            alpha=alpha,
            grad=[p.grad.clone() for p in self.model.parameters()],
            hand=[p.grad for p in before.parameters()],
        )
        return out

    monkeypatch.setattr(Trainer, "train_step", rec)
    prepared_mixer(
        make_cfg("mixer=doremi", "mixer.eta=4.0", "mixer.proxy_trainer.grad_clip=0", run_dir=tmp_path / "obj")
    )
    alpha = got["alpha"]
    assert alpha.max() / alpha.min() > 1.5, alpha  # far from uniform: the objective's weights matter
    num = sum(float((g - h).norm() ** 2) for g, h in zip(got["grad"], got["hand"])) ** 0.5
    den = sum(float(h.norm() ** 2) for h in got["hand"]) ** 0.5
    assert num / den < 1e-4, num / den


def test_iterated_rounds_retrain_the_reference_on_the_last_weights(make_cfg, tmp_path):
    m, led = prepared_mixer(make_cfg("mixer=doremi", "mixer.rounds=2", "mixer.round_tol=0", run_dir=tmp_path / "r"))
    r1, r2 = m.info["round_records"]
    assert r2["reference_weights"] == pytest.approx(r1["alpha_mean"])
    assert r2["delta_inf"] is not None and np.allclose(m.weights(0), [r2["alpha_mean"][d] for d in m.domains])
    assert m.info["rounds"] == 2


def test_online_doremi_and_exact_resume(make_cfg, tmp_path, monkeypatch):
    """`mixer.online=true`: only the reference is trained first; the main run samples from α, which it updates
    every step from its own excess loss (charged as mixer/doremi_reference_fwd). A crash and resume gives the
    same α trajectory as an uninterrupted run."""
    args = ("mixer=doremi", "mixer.online=true", "trainer.ckpt_every=3", "trainer.log_every=2")
    full = run(make_cfg(*args, run_dir=tmp_path / "full"))
    c = full["compute"]
    assert c["mixer/doremi_reference"] > 0 and c["mixer/doremi_reference_fwd"] > 0 and "mixer/doremi_proxy" not in c
    assert len(full["weights_history"]) > 1  # the mixture moves during the run
    assert full["mixer_info"]["updates"] == full["steps"]
    assert all(x >= 1e-3 / 6 for x in full["final_weights"].values())

    run_until_crash(make_cfg(*args, run_dir=tmp_path / "resumed"), 5)
    res = run(make_cfg(*args, run_dir=tmp_path / "resumed"))
    assert res["weights_history"] == full["weights_history"]
    assert res["mixer_info"]["alpha_mean"] == full["mixer_info"]["alpha_mean"]
    assert res["val_loss"] == full["val_loss"]


def test_noise_domain_gets_less_than_stratified(make_cfg, tmp_path):
    """On the synthetic data the unlearnable `noise` domain ends well below the stratified 1/6: its excess loss over
    the reference is ~0 (neither model can learn it). 8 smoke steps are too few, so reference and proxy train 24
    steps here; checked for seeds 0 and 1 (noise 0.074 and 0.083)."""
    m, _ = prepared_mixer(
        make_cfg(
            "mixer=doremi",
            "budget.total_tokens=24576",
            "mixer.proxy_budget.tokens_frac=1.0",
            run_dir=tmp_path / "noise",
        )
    )
    w = dict(zip(m.domains, m.weights(0)))
    assert w["noise"] < 1 / 6, w
