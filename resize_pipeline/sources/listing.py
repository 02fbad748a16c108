"""SOURCE -> a streamed `Listing` of inputs: which kind of source it is, and its module.

SOURCE may be (any fsspec URL: local path, ``file://``, ``memory://``, ``s3://``, ``gs://``):

- a directory: every image file below it (ImageFolder labels when all images sit in sub-folders),
  `folder`; a directory of WebDataset tars, `tars`;
- a glob (``data/**/*.jpg``), `folder`;
- a manifest file: ``.csv``, ``.tsv``, ``.jsonl``/``.ndjson``, ``.json`` (list of objects) or
  ``.parquet`` with a path column, `manifest`;
- WebDataset ``.tar`` shards (a single tar, or a directory/glob of them): one item per sample
  holding an image member, read back by byte range, `tars`;
- a Parquet file of image bytes, `parquet_bytes`.

Each kind lives in its own module, imported only when SOURCE is of that kind. What cannot be listed
is accounted for, never dropped: a sub-folder that cannot be read, a tar that is not a tar, a
manifest row without a path each become an error row (stage ``list``) in `Listing.errors`. A
SOURCE that cannot be read at all raises `SourceError` (one line).

`open_source` does what is cheap and decides the kind (a manifest's columns and row count, a single
tar's samples); folders, globs and folders of tars are listed by `Listing.prepare`, in parallel
(threads here, Ray tasks on Ray). `list_source` does both.
"""

from __future__ import annotations

import posixpath
from typing import Any

from resize_pipeline.errors import SourceError
from resize_pipeline.sources.base import IMAGE_EXTENSIONS
from resize_pipeline.sources.common import LISTING_ERRORS, Listing, ext, has_magic, one_line, unstrip

MANIFEST_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".ndjson", ".json")


def open_source(
    source: str,
    *,
    storage_options: dict[str, Any] | None = None,
    path_column: str | None = None,
    label_column: str | None = None,
    io_timeout: float | None = None,
) -> Listing:
    """Open SOURCE (see the module docstring); raises `SourceError` when it cannot be read at all.

    On an object store, the first look at SOURCE is given `io_timeout` seconds (an endpoint that
    never answers is a one-line error, not a silent wait); the listing's own requests are bounded by
    the filesystem's per-request timeouts (`urls.store_options`)."""
    from fsspec.core import url_to_fs

    so = dict(storage_options or {})
    try:
        fs, root = url_to_fs(source, **so)
    except (ImportError, ValueError) as exc:
        raise SourceError(f"cannot open {source}: {exc}") from None
    try:
        listing = _open(fs, root, source, so, path_column, label_column, io_timeout)
    except SourceError:
        raise
    except LISTING_ERRORS as exc:
        raise one_line(source, exc) from None
    listing.source = source
    return listing


def _open(fs, root: str, source: str, so: dict[str, Any], path_column: str | None, label_column: str | None,
          io_timeout: float | None = None) -> Listing:
    from resize_pipeline.urls import is_remote_url

    if has_magic(root):
        from resize_pipeline.sources.folder import open_folder

        return open_folder(fs, root, source, so, glob=root)
    if is_remote_url(source):
        from resize_pipeline.waits import within

        found = within(io_timeout, lambda: fs.info(root).get("type") if fs.exists(root) else None,
                       f"looking at {source}")
    else:
        found = "directory" if fs.isdir(root) else "file" if fs.exists(root) else None
    if found is None:
        raise SourceError(f"source not found: {source}")
    if found == "directory":
        from resize_pipeline.sources.folder import open_folder

        return open_folder(fs, root, source, so)
    kind = ext(root)
    if kind in MANIFEST_EXTENSIONS:
        from resize_pipeline.sources.manifest import open_manifest

        return open_manifest(fs, root, path_column, label_column)
    if kind == ".parquet":
        import pyarrow.parquet as pq

        from resize_pipeline.sources.image_column import find_image_column

        with fs.open(root, "rb") as fh:
            bcol = find_image_column(pq.read_schema(fh))
        if bcol is None or path_column:
            from resize_pipeline.sources.manifest import open_manifest

            return open_manifest(fs, root, path_column, label_column)
        from resize_pipeline.sources.parquet_bytes import open_parquet_bytes

        return open_parquet_bytes(fs, root, bcol, label_column)
    if kind == ".tar":
        from resize_pipeline.sources.tars import prepare_tars

        listing = Listing("webdataset")
        prepare_tars(listing, fs, [root], posixpath.dirname(root), source, so)
        if listing.errors and not listing.bound:
            listing.close()
            raise SourceError(f"cannot read {source}: {listing.errors.first['error']}")  # type: ignore[index]
        return listing
    if kind in IMAGE_EXTENSIONS:
        from resize_pipeline.sources.common import raw_block
        from resize_pipeline.sources.stamps import stamp_info

        url, stamp = unstrip(fs, root), stamp_info(fs.info(root))
        return Listing("file", bound=1, blocks=lambda: iter([raw_block([posixpath.basename(root)], [url],
                                                                       stamp=[stamp])]))
    raise SourceError(f"don't know how to read {source}: not a folder, glob, manifest, tar or image")


def list_source(
    source: str,
    *,
    storage_options: dict[str, Any] | None = None,
    path_column: str | None = None,
    label_column: str | None = None,
    io_timeout: float | None = None,
) -> Listing:
    """`open_source`, then list it here (`Listing.prepare` with threads)."""
    listing = open_source(source, storage_options=storage_options, path_column=path_column,
                          label_column=label_column, io_timeout=io_timeout)
    try:
        listing.prepare()
    except SourceError:
        raise
    except LISTING_ERRORS as exc:
        raise one_line(source, exc) from None
    return listing
