"""``resize-pipeline inspect``: counts, shards, labels, sizes, errors, --verify, --sheet, --json."""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pytest
from PIL import Image

from resize_pipeline.cli import main
from resize_pipeline.config import ConvertConfig
from resize_pipeline.conversion import convert
from resize_pipeline.inspection import inspect_output, verify_shards


def _convert(src, dst, **kw):
    kw = {"size": (40, 32), "workers": 1, "quiet": True, "samples_per_shard": 5, **kw}
    return convert(ConvertConfig(str(src), str(dst), **kw))


@pytest.fixture
def broken_output(broken_folder, tmp_path):
    """10 good images (2 classes) + 3 broken ones, --format both, 3 shards."""
    dst = tmp_path / "out"
    _convert(broken_folder, dst, format="both")
    return dst


def test_report_counts_shards_labels_sizes_errors(broken_output):
    r = inspect_output(str(broken_output))
    manifest = json.loads((broken_output / "_manifest.json").read_text())
    assert r.counts["total"] == 13 and r.counts["written"] == 10 and r.counts["failed"] == 3
    assert r.counts["failed_by_stage"] == {"decode": 3}
    assert [s["name"] for s in r.shards] == [s["name"] for s in manifest["shards"]]
    assert r.total_bytes == sum(s["bytes"] for s in manifest["shards"])
    assert r.labels == {"chelsea": 5, "coffee": 5}
    assert r.image_sizes == {"40x32": 10}
    tar_members = r.payload_bytes
    assert 0 < tar_members["min"] <= tar_members["p50"] <= tar_members["max"]
    assert sum(e["count"] for e in r.errors) == 3 and {e["stage"] for e in r.errors} == {"decode"}
    assert all(e["example"] for e in r.errors)
    text = r.text()
    for part in ("13 inputs: 10 written, 3 failed (decode 3)", "shard-00000.tar", "chelsea", "40x32 x10", "decode:"):
        assert part in text


def test_parquet_only_output_gives_the_same_figures(image_folder, tmp_path):
    _convert(image_folder, tmp_path / "both", format="both")
    _convert(image_folder, tmp_path / "pq", format="parquet")
    a, b = inspect_output(str(tmp_path / "both")), inspect_output(str(tmp_path / "pq"))
    assert (a.scanned, b.scanned) == ("webdataset", "parquet")
    assert a.labels == b.labels and a.image_sizes == b.image_sizes and a.payload_bytes == b.payload_bytes


def test_errors_group_alike_messages(tmp_path, image_folder):
    for i in range(4):  # four different files failing the same way
        (image_folder / "chelsea" / f"junk_{i}.jpg").write_bytes(b"not an image %d" % i)
    _convert(image_folder, tmp_path / "out")
    r = inspect_output(str(tmp_path / "out"))
    assert r.errors[0]["count"] == 4 and r.errors[0]["stage"] == "decode"


def test_cli_json_and_exit_codes(broken_output, capsys):
    assert main(["inspect", str(broken_output), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["counts"]["written"] == 10 and doc["labels"] == {"chelsea": 5, "coffee": 5}
    assert doc["verify"] is None and doc["verified_ok"] is None
    assert main(["inspect", str(broken_output), "--verify", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verified_ok"] is True and len(doc["verify"]) == len(doc["shards"]) == 6


def test_verify_catches_a_corrupted_shard(broken_output, capsys):
    tar = broken_output / "shard-00001.tar"
    data = bytearray(tar.read_bytes())
    data[2000] ^= 0xFF  # same size, one flipped byte
    tar.write_bytes(bytes(data))
    (broken_output / "shard-00002.parquet").unlink()
    assert main(["inspect", str(broken_output), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH shard-00001.tar: sha256" in out and "MISMATCH shard-00002.parquet: missing" in out
    assert "4/6 shards match" in out
    bad = {v["name"]: v for v in verify_shards(str(broken_output)) if not v["ok"]}
    assert set(bad) == {"shard-00001.tar", "shard-00002.parquet"}


def test_verify_catches_a_truncated_shard(broken_output):
    p = broken_output / "shard-00000.parquet"
    p.write_bytes(p.read_bytes()[:-10])
    bad = [v for v in verify_shards(str(broken_output)) if not v["ok"]]
    assert [(v["name"], v["reason"].split(",")[0]) for v in bad] == [("shard-00000.parquet", f"{p.stat().st_size} bytes")]


def test_contact_sheet(broken_output, tmp_path, capsys):
    sheet = tmp_path / "sheet.png"
    assert main(["inspect", str(broken_output), "--sheet", str(sheet), "--samples", "6", "--seed", "3"]) == 0
    assert f"contact sheet: {sheet} (6 samples)" in capsys.readouterr().out
    img = Image.open(sheet)
    assert img.format == "PNG" and img.size == (4 * 160, 2 * (160 + 28))
    arr = np.asarray(img.convert("RGB"))
    assert arr[:160, :160].std() > 10  # a real thumbnail, not a blank cell
    again = tmp_path / "again.png"
    main(["inspect", str(broken_output), "--sheet", str(again), "--samples", "6", "--seed", "3"])
    assert again.read_bytes() == sheet.read_bytes()  # seeded
    picks = inspect_output(str(broken_output), sample_count=6, seed=3).samples
    assert len({p.key for p in picks}) == 6


@pytest.mark.parametrize("bad, message", [
    ("missing", "no such folder"),
    ("empty", "not a resize-pipeline output (no _manifest.json)"),
    ("foreign", "was not written by resize-pipeline"),
    ("unfinished", "the conversion has not finished"),
    ("file", "is a file"),
])
def test_bad_out_is_one_line_exit_2(tmp_path, capsys, bad, message):
    path = tmp_path / bad
    if bad == "empty":
        path.mkdir()
    elif bad == "foreign":
        path.mkdir()
        (path / "_manifest.json").write_text('{"shards": []}')
    elif bad == "unfinished":
        path.mkdir()
        (path / "_run.json").write_text("{}")
    elif bad == "file":
        path.write_text("x")
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_memory_url(image_folder, capsys):
    fs = fsspec.filesystem("memory")
    try:
        _convert(image_folder, "memory://inspect-test/out", format="both")
        assert main(["inspect", "memory://inspect-test/out", "--verify", "--json",
                     "--sheet", "memory://inspect-test/sheet.png"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["counts"]["written"] == 10 and doc["verified_ok"] is True
        assert doc["labels"] == {"chelsea": 5, "coffee": 5}
        assert fs.cat_file("/inspect-test/sheet.png")[:8] == b"\x89PNG\r\n\x1a\n"
        fs.pipe_file("/inspect-test/out/shard-00000.tar", b"corrupt")
        assert main(["inspect", "memory://inspect-test/out"]) == 2  # the scan cannot read it: one line
        assert "cannot read shard shard-00000.tar" in capsys.readouterr().err
        assert main(["inspect", "memory://inspect-test/out", "--verify"]) == 1  # verified, then left out
        out = capsys.readouterr().out
        assert "MISMATCH shard-00000.tar: 7 bytes" in out and "not scanned (failed verification): shard-00000.tar" in out
    finally:
        fs.rm("/inspect-test", recursive=True)


def test_dali_index_option(image_folder, tmp_path, capsys):
    _convert(image_folder, tmp_path / "out")
    assert main(["inspect", str(tmp_path / "out"), "--dali-index"]) == 0
    assert "DALI index files: 2 written" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").glob("*.idx")) == ["shard-00000.idx", "shard-00001.idx"]


def test_bad_samples_value(image_folder, tmp_path, capsys):
    _convert(image_folder, tmp_path / "out")
    assert main(["inspect", str(tmp_path / "out"), "--samples", "0"]) == 2
    assert "--samples must be an integer in 1..1024" in capsys.readouterr().err
