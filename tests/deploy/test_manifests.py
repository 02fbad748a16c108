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


# --------------------------------------------------------------------------------- nightly updates
#: RayCronJobSpec of KubeRay 1.6 (ray-operator/config/crd/bases/ray.io_raycronjobs.yaml): required
#: jobTemplate (a RayJobSpec) and schedule; suspend
RAYCRONJOB_FIELDS, RAYCRONJOB_REQUIRED = {"jobTemplate", "schedule", "suspend"}, {"jobTemplate", "schedule"}
#: RayJobSpec fields of the same CRD
RAYJOB_FIELDS = {"activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint",
                 "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy", "metadata",
                 "preRunningDeadlineSeconds", "rayClusterSpec", "runtimeEnvYAML", "shutdownAfterJobFinishes",
                 "submissionMode", "submitterConfig", "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished"}
_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def _cron_ok(expr: str) -> bool:
    """A standard 5-field cron expression (numbers, ``*``, ``a-b``, ``/n``, lists), as robfig/cron's
    ParseStandard (KubeRay) and Kubernetes CronJob take it."""
    fields = expr.split()
    if len(fields) != 5:
        return False
    for field, (lo, hi) in zip(fields, _CRON_RANGES, strict=True):
        for part in field.split(","):
            m = re.fullmatch(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?", part)
            if not m:
                return False
            nums = [int(x) for x in (m.group(2), m.group(3)) if x is not None]
            if any(not lo <= x <= hi for x in nums) or (m.group(4) is not None and int(m.group(4)) < 1):
                return False
    return True


def test_cron_check_itself():
    assert _cron_ok("0 2 * * *") and _cron_ok("*/15 0-6 1,15 * 1-5")
    assert not any(_cron_ok(x) for x in ("0 2 * *", "61 2 * * *", "0 24 * * *", "CRON_TZ=UTC 0 2 * * *", "@daily"))


def _nightly_entrypoint(spec: dict) -> None:
    """The entrypoint of a night: `convert --update` on Ray, every value valid."""
    from resize_pipeline.cli import build_parser
    from resize_pipeline.commands.convert import config_from_args
    from workers.entrypoint import build_argv

    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "/app/workers/entrypoint.py"]
    args = build_parser().parse_args(build_argv(argv[2:]))
    config = config_from_args(args)
    assert (args.engine, args.address, config.update) == ("ray", "auto", True)
    assert config.source.startswith("s3://") and config.dest.startswith("s3://")


@pytest.fixture(scope="module")
def raycronjob() -> dict:
    docs = list(yaml.safe_load_all((DEPLOY / "raycronjob.yaml").read_text()))
    assert len(docs) == 1
    return docs[0]


def test_raycronjob_against_the_kuberay_1_6_schema(raycronjob, rayjob):
    assert (raycronjob["apiVersion"], raycronjob["kind"]) == ("ray.io/v1", "RayCronJob")
    name = raycronjob["metadata"]["name"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 30  # child RayJob names grow
    spec = raycronjob["spec"]
    assert RAYCRONJOB_REQUIRED <= set(spec) <= RAYCRONJOB_FIELDS
    assert _cron_ok(spec["schedule"]) and "TZ" not in spec["schedule"]
    job = spec["jobTemplate"]
    assert set(job) <= RAYJOB_FIELDS, set(job) - RAYJOB_FIELDS
    assert job["shutdownAfterJobFinishes"] is True and job["submissionMode"] in SUBMISSION_MODES
    assert 0 < job["activeDeadlineSeconds"] < 24 * 3600  # a night ends before the next is scheduled
    assert job["backoffLimit"] >= 1  # a failed night is retried (it completes the interrupted generation)
    assert isinstance(yaml.safe_load(job.get("runtimeEnvYAML", "{}")), dict)
    assert job["rayClusterSpec"] == rayjob["spec"]["rayClusterSpec"], "the same cluster as deploy/rayjob.yaml"
    _nightly_entrypoint(job)


@pytest.fixture(scope="module")
def cronjob() -> list[dict]:
    return list(yaml.safe_load_all((DEPLOY / "cronjob.yaml").read_text()))


def test_cronjob_variant_for_older_operators(cronjob, rayjob, tmp_path):
    kinds = {d["kind"]: d for d in cronjob}
    assert sorted(kinds) == ["ConfigMap", "CronJob", "Role", "RoleBinding", "ServiceAccount"]
    cron = kinds["CronJob"]
    assert cron["apiVersion"] == "batch/v1" and _cron_ok(cron["spec"]["schedule"])
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == kinds["ServiceAccount"]["metadata"]["name"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    binding = kinds["RoleBinding"]
    assert binding["roleRef"]["name"] == kinds["Role"]["metadata"]["name"]
    assert binding["subjects"][0]["name"] == kinds["ServiceAccount"]["metadata"]["name"]
    data = kinds["ConfigMap"]["data"]
    assert {v["configMap"]["name"] for v in pod["volumes"]} == {kinds["ConfigMap"]["metadata"]["name"]}
    script = data["run.sh"]
    (tmp_path / "run.sh").write_text(script)
    subprocess.run(["bash", "-n", str(tmp_path / "run.sh")], check=True)
    used = set(re.findall(r"kubectl (create|get|delete)", script))
    (rule,) = kinds["Role"]["rules"]
    assert rule["apiGroups"] == ["ray.io"] and rule["resources"] == ["rayjobs"] and used <= set(rule["verbs"])
    job = yaml.safe_load(data["rayjob.yaml"])
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert "generateName" in job["metadata"] and "name" not in job["metadata"]  # a new RayJob each night
    assert set(job["spec"]) <= RAYJOB_FIELDS and job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["rayClusterSpec"] == rayjob["spec"]["rayClusterSpec"]
    assert job["spec"]["activeDeadlineSeconds"] < cron["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"]
    _nightly_entrypoint(job["spec"])
