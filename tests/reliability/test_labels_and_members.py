"""Issue 20, finding 3 and an "also": a bad file never stops the job, and nothing is dropped silently.

- A WebDataset sample whose ``.cls`` holds a number above int64, or a manifest row whose label is one
  (JSON; an unsigned 64-bit Parquet column), is one error row (stage ``list``); the job goes on.
- Tar members that are not regular files (symbolic and hard links, devices, FIFOs) are counted as
  skipped, with a reason, in the manifest.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from resize_pipeline.readers.output import shard_urls

from .helpers import jpeg_bytes, read_webdataset, run_cli, textured

HUGE = "99999999999999999999"  # above 2**64 too
ARGS = ("--size", "16", "--workers", "1", "-q")


def _member(tf: tarfile.TarFile, name: str, data: bytes = b"", **kw) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in kw.items():
        setattr(info, k, v)
    tf.addfile(info, io.BytesIO(data) if data else None)


def _errors(dest: Path) -> list[dict]:
    return [json.loads(line) for line in (dest / "_errors.jsonl").read_text().splitlines()]


def _manifest(dest: Path) -> dict:
    return json.loads((dest / "_manifest.json").read_text())


def _images(n: int) -> list[bytes]:
    return [jpeg_bytes(textured(40 + i, 30, i), quality=90) for i in range(n)]


def test_a_cls_label_above_int64_is_one_error_row(tmp_path):
    tar = tmp_path / "src" / "data.tar"
    tar.parent.mkdir()
    with tarfile.open(tar, "w") as tf:
        for i, (img, label) in enumerate(zip(_images(3), [b"1", HUGE.encode(), b"3"], strict=True)):
            _member(tf, f"s{i}.jpg", img)
            _member(tf, f"s{i}.cls", label)
    dest = tmp_path / "out"
    r = run_cli(str(tar), str(dest), *ARGS)
    assert r.returncode == 0, r.stderr  # main: OverflowError while listing, rc 1, on every rerun
    assert "Traceback" not in r.stderr
    counts = _manifest(dest)["counts"]
    assert (counts["total"], counts["written"], counts["failed"]) == (3, 2, 1)
    [err] = _errors(dest)
    assert err["stage"] == "list" and err["key"] == "data__s1" and err["path"].endswith("data.tar")
    assert "beyond the 64-bit integer range" in err["error"] and HUGE in err["error"]
    again = run_cli(str(tar), str(dest), *ARGS)  # the rerun resumes
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("label", [HUGE, str(2**63), str(-(2**63) - 1)])
def test_a_json_manifest_label_above_int64_is_one_error_row(tmp_path, label):
    src = tmp_path / "src"
    src.mkdir()
    for i, img in enumerate(_images(3)):
        (src / f"{i}.jpg").write_bytes(img)
    manifest = src.parent / "m.json"
    manifest.write_text(f'[{{"path": "src/0.jpg", "label": 1}}, {{"path": "src/1.jpg", "label": {label}}}, '
                        f'{{"path": "src/2.jpg", "label": 3}}]')
    dest = tmp_path / "out"
    r = run_cli(str(manifest), str(dest), *ARGS)
    assert r.returncode == 0, r.stderr
    counts = _manifest(dest)["counts"]
    assert (counts["total"], counts["written"], counts["failed"]) == (3, 2, 1)
    [err] = _errors(dest)
    assert err["stage"] == "list" and err["key"] == "row_1"
    assert "'label'" in err["error"] and "beyond the 64-bit integer range" in err["error"]
    got = {json.loads(s["json"])["source"].rsplit("/", 1)[-1]: int(s["cls"]) for s in
           read_webdataset(shard_urls(str(dest))).values()}
    assert got == {"0.jpg": 1, "2.jpg": 3}


def test_an_unsigned_parquet_label_beyond_int64_does_not_wrap_around(tmp_path):
    """A uint64 label column: 2**63 would silently become -2**63 (garbage) on main."""
    src = tmp_path / "src"
    src.mkdir()
    for i, img in enumerate(_images(2)):
        (src / f"{i}.jpg").write_bytes(img)
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": ["src/0.jpg", "src/1.jpg"],
                             "label": pa.array([5, 2**63], type=pa.uint64())}), manifest)
    dest = tmp_path / "out"
    r = run_cli(str(manifest), str(dest), *ARGS)
    assert r.returncode == 0, r.stderr
    [err] = _errors(dest)
    assert err["key"] == "row_1" and str(2**63) in err["error"]
    assert _manifest(dest)["counts"]["written"] == 1


def test_tar_members_that_are_not_regular_files_are_counted_as_skipped(tmp_path):
    tar = tmp_path / "src" / "links.tar"
    tar.parent.mkdir()
    img = _images(1)[0]
    with tarfile.open(tar, "w") as tf:
        _member(tf, "a.jpg", img)
        _member(tf, "b.jpg", type=tarfile.SYMTYPE, linkname="a.jpg")
        _member(tf, "c.jpg", type=tarfile.LNKTYPE, linkname="a.jpg")
        _member(tf, "d.jpg", type=tarfile.CHRTYPE, devmajor=1, devminor=5)  # /dev/zero
        _member(tf, "e.jpg", type=tarfile.FIFOTYPE)
        _member(tf, "dir", type=tarfile.DIRTYPE)  # a folder is no input: not counted
    dest = tmp_path / "out"
    r = run_cli(str(tar), str(dest), "--size", "16", "--workers", "1")
    assert r.returncode == 0, r.stderr
    counts = _manifest(dest)["counts"]
    assert (counts["total"], counts["written"], counts["failed"]) == (1, 1, 0)
    assert counts["skipped_tar_members"] == {"symbolic link": 1, "hard link": 1, "device": 1, "FIFO": 1}
    shown = {e["member"]: e["reason"] for e in counts["skipped_examples"]}
    assert shown == {"b.jpg": "symbolic link (to a.jpg)", "c.jpg": "hard link (to a.jpg)", "d.jpg": "device",
                     "e.jpg": "FIFO"}
    assert "skipped 4 tar member(s) that are not regular files" in r.stderr  # said, not only recorded


def test_unsigned_label_columns_are_read(tmp_path):
    """uint8 labels (as many datasets store them) crashed the listing on main (fill_null(-1) on uint)."""
    src = tmp_path / "src"
    src.mkdir()
    for i, img in enumerate(_images(2)):
        (src / f"{i}.jpg").write_bytes(img)
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": ["src/0.jpg", "src/1.jpg"], "label": pa.array([7, 200], type=pa.uint8())}),
                   manifest)
    dest = tmp_path / "out"
    r = run_cli(str(manifest), str(dest), *ARGS)
    assert r.returncode == 0, r.stderr
    got = sorted(int(s["cls"]) for s in read_webdataset(shard_urls(str(dest))).values())
    assert got == [7, 200]
