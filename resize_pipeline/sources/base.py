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
    """

    key: str
    url: str
    label: int = -1
    label_name: str = ""
    meta: str = ""
    offset: int = -1
    length: int = -1
    row: int = -1
