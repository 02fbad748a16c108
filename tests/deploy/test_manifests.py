"""The deploy/ files, checked at the schema level: the RayJob has what KubeRay needs, asks for GPUs,
and its entrypoint is a `convert` command line our CLI accepts; the submit script and the Dockerfile
point at files that exist."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}


@pytest.fixture(scope="module")
def rayjob() -> dict:
    docs = list(yaml.safe_load_all((DEPLOY / "rayjob.yaml").read_text()))
    assert len(docs) == 1
    return docs[0]


def _containers(group: dict) -> list[dict]:
    containers = group["template"]["spec"]["containers"]
    assert containers, "a group without containers"
    return containers


def test_rayjob_required_fields(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert rayjob["kind"] == "RayJob"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", rayjob["metadata"]["name"])
    spec = rayjob["spec"]
    assert isinstance(spec["entrypoint"], str) and spec["entrypoint"].strip()
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert spec["submissionMode"] in SUBMISSION_MODES
    assert isinstance(yaml.safe_load(spec.get("runtimeEnvYAML", "{}")), dict)
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert isinstance(head.get("rayStartParams", {}), dict)
    assert all(isinstance(v, str) for v in head.get("rayStartParams", {}).values()), "rayStartParams are strings"
    assert [p["containerPort"] for p in _containers(head)[0].get("ports", [])].count(8265) == 1, "dashboard port"
    workers = cluster["workerGroupSpecs"]
    assert workers
    for g in workers:
        assert g["groupName"]
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        assert all(isinstance(v, str) for v in g.get("rayStartParams", {}).values())
    images = {c["image"] for grp in [head, *workers] for c in _containers(grp)}
    assert len(images) == 1, f"head and workers must run the same image (same Ray/Python): {images}"


def test_rayjob_requests_gpus(rayjob):
    gpu_groups = []
    for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        for c in _containers(g):
            res = c.get("resources", {})
            limit = res.get("limits", {}).get("nvidia.com/gpu")
            if limit is not None:
                assert int(limit) >= 1
                # Kubernetes: extended resources must have requests == limits (or requests omitted)
                assert res.get("requests", {}).get("nvidia.com/gpu", limit) == limit
                gpu_groups.append(g["groupName"])
    assert gpu_groups, "no worker group requests nvidia.com/gpu"
    head = _containers(rayjob["spec"]["rayClusterSpec"]["headGroupSpec"])[0]
    assert "nvidia.com/gpu" not in head.get("resources", {}).get("limits", {})


def test_rayjob_entrypoint_is_a_valid_convert_command(rayjob):
    from resize_pipeline.cli import build_parser
    from resize_pipeline.commands.convert import config_from_args
    from workers.entrypoint import build_argv

    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[0] in ("python", "python3")
    script = argv[1]
    assert script.endswith("workers/entrypoint.py")
    assert (REPO / "workers" / "entrypoint.py").is_file()
    args = build_parser().parse_args(build_argv(argv[2:]))
    assert (args.command, args.engine, args.address) == ("convert", "ray", "auto")
    config = config_from_args(args)  # validates every value, as the job would
    assert config.source.startswith("s3://") and config.dest.startswith("s3://")


def test_dockerfile_installs_the_package_with_gpu_extras():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM \S+", text, re.M)
    assert re.search(r"ARG BASE_IMAGE=nvcr\.io/nvidia/pytorch:\S+", text)
    assert re.search(r'pip install "\.\[\$\{DALI_EXTRA\},ray,s3\]"', text)
    assert "ARG DALI_EXTRA=dali" in text
    assert 'ray[default' in text, "the dashboard (Jobs API) needs ray[default]"
    for src in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (REPO / src).exists(), f"Dockerfile copies {src}, which does not exist"
    rayjob = yaml.safe_load((DEPLOY / "rayjob.yaml").read_text())
    version = re.search(r"ARG RAY_VERSION=(\S+)", text).group(1)
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == version
    assert "/app/workers/entrypoint.py" in rayjob["spec"]["entrypoint"] and "WORKDIR /app" in text


def test_submit_script():
    path = DEPLOY / "submit.sh"
    text = path.read_text()
    assert path.stat().st_mode & 0o111, "submit.sh is not executable"
    subprocess.run(["bash", "-n", str(path)], check=True)
    assert "ray job submit" in text
    assert "--working-dir" in text and "--runtime-env-json" in text
    assert "python workers/entrypoint.py" in text
    out = subprocess.run(["bash", str(path)], capture_output=True, text=True)
    assert out.returncode == 2 and "usage" in out.stderr
