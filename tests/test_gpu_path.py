"""The GPU path end to end (DALI mixed decode + crop + resize -> CNN or nothing -> one pinned copy per
batch -> encode -> shards) against the CPU path, on real photos: outputs agree within the stated
tolerance. Needs a CUDA GPU and DALI (marker ``gpu``; skipped elsewhere).

Tolerance: mean absolute difference per image <= 2.5 grey levels (DALI's nvJPEG vs libjpeg-turbo
decode and GPU vs CPU resampling differ by ~1 level; fp16 adds at most ~1), max over the images'
pixels not bounded (edges of crops may round differently)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("nvidia.dali")
torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _convert(src, dst, **kw):
    from resize_pipeline.config import ConvertConfig
    from resize_pipeline.conversion import convert

    cfg = ConvertConfig(str(src), str(dst), workers=1, quiet=True, encode="npy", decoder="dali", size=64,
                        samples_per_shard=5, batch_size=8, **kw)
    return convert(cfg)


def _images(dest):
    import tarfile

    from resize_pipeline.encode import decode_payload

    out = {}
    for tar in sorted(dest.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".npy"):
                    out[m.name[:-4]] = decode_payload(tf.extractfile(m).read(), "npy")
    return out


@pytest.mark.parametrize("resizer", ["bilinear", "learned"])
@pytest.mark.parametrize("mode", ["center-crop", "pad"])
def test_gpu_path_matches_cpu_path(broken_folder, tmp_path, resizer, mode):
    g = _convert(broken_folder, tmp_path / "gpu", device="cuda", resizer=resizer, mode=mode,
                 **({"precision": "fp16"} if resizer == "learned" else {}))
    c = _convert(broken_folder, tmp_path / "cpu", device="cpu", resizer=resizer, mode=mode,
                 **({"precision": "fp32"} if resizer == "learned" else {}))
    assert (g.written, g.failed) == (c.written, c.failed) == (10, 3)
    m = json.loads((tmp_path / "gpu" / "_manifest.json").read_text())
    comp = m["components"]
    assert comp["decoder"]["mode"] == "mixed" and m["paths"]["decoded_by"] == {"dali-mixed": 10}
    if resizer == "learned":  # the graphs replayed (not just "enabled"): counted per sample, per shard
        want = "cuda-graph" if mode == "center-crop" else "cuda-eager"  # pad: a shape per aspect ratio
        assert m["paths"]["resized_by"] == {want: 10}
        assert comp["resizer"]["runner"]["captures"] == (1 if mode == "center-crop" else 0)
    a, b = _images(tmp_path / "gpu"), _images(tmp_path / "cpu")
    assert sorted(a) == sorted(b) and len(a) == 10
    for k in a:
        assert a[k].shape == b[k].shape
        assert np.abs(a[k].astype(int) - b[k]).mean() <= 2.5, k


def test_fused_resize_is_one_pinned_copy_per_group(photos):
    """resize_submit launches the CNN and the copy without waiting (two batches in flight); each
    group's output lands in one pinned host buffer; resize_finish gives the same arrays as a
    synchronous run."""
    import io

    from PIL import Image

    from resize_pipeline.batch import items_to_batch, objects
    from resize_pipeline.decode.dali import DaliDecoder
    from resize_pipeline.learned.inference import LearnedResizer
    from resize_pipeline.sources.base import SourceItem
    from resize_pipeline.stages_fused import FusedDecodeResizeStage

    blobs = []
    for p in photos.values():
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(p[:, :, :3])).save(buf, "JPEG", quality=90)
        blobs.append(buf.getvalue())

    def batch():
        b = items_to_batch([SourceItem(f"k{i}", f"mem://{i}.jpg") for i in range(len(blobs))])
        b["data"] = objects(blobs)
        return b

    stage = FusedDecodeResizeStage(DaliDecoder(device="mixed", batch_size=8, interp="linear"),
                                   LearnedResizer(device="cuda", batch_size=8, precision="fp16"),
                                   size=(64, 64), mode="center-crop", pad_color=(0, 0, 0))
    want = stage(batch())["image"]
    tokens = [stage.resize_submit(stage.decode(batch())) for _ in range(2)]
    for token in tokens:
        launched = token[2]
        assert len(launched) == 1  # one group: every image has the same output size
        hosts = {id(out[0]) for out in launched[0][1]}
        assert len(hosts) == 1 and launched[0][1][0][0].is_pinned()
        got = stage.resize_finish(token)["image"]
        for a, b in zip(got, want, strict=True):
            assert isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.shape == (64, 64, 3)
            assert np.array_equal(a, b)
