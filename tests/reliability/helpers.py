"""Shared helpers for the reliability tests: generated images (normal and hostile), CLI runs, tree
comparison. Everything is generated on the fly; nothing is downloaded."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]

# distinct, saturated colours (never all-zero images)
RED, GREEN, BLUE, YELLOW = (220, 30, 30), (30, 200, 40), (40, 50, 210), (230, 220, 40)


# ---------------------------------------------------------------- running the CLI


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "resize_pipeline.cli", "convert", *args]


def run_cli(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli_cmd(*args),
        env={**cli_env(), **(env or {})},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---------------------------------------------------------------- processes


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux: read from /proc)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            kids.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(d))
    out, stack = [], list(kids.get(pid, []))
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(kids.get(p, []))
    return out


def worker_pids(pid: int) -> list[int]:
    """The worker processes of the job `pid`: its descendants, less multiprocessing's helpers (the
    resource tracker, and the fork server: its children, the workers, share its command line)."""
    out = []
    for p in descendants(pid):
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
            parent = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if "resource_tracker" in cmd or ("forkserver" in cmd and parent == pid):
            continue
        out.append(p)
    return out


# ---------------------------------------------------------------- output trees


def tree_files(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative POSIX path -> bytes)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


def manifest_without_timing(data: bytes) -> dict:
    """The manifest without what differs between identical runs: when and how fast (the manifest's and
    each generation's)."""
    m = json.loads(data)
    m.pop("created", None)
    m.pop("run", None)
    for g in m.get("generations", []):
        g.pop("created", None)
        g.pop("seconds", None)
    return m


# ---------------------------------------------------------------- normal images


def textured(w: int, h: int, seed: int) -> np.ndarray:
    """A smooth, non-trivial RGB image (gradients + a seeded blob), uint8 HWC."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (0.2 * max(w, h)) ** 2))
    base = rng.uniform(40, 200, 3)
    img = np.stack([base[0] + 50 * np.sin(x / 7.0), base[1] + 50 * blob, base[2] + 40 * np.cos(y / 5.0)], -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_jpegs(folder: Path, n: int, seed: int = 0, lo: int = 64, hi: int = 160) -> list[Path]:
    """`n` small JPEGs with seeded sizes in [lo, hi] (fast: a few ms each)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = (int(v) for v in rng.integers(lo, hi + 1, 2))
        p = folder / f"{i:06d}.jpg"
        Image.fromarray(textured(w, h, seed * 100003 + i)).save(p, quality=85)
        paths.append(p)
    return paths


def quadrants(w: int, h: int) -> np.ndarray:
    """Upright reference: red top-left, green top-right, blue bottom-left, yellow bottom-right."""
    img = np.empty((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = RED
    img[: h // 2, w // 2 :] = GREEN
    img[h // 2 :, : w // 2] = BLUE
    img[h // 2 :, w // 2 :] = YELLOW
    return img


def quadrant_colours(img: np.ndarray) -> list[np.ndarray]:
    """Mean colour near the centre of each quadrant (TL, TR, BL, BR) of an output image."""
    h, w = img.shape[:2]
    out = []
    for fy in (0.25, 0.75):
        for fx in (0.25, 0.75):
            y, x = int(fy * h), int(fx * w)
            out.append(img[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2].reshape(-1, 3).mean(0))
    return out


def close(a, b, tol: float = 24) -> bool:
    return bool(np.all(np.abs(np.asarray(a, float) - np.asarray(b, float)) <= tol))


# ---------------------------------------------------------------- raw PNG / JPEG crafting


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_raw(w: int, h: int, depth: int, colour_type: int, rows: bytes | None) -> bytes:
    """A PNG from raw scanlines (filter byte 0 per row added here); `rows=None` -> header only."""
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0))
    if rows is not None:
        stride = len(rows) // h
        raw = b"".join(b"\x00" + rows[i * stride : (i + 1) * stride] for i in range(h))
        out += _chunk(b"IDAT", zlib.compress(raw))
    return out + _chunk(b"IEND", b"")


def jpeg_bytes(img: np.ndarray, mode: str = "RGB", **kw) -> bytes:
    b = io.BytesIO()
    Image.fromarray(img, mode).save(b, "JPEG", **kw)
    return b.getvalue()


def jpeg_declaring(w: int, h: int) -> bytes:
    """A small valid JPEG whose SOF0 header is patched to declare `w` x `h` (a decompression bomb)."""
    data = bytearray(jpeg_bytes(textured(16, 16, 1), quality=90))
    i = data.find(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def _rgb_to_ycc(rgb) -> np.ndarray:
    r, g, b = (float(v) for v in rgb)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    return np.clip(np.round([y, cb, cr]), 0, 255).astype(np.uint8)


def ycck_jpeg(cmyk: tuple[int, int, int, int], size: int = 24) -> bytes:
    """A genuine Adobe YCCK JPEG (APP14 transform=2) that decodes to the flat CMYK colour `cmyk`.

    Pillow cannot be asked to write YCCK, so: write the YCC-transformed components as a CMYK JPEG
    (Pillow stores CMYK inverted, with an APP14 Adobe marker, transform=0), then set transform=2. The
    decoder (libjpeg) then converts YCC->CMY as for any YCCK file from Photoshop.
    """
    c = np.asarray(cmyk, np.uint8)
    stored = np.concatenate([_rgb_to_ycc(255 - c[:3].astype(int)), [c[3]]]).astype(np.uint8)
    data = bytearray(jpeg_bytes(np.tile(stored, (size, size, 1)), "CMYK", quality=100))
    k = data.find(b"Adobe")
    assert k > 0, "Pillow no longer writes an Adobe APP14 marker for CMYK"
    data[k + 11] = 2  # transform: 0 = CMYK/RGB, 1 = YCbCr, 2 = YCCK
    return bytes(data)


def cmyk_to_rgb(cmyk) -> np.ndarray:
    return np.asarray(Image.fromarray(np.tile(np.asarray(cmyk, np.uint8), (2, 2, 1)), "CMYK").convert("RGB"))[
        0, 0
    ]


def exif_rotated_jpeg(upright: np.ndarray, orientation: int, **kw) -> bytes:
    """Store `upright` so that a viewer applying EXIF `orientation` (6 or 8) shows it upright."""
    pil = Image.fromarray(upright)
    # orientation 6: display = stored rotated 90 deg clockwise -> store it rotated counter-clockwise
    stored = pil.transpose(Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = orientation
    b = io.BytesIO()
    stored.save(b, "JPEG", quality=95, exif=exif.tobytes(), **kw)
    return b.getvalue()


# ---------------------------------------------------------------- the hostile set


@dataclass
class Case:
    """One generated input and what must come of it."""

    name: str
    data: bytes
    ok: bool
    stage: str = ""  # for failures
    error_type: str | tuple[str, ...] = ""
    colour: tuple[int, int, int] | None = None  # expected flat output colour (converted cases)
    quadrants: bool = False  # output must show the upright quadrant pattern
    orig: tuple[int, int] | None = None  # expected upright (orig_width, orig_height)
    checks: dict = field(default_factory=dict)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def hostile_cases() -> list[Case]:
    """Every hostile input of issue 6, each with its expected outcome."""
    photo = jpeg_bytes(textured(120, 90, 7), quality=90)
    photo_png = _save(Image.fromarray(textured(80, 60, 8)), "PNG")
    cases: list[Case] = []
    add = cases.append

    # ---- broken inputs: recorded as failed, with the stage that found out
    add(Case("empty.jpg", b"", False, "decode", "SampleError"))
    add(Case("empty.png", b"", False, "decode", "SampleError"))
    add(Case("truncated.jpg", photo[: len(photo) // 2], False, "decode", "OSError"))
    add(Case("truncated.png", photo_png[: len(photo_png) // 2], False, "decode", "OSError"))
    rng = np.random.default_rng(3)
    garbage = bytes(rng.integers(0, 256, len(photo) - 400, dtype=np.uint8))
    add(Case("corrupt_header.jpg", photo[:400] + garbage, False, "decode", "UnidentifiedImageError"))
    sos = photo.find(b"\xff\xda")
    body = sos + 2 + int.from_bytes(photo[sos + 2 : sos + 4], "big")  # entropy-coded data starts here
    scan = len(photo) - body - 2
    add(
        Case(
            "corrupt_scan.jpg",
            photo[:body] + bytes(rng.integers(0, 256, scan, dtype=np.uint8)) + b"\xff\xd9",
            False,
            "decode",
            "OSError",
        )
    )
    # zeroed scan data is valid entropy coding (all DC/AC deltas 0): decodes to flat mid-grey; no decoder
    # can tell, so it is converted
    add(Case("zeroed_scan.jpg", photo[:body] + bytes(scan) + b"\xff\xd9", True, colour=(128, 128, 128)))
    bad_crc = photo_png[:29] + bytes([photo_png[29] ^ 0xFF]) + photo_png[30:]  # IHDR CRC broken
    add(
        Case(
            "corrupt_crc.png", bad_crc, False, "decode", ("UnidentifiedImageError", "SyntaxError", "OSError")
        )
    )
    add(
        Case(
            "not_an_image.jpg",
            b"this is a text file, not a JPEG\n" * 20,
            False,
            "decode",
            "UnidentifiedImageError",
        )
    )
    add(
        Case(
            "page.png",
            b"<!doctype html><html><body>404 not found</body></html>\n",
            False,
            "decode",
            "UnidentifiedImageError",
        )
    )
    add(Case("bomb_60000.png", png_raw(60000, 60000, 8, 2, None), False, "decode", "ImageTooLarge"))
    add(Case("bomb_60000.jpg", jpeg_declaring(60000, 60000), False, "decode", "ImageTooLarge"))
    # above the job's --max-pixels (set to 4 Mpx in the test) but below Pillow's own limit
    add(Case("big_declared.png", png_raw(3000, 3000, 8, 2, None), False, "decode", "ImageTooLarge"))

    # ---- odd but valid inputs: converted, colour rule checked on flat colours
    add(
        Case(
            "cmyk.jpg",
            jpeg_bytes(np.tile(np.uint8([30, 160, 60, 20]), (24, 24, 1)), "CMYK", quality=100),
            True,
            colour=tuple(cmyk_to_rgb((30, 160, 60, 20))),
        )
    )
    add(Case("ycck.jpg", ycck_jpeg((30, 160, 60, 20)), True, colour=tuple(cmyk_to_rgb((30, 160, 60, 20)))))
    grey16 = np.full((20, 30), 0xB400, ">u2").tobytes()  # 16-bit grey 0xB400 -> 0xB4 = 180
    add(Case("grey16.png", png_raw(30, 20, 16, 0, grey16), True, colour=(180, 180, 180)))
    rgba16 = np.tile(np.array([0xFFFF, 0, 0, 0x8000], ">u2"), (20, 30, 1)).tobytes()  # red, half alpha
    add(Case("rgba16.png", png_raw(30, 20, 16, 6, rgba16), True, colour=(255, 127, 127)))
    pal = Image.new("P", (30, 20), 1)
    pal.putpalette([0, 0, 0, *BLUE] + [0] * (256 - 2) * 3)
    add(
        Case("palette_trns.png", _save(pal, "PNG", transparency=1), True, colour=(255, 255, 255))
    )  # all transparent
    pal2 = Image.new("P", (30, 20), 1)
    pal2.putpalette([0, 0, 0, *BLUE] + [0] * (256 - 2) * 3)
    add(Case("palette_opaque_pixels.png", _save(pal2, "PNG", transparency=0), True, colour=BLUE))
    frames = [Image.new("RGB", (30, 20), c) for c in (RED, BLUE, GREEN)]
    add(
        Case(
            "animated.gif",
            _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
            True,
            colour=RED,
        )
    )
    add(
        Case(
            "animated.webp",
            _save(frames[2], "WEBP", save_all=True, append_images=frames[:2], duration=50, lossless=True),
            True,
            colour=GREEN,
        )
    )
    add(Case("image.tif", _save(Image.new("RGB", (30, 20), YELLOW), "TIFF"), True, colour=YELLOW))
    add(
        Case(
            "multipage.tif",
            _save(frames[1], "TIFF", save_all=True, append_images=[frames[0]]),
            True,
            colour=BLUE,
        )
    )
    add(
        Case(
            "grey.jpg",
            jpeg_bytes(np.full((20, 30), 90, np.uint8), "L", quality=100),
            True,
            colour=(90, 90, 90),
        )
    )
    # EXIF orientation: stored sideways, must come out upright (pixel content, not just size)
    for o in (6, 8):
        add(
            Case(f"exif{o}.jpg", exif_rotated_jpeg(quadrants(64, 40), o), True, quadrants=True, orig=(64, 40))
        )
        # big enough that JPEG draft (DCT downscale) kicks in together with the rotation
        add(
            Case(
                f"exif{o}_large.jpg",
                exif_rotated_jpeg(quadrants(960, 600), o),
                True,
                quadrants=True,
                orig=(960, 600),
            )
        )
    add(Case("tiny_1x1.png", _save(Image.new("RGB", (1, 1), GREEN), "PNG"), True, colour=GREEN, orig=(1, 1)))
    add(
        Case(
            "tall_1x4000.png",
            _save(Image.new("RGB", (1, 4000), RED), "PNG"),
            True,
            colour=RED,
            orig=(1, 4000),
        )
    )
    add(
        Case(
            "wide_4000x1.png",
            _save(Image.new("RGB", (4000, 1), BLUE), "PNG"),
            True,
            colour=BLUE,
            orig=(4000, 1),
        )
    )
    # ---- names: unicode, spaces, dots, glob characters, keys that collide after sanitising
    for n in (
        "ünïcødé 写真.jpg",
        "with space.jpg",
        "a b.jpg",
        "a_b.jpg",
        "a..b.jpg",
        "glob[1].jpg",
        "what?.jpg",
        "star*.jpg",
        "UPPER.JPG",
        "x.y.z.jpeg",
    ):
        add(Case(n, photo, True, orig=(120, 90)))
    return cases


def write_cases(folder: Path, cases: list[Case]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for c in cases:
        (folder / c.name).write_bytes(c.data)


# ---------------------------------------------------------------- reading output back


def read_webdataset(urls: list[str], storage_options: dict | None = None) -> dict[str, dict]:
    """Samples of WebDataset tars (any fsspec URL), through fsspec + webdataset's own tar reader."""
    import fsspec
    import webdataset as wds

    out: dict[str, dict] = {}
    for url in urls:
        with fsspec.open(url, "rb", **(storage_options or {})) as fh:
            files = ({**f, "__url__": url} for f in wds.tariterators.tar_file_iterator(fh))
            for s in wds.tariterators.group_by_keys(files):
                out[s["__key__"]] = s
    return out


def decode_sample(sample: dict) -> tuple[np.ndarray, dict]:
    from resize_pipeline.encode import decode_payload

    ext = next(e for e in ("png", "jpg", "webp", "npy") if e in sample)
    return decode_payload(sample[ext], ext), json.loads(sample["json"])


# ---------------------------------------------------------------- one-line errors, injected faults

PLUGINS = REPO / "tests" / "plugins"


def one_line_error(err: str) -> str:
    """The single line a refused job prints (exit 2): no traceback, nothing else on stderr."""
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("resize-pipeline: error: "), err
    return lines[0]


def fault_env(tmp: Path, **faults) -> dict[str, str]:
    """Environment for a CLI run whose processes load `tests/plugins/faults_plugin.py` with `faults`."""
    path = tmp / f"faults-{len(list(tmp.glob('faults-*.json')))}.json"
    path.write_text(json.dumps(faults))
    return {"PYTHONPATH": os.pathsep.join([str(REPO), str(PLUGINS), os.environ.get("PYTHONPATH", "")]),
            "RESIZE_PIPELINE_TEST_FAULTS": str(path)}


def mount_tmpfs(where: Path, *options: str) -> bool:
    """Mount a tmpfs at `where` (root only; False when this machine does not allow it)."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(where)],
                       capture_output=True, text=True)
    return r.returncode == 0


def umount(where: Path) -> None:
    subprocess.run(["umount", str(where)], capture_output=True)
