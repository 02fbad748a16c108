"""DALI: our index files (checked against DALI's own wds2idx) and the pipeline, in DALI's CPU-only mode."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest

from resize_pipeline.errors import OutputError
from resize_pipeline.readers.dali import (
    INDEX_RECORD,
    fresh_indexes,
    index_name,
    tar_index,
    write_dali_indexes,
)
from resize_pipeline.readers.output import open_output

from .conftest import SIZE


def test_index_matches_dalis_own_wds2idx(image_folder, make_output, tmp_path):
    wds2idx = pytest.importorskip("wds2idx")  # ships with the DALI wheel
    if shutil.which("tar") is None:
        pytest.skip("wds2idx needs the tar program")
    dest = make_output(image_folder, format="webdataset", samples_per_shard=4)
    for tar in sorted(dest.glob("*.tar")):
        ours = tar_index(open(tar, "rb"))
        theirs = tmp_path / f"{tar.stem}.theirs.idx"
        with wds2idx.IndexCreator(str(tar), str(theirs), verbose=False) as ic:
            ic.create_index()
        assert ours == theirs.read_text()
        assert ours.startswith("v1.2 ")


def test_write_indexes_beside_the_tars_and_detect_stale_ones(image_folder, make_output):
    dest = make_output(image_folder, format="both", samples_per_shard=4)
    urls = write_dali_indexes(str(dest))
    assert [u.rsplit("/", 1)[1] for u in urls] == ["shard-00000.idx", "shard-00001.idx", "shard-00002.idx"]
    record = json.loads((dest / INDEX_RECORD).read_text())
    manifest = json.loads((dest / "_manifest.json").read_text())
    assert record == {index_name(s["name"]): s["sha256"] for s in manifest["shards"] if s["format"] == "webdataset"}
    assert (dest / "shard-00002.idx").read_text().startswith("v1.2 2\n")  # 10 samples, 4 per shard
    out = open_output(str(dest))
    assert fresh_indexes(out, out.shards("webdataset")) == [str(dest / n) for n in sorted(record)]
    # a new conversion into the same DEST (other content): --overwrite removes our indexes with the rest;
    # indexes brought back from elsewhere (a backup) no longer match the tars and are not used
    saved = {p.name: p.read_bytes() for p in [*dest.glob("*.idx"), dest / INDEX_RECORD]}
    make_output(image_folder, format="both", samples_per_shard=4, size=(24, 24), overwrite=True)
    assert not list(dest.glob("*.idx")) and not (dest / INDEX_RECORD).exists()
    for name, data in saved.items():
        (dest / name).write_bytes(data)
    out = open_output(str(dest))
    assert fresh_indexes(out, out.shards("webdataset")) is None
    write_dali_indexes(str(dest))
    assert fresh_indexes(out, out.shards("webdataset")) is not None


def test_indexes_on_fsspec_memory(image_folder):
    import fsspec

    from resize_pipeline.config import ConvertConfig
    from resize_pipeline.conversion import convert

    fs = fsspec.filesystem("memory")
    try:
        convert(ConvertConfig(str(image_folder), "memory://dali-idx/out", size=SIZE, samples_per_shard=6,
                              workers=1, quiet=True))
        urls = write_dali_indexes("memory://dali-idx/out")
        assert [u.split("://")[1].lstrip("/") for u in urls] == ["dali-idx/out/shard-00000.idx", "dali-idx/out/shard-00001.idx"]
        assert fs.cat_file("/dali-idx/out/shard-00001.idx").startswith(b"v1.2 4\n")
    finally:
        fs.rm("/dali-idx", recursive=True)


def _epoch(pipe, n: int) -> tuple[list[int], list[np.ndarray]]:
    from resize_pipeline.readers import labels_from_cls

    labels, images = [], []
    while len(labels) < n:
        imgs, cls = pipe.run()
        labels += labels_from_cls(cls)
        images += [np.asarray(imgs.at(i)) for i in range(len(imgs))]
    return labels[:n], images[:n]


@pytest.mark.parametrize("with_index", [True, False])
def test_dali_cpu_pipeline_reads_every_sample(image_folder, make_output, with_index):
    pytest.importorskip("nvidia.dali")
    from resize_pipeline.readers import dali_pipeline

    dest = make_output(image_folder, format="both", samples_per_shard=4)
    if with_index:
        write_dali_indexes(str(dest))
    pipe = dali_pipeline(str(dest), batch_size=5, num_threads=1)
    assert pipe.epoch_size("reader") == 10
    labels, images = _epoch(pipe, 10)
    assert Counter(labels) == {0: 5, 1: 5} and labels[:4] == [0, 0, 0, 0]
    assert all(im.shape == (SIZE[1], SIZE[0], 3) and im.dtype == np.uint8 and im.std() > 1 for im in images)


def test_dali_sharding_splits_between_ranks(image_folder, make_output):
    pytest.importorskip("nvidia.dali")
    from resize_pipeline.readers import dali_pipeline

    dest = make_output(image_folder, format="webdataset", samples_per_shard=100)  # one tar
    write_dali_indexes(str(dest))
    sizes = [dali_pipeline(str(dest), batch_size=2, num_threads=1, shard_id=r, num_shards=2).epoch_size("reader")
             for r in range(2)]
    assert sizes == [10, 10]  # DALI reports the whole reader's size; each shard reads its half
    a, _ = _epoch(dali_pipeline(str(dest), batch_size=5, num_threads=1, shard_id=0, num_shards=2), 5)
    b, _ = _epoch(dali_pipeline(str(dest), batch_size=5, num_threads=1, shard_id=1, num_shards=2), 5)
    assert Counter(a + b) == {0: 5, 1: 5}


def test_dali_refuses_what_it_cannot_read(image_folder, make_output):
    pytest.importorskip("nvidia.dali")
    from resize_pipeline.readers import dali_pipeline

    npy = make_output(image_folder, "npy", format="webdataset", encode="npy")
    with pytest.raises(OutputError, match="npy payloads"):
        dali_pipeline(str(npy))
    pq_only = make_output(image_folder, "pq", format="parquet")
    with pytest.raises(OutputError, match="no WebDataset shards"):
        dali_pipeline(str(pq_only))
    with pytest.raises(OutputError, match="no WebDataset shards"):
        write_dali_indexes(str(pq_only))


@pytest.mark.gpu
def test_dali_gpu_decode(image_folder, make_output):
    pytest.importorskip("nvidia.dali")
    from resize_pipeline.readers import dali_pipeline

    dest = make_output(image_folder, format="webdataset", samples_per_shard=4)
    write_dali_indexes(str(dest))
    images, cls = dali_pipeline(str(dest), batch_size=5, num_threads=2, device_id=0).run()
    assert type(images).__name__ == "TensorListGPU"  # decoded by nvJPEG, still on the device
    first = np.asarray(images.as_cpu().at(0))
    assert first.shape == (SIZE[1], SIZE[0], 3) and first.std() > 1
    from resize_pipeline.readers import labels_from_cls

    assert labels_from_cls(cls) == [0] * 5
