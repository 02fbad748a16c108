"""Reading what DEST holds: the published generations, and every held record as Arrow batches.

`Published` is DEST's published state: its manifest (None before the first generation is
published), the latest generation and each shard's generation. `held_batches` streams the records
the diff compares SOURCE with: each published shard's input record (its generation filled in from
the manifest), each generation's records file, and, for the shards of a DEST written before input
records existed, rows read back from the shard files themselves (generation 0: `legacy_batches`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from resize_pipeline.errors import OutputError
from resize_pipeline.generations.records import held_schema, held_table, read_table
from resize_pipeline.layout import MANIFEST_FILE, inputs_name, stats_name
from resize_pipeline.readers import generations as view

log = logging.getLogger(__name__)

#: record files read at once (object stores: one request each)
READ_THREADS = 16


@dataclass
class Published:
    """DEST's published state (`read_published`)."""

    manifest: dict[str, Any] | None
    #: the latest published generation (0: none)
    generation: int = 0
    #: shard name -> (its generation, its `shard_stats` entry), in shard order
    shards: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    #: shard name -> its files in the manifest, in order (entries of ``shards``)
    files: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def entries(self) -> list[dict[str, Any]]:
        return view.entries(self.manifest) if self.manifest else []

    @property
    def legacy(self) -> bool:
        """Written before generations existed (a manifest without them)."""
        return self.manifest is not None and not self.manifest.get("generations")

    @property
    def next_index(self) -> int:
        """The index the next generation's first shard gets."""
        idx = [int(e.get("index", -1)) for _, e in self.shards.values()]
        return max(idx, default=-1) + 1

    def adopted(self) -> bool:
        """Whether generation 1's shards without input records have been adopted (a records file)."""
        return any(isinstance(g.get("records"), dict) for g in self.entries if int(g.get("generation", 1)) == 1)


def read_published(dest) -> Published:
    """DEST's manifest and what it says; OutputError (one line) for a manifest that cannot be read."""
    try:
        manifest = dest.read_json(MANIFEST_FILE)
    except FileNotFoundError:
        return Published(None)
    except (OSError, ValueError) as exc:
        raise OutputError(f"{dest.url}/{MANIFEST_FILE} cannot be read ({exc}); rerun the command that wrote it "
                          "to complete it, or --overwrite to start over") from None
    if not isinstance(manifest, dict) or manifest.get("tool") != "resize_pipeline":
        raise OutputError(f"{dest.url}/{MANIFEST_FILE} was not written by resize-pipeline")
    out = Published(manifest, view.latest(manifest))
    generation_of: dict[str, int] = {}
    for f in manifest.get("shards", []):
        name = str(f.get("shard", ""))
        generation_of.setdefault(name, view.file_generation(f))
        out.files.setdefault(name, []).append(f)
    for s in sorted(manifest.get("shard_stats", []), key=lambda s: int(s.get("index", 0))):
        name = str(s["name"])
        out.shards[name] = (int(s.get("generation", generation_of.get(name, 1))), s)
    return out


def _ordered(fn, items: list[Any], threads: int = READ_THREADS) -> Iterator[Any]:
    """`fn(item)` for each item, in order, at most `threads` at once and a few more held."""
    if not items:
        return
    with ThreadPoolExecutor(min(threads, len(items))) as pool:
        window = threads * 2
        futures = [pool.submit(fn, it) for it in items[:window]]
        for i in range(len(items)):
            result = futures[i].result()
            futures[i] = None  # type: ignore[call-overload]
            if i + window < len(items):
                futures.append(pool.submit(fn, items[i + window]))
            yield result


def held_batches(dest, published: Published, legacy: bool = True) -> Iterator[Any]:
    """Every held record of the published generations, as held-schema batches (see the module
    docstring); with `legacy`, generation-0 rows for shards that have no input record and were not
    adopted yet."""
    import pyarrow as pa

    schema = held_schema()
    with_records = [(n, g) for n, (g, s) in published.shards.items() if isinstance(s.get("inputs"), dict)]

    def load(item: tuple[str, int]) -> Any:
        name, g = item
        try:
            t = read_table(dest.fs, dest.path(*inputs_name(name)))
        except (OSError, ValueError) as exc:
            raise OutputError(f"cannot read the input record of shard {name} in {dest.url} ({exc}); "
                              "inspect --verify checks DEST") from None
        t = t.select(schema.names).cast(schema)
        t = t.set_column(schema.get_field_index("generation"), "generation", pa.array([g] * t.num_rows, pa.int64()))
        return t.set_column(schema.get_field_index("shard"), "shard",
                            pa.array([name] * t.num_rows, pa.large_string()))

    for t in _ordered(load, with_records):
        yield from t.to_batches()
    for g in published.entries:
        ref = g.get("records")
        if isinstance(ref, dict) and isinstance(ref.get("name"), str):
            t = read_table(dest.fs, dest.path(ref["name"])).select(schema.names).cast(schema)
            yield from t.to_batches()
    if legacy and not published.adopted():
        yield from legacy_batches(dest, published)


def legacy_shards(published: Published) -> list[str]:
    """Published shards without an input record (written before records existed)."""
    return [n for n, (_, s) in published.shards.items() if not isinstance(s.get("inputs"), dict)]


def legacy_batches(dest, published: Published) -> Iterator[Any]:
    """Generation-0 held rows for shards without an input record: their written samples' keys, in
    order, read back from the shard files (the Parquet ``key`` column, else the tar headers), and
    their failed inputs from their stats."""
    names = legacy_shards(published)

    def load(name: str) -> Any:
        keys = _keys_in_files(dest, published.files.get(name, []))
        try:
            stats = dest.read_json(*stats_name(name))
            errors = [e for e in stats.get("errors", []) if isinstance(e, dict) and "key" in e]
        except (OSError, ValueError):
            errors = []
        failed = [str(e["key"]) for e in errors]
        n = len(keys) + len(failed)
        return held_table({
            "key": keys + failed, "url": [""] * n, "status": ["written"] * len(keys) + ["failed"] * len(failed),
            "generation": [0] * n, "shard": [name] * n,
            "sample": list(range(len(keys))) + [-1] * len(failed), "stamp": [0] * n,
            "stage": [None] * len(keys) + [str(e.get("stage", "")) for e in errors],
        })

    for t in _ordered(load, names):
        yield from t.to_batches()


def _keys_in_files(dest, files: list[dict[str, Any]]) -> list[str]:
    """The sample keys of one shard, in writing order, from its Parquet parts or else its tar parts."""
    import tarfile

    from resize_pipeline.readers.output import tar_samples

    parquet = [f for f in files if f.get("format") == "parquet"]
    keys: list[str] = []
    if parquet:
        for f in parquet:
            keys += [str(k) for k in read_table(dest.fs, dest.path(f["name"]), columns=["key"]).column("key").to_pylist()]
        return keys
    for f in files:
        if f.get("format") != "webdataset":
            continue
        mode = "r:" if dest.local else "r|"
        with dest.fs.open(dest.path(f["name"]), "rb") as fh, tarfile.open(fileobj=fh, mode=mode) as tf:  # type: ignore[call-overload]
            for key, members in tar_samples(tf):
                for _ in members:  # a streamed tar: a sample's members are passed before the next
                    pass
                keys.append(key)
    return keys
