"""Planning that streams: the listing becomes listing parts in DEST and shard tasks as it is read.

    Listing.rows()  ->  parts of R rows (R = whole shards, `parts.rows_per_part`)
                    ->  each part written to ``DEST/_listing/`` (or, on a rerun, compared with the
                        recorded one: kept when equal, the job stopped when not)
                    ->  its shards released: a task per shard still to convert (a row range of the
                        part), the recorded result of each shard already complete

Shard ``i`` is rows ``[i*N, (i+1)*N)`` of the listing, so its part, and its name, are known before
the listing has ended: the name's width comes from the listing's bound (`Listing.bound`, known
before its rows are read), and shard 0 starts as soon as the first part is written. The driver
holds one block of rows, the key index's bounded memory (`sources.keys.StreamingKeys`), and per
shard a small task or result: its memory grows with shards, not with inputs.

`Planner.run` is what a planner thread runs; `on_part(PartEvent)` hands each part's shards to the
engine. A different part (another listing, or changed inputs) raises `OutputError` before any
shard of that part is released.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from resize_pipeline.errors import OutputError
from resize_pipeline.layout import (
    INPUTS_DIR,
    LISTING_DIR,
    LISTING_INDEX,
    STATS_DIR,
    inputs_name,
    shard_name,
    shard_width,
    stats_name,
)
from resize_pipeline.shards import ShardResult, ShardTask
from resize_pipeline.sources.base import ROW_COLUMNS
from resize_pipeline.sources.parts import (
    PartInfo,
    encode_part,
    part_name,
    read_info,
    rows_per_group,
    rows_per_part,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Layout:
    """How a listing of at most `bound` inputs is cut: shard size, part size, names."""

    bound: int
    samples_per_shard: int
    prefix: str = "shard"

    @property
    def rows_per_part(self) -> int:
        return rows_per_part(self.samples_per_shard)

    @property
    def shards_per_part(self) -> int:
        return self.rows_per_part // self.samples_per_shard

    @property
    def width(self) -> int:
        return shard_width(max(1, self.bound), self.samples_per_shard)

    @property
    def shards(self) -> int:
        """Shards at most."""
        return -(-self.bound // self.samples_per_shard)

    def name(self, index: int) -> str:
        return shard_name(self.prefix, index, self.width)

    def part_of(self, index: int) -> int:
        return index // self.shards_per_part

    def rows_of(self, index: int) -> tuple[int, int]:
        """Shard `index`'s rows within its part (the part may turn out shorter)."""
        a = (index % self.shards_per_part) * self.samples_per_shard
        return a, a + self.samples_per_shard


@dataclass(slots=True)
class PartEvent:
    """A part is ready: its shards to convert and those already complete."""

    index: int
    rows: int
    tasks: list[ShardTask]
    done: list[ShardResult]
    last: bool = False


@dataclass(slots=True)
class Outcome:
    """What the whole listing was, once read."""

    inputs: int = 0
    parts: list[dict[str, Any]] = field(default_factory=list)
    digest: str = ""  # release 0.1.0's listing digest (only computed when `legacy`)
    stamps: str | None = None


class DoneShards:
    """Which shards DEST already holds complete: their stats exist, parse, count the shard's inputs,
    every file they list is present, and so is the input record they name (DEST's listings are read
    once)."""

    def __init__(self, dest: Any) -> None:
        self.dest = dest
        self.have = set(dest.ls(STATS_DIR)) if dest is not None else set()
        self.present = set(dest.ls()) if self.have else set()
        self.records = set(dest.ls(INPUTS_DIR)) if self.have else set()

    def candidate(self, name: str) -> bool:
        return f"{name}.json" in self.have

    def result(self, index: int, name: str, size: int) -> ShardResult | None:
        if not self.candidate(name):
            return None
        try:
            res = ShardResult.from_dict(self.dest.read_json(*stats_name(name)))
        except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):  # torn: redo it
            return None
        if res.total == size and res.index == index and all(
                isinstance(f, dict) and f.get("name") in self.present for f in res.files) \
                and (res.record is None or inputs_name(name)[1] in self.records):
            res.reused = True
            return res
        return None


class Planner:
    """Reads a `Listing` into parts and shard tasks (see the module docstring).

    Args:
        listing: the job's listing (prepared).
        layout: how it is cut.
        dest: DEST (`sinks.dest.Dest`); None for nothing at all (no parts, no done shards).
        write: write parts (False: a dry run; recorded parts are only compared).
        recorded: the earlier run's listing index (``_listing/_index.json``), when complete.
        legacy: also compute release 0.1.0's listing and stamps digests (`Outcome`).
    """

    def __init__(self, listing: Any, layout: Layout, dest: Any = None, *, write: bool = True,
                 recorded: dict[str, Any] | None = None, legacy: bool = False, done: DoneShards | None = None,
                 source: str = "") -> None:
        self.listing, self.layout, self.dest, self.write = listing, layout, dest, write
        self.recorded, self.legacy = recorded, legacy
        self.done = done if done is not None else DoneShards(dest)
        self.source = source or getattr(listing, "source", "")
        self.outcome = Outcome()
        self._legacy_h = hashlib.sha256()
        self._stamps_h = hashlib.sha256()

    # -- parts ----------------------------------------------------------------------------------
    def _parts(self) -> Iterator[tuple[int, dict[str, list]]]:
        size = self.layout.rows_per_part
        buf: dict[str, list] = {c: [] for c in ROW_COLUMNS}
        have, p = 0, 0
        for block in self.listing.rows():
            if self.legacy:
                self._legacy(block)
            n, a = len(block["key"]), 0
            while a < n:
                take = min(size - have, n - a)
                for c in ROW_COLUMNS:
                    buf[c].extend(block[c][a:a + take])
                have += take
                a += take
                if have == size:
                    yield p, buf
                    p += 1
                    buf, have = {c: [] for c in ROW_COLUMNS}, 0
        if have or p == 0:
            yield p, buf

    def _legacy(self, block: dict[str, list]) -> None:
        """Release 0.1.0's listing digest lines, and the stamps as its digest saw them."""
        import numpy as np

        self._legacy_h.update("".join(
            f"{k}\t{u}\t{o}\t{n}\t{r}\t{la}\n" for k, u, o, n, r, la in zip(
                block["key"], block["url"], block["offset"], block["length"], block["row"], block["label"],
                strict=True)).encode("utf-8", "surrogatepass"))
        self._stamps_h.update(np.asarray(block["stamp"], dtype="<i4").tobytes())

    def _settle(self, index: int, data: bytes, info: PartInfo) -> None:
        """Write part `index`, or check it against the recorded one."""
        parts = (self.recorded or {}).get("parts")
        if isinstance(parts, list) and index >= len(parts):
            raise self._different(f"it now has more than the {len(parts)} listing part(s) recorded")
        old = read_info(self.dest.url, self.dest.storage_options, index) if self.dest is not None else None
        if old is None:
            if isinstance(parts, list):
                log.warning("listing part %s was recorded but is missing: writing it again", part_name(index))
            if self.write and self.dest is not None:
                self.dest.commit(data, LISTING_DIR, part_name(index))
            return
        if old.rows != info.rows or old.digest != info.digest:
            raise self._different(f"listing part {part_name(index)} differs")
        if old.stamps != info.stamps:
            raise OutputError(
                f"inputs of {self.source} changed since {self.dest.url} was started (same names, other sizes or "
                "modification times): resuming would mix old and new images; use --overwrite to convert them "
                "again, or restore the inputs")

    def _different(self, why: str) -> OutputError:
        return OutputError(f"{self.dest.url} holds output of a different input listing ({why}); use --overwrite "
                           "to replace it, or another destination")

    # -- the run ---------------------------------------------------------------------------------
    def run(self, on_part: Callable[[PartEvent], None]) -> Outcome:
        lay, out = self.layout, self.outcome
        group = rows_per_group(lay.samples_per_shard)
        first_shard = 0
        classes = tuple(self.listing.classes) or None  # known before the rows (a manifest's are read first)
        for p, rows in self._parts():
            n = len(rows["key"])
            if n == 0 and p > 0:
                break
            if self.dest is not None:  # (without a DEST there is nothing to write or compare with)
                data, info = encode_part(p, rows, group)
                self._settle(p, data, info)
                out.parts.append(info.to_dict())
            else:
                out.parts.append({"name": part_name(p), "rows": n})
            out.inputs += n
            tasks, done = [], []
            from resize_pipeline.sources.rows import PartRows

            for a in range(0, n, lay.samples_per_shard):
                index = first_shard + a // lay.samples_per_shard
                b = min(n, a + lay.samples_per_shard)
                name = lay.name(index)
                res = self.done.result(index, name, b - a)
                if res is not None:
                    done.append(res)
                else:
                    rows_ref = PartRows(self.dest.url, self.dest.storage_options, part_name(p)) \
                        if self.dest is not None else None
                    tasks.append(ShardTask(index, name, rows_ref, a, b, classes))
            first_shard += lay.shards_per_part
            on_part(PartEvent(p, n, tasks, done, last=n < lay.rows_per_part))
            if n < lay.rows_per_part:
                break
        parts = (self.recorded or {}).get("parts")
        if isinstance(parts, list) and len(out.parts) != len(parts):
            raise self._different(f"{out.inputs} inputs now, in {len(out.parts)} part(s); "
                                  f"{self.recorded.get('inputs')} then, in {len(parts)}")  # type: ignore[union-attr]
        if out.inputs > lay.bound:
            raise OutputError(f"{self.source} gave more inputs ({out.inputs}) than it held when the job started "
                              f"({lay.bound}); it is changing: rerun when it is stable")
        if self.legacy:
            out.digest = self._legacy_h.hexdigest()[:16]
            import numpy as np

            extra = np.asarray(self.listing.source_stamps, dtype="<i4").tobytes()
            if self.listing.stamps_complete:
                self._stamps_h.update(extra)
                out.stamps = self._stamps_h.hexdigest()[:16]
            else:
                out.stamps = hashlib.sha256(extra).hexdigest()[:16]
        return out

    def index(self) -> dict[str, Any]:
        """The record of the complete listing (``_listing/_index.json``)."""
        lst = self.listing
        return {"parts": self.outcome.parts, "inputs": self.outcome.inputs, "kind": lst.kind,
                "samples_per_shard": self.layout.samples_per_shard, "rows_per_part": self.layout.rows_per_part,
                "list_errors": len(lst.errors), "skipped_non_images": lst.skipped}

    def write_index(self) -> None:
        """Record the complete listing (unless the recorded index says the same already)."""
        if self.write and self.dest is not None and self.index() != self.recorded:
            self.dest.write_json(self.index(), LISTING_DIR, LISTING_INDEX)


def read_index(dest: Any) -> dict[str, Any] | None:
    """The recorded listing index of DEST (None: absent, or not one of ours)."""
    try:
        doc = dest.read_json(LISTING_DIR, LISTING_INDEX)
    except (FileNotFoundError, ValueError, OSError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("parts"), list) else None


class PlanThread:
    """`Planner.run` on a thread: each part's tasks go to `tasks` (a `shards.TaskStream`, what the
    local engine takes), its complete shards' results to `take_done`; `listeners` (the Ray engine's
    part gate) see every `PartEvent`. `join` raises what the planner raised."""

    def __init__(self, planner: Planner) -> None:
        import threading

        from resize_pipeline.shards import TaskStream

        self.planner = planner
        self.tasks = TaskStream(planner.layout.shards)
        #: put each part's tasks on `tasks` (the Ray engine makes its own from the indices)
        self.queue_tasks = True
        self.listeners: list[Callable[[PartEvent], None]] = []
        self.error: BaseException | None = None
        self.outcome: Outcome | None = None
        self._done: list[ShardResult] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="planner", daemon=True)
        self._started = False

    def start(self) -> PlanThread:
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def _on_part(self, ev: PartEvent) -> None:
        if self._stop.is_set():
            raise _Stopped()
        with self._lock:
            self._done.extend(ev.done)
        for listener in self.listeners:
            listener(ev)
        if self.queue_tasks:
            for t in ev.tasks:
                self.tasks.put(t)

    def _run(self) -> None:
        try:
            self.outcome = self.planner.run(self._on_part)
        except _Stopped:
            self.tasks.close()
        except BaseException as exc:  # noqa: BLE001 - raised in the driver by join()
            self.error = exc
            self.tasks.fail(exc)
            for listener in self.listeners:
                fail = getattr(listener, "fail", None)
                if fail is not None:
                    fail(exc)
        else:
            self.tasks.close()
            for listener in self.listeners:
                end = getattr(listener, "end", None)
                if end is not None:
                    end(self.outcome)

    def take_done(self) -> list[ShardResult]:
        with self._lock:
            done, self._done = self._done, []
        return done

    def join(self) -> Outcome:
        self._thread.join()
        if self.error is not None:
            raise self.error
        assert self.outcome is not None
        return self.outcome

    def stop(self, timeout: float = 120.0) -> None:
        """Stop after the part being made (the job ended early), and wait for that: no part is written
        once the caller lets DEST's lock go."""
        self._stop.set()
        if self._started:
            self._thread.join(timeout)


class _Stopped(Exception):
    pass


def listing_digests(listing: Any) -> tuple[str, str]:
    """A listing read into memory (`Listing.items`): release 0.1.0's listing and stamps digests over
    all its rows, as `Planner` computes them with ``legacy`` (``--update`` compares them between
    generations: the same digests mean the same inputs with the same stamps)."""
    import numpy as np

    items = listing.items
    h, hs = hashlib.sha256(), hashlib.sha256()
    for a in range(0, len(items), 65536):
        block = items.columns(a, min(len(items), a + 65536))
        h.update("".join(f"{k}\t{u}\t{o}\t{n}\t{r}\t{la}\n" for k, u, o, n, r, la in zip(
            block["key"], block["url"], block["offset"], block["length"], block["row"], block["label"],
            strict=True)).encode("utf-8", "surrogatepass"))
        hs.update(np.asarray(block["stamp"], dtype="<i4").tobytes())
    extra = np.asarray(listing.source_stamps, dtype="<i4").tobytes()
    if listing.stamps_complete:
        hs.update(extra)
        return h.hexdigest()[:16], hs.hexdigest()[:16]
    return h.hexdigest()[:16], hashlib.sha256(extra).hexdigest()[:16]
