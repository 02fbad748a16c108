"""End to end: real files in, real shards out, read back by webdataset and pyarrow themselves."""

import io
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from resize_pipeline.config import ConvertConfig
from resize_pipeline.conversion import convert
from resize_pipeline.encode import decode_payload
from tests.reliability.helpers import worker_pids


def run(src, dst, **kw):
    kw.setdefault("workers", 1)
    kw.setdefault("quiet", True)
    return convert(ConvertConfig(str(src), str(dst), **kw))


def read_wds(dst):
    urls = sorted(str(p) for p in dst.glob("*.tar"))
    return list(wds.WebDataset(urls, shardshuffle=False))


@pytest.mark.parametrize("mode,size", [("center-crop", (64, 48)), ("pad", (64, 64)), ("stretch", (40, 30))])
def test_round_trip_both_formats(image_folder, tmp_path, mode, size):
    dst = tmp_path / "out"
    s = run(image_folder, dst, size=size, mode=mode, format="both", samples_per_shard=4)
    assert (s.total, s.written, s.failed) == (10, 10, 0)
    tars, parquets = sorted(dst.glob("*.tar")), sorted(dst.glob("*.parquet"))
    assert [p.name for p in tars] == ["shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]
    assert [p.stem for p in parquets] == [p.stem for p in tars]

    samples = read_wds(dst)
    table = pq.ParquetDataset([str(p) for p in parquets]).read()
    assert len(samples) == table.num_rows == 10
    keys = [s["__key__"] for s in samples]
    assert keys == sorted(keys) == table.column("key").to_pylist()
    for sample, row in zip(samples, table.to_pylist(), strict=True):
        img = np.asarray(Image.open(io.BytesIO(sample["jpg"])))
        assert img.shape == (size[1], size[0], 3)
        assert sample["jpg"] == row["image"]["bytes"]  # same bytes in both formats
        meta = json.loads(sample["json"])
        assert meta["label_name"] == row["label_name"] == sample["__key__"].split("__")[0]
        assert int(sample["cls"]) == row["label"] == meta["label"] == ["chelsea", "coffee"].index(meta["label_name"])
        assert (row["width"], row["height"]) == size and meta["orig_width"] == row["orig_width"] > 0
        assert row["source"].endswith((".jpg", ".png")) and row["format"] == "jpg"

    manifest = json.loads((dst / "_manifest.json").read_text())
    assert manifest["counts"]["total"] == 10 and manifest["counts"]["written"] == 10
    assert {f["name"] for f in manifest["shards"]} == {p.name for p in tars + parquets}
    assert manifest["config"]["mode"] == mode and manifest["classes"] == ["chelsea", "coffee"]
    assert (dst / "_errors.jsonl").read_text() == ""


def test_broken_files_are_accounted_for(broken_folder, tmp_path):
    dst = tmp_path / "out"
    s = run(broken_folder, dst, size=32, format="parquet")
    assert (s.total, s.written, s.failed) == (13, 10, 3)
    errors = [json.loads(line) for line in (dst / "_errors.jsonl").read_text().splitlines()]
    assert sorted(e["path"].rsplit("/", 1)[1] for e in errors) == ["empty.jpg", "notes.jpg", "truncated.jpg"]
    assert all(e["stage"] == "decode" and e["error_type"] and e["error"] for e in errors)
    assert pq.read_table(dst / "shard-00000.parquet").num_rows == 10
    m = json.loads((dst / "_manifest.json").read_text())
    assert m["counts"]["failed"] == 3 and m["counts"]["failed_by_stage"] == {"decode": 3}


@pytest.mark.parametrize("enc", ["png", "webp", "npy"])
def test_encodings(image_folder, tmp_path, enc):
    dst = tmp_path / enc
    run(image_folder, dst, size=(24, 16), encode=enc, mode="stretch")
    sample = read_wds(dst)[0]
    img = decode_payload(sample[enc], enc)
    assert img.shape == (16, 24, 3) and img.dtype == np.uint8 and img.std() > 1


def test_lossless_npy_matches_resizer_output(image_folder, tmp_path):
    dst = tmp_path / "npy"
    run(image_folder, dst, size=(24, 16), encode="npy", mode="stretch", resizer="lanczos", draft=False)
    sample = read_wds(dst)[0]
    src = np.asarray(Image.open(image_folder / "chelsea" / "img_0.jpg").convert("RGB"))
    ref = np.asarray(Image.fromarray(src).resize((24, 16), Image.Resampling.LANCZOS))
    assert np.array_equal(decode_payload(sample["npy"], "npy"), ref)


def test_byte_rotation(image_folder, tmp_path):
    dst = tmp_path / "rot"
    run(image_folder, dst, size=64, encode="png", max_shard_bytes=30_000, samples_per_shard=10)
    tars = sorted(p.name for p in dst.glob("*.tar"))
    assert len(tars) > 1 and tars[0] == "shard-00000-000.tar"
    assert len(read_wds(dst)) == 10


def test_processes_and_threads_write_the_same_bytes(image_folder, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run(image_folder, a, size=32, samples_per_shard=3, workers=1)
    run(image_folder, b, size=32, samples_per_shard=3, workers=2, parallelism="process")
    run(image_folder, c, size=32, samples_per_shard=3, workers=2, parallelism="thread", overlap=True)
    for p in sorted(a.glob("*.tar")):
        assert p.read_bytes() == (b / p.name).read_bytes() == (c / p.name).read_bytes()


def test_memory_to_memory(image_folder):
    import fsspec

    fs = fsspec.filesystem("memory")
    for p in sorted(image_folder.rglob("*.*")):
        fs.pipe(f"/conv_src/{p.parent.name}/{p.name}", p.read_bytes())
    s = convert(ConvertConfig("memory://conv_src", "memory://conv_dst", size=32, workers=2, quiet=True))
    assert s.written == 10
    assert fs.exists("/conv_dst/shard-00000.tar") and fs.exists("/conv_dst/_manifest.json")
    with fs.open("/conv_dst/shard-00000.tar", "rb") as fh, tarfile.open(fileobj=fh) as tf:
        assert len(tf.getnames()) == 30  # jpg + json + cls per sample


def test_shard_level_failure_is_retried_then_recorded_and_redone_on_rerun(image_folder, tmp_path, monkeypatch):
    from resize_pipeline.sinks import base

    real_write = base.RollingShardWriter.write
    calls = {"n": 0}

    def flaky(self, sample):
        if self.base == "shard-00001":
            calls["n"] += 1
            raise OSError("No space left on device")
        return real_write(self, sample)

    monkeypatch.setattr(base.RollingShardWriter, "write", flaky)
    dst = tmp_path / "out"
    s = run(image_folder, dst, size=32, samples_per_shard=4)
    assert (s.total, s.written, s.failed) == (10, 6, 4) and calls["n"] == 3  # three attempts
    errors = [json.loads(line) for line in (dst / "_errors.jsonl").read_text().splitlines()]
    assert {e["stage"] for e in errors} == {"shard"} and all("No space left" in e["error"] for e in errors)
    assert not (dst / "shard-00001.tar").exists() and not (dst / "_stats" / "shard-00001.json").exists()
    monkeypatch.setattr(base.RollingShardWriter, "write", real_write)
    s = run(image_folder, dst, size=32, samples_per_shard=4)
    assert (s.total, s.written, s.failed, s.resumed_shards) == (10, 10, 0, 2)


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads /proc")
def test_a_killed_worker_process_costs_no_sample(image_folder, tmp_path):
    """SIGKILL one worker mid-job (as the OOM killer would): the pool is rebuilt, the lost shards are
    redone, the job completes with every sample, and its output equals an undisturbed run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    for i in range(90):  # enough shards that the job is still running when a worker is killed (also under load)
        src = image_folder / "coffee" / f"img_{i % 4}.jpg"
        (image_folder / "coffee" / f"extra_{i:02d}.jpg").write_bytes(src.read_bytes())
    ref, dst = tmp_path / "ref", tmp_path / "out"
    run(image_folder, ref, size=32, samples_per_shard=2, workers=2, encode="png")
    cmd = [sys.executable, "-m", "resize_pipeline.cli", "convert", str(image_folder), str(dst), "--size", "32",
           "--samples-per-shard", "2", "--workers", "2", "--encode", "png", "--batch-size", "1", "-q"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.time() + 60
    while killed is None and time.time() < deadline and proc.poll() is None:
        stats = list((dst / "_stats").glob("*.json")) if (dst / "_stats").exists() else []
        workers = worker_pids(proc.pid)
        if stats and workers:
            killed = workers[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.01)
    _, err = proc.communicate(timeout=120)
    assert killed is not None, "the job finished before a worker could be killed"
    assert proc.returncode == 0, err
    assert "worker process died" in err
    m = json.loads((dst / "_manifest.json").read_text())
    assert (m["counts"]["written"], m["counts"]["failed"]) == (100, 0)
    assert {p.name: p.read_bytes() for p in dst.glob("*.tar")} == {p.name: p.read_bytes() for p in ref.glob("*.tar")}
    assert not [p for p in dst.iterdir() if ".partial" in p.name]
