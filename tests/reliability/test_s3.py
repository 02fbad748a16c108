"""Object storage in and out: ``s3://`` through s3fs against a loopback S3 server (moto), with injected
transient failures, and ``memory://``. No network beyond 127.0.0.1."""

from __future__ import annotations

import json
import posixpath
import shutil

import fsspec
import pyarrow.parquet as pq
import pytest

from resize_pipeline import convert
from resize_pipeline.config import ConvertConfig
from resize_pipeline.errors import OutputError

from .conftest import storage_options
from .helpers import decode_sample, read_webdataset, run_cli, tree_files, write_jpegs

pytest.importorskip("s3fs")

BASE = dict(size=32, samples_per_shard=4, format="both", encode="png", quiet=True)


def _s3(endpoint: str, **extra):
    so = storage_options(endpoint, **extra)
    return fsspec.filesystem("s3", skip_instance_cache=True, **so), so


def _upload(fs, local, bucket: str, prefix: str) -> list[str]:
    keys = []
    for p in sorted(local.iterdir()):
        fs.pipe_file(f"{bucket}/{prefix}/{p.name}", p.read_bytes())
        keys.append(p.name)
    fs.invalidate_cache()
    return keys


@pytest.fixture
def images(tmp_path):
    src = tmp_path / "src"
    write_jpegs(src, 9, seed=5)
    shutil.copy(src / "000001.jpg", src / "ünï cøde [1].jpg")  # unicode, space, glob characters in a key
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    return src


def _samples_by_name(urls, so=None) -> dict[str, tuple]:
    out = {}
    for s in read_webdataset(urls, so).values():
        img, info = decode_sample(s)
        out[info["source"].rsplit("/", 1)[-1]] = (
            s["__key__"],
            img.tobytes(),
            info["orig_width"],
            info["orig_height"],
        )
    return out


def test_s3_source_to_local_dest(s3_endpoint, s3_bucket, images, tmp_path):
    fs, so = _s3(s3_endpoint)
    _upload(fs, images, s3_bucket, "in")
    s = convert(
        ConvertConfig(
            source=f"s3://{s3_bucket}/in",
            dest=str(tmp_path / "from_s3"),
            storage_options=so,
            workers=1,
            **BASE,
        )
    )
    assert (s.total, s.written, s.failed) == (11, 10, 1)
    [err] = [json.loads(x) for x in (tmp_path / "from_s3" / "_errors.jsonl").read_text().splitlines()]
    assert err["path"] == f"s3://{s3_bucket}/in/broken.jpg" and err["stage"] == "decode"
    # same pixels, keys and sizes as converting the local copy
    local = convert(ConvertConfig(source=str(images), dest=str(tmp_path / "from_local"), workers=1, **BASE))
    assert (local.written, local.failed) == (10, 1)
    a = _samples_by_name([str(p) for p in sorted((tmp_path / "from_s3").glob("*.tar"))])
    b = _samples_by_name([str(p) for p in sorted((tmp_path / "from_local").glob("*.tar"))])
    assert a == b and "ünï cøde [1].jpg" in a


def test_local_source_to_s3_dest_roundtrip_and_resume(s3_endpoint, s3_bucket, images, tmp_path):
    fs, so = _s3(s3_endpoint)
    dest = f"s3://{s3_bucket}/out/run1"
    config = ConvertConfig(source=str(images), dest=dest, storage_options=so, workers=2, **BASE)
    s = convert(config)  # two worker processes: storage options travel with the config
    assert (s.total, s.written, s.failed) == (11, 10, 1)
    root = f"{s3_bucket}/out/run1"
    manifest = json.loads(fs.cat_file(f"{root}/_manifest.json"))
    listed = {posixpath.basename(p) for p in fs.ls(root, detail=False)}
    shard_files = {f["name"] for f in manifest["shards"]}
    assert listed == shard_files | {"_manifest.json", "_errors.jsonl", "_run.json", "_stats", "_inputs", "_listing"}
    assert len(fs.ls(f"{root}/_stats")) == len(fs.ls(f"{root}/_inputs")) == s.shards == 3
    assert {posixpath.basename(p) for p in fs.ls(f"{root}/_listing")} == {"part-00000.parquet", "_index.json"}
    # read back through fsspec with each format's own reader
    tars = sorted(f"s3://{root}/{n}" for n in shard_files if n.endswith(".tar"))
    wds = _samples_by_name(tars, so)
    rows = []
    for n in sorted(n for n in shard_files if n.endswith(".parquet")):
        rows += pq.read_table(f"{root}/{n}", filesystem=fs).to_pylist()
    assert len(wds) == len(rows) == 10
    assert sorted(wds) == sorted(r["source"].rsplit("/", 1)[-1] for r in rows)
    # the very same bytes as a local destination (sha256 recorded per shard file)
    local = convert(config.replace(dest=str(tmp_path / "local"), storage_options={}))
    local_files = tree_files(tmp_path / "local")
    for f in manifest["shards"]:
        assert fs.cat_file(f"{root}/{f['name']}") == local_files[f["name"]]
    assert fs.cat_file(f"{root}/_errors.jsonl") == local_files["_errors.jsonl"]
    assert local.manifest["shards"] == manifest["shards"]

    # rerun: everything reused, nothing rewritten
    stamps = {p: fs.info(p)["LastModified"] for p in fs.find(root)}
    fs.invalidate_cache()
    config = config.replace(workers=1)
    again = convert(config)
    assert again.resumed_shards == again.shards == 3 and again.written == 10
    fs.invalidate_cache()
    # run-level documents are rewritten each run (the listing's parts and index are only compared)
    rewritten = ("_run.json", "_manifest.json", "_errors.jsonl")
    assert {p: fs.info(p)["LastModified"] for p in fs.find(root) if not p.endswith(rewritten)} == {
        p: t for p, t in stamps.items() if not p.endswith(rewritten)
    }

    # a crash on an object store: a shard uploaded but no stats, another shard's stats without its file
    fs.rm(f"{root}/_stats/shard-00001.json")
    fs.rm(f"{root}/shard-00002.parquet")
    fs.invalidate_cache()
    redo = convert(config)
    assert redo.resumed_shards == 1 and redo.written == 10
    fs.invalidate_cache()
    for f in manifest["shards"]:
        assert fs.cat_file(f"{root}/{f['name']}") == local_files[f["name"]]

    # a different config into the same prefix is refused; --overwrite replaces everything of ours
    with pytest.raises(OutputError, match="different config"):
        convert(config.replace(size=(48, 48)))
    fs.pipe_file(f"{root}/notes.txt", b"not ours")
    over = convert(config.replace(size=(48, 48), samples_per_shard=6, overwrite=True))
    assert over.resumed_shards == 0 and over.shards == 2
    fs.invalidate_cache()
    manifest = json.loads(fs.cat_file(f"{root}/_manifest.json"))
    assert {posixpath.basename(p) for p in fs.ls(root, detail=False)} == {
        f["name"] for f in manifest["shards"]
    } | {"_manifest.json", "_errors.jsonl", "_run.json", "_stats", "_inputs", "_listing", "notes.txt"}
    assert len(fs.ls(f"{root}/_stats")) == len(fs.ls(f"{root}/_inputs")) == 2  # the old run's 3 records are gone


def test_cli_to_s3_with_endpoint_from_environment(s3_endpoint, s3_bucket, images):
    """The CLI has no storage-options flag: s3fs/botocore take credentials and endpoint from the usual
    environment variables (AWS_ENDPOINT_URL here)."""
    r = run_cli(
        str(images), f"s3://{s3_bucket}/cli", "--size", "32", "-q", env={"AWS_ENDPOINT_URL": s3_endpoint}
    )
    assert r.returncode == 0, r.stderr
    fs, _ = _s3(s3_endpoint)
    manifest = json.loads(fs.cat_file(f"{s3_bucket}/cli/_manifest.json"))
    assert manifest["counts"] == {**manifest["counts"], "total": 11, "written": 10, "failed": 1}
    assert fs.exists(f"{s3_bucket}/cli/shard-00000.tar")


@pytest.mark.parametrize("botocore_retries", [True, False], ids=["default-retries", "no-botocore-retries"])
def test_transient_s3_failures_are_retried_without_loss(
    fault_proxy, s3_endpoint, s3_bucket, images, tmp_path, botocore_retries, caplog
):
    fs, _ = _s3(s3_endpoint)
    _upload(fs, images, s3_bucket, "in")
    p = f"/{s3_bucket}/in/"
    fault_proxy.faults = {
        p + "000001.jpg": ["slowdown", "slowdown"],  # S3 "SlowDown" 503s (s3fs retries these itself)
        p + "000002.jpg": [503, 503],  # "ServiceUnavailable" 503s (botocore's retries, else ours)
        p + "000003.jpg": ["drop"],  # connection closed mid-request
    }
    extra = {} if botocore_retries else {"config_kwargs": {"retries": {"total_max_attempts": 1}}}
    so = storage_options(fault_proxy.url, skip_instance_cache=True, **extra)
    s = convert(
        ConvertConfig(
            source=f"s3://{s3_bucket}/in", dest=str(tmp_path / "out"), storage_options=so, workers=1, **BASE
        )
    )
    assert (s.total, s.written, s.failed) == (11, 10, 1)  # only the genuinely broken file failed
    [err] = [json.loads(x) for x in (tmp_path / "out" / "_errors.jsonl").read_text().splitlines()]
    assert err["path"].endswith("broken.jpg") and err["stage"] == "decode"
    assert all(not q for q in fault_proxy.faults.values()), "every injected fault was hit"
    assert fault_proxy.gets[p + "000001.jpg"] == 3 and fault_proxy.gets[p + "000002.jpg"] == 3
    assert fault_proxy.gets[p + "000003.jpg"] == 2
    names = _samples_by_name([str(x) for x in sorted((tmp_path / "out").glob("*.tar"))])
    assert {"000001.jpg", "000002.jpg", "000003.jpg"} <= set(names)
    reader_retried = any(
        "retrying" in r.getMessage() for r in caplog.records if r.name == "resize_pipeline.sources.reader"
    )
    # with botocore's retries off, the ServiceUnavailable 503s reach our reader, which retries them
    assert reader_retried == (not botocore_retries)


def test_permanent_s3_failure_is_recorded_and_the_job_finishes(
    fault_proxy, s3_endpoint, s3_bucket, images, tmp_path
):
    fs, _ = _s3(s3_endpoint)
    _upload(fs, images, s3_bucket, "in")
    fault_proxy.always = {f"/{s3_bucket}/in/000004.jpg": 503}
    so = storage_options(
        fault_proxy.url, skip_instance_cache=True, config_kwargs={"retries": {"total_max_attempts": 1}}
    )
    s = convert(
        ConvertConfig(
            source=f"s3://{s3_bucket}/in", dest=str(tmp_path / "out"), storage_options=so, workers=1, **BASE
        )
    )
    assert (s.total, s.written, s.failed) == (11, 9, 2)
    errors = {
        e["path"].rsplit("/", 1)[-1]: e
        for e in map(json.loads, (tmp_path / "out" / "_errors.jsonl").read_text().splitlines())
    }
    assert errors["000004.jpg"]["stage"] == "read" and errors["000004.jpg"]["error"]
    assert errors["broken.jpg"]["stage"] == "decode"
    assert fault_proxy.gets[f"/{s3_bucket}/in/000004.jpg"] == 4  # first try + 3 retries of the reader


def test_memory_in_and_out(images):
    fs = fsspec.filesystem("memory")
    src, dst = "/reliability-mem/src", "/reliability-mem/out"
    try:
        for p in images.iterdir():
            fs.pipe_file(f"{src}/{p.name}", p.read_bytes())
        s = convert(ConvertConfig(source=f"memory://{src}", dest=f"memory://{dst}", workers=2, **BASE))
        assert (s.total, s.written, s.failed) == (11, 10, 1)
        manifest = json.loads(fs.cat_file(f"{dst}/_manifest.json"))
        tars = [f"memory://{dst}/{f['name']}" for f in manifest["shards"] if f["name"].endswith(".tar")]
        rows = []
        for f in manifest["shards"]:
            if f["name"].endswith(".parquet"):
                with fs.open(f"{dst}/{f['name']}", "rb") as fh:
                    rows += pq.read_table(fh).to_pylist()
        assert len(_samples_by_name(tars)) == len(rows) == 10
        again = convert(ConvertConfig(source=f"memory://{src}", dest=f"memory://{dst}", workers=2, **BASE))
        assert again.resumed_shards == again.shards
    finally:
        fs.rm("/reliability-mem", recursive=True)


@pytest.mark.parametrize("store", ["memory", "s3"])
def test_failed_shard_leaves_no_object_behind(store, images, monkeypatch, request):
    """A shard that dies half-way (an unexpected error, not a bad input) must not appear under its final
    name: on object stores closing a file commits it, so the writer has to discard, not close. After its
    retries its inputs are recorded as failed (stage "shard") and a rerun converts it."""
    from resize_pipeline.stages import EncodeStage

    calls = {"n": 0}
    real = EncodeStage.__call__

    def flaky(self, batch):
        calls["n"] += 1
        if calls["n"] >= 2:  # every attempt dies after its first batch
            raise RuntimeError("injected: worker died mid-shard")
        return real(self, batch)

    monkeypatch.setattr(EncodeStage, "__call__", flaky)
    if store == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        fs, so = _s3(request.getfixturevalue("s3_endpoint"))
        root = f"{bucket}/out"
    else:
        fs, so, root = fsspec.filesystem("memory"), {}, "/reliability-abort/out"
    config = ConvertConfig(
        source=str(images),
        dest=f"{store}://{root}",
        storage_options=so,
        workers=1,
        batch_size=2,
        **{**BASE, "samples_per_shard": 20},
    )
    try:
        s = convert(config)
        assert (s.total, s.written, s.failed) == (11, 0, 11) and calls["n"] == 4  # 1 + 3 attempts
        fs.invalidate_cache()
        left = sorted(posixpath.basename(p) for p in fs.find(root))
        # no shard, no stats
        assert left == ["_errors.jsonl", "_index.json", "_manifest.json", "_run.json", "part-00000.parquet"], left
        with fs.open(f"{root}/_errors.jsonl") as fh:
            errors = [json.loads(line) for line in fh.read().decode().splitlines()]
        assert {e["stage"] for e in errors} == {"shard"} and "injected" in errors[0]["error"]
        monkeypatch.setattr(EncodeStage, "__call__", real)
        s = convert(config)  # and the rerun completes it
        assert (s.written, s.failed) == (10, 1)
    finally:
        if store == "memory":
            fs.rm("/reliability-abort", recursive=True)
