"""One attempt ledger (`attempts.AttemptLedger`) for every way a shard attempt can fail (a stage that
raises, a device fault that ends the worker, a worker process that dies), on every local worker kind
(in-process, threads, processes), with one cap (``--shard-attempts``); and the typed error policy's
device faults: the worker is ended and replaced, never a committed row of errors.

Faults come from `tests/plugins/faults_plugin.py`'s ``script``: each decode of the batch holding one
chosen sample appends a line to a log (the log's length is the number of attempts) and runs the next
action (``stage``: an ordinary exception; ``device``: a CUDA error; ``die``: ``os._exit``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resize_pipeline.attempts import FORWARDED, AttemptLedger, ForwardingLedger
from resize_pipeline.config import ConvertConfig
from resize_pipeline.conversion import convert
from resize_pipeline.shards import plan_shards
from resize_pipeline.sources import list_source
from resize_pipeline.stages import DecodeStage

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "tests" / "plugins"
sys.path.insert(0, str(PLUGINS))
import faults_plugin  # noqa: E402


def _tasks(n=3, size=4):
    from resize_pipeline.sources.base import SourceItem

    items = [SourceItem(f"k{i}", f"/x/{i}.jpg") for i in range(n * size)]
    return plan_shards(items, size)


def test_the_ledger_counts_attempts_whatever_ends_them():
    led = AttemptLedger(cap=3)
    a, b, _ = _tasks()
    assert led.fail(a, "queued only") is None and led.attempts(a) == 0  # never started: not charged
    assert led.start(a) == 1 and led.running(a)
    assert led.fail(a, RuntimeError("a stage failed")) is None and not led.running(a)
    assert led.start(a) == 2
    assert led.fail(a, "the worker process died (exit code -9)") is None
    assert led.start(a) == 3
    final = led.fail(a, "device fault: CUDA error")
    assert final is not None and (final.total, final.written, final.failed, final.files) == (4, 0, 4, [])
    assert {e["stage"] for e in final.errors} == {"shard"} and len(final.errors) == 4
    assert "device fault" in final.errors[0]["error"]
    assert led.start(b) == 1
    led.done(b)
    assert led.attempts(b) == 0 and not led.running(b)
    with pytest.raises(ValueError):
        AttemptLedger(cap=0)


def test_a_forwarding_ledger_reports_and_never_decides():
    reports = []
    fwd = ForwardingLedger(lambda kind, payload: reports.append((kind, payload)))
    t = _tasks(1)[0]
    fwd.start(t)
    assert fwd.fail(t, OSError("write failed")) is FORWARDED
    assert reports == [("started", 0), ("failed", (0, "OSError: write failed"))]


@pytest.fixture
def script(tmp_path, monkeypatch):
    """``script(key, actions)``: the script fault for this process (in-process and thread workers)
    and, through the environment, for worker processes; returns the log path."""

    def set_script(key: str, actions: list[str]) -> Path:
        faults, log = tmp_path / "faults.json", tmp_path / "script.log"
        faults_plugin.set_faults(str(faults), script_key=key, script=actions, script_log=str(log))
        monkeypatch.setenv(faults_plugin.FAULTS_ENV, str(faults))
        real = DecodeStage.__call__
        monkeypatch.setattr(DecodeStage, "__call__", lambda self, b: (faults_plugin.script_step(b), real(self, b))[1])
        return log

    return set_script


@pytest.fixture
def builds(monkeypatch) -> list[int]:
    """How many `ShardRunner`s were built in this process."""
    from resize_pipeline.runner import ShardRunner

    made: list[int] = []
    real = ShardRunner.__init__

    def init(self, *a, **kw):
        made.append(1)
        real(self, *a, **kw)

    monkeypatch.setattr(ShardRunner, "__init__", init)
    return made


def _cfg(src, dst, **kw):
    kw.setdefault("workers", 1)
    return ConvertConfig(str(src), str(dst), size=32, samples_per_shard=4, batch_size=2, quiet=True, **kw)


def _tars(dst: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(dst.glob("*.tar"))}


def _log(log: Path) -> list[str]:
    return [line.split()[1] for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.parametrize("parallelism,workers", [("process", 1), ("thread", 2)])
def test_a_device_fault_ends_the_worker_and_its_shard_is_attempted_again(
        image_folder, tmp_path, script, builds, parallelism, workers):
    """In-process and thread workers: a CUDA error in a stage is not retried by the runner that saw it
    (its CUDA context may be poisoned): the worker is replaced by a new one, which converts the
    shard; the output is the undisturbed run's."""
    ref = tmp_path / "ref"
    convert(_cfg(image_folder, ref))
    key = list_source(str(image_folder)).items[5].key  # shard 1
    log = script(key, ["device"])
    builds.clear()
    s = convert(_cfg(image_folder, tmp_path / "out", workers=workers, parallelism=parallelism))
    assert (s.written, s.failed) == (10, 0)
    assert _log(log) == ["device", "pass"]  # one faulted attempt, then one that succeeded
    assert len(builds) == workers + 1  # the faulted worker was replaced, not reused
    assert _tars(tmp_path / "out") == _tars(ref)


def test_a_shard_that_keeps_faulting_is_recorded_after_the_cap_and_redone_by_a_rerun(
        image_folder, tmp_path, script):
    dst = tmp_path / "out"
    key = list_source(str(image_folder)).items[5].key
    log = script(key, ["device"] * 10)
    s = convert(_cfg(image_folder, dst, shard_attempts=2))
    assert _log(log) == ["device", "device"]  # exactly the cap, then recorded
    assert (s.written, s.failed) == (6, 4)
    errors = [json.loads(line) for line in (dst / "_errors.jsonl").read_text().splitlines()]
    assert {e["stage"] for e in errors} == {"shard"} and len(errors) == 4
    assert "CUDA error" in errors[0]["error"]
    assert not (dst / "_stats" / "shard-00001.json").exists()  # not committed: a rerun attempts it again
    assert sorted(p.name for p in dst.glob("*.tar")) == ["shard-00000.tar", "shard-00002.tar"]
    log.unlink()
    faults_plugin.set_faults(os.environ[faults_plugin.FAULTS_ENV], script_key=key, script=[], script_log=str(log))
    again = convert(_cfg(image_folder, dst, shard_attempts=2))  # the GPU is healthy again
    assert (again.written, again.failed, again.resumed_shards) == (10, 0, 2)
    assert _log(log) == ["pass"]


def _cli(src, dst, tmp_path, *flags, **faults) -> subprocess.CompletedProcess:
    sys.path.insert(0, str(REPO / "tests" / "reliability"))
    from helpers import fault_env

    env = dict(os.environ, **fault_env(tmp_path, **faults))
    cmd = [sys.executable, "-m", "resize_pipeline.cli", "convert", str(src), str(dst), "--size", "32",
           "--samples-per-shard", "4", "--batch-size", "2", "--workers", "2", "-q", *flags]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


@pytest.mark.slow
def test_every_way_of_failing_counts_against_one_cap(image_folder, tmp_path):
    """Worker processes: two failed stages and then a dead process are three attempts of the same
    shard: with the default cap (3) the shard is then recorded as failed, whatever mix of causes
    used the attempts up (not three per cause)."""
    key = list_source(str(image_folder)).items[5].key
    log = tmp_path / "script.log"
    dst = tmp_path / "out"
    proc = _cli(image_folder, dst, tmp_path, script_key=key, script=["stage", "stage", "die", "die", "die", "die"],
                script_log=str(log))
    assert proc.returncode == 0, proc.stderr
    assert _log(log) == ["stage", "stage", "die"]
    m = json.loads((dst / "_manifest.json").read_text())
    assert (m["counts"]["written"], m["counts"]["failed"], m["counts"]["failed_by_stage"]) == (6, 4, {"shard": 4})
    assert not (dst / "_stats" / "shard-00001.json").exists()


@pytest.mark.slow
def test_a_device_fault_ends_a_worker_process_and_another_converts_its_shard(image_folder, tmp_path):
    ref = tmp_path / "ref"
    convert(_cfg(image_folder, ref))
    key = list_source(str(image_folder)).items[5].key
    log = tmp_path / "script.log"
    dst = tmp_path / "out"
    proc = _cli(image_folder, dst, tmp_path, script_key=key, script=["device"], script_log=str(log))
    assert proc.returncode == 0, proc.stderr
    lines = log.read_text().split()
    assert _log(log) == ["device", "pass"]
    assert lines[0] != lines[2]  # another process (the faulted one ended)
    assert "a worker stopped" in proc.stderr and "device fault" in proc.stderr
    m = json.loads((dst / "_manifest.json").read_text())
    assert (m["counts"]["written"], m["counts"]["failed"]) == (10, 0)
    assert _tars(dst) == _tars(ref)


def test_a_gpu_that_cannot_be_used_again_ends_the_job_with_one_line(image_folder, tmp_path, script, monkeypatch):
    """In-process: after a device fault no new worker can be built (the CUDA context is gone): the job
    stops with a job error (exit 2, one line), the shards done so far kept for a rerun."""
    from resize_pipeline.errors import OutputError
    from resize_pipeline.runner import ShardRunner

    key = list_source(str(image_folder)).items[5].key
    script(key, ["device"])
    real, made = ShardRunner.__init__, []

    def init(self, *a, **kw):
        made.append(1)
        if len(made) > 1:
            raise RuntimeError("CUDA error: no CUDA-capable device is detected")
        real(self, *a, **kw)

    monkeypatch.setattr(ShardRunner, "__init__", init)
    dst = tmp_path / "out"
    with pytest.raises(OutputError, match="no worker could be built again") as info:
        convert(_cfg(image_folder, dst))
    assert "\n" not in str(info.value) and "rerun the same command" in str(info.value)
    assert (dst / "_stats" / "shard-00000.json").exists()  # what was committed stays
    assert not (dst / "_manifest.json").exists()
