"""Which device a worker uses: GPU discovery without creating a CUDA context, device strings, and
the assignment of GPUs to worker processes.

One decision for the whole job: ``--device cuda:N`` puts DALI and the CNN on GPU N; with several
worker processes on a GPU job each gets its own GPU through ``CUDA_VISIBLE_DEVICES`` (round-robin
when there are more workers than GPUs), and inside a worker the GPU is then ``cuda:0``.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")


def parse_device(spec: str) -> tuple[str, int | None]:
    """``"cuda:1"`` -> ("cuda", 1); ``"cuda"`` -> ("cuda", None); ``"cpu"``/``"auto"`` -> (spec, None)."""
    if not isinstance(spec, str) or not DEVICE_RE.fullmatch(spec):
        raise ValueError(f"invalid device {spec!r}; expected auto, cpu, cuda or cuda:N")
    if spec.startswith("cuda:"):
        return "cuda", int(spec.split(":", 1)[1])
    return spec, None


def _visible_env() -> list[str] | None:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if not ids or ids[0] == "-1":
        return []
    return ids


def gpu_count() -> int:
    """GPUs this process may use, without initialising CUDA (so that forking stays safe).

    ``CUDA_VISIBLE_DEVICES`` when set; else the NVIDIA driver's device list in ``/proc``; else, where
    torch is imported already with a CUDA build, its NVML-based count.
    """
    visible = _visible_env()
    if visible is not None:
        return len(visible)
    proc = "/proc/driver/nvidia/gpus"
    if os.path.isdir(proc):
        try:
            return len(os.listdir(proc))
        except OSError:
            pass
    torch = sys.modules.get("torch")
    if torch is not None and getattr(torch.version, "cuda", None):
        try:
            return int(torch.cuda.device_count())
        except Exception:  # noqa: BLE001 - no driver: no GPU
            return 0
    return 0


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one worker runs: ``env`` to set before it imports CUDA code, ``device`` to use inside."""

    device: str  # "cpu" or "cuda:N" as seen inside the worker
    env: dict[str, str]

    @property
    def gpu(self) -> bool:
        return self.device != "cpu"

    @property
    def index(self) -> int | None:
        return int(self.device.split(":", 1)[1]) if self.gpu else None


def place_workers(device: str, workers: int, *, isolate: bool = True) -> list[Placement]:
    """The placement of each of `workers` workers for a resolved `device` (``cpu`` or ``cuda:N`` or
    ``cuda``: all GPUs round-robin).

    `isolate`: workers are processes that can each get their own ``CUDA_VISIBLE_DEVICES`` (so that
    every worker sees its GPU as ``cuda:0``); threads share one process and address GPUs by index.
    """
    kind, index = parse_device(device)
    if kind == "cpu":
        return [Placement("cpu", {}) for _ in range(workers)]
    visible = _visible_env()
    ids = visible if visible is not None else [str(i) for i in range(max(1, gpu_count()))]
    pool = [index] if index is not None else list(range(len(ids)))
    out = []
    for w in range(workers):
        local = pool[w % len(pool)]
        if isolate:
            physical = ids[local] if local < len(ids) else str(local)
            out.append(Placement("cuda:0", {"CUDA_VISIBLE_DEVICES": physical}))
        else:
            out.append(Placement(f"cuda:{local}", {}))
    return out


def _nvidia_smi(query: str, index: str) -> int | None:
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits", "-i", index],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    try:
        return int(float(out.stdout.strip().splitlines()[0])) if out.returncode == 0 else None
    except (ValueError, IndexError):
        return None


def _physical(index: int) -> str:
    visible = _visible_env()
    return visible[index] if visible is not None and index < len(visible) else str(index)


def gpu_memory_mib(index: int = 0) -> int | None:
    """Total memory of visible GPU `index` in MiB, without creating a CUDA context (NVML through
    ``nvidia-smi``); None when it cannot be known (no GPU, no driver tools)."""
    return _nvidia_smi("memory.total", _physical(index))


def gpu_memory_used_mib(index: int = 0) -> int | None:
    """Memory in use on visible GPU `index` in MiB, all processes together (``nvidia-smi``); None
    when it cannot be known."""
    return _nvidia_smi("memory.used", _physical(index))
