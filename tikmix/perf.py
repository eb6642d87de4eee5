"""Model FLOPs utilisation (MFU): the peak FLOP/s a run's achieved training FLOP/s are divided by.

``mfu = flops_per_token * tokens_per_s / peak``. The peak is, in order: ``trainer.peak_flops`` when set
(per device; 0 disables MFU), the published dense bf16 tensor-core peak of a known GPU when training in
bf16, or else a matrix-multiply peak measured once per process on this device in the training dtype. Every
peak is per device and multiplied by the number of ranks (tokens/s is the global rate).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import torch

from tikmix.errors import ConfigError

# Dense (no 2:4 structured sparsity) BF16 tensor-core peaks with FP32 accumulate, FLOP/s per GPU, from
# NVIDIA's datasheets, which print the sparse figure (twice these): H100 SXM 1,979 -> 989 TF, H100 PCIe
# 1,513 -> 756, H100 NVL and H200 NVL 1,671 -> 835, H200 SXM 1,979 -> 989, A100 (SXM and PCIe) 624 -> 312,
# A10 250 -> 125, L4 242 -> 121; RTX 4090: Ada whitepaper, BF16 with FP32 accumulate, 165.2 dense.
# Checked in order, first match wins, so the more specific names come first. Deliberately absent (measured
# instead): the A10G (AWS's variant of the A10: no NVIDIA datasheet; third-party comparisons put its tensor
# rate below the A10's), MIG slices (a fraction of the GPU), and anything else not listed.
GPU_PEAK_BF16: tuple[tuple[str, float], ...] = (
    (r"H200.*NVL", 835e12),
    (r"H200", 989e12),
    (r"H100.*NVL", 835e12),
    (r"H100.*PCIE", 756e12),
    (r"H100", 989e12),  # SXM5 ("NVIDIA H100 80GB HBM3")
    (r"A100", 312e12),
    (r"\bA10\b", 125e12),  # not A10G, not A100
    (r"\bL4\b", 121e12),  # not L40 / L40S
    (r"RTX 4090$", 165.2e12),  # not 4090 D or the laptop part
)


@dataclass(frozen=True)
class Peak:
    """The peak FLOP/s of all ranks together, where it came from, and how (one line for logs)."""

    flops: float
    source: str  # "config" | "table" | "measured"
    detail: str

    def describe(self) -> str:
        return f"{self.flops:.3g} FLOP/s ({self.source}: {self.detail})"

    def as_dict(self) -> dict:
        return {"peak_flops": self.flops, "source": self.source, "detail": self.detail}


def table_peak(device_name: str) -> float | None:
    """Published dense bf16 peak of one GPU by its CUDA device name; None when unknown (or a MIG slice)."""
    if "MIG" in device_name.upper().split():
        return None
    for pattern, flops in GPU_PEAK_BF16:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return flops
    return None


_MEASURED: dict[tuple[str, str, int], tuple[float, str]] = {}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    n: int | None = None,
    repeats: int = 3,
    block_s: float = 0.1,
) -> tuple[float, str]:
    """Best-of-``repeats`` FLOP/s of square ``n x n`` matmuls in ``dtype`` on ``device``, and a description.

    Each repeat runs as many matmuls as fit in about ``block_s`` seconds, so the whole measurement takes
    about ``repeats * block_s`` plus two calls (under half a second on a CPU). Without ``n``, a CUDA device
    uses 8192 and a CPU 1024 (~25 ms a call on one core: the BLAS kernel's steady state), smaller only where
    one call takes over 0.1 s (a dtype without fast kernels), so the measurement stays under a second.
    """
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def mats(k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = torch.randn(k, k, generator=gen).to(device, dtype)
        b = torch.randn(k, k, generator=gen).to(device, dtype)
        return a, b, torch.empty(k, k, device=device, dtype=dtype)

    def one(a, b, out) -> float:
        _sync(device)
        t0 = time.perf_counter()
        torch.matmul(a, b, out=out)
        _sync(device)
        return max(time.perf_counter() - t0, 1e-6)

    if n is None:
        n = 8192 if device.type == "cuda" else 1024
    a, b, out = mats(n)
    t1 = one(a, b, out)  # warm-up (BLAS/cuBLAS initialisation, caches); a slow dtype shows here already
    if device.type == "cpu" and t1 > 0.1 and n > 128:
        n = max(128, int(n * (0.05 / t1) ** (1 / 3)) // 64 * 64)
        a, b, out = mats(n)
        one(a, b, out)
    t1 = one(a, b, out)
    iters = max(1, min(10_000, int(block_s / t1)))
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            torch.matmul(a, b, out=out)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    del a, b, out
    if device.type == "cuda":
        torch.cuda.empty_cache()  # hand the ~0.8 GB of test matrices back before training allocates
    flops = 2.0 * n**3 * iters / best
    dt = str(dtype).replace("torch.", "")
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    return flops, f"{dt} matmul {n}x{n} on {device.type}{threads}, best of {repeats}"


def measured_peak(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """The measured matmul peak of ``device`` in ``dtype`` (FLOP/s) and how it was measured, once per process."""
    return _measured(device, dtype)


def _measured(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """measure_matmul_peak, once per (device, dtype, threads) per process: sub-runs reuse it."""
    key = (str(device), str(dtype), torch.get_num_threads())
    if key not in _MEASURED:
        _MEASURED[key] = measure_matmul_peak(device, dtype)
    return _MEASURED[key]


def check_peak_setting(value: object) -> float | None:
    """``trainer.peak_flops`` as a float (None = auto, 0 = MFU off); anything else is a ConfigError."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError("trainer.peak_flops", f"a number of FLOP/s per device, 0 (off) or null (auto), got {value!r}")
    try:
        x = float(value)  # YAML reads 989e12 (no dot) as a string
    except (TypeError, ValueError):
        raise ConfigError(
            "trainer.peak_flops", f"a number of FLOP/s per device, 0 (off) or null (auto), got {value!r}"
        ) from None
    if not x >= 0 or x == float("inf"):
        raise ConfigError("trainer.peak_flops", f"must be >= 0 and finite (0 = MFU off), got {value!r}")
    return x


def resolve_peak(
    setting: object, device: torch.device, dtype: torch.dtype, world: int = 1, device_name: str | None = None
) -> Peak | None:
    """The peak to divide by, for ``world`` ranks training in ``dtype``; None when MFU is off (setting 0).

    The table is used only for a bf16 run on a known GPU (its figures are bf16 tensor-core peaks); an fp32
    run, a CPU, or an unknown GPU gets the measured matmul peak of this device in the training dtype.
    """
    x = check_peak_setting(setting)
    ranks = f" x {world} ranks" if world > 1 else ""
    if x == 0:
        return None
    if x is not None:
        return Peak(x * world, "config", f"trainer.peak_flops={x:.3g}{ranks}")
    if device.type == "cuda" and dtype == torch.bfloat16:
        name = device_name if device_name is not None else torch.cuda.get_device_name(device)
        per = table_peak(name)
        if per is not None:
            return Peak(per * world, "table", f"{name}, dense bf16 tensor-core peak {per / 1e12:.4g} TFLOP/s{ranks}")
    flops, how = _measured(device, dtype)
    return Peak(flops * world, "measured", how + ranks)
