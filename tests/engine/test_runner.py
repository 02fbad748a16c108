"""`ShardRunner` on real files: one stream across shard boundaries, write errors retried without
decoding again, stage failures retried per shard, and `ShardService` (what Ray actors run)."""

from __future__ import annotations

import threading

import pytest

from resize_pipeline.config import ConvertConfig
from resize_pipeline.conversion import convert
from resize_pipeline.preflight import resolve
from resize_pipeline.runner import ShardRunner, ShardService
from resize_pipeline.shards import plan_shards
from resize_pipeline.sinks.dest import Dest
from resize_pipeline.sources import list_source
from resize_pipeline.stages import DecodeStage, ReadStage


def _events(monkeypatch) -> list[tuple[str, str]]:
    """Record ("read", first key of the batch) and ("commit", stats file) in the order they happen."""
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    real_read, real_json = ReadStage.__call__, Dest.write_json

    def read(self, batch):
        with lock:
            events.append(("read", str(batch["key"][0])))
        return real_read(self, batch)

    def write_json(self, data, *names):
        if names and names[0] == "_stats":
            with lock:
                events.append(("commit", names[-1]))
        return real_json(self, data, *names)

    monkeypatch.setattr(ReadStage, "__call__", read)
    monkeypatch.setattr(Dest, "write_json", write_json)
    return events


def test_no_drain_at_shard_boundaries(image_folder, tmp_path, monkeypatch):
    """The reader starts the next shard before the current one is committed (overlapped stream)."""
    events = _events(monkeypatch)
    cfg = ConvertConfig(str(image_folder), str(tmp_path / "out"), size=32, samples_per_shard=4, batch_size=2,
                        workers=1, overlap=True, quiet=True)
    s = convert(cfg)
    assert (s.written, s.shards) == (10, 3)
    items = list_source(str(image_folder)).items
    first_of_shard1 = items[4].key
    read_at = events.index(("read", first_of_shard1))
    commit_at = events.index(("commit", "shard-00000.json"))
    assert read_at < commit_at, events


def test_a_write_error_is_retried_without_decoding_again(image_folder, tmp_path, monkeypatch):
    """Local disk: a transient error opening a shard's file (or renaming it into place) is retried;
    the images are not decoded again."""
    decoded: list[int] = []
    real_decode = DecodeStage.__call__
    monkeypatch.setattr(DecodeStage, "__call__", lambda self, b: (decoded.append(len(b["key"])), real_decode(self, b))[1])
    fails = {"left": 2}
    real_open = None

    def flaky_open(self, path, mode="rb", *a, **kw):
        if "w" in mode and ".tar" in path and fails["left"]:
            fails["left"] -= 1
            raise ConnectionResetError("injected: connection reset while uploading")
        return real_open(self, path, mode, *a, **kw)

    import fsspec.implementations.local as local

    real_open = local.LocalFileSystem.open
    monkeypatch.setattr(local.LocalFileSystem, "open", flaky_open)
    dst = tmp_path / "out"
    s = convert(ConvertConfig(str(image_folder), str(dst), size=32, samples_per_shard=5, workers=1, quiet=True))
    assert fails["left"] == 0, "the injected errors were not hit"
    assert (s.written, s.failed) == (10, 0)
    assert sum(decoded) == 10  # every image decoded once: the retry re-sent bytes, not work
    assert sorted(p.name for p in dst.glob("*.tar")) == ["shard-00000.tar", "shard-00001.tar"]
    assert not [p for p in dst.iterdir() if ".partial" in p.name]


def test_an_upload_error_is_retried_from_the_spool(image_folder, tmp_path, monkeypatch):
    """Object stores: a shard is built in a local spool and uploaded on commit; a dropped upload is
    retried from the spool (no decode again), and no partial object is ever left."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    fails = {"left": 2}

    class FlakyStore(MemoryFileSystem):  # an object store whose uploads sometimes drop
        protocol = "flakystore"

        @classmethod
        def _strip_protocol(cls, path):
            return MemoryFileSystem._strip_protocol(path.removeprefix("flakystore://"))

        def _open(self, path, mode="rb", **kw):
            if "w" in mode and path.endswith(".tar") and fails["left"]:
                fails["left"] -= 1
                raise ConnectionResetError("injected: upload dropped")
            return super()._open(path, mode, **kw)

    fsspec.register_implementation("flakystore", FlakyStore, clobber=True)
    fsspec.filesystem("flakystore").mkdir("bucket")  # the bucket exists: the tool never creates one
    decoded: list[int] = []
    real_decode = DecodeStage.__call__
    monkeypatch.setattr(DecodeStage, "__call__", lambda self, b: (decoded.append(len(b["key"])), real_decode(self, b))[1])
    s = convert(ConvertConfig(str(image_folder), "flakystore://bucket/out", size=32, samples_per_shard=5,
                              workers=1, quiet=True))
    assert fails["left"] == 0 and (s.written, s.failed) == (10, 0) and sum(decoded) == 10
    fs = fsspec.filesystem("flakystore")
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls("/bucket/out", detail=False) if p.endswith(".tar")) == [
        "shard-00000.tar", "shard-00001.tar"]
    assert not Dest("flakystore://bucket/out").visible  # it took the spool path


def test_a_failing_stage_fails_its_shard_only_and_is_retried(image_folder, tmp_path, monkeypatch):
    """An exception inside a stage (not a bad sample) fails that shard attempt; the runner retries
    the shard (3 attempts) while the other shards stream on."""
    calls = {"n": 0}
    real_decode = DecodeStage.__call__
    bad_key = list_source(str(image_folder)).items[5].key

    def flaky(self, batch):
        if bad_key in list(batch["key"]):
            calls["n"] += 1
            if calls["n"] <= 2:
                raise RuntimeError("injected: decoder crashed")
        return real_decode(self, batch)

    monkeypatch.setattr(DecodeStage, "__call__", flaky)
    s = convert(ConvertConfig(str(image_folder), str(tmp_path / "out"), size=32, samples_per_shard=4,
                              batch_size=2, workers=1, quiet=True))
    assert calls["n"] == 3 and (s.written, s.failed) == (10, 0)


def test_shard_service_streams_submitted_shards(image_folder, tmp_path):
    cfg = ConvertConfig(str(image_folder), str(tmp_path / "out"), size=32, samples_per_shard=3, quiet=True)
    tasks = plan_shards(list_source(str(image_folder)).items, 3)
    runner = ShardRunner(cfg, resolve(cfg))
    (tmp_path / "out").mkdir()
    service = ShardService(runner)
    futures = [service.submit(t) for t in tasks]
    results = [f.result(timeout=60) for f in futures]
    assert [r.name for r in results] == [t.name for t in tasks]
    assert sum(r.written for r in results) == 10 and results[0].built["decoder"]["name"] == "pillow"
    late = service.submit(tasks[0])  # the service waits for more work between submissions
    assert late.result(timeout=60).written == results[0].written
    service.close(timeout=30)
    assert not service._thread.is_alive()


def test_a_job_level_error_reaches_every_waiting_caller(image_folder, tmp_path, monkeypatch):
    from resize_pipeline.sinks.dest import DestinationFull

    def full(self, *a, **kw):
        raise DestinationFull("no space left while writing in the test")

    monkeypatch.setattr(Dest, "commit", full)
    cfg = ConvertConfig(str(image_folder), str(tmp_path / "out"), size=32, samples_per_shard=5, quiet=True)
    service = ShardService(ShardRunner(cfg, resolve(cfg)))
    futures = [service.submit(t) for t in plan_shards(list_source(str(image_folder)).items, 5)]
    for f in futures:
        with pytest.raises(DestinationFull):
            f.result(timeout=60)
