"""The PyTorch reader: every sample exactly once per epoch across ranks x DataLoader workers."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader

from resize_pipeline.errors import OutputError
from resize_pipeline.readers import partition, torch_dataset

from .conftest import SIZE


def _keys(dest) -> list[str]:
    """Keys in the order the conversion wrote them (the manifest's shard order)."""
    import webdataset as wds

    from resize_pipeline.readers import shard_urls

    return [s["__key__"] for s in wds.WebDataset(shard_urls(str(dest)), shardshuffle=False, empty_check=False)]


def _read(dest, *, ranks=2, workers=2, epoch=0, **kw) -> dict[int, list[str]]:
    """Keys each rank's DataLoader (with `workers` workers) yields in one epoch."""
    out = {}
    for rank in range(ranks):
        ds = torch_dataset(str(dest), with_label=False, decode="torchrgb8", rank=rank, world_size=ranks, **kw)
        ds.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=3, num_workers=workers)
        out[rank] = [k for _, keys in loader for k in keys]
        assert len(out[rank]) == len(ds)  # len() is what this rank reads
    return out


@pytest.mark.parametrize("counts", [[5], [4, 4, 2], [1, 0, 7, 3], [0, 0], [2] * 9])
@pytest.mark.parametrize("parts", [1, 2, 3, 4, 8])
def test_partition_covers_every_sample_once(counts, parts):
    seen: Counter = Counter()
    sizes = []
    for p in range(parts):
        pieces = partition(counts, p, parts)
        sizes.append(sum(b - a for _, a, b in pieces))
        for f, a, b in pieces:
            assert 0 <= a < b <= counts[f]
            seen.update((f, i) for i in range(a, b))
    assert seen == Counter((f, i) for f, n in enumerate(counts) for i in range(n))
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("samples_per_shard", [100, 4], ids=["1-shard", "3-shards"])
@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_two_ranks_two_workers_read_every_sample_once(image_folder, make_output, samples_per_shard, fmt):
    dest = make_output(image_folder, format="both", samples_per_shard=samples_per_shard)
    expected = _keys(dest)
    got = _read(dest, format=fmt)
    everything = got[0] + got[1]
    assert sorted(everything) == sorted(expected) and len(expected) == 10
    assert abs(len(got[0]) - len(got[1])) <= 1
    # no shuffling: each rank reads a contiguous run in the conversion's order, per worker
    assert set(got[0]).isdisjoint(got[1])


def test_more_readers_than_samples_still_exactly_once(image_folder, make_output):
    dest = make_output(image_folder, format="webdataset", samples_per_shard=100)
    got = _read(dest, ranks=6, workers=2)  # 12 readers, 10 samples, 1 shard
    assert sorted(k for keys in got.values() for k in keys) == sorted(_keys(dest))


def test_shuffle_is_seeded_changes_per_epoch_and_stays_exact(image_folder, make_output):
    dest = make_output(image_folder, format="webdataset", samples_per_shard=3)  # 4 shards
    expected = sorted(_keys(dest))
    a0 = _read(dest, shuffle=4, seed=7, epoch=0)
    again = _read(dest, shuffle=4, seed=7, epoch=0)
    a1 = _read(dest, shuffle=4, seed=7, epoch=1)
    other = _read(dest, shuffle=4, seed=8, epoch=0)
    for run in (a0, a1, other):
        assert sorted(run[0] + run[1]) == expected
    assert a0 == again  # same seed and epoch: same order on every rank
    assert a0 != a1 and a0 != other
    plain = _read(dest)
    assert a0[0] + a0[1] != plain[0] + plain[1]


def test_default_rank_from_torch_distributed(image_folder, make_output, tmp_path):
    """Two real gloo processes, 2 DataLoader workers each, rank/world_size not passed."""
    import torch.multiprocessing as mp

    dest = make_output(image_folder, format="webdataset", samples_per_shard=100)
    results = tmp_path / "keys"
    results.mkdir()
    mp.spawn(_gloo_rank, args=(str(dest), str(tmp_path / "store"), str(results)), nprocs=2, join=True)
    got = {r: json.loads((results / f"{r}.json").read_text()) for r in range(2)}
    assert sorted(got[0] + got[1]) == sorted(_keys(dest))
    assert abs(len(got[0]) - len(got[1])) <= 1 and got[0] and got[1]


def _gloo_rank(rank: int, dest: str, store: str, results: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        ds = torch_dataset(dest, with_label=False, decode=None, shuffle=5, seed=1)
        keys = [k for _, batch in DataLoader(ds, batch_size=4, num_workers=2) for k in batch]
        with open(f"{results}/{rank}.json", "w") as fh:
            json.dump(keys, fh)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_images_and_labels(image_folder, make_output, fmt):
    dest = make_output(image_folder, format="both", samples_per_shard=4)
    items = list(torch_dataset(str(dest), format=fmt))
    assert len(items) == 10
    img, _ = items[0]
    assert isinstance(img, torch.Tensor) and img.shape == (3, SIZE[1], SIZE[0]) and img.dtype == torch.float32
    assert 0 <= float(img.min()) < float(img.max()) <= 1
    assert Counter(label for _, label in items) == {0: 5, 1: 5}
    xb, yb = next(iter(DataLoader(torch_dataset(str(dest), format=fmt), batch_size=5)))
    assert xb.shape == (5, 3, SIZE[1], SIZE[0]) and yb.tolist() == [0] * 5  # chelsea first


def test_same_pixels_from_both_formats(image_folder, make_output):
    dest = make_output(image_folder, format="both", samples_per_shard=4)
    a = {k: img for img, k in torch_dataset(str(dest), format="webdataset", with_label=False, decode="rgb8")}
    b = {k: img for img, k in torch_dataset(str(dest), format="parquet", with_label=False, decode="rgb8")}
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_npy_payloads_follow_the_decode_spec(image_folder, make_output):
    dest = make_output(image_folder, format="both", encode="npy", samples_per_shard=4)
    for fmt in ("webdataset", "parquet"):
        img, label = next(iter(torch_dataset(str(dest), format=fmt)))
        assert img.shape == (3, SIZE[1], SIZE[0]) and img.dtype == torch.float32 and label == 0
        raw, _ = next(iter(torch_dataset(str(dest), format=fmt, decode="rgb8")))
        assert raw.shape == (SIZE[1], SIZE[0], 3) and raw.dtype.name == "uint8"


def test_unlabelled_output_gives_minus_one(tmp_path, image_folder, make_output):
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted(image_folder.rglob("*.jpg"))[:3]:
        (flat / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    dest = make_output(flat, format="both")
    for fmt in ("webdataset", "parquet"):
        assert [label for _, label in torch_dataset(str(dest), format=fmt)] == [-1, -1, -1]


def test_transform_and_bad_arguments(image_folder, make_output):
    dest = make_output(image_folder, format="parquet")
    ds = torch_dataset(str(dest), transform=lambda x: x.mean())
    assert next(iter(ds))[0].ndim == 0
    with pytest.raises(OutputError, match="no webdataset shards"):
        torch_dataset(str(dest), format="webdataset")
    with pytest.raises(ValueError, match="rank"):
        torch_dataset(str(dest), rank=2, world_size=2)
    with pytest.raises(ValueError, match="both rank and world_size"):
        torch_dataset(str(dest), rank=0)
    with pytest.raises(ValueError, match="shuffle"):
        torch_dataset(str(dest), shuffle=-1)


def test_fsspec_memory_output(image_folder):
    import fsspec

    from resize_pipeline.config import ConvertConfig
    from resize_pipeline.conversion import convert

    fs = fsspec.filesystem("memory")
    try:
        convert(ConvertConfig(str(image_folder), "memory://readers-torch/out", size=SIZE, format="both",
                              samples_per_shard=4, workers=1, quiet=True))
        got = _read("memory://readers-torch/out", ranks=2, workers=0)
        assert len(got[0] + got[1]) == 10 == len(set(got[0] + got[1]))
    finally:
        fs.rm("/readers-torch", recursive=True)
