"""MFU against the device's peak, torch.compile, and the GPU path (bf16 autocast, SDPA, fused AdamW) on CPU."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from tests.conftest import compose, run_until_crash
from tikmix import perf
from tikmix.checkpoint import load_checkpoint
from tikmix.errors import ConfigError
from tikmix.model import build_model, model_section
from tikmix.run import run
from tikmix.trainer import adamw_extra_kwargs, amp_dtype_for, compile_module

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
