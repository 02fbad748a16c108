import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from resize_pipeline.errors import SourceError
from resize_pipeline.sources import list_source, read_items


def test_imagefolder_labels_and_order(image_folder):
    (image_folder / "README.txt").write_text("not an image")  # not an input, just counted
    top = image_folder / "top.jpg"
    top.write_bytes((image_folder / "coffee" / "img_0.jpg").read_bytes())
    listing = list_source(str(image_folder))
    assert listing.kind == "directory" and listing.skipped == 1  # an image at the top: no labels
    assert all(it.label == -1 for it in listing.items) and len(listing.items) == 11
    top.unlink()
    listing = list_source(str(image_folder))
    assert listing.kind == "imagefolder" and listing.classes == ["chelsea", "coffee"]
    keys = [it.key for it in listing.items]
    assert keys == sorted(keys) and keys[0] == "chelsea__img_0"
    assert {it.label for it in listing.items} == {0, 1}
    assert all(it.label_name == ("chelsea", "coffee")[it.label] for it in listing.items)
    assert list_source(str(image_folder)).items == listing.items  # deterministic


def test_glob(image_folder):
    listing = list_source(str(image_folder / "**" / "*.jpg"))
    assert len(listing.items) == 8 and all(it.url.endswith(".jpg") for it in listing.items)
    assert listing.items[0].key == "chelsea__img_0"


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet", "json"])
def test_manifest_keeps_labels_and_metadata(image_folder, fmt):
    rows = [{"path": f"photos/chelsea/img_{i}.jpg", "label": "cat" if i % 2 else "dog", "caption": f"c{i}"}
            for i in range(4)]
    man = image_folder.parent / f"manifest.{fmt}"
    if fmt == "csv":
        man.write_text("path,label,caption\n" + "".join(f"{r['path']},{r['label']},{r['caption']}\n" for r in rows))
    elif fmt == "jsonl":
        man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        man.write_text(json.dumps(rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), man)
    listing = list_source(str(man))
    assert listing.kind == "manifest" and listing.classes == ["cat", "dog"]
    assert [it.label_name for it in listing.items] == ["dog", "cat", "dog", "cat"]
    assert json.loads(listing.items[1].meta) == {"caption": "c1"}
    data = read_items(listing.items)
    assert all(isinstance(d, bytes) and d[:2] == b"\xff\xd8" for d in data)


def test_manifest_without_path_column(tmp_path):
    man = tmp_path / "m.csv"
    man.write_text("a,b\n1,2\n")
    with pytest.raises(SourceError, match="path column"):
        list_source(str(man))


def test_missing_source(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        list_source(str(tmp_path / "nope"))


def test_webdataset_tar_source(image_folder, tmp_path):
    tar_path = tmp_path / "in-000.tar"
    with tarfile.open(tar_path, "w") as tf:
        for i, p in enumerate(sorted((image_folder / "coffee").glob("*.jpg"))):
            for name, data in ((f"s{i}.jpg", p.read_bytes()), (f"s{i}.cls", str(i).encode())):
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    listing = list_source(str(tar_path))
    assert listing.kind == "webdataset" and len(listing.items) == 4
    assert [it.label for it in listing.items] == [0, 1, 2, 3]
    data = read_items(listing.items)
    assert data[0] == sorted((image_folder / "coffee").glob("*.jpg"))[0].read_bytes()


def test_parquet_bytes_source(image_folder, tmp_path):
    files = sorted((image_folder / "chelsea").glob("*.jpg"))
    table = pa.table({"image": [p.read_bytes() for p in files], "label": list(range(len(files)))})
    path = tmp_path / "imgs.parquet"
    pq.write_table(table, path, row_group_size=2)
    listing = list_source(str(path))
    assert listing.kind == "parquet-bytes" and [it.row for it in listing.items] == [0, 1, 2, 3]
    assert read_items(listing.items) == [p.read_bytes() for p in files]


def test_memory_filesystem(image_folder):
    import fsspec

    fs = fsspec.filesystem("memory")
    for p in sorted(image_folder.rglob("*.jpg")):
        fs.pipe(f"/mem_src/{p.parent.name}/{p.name}", p.read_bytes())
    listing = list_source("memory://mem_src")
    assert listing.kind == "imagefolder" and len(listing.items) == 8
    assert all(isinstance(d, bytes) for d in read_items(listing.items))
