"""What every source kind shares: the streamed `Listing`, its raw row blocks, and small helpers.

A source kind (`folder`, `manifest`, `tars`, `parquet_bytes`) opens SOURCE and hands out its inputs
as *raw blocks* in their final order: columns `RAW_COLUMNS` as Python lists, ``rel`` being the text a
row's key comes from (`keys.sanitize_key`). `Listing.rows` turns them into final rows
(`base.ROW_COLUMNS`: keys made unique over the whole listing by `keys.StreamingKeys`, in memory that
does not grow with it). Nothing holds the whole listing: the planner (`planning.py`) writes the rows
as listing parts in DEST as they come.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from resize_pipeline.errorlog import ErrorLog
from resize_pipeline.errors import SourceError, error_record
from resize_pipeline.sources.base import ROW_COLUMNS
from resize_pipeline.sources.keys import sanitize_key

#: a raw block's columns: `base.ROW_COLUMNS` with ``rel`` (the key's source text) in place of ``key``
RAW_COLUMNS: tuple[str, ...] = ("rel",) + ROW_COLUMNS[1:]
#: rows per raw block a source hands out (at most)
BLOCK = 1 << 14
#: what listing a source may raise, turned into one line (`one_line`)
LISTING_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, TypeError, tarfile.TarError,
                                                   UnicodeError, EOFError)
#: skipped tar members named in the manifest (the rest are counted by reason)
MAX_SKIPPED_SHOWN = 20
#: labels are 64-bit integers (a manifest's label column, ``.cls`` members, Parquet's ``label`` column)
INT64 = (-(2**63), 2**63 - 1)
_DEFAULTS: dict[str, Any] = {"label": -1, "label_name": "", "meta": "", "offset": -1, "length": -1, "row": -1,
                             "stamp": 0}


def one_line(source: str, exc: BaseException) -> SourceError:
    """A listing error as the job's one line."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return SourceError(f"cannot list {source}: {type(exc).__name__}: {first}")


def has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def ext(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def unstrip(fs: Any, path: str) -> str:
    return fs.unstrip_protocol(path)


def beyond_int64(value: int | str) -> str:
    """Why `value` (a number, or its text) cannot be a label (the number shortened to 40 characters)."""
    text = value if isinstance(value, str) else str(value)
    return f"{text if len(text) <= 40 else text[:37] + '...'} is beyond the 64-bit integer range"


def list_error(rel: str, url: str, exc: BaseException | str) -> dict[str, str]:
    """An input that could not be listed (stage ``list``)."""
    return error_record(key=sanitize_key(rel), source=url, stage="list", exc=exc, error_type="SourceError")


def raw_block(rel: list[str], url: list[str], **columns: Sequence[Any] | None) -> dict[str, list]:
    """A raw block; absent columns take their defaults (-1, "" or 0)."""
    n = len(rel)
    out: dict[str, list] = {"rel": rel, "url": url}
    for c in RAW_COLUMNS[2:]:
        v = columns.get(c)
        out[c] = [_DEFAULTS[c]] * n if v is None else list(v)
    return out


def chunked(block: dict[str, list], size: int = BLOCK) -> Iterator[dict[str, list]]:
    n = len(block["rel"])
    if n <= size:
        if n:
            yield block
        return
    for a in range(0, n, size):
        yield {c: v[a:a + size] for c, v in block.items()}


class Listing:
    """The inputs of a job, streamed in their final order, with what was learnt while listing.

    Args:
        kind: ``directory``, ``imagefolder``, ``glob``, ``manifest``, ``webdataset``, ``parquet-bytes``, ``file``.
        bound: inputs at most (exact for folders, tars, Parquet bytes; a manifest's rows, counted
            before the rows are read, so that shard names are known before the listing ends).
        blocks: makes the raw blocks (called once).
        classes: label names by index (ImageFolder folders, a manifest's text labels).
        skipped: files that are not images (never inputs); tar members that are not regular files
            are counted apart (`skipped_members`, `skipped_examples`).
        errors: what could not be listed (stage ``list``); a manifest's rows add to it as they stream.
        source_stamps: stamps of the containers the rows come from (a manifest file's own).
        stamps_complete: whether every row was stamped (False: a manifest whose rows point into more
            folders than are listed), asked after the rows are read.
        prepare: for sources listed in parallel (folders, globs, tars): lists them (`prepare`).
    """

    def __init__(self, kind: str, *, bound: int = 0, blocks: Callable[[], Iterator[dict[str, list]]] | None = None,
                 classes: Sequence[str] = (), skipped: int = 0, errors: ErrorLog | None = None,
                 source_stamps: Sequence[int] = (), stamps_complete: Callable[[], bool] | None = None,
                 prepare: Callable[..., None] | None = None, cleanup: Callable[[], None] | None = None) -> None:
        self.kind, self.bound = kind, bound
        #: SOURCE as given (for messages)
        self.source = ""
        self._blocks = blocks
        self.classes = list(classes)
        self.skipped = skipped
        #: tar members that are not regular files (symbolic and hard links, devices, FIFOs, sparse
        #: files): never read, counted by reason, the first `MAX_SKIPPED_SHOWN` named (``path``,
        #: ``member``, ``reason``)
        self.skipped_members: dict[str, int] = {}
        self.skipped_examples: list[dict[str, str]] = []
        self.errors = errors if errors is not None else ErrorLog()
        self.source_stamps = tuple(source_stamps)
        self._stamps_complete = stamps_complete
        self._prepare = prepare
        self._cleanup = cleanup
        self._items: Any = None
        self._consumed = False

    # -- listing in parallel --------------------------------------------------------------------
    @property
    def prepared(self) -> bool:
        return self._prepare is None

    def prepare(self, runner: Any = None, store: Any = None) -> None:
        """List a source that is listed in parallel: `runner` runs the listing tasks (None: threads
        here), `store` keeps their sorted runs (None: a local temporary folder). Sets `bound`,
        `classes`, `skipped` and `errors`; a no-op for the others."""
        if self._prepare is not None:
            prepare, self._prepare = self._prepare, None
            prepare(self, runner, store)

    def set_blocks(self, blocks: Callable[[], Iterator[dict[str, list]]], cleanup: Callable[[], None] | None = None) -> None:
        self._blocks, self._cleanup = blocks, cleanup

    # -- rows -----------------------------------------------------------------------------------
    def raw_blocks(self) -> Iterator[dict[str, list]]:
        """The raw blocks, once (a listing streams)."""
        if self._consumed:
            raise RuntimeError("a listing's rows can be read once")
        self.prepare()
        self._consumed = True
        assert self._blocks is not None
        try:
            yield from self._blocks()
        except SourceError:
            raise
        except LISTING_ERRORS as exc:  # a manifest that breaks part-way, a source that went away
            raise one_line(self.source, exc) from None

    def rows(self, spill: int | None = None) -> Iterator[dict[str, list]]:
        """Final rows (`base.ROW_COLUMNS`) block by block: keys made unique over the whole listing."""
        from resize_pipeline.sources.keys import StreamingKeys

        keys = StreamingKeys(self.bound, spill)
        try:
            for raw in self.raw_blocks():
                for block in chunked(raw):
                    out = {"key": keys.assign(block["rel"])}
                    out.update((c, block[c]) for c in ROW_COLUMNS[1:])
                    yield out
        finally:
            keys.close()
            self.close()

    @property
    def stamps_complete(self) -> bool:
        return self._stamps_complete() if self._stamps_complete is not None else True

    @property
    def items(self) -> Any:
        """Every row, in memory (`rows.RowTable`): for small listings (tests, training data)."""
        if self._items is None:
            from resize_pipeline.sources.rows import RowTable

            self._items = RowTable.from_blocks(self.rows())
        return self._items

    def close(self) -> None:
        if self._cleanup is not None:
            cleanup, self._cleanup = self._cleanup, None
            cleanup()
