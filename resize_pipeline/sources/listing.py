"""Turn a SOURCE argument into a deterministic, compact table of inputs (`table.ItemTable`).

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

What cannot be listed is accounted for, never dropped: a sub-folder that cannot be read, a tar that is
not a tar, a manifest row without a path each become an error row (stage ``list``) in
`Listing.errors`. A SOURCE that cannot be read at all raises `SourceError` (one line).

Listing is linear in the number of inputs, and keeps a few bytes per input (`ItemTable`); the sizes
and modification times the listing sees go into `ItemTable.stamps` (`stamps.py`) so that a resume
can refuse inputs that changed.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
from fsspec.core import url_to_fs

from resize_pipeline.errors import SourceError, error_record
from resize_pipeline.sources.base import IMAGE_EXTENSIONS
from resize_pipeline.sources.image_column import find_image_column
from resize_pipeline.sources.keys import sanitize_key
from resize_pipeline.sources.stamps import FolderStamps, stamp_info, stamp_stat
from resize_pipeline.sources.table import Explicit, Indexed, IntNames, ItemTable, Joined, ManifestPaths, Text
from resize_pipeline.urls import is_local_fs, is_remote_url

log = logging.getLogger(__name__)

MANIFEST_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".ndjson", ".json")
PATH_COLUMNS = ("path", "filepath", "file_path", "file", "filename", "image_path", "url", "uri")
LABEL_COLUMNS = ("label", "cls", "class", "target")
#: bytes of CSV text parsed at a time (column types are inferred from the first block)
CSV_BLOCK = 32 << 20
#: skipped tar members named in the manifest (the rest are counted by reason)
MAX_SKIPPED_SHOWN = 20
#: labels are 64-bit integers (the listing's columns, ``.cls`` members, Parquet's ``label`` column)
INT64 = (-(2**63), 2**63 - 1)


def _beyond_int64(value: int) -> str:
    text = str(value)
    return f"{text if len(text) <= 40 else text[:37] + '...'} is beyond the 64-bit integer range"


@dataclass(slots=True)
class Listing:
    """The inputs of a job, in order, with what was learnt while listing."""

    items: ItemTable
    kind: str
    classes: list[str] = field(default_factory=list)
    skipped: int = 0  # files that are not images (wrong extension), never counted as inputs
    #: what could not be listed (stage ``list``), one error record each; they count as failed inputs
    errors: list[dict[str, str]] = field(default_factory=list)
    #: tar members that are not regular files (symbolic and hard links, devices, FIFOs, sparse files):
    #: never read, counted by reason, the first `MAX_SKIPPED_SHOWN` named (``path``, ``member``, ``reason``)
    skipped_members: dict[str, int] = field(default_factory=dict)
    skipped_examples: list[dict[str, str]] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return self.items.digest


def _has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def _ext(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def _unstrip(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return fs.unstrip_protocol(path)


def _list_error(rel: str, url: str, exc: BaseException | str) -> dict[str, str]:
    return error_record(key=sanitize_key(rel), source=url, stage="list", exc=exc, error_type="SourceError")


def _table(rels: list[str], urls: list[str], *, stamps: list[int] | None = None, **columns: Any) -> ItemTable:
    """An `ItemTable` from Python lists (URLs kept as a prefix + path when they are, else as given)."""
    text = Text.of(rels)
    rule: Any
    if urls and len(set(urls[:1] + urls[-1:])) == 1 and urls.count(urls[0]) == len(urls):
        rule = Indexed(np.zeros(len(urls), dtype=np.int32), [urls[0]])
    else:
        prefix = urls[0][: len(urls[0]) - len(rels[0])] if urls and urls[0].endswith(rels[0]) else None
        if prefix is not None and all(u == prefix + r for u, r in zip(urls, rels, strict=True)):
            rule = Joined(prefix)
        else:
            rule = Explicit(Text.of(urls))
    ints: dict[str, Any] = {k: (np.asarray(v, dtype=np.int64) if v is not None else None)
                            for k, v in columns.items() if k in ("label", "offset", "length", "row")}
    texts: dict[str, Any] = {k: (Text.of(v) if v is not None else None) for k, v in columns.items()
                             if k in ("names", "meta")}
    st = np.asarray(stamps, dtype=np.int32) if stamps is not None else None
    return ItemTable(text, rule, classes=columns.get("classes"), stamps=st, **ints, **texts).finish()


def list_source(
    source: str,
    *,
    storage_options: dict[str, Any] | None = None,
    path_column: str | None = None,
    label_column: str | None = None,
    io_timeout: float | None = None,
) -> Listing:
    """List SOURCE; raises `SourceError` with a one-line reason when it cannot be read at all.

    On an object store, the first look at SOURCE is given `io_timeout` seconds (an endpoint that
    never answers is a one-line error, not a silent wait); the listing's own requests are bounded by
    the filesystem's per-request timeouts (`urls.store_options`)."""
    try:
        fs, root = url_to_fs(source, **(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise SourceError(f"cannot open {source}: {exc}") from None
    try:
        if _has_magic(root):
            return _list_glob(fs, root)
        if is_remote_url(source):
            from resize_pipeline.waits import within

            kind = within(io_timeout, lambda: fs.info(root).get("type") if fs.exists(root) else None,
                          f"looking at {source}")
        else:
            kind = "directory" if fs.isdir(root) else "file" if fs.exists(root) else None
        if kind is None:
            raise SourceError(f"source not found: {source}")
        if kind == "directory":
            return _list_dir(fs, root)
        ext = _ext(root)
        if ext in MANIFEST_EXTENSIONS:
            return _list_manifest(fs, root, path_column, label_column)
        if ext == ".parquet":
            return _list_parquet(fs, root, path_column, label_column)
        if ext == ".tar":
            listing = _list_tars(fs, [root], posixpath.dirname(root))
            if listing.errors and not len(listing.items):
                raise SourceError(f"cannot read {source}: {listing.errors[0]['error']}")
            return listing
        if ext in IMAGE_EXTENSIONS:
            url = _unstrip(fs, root)
            return Listing(_table([posixpath.basename(root)], [url], stamps=[stamp_info(fs.info(root))]), "file")
        raise SourceError(f"don't know how to read {source}: not a folder, glob, manifest, tar or image")
    except SourceError:
        raise
    except (OSError, ValueError, KeyError, TypeError, tarfile.TarError, UnicodeError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise SourceError(f"cannot list {source}: {type(exc).__name__}: {first}") from None


def _split_images(paths: list[str]) -> tuple[list[str], int]:
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


def _walk_local(root: str) -> tuple[dict[str, int], list[tuple[str, BaseException]]]:
    """Every file below `root` with its stamp, and the folders that could not be read.

    ``os.scandir`` gives each entry's details with the listing (one folder in memory at a time);
    symlinked folders are followed once (a link back up the tree is not walked again). A broken
    symlink is kept as a file: its read fails and is recorded."""
    files: dict[str, int] = {}
    errors: list[tuple[str, BaseException]] = []
    seen: set[tuple[int, int]] = set()
    try:
        st = os.stat(root)
        seen.add((st.st_dev, st.st_ino))
    except OSError:
        pass
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError as exc:
            if d == root:
                raise
            errors.append((d, exc))
            continue
        for e in entries:
            try:
                if e.is_dir():
                    st = e.stat()
                    if (st.st_dev, st.st_ino) not in seen:
                        seen.add((st.st_dev, st.st_ino))
                        stack.append(e.path)
                elif e.is_file():
                    files[e.path] = stamp_stat(e.stat())
                elif e.is_symlink():
                    files[e.path] = 0
            except OSError as exc:
                errors.append((e.path, exc))
    return files, errors


def _find(fs, root: str) -> tuple[dict[str, int], list[tuple[str, BaseException]]]:
    """Every file below `root` with its stamp. Locally `_walk_local`; object stores one flat paged
    ``find`` with details (no request per prefix, no stat per file)."""
    if is_local_fs(fs):
        return _walk_local(root)
    found = fs.find(root, detail=True)
    return {p: stamp_info(info) for p, info in found.items() if info.get("type") != "directory"}, []


def _rel(p: str, root: str) -> str:
    return posixpath.relpath(p, root) if root else p.lstrip("/")


def _list_dir(fs, root: str) -> Listing:
    root = root.rstrip("/") or "/"
    files, unreadable = _find(fs, root)
    errors = [_list_error(_rel(d, root), _unstrip(fs, d), f"cannot list this folder: {type(exc).__name__}: "
                          f"{getattr(exc, 'strerror', None) or exc}") for d, exc in sorted(unreadable)]
    tars = sorted(p for p in files if _ext(p) == ".tar")
    images, skipped = _split_images(list(files))
    if tars and not images:
        listing = _list_tars(fs, tars, root)
        listing.errors[:0] = errors
        return listing
    rels = [_rel(p, root) for p in images]
    urls = [_unstrip(fs, p) for p in images]
    stamps = [files[p] for p in images]
    del files
    # ImageFolder: the first sub-folder is the class, when every image lies in one.
    if rels and all("/" in r for r in rels):
        names = [r.split("/", 1)[0] for r in rels]
        classes = sorted(set(names))
        index = {c: i for i, c in enumerate(classes)}
        labels = [index[n] for n in names]
        del names
        items = _table(rels, urls, stamps=stamps, label=labels, classes=classes)
        return Listing(items, "imagefolder", classes, skipped - len(tars), errors)
    return Listing(_table(rels, urls, stamps=stamps), "directory", [], skipped, errors)


def _glob_base(pattern: str) -> str:
    parts = pattern.split("/")
    base = []
    for p in parts:
        if _has_magic(p):
            break
        base.append(p)
    return "/".join(base)


def _list_glob(fs, pattern: str) -> Listing:
    found = fs.glob(pattern, detail=True)  # details come with the listing: no isdir/stat per match
    files = {p: stamp_info(info) for p, info in found.items() if info.get("type") != "directory"}
    base = _glob_base(pattern).rstrip("/")
    if files and all(_ext(p) == ".tar" for p in files):
        return _list_tars(fs, sorted(files), base)
    images, skipped = _split_images(list(files))
    rels = [posixpath.relpath(p, base) if base else p for p in images]
    return Listing(_table(rels, [_unstrip(fs, p) for p in images], stamps=[files[p] for p in images]),
                   "glob", [], skipped)


# ------------------------------------------------------------------------------------ manifests
def _csv_header(fs, path: str, delimiter: str) -> list[str]:
    import csv
    import io

    with fs.open(path, "rb") as fh:
        first = fh.readline(1 << 20).decode("utf-8-sig", "replace")
    return next(csv.reader(io.StringIO(first), delimiter=delimiter), [])


def _read_table(fs, path: str, path_column: str | None = None) -> tuple[Any, dict[int, str]]:
    """Read a CSV/TSV/JSONL/JSON/Parquet manifest as a pyarrow Table (streamed from the file: the
    raw bytes are never held beside the table). CSV path columns are read as text, never numbers.

    Also returns the rows that cannot be taken as they are (row -> why): in a JSON manifest, a row
    holding an integer beyond 64 bits (its value is set to null in the table; the row becomes an
    error row)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    ext = _ext(path)
    if ext == ".parquet":
        with fs.open(path, "rb") as fh:
            return pq.read_table(fh), {}
    if ext in (".csv", ".tsv"):
        delimiter = "\t" if ext == ".tsv" else ","
        header = _csv_header(fs, path, delimiter)
        wanted = {path_column} if path_column else {c for c in header if c.lower() in PATH_COLUMNS}
        opts = pcsv.ParseOptions(delimiter=delimiter)
        conv = pcsv.ConvertOptions(strings_can_be_null=False, column_types={c: pa.string() for c in wanted})
        with fs.open(path, "rb") as fh:  # block by block: no copy of the whole text beside the table
            try:
                reader = pcsv.open_csv(fh, read_options=pcsv.ReadOptions(block_size=CSV_BLOCK),
                                       parse_options=opts, convert_options=conv)
                return pa.Table.from_batches(list(reader), schema=reader.schema), {}
            except pa.ArrowInvalid:  # a type that changes after the first block: infer over the whole file
                pass
        with fs.open(path, "rb") as fh:
            return pcsv.read_csv(fh, parse_options=opts, convert_options=conv), {}
    if ext in (".jsonl", ".ndjson"):
        with fs.open(path, "rb") as fh:
            return pjson.read_json(fh), {}
    with fs.open(path, "rb") as fh:
        rows = json.load(fh)
    if not isinstance(rows, list):
        raise SourceError(f"{path}: a .json manifest must hold a list of objects, not {type(rows).__name__}")
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise SourceError(f"{path}: a .json manifest must hold a list of objects; item {bad} is "
                          f"{type(rows[bad]).__name__}")
    problems = _huge_ints(rows)
    try:
        return pa.Table.from_pylist(rows), problems
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        kinds: dict[str, set[str]] = {}
        for r in rows:
            for k, v in r.items():
                if v is not None:
                    kinds.setdefault(str(k), set()).add(type(v).__name__)
        mixed = next((f"column {k!r} mixes {' and '.join(sorted(t))} values" for k, t in kinds.items()
                      if len(t) > 1), str(exc).splitlines()[0])
        raise SourceError(f"{path}: cannot read the manifest: {mixed}") from None


def _huge_ints(rows: list[dict]) -> dict[int, str]:
    """Rows of a JSON manifest holding an integer beyond 64 bits (Arrow has no column for it): the
    value is set to null and the row is reported (it becomes an error row, stage ``list``)."""
    lo, hi = INT64
    problems: dict[int, str] = {}
    for i, r in enumerate(rows):
        for k, v in r.items():
            if type(v) is int and not lo <= v <= hi:
                problems.setdefault(i, f"row {i} of the manifest: {str(k)[:60]!r} {_beyond_int64(v)}")
                r[k] = None
    return problems


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


def _label_columns(column) -> tuple[np.ndarray, list[str] | None, Any, list[str]]:
    """A label column -> (indices, classes whose names the indices give, or a names column, classes).

    Integer and text columns are handled column-wise (no Python object per row); anything else
    (floats, booleans) goes through `_labels` as before."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = column.type
    if pa.types.is_unsigned_integer(t):  # rows beyond int64 are error rows already (`_unsigned_labels`)
        column, t = column.cast(pa.int64()), pa.int64()
    if pa.types.is_integer(t):
        labels = column.fill_null(-1).to_numpy()
        fits = len(labels) == 0 or (int(labels.min()) >= -(2**31) and int(labels.max()) < 2**31)
        labels = labels.astype(np.int32 if fits else np.int64)
        valid = pc.is_valid(column).to_numpy(zero_copy_only=False) if column.null_count else None
        return labels, None, IntNames(valid), []
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        filled = column.fill_null("")
        classes = sorted(v for v in pc.unique(filled).to_pylist() if v)
        index = pc.index_in(filled, value_set=pa.array(classes, type=t))
        labels = index.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)
        return labels, classes, None, classes
    labels_l, names_l, classes_l = _labels(column.to_pylist())
    return np.asarray(labels_l, dtype=np.int64), None, Text.of(names_l), classes_l


def _unsigned_labels(column, name: str) -> dict[int, str]:
    """Rows of an unsigned 64-bit label column beyond the signed range (they would wrap around)."""
    import pyarrow as pa

    if not pa.types.is_uint64(column.type) or not len(column):
        return {}
    values = column.fill_null(0).to_numpy()
    return {int(i): f"row {i} of the manifest: {name[:60]!r} {_beyond_int64(int(values[i]))}"
            for i in np.flatnonzero(values > INT64[1])}


def _list_manifest(fs, path: str, path_column: str | None, label_column: str | None) -> Listing:
    import pyarrow as pa
    import pyarrow.compute as pc

    table, problems = _read_table(fs, path, path_column)
    cols = table.column_names
    pcol = _pick(cols, path_column, PATH_COLUMNS, "path", path)
    if pcol is None:
        raise SourceError(f"{path}: no path column; name one with --path-column (columns: {', '.join(cols)})")
    paths = table.column(pcol)
    if pa.types.is_dictionary(paths.type):
        paths = paths.cast(paths.type.value_type)
    if not (pa.types.is_string(paths.type) or pa.types.is_large_string(paths.type) or pa.types.is_null(paths.type)):
        raise SourceError(f"{path}: the path column {pcol!r} holds {paths.type} values, not text paths")
    lcol = _pick(cols, label_column, LABEL_COLUMNS, "label", path)
    if lcol is not None:
        problems.update(_unsigned_labels(table.column(lcol), lcol))
    # rows without a path (or with a value no column can hold) are accounted for (stage "list"), not
    # read as the manifest's folder
    valid = pc.and_kleene(pc.is_valid(paths), pc.not_equal(paths.cast(pa.string()), "")) if len(paths) else None
    errors: list[dict[str, str]] = []
    url = _unstrip(fs, path)
    if valid is not None and (problems or not pc.all(valid).as_py()):
        keep = valid.fill_null(False).to_numpy(zero_copy_only=False).copy()
        why = {int(i): f"row {i} of the manifest has no path" for i in np.flatnonzero(~keep)}
        why.update(problems)
        keep[list(problems)] = False
        errors = [_list_error(f"row {i}", url, why[i]) for i in sorted(why)]
        table = table.filter(pa.array(keep))
        paths = table.column(pcol)
    label = classes = names = None
    class_list: list[str] = []
    if lcol is not None:
        label, classes, names, class_list = _label_columns(table.column(lcol))
    extra = [c for c in cols if c not in (pcol, lcol)]
    meta = table.select(extra) if extra else None
    if pa.types.is_null(paths.type):
        paths = paths.cast(pa.string())
    items = ItemTable(Text.arrow(paths), ManifestPaths(fs, posixpath.dirname(path)),
                      label=label, classes=classes, names=names, meta=meta)
    del table, paths
    _release_arrow_memory()
    stamper = FolderStamps(fs, items.n, lambda a, b: items.url_rule.urls(items.text.get(a, b), a, b),
                           extra=(stamp_info(fs.info(path)),))
    # the manifest's order is the user's order: keep it (it is deterministic already)
    return Listing(items.finish(stamper), "manifest", class_list, 0, errors)


def _release_arrow_memory() -> None:
    """Give the memory Arrow's allocator kept from reading a large manifest back to the system."""
    import pyarrow as pa

    try:
        pa.default_memory_pool().release_unused()
    except (AttributeError, NotImplementedError):
        pass


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
    rows = list(range(n_rows))
    bad = _unsigned_labels(table.column(lcol), lcol) if lcol else {}
    if bad:  # a label no column of ours holds: that row is an error row
        keep = [i for i in rows if i not in bad]
        rels, rows = [rels[i] for i in keep], keep
        labels = [labels[i] for i in keep] if labels is not None else None
        label_names = [label_names[i] for i in keep] if label_names is not None else None
        metas = [metas[i] for i in keep] if metas is not None else None
    errors = [_list_error(f"{stem}/row {i}", url, why) for i, why in sorted(bad.items())]
    items = _table(rels, [url] * len(rows), stamps=[stamp_info(fs.info(path))] * len(rows), label=labels,
                   names=label_names, meta=metas, row=rows)
    return Listing(items, "parquet-bytes", classes, 0, errors)


# ----------------------------------------------------------------------------------------- tars
def _list_tars(fs, tars: list[str], base: str) -> Listing:
    """WebDataset shards: one item per sample key that has an image member (read by byte range).

    A tar that cannot be read (not a tar, truncated) is one error row (stage ``list``); the samples
    listed before the point where it broke are kept."""
    rels: list[str] = []
    urls: list[str] = []
    names: list[str] = []
    metas: list[str] = []
    offsets: list[int] = []
    lengths: list[int] = []
    labels: list[int] = []
    stamps: list[int] = []
    errors: list[dict[str, str]] = []
    tar_index: list[int] = []
    skipped: dict[str, int] = {}
    examples: list[dict[str, str]] = []
    for tar_path in tars:
        url = _unstrip(fs, tar_path)
        rel_tar = posixpath.relpath(tar_path, base) if base else tar_path
        try:
            stamp = stamp_info(fs.info(tar_path))
            scan = _tar_samples(fs, tar_path)
        except _BrokenTar as exc:
            scan, stamp = exc.scan, 0
            errors.append(_list_error(rel_tar, url, exc.reason))
        except (OSError, tarfile.TarError, EOFError) as exc:
            errors.append(_list_error(rel_tar, url, f"cannot read this tar: {type(exc).__name__}: {exc}"))
            continue
        stem = posixpath.splitext(rel_tar)[0]
        errors.extend(_list_error(posixpath.join(stem, k), url, why) for k, why in scan.bad)
        for member, reason in scan.skipped:
            kind = reason.split(" (", 1)[0]
            skipped[kind] = skipped.get(kind, 0) + 1
            if len(examples) < MAX_SKIPPED_SHOWN:
                examples.append({"path": url, "member": member, "reason": reason})
        j = len(urls)
        urls.append(url)
        for k, offset, length, label, name, meta in scan.samples:
            rels.append(posixpath.join(stem, k))
            tar_index.append(j)
            offsets.append(offset)
            lengths.append(length)
            labels.append(label)
            names.append(name)
            metas.append(meta)
            stamps.append(stamp)
    text = Text.of(rels)
    rule = Indexed(np.asarray(tar_index, dtype=np.int32), urls)
    items = ItemTable(text, rule, label=np.asarray(labels, dtype=np.int64), names=Text.of(names),
                      meta=Text.of(metas), offset=np.asarray(offsets, dtype=np.int64),
                      length=np.asarray(lengths, dtype=np.int64), stamps=np.asarray(stamps, dtype=np.int32))
    if skipped:
        log.warning("skipped %d tar member(s) that are not regular files (%s), e.g. %s in %s: their samples are "
                    "not converted (counted in the manifest)", sum(skipped.values()),
                    ", ".join(f"{n} {k}" for k, n in sorted(skipped.items())), examples[0]["member"],
                    examples[0]["path"])
    return Listing(items.finish(), "webdataset", [], 0, errors, skipped, examples)


@dataclass(slots=True)
class _TarScan:
    """What one tar holds: samples (key, offset, length, label, label name, metadata) with an image
    member; samples that cannot be taken (key, why: error rows); members never read (name, why)."""

    samples: list[tuple[str, int, int, int, str, str]] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


class _BrokenTar(Exception):
    def __init__(self, reason: str, scan: _TarScan) -> None:
        super().__init__(reason)
        self.reason, self.scan = reason, scan


def _not_regular(m: tarfile.TarInfo) -> str | None:
    """Why member `m` is not read as a file (a directory is no input: None), or None for a regular file."""
    if m.issym():
        return f"symbolic link (to {m.linkname[:200]})"
    if m.islnk():
        return f"hard link (to {m.linkname[:200]})"
    if m.ischr() or m.isblk():
        return "device"
    if m.isfifo():
        return "FIFO"
    if m.issparse():
        return "sparse file (its bytes are not stored in one piece)"
    if m.isfile() or m.isdir():
        return None
    return f"member of type {m.type!r}"


def _tar_samples(fs, tar_path: str) -> _TarScan:
    """Every sample of one tar with an image member (see `_TarScan`)."""
    scan = _TarScan()
    out = scan.samples
    with fs.open(tar_path, "rb") as fh:
        tf = tarfile.open(fileobj=fh, mode="r:")  # noqa: SIM115 - closed below, or by fh
        samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        order: list[str] = []
        broken = ""
        try:
            for m in tf:
                why = _not_regular(m)
                if why is not None:
                    scan.skipped.append((m.name, why))
                    continue
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
        except (tarfile.TarError, EOFError, OSError) as exc:
            broken = f"this tar breaks after {len(order)} sample(s) (truncated?): {type(exc).__name__}: {exc}"
            order = order[:-1] if order else order  # the last sample may have lost members
        for k in order:
            parts = samples[k]
            img = next((parts[e] for e in parts if "." + e.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS), None)
            if img is None:
                continue
            label, name, meta = -1, "", ""
            if "cls" in parts:
                fh.seek(parts["cls"].offset_data)
                try:
                    label = int(fh.read(min(parts["cls"].size, 4096)).decode().strip())
                except (ValueError, UnicodeDecodeError):
                    label = -1
                if not INT64[0] <= label <= INT64[1]:
                    scan.bad.append((k, f"sample {k}: the label in {parts['cls'].name} {_beyond_int64(label)}"))
                    continue
            if "json" in parts:
                fh.seek(parts["json"].offset_data)
                meta = fh.read(parts["json"].size).decode("utf-8", "replace")
                try:
                    name = str(json.loads(meta).get("label_name", "") or "")
                except (ValueError, AttributeError):
                    pass
            out.append((k, img.offset_data, img.size, label, name, meta))
    if broken:
        raise _BrokenTar(broken, scan)
    return scan
