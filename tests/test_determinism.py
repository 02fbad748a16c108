"""Output bytes do not depend on how a job ran: one worker or two worker processes, and a shard
converted again by a resume in a fresh process, give byte-identical shards. On the CPU path here
(DALI CPU decode + the learned resizer); the same check on the GPU path (nvJPEG, the CNN in fp16 as
CUDA graphs, two processes sharing the GPU) is ``gpu``-marked: cuDNN's timed algorithm choice
(``benchmark``) would break it, the runner's deterministic algorithms must not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from resize_pipeline.config import ConvertConfig
from resize_pipeline.conversion import convert

pytest.importorskip("nvidia.dali")
torch = pytest.importorskip("torch")


def _tars(dst: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(dst.glob("*.tar"))}


def check_identical_across_runs(src: Path, tmp: Path, size: int = 32, **kw) -> dict:
    """Convert `src` with one worker, with two worker processes, then drop one shard of the second
    output and resume it with one worker: every run's shards must be byte-identical. Returns the
    first run's manifest."""
    def cfg(dst, workers):
        return ConvertConfig(str(src), str(dst), size=size, samples_per_shard=4, batch_size=4, quiet=True,
                             workers=workers, parallelism="process", **kw)

    one, two = tmp / "one", tmp / "two"
    a = convert(cfg(one, 1))
    b = convert(cfg(two, 2))
    assert (a.written, a.failed) == (b.written, b.failed)
    assert _tars(one) == _tars(two) and len(_tars(one)) == 3
    (two / "shard-00001.tar").unlink()
    (two / "_stats" / "shard-00001.json").unlink()
    c = convert(cfg(two, 1))
    assert c.resumed_shards == 2 and c.written == a.written
    assert _tars(one) == _tars(two)
    return json.loads((one / "_manifest.json").read_text())


def test_cpu_path_is_byte_identical_across_workers_and_resume(image_folder, tmp_path):
    # 160 px: enough work per op that torch's CPU kernels split it over their threads (at 32 px they
    # did not, and the worker count did not show)
    m = check_identical_across_runs(image_folder, tmp_path, size=160, decoder="auto", resizer="learned")
    assert m["components"]["resolved"]["decoder"] == "dali-cpu"
    assert m["paths"]["decoded_by"] == {"dali-cpu": 10}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["center-crop", "pad"])
def test_gpu_path_is_byte_identical_across_workers_and_resume(image_folder, tmp_path, mode):
    m = check_identical_across_runs(image_folder, tmp_path, decoder="dali", resizer="learned", device="cuda",
                                    precision="fp16", mode=mode)
    assert m["components"]["decoder"]["name"] == "dali-mixed"
    # center-crop: every image through the CUDA graph captured at start-up; pad: shapes per image, eager
    assert m["paths"]["resized_by"] == {("cuda-graph" if mode == "center-crop" else "cuda-eager"): 10}
    shutil.rmtree(tmp_path / "one")
