"""MFU against the device's peak, trainer.dtype=auto on a CPU, torch.compile (on / off / auto), and the GPU path
(bf16 autocast, SDPA, fused AdamW) on CPU."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import compose, run_until_crash
from tikmix import losses, perf
from tikmix import trainer as trainer_mod
from tikmix.checkpoint import fingerprint, fingerprint_config, load_checkpoint
from tikmix.errors import ConfigError
from tikmix.losses import amp_dtype_for
from tikmix.model import build_model, model_section
from tikmix.run import run
from tikmix.trainer import adamw_extra_kwargs, compile_decision, compile_module

# --- the peak ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, flops",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA H200 NVL", 835e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("NVIDIA A10", 125e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA GeForce RTX 4090", 165.2e12),
        # measured instead: no published dense bf16 figure for the part, or a fraction of a GPU
        ("NVIDIA A10G", None),
        ("NVIDIA L40S", None),
        ("NVIDIA GeForce RTX 4090 D", None),
        ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", None),
        ("Tesla T4", None),
    ],
)
def test_table_peak_by_device_name(name, flops):
    assert perf.table_peak(name) == flops


def test_resolve_peak_sources_and_ranks(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    p = perf.resolve_peak(None, cuda, torch.bfloat16, world=8, device_name="NVIDIA H100 80GB HBM3")
    assert (p.source, p.flops) == ("table", 8 * 989e12) and "x 8 ranks" in p.detail
    p = perf.resolve_peak(5e12, cuda, torch.bfloat16, world=2, device_name="NVIDIA H100 80GB HBM3")
    assert (p.source, p.flops) == ("config", 1e13)
    p = perf.resolve_peak("989e12", cpu, torch.float32)  # YAML reads 989e12 (no dot) as a string
    assert (p.source, p.flops) == ("config", 989e12)
    assert perf.resolve_peak(0, cuda, torch.bfloat16, device_name="NVIDIA H100 80GB HBM3") is None
    # the table holds bf16 tensor-core peaks: an fp32 run, an unknown GPU or a CPU is measured
    calls = []
    monkeypatch.setattr(perf, "_measured", lambda d, dt: calls.append((d.type, dt)) or (1e12, "fake"))
    assert perf.resolve_peak(None, cuda, torch.float32, world=2, device_name="NVIDIA H100 80GB HBM3").flops == 2e12
    assert perf.resolve_peak(None, cuda, torch.bfloat16, device_name="NVIDIA A10G").source == "measured"
    assert perf.resolve_peak(None, cpu, torch.float32).source == "measured"
    assert calls == [("cuda", torch.float32), ("cuda", torch.bfloat16), ("cpu", torch.float32)]


@pytest.mark.parametrize("bad", ["fast", -1, True, float("nan"), float("inf")])
def test_bad_peak_flops_names_the_key(bad):
    with pytest.raises(ConfigError) as e:
        perf.check_peak_setting(bad)
    assert e.value.field == "trainer.peak_flops"


def test_matmul_peak_is_measured_once_and_quickly():
    perf._MEASURED.clear()
    t0 = time.perf_counter()
    p = perf.resolve_peak(None, torch.device("cpu"), torch.float32)
    first = time.perf_counter() - t0
    assert p.source == "measured" and p.flops > 1e8 and "float32 matmul" in p.detail
    t0 = time.perf_counter()
    assert perf.resolve_peak(None, torch.device("cpu"), torch.float32) == p  # cached: sub-runs do not re-measure
    assert time.perf_counter() - t0 < 0.01
    assert first < 5.0  # ~0.4 s on an idle core; the bound only catches a measurement that grew by 10x


# --- MFU in a run --------------------------------------------------------------------------------------


def _metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_mfu_is_logged_per_interval_and_its_peak_is_in_results(make_cfg, tmp_path, capsys):
    rd = tmp_path / "auto"
    res = run(make_cfg("trainer.log_every=2", "trainer.save_final_model=false", run_dir=rd), quiet=True)
    out = capsys.readouterr().out
    m = res["mfu"]
    assert m["source"] == "measured" and m["peak_flops"] > 0 and "(measured: float32 matmul" in out
    recs = [r for r in _metrics(rd) if "train/loss" in r]
    assert len(recs) == m["intervals"] == 4
    for r in recs:  # mfu = training FLOPs/token x tokens/s / peak
        assert r["train/mfu"] == pytest.approx(
            res["flops_per_token"] * r["train/tokens_per_s"] / m["peak_flops"], rel=1e-9
        )
        assert 0 < r["train/mfu"] < 10
    assert m["mean"] == pytest.approx(sum(r["train/mfu"] for r in recs) / len(recs))

    rd = tmp_path / "off"
    res = run(
        make_cfg("trainer.log_every=2", "trainer.save_final_model=false", "trainer.peak_flops=0", run_dir=rd),
        quiet=True,
    )
    assert res["mfu"] == {"peak_flops": None, "source": "off", "mean": None}
    assert not any("train/mfu" in r for r in _metrics(rd))


# --- the GPU path, by construction ---------------------------------------------------------------------


def test_gpu_path_uses_bf16_autocast_sdpa_and_fused_adamw():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert amp_dtype_for("auto", cuda) is torch.bfloat16 and amp_dtype_for("auto", cpu) is None
    assert amp_dtype_for("bf16", cpu) is torch.bfloat16 and amp_dtype_for("fp32", cuda) is None
    with pytest.raises(ConfigError):
        amp_dtype_for("fp16", cuda)
    assert adamw_extra_kwargs(cuda) == {"fused": True} and adamw_extra_kwargs(cpu) == {}
    model = build_model(model_section(compose(["model=tiny"]).model), 512, 0)
    assert model.config._attn_implementation == "sdpa"


# --- torch.compile -------------------------------------------------------------------------------------


def test_compile_settings_are_checked():
    m = torch.nn.Linear(2, 2)
    assert compile_module(m, False, "nonsense") is m
    with pytest.raises(ConfigError) as e:
        compile_module(m, True, "fastest")
    assert e.value.field == "trainer.compile_mode"
    with pytest.raises(ConfigError) as e:
        compile_module(m, "yes", None)
    assert e.value.field == "trainer.compile"


def test_compile_failure_names_trainer_compile(make_cfg, monkeypatch):
    orig = torch.compile

    def failing_backend(gm, example_inputs):  # noqa: ARG001
        raise RuntimeError("simulated compiler failure")

    monkeypatch.setattr(torch, "compile", lambda module, mode=None: orig(module, backend=failing_backend))
    with pytest.raises(ConfigError) as e:
        run(make_cfg("trainer.compile=true"), quiet=True)
    assert e.value.field == "trainer.compile"
    assert "simulated compiler failure" in str(e.value) and "trainer.compile=false" in str(e.value)


@pytest.mark.slow  # inductor builds C++ kernels for forward and backward: ~35 s on a 2-core CPU
def test_compiled_run_matches_eager_and_its_checkpoint_resumes_uncompiled(make_cfg, tmp_path):
    # DGA probes every 2 steps: per-domain gradients through the plain module while training runs compiled
    extra = [
        "mixer=dga",
        "mixer.update_every=2",
        "mixer.tokens_per_domain=256",
        "mixer.targets_tokens=256",
        "trainer.log_every=1",
        "trainer.ckpt_every=2",
        "trainer.save_final_model=false",
    ]
    eager = run(make_cfg(*extra, run_dir=tmp_path / "eager"), quiet=True)
    rd = tmp_path / "compiled"
    run_until_crash(make_cfg(*extra, "trainer.compile=true", run_dir=rd), crash_at=5, quiet=True)
    ckpt = load_checkpoint(rd / "checkpoints" / "last.pt")
    ref = load_checkpoint(tmp_path / "eager" / "checkpoints" / "last.pt")
    assert ckpt["step"] == 4
    assert list(ckpt["model"]) == list(ref["model"]) and not any("_orig_mod" in k for k in ckpt["model"])
    le = {r["step"]: r["train/loss"] for r in _metrics(tmp_path / "eager") if "train/loss" in r}
    lc = {r["step"]: r["train/loss"] for r in _metrics(rd) if "train/loss" in r}
    assert sorted(lc) == [1, 2, 3, 4, 5]  # logged after steps 0..4; the crash came before step 5 trained
    for s in lc:
        assert lc[s] == pytest.approx(le[s], rel=1e-4), s

    res = run(make_cfg(*extra, "trainer.compile=false", run_dir=rd), quiet=True)  # resume, eager
    assert res["steps"] == eager["steps"]
    for d, v in eager["val_loss"].items():
        assert math.isclose(res["val_loss"][d], v, rel_tol=1e-3), d
    for d, w in eager["final_weights"].items():
        assert res["final_weights"][d] == pytest.approx(w, abs=1e-3), d


# --- trainer.dtype=auto on a CPU -----------------------------------------------------------------------

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("units", [True, False])
def test_auto_is_bf16_on_a_cpu_with_bf16_units_for_a_wide_enough_model(monkeypatch, units):
    monkeypatch.setattr(losses, "cpu_has_bf16", lambda: units)
    wide = losses.resolve_dtype("auto", CPU, hidden_size=384, cpu_bf16_min_hidden=256)
    assert wide.amp is (torch.bfloat16 if units else None)
    assert ("hidden_size 384 >= trainer.cpu_bf16_min_hidden 256" in wide.reason) is units
    at = losses.resolve_dtype("auto", CPU, hidden_size=256, cpu_bf16_min_hidden=256)  # the threshold is inclusive
    assert at.amp is (torch.bfloat16 if units else None)
    narrow = losses.resolve_dtype("auto", CPU, hidden_size=128, cpu_bf16_min_hidden=256)
    assert narrow.amp is None and narrow.name == "fp32"
    assert amp_dtype_for("auto", CPU) is None  # width unknown: fp32, as auto always was on a CPU
    # explicit settings and the GPU do not depend on the CPU or the width
    assert losses.resolve_dtype("fp32", CPU, 4096).amp is None
    assert losses.resolve_dtype("bf16", CPU, 8).amp is torch.bfloat16
    assert losses.resolve_dtype("auto", CUDA, 8).amp is torch.bfloat16
    assert wide.as_dict() == {"setting": "auto", "autocast": "bf16" if units else "fp32", "reason": wide.reason}


def test_the_bf16_probe_is_false_without_torchs_private_probes(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert losses.cpu_has_bf16() is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert losses.cpu_has_bf16() is True


# the fingerprints test_configs.py pins for these configs (with its PIN overrides)
PIN = ["data.cache_dir=.cache/tikmix", "run_dir=/tmp/rd", "data.synthetic.benchmark=v2"]


def _container(*overrides):
    return OmegaConf.to_container(compose([*overrides, *PIN]), resolve=True)


@pytest.mark.parametrize("units", [True, False])
def test_a_config_that_resolves_as_before_keeps_its_fingerprint(monkeypatch, units):
    monkeypatch.setattr(losses, "cpu_has_bf16", lambda: units)
    tiny = _container()  # model=tiny: hidden 128, below the threshold: fp32 as before
    assert fingerprint(fingerprint_config(tiny, CPU)) == "91ce3f20d6cdb738"
    big = _container("eval=paper9", "model=160m")  # auto on a GPU: bf16, as before
    assert fingerprint(fingerprint_config(big, CUDA)) == "6cd0143a386b8166"
    for dtype in ("fp32", "bf16"):  # explicit settings are what they were
        c = _container("model=20m", f"trainer.dtype={dtype}")
        assert fingerprint(fingerprint_config(c, CPU)) == fingerprint(c)
    # the threshold is not part of a run's identity while the dtype it resolves to stays the same
    moved = _container("trainer.cpu_bf16_min_hidden=100000")
    assert fingerprint(fingerprint_config(moved, CPU)) == "91ce3f20d6cdb738"


def test_auto_resolved_to_bf16_is_the_run_explicit_bf16_is(monkeypatch):
    monkeypatch.setattr(losses, "cpu_has_bf16", lambda: True)
    auto, bf16 = _container("eval=paper9", "model=160m"), _container("eval=paper9", "model=160m", "trainer.dtype=bf16")
    assert fingerprint(fingerprint_config(auto, CPU)) == fingerprint(fingerprint_config(bf16, CPU)) == fingerprint(bf16)
    assert fingerprint(fingerprint_config(auto, CPU)) != "6cd0143a386b8166"  # not the fp32 run auto was before
    assert fingerprint_config(auto, CPU)["trainer"]["dtype"] == "bf16" and auto["trainer"]["dtype"] == "auto"
    # a tiny model below a lowered threshold resolves to bf16 too, and is the explicit bf16 run
    low = _container("trainer.cpu_bf16_min_hidden=64")
    assert fingerprint(fingerprint_config(low, CPU)) == fingerprint(_container("trainer.dtype=bf16"))
    monkeypatch.setattr(losses, "cpu_has_bf16", lambda: False)
    assert fingerprint(fingerprint_config(auto, CPU)) == "6cd0143a386b8166"


def test_a_sub_run_key_follows_the_sub_runs_own_model(monkeypatch):
    """RegMix's proxy (hidden 256, whatever the parent's model) trains in bf16 on a CPU with bf16 units: its key is
    the explicit-bf16 proxy's; DoReMi's reference and proxy (the parent's tiny model) keep theirs."""
    import numpy as np

    import tikmix.run as run_mod
    from tests.test_configs import SUBRUNS
    from tikmix.ledger import Ledger
    from tikmix.mixer import MixerContext, build_mixer

    doms = ["arith", "facts", "grammar", "copy"]
    ctx = MixerContext(doms, {d: 10000 * (i + 1) for i, d in enumerate(doms)}, 8, 1024, 64, 0, stage_steps=[4])
    w = np.array([0.1, 0.2, 0.3, 0.4])

    def keys(units: bool, *extra: str) -> dict:
        seen: list[str] = []
        monkeypatch.setattr(losses, "cpu_has_bf16", lambda: units)
        monkeypatch.setattr(run_mod, "run", lambda cfg, **kw: seen.append(str(cfg.run_dir)) or {"compute": {}})
        for name in ("regmix", "doremi"):
            parent = compose(["budget=smoke", f"mixer={name}", *PIN, *extra])
            m, sub = build_mixer(parent.mixer, doms, ctx), run_mod.make_subrun(parent, Ledger())
            if name == "regmix":
                sub(m.proxy_overrides(w), "regmix-proxy")
            else:
                sub(m.reference_overrides(w), "doremi-reference")
                sub(m.proxy_overrides("/tmp/ref"), "doremi-proxy")
        return dict(Path(d).name.rsplit("-", 1) for d in seen)

    before = keys(False)
    assert before == SUBRUNS
    now = keys(True)
    assert now["regmix-proxy"] != SUBRUNS["regmix-proxy"]
    assert now["regmix-proxy"] == keys(True, "trainer.dtype=bf16")["regmix-proxy"]
    assert {k: v for k, v in now.items() if k != "regmix-proxy"} == {
        k: v for k, v in SUBRUNS.items() if k != "regmix-proxy"
    }


def test_the_dtype_choice_and_both_peaks_are_printed_and_in_results(make_cfg, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(losses, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(
        perf, "_measured", lambda d, dt: (3e11, "fake bf16") if dt == torch.bfloat16 else (1e11, "fake")
    )
    over = ("trainer.cpu_bf16_min_hidden=64", "trainer.log_every=2", "trainer.save_final_model=false", "device=cpu")
    res = run(make_cfg(*over, run_dir=tmp_path / "auto"), quiet=True)
    out = capsys.readouterr().out
    reason = "auto: CPU with bf16 matrix units, hidden_size 128 >= trainer.cpu_bf16_min_hidden 64"
    assert f"[tikmix] dtype: bf16 autocast ({reason})" in out
    assert res["dtype"] == {"setting": "auto", "autocast": "bf16", "reason": reason}
    m = res["mfu"]
    assert (m["peak_flops"], m["dtype"]) == (3e11, "bf16")
    assert m["other_peak"]["dtype"] == "fp32" and m["other_peak"]["peak_flops"] == 1e11
    assert "the bf16 peak 3e+11 FLOP/s" in out and "the fp32 peak is 1e+11 FLOP/s" in out
    from tikmix.results import print_summary

    print_summary(res)
    assert "of the bf16 peak (3e+11 FLOP/s, fp32 peak 1e+11)" in capsys.readouterr().out
    explicit = run(make_cfg(*over, "trainer.dtype=bf16", run_dir=tmp_path / "bf16"), quiet=True)
    assert explicit["fingerprint"] == res["fingerprint"]
    assert explicit["val_loss"] == res["val_loss"]  # the same computation, bit for bit

    monkeypatch.setattr(losses, "cpu_has_bf16", lambda: False)
    res = run(make_cfg(*over, run_dir=tmp_path / "fp32"), quiet=True)
    assert res["dtype"]["autocast"] == "fp32" and "no bf16 matrix instructions" in res["dtype"]["reason"]
    assert res["mfu"]["dtype"] == "fp32" and res["mfu"]["other_peak"]["dtype"] == "bf16"
    assert res["fingerprint"] != explicit["fingerprint"]


# --- trainer.compile=auto ------------------------------------------------------------------------------


def test_compile_auto_compiles_only_when_the_estimated_training_is_long(monkeypatch):
    monkeypatch.setattr(trainer_mod, "cpp_compiler", lambda: "/usr/bin/g++")
    on, why = compile_decision(CPU, 1, 1200.0, 600)
    assert on and "estimated training 1,200 s >= trainer.compile_min_seconds 600" in why
    on, why = compile_decision(CPU, 1, 599.0, 600)
    assert not on and "599 s < trainer.compile_min_seconds 600" in why
    assert not compile_decision(CPU, 2, 1e9, 600)[0]  # DDP/FSDP: untested, never by auto
    assert not compile_decision(CPU, 1, None, 600)[0]
    monkeypatch.setattr(trainer_mod, "cpp_compiler", lambda: None)
    on, why = compile_decision(CPU, 1, 1e9, 600)
    assert not on and "C++ compiler" in why
    assert compile_decision(CUDA, 1, 1e9, 600)[0]  # a GPU needs no host compiler of ours


def test_compile_auto_in_a_run_decides_prints_and_records(make_cfg, tmp_path, capsys, monkeypatch):
    """The estimate is the planned steps' FLOPs over the measured peak: a fake peak moves it either side of
    trainer.compile_min_seconds; a fake compile (a wrapper sharing the module) stands in for torch.compile."""
    monkeypatch.setattr(trainer_mod, "cpp_compiler", lambda: "/usr/bin/g++")
    wrapped = []

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *a, **k):
            if not wrapped[-1][1]:  # the first call "compiles"
                wrapped[-1][1] = True
                time.sleep(0.3)
            return self.inner(*a, **k)

    def fake_compile(module, enabled, mode):
        wrapped.append([module, False])
        return Wrapper(module)

    monkeypatch.setattr(trainer_mod, "compile_module", fake_compile)
    over = ("trainer.compile=auto", "trainer.save_final_model=false", "trainer.peak_flops=0", "device=cpu")
    monkeypatch.setattr(perf, "_measured", lambda d, dt: (1e15, "fake"))  # 8 smoke steps in far under a second
    res = run(make_cfg(*over, run_dir=tmp_path / "short"), quiet=True)
    out = capsys.readouterr().out
    assert (
        not wrapped and "[tikmix] compile: off (auto: estimated training 0 s < trainer.compile_min_seconds 600)" in out
    )
    assert res["compile"] == {
        "setting": "auto",
        "compiled": False,
        "reason": res["compile"]["reason"],
        "compile_s": None,
    }

    monkeypatch.setattr(perf, "_measured", lambda d, dt: (1e3, "fake"))  # a slow device: years of training
    res = run(make_cfg(*over, run_dir=tmp_path / "long"), quiet=True)
    out = capsys.readouterr().out
    assert len(wrapped) == 1 and "[tikmix] compile: on (auto: estimated training" in out
    c = res["compile"]
    assert c["compiled"] and c["compile_s"] >= 0.25 and f"[tikmix] compile: {c['compile_s']:.1f} s" in out
    assert res["throughput"]["train_time_s"] >= c["compile_s"]  # charged to the run: inside its training time

    res = run(make_cfg(*over, "trainer.compile=off", run_dir=tmp_path / "off"), quiet=True)
    assert len(wrapped) == 1 and not res["compile"]["compiled"]


def test_compiling_runs_share_inductors_cache_under_the_data_cache(monkeypatch, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir

    import tikmix.run as run_mod

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # written by inductor itself, not the user
    assert run_mod.share_inductor_cache(str(tmp_path / "a")) == str(tmp_path / "a" / "inductor") == cache_dir()
    # the next job of a sweep with another data cache: its own (this process set the first)
    assert run_mod.share_inductor_cache(str(tmp_path / "b")) == str(tmp_path / "b" / "inductor") == cache_dir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the user's own: left alone
    assert run_mod.share_inductor_cache(str(tmp_path / "a")) == str(tmp_path / "mine") == cache_dir()
    assert torch._inductor.config.fx_graph_cache  # the FX graph cache is on by default: compiled graphs are reused


@pytest.mark.slow  # inductor's C++ build: ~100 s here with a cold cache under load (30 s warm), even for one layer
def test_compiled_steps_equal_eager_steps():
    """A real inductor compile of a one-layer model: three AdamW steps give the losses eager gives (within float
    tolerance: inductor fuses and reorders)."""
    from tikmix.losses import causal_lm_loss

    cfg = compose(
        [
            "model=tiny",
            "model.hidden_size=32",
            "model.num_layers=1",
            "model.num_heads=2",
            "model.num_kv_heads=2",
            "model.intermediate_size=64",
        ]
    ).model
    cfg = model_section(cfg)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 64, (2, 17), generator=gen) for _ in range(3)]

    def train(compiled: bool) -> list[float]:
        model = build_model(cfg, 64, 0)
        fwd = compile_module(model, compiled, "default")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        out = []
        for x in batches:
            opt.zero_grad(set_to_none=True)
            loss = causal_lm_loss(fwd, x[:, :-1], x, reduction="sum") / x[:, 1:].numel()
            loss.backward()
            opt.step()
            out.append(float(loss.detach()))
        return out

    eager, compiled = train(False), train(True)
    assert compiled == pytest.approx(eager, rel=1e-4)
    assert eager[0] != eager[-1]  # the steps trained


def test_a_checkpoint_of_another_autocast_is_named_when_refused(monkeypatch):
    """Resuming and trainer.init_from compare config files, where trainer.dtype=auto's choice on a CPU is not:
    a checkpoint records its autocast, and one without the record trained in what the setting meant then."""
    from types import SimpleNamespace

    from tikmix.run import autocast_change

    monkeypatch.setattr(losses, "cpu_has_bf16", lambda: True)
    auto = SimpleNamespace(dtype="auto", cpu_bf16_min_hidden=256)
    why = autocast_change({}, auto, 384, CPU)  # a checkpoint from before: auto was fp32 on every CPU
    assert why == (
        "was trained in fp32, and trainer.dtype=auto trains this model in bf16 here: set "
        "trainer.cpu_bf16_min_hidden=385 (above this model's hidden_size: auto keeps fp32) to continue it"
    )
    assert autocast_change({"autocast": "fp32"}, auto, 384, CPU) is not None
    monkeypatch.setattr(losses, "cpu_has_bf16", lambda: False)  # a bf16 run moved to a CPU without bf16 units
    assert "set trainer.dtype=bf16 to continue it" in autocast_change({"autocast": "bf16"}, auto, 384, CPU)
    monkeypatch.setattr(losses, "cpu_has_bf16", lambda: True)
    assert autocast_change({"autocast": "bf16"}, auto, 384, CPU) is None
    assert autocast_change({}, auto, 128, CPU) is None  # narrow: fp32 now as then
    assert autocast_change({}, SimpleNamespace(dtype="bf16", cpu_bf16_min_hidden=256), 128, CPU) is None
    assert autocast_change({}, auto, 384, CUDA) is None  # a GPU: bf16 now as then


def test_resuming_a_run_started_when_auto_meant_fp32_says_how(make_cfg, tmp_path, monkeypatch):
    """A run with trainer.dtype=auto checkpointed on a CPU without bf16 units (or before auto chose bf16) is refused on
    one with them for a model at the threshold, naming the precision and the override that resumes it."""
    from tests.conftest import run_until_crash
    from tikmix.errors import CheckpointError

    over = ("trainer.cpu_bf16_min_hidden=128", "trainer.save_final_model=false", "trainer.ckpt_every=2")
    rd = tmp_path / "run"
    monkeypatch.setattr(losses, "cpu_has_bf16", lambda: False)
    run_until_crash(make_cfg(*over, run_dir=rd), crash_at=3, quiet=True)
    ckpt = load_checkpoint(rd / "checkpoints" / "last.pt")
    assert ckpt["autocast"] == "fp32"
    monkeypatch.setattr(losses, "cpu_has_bf16", lambda: True)
    with pytest.raises(CheckpointError) as e:
        run(make_cfg(*over, run_dir=rd), quiet=True)
    assert "was trained in fp32" in str(e.value) and "set trainer.cpu_bf16_min_hidden=129" in str(e.value)
    res = run(make_cfg(*over, "trainer.cpu_bf16_min_hidden=129", run_dir=rd), quiet=True)  # the same run: resumes
    assert res["steps"] == 8 and res["dtype"]["autocast"] == "fp32"
