"""Labels beyond 64 bits and tar members that are not regular files, at the listing (`sources.tars`,
`sources.manifest`, `sources.parquet_bytes`): what is an error row, what is counted as skipped, in
which order, block by block and task by task. (End to end: tests/reliability/test_labels_and_members.py.)"""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from resize_pipeline.errors import SourceError
from resize_pipeline.sources import list_source, tars
from resize_pipeline.sources.common import MAX_SKIPPED_SHOWN

HUGE = 2**63


def _member(tf: tarfile.TarFile, name: str, data: bytes = b"", **kw) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in kw.items():
        setattr(info, k, v)
    tf.addfile(info, io.BytesIO(data) if data else None)


def test_uint64_manifest_labels_beyond_int64_are_error_rows_in_every_block(tmp_path, small_blocks):
    labels = [HUGE + i if i % 6 == 5 else i for i in range(30)]
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": [f"img/{i:02d}.jpg" if i % 9 else None for i in range(30)],
                             "label": pa.array(labels, type=pa.uint64())}), path, row_group_size=8)
    listing = list_source(str(path))
    items = list(listing.items)
    kept = [i for i in range(30) if i % 9 and i % 6 != 5]
    assert [(it.key, it.label) for it in items] == [(f"img__{i:02d}", i) for i in kept]
    errors = list(listing.errors)
    assert [e["key"] for e in errors] == [f"row_{i}" for i in range(30) if i % 9 == 0 or i % 6 == 5]  # row order
    assert errors[1]["error"] == f"row 5 of the manifest: 'label' {HUGE + 5} is beyond the 64-bit integer range"
    assert {e["stage"] for e in errors} == {"list"}


def test_a_csv_label_beyond_int64_after_the_types_changed_is_an_error_row(tmp_path, small_blocks):
    rows = [f"img/{i:02d}.jpg,{i}\n" for i in range(30)]
    rows[25] = "img/25.jpg,x\n"  # the column is read as text from here on
    rows[27] = "img/27.jpg,99999999999999999999\n"
    rows[28] = f"img/28.jpg,{2**63 - 1}\n"  # the largest label: kept
    rows[29] = "img/29.jpg," + "9" * 200 + "\n"  # shown shortened
    path = tmp_path / "m.csv"
    path.write_text("path,label\n" + "".join(rows))
    listing = list_source(str(path))
    got = {it.key: it.label for it in listing.items}
    assert got["img__28"] == 2**63 - 1 and got["img__25"] == -1 and got["img__26"] == 26
    assert "img__27" not in got and "img__29" not in got and len(got) == 28
    errors = list(listing.errors)
    assert [e["key"] for e in errors] == ["row_27", "row_29"]
    assert "99999999999999999999 is beyond the 64-bit integer range" in errors[0]["error"]
    assert len(errors[1]["error"]) < 200


def test_json_manifest_rows_beyond_int64_in_any_column(tmp_path, small_blocks):
    rows = [{"path": f"img/{i:02d}.jpg", "label": i, "n": i} for i in range(20)]
    rows[3]["label"] = -(2**63) - 1
    rows[12]["n"] = 10**30
    path = tmp_path / "m.json"
    path.write_text(json.dumps(rows))
    listing = list_source(str(path))
    assert [it.key for it in listing.items] == [f"img__{i:02d}" for i in range(20) if i not in (3, 12)]
    assert [(e["key"], e["error"]) for e in listing.errors] == [
        ("row_3", f"row 3 of the manifest: 'label' {-(2**63) - 1} is beyond the 64-bit integer range"),
        ("row_12", f"row 12 of the manifest: 'n' {10**30} is beyond the 64-bit integer range")]


def test_a_json_manifest_with_a_nested_huge_integer_is_refused_in_one_line(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps([{"path": "a.jpg", "meta": {"n": 10**30}}]))
    with pytest.raises(SourceError, match="nested value holds an integer beyond the 64-bit"):
        list(list_source(str(path)).items)


def test_parquet_bytes_uint64_labels_beyond_int64_are_error_rows(tmp_path, monkeypatch):
    monkeypatch.setattr("resize_pipeline.sources.parquet_bytes.PARQUET_BATCH", 3)
    path = tmp_path / "imgs.parquet"
    labels = [1, HUGE, 3, 4, HUGE + 9, 6, 7]
    pq.write_table(pa.table({"image": [b"x%d" % i for i in range(7)], "label": pa.array(labels, type=pa.uint64()),
                             "meta": [f"m{i}" for i in range(7)]}), path, row_group_size=3)
    listing = list_source(str(path))
    items = list(listing.items)
    assert [(it.row, it.label, it.meta) for it in items] == [(i, labels[i], f"m{i}") for i in (0, 2, 3, 5, 6)]
    assert [e["key"] for e in listing.errors] == ["imgs__row_1", "imgs__row_4"]
    assert str(HUGE + 9) in listing.errors[1]["error"]


def test_a_cls_member_is_read_up_to_4096_bytes(tmp_path):
    tar = tmp_path / "a.tar"
    with tarfile.open(tar, "w") as tf:
        _member(tf, "s0.jpg", b"img")
        _member(tf, "s0.cls", b"7" + b" " * 5000 + b"not read")  # only the first 4096 bytes are read
    [item] = list(list_source(str(tar)).items)
    assert item.label == 7


def _tars_with_links(folder, n_tars: int, links: int) -> list[str]:
    folder.mkdir()
    shown = []
    for t in range(n_tars):
        with tarfile.open(folder / f"t{t:02d}.tar", "w") as tf:
            _member(tf, "a.jpg", b"img")
            for j in range(links):
                _member(tf, f"l{j:02d}.jpg", type=tarfile.SYMTYPE, linkname="a.jpg")
                shown.append(f"t{t:02d}.tar:l{j:02d}.jpg")
            _member(tf, "fifo.jpg", type=tarfile.FIFOTYPE)
            shown.append(f"t{t:02d}.tar:fifo.jpg")
    return shown


def test_skipped_members_are_gathered_from_every_task_in_tar_order(tmp_path, caplog):
    """Each tar is its own listing task (threads): the counts add up, the examples are the first
    `MAX_SKIPPED_SHOWN` in tar order, whichever task ends first."""
    members = _tars_with_links(tmp_path / "src", 12, 3)
    listing = list_source(str(tmp_path / "src"))
    assert listing.kind == "webdataset" and len(listing.items) == 12
    assert listing.skipped_members == {"symbolic link": 36, "FIFO": 12}
    shown = [f"{e['path'].rsplit('/', 1)[-1]}:{e['member']}" for e in listing.skipped_examples]
    assert shown == members[:MAX_SKIPPED_SHOWN]
    assert listing.skipped_examples[0]["reason"] == "symbolic link (to a.jpg)"
    assert "skipped 48 tar member(s) that are not regular files (12 FIFO, 36 symbolic link)" in caplog.text


def test_skipped_examples_per_tar_are_capped(tmp_path):
    """A tar of many links: counted, and no more than `MAX_SKIPPED_SHOWN` named (a task returns no more)."""
    tar = tmp_path / "links.tar"
    with tarfile.open(tar, "w") as tf:
        _member(tf, "a.jpg", b"img")
        for j in range(MAX_SKIPPED_SHOWN * 5):
            _member(tf, f"l{j:03d}.jpg", type=tarfile.LNKTYPE, linkname="a.jpg")
    import fsspec

    scan = tars._tar_samples(fsspec.filesystem("file"), str(tar))
    assert scan.skipped == {"hard link": MAX_SKIPPED_SHOWN * 5} and len(scan.examples) == MAX_SKIPPED_SHOWN
    listing = list_source(str(tar))
    assert listing.skipped_members == {"hard link": MAX_SKIPPED_SHOWN * 5}
    assert [e["member"] for e in listing.skipped_examples] == [f"l{j:03d}.jpg" for j in range(MAX_SKIPPED_SHOWN)]
