"""ODM (baselines/odm.py): the EXP3 bandit's probabilities, reward updates, exact resume, and an end-to-end run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from baselines.odm import ODM, REWARD_UPDATES, exp3_probs, exploration_rate, probs, update_rewards
from tikmix.errors import ConfigError
from tikmix.mixer import DomainStats, MixerContext, build_mixer
from tikmix.run import run
from tikmix.sampler import mixture_counts

DOMS = ["a", "b", "c", "noise"]


def ctx(total_steps: int = 1000) -> MixerContext:
    return MixerContext(
        domains=DOMS,
        train_tokens={d: 10_000 for d in DOMS},
        total_steps=total_steps,
        tokens_per_step=64,
        seq_len=16,
        seed=0,
    )


def test_exploration_rate_formula():
    m = 6
    for t in (1, 2, 5, 10, 100, 10_000):
        assert exploration_rate(m, t) == min(1 / m, math.sqrt(math.log(m) / (m * t)))
    assert exploration_rate(m, 0) == exploration_rate(m, 1)


@pytest.mark.parametrize("seed", range(5))
def test_probabilities_on_simplex_above_floor_argmax_follows_reward(seed):
    rng = np.random.default_rng(seed)
    for m in (2, 4, 7):
        for t in (1, 2, 3, 10, 100, 5000, 10**6):
            R = rng.normal(0, 50, size=m) * rng.uniform(0, 3)
            pi = exp3_probs(R, t)
            eps = exploration_rate(m, t)
            assert abs(pi.sum() - 1) < 1e-12 and np.all(pi >= eps - 1e-15), (m, t, pi, eps)
            if t > 1 and (1 - m * eps) > 0 and np.ptp(R) > 0:
                assert np.argmax(pi) == np.argmax(R)
    assert np.allclose(exp3_probs(np.zeros(5), 1), 0.2)  # R̂ = 0 at the start: uniform


def stats(step, losses, counts):
    return DomainStats(
        step=step, counts=np.asarray(counts), loss=np.asarray(losses, dtype=np.float64), tokens=np.asarray(counts) * 16
    )


def test_ema_update_is_the_importance_weighted_ema_and_absent_domains_keep_theirs():
    mx = build_mixer({"name": "odm", "reward_update": "ema"}, DOMS, ctx())
    for step in range(3):
        pi = mx.weights(step)
        R0 = mx.R.copy()
        loss = [2.0, 3.0, np.nan, 6.0]
        mx.observe(stats(step, loss, [3, 3, 0, 2]))
        expect = R0.copy()
        for d in (0, 1, 3):
            expect[d] = 0.9 * R0[d] + 0.1 * loss[d] / pi[d]
        assert np.allclose(mx.R, expect, rtol=0, atol=1e-12) and mx.R[2] == 0.0


# Hand-computed against the release (alon-albalak/online-data-mixing@edbfdad, data_sampling_utils.py), m = 4,
# losses a=2, b=3, c absent, noise=6 every step. ε_t = 1/4 (π uniform) while ln 4/(4t) >= 1/16, i.e. t <= 5.
def test_accumulate_is_the_release_exp3_update_by_hand():
    """Exp3WeightUpdater.group_update: R̂_d += (L_d/10)/π_d with the π the batch was drawn with, then
    π = (1 − m ε_t)·softmax(ε_{t−1} R̂) + ε_t."""
    mx = build_mixer({"name": "odm", "reward_update": "accumulate"}, DOMS, ctx())
    loss, counts = [2.0, 3.0, np.nan, 6.0], [3, 3, 0, 2]
    for step in range(5):
        assert np.allclose(mx.weights(step), 0.25, rtol=0, atol=1e-15)
        mx.observe(stats(step, loss, counts))
        assert np.allclose(mx.R, (step + 1) * np.array([0.8, 1.2, 0.0, 2.4]), rtol=0, atol=1e-12)  # L/10/(1/4)
    R5 = mx.R.copy()
    e6, e5 = np.sqrt(np.log(4) / 24), 0.25
    z = np.exp(e5 * R5)
    pi6 = (1 - 4 * e6) * z / z.sum() + e6
    assert np.allclose(mx.weights(5), pi6, rtol=0, atol=1e-12)
    mx.observe(stats(5, loss, counts))
    R6 = R5 + np.array([0.2 / pi6[0], 0.3 / pi6[1], 0.0, 0.6 / pi6[3]])
    assert np.allclose(mx.R, R6, rtol=0, atol=1e-12) and mx.R[2] == 0.0


def test_smoothed_mean_is_the_release_group_update_by_hand():
    """SmoothedMeanWeightUpdater.group_update: R̂_d ← 0.9·R̂_d + 0.1·exp(L_d), no importance weight, and
    π = (1 − m ε_t)·R̂/ΣR̂ + ε_t (a linear normalisation: ε_{t−1} cancels)."""
    mx = build_mixer({"name": "odm"}, DOMS, ctx())
    assert mx.rule == "smoothed_mean" and np.allclose(mx.weights(0), 0.25)  # R̂ = 0: uniform
    loss, counts = [2.0, 3.0, np.nan, 6.0], [3, 3, 0, 2]
    R = np.zeros(4)
    for step in range(6):
        mx.observe(stats(step, loss, counts))
        R = np.array(
            [0.9 * R[0] + 0.1 * np.exp(2.0), 0.9 * R[1] + 0.1 * np.exp(3.0), 0.0, 0.9 * R[3] + 0.1 * np.exp(6.0)]
        )
        assert np.allclose(mx.R, R, rtol=1e-13, atol=0)
    e7 = np.sqrt(np.log(4) / 28)  # the first ε below 1/4
    assert np.allclose(mx.weights(6), (1 - 4 * e7) * R / R.sum() + e7, rtol=0, atol=1e-12)
    assert mx.weights(6)[2] == pytest.approx(e7)  # never observed: the floor only


def test_planted_stream_accumulate_holds_the_leading_arm_ema_drifts_to_uniform():
    """One arm always at twice the others' loss, every arm in every batch (the released code's mixed batches).
    accumulate settles at π_d ∝ L_d (0.4) and stays; the paper's EMA keeps R̂ = O(L/π) while ε_{t−1} shrinks,
    so softmax(ε_{t−1}·R̂) flattens back to uniform; smoothed_mean holds exp(L) / Σ exp(L) (0.71)."""
    L, present = np.array([2.0, 2.0, 2.0, 4.0]), np.ones(4, bool)
    top = {}
    for rule in REWARD_UPDATES:
        R, top[rule] = np.zeros(4), {}
        for s in range(20_000):
            pi = probs(rule, R, s + 1)
            R = update_rewards(rule, R, L, pi, present, 0.9)
            if s + 1 in (100, 1000, 20_000):
                top[rule][s + 1] = probs(rule, R, s + 2)[3]
    acc, ema, sm = top["accumulate"], top["ema"], top["smoothed_mean"]
    assert abs(acc[20_000] - 0.4) < 0.002 and abs(acc[20_000] - acc[1000]) < 0.005  # stable, ∝ loss
    assert ema[100] > 0.29 and ema[20_000] < 0.26 and ema[20_000] < ema[1000] < ema[100]  # drifts to 1/4
    e = np.exp(L)
    assert abs(sm[20_000] - e[3] / e.sum()) < 0.01 and sm[20_000] > sm[1000] > sm[100]


def test_observed_importance_uses_the_probability_of_appearing_in_the_batch():
    mx = build_mixer({"name": "odm", "reward_update": "ema", "importance": "observed"}, DOMS, ctx())
    pi = mx.weights(0)  # uniform 1/4, batch 8 -> every domain surely present: q = 1
    mx.observe(stats(0, [1.0, 1.0, 1.0, 1.0], [2, 2, 2, 2]))
    assert np.allclose(mx.R, 0.1) and np.allclose(pi, 0.25)


@pytest.mark.parametrize("rule", REWARD_UPDATES)
def test_bandit_favours_the_highest_loss_domain_and_resumes_exactly(rule):
    """Simulated training: three domains whose loss falls as they are trained on, one unlearnable (noise)."""

    def simulate(mx, steps, L, lo=0):
        for step in range(lo, lo + steps):
            w = mx.weights(step)
            c = mixture_counts(w, 16, np.random.default_rng(step))
            L[:3] -= 0.02 * c[:3] / 16 * L[:3]
            noisy = L + 0.05 * np.sin(step + np.arange(4))
            mx.observe(stats(step, np.where(c > 0, noisy, np.nan), c))
        return L

    a = ODM({"name": "odm", "reward_update": rule}, DOMS, ctx(400))
    L = simulate(a, 150, np.array([4.0, 4.0, 4.0, 6.0]))
    sd = json.loads(json.dumps(a.state_dict()))
    L_saved = L.copy()
    simulate(a, 250, L, lo=150)
    b = ODM({"name": "odm", "reward_update": rule}, DOMS, ctx(400))
    b.load_state_dict(sd)
    simulate(b, 250, L_saved, lo=150)
    assert np.array_equal(a.R, b.R) and a.history == b.history and np.array_equal(a.weights(400), b.weights(400))
    pi = a.weights(400)
    assert np.argmax(pi) == 3 == np.argmax(a.R)  # noise: highest loss, highest reward, most probability
    assert np.all(pi >= exploration_rate(4, 401) - 1e-15)
    assert a.info["steps_observed"] == 400 and len(a.history) == 41  # every 10 steps + the last


def test_steps_must_be_observed_in_order_and_config_is_checked():
    mx = build_mixer({"name": "odm"}, DOMS, ctx())
    mx.observe(stats(0, [1, 1, 1, 1], [1, 1, 1, 1]))
    with pytest.raises(RuntimeError, match="observed step 2 after 1"):
        mx.observe(stats(2, [1, 1, 1, 1], [1, 1, 1, 1]))
    for cfg, match in [
        ({"name": "odm", "smoothing": 1.5}, "mixer.smoothing"),
        ({"name": "odm", "reward_update": "ema", "importance": "x"}, "mixer.importance: one of"),
        ({"name": "odm", "reward_update": "sum"}, "mixer.reward_update: one of"),
        ({"name": "odm", "reward_update": "accumulate", "smoothing": 0.9}, "mixer.smoothing: not used"),
        ({"name": "odm", "importance": "pi"}, "mixer.importance: not used by reward_update 'smoothed_mean'"),
        ({"name": "odm", "typo": 1}, "mixer.typo: unknown key"),
    ]:
        with pytest.raises(ConfigError, match=match):
            build_mixer(cfg, DOMS, ctx())
    sd = build_mixer({"name": "odm", "reward_update": "ema"}, DOMS, ctx()).state_dict()
    with pytest.raises(ValueError, match="holds 'ema' rewards"):
        build_mixer({"name": "odm"}, DOMS, ctx()).load_state_dict(sd)


def test_e2e_64_steps(make_cfg, tmp_path, monkeypatch):
    from tikmix.trainer import Trainer

    used_w: list = []
    orig = Trainer.train_step

    def recording(self, step, w):  # the mixture the trainer actually trained on, every step
        used_w.append(np.array(w))
        return orig(self, step, w)

    monkeypatch.setattr(Trainer, "train_step", recording)
    # 64 steps: with m = 6, ε_t = 1/m (π exactly uniform) for t <= m·ln m ≈ 10.8, so the smoke budget's 8 steps
    # would show nothing.
    res = run(
        make_cfg(
            "mixer=odm",
            "mixer.history_every=1",
            "budget.total_tokens=32768",
            "budget.batch_size=8",
            "trainer.eval_every=0",
            "trainer.save_final_model=false",
            run_dir=tmp_path / "odm",
        ),
        quiet=True,
    )
    total, doms = res["steps"], res["domains"]
    assert total == 64 and sum(res["tokens_seen"].values()) == 32768  # ends at its token budget
    c = res["compute"]
    assert c["train"] > 0 and c["mixer_total"] == 0  # rewards come from the training forward pass: no extra passes
    hist = res["mixer_history"]
    assert [h["step"] for h in hist] == list(range(total))
    # results.json's weights_history thins a mixture that moves every step to one record per log_every steps
    assert len(res["weights_history"]) <= total // 10 + 2
    assert len(used_w) == total
    for h, u in zip(hist, used_w):
        w = np.array([h["weights"][d] for d in doms])
        assert np.array_equal(w, u)  # the trainer trained on exactly the bandit's π
        assert abs(w.sum() - 1) < 1e-12 and np.all(w >= h["eps"] - 1e-15)
    info = res["mixer_info"]
    fw = np.array([res["final_weights"][d] for d in doms])
    R = np.array([info["reward"][d] for d in doms])
    assert abs(fw.sum() - 1) < 1e-12 and info["steps_observed"] == total and np.argmax(fw) == np.argmax(R)
    # ODM rewards high loss: the unlearnable noise domain is up-weighted (see the module doc; not tuned away)
    assert res["final_weights"]["noise"] > 1 / len(doms)
