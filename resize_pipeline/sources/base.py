"""What a source yields: one `SourceItem` per input image, in a deterministic order."""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".ppm",
     ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".avif", ".heic"}
)


@dataclass(frozen=True, slots=True)
class SourceItem:
    """One input image.

    Attributes:
        key: stable, tar-safe sample key (unique within the listing).
        url: fsspec URL of the file that holds the bytes.
        label: class index, or -1 when unlabelled.
        label_name: class name ("" when unlabelled).
        meta: JSON text of extra metadata carried to the output ("" when none).
        offset, length: byte range inside `url` (a member of a tar); -1 = the whole file.
        row: row index inside a Parquet `url` holding image bytes; -1 = not Parquet.
        stamp: 32-bit summary of the input's size and modification time or ETag as the listing saw
            it (`stamps.py`); 0 = not known. What ``--update`` compares to tell a changed input.
    """

    key: str
    url: str
    label: int = -1
    label_name: str = ""
    meta: str = ""
    offset: int = -1
    length: int = -1
    row: int = -1
    stamp: int = 0


#: the columns of a listing row, in `SourceItem` order: the schema of listing parts, of the rows a
#: worker reads, and of the records of what DEST holds (Arrow types in `arrow_schema`)
ROW_COLUMNS: tuple[str, ...] = ("key", "url", "label", "label_name", "meta", "offset", "length", "row", "stamp")
#: the columns that identify an input (the same bytes come from the same url, byte range and row)
IDENTITY_COLUMNS: tuple[str, ...] = ("url", "offset", "length", "row")


def arrow_schema():
    """`ROW_COLUMNS` as an Arrow schema (texts as ``large_string``, numbers as ``int64``)."""
    import pyarrow as pa

    ints = {"label", "offset", "length", "row", "stamp"}
    return pa.schema([(c, pa.int64() if c in ints else pa.large_string()) for c in ROW_COLUMNS])
