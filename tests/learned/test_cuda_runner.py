"""`BucketRunner`: the fixed-shape, bucket-padded step behind the CUDA graphs. Its logic (padding,
pre/post-processing, bucket choice) runs eagerly on the CPU here; the graph capture and the fp16
tolerance against eager fp32 run on a GPU (marker ``gpu``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_learned import gpu, needs_cuda, trained_net

from resize_pipeline.learned.cuda_runner import BucketRunner
from resize_pipeline.learned.export import export_resizer
from resize_pipeline.learned.inference import LearnedResizer, batch_buckets


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return export_resizer(trained_net(), tmp_path_factory.mktemp("art") / "resizer")


def _photos_batch(photos, n, hw=(64, 48)):
    """`n` real-photo crops as uint8 (n, 3, H, W)."""
    pics = list(photos.values())
    h, w = hw
    crops = [np.ascontiguousarray(pics[i % len(pics)][10 * i : 10 * i + h, 7 * i : 7 * i + w, :3]) for i in range(n)]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)


def test_buckets_and_refusals():
    r = BucketRunner(lambda x, s: x, torch.device("cpu"), batch_buckets(6))
    assert [r.bucket(n) for n in (1, 2, 3, 5, 6)] == [1, 2, 4, 6, 6]
    with pytest.raises(ValueError, match="largest bucket"):
        r.bucket(7)
    with pytest.raises(ValueError, match="ascending"):
        BucketRunner(lambda x, s: x, torch.device("cpu"), (4, 2))
    with pytest.raises(ValueError, match="uint8"):
        r(torch.zeros(1, 3, 4, 4), (2, 2))
    assert not r.graphs  # no graphs on a CPU


def test_cpu_step_equals_resize_tensor_and_padding_changes_nothing(artifact, photos):
    lr = LearnedResizer(str(artifact), device="cpu", batch_size=8, precision="fp32")
    runner = BucketRunner(lr.module, torch.device("cpu"), lr.buckets)
    x = _photos_batch(photos, 5)  # padded to the bucket of 8
    y = runner(x, (24, 32))
    assert y.dtype == torch.uint8 and tuple(y.shape) == (5, 3, 24, 32)
    assert runner.stats["padded"] == 3 and runner.stats["eager"] == 1
    with torch.inference_mode():
        ref = lr.resize_tensor(x, (32, 24))  # (w, h) there
    assert torch.equal(y, ref)
    for k in range(5):  # each sample alone (bucket 1) gives the same bytes
        assert torch.equal(runner(x[k : k + 1], (24, 32))[0], y[k])


@gpu
@needs_cuda
def test_graphs_match_eager_fp32_within_fp16_tolerance(artifact, photos):
    fp32 = LearnedResizer(str(artifact), device="cuda", batch_size=8, precision="fp32", cuda_graphs=False)
    for precision in ("fp16", "bf16"):
        graphed = LearnedResizer(str(artifact), device="cuda", batch_size=8, precision=precision)
        eager = LearnedResizer(str(artifact), device="cuda", batch_size=8, precision=precision, cuda_graphs=False)
        rand = torch.randint(0, 256, (8, 3, 96, 80), dtype=torch.uint8, device="cuda")
        real = _photos_batch(photos, 6, (96, 80)).cuda()
        for x in (rand, real, real[:3]):
            a = graphed.resize_tensor(x, (40, 48)).clone()
            b = eager.resize_tensor(x, (40, 48))
            ref = fp32.resize_tensor(x, (40, 48))
            assert (a.int() - b.int()).abs().max() <= 1  # graph replay == eager, same arithmetic
            d = (a.int() - ref.int()).abs()
            assert d.max() <= 3 and d.float().mean() <= 0.5, (precision, d.max(), d.float().mean())
        stats = graphed._runner.stats
        assert stats["captures"] == 2 and stats["replays"] >= 3  # buckets 8 and 4, replayed


@gpu
@needs_cuda
def test_bundled_weights_on_cuda_match_cpu_fp32(photos):
    from resize_pipeline.geometry import plan_resize

    cpu = LearnedResizer(device="cpu", precision="fp32")
    gpu_r = LearnedResizer(device="cuda", precision="fp16")
    images = [np.ascontiguousarray(p[:, :, :3]) for p in photos.values()]
    ops = [plan_resize(im.shape[1], im.shape[0], (224, 224), "center-crop") for im in images]
    for a, b in zip(cpu.resize(images, ops), gpu_r.resize(images, ops), strict=True):
        d = np.abs(a.astype(int) - b)
        assert d.max() <= 3 and d.mean() <= 0.5
