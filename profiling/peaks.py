"""Peak dense throughput of known accelerators, for model FLOPs utilisation (MFU = achieved / peak).

Figures are NVIDIA's datasheet numbers for dense math (no structured sparsity), in TFLOP/s. Under JAX's default
matmul/conv precision, float32 work on Ampere and newer GPUs runs on TF32 tensor cores, so the float32 peak used
here is the TF32 one; bfloat16 uses the BF16 tensor-core peak. CPUs have no entry: their peak depends on the SKU,
clocks and vector units, so MFU is reported as unavailable there unless `profile.peak_tflops` gives it.
"""

from __future__ import annotations

# device_kind substring (as jax reports it, matched case-insensitively) -> {compute dtype: dense TFLOP/s}
DEVICE_PEAK_TFLOPS = {
    "H200": {"float32": 494.7, "bfloat16": 989.4},  # H200 SXM datasheet (same tensor cores as H100 SXM)
    "H100 80GB HBM3": {"float32": 494.7, "bfloat16": 989.4},  # H100 SXM
    "H100 PCIe": {"float32": 378.0, "bfloat16": 756.0},
    "A100": {"float32": 156.0, "bfloat16": 312.0},  # A100 SXM/PCIe, TF32 / BF16 dense
    "L4": {"float32": 60.0, "bfloat16": 121.0},
    "V100": {"float32": 15.7, "bfloat16": 15.7},  # no BF16 tensor cores: bf16 runs at the FP32 rate
}


def peak_tflops(device_kind: str, dtype: str, override: float = 0.0) -> tuple[float | None, str]:
    """(peak TFLOP/s or None, where it came from) for a jax device_kind and compute dtype."""
    if override > 0.0:
        return float(override), "profile.peak_tflops"
    for name, peaks in DEVICE_PEAK_TFLOPS.items():
        if name.lower() in device_kind.lower() and dtype in peaks:
            return peaks[dtype], f"datasheet peak for {name} ({dtype}, dense)"
    return None, f"no peak known for device {device_kind!r} ({dtype}); set profile.peak_tflops"
