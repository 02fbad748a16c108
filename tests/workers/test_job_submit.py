"""``ray job submit --working-dir <repo> -- python workers/entrypoint.py ...`` against a real head node,
and ``--address ray://`` (Ray Client) against the same head.

Needs the dashboard (the Jobs API lives in it), i.e. ``pip install "ray[default]"``: with ``ray[data]``
alone the head refuses ``--include-dashboard`` ("Cannot include dashboard with missing packages"), and
the test is skipped with that reason. Ray >= 2.59 turns token authentication on for local clusters, so
the head and the CLI share a token through ``RAY_AUTH_MODE=token`` + ``RAY_AUTH_TOKEN_PATH``.

The head runs in its own session (``ray start --block``) and is stopped through that process group,
not with ``ray stop``, which would stop every Ray instance on the machine, other users' included.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from helpers_ray import PER_SHARD, SIZE, assert_same_output  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXCLUDES = [".git", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".benchmarks", "__pycache__", "*.egg-info"]


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _ray_cli() -> str:
    exe = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    return exe


def _pids_using(marker: str) -> list[int]:
    """Processes whose command line names `marker` (our temp dir): leftovers of our head only."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            pids.append(int(d))
    return pids


class LocalHead:
    """A Ray head with the dashboard on free ports, in its own process group."""

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="rp-ray-", dir="/tmp")  # short: Ray's socket paths have a length cap
        token = Path(self.tmp) / "token"
        token.write_text(secrets.token_hex(32))
        self.env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
                        RAY_USAGE_STATS_ENABLED="0")
        self.env.pop("RAY_ADDRESS", None)
        self.token = token.read_text()
        (gcs, self.dashboard, self.client_port, agent, agent_grpc, rt_env, metrics, node_mgr, obj_mgr) = _free_ports(9)
        self.address = f"http://127.0.0.1:{self.dashboard}"
        cmd = [
            _ray_cli(), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2", "--num-gpus=0",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard}",
            f"--ray-client-server-port={self.client_port}", f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={rt_env}",
            f"--metrics-export-port={metrics}", f"--node-manager-port={node_mgr}",
            f"--object-manager-port={obj_mgr}", f"--temp-dir={self.tmp}/ray", "--disable-usage-stats",
        ]
        self.log = open(Path(self.tmp) / "head.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log_tail(self) -> str:
        self.log.flush()
        return (Path(self.tmp) / "head.log").read_text(errors="replace")[-3000:]

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        req = urllib.request.Request(f"{self.address}/api/version", headers={"Authorization": f"Bearer {self.token}"})
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                if "missing packages" in tail:
                    pytest.skip('`ray job submit` needs the dashboard: pip install "ray[default]"')
                pytest.fail(f"ray start exited with {self.proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(req, timeout=2):
                    return
            except OSError:
                time.sleep(1)
        pytest.fail(f"dashboard not up after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)  # it drains for up to 30 s; the job is over, so don't wait that long
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for pid in _pids_using(self.tmp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head():
    if ray.is_initialized():
        ray.shutdown()
    head = LocalHead()
    try:
        head.wait_ready()
        yield head
    finally:
        head.stop()


def test_job_submit_with_working_dir(ray_head, corpus, local_reference, tmp_path):
    dest = tmp_path / "job"
    cmd = [
        _ray_cli(), "job", "submit", "--address", ray_head.address, "--working-dir", str(REPO),
        "--runtime-env-json", json.dumps({"excludes": EXCLUDES}), "--",
        "python", "workers/entrypoint.py", str(corpus), str(dest), "--size", str(SIZE),
        "--samples-per-shard", str(PER_SHARD), "--format", "both", "--quality", "90", "--batch-size", "4", "-q",
    ]
    out = subprocess.run(cmd, env=ray_head.env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert "succeeded" in out.stdout + out.stderr
    assert_same_output(dest, local_reference)


def test_ray_client_address(ray_head, corpus, local_reference, tmp_path):
    """Ray Data cannot drive a dataset through Ray Client; run_ray then drives it from an actor on the
    cluster and ships this checkout's code with the job (py_modules)."""
    dest = tmp_path / "client"
    cmd = [
        sys.executable, "-m", "resize_pipeline.cli", "convert", str(corpus), str(dest), "--engine", "ray",
        "--address", f"ray://127.0.0.1:{ray_head.client_port}", "--size", str(SIZE),
        "--samples-per-shard", str(PER_SHARD), "--format", "both", "--quality", "90", "--batch-size", "4", "-q",
    ]
    out = subprocess.run(cmd, env=ray_head.env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert "Pushing file package" in out.stderr  # the code went with the job
    assert_same_output(dest, local_reference)


def test_submit_script_makes_relative_paths_absolute(ray_head, corpus, local_reference, tmp_path):
    """``deploy/submit.sh in ../out`` from the folder that holds the photos: the job gets absolute
    paths (it runs in its uploaded working dir, where the relative ones would name other folders)."""
    dest = tmp_path / "out"
    env = dict(ray_head.env, RAY_API_SERVER_ADDRESS=ray_head.address)
    cmd = [str(REPO / "deploy" / "submit.sh"), corpus.name, os.path.relpath(dest, corpus.parent), "--size", str(SIZE),
           "--samples-per-shard", str(PER_SHARD), "--format", "both", "--quality", "90", "--batch-size", "4", "-q"]
    out = subprocess.run(cmd, env=env, cwd=corpus.parent, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert_same_output(dest, local_reference)


def test_submit_script_to_a_cluster_that_wants_a_token_is_one_line(ray_head, corpus, tmp_path):
    env = {k: v for k, v in ray_head.env.items() if not k.startswith("RAY_AUTH")}
    env["RAY_API_SERVER_ADDRESS"] = ray_head.address
    out = subprocess.run([str(REPO / "deploy" / "submit.sh"), str(corpus), str(tmp_path / "out")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "requires a token" in lines[0] and "RAY_AUTH_TOKEN" in lines[0], out.stderr
    assert not (tmp_path / "out").exists()
    env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{_free_ports(1)[0]}"  # nobody there
    out = subprocess.run([str(REPO / "deploy" / "submit.sh"), str(corpus), str(tmp_path / "out")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "no Ray dashboard" in out.stderr


def test_a_relative_path_inside_a_job_is_refused_with_a_hint(ray_head, corpus, tmp_path):
    """Submitted by hand (not through submit.sh): the entrypoint refuses a relative SOURCE in one line
    instead of `source not found: .../runtime_resources/working_dir_files/_ray_pkg_.../photos`."""
    cmd = [
        _ray_cli(), "job", "submit", "--address", ray_head.address, "--working-dir", str(REPO),
        "--runtime-env-json", json.dumps({"excludes": EXCLUDES}), "--",
        "python", "workers/entrypoint.py", "photos", str(tmp_path / "out"), "-q",
    ]
    out = subprocess.run(cmd, env=ray_head.env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "'photos' is a relative path" in text and "absolute path" in text, text[-3000:]
    assert "source not found" not in text
