"""Training data: the same listing, reading and decoding as `convert`; integer crop geometry; bad inputs
skipped and counted (issue 16, findings 1 and 2)."""

import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from resize_pipeline.cli import main
from resize_pipeline.learned import data

#: the resizer input sizes a user reaches with --size and --input-scale (the issue tried 64..448)
SIZES = (8, 16, 32, 48, 64, 96, 112, 128, 160, 192, 224, 256, 299, 320, 384, 448, 512, 640, 768, 896, 1024)
TINY = ["--size", "16", "--batch-size", "4", "--device", "cpu", "--no-progress", "--threads", "1"]


def _old_float_box_breaks(w: np.ndarray, h: np.ndarray, size: int) -> np.ndarray:
    """Where the float box ``size / (size / min(w, h))`` of release 0.1.0 left the image (the crash)."""
    side = size / (size / np.minimum(w, h))
    return ((w - side) / 2 < 0) | ((h - side) / 2 < 0) | ((w + side) / 2 > w) | ((h + side) / 2 > h)


def test_square_box_is_inside_every_image_from_1_to_2000():
    """Every (w, h) in 1..2000 x 1..2000 (vectorised: the box does not depend on the output size)."""
    w, h = np.meshgrid(np.arange(1, 2001), np.arange(1, 2001), indexing="ij")
    left, top, right, bottom = data.square_box(w, h)
    side = np.minimum(w, h)
    assert left.dtype.kind == "i" and top.dtype.kind == "i"  # integer boxes: no rounding at all
    assert (left >= 0).all() and (top >= 0).all() and (right <= w).all() and (bottom <= h).all()
    assert ((right - left) == side).all() and ((bottom - top) == side).all()
    assert (np.abs((left + right) - w) <= 1).all() and (np.abs((top + bottom) - h) <= 1).all()  # centred
    assert data.square_box(584, 374) == (105, 0, 479, 374)


@pytest.mark.parametrize("size", SIZES)
def test_load_square_on_the_sizes_that_crashed(size):
    """The images whose float box went negative at this size (9% of a photo folder in the issue) now
    decode to exactly size x size; the first five of 1..2000 x 1..600 per size, and the issue's 584x374."""
    w, h = np.meshgrid(np.arange(1, 2001), np.arange(1, 601), indexing="ij")
    broke = np.argwhere(_old_float_box_breaks(w, h, size))
    assert len(broke), f"no size broke the old box at {size}"  # the test still tests what it claims
    rng = np.random.default_rng(size)
    picks = [(int(w[i, j]), int(h[i, j])) for i, j in broke[:5]] + [(584, 374)]
    for pw, ph in picks:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (ph, pw, 3), dtype=np.uint8)).save(buf, "PNG")
        out = data.load_square(buf.getvalue(), size)
        assert out.shape == (3, size, size) and out.dtype == torch.uint8


def _png_with_exif_orientation(arr: np.ndarray, orientation: int) -> bytes:
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "PNG", exif=exif.tobytes())
    return buf.getvalue()


def test_exif_orientation_is_applied_as_convert_applies_it():
    """A photo stored sideways with EXIF orientation 6 trains as it is shown (decode/ applies EXIF)."""
    rng = np.random.default_rng(0)
    upright = rng.integers(0, 256, (60, 40, 3), dtype=np.uint8)  # 40 wide, 60 high as shown
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # what a camera writes, with orientation 6
    buf = io.BytesIO()
    Image.fromarray(upright).save(buf, "PNG")
    expect = data.load_square(buf.getvalue(), 32)
    got = data.load_square(_png_with_exif_orientation(stored, 6), 32)
    assert torch.equal(got, expect)


def _png_declaring(w: int, h: int) -> bytes:
    """A small PNG whose header declares w x h (a decompression bomb's header)."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    raw = bytearray(buf.getvalue())
    ihdr = raw[12:29]  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", w, h)
    raw[12:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(raw)


def test_bomb_guard_and_bad_bytes_are_sample_errors(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(good, "JPEG")
    (tmp_path / "a" / "good.jpg").write_bytes(good.getvalue())
    (tmp_path / "a" / "bomb.png").write_bytes(_png_declaring(20000, 20000))
    (tmp_path / "b" / "empty.jpg").write_bytes(b"")
    (tmp_path / "b" / "text.jpg").write_text("not an image")
    ds = data.open_dataset(str(tmp_path), 16)
    samples = {ds.item(i).key: ds[i] for i in range(len(ds))}
    assert samples["a__good"].image.shape == (3, 16, 16)
    assert samples["a__bomb"].error["error_type"] == "ImageTooLarge"
    assert samples["b__empty"].error["error"] == "empty file (0 bytes)"
    assert "cannot identify image file" in samples["b__text"].error["error"]
    x, y, bad = data.collate([samples[k] for k in sorted(samples)])
    assert x.shape == (1, 3, 16, 16) and y.tolist() == [0] and len(bad) == 3


def test_labels_follow_the_listing(tmp_path):
    """Manifest rows without a label are recorded (stage list), not trained on or silently dropped."""
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (200, 30, 30)).save(buf, "PNG")
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(buf.getvalue())
    rows = [{"path": "0.png", "label": "dog"}, {"path": "1.png", "label": "cat"}, {"path": "2.png"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = data.open_dataset(str(tmp_path / "m.jsonl"), 8)
    assert len(ds) == 2 and ds.classes == ["cat", "dog"] and ds.labels.tolist() == [1, 0]
    assert [e["stage"] for e in ds.errors] == ["list"] and "no label" in ds.errors[0]["error"]


@pytest.mark.parametrize("workers, prescan", [(0, True), (1, True), (1, False)])
def test_one_broken_file_does_not_kill_a_run(broken_folder, tmp_path, workers, prescan, capsys):
    """A truncated JPEG, a zero-byte file and text named .jpg: skipped, counted, listed; the run ends
    (in release 0.1.0 the first one sampled stopped the whole run). Found by the pre-scan, or, without
    it, when first met (here: in the held-out set, the whole folder)."""
    run = tmp_path / "run"
    extra = [] if prescan else ["--no-prescan", "--val-data", str(broken_folder)]
    rc = main(["train", "--data", str(broken_folder), "--epochs", "1", "--workers", str(workers),
               "--max-bad-fraction", "0.5", "--out-dir", str(run), *extra, *TINY])
    out, err = capsys.readouterr()
    assert rc == 0, err
    total = 13 if prescan else 26
    assert f"skipped 3 of {total} inputs that could not be read, decoded or labelled" in out
    skipped = [json.loads(line) for line in (run / "_skipped.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in skipped) == ["chelsea__truncated", "coffee__empty", "coffee__notes"]
    assert {r["stage"] for r in skipped} == {"decode"} and all(r["path"].startswith("file://") for r in skipped)
    assert (run / "resizer" / "model.safetensors").exists()


def test_too_many_bad_files_stop_with_one_line(broken_folder, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", "--data", str(broken_folder), "--epochs", "1", "--out-dir", str(run), *TINY])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("resize-pipeline: error")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err
    assert "above --max-bad-fraction 0.01" in lines[0] and "_skipped.jsonl" in lines[0]
    assert (run / "_skipped.jsonl").read_text().count("\n") >= 2  # 2 of 13 already exceed 1%
    assert not (run / "resizer").exists()


def test_one_broken_file_in_a_hundred_with_default_flags(tmp_path, capsys):
    """The issue's case with nothing but the usual flags: 120 photos and one truncated JPEG (under the
    default --max-bad-fraction 0.01). Release 0.1.0 stopped at the broken file; now the run ends."""
    rng = np.random.default_rng(0)
    for i in range(120):
        path = tmp_path / "photos" / f"class{i % 2}" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (int(rng.integers(12, 40)), int(rng.integers(12, 40)), 3),
                                     dtype=np.uint8)).save(path)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "photos" / "class1" / "broken.jpg").write_bytes(buf.getvalue()[:300])
    folder = str(tmp_path / "photos")
    rc = main(["train", "--data", folder, "--val-data", folder, "--max-steps", "2", *TINY])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "skipped 1 of 242 inputs" in out and "Traceback" not in err


def test_a_convert_output_on_an_object_store(image_folder):
    """`memory://` stands for any fsspec store: the output's manifest decides what is read."""
    import fsspec

    from resize_pipeline.config import ConvertConfig
    from resize_pipeline.conversion import convert

    convert(ConvertConfig(str(image_folder), "memory://train_out", size=(48, 48), format="webdataset",
                          workers=1, quiet=True))
    fsspec.filesystem("memory").pipe("/train_out/stray.tar", b"not ours")  # not in the manifest: not read
    ds = data.open_dataset("memory://train_out", 16)
    assert len(ds) == 10 and ds.classes == ["chelsea", "coffee"] and not ds.errors
    assert ds[0].image.shape == (3, 16, 16)
    fsspec.filesystem("memory").rm("/train_out", recursive=True)
