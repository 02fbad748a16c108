"""Several Ray nodes (`ray.cluster_utils.Cluster`: a head and two worker nodes, each with its own
resources, on this machine): the output is byte-identical to the local engine; a worker node lost in
the middle of a job costs no sample (none lost, none written twice); a driver killed in the middle
of a job is resumed by rerunning the same command.

The head has no CPU for actors (it runs the driver, the job's gate and the task source); the actors
(half a CPU each, one per worker node: Ray Data spreads them) and the listing tasks run on the worker
nodes. A job here takes a few seconds: every sample written waits a little (the faults plugin), so
that "the middle of a job" lasts long enough to act in.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from helpers_ray import SIZE, assert_same_output, base_config, make_corpus  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
sys.path.insert(0, str(PLUGINS))
import faults_plugin  # noqa: E402

N = 33  # + 3 broken inputs = 36: 9 shards of 4
PER = 4


def _config(src: Path, dest: Path, **kw):
    values = dict(engine="ray", samples_per_shard=PER, workers=2, ray_cpus_per_actor=0.5)
    values.update(kw)
    return base_config(src, dest, **values)


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("mn_corpus"), N)


@pytest.fixture(scope="module")
def reference(big_corpus, tmp_path_factory) -> Path:
    from resize_pipeline import convert

    dest = tmp_path_factory.mktemp("mn_ref") / "local"
    convert(base_config(big_corpus, dest, engine="local", workers=1, samples_per_shard=PER))
    return dest


@pytest.fixture(scope="module")
def faults(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mn_faults") / "faults.json"
    faults_plugin.set_faults(str(path))
    return path


def _runtime_env(faults: Path) -> dict:
    import resize_pipeline

    root = str(Path(resize_pipeline.__file__).resolve().parents[1])
    return {"worker_process_setup_hook": "faults_plugin.install",
            "env_vars": {"PYTHONPATH": os.pathsep.join([str(PLUGINS), root]), faults_plugin.FAULTS_ENV: str(faults)}}


@pytest.fixture(scope="module")
def cluster(faults):
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "resources": {"head": 1},
                                                      "include_dashboard": False})
    c.workers = [c.add_node(num_cpus=1, resources={f"worker_{i}": 1}) for i in range(2)]  # type: ignore[attr-defined]
    c.wait_for_nodes()
    ray.init(address=c.address, runtime_env=_runtime_env(faults), log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    # the actor pool starts converting once both actors are up (one per worker node): on a loaded
    # machine the first could otherwise convert every shard before the second has started
    ctx.wait_for_min_actors_s = 120
    yield c
    ray.shutdown()
    c.shutdown()


def _stats(dest: Path) -> list[str]:
    d = dest / "_stats"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def _wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def _keys_once(dest: Path) -> None:
    """Every written sample is in exactly one shard."""
    import webdataset as wds

    keys = [s["__key__"] for t in sorted(dest.glob("shard-*.tar"))
            for s in wds.WebDataset(str(t), shardshuffle=False, empty_check=False)]
    manifest = json.loads((dest / "_manifest.json").read_text())
    assert len(keys) == len(set(keys)) == manifest["counts"]["written"] == N


def test_several_nodes_write_what_the_local_engine_writes(cluster, faults, big_corpus, reference, tmp_path):
    from resize_pipeline import convert

    log = tmp_path / "attempts.log"
    faults_plugin.set_faults(str(faults), log=str(log))
    try:
        dest = tmp_path / "ray"
        summary = convert(_config(big_corpus, dest))
    finally:
        faults_plugin.set_faults(str(faults))
    assert (summary.total, summary.failed) == (N + 3, 3)
    assert_same_output(dest, reference)
    _keys_once(dest)
    nodes = {line.split()[2] for line in log.read_text().splitlines()}
    assert len(nodes) == 2, f"the shards ran on {len(nodes)} node(s)"


def test_a_lost_worker_node_costs_no_sample(cluster, faults, big_corpus, reference, tmp_path):
    """A worker node is removed (its raylet and processes killed) once two shards are committed and
    while it converts one: Ray Data restarts its actor on the other node and reruns its shards; the
    output is byte-identical to the local engine's, every sample exactly once."""
    import threading

    from resize_pipeline import convert

    log = tmp_path / "attempts.log"
    faults_plugin.set_faults(str(faults), log=str(log), sleep_per_sample=0.15)
    dest = tmp_path / "ray"
    removed: dict = {}

    def lose_a_node() -> None:
        _wait_for(lambda: len(_stats(dest)) >= 2, 90, "two committed shards")
        by_id = {n.node_id: n for n in cluster.workers}
        deadline = time.monotonic() + 60
        while True:  # a node in the middle of a shard (its attempt is logged at its first sample)
            done = {s[:-5] for s in _stats(dest)}
            busy = [line.split() for line in log.read_text().splitlines() if line.split()[0] not in done]
            node_id = next((b[2] for b in reversed(busy) if b[2] in by_id), None)
            if node_id is not None or len(done) >= 8 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if node_id is None:
            return
        removed["node"], removed["shards"] = node_id, [b[0] for b in busy if b[2] == node_id]
        cluster.remove_node(by_id[node_id], allow_graceful=False)
        cluster.workers.remove(by_id[node_id])

    watcher = threading.Thread(target=lose_a_node, daemon=True)
    watcher.start()
    try:
        summary = convert(_config(big_corpus, dest))
    finally:
        faults_plugin.set_faults(str(faults))
        watcher.join(5)
        if len(cluster.workers) < 2:  # the next tests get two worker nodes again
            cluster.workers.append(cluster.add_node(num_cpus=1, resources={"worker_9": 1}))
            cluster.wait_for_nodes()
    assert removed.get("node"), "no worker node was busy when two shards were done"
    assert (summary.total, summary.written, summary.failed) == (N + 3, N, 3)
    assert_same_output(dest, reference)
    _keys_once(dest)
    # the shards that node was converting ran again on the other one
    redone = [line.split() for line in log.read_text().splitlines() if line.split()[0] in removed["shards"]]
    assert any(b[2] != removed["node"] for b in redone), redone


_DRIVER = """
import json, os, sys
import ray
sys.path.insert(0, {plugins!r})
ray.init(address={address!r}, runtime_env={env!r}, log_to_driver=False)
ray.data.DataContext.get_current().enable_progress_bars = False
from resize_pipeline import convert
from resize_pipeline.config import ConvertConfig
convert(ConvertConfig(**json.loads(sys.argv[1])))
"""


def test_a_killed_driver_is_resumed_by_the_same_command(cluster, faults, big_corpus, reference, tmp_path):
    """The driver (another process, as a user's) is SIGKILLed once two shards are committed; the
    same command run again resumes from the committed shards and finishes byte-identical."""
    import resize_pipeline
    from resize_pipeline import convert

    dest = tmp_path / "ray"
    faults_plugin.set_faults(str(faults), sleep_per_sample=0.15)
    values = dict(source=str(big_corpus), dest=str(dest), size=SIZE, samples_per_shard=PER, format="both",
                  quality=90, quiet=True, batch_size=4, engine="ray", workers=2, ray_cpus_per_actor=0.5)
    root = str(Path(resize_pipeline.__file__).resolve().parents[1])
    script = _DRIVER.format(plugins=str(PLUGINS), address=cluster.address, env=_runtime_env(faults))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, str(PLUGINS)]))
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen([sys.executable, "-c", script, json.dumps(values)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for(lambda: len(_stats(dest)) >= 2 or driver.poll() is not None, 90, "two committed shards")
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:] if driver.stderr else ""
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(10)
    finally:
        faults_plugin.set_faults(str(faults))
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert not (dest / "_manifest.json").exists()
    assert (dest / "_lock.json").exists()  # left by the killed driver: taken over as stale
    done_before = len(_stats(dest))
    summary = convert(_config(big_corpus, dest))
    assert summary.resumed_shards >= min(done_before, 2)
    assert_same_output(dest, reference)
    _keys_once(dest)
