"""RegMix: candidate generation, the regression on a planted mixing law, proxies through the trainer (cache,
compute charged), a proxy sweep with a crashed job, and the noise domain on the synthetic data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import compose
from tikmix.errors import ConfigError
from tikmix.ledger import Ledger
from tikmix.mixer import MixerContext, build_mixer
from tikmix.run import make_subrun, run

from baselines.regmix import choose_mixture, fit_mixing_law, generate_candidates, load_proxy_runs

# A small proxy so integration tests stay fast (the default is the paper's 1M proxy).
SMALL_PROXY = ["mixer.proxy_model.hidden_size=64", "mixer.proxy_model.intermediate_size=128", "mixer.proxy_model.num_heads=2",
               "mixer.proxy_model.num_kv_heads=2", "mixer.n_simulate=5000", "mixer.top_k=20", "mixer.lgbm.n_estimators=200",
               "mixer.proxy_budget.total_tokens=2048"]


@pytest.fixture(autouse=True)
def one_thread():
    # Two shared cores: torch's default intra-op threads thrash under contention (10x slower); one is faster.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def prepared_mixer(cfg):
    """The run's mixer after prepare() (its sub-runs really train), without training the main model."""
    from tikmix.data.shards import prepare_data
    from tikmix.sampler import check_budget

    shards = prepare_data(cfg.data)
    doms = list(shards.domains)
    b = cfg.budget
    steps = check_budget(b.total_tokens, b.seq_len, b.batch_size, b.micro_batch, cfg.model.max_position_embeddings)
    ledger = Ledger()
    ctx = MixerContext(domains=doms, train_tokens={d: len(shards.tokens(d, "train")) for d in doms}, total_steps=steps,
                       tokens_per_step=b.seq_len * b.batch_size, seq_len=b.seq_len, seed=cfg.seed,
                       run_subrun=make_subrun(cfg, ledger), charge=lambda f, what: ledger.charge_mixer(what, f))
    mixer = build_mixer(OmegaConf.to_container(cfg.mixer, resolve=True), doms, ctx)
    mixer.prepare()
    return mixer, ledger


# --------------------------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------------------------
def test_candidates_obey_caps_rounding_dedup():
    prior = np.array([0.5, 0.3, 0.15, 0.04, 0.01])  # the last two are capped at 15 p: 0.6 and 0.15
    W = generate_candidates(prior, 64, seed=3)
    assert W.shape == (64, 5)
    assert np.allclose(W.sum(1), 1.0, atol=1e-12) and np.all(W >= 0)
    cap = np.minimum(15 * prior, 1.0)
    assert np.all(W <= cap + 1e-3)  # the cap holds up to the final rounding renormalisation
    assert W[:, 4].max() > 0.01  # ... and the capped domain is still explored
    nz = W[W > 0]
    assert nz.min() >= 2e-4 * 0.99  # nothing below the minimum survives
    assert (W == 0).any()  # small strengths give sparse mixtures, and the tiny weights are zeroed
    # every row is a multiple of 2e-4 up to one common scale (the final renormalisation)
    for w in W:
        small = w[w > 0].min() / 2e-4
        scale = np.round(small) / small
        units = w * scale / 2e-4
        assert abs(scale - 1) < 0.01 and np.allclose(units, np.round(units), atol=1e-6)
    d = np.abs(W[:, None, :] - W[None, :, :]).sum(-1) + np.eye(len(W))
    assert d.min() > 1e-5  # deduplicated
    assert np.array_equal(W, generate_candidates(prior, 64, seed=3))  # a pure function of the seed
    assert not np.array_equal(W, generate_candidates(prior, 64, seed=4))


def test_planted_mixing_law_recovered():
    """A known law (a quadratic bowl around w*) plus 2% noise: LightGBM ranks held-out mixtures with ρ > 0.9,
    and the top-k average of its predictions lands near w*, better than any measured candidate."""
    prior = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
    w_star = np.array([0.35, 0.1, 0.3, 0.05, 0.2])

    def law(W):
        return (((W - w_star) ** 2) / prior).sum(-1)

    X = generate_candidates(prior, 256, seed=0)
    fx = law(X)
    y = fx + np.random.default_rng(0).normal(0, 0.02 * fx.std(), len(X))
    models, info = fit_mixing_law(X, y, seed=0)
    assert info["spearman_lightgbm"] > 0.9, info
    assert np.isfinite(info["spearman_linear"])  # reported beside it (a quadratic law is not linear)
    w, sinfo = choose_mixture(models["lightgbm"], prior, n_simulate=20_000, top_k=100, seed=0)
    assert abs(w.sum() - 1) < 1e-12 and sinfo["top_k"] == 100
    assert np.abs(w - w_star).sum() < 0.2, w
    assert law(w[None])[0] < fx.min()


def test_bad_config_names_the_field():
    ctx = MixerContext(domains=["a", "b"], train_tokens={"a": 10, "b": 30}, total_steps=10, tokens_per_step=64, seq_len=16, seed=0)
    with pytest.raises(ConfigError, match=r"mixer.regressor"):
        build_mixer({"name": "regmix", "regressor": "forest"}, ["a", "b"], ctx)
    with pytest.raises(ConfigError, match=r"mixer.n_candidate: unknown key"):
        build_mixer({"name": "regmix", "n_candidate": 5}, ["a", "b"], ctx)
    with pytest.raises(ConfigError, match=r"mixer.proxy_budget.tokens: unknown key"):
        build_mixer({"name": "regmix", "proxy_budget": {"tokens": 5}}, ["a", "b"], ctx)


# --------------------------------------------------------------------------------------------------------
# through the trainer
# --------------------------------------------------------------------------------------------------------
def test_regmix_end_to_end_cache_and_compute(make_cfg, tmp_path):
    """`mixer=regmix` on the smoke budget: 6 proxies train as sub-runs, their FLOPs land in
    results["compute"]["mixer/regmix_proxies"], the fit is reported; a second run reuses every proxy (no
    training) and still charges them; a changed proxy config trains new ones."""
    cfg = make_cfg("mixer=regmix", *SMALL_PROXY, run_dir=tmp_path / "a")
    res = run(cfg)
    on_disk = json.loads((tmp_path / "a" / "results.json").read_text())
    info = on_disk["mixer_info"]
    assert info["n_proxies_used"] == 6 and info["n_proxies_crashed"] == 0 and info["proxies"]["n_reused"] == 0
    assert "spearman_lightgbm" in info and "spearman_linear" in info
    c = on_disk["compute"]
    assert c["mixer/regmix_proxies"] == pytest.approx(info["proxies"]["flops"]) and c["mixer/regmix_proxies"] > 0
    assert c["mixer_total"] == pytest.approx(c["mixer/regmix_proxies"])
    w = np.array([on_disk["final_weights"][d] for d in on_disk["domains"]])
    assert abs(w.sum() - 1) < 1e-9 and np.allclose(w, [info["weights"][d] for d in on_disk["domains"]])
    assert len(on_disk["mixer_history"]) == 6  # one record per proxy: its weights and target loss

    again, led = prepared_mixer(make_cfg("mixer=regmix", *SMALL_PROXY, run_dir=tmp_path / "b"))
    assert again.info["proxies"]["n_reused"] == 6  # nothing retrained
    assert np.allclose(again.weights(0), w)
    assert led.summary()["mixer/regmix_proxies"] == pytest.approx(c["mixer/regmix_proxies"])

    changed, _ = prepared_mixer(make_cfg("mixer=regmix", *SMALL_PROXY, "mixer.proxy_trainer.lr=1e-3", run_dir=tmp_path / "c"))
    assert changed.info["proxies"]["n_reused"] == 0


def test_proxy_sweep_with_a_crashed_job(make_cfg, tmp_path):
    """The sweep config composes (one regmix_candidate job per index); `mixer.proxies=<sweep dir>` fits on the
    finished jobs, counts the crashed one, and charges the sweep's compute."""
    sweep = ["+sweep=regmix_proxies", "budget.total_tokens=2048",
             "model.hidden_size=64", "model.intermediate_size=128", "model.num_heads=2", "model.num_kv_heads=2"]
    d = tmp_path / "sweep"
    totals = []
    for i in range(4):
        cfg = make_cfg(*sweep, f"mixer.index={i}", run_dir=d / f"{i}_cand{i}_s0")
        assert cfg.mixer.name == "regmix_candidate" and cfg.trainer.schedule == "constant" and cfg.budget.name == "regmix-proxy"
        totals.append(run(cfg)["compute"]["total"])
    (d / "4_cand4_s0").mkdir()
    (d / "4_cand4_s0" / "config.yaml").write_text("crashed: true\n")  # started, never finished
    (d / "5_cand5_s0").mkdir()
    (d / "5_cand5_s0" / "error.json").write_text('{"error": "NonFiniteLoss: boom"}')  # a job that failed
    X, y, info = load_proxy_runs(str(d), json.loads((d / "0_cand0_s0" / "results.json").read_text())["domains"])
    assert X.shape[0] == 4 and info["n_unfinished"] == 2
    assert "NonFiniteLoss: boom" in [u["error"] for u in info["unfinished"]]

    m, led = prepared_mixer(make_cfg("mixer=regmix", f"mixer.proxies={d}", "mixer.n_simulate=2000", "mixer.top_k=10",
                                     "mixer.lgbm.n_estimators=100", run_dir=tmp_path / "main"))
    assert m.info["n_proxies_used"] == 4 and m.info["n_proxies_crashed"] == 2
    assert led.summary()["mixer/regmix_proxies"] == pytest.approx(sum(totals))
    # the sweep's candidate i is mixer=regmix's candidate i (same data, seed and generator keys)
    cand = json.loads((d / "2_cand2_s0" / "results.json").read_text())["final_weights"]
    W = build_mixer({"name": "regmix", "n_candidates": 16}, m.domains, m.ctx).candidates()
    assert np.allclose([cand[x] for x in m.domains], W[2])


@pytest.mark.slow  # 32 proxies: ~25 s of CPU (a minute or more on a shared 2-core machine)
def test_noise_domain_gets_less_than_stratified(make_cfg, tmp_path):
    """On the synthetic data the unlearnable `noise` domain ends below the stratified 1/6 when the target is what we
    want a model for (the other five domains' held-out text; noise is no benchmark's text). RegMix needs enough
    proxies that learned past the first few steps: 8-step smoke proxies, or 8-20 proxies of 16-24 steps, leave the
    regression too noisy (held-out rho 0-0.6) and noise at its prior share in some seeds. With 32 proxies of 32
    steps noise got 0.069, 0.065, 0.057, 0.128 for seeds 0-3 (rho 0.71-0.83)."""
    m, _ = prepared_mixer(make_cfg(
        "mixer=regmix", "targets.domains=[arith,facts,grammar,copy,boiler]", "mixer.n_candidates=32",
        "mixer.proxy_budget.total_tokens=32768", "mixer.proxy_model.hidden_size=64", "mixer.proxy_model.intermediate_size=128",
        "mixer.proxy_model.num_heads=2", "mixer.proxy_model.num_kv_heads=2", "mixer.n_simulate=20000", run_dir=tmp_path / "noise"))
    w = dict(zip(m.domains, m.weights(0)))
    assert m.info["n_proxies_used"] == 32
    assert w["noise"] < 1 / 6, w
