"""Parquet shards: one row per image (bytes + size/source/label columns), bounded row groups.

The ``image`` column has the Hugging Face `datasets` Image layout, ``struct<bytes: binary, path: string>``
(``path`` is ``{key}.{ext}``), and the schema carries the ``huggingface`` metadata naming the features,
so ``datasets.load_dataset("parquet", ...)`` yields PIL images without a cast. With ``--encode npy``
the same struct is declared as plain ``{bytes, path}`` values (PIL cannot open ``.npy``). When the
listing names its classes (an ImageFolder tree, text labels in a manifest), the ``label`` column is
declared as a ``ClassLabel`` with those names, so ``datasets`` shows class names
(``ds.features["label"].int2str``); numeric labels stay a plain ``int64`` value.
Readers get the bytes with `resize_pipeline.sources.image_column`.

The image bytes are stored uncompressed and without statistics (they are already compressed); the
other columns use zstd. Writer settings and metadata are fixed so reruns give identical files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from resize_pipeline.jsontext import display
from resize_pipeline.sinks.base import FormatWriter, HashingFile, Sample

COLUMNS = (
    "key", "image", "format", "width", "height", "orig_width", "orig_height", "source", "label", "label_name", "meta"
)
#: formats that `datasets.Image` (PIL) decodes; other payloads (npy) are declared as plain bytes
PIL_FORMATS = ("jpg", "png", "webp")

_VALUES = {
    "key": "string", "format": "string", "width": "int32", "height": "int32", "orig_width": "int32",
    "orig_height": "int32", "source": "string", "label": "int64", "label_name": "string", "meta": "string",
}


def hf_features(image_format: str = "jpg", classes: Sequence[str] | None = None) -> dict:
    """The `datasets` features of our columns (``Features.to_dict()`` form), in column order; `classes`
    (the listing's class names) make ``label`` a ``ClassLabel``."""
    if image_format in PIL_FORMATS:
        image: dict = {"_type": "Image"}
    else:
        image = {"bytes": {"dtype": "binary", "_type": "Value"}, "path": {"dtype": "string", "_type": "Value"}}
    out = {c: image if c == "image" else {"dtype": _VALUES[c], "_type": "Value"} for c in COLUMNS}
    if classes:
        out["label"] = {"names": list(classes), "_type": "ClassLabel"}
    return out


def schema(image_format: str = "jpg", classes: Sequence[str] | None = None):
    import pyarrow as pa

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = [
        ("key", pa.string()),
        ("image", image),
        ("format", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("orig_width", pa.int32()),
        ("orig_height", pa.int32()),
        ("source", pa.string()),
        ("label", pa.int64()),
        ("label_name", pa.string()),
        ("meta", pa.string()),
    ]
    hf = json.dumps({"info": {"features": hf_features(image_format, classes)}}, separators=(",", ":"))
    return pa.schema(fields, metadata={"huggingface": hf})


class ParquetWriter(FormatWriter):
    ext = "parquet"

    def __init__(self, fileobj: HashingFile, row_group_size: int = 512,
                 classes: Sequence[str] | None = None, **options) -> None:
        super().__init__(fileobj)
        self.fileobj = fileobj
        self.classes = tuple(classes) if classes else None
        self.writer: Any = None  # opened with the first rows: the schema's metadata depends on their format
        self.row_group_size = row_group_size
        self.rows: list[Sample] = []

    def _open(self, image_format: str) -> None:
        import pyarrow.parquet as pq

        self.schema = schema(image_format, self.classes)
        compression = {c: "zstd" for c in COLUMNS if c != "image"}
        compression.update({"image.bytes": "none", "image.path": "zstd"})
        self.writer = pq.ParquetWriter(
            self.fileobj,
            self.schema,
            compression=compression,
            use_dictionary=["format", "label_name"],
            write_statistics=[c for c in COLUMNS if c not in ("image", "meta")],
        )

    def _flush(self) -> None:
        import pyarrow as pa

        if not self.rows:
            return
        r = self.rows
        if self.writer is None:
            self._open(r[0].ext)
        table = pa.table(
            {
                "key": [s.key for s in r],
                "image": [{"bytes": s.payload, "path": f"{s.key}.{s.ext}"} for s in r],
                "format": [s.ext for s in r],
                "width": [s.width for s in r],
                "height": [s.height for s in r],
                "orig_width": [s.orig_width for s in r],
                "orig_height": [s.orig_height for s in r],
                "source": [display(s.source) for s in r],  # UTF-8 column: undecodable bytes as \xNN
                "label": [s.label if s.label >= 0 else None for s in r],
                "label_name": [display(s.label_name) or None for s in r],
                "meta": [s.meta or None for s in r],
            },
            schema=self.schema,
        )
        self.writer.write_table(table, row_group_size=self.row_group_size)
        self.rows = []

    def write(self, sample: Sample) -> None:
        self.rows.append(sample)
        if len(self.rows) >= self.row_group_size:
            self._flush()

    def close(self) -> None:
        self._flush()
        if self.writer is None:  # no rows at all: an empty file with the default schema
            self._open("jpg")
        self.writer.close()
