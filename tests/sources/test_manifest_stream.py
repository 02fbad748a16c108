"""Manifests read in blocks (`sources.manifest`): the rows, labels, metadata and error rows a whole-file
read gave, a block at a time; column types from the first block; what a later block that does not
fit them does."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest

from resize_pipeline.errors import SourceError
from resize_pipeline.sources import list_source
from resize_pipeline.sources.manifest import ManifestPaths, _metas


def test_metadata_json_is_what_json_dumps_writes():
    table = pa.table({
        "caption": ["a \"quoted\" café\n\ttab", "", None, "\u2028 sep \x00", "😀 \\ back"],
        "n": [1, -2**62, None, 0, 7],
        "x": [0.1, float("nan"), float("inf"), -0.0, 1e300],
        "ok": [True, False, None, True, False],
        "Z": ["z", "z", "z", "z", "z"],
    })
    want = [json.dumps(r, sort_keys=True, default=str, ensure_ascii=False) for r in table.to_pylist()]
    assert _metas(table) == want
    nested = pa.table({"tags": [["a", "b"], []], "d": [{"k": 1}, {"k": 2}]})  # other types: row by row
    assert _metas(nested) == [json.dumps(r, sort_keys=True, default=str, ensure_ascii=False)
                              for r in nested.to_pylist()]
    assert math.isnan(json.loads(_metas(pa.table({"x": [float("nan")]}))[0])["x"])


def test_manifest_urls_fast_path_is_normpath_join():
    import fsspec

    rule = ManifestPaths(fsspec.filesystem("file"), "/data/m")
    texts = ["a/b.jpg", "./a.jpg", "a/../b.jpg", "a//b.jpg", "a/.hidden/c.jpg", ".x.jpg", "/abs/p.jpg",
             "/abs/../p.jpg", "s3://b/k.jpg", "dir/", "ü n i/ç.jpg"]
    fs = fsspec.filesystem("file")
    import posixpath

    want = [t if "://" in t else fs.unstrip_protocol(t) if t.startswith("/")
            else fs.unstrip_protocol(posixpath.normpath(posixpath.join("/data/m", t))) for t in texts]
    assert rule.urls(texts) == want


def _csv(path, rows):
    path.write_text("path,label,caption\n" + "".join(f"{p},{lab},{c}\n" for p, lab, c in rows))
    return path


def test_rows_labels_and_errors_across_blocks(tmp_path, small_blocks):
    rows = [(f"img/{i:03d}.jpg" if i % 7 else "", ["cat", "dog", "eel"][i % 3], f"c{i}") for i in range(60)]
    listing = list_source(str(_csv(tmp_path / "m.csv", rows)))
    assert listing.classes == ["cat", "dog", "eel"]  # over the whole column, rows with a path only
    items = list(listing.items)
    kept = [r for r in rows if r[0]]
    assert [it.key for it in items] == [r[0][:-4].replace("/", "__") for r in kept]
    assert [it.label_name for it in items] == [r[1] for r in kept]
    assert [it.label for it in items] == [["cat", "dog", "eel"].index(r[1]) for r in kept]
    assert [json.loads(it.meta) for it in items] == [{"caption": r[2]} for r in kept]
    assert [e["error"] for e in listing.errors] == [f"row {i} of the manifest has no path" for i in range(0, 60, 7)]
    assert listing.bound == 60  # the lines, counted before the rows are read


def test_a_csv_column_that_changes_type_later_is_read_as_text_from_there(tmp_path, small_blocks, caplog):
    rows = [(f"img/{i:03d}.jpg", i, i * 10) for i in range(40)] + [("img/late.jpg", "x", "not a number")]
    listing = list_source(str(_csv(tmp_path / "m.csv", rows)))
    items = list(listing.items)
    assert len(items) == 41 and "read as text" in caplog.text
    assert items[0].label == 0 and json.loads(items[0].meta) == {"caption": 0}  # typed, as inferred
    assert (items[-1].label, items[-1].label_name) == (-1, "x")  # kept, no number: label -1
    assert json.loads(items[-1].meta) == {"caption": "not a number"}


def test_a_jsonl_manifest_that_changes_shape_later_is_refused_in_one_line(tmp_path, small_blocks):
    lines = [json.dumps({"path": f"img/{i}.jpg", "n": i}) for i in range(30)] + [json.dumps({"path": "x.jpg", "n": "a"})]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    listing = list_source(str(tmp_path / "m.jsonl"))
    with pytest.raises(SourceError, match="do not have the fields and types of the first ones"):
        list(listing.rows())


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "json", "tsv"])
def test_every_format_streams_the_same_rows(tmp_path, small_blocks, fmt):
    import pyarrow.parquet as pq

    rows = [{"path": f"img/{i:03d}.jpg", "label": i % 4, "caption": f"c{i}"} for i in range(33)]
    path = tmp_path / f"m.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=8)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("path\tlabel\tcaption\n" + "".join(f"{r['path']}\t{r['label']}\t{r['caption']}\n" for r in rows))
    items = list(list_source(str(path)).items)
    assert [(it.key, it.label, it.label_name, json.loads(it.meta)) for it in items] == [
        (r["path"][:-4].replace("/", "__"), r["label"], str(r["label"]), {"caption": r["caption"]}) for r in rows]
