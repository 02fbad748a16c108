"""Hostile inputs: every file is either converted correctly or recorded as failed with a reason; the job
always finishes and ``written + failed == inputs``."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from resize_pipeline import convert
from resize_pipeline.config import ConvertConfig
from resize_pipeline.encode import decode_payload

from .helpers import (
    BLUE,
    GREEN,
    RED,
    YELLOW,
    Case,
    close,
    decode_sample,
    hostile_cases,
    quadrant_colours,
    read_webdataset,
    write_cases,
)

SIZE = 32


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """One conversion of the whole hostile set (both formats, lossless PNG payloads)."""
    root = tmp_path_factory.mktemp("hostile")
    cases = hostile_cases()
    write_cases(root / "src", cases)
    config = ConvertConfig(
        source=str(root / "src"),
        dest=str(root / "out"),
        size=SIZE,
        format="both",
        encode="png",
        samples_per_shard=8,
        workers=1,
        max_pixels=4_000_000,
        quiet=True,
    )
    summary = convert(config)
    return cases, summary, root / "out"


def _by_name(cases: list[Case]) -> dict[str, Case]:
    return {c.name: c for c in cases}


def _name_of(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def test_accounting(hostile_run):
    cases, summary, out = hostile_run
    assert summary.total == len(cases) == summary.written + summary.failed
    assert summary.failed == sum(not c.ok for c in cases)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["counts"]["total"] == len(cases)
    assert manifest["counts"]["written"] + manifest["counts"]["failed"] == len(cases)
    stats = [json.loads(p.read_text()) for p in sorted((out / "_stats").glob("*.json"))]
    assert sum(s["total"] for s in stats) == len(cases)
    assert all(s["written"] + s["failed"] == s["total"] for s in stats)


def test_every_failure_recorded_with_stage_and_reason(hostile_run):
    cases, _, out = hostile_run
    by_name = _by_name(cases)
    errors = [json.loads(line) for line in (out / "_errors.jsonl").read_text().splitlines()]
    failed = {_name_of(e["path"]): e for e in errors}
    assert len(failed) == len(errors)  # one record per failed input
    assert set(failed) == {c.name for c in cases if not c.ok}
    for name, e in failed.items():
        case = by_name[name]
        assert set(e) >= {"key", "path", "stage", "error_type", "error"}
        assert e["error"] and e["key"] and e["path"].startswith("file://")
        expected = (case.error_type,) if isinstance(case.error_type, str) else case.error_type
        assert (e["stage"], e["error_type"]) in {(case.stage, t) for t in expected}, (name, e)
        # reproducible messages (resume compares _errors.jsonl byte for byte): no object addresses
        assert not re.search(r"0x[0-9a-f]{6,}", e["error"]), e


def test_converted_images_are_correct(hostile_run):
    cases, _, out = hostile_run
    by_name = _by_name(cases)
    samples = read_webdataset([str(p) for p in sorted(out.glob("*.tar"))])
    seen = {}
    for key, sample in samples.items():
        assert "." not in key and "/" not in key
        img, info = decode_sample(sample)
        name = _name_of(info["source"])
        assert name not in seen, f"{name} written twice"
        seen[name] = key
        case = by_name[name]
        assert case.ok, f"{name} should have failed"
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
        assert (info["width"], info["height"]) == (SIZE, SIZE)
        if case.colour is not None:
            assert close(img.reshape(-1, 3).mean(0), case.colour, 6), (
                name,
                img.reshape(-1, 3).mean(0),
                case.colour,
            )
        if case.quadrants:  # EXIF-rotated: must come out upright
            tl, tr, bl, br = quadrant_colours(img)
            assert close(tl, RED) and close(tr, GREEN) and close(bl, BLUE) and close(br, YELLOW), (
                name,
                tl,
                tr,
                bl,
                br,
            )
            # reported size is the file's upright size, whatever the decoder's draft scale
            assert (info["orig_width"], info["orig_height"]) == case.orig, name
        elif case.orig is not None:
            assert (info["orig_width"], info["orig_height"]) == case.orig, name
    assert set(seen) == {c.name for c in cases if c.ok}
    # keys that collide after sanitising ("a b" / "a_b" / "a..b") got distinct, stable keys
    assert (
        seen["a b.jpg"] == "a_b"
        and seen["a_b.jpg"].startswith("a_b_")
        and seen["a..b.jpg"].startswith("a_b_")
    )
    assert len({seen["a b.jpg"], seen["a_b.jpg"], seen["a..b.jpg"]}) == 3


def test_parquet_agrees_with_webdataset(hostile_run):
    cases, _, out = hostile_run
    rows = []
    for p in sorted(out.glob("*.parquet")):
        rows += pq.read_table(p).to_pylist()
    wds = read_webdataset([str(p) for p in sorted(out.glob("*.tar"))])
    assert len(rows) == len(wds) == sum(c.ok for c in cases)
    for r in rows:
        img, info = decode_sample(wds[r["key"]])
        assert np.array_equal(decode_payload(r["image"]["bytes"], r["format"]), img)
        assert (r["orig_width"], r["orig_height"], r["source"]) == (
            info["orig_width"],
            info["orig_height"],
            info["source"],
        )


EXTREMES = ("tall_1x4000.png", "wide_4000x1.png", "tiny_1x1.png")


@pytest.mark.parametrize("mode", ["stretch", "center-crop", "pad", "shorter-side", "longer-side"])
def test_extreme_aspect_ratios_in_every_mode(tmp_path, mode):
    cases = [c for c in hostile_cases() if c.name in EXTREMES]
    write_cases(tmp_path / "src", cases)
    s = convert(
        ConvertConfig(
            source=str(tmp_path / "src"),
            dest=str(tmp_path / "out"),
            size=SIZE,
            mode=mode,
            encode="png",
            pad_color=(0, 0, 0),
            workers=1,
            quiet=True,
        )
    )
    assert s.total == 3 == s.written + s.failed
    out = {
        _name_of(decode_sample(v)[1]["source"]): decode_sample(v)[0]
        for v in read_webdataset([str(p) for p in sorted((tmp_path / "out").glob("*.tar"))]).values()
    }
    errors = {
        _name_of(e["path"]): e
        for e in map(json.loads, (tmp_path / "out" / "_errors.jsonl").read_text().splitlines())
    }
    if mode == "shorter-side":
        # 1x4000 -> 32x128000: refused before allocating it, at the resize stage, with the reason
        assert set(errors) == {"tall_1x4000.png", "wide_4000x1.png"}
        assert all(e["stage"] == "resize" and "side limit" in e["error"] for e in errors.values())
        assert set(out) == {"tiny_1x1.png"}
    else:
        assert not errors and set(out) == set(EXTREMES)
    expected_shape = {
        "stretch": {n: (SIZE, SIZE) for n in EXTREMES},
        "center-crop": {n: (SIZE, SIZE) for n in EXTREMES},
        "pad": {n: (SIZE, SIZE) for n in EXTREMES},
        "shorter-side": {"tiny_1x1.png": (SIZE, SIZE)},
        "longer-side": {
            "tall_1x4000.png": (SIZE, 1),
            "wide_4000x1.png": (1, SIZE),
            "tiny_1x1.png": (SIZE, SIZE),
        },
    }[mode]
    colours = {c.name: c.colour for c in cases}
    for name, img in out.items():
        assert img.shape[:2] == expected_shape[name], (mode, name, img.shape)
        if mode == "pad" and name != "tiny_1x1.png":
            # a 1-pixel strip in the middle, pad colour around it
            strip = img[:, (SIZE - 1) // 2] if name.startswith("tall") else img[(SIZE - 1) // 2, :]
            assert close(strip.mean(0), colours[name], 6)
            assert (img.reshape(-1, 3).max(1) > 0).sum() == SIZE  # everything else is pad colour
        else:
            assert close(img.reshape(-1, 3).mean(0), colours[name], 6), (mode, name)


def test_manifest_with_dotdot_unicode_and_missing_paths(tmp_path):
    """A CSV manifest in a sub-folder: ``../`` paths resolve, unicode/space names read, missing files fail
    at the read stage (FileNotFoundError), and nothing stops the job."""
    from PIL import Image

    (tmp_path / "data" / "lists").mkdir(parents=True)
    Image.new("RGB", (40, 30), RED).save(tmp_path / "data" / "ünï cøde.png")
    Image.new("RGB", (40, 30), BLUE).save(tmp_path / "data" / "lists" / "here.png")
    (tmp_path / "data" / "lists" / "list.csv").write_text(
        "path,label\n../ünï cøde.png,cat\nhere.png,dog\n../missing.jpg,dog\n./../lists/../ünï cøde.png,cat\n",
        encoding="utf-8",
    )
    s = convert(
        ConvertConfig(
            source=str(tmp_path / "data" / "lists" / "list.csv"),
            dest=str(tmp_path / "out"),
            size=SIZE,
            encode="png",
            workers=1,
            quiet=True,
        )
    )
    assert (s.total, s.written, s.failed) == (4, 3, 1)
    [err] = [json.loads(x) for x in (tmp_path / "out" / "_errors.jsonl").read_text().splitlines()]
    assert (
        err["stage"] == "read"
        and err["error_type"] == "FileNotFoundError"
        and err["path"].endswith("missing.jpg")
    )
    samples = read_webdataset([str(p) for p in sorted((tmp_path / "out").glob("*.tar"))])
    assert len(samples) == 3 and all("." not in k for k in samples)
    colours = sorted(tuple(decode_sample(v)[0][0, 0].tolist()) for v in samples.values())
    assert colours == sorted([RED, BLUE, RED])
