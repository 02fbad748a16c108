"""`BucketRunner`: the fixed-shape, bucket-padded step behind the CUDA graphs. Its logic (padding,
pre/post-processing, bucket choice) runs eagerly on the CPU here, and its graph policy (captured at
construction with `torch.cuda.make_graphed_callables`, one memory pool per graph, on the runner's GPU,
never mid-stream) against a fake of the capture; the real capture and the fp16 tolerance against eager
fp32 run on a GPU (marker ``gpu``)."""

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
        graphed = LearnedResizer(str(artifact), device="cuda", batch_size=8, precision=precision,
                                 graph_shapes=[(40, 48)])
        assert graphed._runner.stats["captures"] == 1  # at construction, before any batch
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
        assert stats["captures"] == 1 and stats["replays"] == 3 and stats["eager"] == 0  # real[:3]: padded
        assert graphed.path_for(3, (96, 80), (48, 40)) == "cuda-graph"


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


class _FakeCapture:
    """`torch.cuda.make_graphed_callables` as the runner calls it, on the CPU: records each capture
    (the callable's sample shape, its pool, the current device) and returns the step run eagerly."""

    def __init__(self, monkeypatch) -> None:
        self.captures: list[dict] = []
        self.replays: list[tuple] = []
        self.device = 0
        fake = self

        class DeviceCtx:
            def __init__(self, d) -> None:
                self.d = torch.device(d).index if not isinstance(d, int) else d

            def __enter__(self):
                self.old, fake.device = fake.device, self.d

            def __exit__(self, *exc):
                fake.device = self.old

        class Stream:
            def __init__(self, device=None) -> None:
                self.device = torch.device(device) if device is not None else torch.device("cuda", fake.device)

        def make_graphed_callables(fn, sample_args, num_warmup_iters=3, allow_unused_input=False, pool=None):
            fake.captures.append({"shape": tuple(sample_args[0].shape), "pool": pool, "device": fake.device,
                                  "capture_stream": torch.cuda.graph.default_capture_stream.device})

            def graphed(x):
                fake.replays.append(tuple(x.shape))
                return fn(x)

            return graphed

        real_zeros = torch.zeros
        monkeypatch.setattr(torch.cuda, "device", DeviceCtx)
        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "make_graphed_callables", make_graphed_callables)
        monkeypatch.setattr(torch, "zeros", lambda *a, device=None, **kw: real_zeros(*a, **kw))
        # a capture stream left on GPU 0 by earlier work in the process (torch makes it lazily, once)
        monkeypatch.setattr(torch.cuda.graph, "default_capture_stream", Stream(torch.device("cuda", 0)),
                            raising=False)
        monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
        monkeypatch.setattr(torch.backends.cudnn, "deterministic", torch.backends.cudnn.deterministic)


def test_graphs_are_captured_up_front_one_pool_each_on_the_runners_gpu(artifact, photos, monkeypatch):
    """Finding 5 (and 1, 7): every graph of the bounded set is captured at construction, each with its
    own memory pool (``pool=None``: make_graphed_callables makes one per call), on the runner's GPU
    (cuda:1 here; the capture stream too); calls never capture (a shape outside the set runs eagerly);
    a partial batch is padded to the graph's full batch; cuDNN is deterministic (no benchmark)."""
    lr = LearnedResizer(str(artifact), device="cpu", batch_size=8, precision="fp32")
    fake = _FakeCapture(monkeypatch)
    torch.backends.cudnn.benchmark = True
    shapes = [((96, 80), (48, 40)), ((64, 64), (32, 32))]
    runner = BucketRunner(lr.module, torch.device("cuda", 1), lr.buckets, graphs=True, graph_shapes=shapes,
                          channels_last=True)
    assert [c["shape"] for c in fake.captures] == [(8, 3, 96, 80), (8, 3, 64, 64)]  # at construction
    assert all(c["pool"] is None and c["device"] == 1 for c in fake.captures)
    assert all(c["capture_stream"] == torch.device("cuda", 1) for c in fake.captures)
    assert torch.backends.cudnn.benchmark is False and torch.backends.cudnn.deterministic is True
    x = _photos_batch(photos, 5, (96, 80))
    assert runner.path_for(5, (96, 80), (48, 40)) == "cuda-graph"
    y = runner(x, (48, 40))
    assert fake.replays == [(8, 3, 96, 80)] and runner.stats["padded"] == 3  # padded to the graph's batch
    assert tuple(y.shape) == (5, 3, 48, 40) and torch.equal(y, runner.step(x, (48, 40)))
    other = _photos_batch(photos, 3, (50, 50))
    assert runner.path_for(3, (50, 50), (25, 25)) == "cuda-eager"
    runner(other, (25, 25))
    assert len(fake.captures) == 2 and runner.stats["eager"] == 1  # no capture mid-stream
    assert runner.describe()["memory_pools"] == "one per graph"


def test_the_pipeline_graphs_only_fixed_shape_modes_and_obeys_no_cuda_graphs():
    from resize_pipeline.commands.convert import add_arguments, config_from_args
    from resize_pipeline.config import ConvertConfig
    from resize_pipeline.pipeline import graph_shapes

    base = ConvertConfig("s", "d", resizer="learned", size="64x48")
    assert graph_shapes(base) == ((64, 48),)
    assert graph_shapes(base.replace(mode="stretch")) == ((64, 48),)
    for mode in ("pad",):
        assert graph_shapes(base.replace(mode=mode)) == ()  # shapes follow each image's aspect ratio
    assert graph_shapes(base.replace(mode="shorter-side", size=64)) == ()
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = config_from_args(p.parse_args(["s", "d", "--resizer", "learned", "--no-cuda-graphs"]))
    assert cfg.cuda_graphs is False and graph_shapes(cfg) == ()
    assert config_from_args(p.parse_args(["s", "d", "--no-channels-last"])).channels_last is False
    assert config_from_args(p.parse_args(["s", "d", "--no-jpeg-fancy-upsampling"])).jpeg_fancy_upsampling is False
