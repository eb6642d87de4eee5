"""DGA / online DoGE (baselines/dga.py): the update rule, the alignment on planted domains (through the shared
tikmix.method.influence code), and end-to-end runs with the gradient passes charged to the ledger."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baselines.dga import DGA, dga_update, doge_scores, doge_update
from tests.conftest import run_until_crash
from tests.probes import StubProbe
from tikmix.errors import ConfigError
from tikmix.method.influence import gradient_alignment
from tikmix.mixer import MixerContext, build_mixer
from tikmix.mixer_helpers import take_tokens
from tikmix.run import run
from tikmix.trainer import Trainer


def test_update_rule():
    a0 = np.array([0.25, 0.25, 0.5])
    g = np.array([2.0, -1.0, 0.5])
    w, a_hat = dga_update(a0, g, eta=1.0, ema=0.0, normalize="max_abs")
    e = a0 * np.exp(g / 2.0)
    assert np.allclose(a_hat, g / 2) and np.allclose(w, e / e.sum())
    w, _ = dga_update(a0, g, eta=0.3, ema=0.0, normalize="none")
    e = a0 * np.exp(0.3 * g)
    assert np.allclose(w, e / e.sum())
    w_ema, _ = dga_update(a0, g, eta=0.3, ema=0.5, normalize="none")
    assert np.allclose(w_ema, 0.5 * a0 + 0.5 * e / e.sum()) and abs(w_ema.sum() - 1) < 1e-12
    assert np.allclose(dga_update(a0, np.zeros(3), 1.0, 0.5, "max_abs")[0], a0)  # no signal: no change
    big, _ = dga_update(np.full(4, 0.25), np.array([1e6, 0, 0, -1e6]), eta=5.0, ema=0.0, normalize="none")
    assert np.all(np.isfinite(big)) and abs(big.sum() - 1) < 1e-12 and np.argmax(big) == 0


def test_doge_rule_by_hand_with_both_clips_active():
    """DoGE's step (Olivia-fsm/DoGE src/trainer.py update_domain_weights): every gradient clipped to norm 5,
    s_d = lr·Σ_v <ĝ_d, ĝ_v> / (mean_d ‖ĝ_d‖ + 1e-6), clipped to [0, 5·lr], α ← softmax(log α + s/μ)."""
    S = np.array([[3.0, 80.0, -2.0], [1.0, 0.0, 0.5]])  # [targets, domains], unclipped inner products
    dom_norms, tgt_norms, lr, mu = np.array([1.0, 10.0, 4.0]), np.array([8.0, 2.0]), 1e-3, 0.01
    cd = np.array([1.0, 5.0 / (10.0 + 1e-6), 1.0])  # domain 1 is clipped to norm 5
    cv = np.array([5.0 / (8.0 + 1e-6), 1.0])  # so is target 0
    a = np.array([3.0 * cv[0] + 1.0, 80.0 * cv[0] * cd[1], -2.0 * cv[0] + 0.5])  # Σ over targets (not the mean)
    raw = lr * a / ((1.0 + 10.0 * cd[1] + 4.0) / 3 + 1e-6)
    assert raw[1] > 5 * lr and raw[2] < 0  # both ends of the score clip bind
    s, got_raw = doge_scores(S, dom_norms, tgt_norms, lr, (0.0, 5.0), 5.0)
    assert np.allclose(got_raw, raw, rtol=1e-12, atol=0)
    assert np.allclose(s, [raw[0], 5 * lr, 0.0], rtol=1e-12, atol=0)
    alpha = np.array([0.5, 0.3, 0.2])
    e = alpha * np.exp(s / mu)
    assert np.allclose(doge_update(alpha, s, mu), e / e.sum(), rtol=1e-12, atol=0)
    s_off, _ = doge_scores(S, dom_norms, tgt_norms, lr, (0.0, 5.0), 0.0)  # grad_clip 0: no gradient clipping
    assert np.allclose(s_off[0], lr * 4.0 / (5.0 + 1e-6), rtol=1e-12)


def test_config_errors():
    c = MixerContext(
        domains=["a", "b"], train_tokens={"a": 1, "b": 1}, total_steps=10, tokens_per_step=8, seq_len=4, seed=0
    )
    for cfg, match in [
        ({"name": "dga", "ema": 1.0}, "mixer.ema"),
        ({"name": "dga", "normalize": "l2"}, "mixer.normalize"),
        ({"name": "dga", "update_every": 0}, "mixer.update_every"),
        ({"name": "dga", "params": "x"}, "mixer.params"),
        ({"name": "dga", "zz": 0}, "mixer.zz: unknown key"),
        ({"name": "dga", "rule": "x"}, "mixer.rule: one of"),
        ({"name": "dga", "mu": 0.01}, "mixer.mu: only used by rule 'doge'"),
        ({"name": "dga", "rule": "doge", "eta": 1.0}, "mixer.eta: only used by rule 'dga'"),
        ({"name": "dga", "rule": "doge", "mu": 0}, "mixer.mu: must be >"),
        ({"name": "dga", "rule": "doge", "score_clip": [5, 0]}, "mixer.score_clip"),
        ({"name": "dga", "rule": "doge", "score_clip": 5}, "mixer.score_clip"),
        ({"name": "dga", "rule": "doge", "grad_clip": -1}, "mixer.grad_clip"),
    ]:
        with pytest.raises(ConfigError, match=match):
            build_mixer(cfg, ["a", "b"], c)
    assert build_mixer({"name": "dga", "update_every": 4}, ["a", "b"], c).probe_steps() == [0, 4, 8]
    doge = build_mixer({"name": "dga", "rule": "doge"}, ["a", "b"], c)
    assert doge.probe_steps() == list(range(10)) and (doge.mu, doge.score_clip, doge.grad_clip) == (
        0.01,
        (0.0, 5.0),
        5.0,
    )
    with pytest.raises(ValueError, match="rule 'dga'"):
        doge.load_state_dict(build_mixer({"name": "dga"}, ["a", "b"], c).state_dict())


# --- planted domains on a tiny Llama ----------------------------------------------------------------------
V, SEQ = 64, 32
DOMS = ["count", "skip", "high", "noise"]


def seqs(kind: str, n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    s, t = rng.integers(0, 32, size=(n, 1)), np.arange(SEQ)[None]
    x = {
        "count": lambda: (s + t) % 32,
        "skip": lambda: (s + 3 * t) % 32,
        "high": lambda: 32 + (s + t) % 32,
        "noise": lambda: rng.integers(0, V, size=(n, SEQ)),
    }[kind]()
    return torch.as_tensor(x, dtype=torch.long)


class FakeProbe(StubProbe):
    def __init__(self, model, step=0, lr=2e-3):
        self.model, self.step, self.device, self.flops_per_token = model, step, torch.device("cpu"), 1000.0
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr)  # the doge rule reads lr_t from it
        self.targets = {"val/count": [{"input_ids": seqs("count", 8, 999), "labels": seqs("count", 8, 999)}]}
        self.domains, self.seq_len = list(DOMS), SEQ
        self.charged = []

    def domain_batches(self, d, n_tokens, split="train"):
        x = seqs(d, max(1, n_tokens // SEQ), 10 + DOMS.index(d) + 100 * self.step)
        return iter([{"input_ids": x, "labels": x}])

    def charge(self, flops, what):
        self.charged.append((what, flops))


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=V,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(15):
        x = torch.cat([seqs(d, 4, step * 10 + i) for i, d in enumerate(DOMS)])
        opt.zero_grad()
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
    model.zero_grad()
    return model


def test_alignment_on_planted_domains_uses_the_shared_influence_code(tiny_model):
    ctx = MixerContext(
        domains=DOMS, train_tokens={d: 1 for d in DOMS}, total_steps=10, tokens_per_step=8, seq_len=SEQ, seed=0
    )
    mx = DGA({"name": "dga", "tokens_per_domain": 256, "targets_tokens": None, "eta": 1.0, "ema": 0.0}, DOMS, ctx)
    probe = FakeProbe(tiny_model)
    mx.on_probe(probe)
    h = mx.history[0]
    a = np.array([h["a"][d] for d in DOMS])
    assert np.argmax(a) == 0 and a[0] > a[3]  # the target's own rule aligns best; noise does not help
    ref = gradient_alignment(tiny_model, probe.targets, {d: (lambda d=d: probe.domain_batches(d, 256)) for d in DOMS})
    assert np.allclose(a, ref.S.mean(0), rtol=1e-5, atol=1e-7)  # exactly TiKMiX's influence with H = I
    w = np.array([h["weights"][d] for d in DOMS])
    e = 0.25 * np.exp(a / np.abs(a).max())
    assert np.allclose(w, e / e.sum()) and np.argmax(w) == 0
    ((what, flops),) = probe.charged
    tokens = 4 * 256 + 8 * SEQ  # the four domain samples + the target, forward+backward each
    assert (
        what == "dga_gradients"
        and flops == pytest.approx(h["flops"])
        and tokens * 1000.0 <= flops <= tokens * 1000.0 * 1.5
    )
    assert mx.info["gradient_flops"] == flops and mx.info["updates"] == 1
    assert all(p.grad is None for p in tiny_model.parameters())  # no gradient left behind for the optimiser


def flat_clipped_grad(model, x, max_norm):
    """DoGE's procedure by hand: backward of the mean token loss, clip_grad_norm_, flatten."""
    model.zero_grad()
    model(input_ids=x, labels=x).loss.backward()
    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
    g = torch.cat([p.grad.detach().flatten().double() for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    return g, norm


def test_doge_rule_on_planted_domains_matches_doge_computed_by_hand(tiny_model):
    """The doge rule through the shared alignment code equals DoGE's procedure written out with torch (clip each
    gradient in place, inner products, mean clipped norm), with the gradient clip binding on every domain."""
    ctx = MixerContext(
        domains=DOMS, train_tokens={d: 1 for d in DOMS}, total_steps=10, tokens_per_step=8, seq_len=SEQ, seed=0
    )
    norms = [flat_clipped_grad(tiny_model, seqs(d, 8, 10 + i), 1e9)[1] for i, d in enumerate(DOMS)]
    clip = 0.5 * min(norms)  # planted: every domain (and the target) gradient is clipped
    mx = DGA(
        {"name": "dga", "rule": "doge", "grad_clip": clip, "tokens_per_domain": 256, "targets_tokens": None}, DOMS, ctx
    )
    probe = FakeProbe(tiny_model, lr=2e-3)
    mx.on_probe(probe)
    tx = probe.targets["val/count"][0]["input_ids"]
    gv, nv = flat_clipped_grad(tiny_model, tx, clip)
    gd = [flat_clipped_grad(tiny_model, seqs(d, 8, 10 + i), clip) for i, d in enumerate(DOMS)]
    assert nv > clip and all(n > clip for _, n in gd)
    a = np.array([float(g @ gv) for g, _ in gd])
    mean_norm = float(np.mean([float(g.norm()) for g, _ in gd]))
    s = np.clip(2e-3 * a / (mean_norm + 1e-6), 0.0, 5 * 2e-3)
    e = 0.25 * np.exp(s / 0.01)
    h = mx.history[0]
    assert h["lr"] == 2e-3 and np.allclose([h["a_step"][d] for d in DOMS], s, rtol=1e-4, atol=1e-12)
    assert np.allclose([h["weights"][d] for d in DOMS], e / e.sum(), rtol=1e-4, atol=1e-9)
    assert np.argmax(s) == 0 and s[3] < s[0]  # the target's own rule aligns best; noise does not help


# --- end to end --------------------------------------------------------------------------------------------
# targets come in micro-batches of 8 x 64 = 512 tokens (take_tokens keeps whole batches)
DGA_E2E = [
    "mixer=dga",
    "mixer.update_every=2",
    "mixer.tokens_per_domain=256",
    "mixer.targets_tokens=512",
    "trainer.ckpt_every=3",
    "trainer.save_final_model=false",
]


@pytest.fixture(scope="module")
def dga_run(smoke_overrides, tmp_path_factory):
    from tests.conftest import compose

    rd = tmp_path_factory.mktemp("dga") / "run"
    return rd, run(compose(smoke_overrides + [f"run_dir={rd}", *DGA_E2E]), quiet=True)


def test_e2e_updates_history_and_ledger(dga_run):
    rd, res = dga_run
    assert res["steps"] == 8 and sum(res["tokens_seen"].values()) == 8192
    hist, doms = res["mixer_history"], res["domains"]
    assert [h["step"] for h in hist] == [0, 2, 4, 6]
    c = res["compute"]
    assert c["mixer/dga_gradients"] == pytest.approx(sum(h["flops"] for h in hist)) == pytest.approx(c["mixer_total"])
    fpt = res["flops_per_token"]
    n_targets = len(doms)  # targets default to every domain's held-out text
    per_update = (len(doms) * 256 + n_targets * 512) * fpt
    assert 4 * per_update <= c["mixer/dga_gradients"] <= 4 * per_update * 1.05
    changes = [h["step"] for h in res["weights_history"]]
    assert set(changes) <= {0, 2, 4, 6}  # the mixture changes only at updates
    for h in hist:
        w = np.array([h["weights"][d] for d in doms])
        assert abs(w.sum() - 1) < 1e-12 and w.min() > 0
        a = np.array([h["a"][d] for d in doms])
        assert np.allclose(a, np.mean([[row[d] for d in doms] for row in h["alignment"].values()], axis=0))
    fw = np.array([res["final_weights"][d] for d in doms])
    assert np.allclose(fw, [hist[-1]["weights"][d] for d in doms])
    avg = res["mixer_info"]["average_weights"]
    assert abs(sum(avg.values()) - 1) < 1e-12


def test_e2e_resume_is_exact(dga_run, make_cfg, tmp_path, monkeypatch):
    rd_full, res_full = dga_run
    rd = tmp_path / "interrupted"
    cfg = make_cfg(*DGA_E2E, run_dir=rd)
    run_until_crash(cfg, 5, quiet=True)
    res = run(cfg, quiet=True)
    assert res["val_loss"] == res_full["val_loss"] and res["final_weights"] == res_full["final_weights"]
    assert [h["weights"] for h in res["mixer_history"]] == [h["weights"] for h in res_full["mixer_history"]]
    assert res["compute"] == res_full["compute"]


def test_e2e_doge_rule_updates_every_step_with_the_trainers_lr(make_cfg, tmp_path, monkeypatch):
    used = []
    orig = Trainer.train_step

    def rec(self, step, w):  # the learning rate and mixture of the step about to be taken
        used.append((self.optimizer.param_groups[0]["lr"], np.array(w)))
        return orig(self, step, w)

    monkeypatch.setattr(Trainer, "train_step", rec)
    res = run(
        make_cfg(
            "mixer=dga",
            "mixer.rule=doge",
            "mixer.tokens_per_domain=256",
            "mixer.targets_tokens=512",
            "trainer.save_final_model=false",
            run_dir=tmp_path / "doge",
        ),
        quiet=True,
    )
    hist, doms = res["mixer_history"], res["domains"]
    assert [h["step"] for h in hist] == list(range(res["steps"])) and res["mixer_info"]["rule"] == "doge"
    for h, (lr, w_used) in zip(hist, used):
        s = np.array([h["a_step"][d] for d in doms])
        raw = np.array([h["score_raw"][d] for d in doms])
        assert h["lr"] == lr and np.allclose(s, np.clip(raw, 0.0, 5 * lr), rtol=0, atol=1e-15)
        wb = np.array([h["weights_before"][d] for d in doms])
        e = wb * np.exp(s / 0.01)
        w = np.array([h["weights"][d] for d in doms])
        assert np.allclose(w, e / e.sum(), rtol=1e-12, atol=0) and np.array_equal(w, w_used)


def test_take_tokens_cuts_whole_rows():
    x = torch.arange(4 * 3 * 8).view(4, 3, 8)  # 4 batches of 3 rows x 8 tokens
    batches = [{"input_ids": b, "labels": b.clone()} for b in x]
    assert take_tokens(batches, None) == batches
    got = take_tokens(batches, 40)  # 5 rows: one full batch + 2 rows
    assert [b["input_ids"].shape[0] for b in got] == [3, 2] and torch.equal(got[1]["labels"], x[1][:2])
    assert sum(b["input_ids"].numel() for b in take_tokens(batches, 41)) == 48  # rounded up to a whole row
    # TiKMiX's take keeps the last batch whole (tikmix/method/mixers.py says why): the same batch objects, uncut
    whole = take_tokens(batches, 40, whole_batches=True)
    assert len(whole) == 2 and all(a is b for a, b in zip(whole, batches))
    assert take_tokens(batches, 48, whole_batches=True) == batches[:2]
