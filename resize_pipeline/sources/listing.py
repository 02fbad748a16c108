"""Turn a SOURCE argument into a deterministic list of `SourceItem`s.

SOURCE may be (any fsspec URL: local path, ``file://``, ``memory://``, ``s3://``, ``gs://``):
- a directory: every image file below it (ImageFolder labels when all images sit in sub-folders);
- a glob (``data/**/*.jpg``);
- a manifest file: ``.csv``, ``.tsv``, ``.jsonl``/``.ndjson``, ``.json`` (list of objects) or
  ``.parquet`` with a path column (relative paths resolve against the manifest's folder) and
  optional label/metadata columns;
- WebDataset ``.tar`` shards (a single tar, or a directory/glob of them): one item per sample
  holding an image member, read back by byte range;
- a Parquet file of image bytes (a binary column such as ``image``/``jpg``/``bytes``, or the Hugging Face
  ``datasets`` Image struct ``{bytes, path}`` that our own Parquet shards use; see `image_column`).
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from resize_pipeline.errors import SourceError
from resize_pipeline.sources.base import IMAGE_EXTENSIONS, SourceItem
from resize_pipeline.sources.image_column import find_image_column
from resize_pipeline.sources.keys import unique_keys
from resize_pipeline.urls import is_local_fs

log = logging.getLogger(__name__)

MANIFEST_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".ndjson", ".json")
PATH_COLUMNS = ("path", "filepath", "file_path", "file", "filename", "image_path", "url", "uri")
LABEL_COLUMNS = ("label", "cls", "class", "target")


@dataclass(slots=True)
class Listing:
    """The inputs of a job, in order, with what was learnt while listing."""

    items: list[SourceItem]
    kind: str
    classes: list[str] = field(default_factory=list)
    skipped: int = 0  # files that are not images (wrong extension), never counted as inputs


def _has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def _ext(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def _unstrip(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return fs.unstrip_protocol(path)


def _build_items(
    rels: list[str],
    urls: list[str],
    labels: list[int] | None = None,
    names: list[str] | None = None,
    metas: list[str] | None = None,
    **extra: list[int],
) -> list[SourceItem]:
    keys = unique_keys(rels)
    items = []
    for i, (key, url) in enumerate(zip(keys, urls, strict=True)):
        kw: dict[str, Any] = {k: v[i] for k, v in extra.items()}
        items.append(
            SourceItem(
                key=key,
                url=url,
                label=labels[i] if labels else -1,
                label_name=names[i] if names else "",
                meta=metas[i] if metas else "",
                **kw,
            )
        )
    return items


def list_source(
    source: str,
    *,
    storage_options: dict[str, Any] | None = None,
    path_column: str | None = None,
    label_column: str | None = None,
) -> Listing:
    """List SOURCE; raises `SourceError` with a one-line reason when it cannot be read at all."""
    try:
        fs, root = url_to_fs(source, **(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise SourceError(f"cannot open {source}: {exc}") from None
    try:
        if _has_magic(root):
            return _list_glob(fs, root)
        if not fs.exists(root):
            raise SourceError(f"source not found: {source}")
        if fs.isdir(root):
            return _list_dir(fs, root)
        ext = _ext(root)
        if ext in MANIFEST_EXTENSIONS:
            return _list_manifest(fs, root, path_column, label_column)
        if ext == ".parquet":
            return _list_parquet(fs, root, path_column, label_column)
        if ext == ".tar":
            return _list_tars(fs, [root], posixpath.dirname(root))
        if ext in IMAGE_EXTENSIONS:
            return Listing(_build_items([posixpath.basename(root)], [_unstrip(fs, root)]), "file")
        raise SourceError(f"don't know how to read {source}: not a folder, glob, manifest, tar or image")
    except SourceError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise SourceError(f"cannot list {source}: {type(exc).__name__}: {exc}") from None


def _split_images(fs, paths: list[str]) -> tuple[list[str], int]:
    images, skipped = [], 0
    for p in sorted(paths):
        base = posixpath.basename(p)
        if base.startswith("."):
            continue
        if _ext(p) in IMAGE_EXTENSIONS:
            images.append(p)
        else:
            skipped += 1
    return images, skipped


def _find_files(fs, root: str) -> list[str]:
    """Every file below `root`. Locally via `walk` (one folder's details in memory at a time):
    `fs.find` keeps an info dict per file until it returns, ~0.7 KB per input at the listing's peak.
    Object stores keep `find` (one flat paged listing instead of a request per prefix)."""
    if not is_local_fs(fs):
        return fs.find(root)
    return [posixpath.join(d, n) for d, _, names in fs.walk(root) for n in names]


def _list_dir(fs, root: str) -> Listing:
    root = root.rstrip("/")
    files = _find_files(fs, root)
    tars = sorted(p for p in files if _ext(p) == ".tar")
    images, skipped = _split_images(fs, files)
    if tars and not images:
        return _list_tars(fs, tars, root)
    rels = [posixpath.relpath(p, root) for p in images]
    # ImageFolder: the first sub-folder is the class, when every image lies in one.
    if rels and all("/" in r for r in rels):
        names = [r.split("/", 1)[0] for r in rels]
        classes = sorted(set(names))
        index = {c: i for i, c in enumerate(classes)}
        labels = [index[n] for n in names]
        items = _build_items(rels, [_unstrip(fs, p) for p in images], labels, names)
        return Listing(items, "imagefolder", classes, skipped - len(tars))
    return Listing(_build_items(rels, [_unstrip(fs, p) for p in images]), "directory", [], skipped)


def _glob_base(pattern: str) -> str:
    parts = pattern.split("/")
    base = []
    for p in parts:
        if _has_magic(p):
            break
        base.append(p)
    return "/".join(base)


def _list_glob(fs, pattern: str) -> Listing:
    matches = [p for p in fs.glob(pattern) if not fs.isdir(p)]
    base = _glob_base(pattern).rstrip("/")
    if matches and all(_ext(p) == ".tar" for p in matches):
        return _list_tars(fs, sorted(matches), base)
    images, skipped = _split_images(fs, matches)
    rels = [posixpath.relpath(p, base) if base else p for p in images]
    return Listing(_build_items(rels, [_unstrip(fs, p) for p in images]), "glob", [], skipped)


def _read_table(fs, path: str):
    """Read a CSV/TSV/JSONL/JSON/Parquet manifest as a pyarrow Table."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    ext = _ext(path)
    with fs.open(path, "rb") as fh:
        raw = fh.read()
    if ext == ".parquet":
        return pq.read_table(io.BytesIO(raw))
    if ext in (".csv", ".tsv"):
        opts = pcsv.ParseOptions(delimiter="\t" if ext == ".tsv" else ",")
        conv = pcsv.ConvertOptions(strings_can_be_null=False)
        return pcsv.read_csv(io.BytesIO(raw), parse_options=opts, convert_options=conv)
    if ext in (".jsonl", ".ndjson"):
        return pjson.read_json(io.BytesIO(raw))
    rows = json.loads(raw)
    if not isinstance(rows, list):
        raise SourceError(f"{path}: a .json manifest must hold a list of objects")
    return pa.Table.from_pylist(rows)


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path: str):
    if wanted:
        if wanted not in columns:
            raise SourceError(f"{path}: no {what} column {wanted!r} (columns: {', '.join(columns)})")
        return wanted
    lower = {c.lower(): c for c in columns}
    for c in candidates:
        if c in lower:
            return lower[c]
    return None


def _labels(values: list[Any]) -> tuple[list[int], list[str], list[str]]:
    """Label column -> (indices, names, classes). Ints are kept; strings are indexed in sorted order."""
    if all(isinstance(v, int) and not isinstance(v, bool) or v is None for v in values):
        return [-1 if v is None else int(v) for v in values], ["" if v is None else str(v) for v in values], []
    names = ["" if v is None else str(v) for v in values]
    classes = sorted({n for n in names if n})
    index = {c: i for i, c in enumerate(classes)}
    return [index.get(n, -1) for n in names], names, classes


def _meta_rows(table, skip: set[str]) -> list[str] | None:
    cols = [c for c in table.column_names if c not in skip]
    if not cols:
        return None
    data = table.select(cols).to_pylist()
    return [json.dumps(row, sort_keys=True, default=str, ensure_ascii=False) for row in data]


def _list_manifest(fs, path: str, path_column: str | None, label_column: str | None) -> Listing:
    table = _read_table(fs, path)
    cols = table.column_names
    pcol = _pick(cols, path_column, PATH_COLUMNS, "path", path)
    if pcol is None:
        raise SourceError(f"{path}: no path column; name one with --path-column (columns: {', '.join(cols)})")
    lcol = _pick(cols, label_column, LABEL_COLUMNS, "label", path)
    base = posixpath.dirname(path)
    paths = table.column(pcol).to_pylist()
    urls, rels = [], []
    for p in paths:
        p = "" if p is None else str(p)
        if "://" in p:
            urls.append(p)
            rels.append(p.split("://", 1)[1])
        elif p.startswith("/"):
            urls.append(_unstrip(fs, p))
            rels.append(p)
        else:
            urls.append(_unstrip(fs, posixpath.normpath(posixpath.join(base, p))))
            rels.append(p)
    labels = names = None
    classes: list[str] = []
    if lcol is not None:
        labels, names, classes = _labels(table.column(lcol).to_pylist())
    metas = _meta_rows(table, {pcol} | ({lcol} if lcol else set()))
    # the manifest's order is the user's order: keep it (it is deterministic already)
    return Listing(_build_items(rels, urls, labels, names, metas), "manifest", classes)


def _list_parquet(fs, path: str, path_column: str | None, label_column: str | None) -> Listing:
    """A Parquet file is either a manifest (a path column) or holds image bytes (see `image_column`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as fh:
        schema = pq.read_schema(fh)
    bcol = find_image_column(schema)
    if bcol is None or path_column:
        return _list_manifest(fs, path, path_column, label_column)
    with fs.open(path, "rb") as fh:
        names = [n for n in schema.names if n != bcol]
        table = pq.read_table(fh, columns=names) if names else pa.table({})
    n_rows = table.num_rows if names else pq.ParquetFile(fs.open(path, "rb")).metadata.num_rows
    cols = table.column_names
    kcol = "key" if "key" in cols else None
    pcol = _pick(cols, None, PATH_COLUMNS + ("source",), "path", path)
    lcol = _pick(cols, label_column, LABEL_COLUMNS, "label", path)
    stem = posixpath.splitext(posixpath.basename(path))[0]
    if kcol:
        rels = [str(k) for k in table.column(kcol).to_pylist()]
    elif pcol:
        rels = [str(p) for p in table.column(pcol).to_pylist()]
    else:
        rels = [f"{stem}/{i:09d}" for i in range(n_rows)]
    labels = label_names = None
    classes: list[str] = []
    if lcol:
        labels, label_names, classes = _labels(table.column(lcol).to_pylist())
        if "label_name" in cols:
            label_names = [str(v or "") for v in table.column("label_name").to_pylist()]
    metas = None
    if "meta" in cols:
        metas = [str(v or "") for v in table.column("meta").to_pylist()]
    url = _unstrip(fs, path)
    items = _build_items(rels, [url] * n_rows, labels, label_names, metas, row=list(range(n_rows)))
    return Listing(items, "parquet-bytes", classes)


def _list_tars(fs, tars: list[str], base: str) -> Listing:
    """WebDataset shards: one item per sample key that has an image member (read by byte range)."""
    import tarfile

    rels, urls, offsets, lengths, labels, names, metas = [], [], [], [], [], [], []
    for tar_path in tars:
        url = _unstrip(fs, tar_path)
        with fs.open(tar_path, "rb") as fh, tarfile.open(fileobj=fh, mode="r:") as tf:
            samples: dict[str, dict[str, tarfile.TarInfo]] = {}
            order: list[str] = []
            for m in tf:
                if not m.isfile():
                    continue
                d, b = posixpath.split(m.name)
                if "." not in b:
                    continue
                stem, ext = b.split(".", 1)
                k = posixpath.join(d, stem)
                if k not in samples:
                    samples[k] = {}
                    order.append(k)
                samples[k][ext.lower()] = m
            for k in order:
                parts = samples[k]
                img = next((parts[e] for e in parts if "." + e.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS), None)
                if img is None:
                    continue
                label, name, meta = -1, "", ""
                if "cls" in parts:
                    fh.seek(parts["cls"].offset_data)
                    try:
                        label = int(fh.read(parts["cls"].size).decode().strip())
                    except ValueError:
                        label = -1
                if "json" in parts:
                    fh.seek(parts["json"].offset_data)
                    meta = fh.read(parts["json"].size).decode("utf-8", "replace")
                    try:
                        name = str(json.loads(meta).get("label_name", "") or "")
                    except (ValueError, AttributeError):
                        pass
                rel_tar = posixpath.relpath(tar_path, base) if base else tar_path
                rels.append(posixpath.join(posixpath.splitext(rel_tar)[0], k))
                urls.append(url)
                offsets.append(img.offset_data)
                lengths.append(img.size)
                labels.append(label)
                names.append(name)
                metas.append(meta)
    items = _build_items(rels, urls, labels, names, metas, offset=offsets, length=lengths)
    return Listing(items, "webdataset", [])
