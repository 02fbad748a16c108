"""The fused DALI decode+resize stage, run for real in DALI's CPU-only mode (same graph as the GPU's)."""

import numpy as np
import pytest

from resize_pipeline.batch import items_to_batch
from resize_pipeline.config import ConvertConfig
from resize_pipeline.pipeline import build_stages
from resize_pipeline.preflight import resolve
from resize_pipeline.sources import list_source
from resize_pipeline.stages_fused import FusedDecodeResizeStage

pytest.importorskip("nvidia.dali")


def _convert(src, dst, **kw):
    cfg = ConvertConfig(str(src), str(dst), workers=1, quiet=True, encode="npy", **kw)
    stages = build_stages(cfg, resolve(cfg), "cpu", 1)
    items = list_source(str(src)).items
    batch = items_to_batch(items)
    for part in stages.parts:
        batch = part(batch)
    return stages, batch, items


def _fused(stages) -> bool:
    return any(isinstance(p, FusedDecodeResizeStage) for p in stages.parts)


@pytest.mark.parametrize("mode,size", [("center-crop", (64, 48)), ("pad", (64, 64)), ("shorter-side", (40, 40))])
def test_fused_matches_pillow_path(broken_folder, tmp_path, mode, size):
    from resize_pipeline.encode import decode_payload

    fused, a, items = _convert(broken_folder, tmp_path / "a", decoder="auto", size=size, mode=mode)
    plain, b, _ = _convert(broken_folder, tmp_path / "b", decoder="pillow", size=size, mode=mode, draft=False)
    assert _fused(fused) and not _fused(plain)
    assert fused.built["decoder"]["mode"] == "cpu"
    assert list(a["error_stage"]) == list(b["error_stage"])  # the same 3 broken files fail, at decode
    assert sum(1 for e in a["error"] if e) == 3
    for i in range(len(items)):
        if a["error"][i]:
            continue
        x, y = decode_payload(a["payload"][i], "npy"), decode_payload(b["payload"][i], "npy")
        assert x.shape == y.shape
        assert np.abs(x.astype(int) - y).mean() <= 2.5, items[i].key
        assert (a["orig_width"][i], a["orig_height"][i]) == (b["orig_width"][i], b["orig_height"][i])


def test_area_is_not_fused(image_folder, tmp_path):
    stages, _, _ = _convert(image_folder, tmp_path / "a", decoder="auto", resizer="area", size=32)
    assert not _fused(stages)


def test_overlapped_fused_steps_write_the_same_bytes(broken_folder, tmp_path):
    """decode (DALI) and resize run as separate overlapped steps on the GPU path; same output as serial."""
    from resize_pipeline.conversion import convert

    outs = []
    for overlap in (True, False):
        dst = tmp_path / f"o{overlap}"
        s = convert(ConvertConfig(str(broken_folder), str(dst), decoder="auto", size=40, batch_size=3,
                                  samples_per_shard=5, workers=1, quiet=True, overlap=overlap))
        assert (s.written, s.failed) == (10, 3)
        outs.append({p.name: p.read_bytes() for p in sorted(dst.glob("*.tar"))})
    assert outs[0] == outs[1] and len(outs[0]) == 3


def test_stack_views_reuses_the_decoders_buffer():
    """DALI's batch is copied back to back into one buffer; its per-sample (3, h, w) views of HWC
    memory are re-stacked without a copy (same values as torch.stack), anything else is stacked."""
    import torch

    from resize_pipeline.stages_fused import stack_views

    n, h, w = 4, 5, 6
    flat = torch.arange(n * h * w * 3, dtype=torch.int64).to(torch.uint8)
    views = [flat[k * h * w * 3 : (k + 1) * h * w * 3].view(h, w, 3).permute(2, 0, 1) for k in range(n)]
    stacked = stack_views(views)
    assert torch.equal(stacked, torch.stack(views))
    assert stacked.data_ptr() == flat.data_ptr()  # no copy
    assert stacked.permute(0, 2, 3, 1).is_contiguous()  # NHWC: one device-to-host copy
    shuffled = [views[1], views[0], views[2]]
    assert torch.equal(stack_views(shuffled), torch.stack(shuffled))
    assert stack_views(shuffled).data_ptr() != flat.data_ptr()
    assert torch.equal(stack_views(views[:1]), views[0][None])


def test_how_each_sample_was_decoded_is_in_the_shard_stats_and_the_manifest(image_folder, tmp_path):
    """Finding 9: no decoder fallback goes unrecorded. A CMYK JPEG is routed to Pillow by the
    pre-screen, a JPEG that DALI's parser refuses (no Huffman table) is decoded by Pillow after DALI
    failed on it alone (``pillow-fallback``), the rest by DALI; each shard's stats and the manifest
    count them."""
    import io
    import json

    from PIL import Image

    from resize_pipeline.conversion import convert

    good = (image_folder / "chelsea" / "img_0.jpg").read_bytes()
    buf = io.BytesIO()
    Image.open(io.BytesIO(good)).convert("CMYK").save(buf, "JPEG")
    (image_folder / "chelsea" / "cmyk.jpg").write_bytes(buf.getvalue())
    no_dht = bytearray(good)
    at = no_dht.index(b"\xff\xc4")
    del no_dht[at : at + 4]
    (image_folder / "coffee" / "no_dht.jpg").write_bytes(bytes(no_dht))
    dst = tmp_path / "out"
    s = convert(ConvertConfig(str(image_folder), str(dst), decoder="auto", size=32, samples_per_shard=6,
                              workers=1, quiet=True))
    assert (s.written, s.failed) == (12, 0)
    m = json.loads((dst / "_manifest.json").read_text())
    assert m["paths"] == {"decoded_by": {"dali-cpu": 10, "pillow": 1, "pillow-fallback": 1}}
    stats = [json.loads(p.read_text()) for p in sorted((dst / "_stats").glob("*.json"))]
    assert sum(sum(st["paths"]["decoded_by"].values()) for st in stats) == 12
    assert any(st["paths"]["decoded_by"].get("pillow-fallback") for st in stats)
