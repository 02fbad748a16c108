"""The fast JPEG header reader of `probe` gives Pillow's answers: on every JPEG it takes, the same
route and size as the Pillow-based probe; everything else it leaves to Pillow."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resize_pipeline.decode import probe as probe_mod
from resize_pipeline.decode.probe import _jpeg_fast, _probe_pillow, probe

MAX = 178_956_970


def _key(p):
    import re

    text = re.sub(r" at 0x[0-9a-f]+", "", str(p.error)) if p.error else ""  # object addresses differ
    return p.route, p.size, p.reason, type(p.error).__name__, text


def _jpeg(img, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", **kw)
    return buf.getvalue()


def _exif(orientation: int, big_endian: bool = False) -> bytes:
    e = Image.Exif()
    e[0x0112] = orientation
    e[0x010F] = "maker"
    data = e.tobytes()
    if big_endian:  # the same IFD, written Motorola-style
        import struct

        entries = [(0x010F, 2, 6, b"maker\0"), (0x0112, 3, 1, struct.pack(">H", orientation) + b"\0\0")]
        ifd = struct.pack(">H", len(entries))
        extra = b""
        for tag, typ, cnt, val in entries:
            if len(val) > 4:
                off = 8 + 2 + 12 * len(entries) + 4 + len(extra)
                ifd += struct.pack(">HHII", tag, typ, cnt, off)
                extra += val
            else:
                ifd += struct.pack(">HHI", tag, typ, cnt) + val
        data = b"Exif\0\0MM\0*" + struct.pack(">I", 8) + ifd + b"\0\0\0\0" + extra
    return data


def _corpus(photos) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    pics = [np.ascontiguousarray(p[:, :, :3]) for p in photos.values()]
    for i, p in enumerate(pics):
        crop = p[: 100 + 13 * i, : 120 + 7 * i]
        out += [_jpeg(crop, quality=q, subsampling=s) for q in (50, 95) for s in (0, 2)]
        out += [_jpeg(crop, progressive=True), _jpeg(crop, optimize=True), _jpeg(crop[:, :, 0])]
        out.append(_jpeg(crop, quality=90, comment=b"a comment"))
        out.append(_jpeg(np.ascontiguousarray(crop), exif=_exif(1 + i % 8)))
        out.append(_jpeg(np.ascontiguousarray(crop), exif=_exif(1 + (i + 3) % 8, big_endian=True)))
        buf = io.BytesIO()
        Image.fromarray(crop).convert("CMYK").save(buf, "JPEG")
        out.append(buf.getvalue())
    clean = list(out)
    for b in clean[:24]:  # truncations and corruptions at random places
        for _ in range(6):
            k = int(rng.integers(2, len(b) - 1))
            out.append(b[:k])
            bad = bytearray(b)
            bad[k] = int(rng.integers(0, 256))
            out.append(bytes(bad))
        out.append(b + b"\0\0\n")  # padding after EOI
    for b in clean:  # the header, where the fast reader decides: bytes changed in its markers
        for _ in range(12):
            k = int(rng.integers(2, min(700, len(b) - 1)))
            bad = bytearray(b)
            bad[k] = int(rng.integers(0, 256))
            out.append(bytes(bad))
    return out


def test_fast_path_agrees_with_pillow(photos):
    corpus = _corpus(photos)
    taken = 0
    for b in corpus:
        fast = _jpeg_fast(b, MAX)
        slow = _probe_pillow(b, MAX)
        if fast is not None:
            taken += 1
            assert _key(fast) == _key(slow), (fast, slow)
        assert _key(probe(b, MAX)) == _key(slow)
    assert taken >= len(corpus) // 3  # the clean ones go the fast way


def test_short_exif_blocks_go_to_pillow(photos):
    img = np.ascontiguousarray(photos["chelsea"][:40, :50, :3])
    for exif in (b"Exif\0\0", b"Exif\0\0II*", b"Exif\0\0II*\0\x08\0", b"Exif\0\0MM\0*\0\0\0\x08\0\x05"):
        b = _jpeg(img, exif=exif)
        assert _jpeg_fast(b, MAX) is None
        assert _key(probe(b, MAX)) == _key(_probe_pillow(b, MAX))


def test_orientation_and_limits(photos):
    img = np.ascontiguousarray(photos["chelsea"][:90, :160, :3])
    for o in range(1, 9):
        for be in (False, True):
            p = _jpeg_fast(_jpeg(img, exif=_exif(o, be)), MAX)
            assert p is not None and p.size == ((90, 160) if o in (5, 6, 7, 8) else (160, 90)), (o, be)
    b = _jpeg(img)
    assert _jpeg_fast(b, 160 * 90).route == "dali"
    assert _jpeg_fast(b, 160 * 90 - 1) is None  # over the limit: Pillow's probe makes the error
    assert probe(b, 160 * 90 - 1).route == "error"


def test_hostile_inputs_probe_as_before():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
    helpers = pytest.importorskip("helpers")
    for case in helpers.hostile_cases():
        assert _key(probe(case.data, MAX)) == _key(_probe_pillow(case.data, MAX)), case.name
    assert probe_mod.probe(b"", MAX).route == "error"
