"""Several GPUs on Ray: one actor per GPU (``num_gpus=1``), each seeing only its own GPU through
``CUDA_VISIBLE_DEVICES``. Run on a local Ray cluster that declares two fake GPUs; the job uses Pillow
and a classical filter, so nothing touches CUDA, and each actor's view of the GPUs reaches the
manifest (``components``) through what the runner recorded (`ShardRunner.built`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from helpers_ray import assert_same_output, base_config  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def gpu_cluster():
    import resize_pipeline

    root = str(Path(resize_pipeline.__file__).resolve().parents[1])
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": root}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def test_one_actor_per_gpu_each_sees_its_own(gpu_cluster, corpus, local_reference, tmp_path):
    from resize_pipeline import convert

    dest = tmp_path / "out"
    s = convert(base_config(corpus, dest, engine="ray", decoder="pillow", ray_gpus_per_actor=1.0))
    assert s.failed == 3 and s.written == s.total - 3
    components = json.loads((dest / "_manifest.json").read_text())["components"]
    workers = components.get("workers", [components])
    seen = sorted(w["cuda_visible_devices"] for w in workers)
    # each actor that converted had one GPU of its own (the pool is one actor per GPU:
    # test_plan_sizes_the_pool_by_gpus). Which actors get shards is Ray Data's dispatch: with 4 shards
    # released one by one, the first actor can convert them all before the second is given one
    assert seen and set(seen) <= {"0", "1"} and len(set(seen)) == len(seen), components
    assert components["resolved"]["gpus"] == 2 and components["resolved"]["device"] == "cpu"
    assert_same_output(dest, local_reference)  # the GPU placement changes no byte


def test_plan_sizes_the_pool_by_gpus(gpu_cluster):
    from resize_pipeline.preflight import Resolved
    from workers import ray_engine

    cfg = base_config(Path("/in"), Path("/out"))
    plan = ray_engine.plan_actors(cfg, Resolved("cuda", "dali-mixed", True), 100)
    assert (plan.concurrency, plan.num_gpus, plan.num_cpus) == (2, 1.0, 1.0)  # 2 CPUs / 2 GPUs
