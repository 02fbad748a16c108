"""Every reader on a DEST of 3 generations with superseded samples: the latest complete generation by
default or ``generation=g``, every live sample exactly once across ranks x workers, never a superseded
one; the same from the formats' own libraries with the documented filter."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from torch.utils.data import DataLoader

from resize_pipeline.config import ConvertConfig
from resize_pipeline.conversion import convert
from resize_pipeline.readers import arrow_table, open_output, superseded, torch_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from generations.conftest import Source  # noqa: E402

OPTS = {"size": (24, 16), "samples_per_shard": 3, "format": "both", "workers": 1, "quiet": True, "update": True}


def _grow(src: Source, dest: Path, **kw) -> None:
    convert(ConvertConfig(str(src.root), str(dest), **{**OPTS, **kw}))


def _versions(dest: Path) -> dict[int, dict[str, bytes]]:
    """Per generation: key -> the image bytes a reader must see (from the Parquet files, newest last)."""
    m = json.loads((dest / "_manifest.json").read_text())
    out: dict[int, dict[str, bytes]] = {}
    for g in range(1, m["generation"] + 1):
        out[g] = {}
        dead = superseded(str(dest), generation=g)
        for f in m["shards"]:
            if f["format"] == "parquet" and f["generation"] <= g:
                for r in pq.read_table(dest / f["name"]).to_pylist():
                    if (f["name"], r["key"]) not in dead:
                        assert r["key"] not in out[g], f"{r['key']} live twice in generation {g}"
                        out[g][r["key"]] = r["image"]["bytes"]
    return out


@pytest.fixture(scope="module")
def grown(tmp_path_factory) -> tuple[Path, dict[int, dict[str, bytes]], Source]:
    root = tmp_path_factory.mktemp("generations")
    src, dest = Source(root / "src"), root / "out"
    src.add("cats", 6)
    src.add("dogs", 4)
    _grow(src, dest)                                             # 1: 10 samples in 4 shards
    src.add("cats", 3, start=6)
    src.add("dogs", 1, start=4)
    src.change("cats/c001.jpg", 101)
    src.change("dogs/d002.jpg", 102)
    _grow(src, dest, on_change="replace")                        # 2: +4 new, 2 replaced -> 14 live
    src.add("dogs", 3, start=5)
    src.change("cats/c007.jpg", 103)  # a sample of generation 2, replaced in 3
    src.delete("cats/c004.jpg")
    _grow(src, dest, on_change="replace", prune_deleted=True)   # 3: +3 new, 1 replaced, 1 pruned -> 16 live
    versions = _versions(dest)
    assert [len(versions[g]) for g in (1, 2, 3)] == [10, 14, 16]
    assert versions[1]["cats__c001"] != versions[2]["cats__c001"]
    assert "cats__c004" in versions[2] and "cats__c004" not in versions[3]
    assert versions[2]["cats__c007"] != versions[3]["cats__c007"]
    return dest, versions, src


def _read(dest, generation, fmt, ranks=2, workers=2, **kw) -> list[tuple[str, bytes]]:
    got = []
    for rank in range(ranks):
        ds = torch_dataset(str(dest), format=fmt, decode=None, with_label=False, rank=rank, world_size=ranks,
                           generation=generation, **kw)
        n = 0
        for batch in DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=lambda b: b):
            got += [(k, bytes(img)) for img, k in batch]
            n += len(batch)
        assert n == len(ds)
    return got


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
@pytest.mark.parametrize("generation", [None, 1, 2, 3])
def test_pytorch_reads_each_live_sample_once_across_ranks_and_workers(grown, fmt, generation):
    dest, versions, _ = grown
    want = versions[generation or 3]
    got = _read(dest, generation, fmt)
    assert Counter(k for k, _ in got) == Counter(list(want))  # every live sample, once
    assert all(data == want[k] for k, data in got)  # each in its version of that generation


def test_pytorch_shuffled_epochs_stay_exact_and_ranks_balanced(grown):
    dest, versions, _ = grown
    for epoch in (0, 1):
        per_rank = []
        for rank in range(3):
            ds = torch_dataset(str(dest), decode=None, with_label=False, rank=rank, world_size=3, shuffle=4, seed=1)
            ds.set_epoch(epoch)
            per_rank.append([k for _, k in ds])
        assert Counter(k for keys in per_rank for k in keys) == Counter(list(versions[3]))
        assert max(map(len, per_rank)) - min(map(len, per_rank)) <= 1


@pytest.mark.parametrize("generation", [1, 2, 3])
def test_arrow_and_hugging_face(grown, generation, tmp_path):
    dest, versions, _ = grown
    table = arrow_table(str(dest), columns=["key", "image"], generation=generation)
    assert {r["key"]: r["image"]["bytes"] for r in table.to_pylist()} == versions[generation]
    assert table.num_rows == len(versions[generation])
    from resize_pipeline.readers import hf_dataset

    ds = hf_dataset(str(dest), generation=generation, cache_dir=str(tmp_path / "hf"))
    assert sorted(ds["key"]) == sorted(versions[generation])
    assert ds[0]["image"].size == (24, 16)


def test_a_reader_of_generation_g_keeps_its_view_while_g_plus_1_is_written(grown, tmp_path):
    dest, versions, src_copy = grown  # (SOURCE is part of what a DEST is made of: the same one grows it)
    copy = tmp_path / "out"
    shutil.copytree(dest, copy)
    ds = torch_dataset(str(copy), decode=None, with_label=False)
    out = open_output(str(copy))
    it = iter(ds)
    first = [next(it) for _ in range(5)]  # reading has begun
    src_copy.change("cats/c000.jpg", 201)
    src_copy.change("dogs/d006.jpg", 202)
    src_copy.add("cats", 2, start=20)
    convert(ConvertConfig(str(src_copy.root), str(copy), **{**OPTS, "on_change": "replace"}))  # generation 4
    rest = list(it)
    assert Counter(k for _, k in first + rest) == Counter(list(versions[3]))
    assert all(bytes(d) == versions[3][k] for d, k in first + rest)
    assert sum(r.live for r in out.shards("parquet")) == 16  # opened at 3: still 3
    assert open_output(str(copy)).generation == 4 and open_output(str(copy), generation=3).live_samples == 16


def test_the_webdataset_recipe_skips_superseded_samples(grown):
    """docs/reading.md: the webdataset library alone, with the manifest's list and the superseded marks."""
    import webdataset as wds

    dest, versions, _ = grown
    manifest = json.loads((dest / "_manifest.json").read_text())
    tars = [str(dest / s["name"]) for s in manifest["shards"] if s["format"] == "webdataset"]
    dead = set()
    for g in manifest.get("generations", []):
        if g.get("superseded"):
            t = pq.read_table(dest / g["superseded"]["name"], columns=["file", "key"])
            dead |= set(zip(t["file"].to_pylist(), t["key"].to_pylist(), strict=True))
    ds = wds.WebDataset(tars, shardshuffle=False, empty_check=False).select(
        lambda s: (os.path.basename(s["__url__"]), s["__key__"]) not in dead)
    got = {s["__key__"]: s for s in ds}
    assert set(got) == set(versions[3]) and len(list(ds)) == 16


def test_dali_reads_live_samples_through_its_indexes(grown, tmp_path):
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def

    from resize_pipeline.errors import OutputError
    from resize_pipeline.readers import dali_pipeline, write_dali_indexes

    dest, versions, _ = grown
    copy = tmp_path / "out"
    shutil.copytree(dest, copy)
    with pytest.raises(OutputError, match="superseded samples, which DALI would read without index files"):
        dali_pipeline(str(copy), batch_size=4, num_threads=1)
    paths = write_dali_indexes(str(copy))
    assert any(".g000003.idx" in p for p in paths) and any(".g000002.idx" in p for p in paths)
    pipe = dali_pipeline(str(copy), batch_size=4, num_threads=1)
    assert pipe.epoch_size("reader") == 16
    # the recipe of docs/reading.md: DALI's own reader with our index files
    out = open_output(str(copy))
    tars = [r for r in out.shards("webdataset") if r.live]
    from resize_pipeline.readers.dali import fresh_indexes

    @pipeline_def(batch_size=16, num_threads=1, device_id=None)
    def keys():
        return fn.readers.webdataset(paths=[r.path for r in tars], index_paths=fresh_indexes(out, tars), ext=["json"])

    p = keys()
    p.build()
    (batch,) = p.run()
    got = [json.loads(bytes(np.asarray(batch.at(i))).decode())["key"] for i in range(len(batch))]
    assert sorted(got) == sorted(versions[3])
    # generation 2 has its own indexes
    write_dali_indexes(str(copy), generation=2)
    assert dali_pipeline(str(copy), batch_size=4, num_threads=1, generation=2).epoch_size("reader") == 14


@pytest.mark.ray
def test_ray_data_reads_live_samples(grown):
    ray = pytest.importorskip("ray")
    from resize_pipeline.readers import ray_dataset

    dest, versions, _ = grown
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        rows = ray_dataset(str(dest), "parquet").take_all()
        samples = ray_dataset(str(dest), "webdataset").take_all()
        old = ray_dataset(str(dest), "parquet", generation=1).take_all()
    finally:
        ray.shutdown()
    assert {r["key"]: r["image"]["bytes"] for r in rows} == versions[3] and len(rows) == 16
    assert sorted(s["__key__"] for s in samples) == sorted(versions[3])
    assert sorted(r["key"] for r in old) == sorted(versions[1])
