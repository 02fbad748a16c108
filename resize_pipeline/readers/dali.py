"""NVIDIA DALI: index files for ``fn.readers.webdataset`` and a pipeline over our tars.

`write_dali_indexes(dest)` writes ``shard-00000.idx`` beside each ``shard-00000.tar`` (DALI's
``wds2idx`` format v1.2, computed from the tar headers through fsspec, no ``tar`` binary needed) and
``_dali_index.json`` recording which tar (sha256) each index describes, so that an index left over
from an earlier run (``--overwrite``) is detected and not used. It is a post-step over a finished
DEST: run it once after ``convert`` (``resize-pipeline inspect DEST --dali-index`` does the same).

A DEST grown by ``convert --update``: a tar some of whose samples a generation superseded gets an
index without them, named after that generation (``shard-00000.g000003.idx``), so DALI reads only
live samples and a reader of an earlier generation keeps its own index; without fresh index files
`dali_pipeline` refuses such a DEST (DALI would scan every sample of the tars).

`dali_pipeline(dest, ...)` builds a DALI pipeline reading the tars (local files: DALI reads paths)
with those indexes when present and fresh, decoding on the GPU (``mixed``, nvJPEG) when a device is
given, on the CPU otherwise (DALI's CPU-only mode, which is how it is tested here).
"""

from __future__ import annotations

import json
import logging
import tarfile
from typing import Any

from resize_pipeline.errors import OutputError
from resize_pipeline.layout import DALI_INDEX_RECORD as INDEX_RECORD
from resize_pipeline.layout import dali_index_name as index_name
from resize_pipeline.readers.output import Output, ShardRef, open_output, tar_samples

log = logging.getLogger(__name__)

INDEX_VERSION = "v1.2"  # the format DALI's wds2idx writes


def tar_index(fileobj, skip: frozenset[int] | set[int] = frozenset()) -> str:
    """The DALI index (v1.2 text) of an uncompressed WebDataset tar read from `fileobj`, without the
    samples at positions `skip` (superseded ones).

    One line per sample: ``ext offset size name`` for each of its members, members grouped by key
    as wds2idx does (a new sample starts when the name up to the first dot of the basename changes).
    """
    samples: list[list[str]] = []
    with tarfile.open(fileobj=fileobj, mode="r:") as tf:
        for pos, (_, members) in enumerate(tar_samples(tf)):
            if pos in skip:
                continue
            parts = []
            for ext, m in members:
                if any(c.isspace() for c in m.name):
                    raise ValueError(f"member {m.name!r}: DALI's index format cannot hold names with spaces")
                parts.append(f"{ext} {m.offset_data} {m.size} {m.name}")
            samples.append(parts)
    if not samples:
        raise ValueError("empty tar: DALI cannot index a tar without samples")
    return f"{INDEX_VERSION} {len(samples)}\n" + "".join(" ".join(s) + "\n" for s in samples)


def _record(out: Output) -> dict[str, Any]:
    path = out.path(INDEX_RECORD)
    if not out.fs.exists(path):
        return {}
    try:
        with out.fs.open(path, "r", encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _index_of(ref: ShardRef) -> str:
    """The index file of a tar as a generation reads it (without its superseded samples)."""
    return index_name(ref.name, ref.dead_in or None)


def write_dali_indexes(dest: str, storage_options: dict[str, Any] | None = None,
                       generation: int | None = None) -> list[str]:
    """Write a DALI index beside each tar of DEST with live samples (skipping fresh ones), for
    `generation` (default: the latest); returns their URLs."""
    out = open_output(dest, storage_options, generation)
    tars = [r for r in out.shards("webdataset") if r.live > 0]
    if not tars:
        raise OutputError(f"{dest} has no WebDataset shards with samples to index")
    record = _record(out)
    written = []
    for ref in tars:
        name = _index_of(ref)
        if record.get(name) == ref.sha256 and out.fs.exists(out.path(name)):
            written.append(out.url(name))
            continue
        with out.fs.open(ref.path, "rb") as fh:
            text = tar_index(fh, set(ref.dead))
        with out.fs.open(out.path(name), "w", encoding="utf-8") as fh:
            fh.write(text)
        record[name] = ref.sha256
        written.append(out.url(name))
    with out.fs.open(out.path(INDEX_RECORD), "w", encoding="utf-8") as fh:
        json.dump(dict(sorted(record.items())), fh, indent=1)
    log.info("wrote %d DALI index files in %s", len(written), dest)
    return written


def fresh_indexes(out: Output, tars: list[ShardRef]) -> list[str] | None:
    """The index paths for `tars` when every one exists and describes the tar now there, else None."""
    record = _record(out)
    names = [_index_of(r) for r in tars]
    if all(record.get(n) == r.sha256 for n, r in zip(names, tars, strict=True)) and all(
        out.fs.exists(out.path(n)) for n in names
    ):
        return [out.url(n) for n in names]
    return None


def labels_from_cls(batch) -> list[int]:
    """DALI's raw ``.cls`` outputs (ASCII digits as uint8) -> class indices (-1 where empty)."""
    import numpy as np

    out = []
    for i in range(len(batch)):
        raw = bytes(np.asarray(batch.as_cpu().at(i) if hasattr(batch, "as_cpu") else batch.at(i)))
        out.append(int(raw) if raw.strip() else -1)
    return out


def dali_pipeline(
    dest: str,
    *,
    batch_size: int = 64,
    num_threads: int = 4,
    device_id: int | None = None,
    shard_id: int = 0,
    num_shards: int = 1,
    shuffle: bool = False,
    initial_fill: int = 1024,
    seed: int = 0,
    use_index: bool = True,
    build: bool = True,
    generation: int | None = None,
):
    """A DALI pipeline over DEST's tars with outputs ``(images, labels)``.

    Images are decoded to RGB uint8 HWC: on the GPU (``mixed``: nvJPEG for JPEG) when `device_id` is
    given, else on the CPU. Labels are the raw ``.cls`` members (`labels_from_cls` turns a batch into
    ints; empty, hence -1, for unlabelled samples). `shard_id`/`num_shards` split the samples between
    ranks (DALI's sharding: one rank per GPU). Uses the index files of `write_dali_indexes` when they
    are present and fresh (else DALI scans the tars itself at start-up, which is slower).
    Local outputs only: DALI reads file paths. `generation`: of a DEST grown by ``convert --update``
    (default: the latest); its superseded samples are left out through the index files.
    """
    try:
        from nvidia.dali import fn, pipeline_def, types
    except ImportError as exc:
        raise ImportError("dali_pipeline needs DALI: pip install 'resize-pipeline[dali]'") from exc
    out = open_output(dest, generation=generation)
    if not out.is_local:
        raise OutputError(f"{dest}: DALI reads local files; copy the shards to a local disk first")
    tars = [r for r in out.shards("webdataset") if r.live > 0]
    if not tars:
        raise OutputError(f"{dest} has no WebDataset shards with samples")
    ext = str(out.manifest.get("encode", "jpg"))
    if ext not in ("jpg", "png", "webp"):
        raise OutputError(f"{dest} holds {ext} payloads: DALI decodes jpg/png/webp (use torch_dataset)")
    index_paths = fresh_indexes(out, tars) if use_index or any(r.dead for r in tars) else None
    if index_paths is None and any(r.dead for r in tars):
        raise OutputError(f"{dest} generation {out.generation} has superseded samples, which DALI would read "
                          "without index files: run write_dali_indexes (or inspect --dali-index) first")
    if use_index and index_paths is None:
        log.info("%s: no fresh DALI indexes (write_dali_indexes writes them); DALI will scan the tars", dest)
    reader_kw: dict[str, Any] = {"index_paths": index_paths} if index_paths else {}

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed)  # type: ignore[arg-type]
    def pipe():
        img, cls = fn.readers.webdataset(
            paths=[r.path for r in tars], ext=[ext, "cls"], missing_component_behavior="empty",
            dtypes=[types.UINT8, types.UINT8], random_shuffle=shuffle, initial_fill=initial_fill,
            shard_id=shard_id, num_shards=num_shards, name="reader", **reader_kw,
        )
        img = fn.decoders.image(img, device="mixed" if device_id is not None else "cpu", output_type=types.RGB)
        return img, cls

    p = pipe()
    if build:
        p.build()
    return p


__all__ = ["dali_pipeline", "index_name", "labels_from_cls", "tar_index", "write_dali_indexes"]
