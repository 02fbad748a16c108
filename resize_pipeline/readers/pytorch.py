"""PyTorch: an `IterableDataset` over our shards that yields every sample exactly once per epoch.

Work is split by *sample*, not by shard: the ``world_size * num_workers`` readers (DataLoader workers
of every rank) each take one contiguous slice of the global sample sequence, so it works with fewer
shards than readers (a 1-shard output with 8 GPUs x 4 workers reads each sample once), and every rank
gets the same number of samples, give or take one (the manifest lists each shard file's sample
count). Slices are contiguous runs of one or two shards, read sequentially; a slice that starts
inside a tar skips the members before it by their headers (no data read), inside a Parquet file by
row group.

Shuffling (``shuffle=N``): the shard order is permuted per epoch from ``seed + epoch`` (identically on
every rank, so the partition stays exact), then each reader shuffles its slice through an N-sample
buffer seeded from ``(seed, epoch, reader)``. Call ``ds.set_epoch(epoch)`` before each epoch, as with
`DistributedSampler`. Without shuffling the order is the conversion's order.

Tar members are grouped and decoded with `webdataset` (its ``base_plus_ext`` keys and its `Decoder`);
Parquet rows are read with pyarrow.

A DEST grown by ``convert --update``: the generation read (``generation=``, default the latest) decides
the files, and samples superseded up to it are skipped; the split is over the live samples only, so
ranks still get equal counts and every live sample is read once.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from resize_pipeline import formats
from resize_pipeline.readers.output import IMAGE_EXTS, Output, ShardRef, open_output

log = logging.getLogger(__name__)


def partition(counts: Sequence[int], part: int, parts: int) -> list[tuple[int, int, int]]:
    """Slice `part` of `parts` equal slices of the concatenated files: ``[(file, start, stop), ...]``.

    File `i` holds ``counts[i]`` samples; slice sizes differ by at most one.
    """
    total = sum(counts)
    lo, hi = part * total // parts, (part + 1) * total // parts
    pieces, base = [], 0
    for i, n in enumerate(counts):
        a, b = max(lo, base), min(hi, base + n)
        if a < b:
            pieces.append((i, a - base, b - base))
        base += n
    return pieces


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def read_tar_samples(fs, path: str, start: int, stop: int) -> Iterator[dict[str, Any]]:
    """Samples `start` .. `stop`-1 of a tar: members grouped by key as webdataset does; members of
    skipped samples are passed by their headers (tarfile seeks over the data)."""
    import tarfile
    from itertools import islice

    from resize_pipeline.readers.output import tar_samples

    with fs.open(path, "rb") as fh, tarfile.open(fileobj=fh, mode="r:") as tf:
        for key, members in islice(tar_samples(tf), start, stop):
            sample: dict[str, Any] = {"__key__": key, "__url__": path}
            for ext, member in members:
                data = tf.extractfile(member)
                sample[ext.lower()] = data.read() if data else b""
            yield sample


def read_parquet_samples(fs, path: str, start: int, stop: int) -> Iterator[dict[str, Any]]:
    """Rows `start` .. `stop`-1 of one of our Parquet shards as webdataset-style samples."""
    import pyarrow.parquet as pq

    from resize_pipeline.sources.image_column import column_bytes

    with fs.open(path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        base = 0
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            a, b = max(start, base), min(stop, base + n)
            if a < b:
                t = pf.read_row_group(g, columns=["key", "image", "format", "label"]).slice(a - base, b - a)
                images = column_bytes(t.column("image"))
                for key, img, fmt, label in zip(t.column("key").to_pylist(), images, t.column("format").to_pylist(),
                                                t.column("label").to_pylist(), strict=True):
                    s: dict[str, Any] = {"__key__": key, "__url__": path, fmt: img}
                    if label is not None:
                        s["cls"] = str(label).encode()
                    yield s
            base += n
            if base >= stop:
                return


def live_samples(fs, ref: ShardRef, a: int, b: int) -> Iterator[dict[str, Any]]:
    """Live samples ``a`` .. ``b - 1`` of one shard file: its physical samples from the first of them to
    the last, the superseded ones (`ShardRef.dead`) skipped."""
    read = formats.get(ref.format).load("samples")
    if not ref.dead:
        yield from read(fs, ref.path, a, b)
        return
    from resize_pipeline.readers.generations import live_to_physical

    dead = np.asarray(ref.dead, dtype=np.int64)
    start, stop = live_to_physical(dead, a), live_to_physical(dead, b - 1) + 1
    skip = set(int(d) for d in dead if start <= d < stop)
    for pos, sample in enumerate(read(fs, ref.path, start, stop), start):
        if pos not in skip:
            yield sample


def _shuffled(samples: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    buf: list[dict] = []
    for s in samples:
        if len(buf) < size:
            buf.append(s)
            continue
        i = rng.randrange(len(buf))
        yield buf[i]
        buf[i] = s
    rng.shuffle(buf)
    yield from buf


def _image_decoder(decode: str | Callable[[bytes], Any] | None) -> Callable[[str, bytes], Any]:
    """(ext, bytes) -> image, for a webdataset image spec ("torchrgb", "rgb8", "pil", ...) or a callable."""
    if decode is None:
        return lambda ext, data: data
    if callable(decode):
        return lambda ext, data: decode(data)
    from webdataset.autodecode import Decoder, imagehandler

    decoder = Decoder([imagehandler(decode)])
    as_torch, as_float = decode.startswith("torch"), not decode.endswith("8") and not decode.startswith("pil")

    def run(ext: str, data: bytes):
        img = decoder.decode1(ext, data)
        if ext == "npy":  # raw uint8 HWC (``--encode npy``): give it the spec's type
            if as_torch:
                img = torch.from_numpy(img).permute(2, 0, 1).contiguous()
                img = img.float() / 255 if as_float else img
            elif as_float:
                img = img.astype("float32") / 255
        return img

    return run


class ShardDataset(IterableDataset):
    """Samples of DEST as ``(image, label)`` (label -1 when unlabelled) or ``(image, key)``.

    Build it with `torch_dataset`. ``len(ds)`` is the number of samples this rank reads per epoch.
    """

    def __init__(
        self,
        output: Output,
        refs: list[ShardRef],
        *,
        decode: str | Callable[[bytes], Any] | None,
        with_label: bool,
        shuffle: int,
        seed: int,
        rank: int | None,
        world_size: int | None,
        transform: Callable[[Any], Any] | None,
    ) -> None:
        super().__init__()
        if shuffle < 0:
            raise ValueError(f"shuffle must be a buffer size >= 0, not {shuffle}")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither (then torch.distributed decides)")
        if world_size is not None and not (world_size >= 1 and 0 <= rank < world_size):  # type: ignore[operator]
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.fs = output.fs
        self.refs = refs
        self.decode = decode
        self.with_label = with_label
        self.shuffle = shuffle
        self.seed = seed
        if world_size is None and torch.distributed.is_available() and torch.distributed.is_initialized():
            # taken now, in the rank's own process: DataLoader workers do not see the process group
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.rank, self.world_size = rank, world_size
        self.transform = transform
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for `epoch` (same value on every rank); takes effect at the next ``iter()``."""
        self.epoch = int(epoch)

    def _rank_world(self) -> tuple[int, int]:
        if self.world_size is not None:
            return self.rank, self.world_size  # type: ignore[return-value]
        return _dist_rank_world()

    def _file_order(self) -> list[int]:
        order = list(range(len(self.refs)))
        if self.shuffle:
            random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        return order

    def __len__(self) -> int:
        rank, world = self._rank_world()
        total = sum(r.live for r in self.refs)
        return (rank + 1) * total // world - rank * total // world

    def pieces(self, reader: int, readers: int) -> list[tuple[ShardRef, int, int]]:
        """What reader `reader` of `readers` (rank-major: ``rank * num_workers + worker``) reads this
        epoch: ``(file, a, b)``, its live samples ``a`` to ``b - 1`` (superseded ones not counted)."""
        order = self._file_order()
        refs = [self.refs[i] for i in order]
        return [(refs[i], a, b) for i, a, b in partition([r.live for r in refs], reader, readers)]

    def samples(self) -> Iterator[dict[str, Any]]:
        """Raw samples (``__key__`` plus member bytes) of this reader, shuffled if asked."""
        rank, world = self._rank_world()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reader, readers = rank * workers + worker, world * workers
        pieces = self.pieces(reader, readers)
        log.debug("reader %d/%d (rank %d, worker %d): %s", reader, readers, rank, worker,
                  [(r.name, a, b) for r, a, b in pieces])

        def raw() -> Iterator[dict[str, Any]]:
            for ref, a, b in pieces:
                yield from live_samples(self.fs, ref, a, b)

        if not self.shuffle:
            return raw()
        return _shuffled(raw(), self.shuffle, random.Random(f"{self.seed}:{self.epoch}:{reader}"))

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        decode = _image_decoder(self.decode)
        for s in self.samples():
            ext = next((e for e in IMAGE_EXTS if e in s), None)
            if ext is None:
                log.warning("%s: sample %s has no image member, skipped", s["__url__"], s["__key__"])
                continue
            img = decode(ext, s[ext])
            if self.transform is not None:
                img = self.transform(img)
            if self.with_label:
                yield img, int(s["cls"]) if "cls" in s else -1
            else:
                yield img, s["__key__"]


def torch_dataset(
    dest: str,
    *,
    format: str | None = None,
    decode: str | Callable[[bytes], Any] | None = "torchrgb",
    with_label: bool = True,
    shuffle: int = 0,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    transform: Callable[[Any], Any] | None = None,
    storage_options: dict[str, Any] | None = None,
    generation: int | None = None,
) -> ShardDataset:
    """A `ShardDataset` over DEST for ``torch.utils.data.DataLoader(ds, batch_size=..., num_workers=...)``.

    Args:
        dest: the conversion's output folder or fsspec URL (holding ``_manifest.json``).
        format: "webdataset" or "parquet"; default: the tars when there are any, else the Parquet files.
        decode: a webdataset image spec ("torchrgb": float CHW in [0, 1]; "torchrgb8": uint8 CHW;
            "rgb8": uint8 HWC numpy; "pil": PIL image), a callable on the encoded bytes, or None (bytes).
        with_label: yield ``(image, label)`` (label -1 when unlabelled), else ``(image, key)``.
        shuffle: shuffle buffer size in samples (0: no shuffling, the conversion's order).
        seed: shuffling seed; the same on every rank.
        rank, world_size: this process's place; default: from `torch.distributed` when it is initialised
            before this call (create the dataset after ``init_process_group``), else 0 and 1.
        transform: applied to each decoded image (augmentation).
        storage_options: for fsspec URLs (``s3://``...).
        generation: the generation of a DEST grown by ``convert --update`` to read (default: the latest
            complete one); superseded samples are skipped.
    """
    out = open_output(dest, storage_options, generation)
    if format is None:
        format = "webdataset" if out.shards("webdataset") else "parquet"
    refs = out.shards(format)
    if not refs:
        from resize_pipeline.errors import OutputError

        raise OutputError(f"{dest} has no {format} shards (formats: {', '.join(out.formats()) or 'none'})")
    if any(r.samples < 0 for r in refs):
        from resize_pipeline.errors import OutputError

        raise OutputError(f"{dest}/_manifest.json has no per-shard sample counts: rerun the conversion")
    return ShardDataset(out, refs, decode=decode, with_label=with_label, shuffle=shuffle, seed=seed, rank=rank,
                        world_size=world_size, transform=transform)
