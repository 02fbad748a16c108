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
    assert not [r for r in report["rows"] if str(r.get("note", "")).startswith(("FAILED", "skipped"))]
    kinds = {r["kind"]: r for r in report["rows"]}
    converts = ("convert_classical", "convert_learned")
    for kind in ("decode224", "decode448", "cnn", "host", "host_scaling",
                 *converts, *(f"{k}_{p}p" for k in converts for p in (2, 4))):
        assert kinds[kind].get("img_s", 0) > 0, kinds[kind]
    for kind in converts:
        rows = [kinds[kind], kinds[f"{kind}_2p"], kinds[f"{kind}_4p"]]
        assert [r["workers"] for r in rows] == [1, 2, 4]
        # every input accounted for, and the same bytes whatever the number of processes
        assert {r["n"] for r in rows} == {48 + 8 - 8} or {r["n"] for r in rows} == {rows[0]["n"]}
        assert len({r["tar_sha256"] for r in rows}) == 1, [r["tar_sha256"] for r in rows]
        assert sum(rows[0]["paths"]["decoded_by"].values()) == rows[0]["n"]
        assert rows[0]["estimated_gpu_mib_per_process"] > 0
        assert report["targets"][f"{kind}_same_bytes"] == {"processes": [1, 2, 4], "met": True}
    assert kinds["convert_learned"]["resolved"]["decoder"] == "dali-cpu"
    assert kinds["convert_learned"]["paths"]["decoded_by"] == {"dali-cpu": kinds["convert_learned"]["n"]}
    assert kinds["convert_classical"]["built"]["encoder"]["backend"] in ("opencv", "pillow")
    assert kinds["convert_classical"]["resolved"]["jpeg_backend"] == kinds["convert_classical"]["built"]["encoder"][
        "backend"]
    assert set(kinds["host_scaling"]["x_2_cores"]) == {"opencv", "pillow"}
    assert set(report["targets"]) >= {"convert_classical", "convert_learned", "cnn_alone_best"}
    assert "| convert learned" in proc.stdout and "x decode-only" in proc.stdout
