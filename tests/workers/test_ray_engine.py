"""The Ray engine on a real local Ray cluster (2 CPUs): same output as the local engine, errors
recorded the same way, no sample lost when an actor is killed mid-shard, resume after a killed job."""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from helpers_ray import PER_SHARD, SAMPLES, assert_same_output, base_config  # noqa: E402

from workers.actors import task_row  # noqa: E402

pytestmark = pytest.mark.ray

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
sys.path.insert(0, str(PLUGINS))
import faults_plugin  # noqa: E402


@pytest.fixture(scope="module")
def faults(tmp_path_factory) -> Path:
    """The faults file the cluster's workers read (see tests/plugins/faults_plugin.py); empty = none."""
    path = tmp_path_factory.mktemp("faults") / "faults.json"
    faults_plugin.set_faults(str(path))
    return path


@pytest.fixture(scope="module")
def ray_cluster(faults):
    import resize_pipeline

    root = str(Path(resize_pipeline.__file__).resolve().parents[1])
    # address="local": always a fresh cluster of our own, never one that another process started here.
    # Its workers load the fault injection from outside the package.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": "faults_plugin.install",
                          "env_vars": {"PYTHONPATH": os.pathsep.join([str(PLUGINS), root]),
                                       faults_plugin.FAULTS_ENV: str(faults)}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture
def inject(faults):
    """Set the faults for the next job; cleared after the test."""
    yield lambda **kw: faults_plugin.set_faults(str(faults), **kw)
    faults_plugin.set_faults(str(faults))


def _part_tasks(corpus, dest: Path, per: int = PER_SHARD) -> list:
    """The shard tasks of `corpus` on listing parts written into `dest` (as a convert job plans them)."""
    from resize_pipeline.planning import Layout, Planner
    from resize_pipeline.sinks.dest import Dest
    from resize_pipeline.sources import list_source

    listing = list_source(str(corpus))
    tasks: list = []
    Planner(listing, Layout(listing.bound, per), Dest(str(dest))).run(lambda ev: tasks.extend(ev.tasks))
    return tasks


def test_task_rows_are_small_descriptors(corpus, tmp_path):
    """A Ray task row is the shard's index, name and row range of a listing part: well under 1 KB,
    whatever the shard size; the actor reads the rows back from the part."""
    import pyarrow as pa

    from resize_pipeline.shards import ShardTask
    from resize_pipeline.sources.rows import PartRows

    for per in (2, 20):
        tasks = _part_tasks(corpus, tmp_path / f"d{per}", per)
        for task in tasks:
            row = task_row(**task.descriptor())
            assert pa.Table.from_pylist([row]).nbytes < 1024
            back = ShardTask(row["index"], row["name"], PartRows(str(tmp_path / f"d{per}"), {}, row["part"]),
                             row["start"], row["stop"])
            assert back.items == task.items


def test_ray_output_equals_local(ray_cluster, corpus, local_reference, tmp_path):
    from resize_pipeline import convert

    dest = tmp_path / "ray"
    summary = convert(base_config(corpus, dest, engine="ray"))
    assert (summary.total, summary.failed) == (SAMPLES + 3, 3)
    assert summary.shards == -(-(SAMPLES + 3) // PER_SHARD)
    assert_same_output(dest, local_reference)
    assert ray.is_initialized(), "run_ray must not shut down a Ray instance it did not start"


def test_killed_actor_costs_no_sample(ray_cluster, inject, corpus, local_reference, tmp_path):
    from resize_pipeline import convert

    marker = tmp_path / "crashed"
    inject(crash_once=str(marker))
    dest = tmp_path / "ray"
    summary = convert(base_config(corpus, dest, engine="ray"))
    assert marker.exists(), "the test hook did not kill an actor"
    assert summary.written == SAMPLES
    assert_same_output(dest, local_reference)


def test_a_device_fault_ends_the_actor_and_ray_runs_its_shard_again(ray_cluster, corpus, local_reference,
                                                                    inject, tmp_path):
    """The typed error policy on Ray: a CUDA error in a stage is not an error row nor a retry in the
    same (possibly poisoned) process: the actor exits, Ray replaces it and runs the shard again."""
    from resize_pipeline import convert
    from resize_pipeline.sources import list_source

    log = tmp_path / "script.log"
    inject(script_key=list_source(str(corpus)).items[3].key, script=["device"], script_log=str(log))
    dest = tmp_path / "ray"
    summary = convert(base_config(corpus, dest, engine="ray"))
    lines = [line.split() for line in log.read_text().splitlines()]
    assert [a for _, a in lines] == ["device", "pass"] and lines[0][0] != lines[1][0]  # another process
    assert summary.written == SAMPLES
    assert_same_output(dest, local_reference)


@pytest.mark.timeout(900)  # three actor restarts: minutes on a loaded 2-core machine
@pytest.mark.parametrize("script", [["device", "device", "device"], ["stage", "device", "die"]])
def test_device_faults_count_in_the_attempt_ledger_on_ray(ray_cluster, corpus, inject, tmp_path, script):
    """A device fault ends the actor (Ray replaces it), and that attempt counts in the job's ledger
    like a failed stage or a dead actor: a shard whose GPU faults every time is attempted
    `--shard-attempts` (3) times in all, then recorded as failed (stage "shard"), and the job finishes
    (Ray Data alone would retry it forever)."""
    from resize_pipeline import convert
    from resize_pipeline.sources import list_source

    log = tmp_path / "script.log"
    key = list_source(str(corpus)).items[3].key
    inject(script_key=key, script=script + ["device"] * 3, script_log=str(log))
    dest = tmp_path / "ray"
    summary = convert(base_config(corpus, dest, engine="ray"))
    actions = [line.split()[1] for line in log.read_text().splitlines()]
    assert actions == script, actions  # 3 attempts, never a 4th
    failed = [e for e in (json.loads(x) for x in (dest / "_errors.jsonl").read_text().splitlines())
              if e["stage"] == "shard"]
    assert key in {e["key"] for e in failed} and len(failed) == PER_SHARD
    assert summary.total == summary.written + summary.failed


def test_killed_job_resumes_from_completed_shards(ray_cluster, corpus, local_reference, tmp_path):
    from resize_pipeline import convert

    dest = tmp_path / "ray"
    shutil.copytree(local_reference, dest)
    # a job killed mid-way: two shards never finished (no stats), one left a temporary file
    for name in ("shard-00001", "shard-00003"):
        (dest / "_stats" / f"{name}.json").unlink()
        (dest / f"{name}.tar").unlink()
        (dest / f"{name}.parquet").unlink()
    (dest / ".shard-00001.tar.partial-12345-0a1b2c3d").write_bytes(b"half a shard")
    # and one whose stats survived but not all its files: not sent at first, found incomplete by the
    # planner, converted in the second pass
    (dest / "shard-00002.parquet").unlink()
    (dest / "_manifest.json").unlink()
    summary = convert(base_config(corpus, dest, engine="ray"))
    assert summary.resumed_shards == summary.shards - 3
    assert_same_output(dest, local_reference)


def test_changed_inputs_are_refused_on_ray_too(ray_cluster, corpus, tmp_path):
    from resize_pipeline import convert
    from resize_pipeline.errors import OutputError

    src = tmp_path / "src"
    shutil.copytree(corpus, src)
    dest = tmp_path / "ray"
    convert(base_config(src, dest, engine="ray"))
    (dest / "_manifest.json").unlink()
    first = sorted(src.rglob("*.jpg"))[0]
    os.utime(first, ns=(1, 1))
    with pytest.raises(OutputError, match="changed since"):
        convert(base_config(src, dest, engine="ray"))
    assert not (dest / "_manifest.json").exists()


def test_workers_sets_actor_count(ray_cluster, corpus):
    from resize_pipeline.preflight import resolve
    from resize_pipeline.shards import plan_shards
    from resize_pipeline.sources import list_source
    from workers.ray_engine import plan_actors

    tasks = plan_shards(list_source(str(corpus)).items, PER_SHARD)
    cfg = base_config(corpus, "/unused")
    res = resolve(cfg)
    plan = plan_actors(cfg, res, len(tasks))
    assert (plan.concurrency, plan.num_cpus, plan.num_gpus) == (2, 1.0, 0.0)  # one actor per CPU, no GPU here
    assert plan_actors(cfg.replace(workers=1), res, len(tasks)).concurrency == 1
    assert plan_actors(cfg, res, 1).concurrency == 1  # never more actors than shards


def test_entrypoint_adds_ray_flags():
    from workers.entrypoint import build_argv

    assert build_argv(["a", "b"]) == ["convert", "a", "b", "--engine", "ray", "--address", "auto"]
    assert build_argv(["a", "b", "--address", "ray://h:10001"]) == [
        "convert", "a", "b", "--address", "ray://h:10001", "--engine", "ray"]


def test_memory_filesystem_and_gpu_index_are_refused(corpus):
    from resize_pipeline import convert
    from resize_pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="memory://"):
        convert(base_config(corpus, "memory://out", engine="ray"))
    with pytest.raises(ConfigError, match="each actor gets its own GPU"):
        convert(base_config(corpus, "/tmp/never-written", engine="ray", device="cuda:1"))


def test_plan_on_a_gpu_cluster(monkeypatch):
    """One actor per GPU, the GPU node's CPUs as its threads; overrides through the environment."""
    from workers import ray_engine

    head = {"Alive": True, "Resources": {"CPU": 4.0}}
    gpu_node = {"Alive": True, "Resources": {"CPU": 12.0, "GPU": 2.0}}
    dead = {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}
    from resize_pipeline.errors import ConfigError
    from resize_pipeline.preflight import Resolved

    monkeypatch.setattr(ray_engine.ray, "nodes", lambda: [head, gpu_node, dict(gpu_node), dead])
    cfg = base_config("/in", "/out")
    gpu = Resolved("cuda", "dali-mixed", True)
    plan = ray_engine.plan_actors(cfg, gpu, 100)
    assert (plan.concurrency, plan.num_gpus, plan.num_cpus, plan.threads) == (4, 1.0, 6.0, 6)
    assert ray_engine.plan_actors(cfg, gpu, 3).concurrency == 3
    # 16 CPUs per GPU: the GPU is shared by 4 actors of 4 CPUs (one process's host side is GIL-bound)
    big = {"Alive": True, "Resources": {"CPU": 32.0, "GPU": 2.0}}
    monkeypatch.setattr(ray_engine.ray, "nodes", lambda: [head, big])
    plan = ray_engine.plan_actors(cfg, gpu, 100)
    assert (plan.concurrency, plan.num_gpus, plan.num_cpus, plan.threads) == (8, 0.25, 4.0, 4)
    assert ray_engine.plan_actors(cfg.replace(ray_cpus_per_actor=15.0), gpu, 100).num_gpus == 1.0  # asked for
    monkeypatch.setattr(ray_engine.ray, "nodes", lambda: [head, gpu_node, dict(gpu_node), dead])
    # a job that uses no GPU asks for none, even on a GPU cluster
    cpu_plan = ray_engine.plan_actors(cfg, Resolved("cpu", "pillow", False), 100)
    assert (cpu_plan.num_gpus, cpu_plan.num_cpus) == (0.0, 1.0)
    plan = ray_engine.plan_actors(cfg.replace(ray_cpus_per_actor=3.0, ray_gpus_per_actor=0.5), gpu, 100)
    assert (plan.concurrency, plan.num_gpus, plan.num_cpus) == (8, 0.5, 3.0)
    from resize_pipeline.config import ray_knobs_from_env

    monkeypatch.setenv("RESIZE_PIPELINE_RAY_CPUS_PER_ACTOR", "2")  # the environment overrides the config
    assert ray_engine.plan_actors(ray_knobs_from_env(cfg.replace(ray_cpus_per_actor=3.0)), gpu, 100).num_cpus == 2.0
    monkeypatch.setenv("RESIZE_PIPELINE_RAY_CPUS_PER_ACTOR", "lots")
    with pytest.raises(ConfigError, match="RESIZE_PIPELINE_RAY_CPUS_PER_ACTOR"):
        ray_knobs_from_env(cfg)


def test_retry_cap_fails_the_job_instead_of_looping(ray_cluster, inject, corpus, tmp_path, caplog):
    """With ray_max_task_retries=0 a shard whose actor dies fails the job (a rerun then resumes from
    the shards that completed)."""
    from resize_pipeline import convert
    from resize_pipeline.errors import OutputError

    inject(crash_once=str(tmp_path / "crashed"))
    dest = tmp_path / "ray"
    with pytest.raises(OutputError, match="rerun the same command to resume") as info:
        convert(base_config(corpus, dest, engine="ray", ray_max_task_retries=0))
    assert isinstance(info.value.__cause__, ray.exceptions.RayActorError)
    assert not (dest / "_manifest.json").exists()
    # the failed job's actors are gone although the error is still held (`info`): their CPUs are free
    # for the rerun (which otherwise waited for actors that could not start, and timed out). pytest
    # keeps the test's log records, and Ray Data logs the failure with its traceback, whose frames hold
    # the actors: that hold (the harness's, not a caller's) is let go, and the collection the job ran
    # as it failed, which the records defeated, is run again
    for record in caplog.records:
        record.exc_info = None
    gc.collect()
    deadline = time.monotonic() + 15
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2, ray.available_resources()
    summary = convert(base_config(corpus, dest, engine="ray"))
    assert summary.written == SAMPLES


def test_job_runtime_env(monkeypatch):
    """Workers import the code the driver imported: PYTHONPATH on this machine, uploaded for Ray
    Client, nothing added inside a submitted job (its working_dir has it)."""
    import os

    import resize_pipeline
    from workers.ray_engine import job_runtime_env

    root = os.path.dirname(os.path.dirname(os.path.abspath(resize_pipeline.__file__)))
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    assert job_runtime_env(None) == {"env_vars": {"PYTHONPATH": f"{root}{os.pathsep}/elsewhere"}}
    shipped = job_runtime_env("ray://head:10001")
    assert sorted(os.path.basename(d) for d in shipped["py_modules"]) == ["resize_pipeline", "workers"]
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    assert job_runtime_env("auto") is None
    assert "py_modules" in job_runtime_env("auto", ship_code=True)
    assert job_runtime_env("ray://head:10001", ship_code=False) is None


def _fail_writes_of(monkeypatch, shard: str) -> dict:
    from resize_pipeline.sinks import base

    real_write = base.RollingShardWriter.write
    calls = {"n": 0}

    def flaky(self, sample):
        if self.base == shard:
            calls["n"] += 1
            raise OSError(f"injected write failure in {shard}")
        return real_write(self, sample)

    monkeypatch.setattr(base.RollingShardWriter, "write", flaky)
    return calls


def test_shard_converter_retries_then_records_like_the_local_engine(corpus, tmp_path, monkeypatch):
    """The actor class on its own (no Ray): a shard that raises is tried 3 times, then every input is
    recorded as failed, with no stats file (a rerun redoes it)."""
    from resize_pipeline.preflight import resolve
    from resize_pipeline.shards import failed_shard
    from workers.actors import ShardConverter, result_from_json

    out = tmp_path / "out"
    task = _part_tasks(corpus, out)[1]
    (out / "_stats").mkdir(parents=True)
    calls = _fail_writes_of(monkeypatch, task.name)
    config = base_config(corpus, out)
    actor = ShardConverter(config, resolve(config), threads=1)
    row = task_row(**task.descriptor())
    result = actor({k: np.array([v], dtype=object) for k, v in row.items()})
    res = result_from_json(result["result"][0])
    assert calls["n"] == 3
    assert res.to_dict() == failed_shard(task, OSError(f"injected write failure in {task.name}")).to_dict()
    assert not list((out / "_stats").iterdir())


def test_shard_level_failure_recorded_like_local_and_redone(ray_cluster, inject, corpus, local_reference, tmp_path,
                                                            monkeypatch):
    from resize_pipeline import convert

    local = tmp_path / "local"
    calls = _fail_writes_of(monkeypatch, "shard-00001")
    s_local = convert(base_config(corpus, local, engine="local", workers=1))
    assert calls["n"] == 3
    monkeypatch.undo()

    inject(fail_shard="shard-00001")
    dest = tmp_path / "ray"
    s_ray = convert(base_config(corpus, dest, engine="ray"))
    assert (s_ray.total, s_ray.written, s_ray.failed) == (s_local.total, s_local.written, s_local.failed)
    ref_failed_in_shard = json.loads((local_reference / "_stats" / "shard-00001.json").read_text())["failed"]
    assert s_ray.failed == 3 - ref_failed_in_shard + PER_SHARD  # the broken inputs elsewhere + the whole shard
    assert (dest / "_errors.jsonl").read_bytes() == (local / "_errors.jsonl").read_bytes()
    assert not (dest / "shard-00001.tar").exists() and not (dest / "_stats" / "shard-00001.json").exists()

    inject()
    summary = convert(base_config(corpus, dest, engine="ray"))
    assert summary.resumed_shards == summary.shards - 1
    assert_same_output(dest, local_reference)


def test_ray_data_reads_our_shards_back(ray_cluster, local_reference):
    """The documented Ray Data reader (resize_pipeline.readers.ray_dataset) on real output."""
    from resize_pipeline.readers import ray_dataset

    manifest = json.loads((local_reference / "_manifest.json").read_text())
    written = manifest["counts"]["written"]
    rows = ray_dataset(str(local_reference), "parquet").take_all()
    assert len(rows) == written and {r["width"] for r in rows} == {manifest["size"][0]}
    samples = ray_dataset(str(local_reference), "webdataset").take_all()
    assert len(samples) == written
    assert sorted(s["__key__"] for s in samples) == sorted(r["key"] for r in rows)


@pytest.mark.timeout(900)  # three actor restarts: minutes on a loaded 2-core machine
@pytest.mark.parametrize("attempts", [["crash", "crash", "crash"], ["raise", "crash", "crash"]])
def test_attempt_cap_holds_on_ray_whatever_ends_an_attempt(ray_cluster, inject, corpus, local_reference, tmp_path,
                                                           attempts):
    """A shard whose actor dies every time (or that raises, then kills its actor) is attempted 3 times
    in all, counted in the job's ledger whatever the cause, then recorded as failed (stage "shard"):
    the job finishes (Ray Data alone would restart the actor and retry it forever). A rerun converts it."""
    from resize_pipeline import convert

    log = tmp_path / "attempts.log"
    inject(attempts={"shard-00001": attempts + ["crash"] * 5}, log=str(log))
    dest = tmp_path / "ray"
    config = base_config(corpus, dest, engine="ray", format="webdataset")
    summary = convert(config)
    tried = [line for line in log.read_text().splitlines() if line.startswith("shard-00001 ")]
    assert len(tried) == 3, tried
    failed = [e for e in (json.loads(x) for x in (dest / "_errors.jsonl").read_text().splitlines())
              if e["stage"] == "shard"]
    assert len(failed) == PER_SHARD and "died" in failed[0]["error"], failed[:1]
    assert not (dest / "_stats" / "shard-00001.json").exists()
    broken_there = json.loads((local_reference / "_stats" / "shard-00001.json").read_text())["failed"]
    assert summary.failed == 3 - broken_there + PER_SHARD

    inject()
    again = convert(config)
    assert again.resumed_shards == again.shards - 1 and again.written == SAMPLES


def test_entrypoint_refuses_relative_paths_inside_a_job(monkeypatch, tmp_path, capsys):
    from workers import entrypoint

    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    assert entrypoint.main(["photos", str(tmp_path / "out"), "--size", "32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SOURCE 'photos' is a relative path" in err[0]
    assert entrypoint.relative_paths(entrypoint.build_argv(["s3://b/in", str(tmp_path), "--size", "8"])) == []
    assert entrypoint.relative_paths(entrypoint.build_argv(["--size", "8", "/abs/in", "out"])) == [("DEST", "out")]
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    monkeypatch.chdir(tmp_path)
    assert not entrypoint.in_a_job()


def test_help_and_docs_agree_on_the_ray_defaults():
    """The defaults `convert --help` prints for the Ray knobs are the ones docs/ray.md's table gives."""
    from resize_pipeline.config import ConvertConfig

    doc = " ".join((Path(__file__).resolve().parents[2] / "docs" / "ray.md").read_text().split())
    options = ConvertConfig.options()
    for name in ("ray_gpus_per_actor", "ray_cpus_per_actor", "ray_max_task_retries"):
        flag = "--" + name.replace("_", "-")
        row = next(line for line in doc.split("| `")[1:] if line.startswith(flag + "`"))
        assert " ".join(options[name].default_text.split()) in row, (flag, options[name].default_text)


def test_an_empty_folder_listed_on_ray_leaves_dest_as_it_was(ray_cluster, tmp_path):
    """A folder is listed on Ray once DEST is locked (the listing tasks write into it); when it holds
    no image the job says so in one line and what it wrote there is gone again."""
    from resize_pipeline import convert
    from resize_pipeline.errors import SourceError

    src = tmp_path / "empty"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "notes.txt").write_text("not an image")
    dest = tmp_path / "out"
    with pytest.raises(SourceError, match="no images found"):
        convert(base_config(src, dest, engine="ray"))
    assert sorted(p.name for p in dest.iterdir()) == [] if dest.exists() else True


def test_tar_members_skipped_by_ray_listing_tasks_reach_the_listing(ray_cluster, tmp_path):
    """Tars listed as Ray tasks (one per tar): what each task skipped (links, FIFOs) is counted on the
    driver, the examples in tar order; a ``.cls`` beyond 64 bits is one error row."""
    import io
    import tarfile

    from resize_pipeline.sources import open_source
    from resize_pipeline.sources.runs import RunStore
    from workers.listing_tasks import ray_runner

    def member(tf, name, data=b"", **kw):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        for k, v in kw.items():
            setattr(info, k, v)
        tf.addfile(info, io.BytesIO(data) if data else None)

    src = tmp_path / "src"
    src.mkdir()
    for t in range(4):
        with tarfile.open(src / f"t{t}.tar", "w") as tf:
            for s in range(2):
                member(tf, f"s{s}.jpg", b"img")
                member(tf, f"s{s}.cls", str(2**64 if (t, s) == (2, 1) else s).encode())
            member(tf, "link.jpg", type=tarfile.SYMTYPE, linkname="s0.jpg")
            if t % 2:
                member(tf, "pipe.jpg", type=tarfile.FIFOTYPE)
    listing = open_source(str(src))
    store = RunStore()
    try:
        listing.prepare(ray_runner(None), store)
        keys = [it.key for it in listing.items]
    finally:
        store.close()
    assert keys == [f"t{t}__s{s}" for t in range(4) for s in range(2) if (t, s) != (2, 1)]
    assert listing.skipped_members == {"symbolic link": 4, "FIFO": 2}
    assert [(e["path"].rsplit("/", 1)[-1], e["member"]) for e in listing.skipped_examples] == [
        ("t0.tar", "link.jpg"), ("t1.tar", "link.jpg"), ("t1.tar", "pipe.jpg"), ("t2.tar", "link.jpg"),
        ("t3.tar", "link.jpg"), ("t3.tar", "pipe.jpg")]
    [err] = list(listing.errors)
    assert err["key"] == "t2__s1" and "beyond the 64-bit integer range" in err["error"]
