"""The learned resizer's arithmetic, decided by one function (`resolve_precision`): the driver's
preflight asks it once for every worker of a job, and `LearnedResizer(precision="auto")` asks the same
function, so the two never disagree.

- On a GPU: fp16 (every CUDA GPU with tensor cores computes it; closer to fp32 than bf16 on pixel
  data in [0, 1]: 10 mantissa bits against 7). The GPU suite measures fp16 and bf16 side by side.
- On a CPU: bf16 where the CPU computes it natively (AVX512-BF16 or AMX, from ``/proc/cpuinfo``),
  else fp32. Measured end to end (`LearnedResizer.resize`, 800x600 -> 224, whole processes paired
  A/B on the 2-core sandbox, docs/benchmarks.md "Precision on the CPU"): bf16 1.17x the images/s of
  fp32 (wall ratio 0.855), within one grey level.
"""

from __future__ import annotations

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(requested: str, device: str) -> str:
    """``auto`` -> the precision for `device` (``cpu``, ``cuda``, ``cuda:N``; see the module
    docstring); anything else is checked and returned as it is."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; expected one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested
    if not str(device).startswith("cpu"):
        return "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"
