"""Which Parquet column holds the image bytes, and how to get bytes out of it.

Two layouts are understood:
- a plain ``binary``/``large_binary`` column (``image``, ``jpg``, ``bytes``, ...);
- the Hugging Face `datasets` Image layout, a ``struct<bytes: binary, path: string>`` column: what our
  own Parquet shards hold (so our output can be the input of another conversion) and what
  ``datasets`` writes for an ``Image()`` feature.

Used by the source listing, the source reader, the readers and ``inspect``: one place decides.
"""

from __future__ import annotations

from typing import Any

#: column names tried first, in order (case-insensitive), among the columns that can hold images
BYTES_COLUMNS = ("image", "jpg", "jpeg", "png", "webp", "bytes", "image_bytes", "data")


def _is_binary(t) -> bool:
    import pyarrow as pa

    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def is_image_type(t) -> bool:
    """True for a binary column, or a struct with a binary ``bytes`` field (the `datasets` Image layout)."""
    import pyarrow as pa

    if _is_binary(t):
        return True
    if pa.types.is_struct(t):
        idx = t.get_field_index("bytes")
        return idx >= 0 and _is_binary(t.field(idx).type)
    return False


def image_columns(schema) -> list[str]:
    """Names of the columns of a `pyarrow.Schema` that can hold image bytes, in schema order."""
    return [f.name for f in schema if is_image_type(f.type)]


def find_image_column(schema) -> str | None:
    """The column holding the image bytes: the first of `BYTES_COLUMNS` present, else the first candidate."""
    names = image_columns(schema)
    lower = {n.lower(): n for n in names}
    for c in BYTES_COLUMNS:
        if c in lower:
            return lower[c]
    return names[0] if names else None


def column_bytes(column) -> list[bytes | None]:
    """A pyarrow (chunked) array of either layout -> one ``bytes`` (or None) per row."""
    import pyarrow as pa

    if pa.types.is_struct(column.type):  # flatten() keeps the struct's own nulls (field() would not)
        column = column.flatten()[column.type.get_field_index("bytes")]
    return column.to_pylist()


def value_bytes(value: Any) -> bytes | None:
    """One cell as Python gives it (``bytes`` or ``{"bytes": ..., "path": ...}``) -> its bytes."""
    if isinstance(value, dict):
        value = value.get("bytes")
    return bytes(value) if value is not None else None
