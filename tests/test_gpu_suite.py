"""`benchmarks/gpu_suite.py` runs end to end without a GPU (DALI CPU-only, the CNN on the CPU, small
sizes), so the script the GPU session runs has run before it meets a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nvidia.dali")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_suite_runs_in_cpu_mode(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--cpu", "--small", "--out", str(out),
         "--pytest-paths", "tests/learned/test_cuda_runner.py"],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_suite.json").read_text())
    assert report["mode"] == "cpu" and report["pytest"]["rc"] == 0
    assert "skipped" in (out / "pytest_gpu.log").read_text()  # the gpu tests exist and skip without CUDA
    kinds = {r["kind"]: r for r in report["rows"]}
    for kind in ("decode224", "decode448", "convert_classical", "convert_learned", "convert_classical_2w",
                 "convert_learned_2w", "cnn", "host", "host_scaling"):
        assert kinds[kind].get("img_s", 0) > 0, kinds[kind]
    assert kinds["convert_learned"]["resolved"]["decoder"] == "dali-cpu"
    assert kinds["convert_classical"]["built"]["encoder"]["backend"] in ("opencv", "pillow")
    assert kinds["convert_learned_2w"]["workers"] == 2
    assert set(kinds["host_scaling"]["x_2_cores"]) == {"opencv", "pillow"}
    assert set(report["targets"]) >= {"convert_classical", "convert_learned", "cnn_alone_best"}
    assert "| convert learned" in proc.stdout and "x decode-only" in proc.stdout
