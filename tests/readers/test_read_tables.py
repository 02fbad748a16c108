"""Our Parquet layout (the `datasets` Image struct + metadata) through pyarrow, Hugging Face, Ray Data,
and as the input of another conversion."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from resize_pipeline.errors import OutputError
from resize_pipeline.readers import arrow_table, image_bytes, shard_urls
from resize_pipeline.sinks.parquet import hf_features

from .conftest import SIZE


def test_parquet_layout_and_metadata(image_folder, make_output):
    dest = make_output(image_folder, format="both", samples_per_shard=4)
    schema = pq.read_schema(dest / "shard-00000.parquet")
    assert str(schema.field("image").type) == "struct<bytes: binary, path: string>"
    meta = json.loads(schema.metadata[b"huggingface"])
    classes = json.loads((dest / "_manifest.json").read_text())["classes"]
    assert meta["info"]["features"] == hf_features("jpg", classes)
    assert meta["info"]["features"]["label"] == {"names": classes, "_type": "ClassLabel"}
    assert meta["info"]["features"]["image"] == {"_type": "Image"}
    assert list(meta["info"]["features"]) == schema.names
    rows = pq.read_table(dest / "shard-00000.parquet").to_pylist()
    assert rows[0]["image"]["path"] == rows[0]["key"] + ".jpg"
    tar = {m: d for m, d in _tar_members(dest / "shard-00000.tar")}
    assert all(tar[r["key"] + ".jpg"] == r["image"]["bytes"] for r in rows)  # the same bytes as the tar


def _tar_members(path):
    import tarfile

    with tarfile.open(path) as tf:
        for m in tf:
            yield m.name, tf.extractfile(m).read()


def test_npy_output_declares_plain_bytes(image_folder, make_output):
    dest = make_output(image_folder, format="parquet", encode="npy")
    features = json.loads(pq.read_schema(dest / "shard-00000.parquet").metadata[b"huggingface"])["info"]["features"]
    assert features["image"] == {"bytes": {"dtype": "binary", "_type": "Value"}, "path": {"dtype": "string", "_type": "Value"}}


def test_reruns_are_byte_identical(image_folder, make_output):
    a = make_output(image_folder, "a", format="parquet", samples_per_shard=4, row_group_size=3)
    b = make_output(image_folder, "b", format="parquet", samples_per_shard=4, row_group_size=3)
    for name in ("shard-00000.parquet", "shard-00002.parquet"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_arrow_table_and_image_bytes(layout_output):
    name, dest = layout_output
    if "parquet" not in name and "both" not in name:
        with pytest.raises(OutputError, match="no Parquet shards"):
            arrow_table(str(dest))
        return
    table = arrow_table(str(dest))
    assert table.num_rows == 10 and set(table.column("width").to_pylist()) == {SIZE[0]}
    images = image_bytes(table)
    assert all(Image.open(io.BytesIO(b)).size == SIZE for b in images)
    assert arrow_table(str(dest), columns=["key", "label"]).column_names == ["key", "label"]


def test_our_parquet_output_is_a_conversion_source(image_folder, make_output):
    """Listing + reading through the shared image-column helper, on the struct layout."""
    first = make_output(image_folder, "first", format="parquet", samples_per_shard=100, size=(64, 48))
    again = make_output(first / "shard-00000.parquet", "again", format="parquet", size=(32, 24))
    a, b = arrow_table(str(first)), arrow_table(str(again))
    assert b.num_rows == a.num_rows == 10
    assert b.column("label").to_pylist() == a.column("label").to_pylist()
    assert b.column("label_name").to_pylist() == a.column("label_name").to_pylist()
    assert {(r["width"], r["height"], r["orig_width"], r["orig_height"]) for r in b.select(
        ["width", "height", "orig_width", "orig_height"]).to_pylist()} == {(32, 24, 64, 48)}
    errors = (again / "_errors.jsonl").read_text()
    assert errors == ""


def test_plain_binary_and_struct_sources_agree(tmp_path, image_folder, make_output):
    """A third-party Parquet with a plain binary column, and the `datasets` struct: same images out."""
    import pyarrow as pa

    files = sorted(image_folder.rglob("*.jpg"))
    data = [p.read_bytes() for p in files]
    pq.write_table(pa.table({"jpg": data, "label": [0] * len(data)}), tmp_path / "plain.parquet")
    struct = pa.array([{"bytes": d, "path": p.name} for d, p in zip(data, files, strict=True)],
                      pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"img": struct, "label": [0] * len(data)}), tmp_path / "hf.parquet")
    a = make_output(tmp_path / "plain.parquet", "a", format="parquet")
    b = make_output(tmp_path / "hf.parquet", "b", format="parquet")
    assert image_bytes(arrow_table(str(a))) == image_bytes(arrow_table(str(b)))
    assert json.loads((b / "_manifest.json").read_text())["counts"]["written"] == len(data)


def test_hugging_face_datasets_gives_pil_images(layout_output, tmp_path):
    datasets = pytest.importorskip("datasets")
    from resize_pipeline.readers import hf_dataset

    name, dest = layout_output
    if "webdataset" in name:
        return
    files = [u for u in shard_urls(str(dest), "parquet")]
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert isinstance(ds.features["image"], datasets.Image)  # no cast: the schema says so
    row = ds[0]
    assert isinstance(row["image"], Image.Image) and row["image"].size == SIZE
    assert np.asarray(row["image"]).std() > 1
    assert sorted(ds["label"]) == [0] * 5 + [1] * 5
    classes = json.loads((dest / "_manifest.json").read_text())["classes"]
    assert isinstance(ds.features["label"], datasets.ClassLabel) and ds.features["label"].names == classes
    assert [ds.features["label"].int2str(v) for v in ds["label"]] == ds["label_name"]  # class names shown
    same = hf_dataset(str(dest), cache_dir=str(tmp_path / "hf2"))
    assert same.num_rows == 10 and same[3]["key"] == ds[3]["key"]


@pytest.mark.ray
def test_numeric_labels_stay_plain_values(tmp_path, make_output):
    """A manifest with numeric labels names no classes: ``label`` stays an int64 value (no ClassLabel
    invented), as for an unlabelled folder."""
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(src / f"{i}.png")
        rows.append(json.dumps({"path": f"{i}.png", "label": i}))
    (src / "m.jsonl").write_text("\n".join(rows) + "\n")
    dest = make_output(src / "m.jsonl", "numeric", format="parquet")
    features = json.loads(pq.read_schema(dest / "shard-00000.parquet").metadata[b"huggingface"])["info"]["features"]
    assert features["label"] == {"dtype": "int64", "_type": "Value"}


@pytest.mark.ray
def test_ray_data_reads_both_formats(image_folder, make_output):
    ray = pytest.importorskip("ray")
    from resize_pipeline.readers import ray_dataset

    dest = make_output(image_folder, format="both", samples_per_shard=4)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        rows = ray_dataset(str(dest), "parquet").take_all()
        samples = ray_dataset(str(dest), "webdataset").take_all()
        plain = ray.data.read_webdataset(str(dest), file_extensions=["tar"]).take_all()
        plain_pq = ray.data.read_parquet(str(dest)).take_all()
    finally:
        ray.shutdown()
    assert len(rows) == len(samples) == len(plain) == len(plain_pq) == 10
    assert sorted(r["key"] for r in rows) == sorted(s["__key__"] for s in samples)
    assert all(Image.open(io.BytesIO(r["image"]["bytes"])).size == SIZE for r in rows)
    assert all(s["jpg"].shape == (SIZE[1], SIZE[0], 3) for s in samples)  # Ray decodes the images
    assert sorted(s["cls"] for s in samples) == [0] * 5 + [1] * 5
