"""Several GPUs on the local engine: one worker process per visible GPU, each seeing only its own
(``CUDA_VISIBLE_DEVICES``), decided without creating a CUDA context. GPUs are faked through
``CUDA_VISIBLE_DEVICES``; the job itself uses Pillow and a classical filter, so nothing touches CUDA."""

from __future__ import annotations

import pytest

from resize_pipeline.config import ConvertConfig
from resize_pipeline.devices import gpu_count, place_workers
from resize_pipeline.engine.local import plan_workers, run_local
from resize_pipeline.preflight import Resolved
from resize_pipeline.shards import plan_shards
from resize_pipeline.sources import list_source

GPU_JOB = Resolved("cuda", "pillow", False, gpus=2)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7,9")
    assert gpu_count() == 2


def _config(src="/in", dst="/out", **kw):
    return ConvertConfig(str(src), str(dst), quiet=True, **kw)


def test_worker_processes_per_gpu(two_gpus, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)  # this sandbox: one process per GPU
    assert plan_workers(_config(), GPU_JOB, 10) == (2, "process")
    assert plan_workers(_config(), GPU_JOB, 1) == (1, "process")  # never more workers than shards
    assert plan_workers(_config(), Resolved("cuda:1", "pillow", False), 10)[0] == 1  # one named GPU
    monkeypatch.setattr("os.cpu_count", lambda: 16)  # the GPU box: 16 cores, so 2 GPUs x 2 processes
    assert plan_workers(_config(), GPU_JOB, 100) == (4, "process")
    assert plan_workers(_config(), Resolved("cuda:1", "pillow", False), 100)[0] == 4  # one GPU, 4 processes
    assert plan_workers(_config(workers=3), GPU_JOB, 10)[0] == 3  # asked for: round-robin below
    assert plan_workers(_config(workers=0), Resolved("cpu", "pillow", False), 100)[0] == _config().num_workers


def test_placements(two_gpus):
    iso = place_workers("cuda", 3)
    assert [p.env for p in iso] == [{"CUDA_VISIBLE_DEVICES": v} for v in ("7", "9", "7")]
    assert {p.device for p in iso} == {"cuda:0"}  # each process sees its one GPU as cuda:0
    assert [p.device for p in place_workers("cuda", 3, isolate=False)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert [p.env for p in place_workers("cuda:1", 2)] == [{"CUDA_VISIBLE_DEVICES": "9"}] * 2
    assert [p.device for p in place_workers("cpu", 2)] == ["cpu", "cpu"]


def test_each_worker_process_sees_its_own_gpu(two_gpus, image_folder, tmp_path):
    cfg = _config(image_folder, tmp_path / "out", samples_per_shard=2, size=32)
    tasks = plan_shards(list_source(str(image_folder)).items, cfg.samples_per_shard)
    results = list(run_local(cfg, GPU_JOB, tasks))
    assert sum(r.written for r in results) == 10
    seen = {r.built["cuda_visible_devices"] for r in results}
    assert seen == {"7", "9"}, seen
    assert {r.built["device"] for r in results} == {"cuda:0"}


def test_processes_per_gpu_are_bounded_by_an_estimate_of_their_gpu_memory(monkeypatch, caplog):
    """Finding 6: each worker process holds its own CUDA context, DALI pools and CNN activations; on a
    GPU job the default number of processes per GPU is one per 4 cores *and* no more than 80% of the
    GPU's memory holds by the (logged) per-process estimate."""
    import logging

    from resize_pipeline.engine import local

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setattr("os.cpu_count", lambda: 16)  # 4 processes by cores
    learned = Resolved("cuda", "dali-mixed", True, "fp16", {"input_scale": 2.0}, gpus=1)
    cfg = _config(resizer="learned", batch_size=128, size=224)
    est = local.estimate_worker_gpu_mib(cfg, learned)
    assert set(est) == {"cuda_context", "dali", "cnn", "total"} and est["total"] == sum(
        v for k, v in est.items() if k != "total")
    for total_mib, want in ((None, 4), (141 * 1024, 4), (24 * 1024, int(24 * 1024 * 0.8 // est["total"])),
                            (4 * 1024, 1)):
        monkeypatch.setattr(local, "gpu_memory_mib", lambda i=0, t=total_mib: t)
        with caplog.at_level(logging.INFO, logger="resize_pipeline.engine.local"):
            caplog.clear()
            assert plan_workers(cfg, learned, 100) == (want, "process"), total_mib
        assert any("per GPU" in r.message and str(est["total"]) in r.message for r in caplog.records)
    assert 1 < int(24 * 1024 * 0.8 // est["total"]) < 4  # a 24 GB card: fewer than the cores would give
    # a classical job holds no CNN: more of them fit
    classical = Resolved("cuda", "dali-mixed", True, None, {}, gpus=1)
    assert local.estimate_worker_gpu_mib(_config(batch_size=128), classical)["total"] < est["total"]
    # --workers N is the user's: kept, with a warning when it does not fit
    monkeypatch.setattr(local, "gpu_memory_mib", lambda i=0: 4 * 1024)
    with caplog.at_level(logging.WARNING, logger="resize_pipeline.engine.local"):
        assert plan_workers(_config(resizer="learned", batch_size=128, workers=3), learned, 100)[0] == 3
    assert any("may run out of GPU memory" in r.message for r in caplog.records)
