"""Parquet shards: one row per image (bytes + size/source/label columns), bounded row groups.

The image column is stored uncompressed and without statistics (its bytes are already compressed);
the other columns use zstd. Writer settings are fixed so reruns give identical files.
"""

from __future__ import annotations

from resize_pipeline.jsontext import display
from resize_pipeline.sinks.base import FormatWriter, HashingFile, Sample

COLUMNS = (
    "key", "image", "format", "width", "height", "orig_width", "orig_height", "source", "label", "label_name", "meta"
)


def schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("key", pa.string()),
            ("image", pa.binary()),
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
    )


class ParquetWriter(FormatWriter):
    ext = "parquet"

    def __init__(self, fileobj: HashingFile, row_group_size: int = 512, **options) -> None:
        import pyarrow.parquet as pq

        super().__init__(fileobj)
        self.schema = schema()
        compression = {c: "zstd" for c in COLUMNS}
        compression["image"] = "none"
        self.writer = pq.ParquetWriter(
            fileobj,
            self.schema,
            compression=compression,
            use_dictionary=["format", "label_name"],
            write_statistics=[c for c in COLUMNS if c not in ("image", "meta")],
        )
        self.row_group_size = row_group_size
        self.rows: list[Sample] = []

    def _flush(self) -> None:
        import pyarrow as pa

        if not self.rows:
            return
        r = self.rows
        table = pa.table(
            {
                "key": [s.key for s in r],
                "image": [s.payload for s in r],
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
        self.writer.close()
