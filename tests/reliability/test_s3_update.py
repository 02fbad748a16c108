"""``convert --update`` with SOURCE and DEST on S3 (moto on 127.0.0.1): changes seen through ETags,
generations byte-identical to the same updates on local disk, readers of each generation, and a
killed update completed by a rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest

from resize_pipeline.config import ConvertConfig
from resize_pipeline.conversion import convert
from resize_pipeline.errors import OutputError
from resize_pipeline.readers import arrow_table, torch_dataset

from .conftest import storage_options
from .helpers import REPO, tree_files

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from generations.conftest import Source  # noqa: E402

OPTS = {"size": (24, 16), "samples_per_shard": 3, "format": "both", "quiet": True, "update": True, "workers": 1}


def _objects(fs, root: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    return {p[len(root) + 1:]: fs.cat_file(p) for p in sorted(fs.find(root))}


def _comparable(files: dict[str, bytes]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, data in files.items():
        if name == "_manifest.json":
            m = json.loads(data)
            for g in m["generations"]:
                g.pop("created")
                g.pop("seconds")
            out[name] = {k: m[k] for k in ("shards", "shard_stats", "counts", "generations")}
        elif name != "_run.json":
            out[name] = data
    return out


def test_updates_on_s3_match_local_disk_and_read_back(s3_endpoint, s3_bucket, tmp_path):
    fs, so = fsspec.filesystem("s3", skip_instance_cache=True, **storage_options(s3_endpoint)), \
        storage_options(s3_endpoint)
    src = Source(tmp_path / "src")
    src.add("cats", 5)
    src.add("dogs", 4)
    s3_src, s3_dest = f"s3://{s3_bucket}/raw", f"s3://{s3_bucket}/shards"
    local_src, local_dest = tmp_path / "local-src", tmp_path / "local-dest"

    def sync() -> None:  # SOURCE on S3 and a local copy of it: the same keys and the same bytes
        import shutil

        for p in sorted(src.root.rglob("*")):  # only what changed is uploaded again (a new ETag and time)
            key = f"{s3_bucket}/raw/{p.relative_to(src.root).as_posix()}"
            if p.is_file() and (not fs.exists(key) or fs.cat_file(key) != p.read_bytes()):
                fs.pipe_file(key, p.read_bytes())
        fs.invalidate_cache()

        shutil.rmtree(local_src, ignore_errors=True)
        shutil.copytree(src.root, local_src)

    def both(**kw):
        a = convert(ConvertConfig(s3_src, s3_dest, storage_options=so, **{**OPTS, **kw}))
        b = convert(ConvertConfig(str(local_src), str(local_dest), **{**OPTS, **kw}))
        return a, b

    sync()
    a, _ = both()
    assert a.generation["generation"] == 1 and a.written == 9
    # changes on S3 are seen through the ETag: same size, other bytes
    before = {p: fs.info(p)["ETag"] for p in fs.find(f"{s3_bucket}/raw")}
    src.change("cats/c001.jpg", 71)
    src.add("dogs", 2, start=4)
    sync()
    after = {p: fs.info(p)["ETag"] for p in fs.find(f"{s3_bucket}/raw")}
    assert before[f"{s3_bucket}/raw/cats/c001.jpg"] != after[f"{s3_bucket}/raw/cats/c001.jpg"]
    with pytest.raises(OutputError, match="1 input\\(s\\) changed since they were converted: cats__c001"):
        convert(ConvertConfig(s3_src, s3_dest, storage_options=so, **OPTS))
    a, b = both(on_change="replace")
    assert a.generation["counts"] == b.generation["counts"] and a.generation["counts"]["superseded"] == 1
    assert a.generation["counts"]["new"] == 2 and a.generation["counts"]["unchanged"] == 8
    nothing = convert(ConvertConfig(s3_src, s3_dest, storage_options=so, **OPTS))
    assert nothing.generation["generation"] == 0
    # the same generations as on local disk: the same files, and in each shard the same samples with
    # the same image bytes (the samples' metadata and the records name SOURCE: s3:// there, file:// here)
    got = _comparable(_objects(fs, f"{s3_bucket}/shards"))
    want = _comparable(tree_files(local_dest))
    assert sorted(got) == sorted(want)
    import io

    import pyarrow.parquet as pq

    for name in want:
        if "/" not in name and name.endswith(".parquet"):
            rows = [pq.read_table(io.BytesIO(x), columns=["key", "image"]).to_pylist() for x in (got[name], want[name])]
            assert rows[0] == rows[1], name
    for k in ("counts",):
        assert got["_manifest.json"][k] == want["_manifest.json"][k]  # type: ignore[index]
    assert [g["counts"] for g in got["_manifest.json"]["generations"]] == \
        [g["counts"] for g in want["_manifest.json"]["generations"]]  # type: ignore[index]
    # readers of each generation, from S3
    latest = sorted(arrow_table(s3_dest, columns=["key"], storage_options=so).column("key").to_pylist())
    first = sorted(arrow_table(s3_dest, columns=["key"], storage_options=so, generation=1).column("key").to_pylist())
    assert len(latest) == 11 and len(first) == 9 and latest.count("cats__c001") == 1
    keys = [k for _, k in torch_dataset(s3_dest, with_label=False, decode=None, storage_options=so)]
    assert sorted(keys) == latest


def test_a_killed_update_on_s3_completes_on_rerun(s3_endpoint, s3_bucket, tmp_path):
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **storage_options(s3_endpoint))
    src = Source(tmp_path / "src")
    src.add("cats", 12)
    cfg = tmp_path / "s3.toml"
    cfg.write_text("[storage_options]\nkey = 'x'\nsecret = 'x'\n[storage_options.client_kwargs]\n"
                   f"endpoint_url = '{s3_endpoint}'\nregion_name = 'us-east-1'\n")
    dest = f"s3://{s3_bucket}/shards"
    cmd = [sys.executable, "-m", "resize_pipeline.cli", "convert", str(src.root), dest, "--size", "24x16",
           "--samples-per-shard", "2", "--format", "both", "--workers", "1", "--batch-size", "1", "-q", "--update",
           "--config", str(cfg)]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=120).returncode == 0
    base = _objects(fs, f"{s3_bucket}/shards")
    src.add("cats", 10, start=12)
    ref = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert ref.returncode == 0, ref.stderr
    reference = _comparable(_objects(fs, f"{s3_bucket}/shards"))
    fs.rm(f"{s3_bucket}/shards", recursive=True)
    for name, data in base.items():
        fs.pipe_file(f"{s3_bucket}/shards/{name}", data)
    fs.invalidate_cache()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:  # kill it once some new shard is committed
        fs.invalidate_cache()
        if fs.exists(f"{s3_bucket}/shards/_stats/shard-00007.json"):
            break
        time.sleep(0.05)
    killed = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert killed, "the update finished before it could be killed"
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    got = _comparable(_objects(fs, f"{s3_bucket}/shards"))
    assert sorted(got) == sorted(reference) and got == reference
