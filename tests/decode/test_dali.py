"""DaliDecoder against real DALI (CPU-only here; GPU tests run where CUDA is)."""

from __future__ import annotations

import io
import struct
import sys
import zlib

import numpy as np
import pytest

pytest.importorskip("nvidia.dali")
torch = pytest.importorskip("torch")
from PIL import Image  # noqa: E402

from resize_pipeline.decode import PillowDecoder, get_decoder  # noqa: E402
from resize_pipeline.decode.dali import DaliDecoder  # noqa: E402
from resize_pipeline.decode.probe import probe  # noqa: E402
from resize_pipeline.errors import ImageTooLarge, SampleError  # noqa: E402
from resize_pipeline.geometry import plan_resize  # noqa: E402
from resize_pipeline.resize.classical import ClassicalResizer  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu


# -- fixtures: real photos, encoded in memory ------------------------------------------------------
@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    skdata = pytest.importorskip("skimage.data")
    return {"astronaut": skdata.astronaut(), "chelsea": skdata.chelsea(), "coffee": skdata.coffee()}


def encode(img: Image.Image | np.ndarray, fmt: str = "JPEG", **kw) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png16_rgb(arr16: np.ndarray, declared: tuple[int, int] | None = None) -> bytes:
    """16-bit RGB PNG written by hand (Pillow cannot write one); `declared` overrides IHDR's (w, h)."""
    h, w, _ = arr16.shape
    big = arr16.astype(">u2")
    raw = b"".join(b"\x00" + big[y].tobytes() for y in range(h))
    chunk = _chunk
    dw, dh = declared or (w, h)
    ihdr = struct.pack(">IIBBBBB", dw, dh, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def dec() -> DaliDecoder:
    return DaliDecoder(device="cpu", batch_size=8, num_threads=2)


@pytest.fixture(scope="module")
def pil() -> PillowDecoder:
    return PillowDecoder(draft=False)


def resized(img: np.ndarray, side: int = 224) -> np.ndarray:
    op = plan_resize(img.shape[1], img.shape[0], (side, side), "center-crop")
    return ClassicalResizer("bilinear").resize([img], [op])[0]


def mad(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# -- agreement with Pillow -------------------------------------------------------------------------
def test_jpeg_agrees_with_pillow(dec, pil, photos):
    blobs = [encode(p, quality=q) for p in photos.values() for q in (75, 95)]
    got = dec.decode(blobs)
    for blob, out in zip(blobs, got, strict=True):
        ref = pil.decode_one(blob)
        assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == ref.shape
        assert out.std() > 10  # a real photo, not a blank
        assert mad(resized(out), resized(ref)) <= 2.0
    assert dec.stats["dali"] >= len(blobs)


def test_mixed_sizes_and_grayscale(dec, pil, photos):
    a = photos["astronaut"]
    blobs = [
        encode(a[:123, :77]),
        encode(Image.fromarray(photos["coffee"]).convert("L")),
        encode(photos["chelsea"], subsampling=0),
        encode(Image.fromarray(a).convert("L"), "PNG"),
        encode(a[::2, ::3], "PNG"),
    ]
    assert [probe(b).route for b in blobs] == ["dali"] * 5
    for blob, out in zip(blobs, dec.decode(blobs), strict=True):
        ref = pil.decode_one(blob)
        assert out.shape == ref.shape and out.shape[2] == 3
        assert mad(out, ref) <= 1.0


@pytest.mark.parametrize("n", [1, 3, 8, 19])
def test_variable_batch_sizes(dec, photos, n):
    imgs = list(photos.values())
    blobs = [encode(imgs[i % 3][i : i + 100 + 7 * i, i : i + 90]) for i in range(n)]
    out = dec.decode(blobs)
    assert [o.shape[:2] for o in out] == [Image.open(io.BytesIO(b)).size[::-1] for b in blobs]


# -- corrupt members never take the batch down -----------------------------------------------------
def test_corrupt_members_in_place(pil, photos):
    dec = DaliDecoder(device="cpu", batch_size=16, num_threads=2)
    good = [encode(p) for p in photos.values()]
    no_dht = bytearray(good[1])
    at = no_dht.index(b"\xff\xc4")
    del no_dht[at : at + 4]  # DALI's parser gives up on the whole batch; libjpeg (Pillow) copes
    garbled = bytearray(encode(photos["chelsea"], quality=90))
    garbled[600:2000] = b"\x00" * 1400  # header and EOI intact: passes the pre-screen, DALI fails
    blobs = [
        good[0],
        good[0][: len(good[0]) // 2],  # truncated JPEG
        good[1],
        b"",  # zero bytes
        b"hello, I am text named photo.jpg\n",
        bytes(no_dht),
        bytes(garbled),
        good[2],
    ]
    out = dec.decode(blobs)
    for i, g in ((0, 0), (2, 1), (7, 2)):
        assert isinstance(out[i], np.ndarray)
        assert mad(out[i], pil.decode_one(good[g])) <= 1.0
    assert isinstance(out[1], OSError)
    assert isinstance(out[3], SampleError)
    assert isinstance(out[4], Exception)
    # whatever DALI cannot decode ends as Pillow would have it: rescued, or Pillow's exception
    for i in (5, 6):
        ref = pil.decode([blobs[i]])[0]
        if isinstance(ref, Exception):
            assert type(out[i]) is type(ref)
        else:
            assert mad(out[i], ref) == 0.0
    assert isinstance(out[5], np.ndarray)  # rescued by the Pillow retry
    assert dec.stats["batch_errors"] >= 2  # the bisect ran
    assert dec.stats["pillow_fallback"] >= 1
    # precomputed probes (e.g. from the reader workers) give the same result
    again = dec.decode(blobs, probes=[probe(b) for b in blobs])
    for a, b in zip(out, again, strict=True):
        assert type(a) is type(b) and (isinstance(a, Exception) or mad(a, b) == 0.0)
    # the decoder is still usable afterwards
    again = dec.decode(good)
    assert all(isinstance(o, np.ndarray) for o in again)


def test_pipelined_submit_finish_with_a_failing_batch_in_flight(photos):
    """Batches submitted ahead (DALI decoding k+1 while k is collected) give exactly what one-at-a-time
    calls give, also when a batch in the middle fails in DALI and must be narrowed down while a later
    one is still in flight."""
    dec = DaliDecoder(device="cpu", batch_size=4, num_threads=2)
    good = [encode(p) for p in photos.values()]
    no_dht = bytearray(good[1])
    at = no_dht.index(b"\xff\xc4")
    del no_dht[at : at + 4]  # passes the pre-screen; DALI's parser fails the whole batch
    batches = [good, [good[0], bytes(no_dht), good[1], good[2], good[0]], good[::-1], good]
    plan = lambda w, h: plan_resize(w, h, (48, 40), "center-crop")  # noqa: E731
    want = [dec.decode_resize(b, plan) for b in batches]
    errors_before = dec.stats["batch_errors"]
    pending = [dec.submit(b, plan) for b in batches]  # 6 DALI runs: several in flight at once
    got = [dec.finish(p) for p in pending]
    assert dec.stats["batch_errors"] > errors_before  # the bad batch failed in DALI again
    for g, w in zip(got, want, strict=True):
        assert len(g) == len(w)
        for a, b in zip(g, w, strict=True):
            assert type(a) is type(b)
            if isinstance(a, np.ndarray):
                assert a.shape == (40, 48, 3) and np.array_equal(a, b)


def test_one_run_in_flight_per_pipeline(photos, monkeypatch):
    """DALI's documented contract (`Pipeline.run(**inputs)`: ``prefetch_queue_depth=1``, i.e. feed +
    schedule + collect): never two scheduled runs of one pipeline without their outputs collected in
    between, whatever the submit/finish pattern (batches submitted ahead, batches bigger than DALI's
    batch, a failing batch narrowed down while a later one is submitted), and the same results."""
    from nvidia.dali import Pipeline

    outstanding: dict[int, int] = {}
    most = {"runs": 0}
    real_schedule, real_outputs = Pipeline.schedule_run, Pipeline.outputs

    def schedule_run(self):
        outstanding[id(self)] = outstanding.get(id(self), 0) + 1
        most["runs"] = max(most["runs"], outstanding[id(self)])
        return real_schedule(self)

    def outputs(self, *a, **kw):
        try:
            return real_outputs(self, *a, **kw)
        finally:
            outstanding[id(self)] -= 1

    monkeypatch.setattr(Pipeline, "schedule_run", schedule_run)
    monkeypatch.setattr(Pipeline, "outputs", outputs)
    dec = DaliDecoder(device="cpu", batch_size=2, num_threads=2)
    good = [encode(p) for p in photos.values()]
    no_dht = bytearray(good[1])
    at = no_dht.index(b"\xff\xc4")
    del no_dht[at : at + 4]
    plan = lambda w, h: plan_resize(w, h, (40, 32), "center-crop")  # noqa: E731
    batches = [good + good[:2], [good[0], bytes(no_dht), good[2]], good[::-1], good]  # 3, 2, 2, 2 DALI runs
    want = [dec.decode_resize(b, plan) for b in batches]
    pending = [dec.submit(b, plan) for b in batches]
    got = [dec.finish(p) for p in pending]
    assert most["runs"] == 1, most
    for g, w in zip(got, want, strict=True):
        assert [type(a) for a in g] == [type(b) for b in w]
        assert all(np.array_equal(a, b) for a, b in zip(g, w, strict=True) if isinstance(a, np.ndarray))
    pipe = dec._pipe("decode_resize")
    assert pipe.prefetch_queue_depth == 1 and pipe.exec_dynamic  # outputs(cuda_stream=...) needs exec_dynamic
    paths = dec.submit(batches[1], plan)
    dec.finish(paths)
    assert paths.paths[0] == "dali-cpu" and paths.paths[1] in ("pillow-fallback", None)


def test_a_device_fault_in_dali_is_raised_never_bisected_nor_handed_to_pillow(photos, monkeypatch):
    """The typed error policy in the decoder: a CUDA error from DALI is a `DeviceFault` at once (no
    bisection, no Pillow fallback, no error rows), on the host and the fused paths."""
    from resize_pipeline.errors import DeviceFault

    dec = DaliDecoder(device="cpu", batch_size=4, num_threads=1)
    good = [encode(p) for p in photos.values()]
    runs = {"n": 0}

    class Broken:
        def feed_input(self, *a, **kw):
            pass

        def schedule_run(self):
            runs["n"] += 1

        def outputs(self, *a, **kw):
            raise RuntimeError("Critical error in pipeline:\nCUDA runtime API error cudaErrorIllegalAddress (700):"
                               "\nan illegal memory access was encountered")

    monkeypatch.setattr(dec, "_build", lambda kind: Broken())
    dec._pipes.clear()
    with pytest.raises(DeviceFault, match="cudaErrorIllegalAddress"):
        dec.decode(good)
    assert runs["n"] == 1 and dec.stats["pillow_fallback"] == 0
    plan = lambda w, h: plan_resize(w, h, (40, 32), "center-crop")  # noqa: E731
    with pytest.raises(DeviceFault):
        dec.finish(dec.submit(good, plan))
    assert runs["n"] == 2 and dec.stats["pillow_fallback"] == 0


def test_decompression_bomb_refused_before_decoding(photos):
    dec = DaliDecoder(device="cpu", max_pixels=10_000, batch_size=4, num_threads=1)
    small = encode(photos["chelsea"][:50, :50])
    out = dec.decode([encode(photos["astronaut"]), small])
    assert isinstance(out[0], ImageTooLarge)
    assert out[1].shape == (50, 50, 3)
    # a header-only PNG declaring 100000 x 100000: refused from the header alone
    bomb = png16_rgb(np.full((1, 1, 3), 7, np.uint16), declared=(100_000, 100_000))
    assert isinstance(DaliDecoder(device="cpu", batch_size=2, num_threads=1).decode([bomb])[0], ImageTooLarge)


# -- formats DALI handles badly: routed/fallen back, same output as Pillow --------------------------
def _special(photos) -> dict[str, tuple[bytes, str]]:
    a, c = photos["astronaut"], photos["chelsea"]
    rgba = Image.fromarray(c).convert("RGBA")
    rgba.putalpha(
        Image.fromarray((np.arange(c.shape[1])[None, :].repeat(c.shape[0], 0) % 256).astype(np.uint8))
    )
    pal = Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    buf = io.BytesIO()
    pal.save(buf, "PNG", transparency=3)
    exif = {}
    for ori in (3, 6, 8):
        e = Image.Exif()
        e[0x0112] = ori
        exif[ori] = encode(c, exif=e.tobytes())
    return {
        "cmyk_jpeg": (encode(Image.fromarray(a).convert("CMYK")), "pillow"),
        "png16_gray": (encode(Image.fromarray((a.mean(2) * 200).astype(np.uint16)), "PNG"), "pillow"),
        "png16_rgb": (png16_rgb(a.astype(np.uint16) * 257 + 100), "pillow"),
        "palette_png_transparency": (buf.getvalue(), "pillow"),
        "rgba_png": (encode(rgba, "PNG"), "pillow"),
        "gif": (encode(Image.fromarray(c).convert("P"), "GIF"), "pillow"),
        "tiff_lzw": (encode(c, "TIFF", compression="tiff_lzw"), "pillow"),
        "webp": (encode(c, "WEBP", quality=90), "pillow"),
        "exif_rot180": (exif[3], "dali"),
        "exif_rot90cw": (exif[6], "dali"),
        "exif_rot90ccw": (exif[8], "dali"),
    }


SPECIAL = [
    "cmyk_jpeg",
    "png16_gray",
    "png16_rgb",
    "palette_png_transparency",
    "rgba_png",
    "gif",
    "tiff_lzw",
    "webp",
    "exif_rot180",
    "exif_rot90cw",
    "exif_rot90ccw",
]


def test_special_formats_match_pillow(dec, pil, photos):
    cases = _special(photos)
    assert sorted(cases) == sorted(SPECIAL)
    names = list(cases)
    blobs = [cases[n][0] for n in names]
    for name, blob in zip(names, blobs, strict=True):
        assert probe(blob).route == cases[name][1], name
    out = dec.decode(blobs)  # all in one batch, mixed with each other
    for name, blob, got in zip(names, blobs, out, strict=True):
        ref = pil.decode_one(blob)
        assert isinstance(got, np.ndarray), (name, got)
        assert got.shape == ref.shape, name
        assert mad(got, ref) <= 0.5, name
    # EXIF 6 and 8 transpose the 451x300 cat; the pre-screen reports the oriented size
    assert out[names.index("exif_rot90cw")].shape == (451, 300, 3)
    assert probe(cases["exif_rot90cw"][0]).size == (300, 451)


# -- fused decode + resize (same graph as the GPU path, on the CPU) ---------------------------------
def test_decode_resize_matches_classical(dec, pil, photos):
    blobs = [encode(p) for p in photos.values()] + [
        _special(photos)["exif_rot90cw"][0],
        _special(photos)["gif"][0],
    ]

    def plan(w, h):
        return plan_resize(w, h, (160, 128), "center-crop")

    out = dec.decode_resize(blobs, plan)
    for blob, got in zip(blobs, out, strict=True):
        ref_full = pil.decode_one(blob)
        ref = ClassicalResizer("bilinear").resize([ref_full], [plan(ref_full.shape[1], ref_full.shape[0])])[0]
        assert got.shape == (128, 160, 3)
        assert mad(got, ref) <= 2.0
    # per-sample sizes and plain (w, h) targets
    out = dec.decode_resize(blobs[:3], [(32, 16), (17, 40), (224, 224)])
    assert [o.shape for o in out] == [(16, 32, 3), (40, 17, 3), (224, 224, 3)]


def _hostile_cases():
    """The hostile input set of the reliability tests (loaded by path: tests/ is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "reliability" / "helpers.py"
    if not path.exists():
        pytest.skip("tests/reliability/helpers.py not present")
    spec = importlib.util.spec_from_file_location("_reliability_helpers", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod.hostile_cases()


def test_hostile_inputs_end_as_pillow_would():
    """Every hostile input (broken, bombs, odd modes, EXIF, extreme shapes) in ONE batch: DALI +
    fallback gives Pillow's outcome for each (same pixels, or the same exception type)."""
    cases = _hostile_cases()
    kw = {"max_pixels": 4_000_000, "draft": False}
    dec = DaliDecoder(device="cpu", batch_size=64, num_threads=2, **kw)
    ref_dec = PillowDecoder(**kw)
    got = dec.decode([c.data for c in cases])
    for case, out in zip(cases, got, strict=True):
        ref = ref_dec.decode([case.data])[0]
        if isinstance(ref, Exception):
            assert type(out) is type(ref), (case.name, out, ref)
        else:
            assert isinstance(out, np.ndarray), (case.name, out)
            assert mad(out, ref) <= 1.0, case.name
    assert dec.stats["dali"] >= 10  # the plain photos and EXIF JPEGs stayed on DALI


def test_pickle_and_fork_rebuild(photos):
    import pickle

    dec = DaliDecoder(device="cpu", batch_size=4, num_threads=1)
    blob = encode(photos["coffee"])
    ref = dec.decode([blob])[0]
    clone = pickle.loads(pickle.dumps(dec))
    assert clone.mode == "cpu" and mad(clone.decode([blob])[0], ref) == 0.0
    dec._pid = -1  # as if forked: the pipelines must be rebuilt, not reused
    assert mad(dec.decode([blob])[0], ref) == 0.0 and dec._pid > 0


def test_mixed_graphs_define_without_gpu():
    """The GPU graphs pass DALI's definition-time checks (argument names, device placement)."""
    from nvidia.dali import Pipeline

    class DefineOnly(Pipeline):
        def build(self):  # building needs CUDA; defining the graph does not
            pass

    d = DaliDecoder(device="cpu", batch_size=4, num_threads=1)
    d._dali, d.mode, d.device_id = (DefineOnly, *d._dali[1:]), "mixed", 0
    for kind in ("decode", "decode_resize", "resize"):
        pipe = d._build(kind)
        assert isinstance(pipe, DefineOnly)
        assert pipe.prefetch_queue_depth == 1 and pipe.exec_dynamic and pipe.device_id == 0


# -- mode selection and missing install -------------------------------------------------------------
@pytest.mark.skipif(HAS_CUDA, reason="checks the no-GPU choice")
def test_auto_picks_cpu_dali_without_gpu():
    from resize_pipeline.config import ConvertConfig
    from resize_pipeline.preflight import resolve

    for name in ("auto", "dali"):
        assert resolve(ConvertConfig("/src", "/dst", decoder=name)).decoder == "dali-cpu"
    d = get_decoder("dali-cpu", max_pixels=1000, batch_size=4, num_threads=1)
    assert isinstance(d, DaliDecoder) and d.mode == "cpu" and d.max_pixels == 1000
    with pytest.raises(RuntimeError):
        DaliDecoder(device="mixed")  # no GPU here: building the mixed graph fails at once, not mid-job


def test_missing_dali_install(monkeypatch):
    from resize_pipeline.config import ConvertConfig
    from resize_pipeline.decode import dali_graph
    from resize_pipeline.errors import ConfigError
    from resize_pipeline.preflight import resolve

    monkeypatch.setattr(dali_graph, "dali_installed", lambda: False)
    assert resolve(ConvertConfig("/src", "/dst", decoder="auto")).decoder == "pillow"
    with pytest.raises(ConfigError, match=r"resize-pipeline\[dali\]"):
        resolve(ConvertConfig("/src", "/dst", decoder="dali"))


def test_bad_arguments():
    with pytest.raises(ValueError, match="cpu"):
        DaliDecoder(device="tpu")
    with pytest.raises(ValueError, match="linear"):
        DaliDecoder(device="cpu", interp="magic")


# -- GPU (mixed) ---------------------------------------------------------------------------------
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


@gpu
@needs_cuda
def test_mixed_decode_agrees_with_cpu(dec, photos):
    mixed = DaliDecoder(device="mixed", batch_size=8, num_threads=2)
    assert mixed.mode == "mixed"
    blobs = [encode(p) for p in photos.values()] + [_special(photos)["exif_rot90cw"][0]]
    cpu = dec.decode(blobs)
    for a, b in zip(mixed.decode(blobs), cpu, strict=True):
        assert mad(a, b) <= 2.0


@gpu
@needs_cuda
def test_decode_resize_gpu(photos):
    mixed = DaliDecoder(device="mixed", batch_size=8, num_threads=2)
    cases = _special(photos)
    blobs = [encode(p) for p in photos.values()] + [b"", cases["cmyk_jpeg"][0], cases["exif_rot90cw"][0]]
    out = mixed.decode_resize(blobs, [(64, 48)] * 3 + [(10, 10), (32, 32), (40, 60)], gpu=True)
    assert isinstance(out[3], SampleError)
    for o, (w, h) in zip(
        [out[i] for i in (0, 1, 2, 4, 5)], [(64, 48)] * 3 + [(32, 32), (40, 60)], strict=True
    ):
        assert o.is_cuda and o.dtype == torch.uint8 and tuple(o.shape) == (3, h, w)
    cpu = DaliDecoder(device="cpu", batch_size=8, num_threads=2).decode_resize(blobs[:3], (64, 48))
    for g, c in zip(out[:3], cpu, strict=True):
        assert mad(g.permute(1, 2, 0).cpu().numpy(), c) <= 2.0
    # pipelined: several batches submitted before the first is finished give the same results
    plan = lambda w, h: plan_resize(w, h, (96, 96), "center-crop")  # noqa: E731
    pend = [mixed.submit(blobs, plan, gpu=True) for _ in range(3)]
    for p in pend:
        got = mixed.finish(p)
        assert isinstance(got[3], SampleError)
        assert all(tuple(got[i].shape) == (3, 96, 96) for i in (0, 1, 2, 4, 5))
