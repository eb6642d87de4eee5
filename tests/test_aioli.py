"""Aioli (baselines/aioli.py): LearnParams as a pure function, the schedule, the mixtures actually sampled, and
end-to-end runs of the real entry point (budget, ledger, resume across an exploration interval)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from baselines.aioli import (
    PUBLISHED,
    Aioli,
    aioli_schedule,
    eg_update,
    exploration_mixtures,
    exploration_order,
    learn_params,
    normalize_A,
)
from tests.conftest import run_until_crash
from tests.probes import StubProbe
from tikmix.errors import ConfigError
from tikmix.mixer import DomainStats, MixerContext, TargetLosses, build_mixer
from tikmix.run import run
from tikmix.sampler import MixtureSampler
from tikmix.trainer import Trainer


def ctx(m: int, total_steps: int = 200, seed: int = 0) -> MixerContext:
    doms = [f"d{i}" for i in range(m)]
    return MixerContext(
        domains=doms,
        train_tokens={d: 10_000 for d in doms},
        total_steps=total_steps,
        tokens_per_step=64,
        seq_len=16,
        seed=seed,
    )


def sampler(m: int, batch: int, seed: int = 0) -> MixtureSampler:
    return MixtureSampler([np.arange(100, dtype=np.int64)] * m, seq_len=4, batch_size=batch, seed=seed)


# --- exploration mixtures and per-batch counts ---------------------------------------------------------
@pytest.mark.parametrize("m", [2, 3, 4, 6, 7, 9])
@pytest.mark.parametrize("f", [0.5, 0.625, 0.75, 0.9, 1.0])
@pytest.mark.parametrize("batch", [1, 3, 8, 16, 33])
def test_exploration_mixtures_give_valid_counts_through_the_real_sampler(m, f, batch):
    if f <= 1.0 / m:
        with pytest.raises(ValueError, match="one_hot_weight"):
            exploration_mixtures(m, f)
        return
    P = exploration_mixtures(m, f)
    assert np.allclose(P.sum(1), 1) and np.all(P >= 0) and np.allclose(np.diag(P), f)
    assert abs(np.linalg.det(P)) > 1e-12  # the solve is well posed
    s = sampler(m, batch)
    for j in range(m):
        tot = np.zeros(m)
        for step in range(60):
            c = s.counts(step, P[j])
            assert c.dtype.kind == "i" and np.all(c >= 0) and c.sum() == batch, (m, f, batch, j, c)
            tot += c
        assert np.all(np.abs(tot / 60 - batch * P[j]) <= 1.0 + 1e-9)  # systematic sampling: within one row


def test_m7_one_hot_075_batch_8_the_public_code_defect():
    """The published code's counts went negative here; the sampler's never do (and follow P exactly in mean)."""
    P = exploration_mixtures(7, 0.75)
    s = sampler(7, 8)
    for j in range(7):
        cs = np.stack([s.counts(step, P[j]) for step in range(2000)])
        assert cs.min() >= 0 and np.all(cs.sum(1) == 8)
        assert np.allclose(cs.mean(0), 8 * P[j], atol=0.05)


def test_every_weight_the_mixer_asks_for_gives_valid_counts():
    m = 7
    mixer = build_mixer(
        {"name": "aioli", "k": 2, "interval_steps": 3, "rounds": 2}, [f"d{i}" for i in range(m)], ctx(m, 100)
    )
    s = sampler(m, 8)
    P = exploration_mixtures(m, 0.75)
    for step in range(100):
        w = mixer.weights(step)
        kind, ri, i = mixer.phase(step)
        if kind == "explore":
            assert np.array_equal(w, P[mixer._orders[ri][i]])
        c = s.counts(step, w)
        assert np.all(c >= 0) and c.sum() == 8


def test_exploration_order_is_k_permutations_and_deterministic():
    o = exploration_order(5, 3, seed=1, round_idx=2)
    assert len(o) == 15 and all(sorted(o[i * 5 : (i + 1) * 5]) == list(range(5)) for i in range(3))
    assert np.array_equal(o, exploration_order(5, 3, seed=1, round_idx=2))
    assert not np.array_equal(o, exploration_order(5, 3, seed=1, round_idx=3))


# --- LearnParams ----------------------------------------------------------------------------------------
def simulate_round(A: np.ndarray, P: np.ndarray, order: np.ndarray, noise: float = 0.0, seed: int = 0, L0: float = 5.0):
    """Loss model: an interval on mixture p lowers target i's loss by (A p)_i (+ noise)."""
    rng = np.random.default_rng(seed)
    L = [np.full(A.shape[0], L0)]
    for j in order:
        L.append(L[-1] - A @ P[j] + noise * rng.standard_normal(A.shape[0]))
    return np.stack(L)


@pytest.mark.parametrize("n,m,k,f", [(3, 3, 4, 0.5), (7, 7, 2, 0.75), (4, 2, 4, 0.625), (2, 5, 1, 1.0)])
def test_learn_params_recovers_a_planted_A(n, m, k, f):
    rng = np.random.default_rng(n * 100 + m)
    A = rng.normal(0.05, 0.05, size=(n, m))
    A[np.arange(min(n, m)), np.arange(min(n, m))] += 0.2  # training on group j helps target j most
    P = exploration_mixtures(m, f)
    order = exploration_order(m, k, seed=3, round_idx=0)
    beta, A_hat = learn_params(simulate_round(A, P, order), order, P, k)
    assert np.allclose(beta, A @ P.T, atol=1e-12)  # β_ij = (A p_j)_i
    assert np.allclose(A_hat, A, atol=1e-10)


def test_learn_params_with_noise_converges_with_more_sweeps():
    m, n, f = 4, 4, 0.75
    A = np.eye(n) * 0.3 + 0.05
    P = exploration_mixtures(m, f)
    errs = []
    for k in (1, 16):
        e = []
        for seed in range(20):
            order = exploration_order(m, k, seed=seed, round_idx=0)
            _, A_hat = learn_params(simulate_round(A, P, order, noise=0.02, seed=seed), order, P, k)
            e.append(np.abs(A_hat - A).max())
        errs.append(np.mean(e))
    assert errs[1] < errs[0] / 2.5  # ~1/sqrt(k)


def test_learn_params_refuses_an_unbalanced_order():
    P = exploration_mixtures(3, 0.75)
    with pytest.raises(ValueError, match="exactly k=2"):
        learn_params(np.zeros((7, 3)), [0, 1, 2, 0, 1, 1], P, 2)
    with pytest.raises(ValueError, match="K\\+1"):
        learn_params(np.zeros((6, 3)), [0, 1, 2, 0, 1, 2], P, 2)


def test_normalize_and_eg_update():
    A = np.array([[0.3, -0.1], [0.2, 0.0]])
    Ab = normalize_A(A)
    assert Ab.min() == 0 and abs(Ab.sum() - 1) < 1e-12 and np.allclose(Ab, (A + 0.1) / (A + 0.1).sum())
    pos = np.array([[1.0, 3.0]])
    assert np.allclose(normalize_A(pos), pos / 4)  # no shift when min >= 0
    assert np.array_equal(normalize_A(np.zeros((2, 2))), np.zeros((2, 2)))
    p = np.array([0.5, 0.3, 0.2, 0.0])
    B = np.array([[0.1, 0.0, 0.3, 0.5], [0.0, 0.1, 0.0, 0.0]])
    q = eg_update(p, B, eta=2.0)
    expect = p * np.exp(2.0 * B.sum(0))
    assert np.allclose(q, expect / expect.sum()) and q[3] == 0 and abs(q.sum() - 1) < 1e-12
    assert np.allclose(eg_update(p, B, 0.0), p)


# --- schedule --------------------------------------------------------------------------------------------
def test_schedule_spends_every_step_and_handles_remainders():
    rounds, I = aioli_schedule(103, init_steps=5, rounds=3, round_steps=None, m=3, k=2, interval_steps=2, delta=None)
    assert [(r.start, r.explore_end, r.end) for r in rounds] == [(5, 17, 37), (37, 49, 70), (70, 82, 103)] and I == 2
    rounds, _ = aioli_schedule(1000, 0, None, 300, m=2, k=4, interval_steps=4, delta=None)
    assert [r.end - r.start for r in rounds] == [333, 333, 334]  # floor(1000/300) = 3 rounds, remainder spread
    rounds, I = aioli_schedule(400, 0, 2, None, m=4, k=2, interval_steps=None, delta=0.5)
    assert I == 12 and rounds[0].explore_end - rounds[0].start == 96  # floor(0.5*200/8)
    with pytest.raises(ConfigError, match="mixer.interval_steps: LearnParams needs"):
        aioli_schedule(8, 0, None, 200, m=6, k=2, interval_steps=10, delta=None)
    with pytest.raises(ConfigError, match="mixer.init_steps"):
        aioli_schedule(8, 8, None, 200, m=2, k=1, interval_steps=1, delta=None)


def test_published_defaults_and_config_errors():
    m7 = build_mixer({"name": "aioli"}, [f"d{i}" for i in range(7)], ctx(7, 400))
    assert (m7.k, m7.interval_steps, m7.one_hot_weight, m7.eta, m7.ema) == (2, 10, 0.75, 1.0, 0.1)
    assert m7.info["rounds"] == 2 and m7.info["explore_steps_per_round"] == 140
    m2 = build_mixer({"name": "aioli"}, ["a", "b"], ctx(2, 500))
    assert (m2.k, m2.interval_steps, m2.one_hot_weight, m2.eta, m2.ema) == tuple(
        PUBLISHED[2][k] for k in ("k", "interval_steps", "one_hot_weight", "eta", "ema")
    )
    doms = ["a", "b", "c"]
    for cfg, match in [
        ({"name": "aioli", "nope": 1}, "mixer.nope: unknown key"),
        ({"name": "aioli", "one_hot_weight": 0.3}, "mixer.one_hot_weight: must be >"),
        ({"name": "aioli", "delta": 0.5, "interval_steps": 3}, "mixer.delta: give either"),
        ({"name": "aioli", "ema": 1.0}, "mixer.ema"),
        ({"name": "aioli", "k": 0}, "mixer.k: must be >= 1"),
        ({"name": "aioli", "init_weights": {"a": 0.5, "zz": 0.5}}, "mixer.init_weights: unknown domain"),
    ]:
        with pytest.raises(ConfigError, match=match):
            build_mixer(cfg, doms, ctx(3, 500))
    with pytest.raises(ConfigError, match="at least 2 domains"):
        build_mixer({"name": "aioli"}, ["a"], ctx(1, 500))


# --- the mixer's own loop with a planted loss model (no model, no trainer) --------------------------------
class FakeProbe(StubProbe):
    """Target losses from a planted loss model ``losses() -> (names, L)``; each pass costs 10 FLOPs, charged as asked."""

    def __init__(self, step, charged, losses):
        self.step, self._charged, self._losses = step, charged, losses

    def target_losses(self, n_tokens=None, charge_as=None):
        names, L = self._losses()
        self._charged.append((charge_as, 10.0))
        return TargetLosses(dict(zip(names, L.tolist())), flops=10.0)


def test_mixer_loop_recovers_planted_A_and_trains_on_the_rows_of_P():
    """Simulated trainer: each step on mixture w lowers target losses by A·w. Each round's A estimate must be
    interval_steps·A, and every step of interval i must have used exactly P[order[i]]."""
    m, n, I, total = 3, 3, 2, 90
    A = np.array([[0.30, 0.05, 0.00], [0.02, 0.20, 0.10], [0.00, 0.04, 0.25]])
    state = {"L": np.full(n, 6.0)}
    doms = ["a", "b", "c"]
    mixer = Aioli(
        {
            "name": "aioli",
            "k": 2,
            "interval_steps": I,
            "rounds": 3,
            "init_steps": 6,
            "init_weights": {"a": 0.2, "b": 0.8},
        },
        doms,
        ctx(3, total),
    )
    s = sampler(m, 8)
    probes, charged, used = set(mixer.probe_steps()), [], []
    for step in range(total):
        if step in probes:
            mixer.on_probe(FakeProbe(step, charged, lambda: (["t0", "t1", "t2"], state["L"].copy())))
        w = mixer.weights(step)
        used.append(w)
        state["L"] = state["L"] - A @ w
        c = s.counts(step, w)
        mixer.observe(DomainStats(step=step, counts=c, loss=np.ones(m), tokens=c * 4))
    assert [u.tolist() for u in used[:6]] == [[0.2, 0.8, 0.0]] * 6  # restricted phase
    assert len(mixer.history) == 3 and mixer.info["steps_observed"] == total
    for h in mixer.history:
        assert np.allclose(h["A"], I * A, atol=1e-9)
        P = np.asarray(h["P"])
        for (a, b), j, cnt in zip(h["intervals"], h["order_idx"], h["counts"]):
            for st in range(a, b):
                assert np.array_equal(used[st], P[j])  # exactly the rows stacked in the solve
            assert sum(cnt) == 8 * I and cnt[j] == max(cnt)
    # the most useful domain overall (largest column sum of A) is up-weighted
    assert np.argmax(list(mixer.history[-1]["weights"].values())) == np.argmax(A.sum(0))
    # one evaluation per boundary, charged to the mixer (K+1 per round, shared between intervals)
    assert len(charged) == 3 * (m * 2 + 1) and all(w == "aioli_eval" and f == 10.0 for w, f in charged)


@pytest.mark.parametrize("update,p0", [("anchored", "init"), ("cumulative", "init"), ("anchored", "uniform")])
def test_ema_of_A_and_the_update_base_by_hand_with_a_different_A_every_round(update, p0):
    """A different planted A each round (its columns rotate, so Ā changes shape, not just scale), ema = 0.3:
    Ā_t = (A_t − min)/sum, E_t = 0.7·Ā_t + 0.3·E_{t−1} (E_0 = Ā_0), p_t ∝ b·exp(η Σ_i E_t[i, :]) with b = p⁰
    (anchored) or p_{t−1} (cumulative; p_{−1} = p⁰), p⁰ = the restricted phase's mixture (init) or uniform."""
    m, I, eta, ema, init = 3, 2, 0.8, 0.3, np.array([0.6, 0.3, 0.1])
    base = np.array([[0.30, 0.05, -0.02], [0.02, 0.20, 0.10], [0.00, 0.04, 0.25]])
    A_rounds = [np.roll(base, r, axis=1) for r in range(3)]
    state = {"L": np.full(m, 6.0)}
    mixer = Aioli(
        {
            "name": "aioli",
            "k": 1,
            "interval_steps": I,
            "rounds": 3,
            "init_steps": 6,
            "eta": eta,
            "ema": ema,
            "update": update,
            "p0": p0,
            "init_weights": dict(zip("abc", init.tolist())),
        },
        ["a", "b", "c"],
        ctx(3, 90),
    )
    probes = set(mixer.probe_steps())
    for step in range(90):
        if step in probes:
            mixer.on_probe(FakeProbe(step, [], lambda: (["t0", "t1", "t2"], state["L"].copy())))
        r = max(0, mixer.phase(step)[1])
        state["L"] = state["L"] - A_rounds[r] @ mixer.weights(step)
        mixer.observe(DomainStats(step=step, counts=np.ones(m, np.int64), loss=np.ones(m), tokens=np.ones(m)))
    p_start = init if p0 == "init" else np.full(m, 1 / m)
    p_prev, E = p_start, None
    for r, h in enumerate(mixer.history):
        A = I * A_rounds[r]
        assert np.allclose(h["A"], A, atol=1e-10)  # each round's own A, not a stale one
        A_bar = (A - min(A.min(), 0.0)) / (A - min(A.min(), 0.0)).sum()
        E = A_bar if E is None else 0.7 * A_bar + 0.3 * E
        b = p_start if update == "anchored" else p_prev
        p = b * np.exp(eta * E.sum(axis=0))
        p /= p.sum()
        assert np.allclose(h["A_used"], E, atol=1e-10) and np.allclose(list(h["weights"].values()), p, atol=1e-10), (
            r,
            update,
            p0,
        )
        assert np.allclose(list(h["weights_before"].values()), p_prev, atol=1e-12)
        p_prev = p
    assert len(mixer.history) == 3


def test_state_dict_mid_round_resumes_exactly():
    L = {"v": np.array([5.0, 4.0])}
    cfg = {"name": "aioli", "k": 1, "interval_steps": 1, "rounds": 2}
    A = np.array([[0.2, 0.01], [0.03, 0.1]])

    def go(mixer, lo, hi):
        for step in range(lo, hi):
            if step in mixer.probe_steps():
                mixer.on_probe(FakeProbe(step, [], lambda: (["t0", "t1"], L["v"].copy())))
            w = mixer.weights(step)
            L["v"] = L["v"] - A @ w + 0.001 * np.sin(step)
            mixer.observe(DomainStats(step=step, counts=np.array([1, 1]), loss=np.ones(2), tokens=np.array([4, 4])))

    a = Aioli(cfg, ["x", "y"], ctx(2, 20))
    go(a, 0, 12)  # round 1 is [10, 20): its first interval is in progress
    sd = json.loads(json.dumps(a.state_dict()))
    L_saved = L["v"].copy()
    go(a, 12, 20)
    b = Aioli(cfg, ["x", "y"], ctx(2, 20))
    b.load_state_dict(sd)
    L["v"] = L_saved
    go(b, 12, 20)
    assert a.history == b.history and np.array_equal(a.weights(20), b.weights(20))


# --- end to end through the real entry point ---------------------------------------------------------------
# 48 steps of 8 x 64 tokens: restricted phase [0, 4), round 0 = [4, 26), round 1 = [26, 48), each exploring its
# first K·2 steps (K = m intervals of 2 steps: 20 steps for the ten-domain synthetic data).
TOTAL_TOKENS, STEPS = 24576, 48
AIOLI_E2E = [
    "mixer=aioli",
    f"budget.total_tokens={TOTAL_TOKENS}",
    "budget.batch_size=8",
    "mixer.k=1",
    "mixer.interval_steps=2",
    "mixer.rounds=2",
    "mixer.init_steps=4",
    "mixer.init_weights={arith: 0.5, copy: 0.5}",
    "mixer.eval_tokens=256",
    "trainer.eval_every=0",
    "trainer.ckpt_every=9",
    "trainer.save_final_model=false",
]


@pytest.fixture(scope="module")
def aioli_run(smoke_overrides, tmp_path_factory):
    from tests.conftest import compose

    rd = tmp_path_factory.mktemp("aioli") / "run"
    used = []
    orig = Trainer.train_step

    def rec(self, step, w):
        loss, stats = orig(self, step, w)
        used.append((step, np.array(w), np.asarray(stats.counts).copy()))
        return loss, stats

    mp = pytest.MonkeyPatch()
    mp.setattr(Trainer, "train_step", rec)
    try:
        res = run(compose(smoke_overrides + [f"run_dir={rd}", *AIOLI_E2E]), quiet=True)
    finally:
        mp.undo()
    return rd, res, used


def test_e2e_budget_steps_ledger_and_history(aioli_run):
    rd, res, used = aioli_run
    total = STEPS
    assert res["steps"] == total == len(used) and [u[0] for u in used] == list(range(total))
    assert (
        sum(res["tokens_seen"].values()) == TOTAL_TOKENS
    )  # exploration steps are steps of the budget: no extra tokens
    ck = torch.load(rd / "checkpoints" / "last.pt", weights_only=True)
    opt_steps = {int(s["step"]) for s in ck["optimizer"]["state"].values()}
    assert opt_steps == {total} and ck["step"] == total
    info, hist = res["mixer_info"], res["mixer_history"]
    assert info["steps_observed"] == total and info["rounds"] == 2 and len(hist) == 2
    # restricted phase
    doms = res["domains"]
    m = len(doms)
    init = [0.5 if d in ("arith", "copy") else 0.0 for d in doms]
    assert all(np.array_equal(w, init) for s, w, _ in used[:4])
    for h in hist:
        P = np.asarray(h["P"])
        assert len(h["losses"]) == m + 1 and np.asarray(h["A"]).shape == (m, m)  # targets: every domain's held-out text
        for (a, b), j, cnt in zip(h["intervals"], h["order_idx"], h["counts"]):
            ws = [w for s, w, _ in used[a:b]]
            assert all(np.array_equal(w, P[j]) for w in ws)  # the mixtures sampled are the rows of P
            assert np.array_equal(np.sum([c for s, _, c in used[a:b]], axis=0), cnt)
        # exploitation: the round's updated p is what is trained on
        p = np.array(list(h["weights"].values()))
        r_end = h["round_steps"][1]
        assert all(np.array_equal(w, p) for s, w, _ in used[h["explore_steps"][1] : r_end])
    fw = np.array(list(res["final_weights"].values()))
    assert abs(fw.sum() - 1) < 1e-12 and fw.min() > 0 and np.allclose(fw, list(hist[-1]["weights"].values()))
    c = res["compute"]
    assert c["mixer/aioli_eval"] > 0 and c["mixer_total"] == pytest.approx(c["mixer/aioli_eval"])
    assert info["eval_passes"] == 2 * (m + 1)  # K+1 boundary evaluations per round, shared between intervals
    assert c["mixer/aioli_eval"] == pytest.approx(info["eval_flops"])
    json.dumps(hist)  # JSON-able (it is in results.json)


def test_e2e_resume_across_an_exploration_interval(aioli_run, make_cfg, tmp_path, monkeypatch):
    rd_full, res_full, _ = aioli_run
    rd = tmp_path / "interrupted"
    cfg = make_cfg(*AIOLI_E2E, run_dir=rd)
    # 44 dynamic steps after init_steps=4 make rounds [4, 26) and [26, 48); round 1 explores in intervals [26, 28),
    # [28, 30), ...: the checkpoint at 36 holds the boundary measurements at 26, 28, ..., 34 and resumes mid-round
    run_until_crash(cfg, 38, quiet=True)
    ck = torch.load(rd / "checkpoints" / "last.pt", weights_only=True)
    assert ck["step"] == 36 and ck["mixer"]["acc"]["round"] == 1 and len(ck["mixer"]["acc"]["losses"]) == 5
    res = run(cfg, quiet=True)
    assert res["val_loss"] == res_full["val_loss"]  # bit-exact on CPU
    assert res["mixer_history"] == res_full["mixer_history"] and res["final_weights"] == res_full["final_weights"]
    assert res["compute"] == res_full["compute"]
