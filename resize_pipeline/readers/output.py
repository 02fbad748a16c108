"""Open a finished conversion (DEST): its ``_manifest.json`` and the shard files it lists.

Readers use the manifest's shard list, never a directory listing: half-written runs are not read,
``--format both`` output is never confused (tars vs Parquet), and the per-file sample counts let the
PyTorch reader split work exactly.

A DEST grown by ``convert --update`` has generations (`readers.generations`): by default a reader sees
the latest complete one, or generation ``g`` when asked: the shard files of generations 1..g, each
with the positions of its samples superseded up to g (`ShardRef.dead`), which readers skip.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from resize_pipeline import formats
from resize_pipeline.errors import OutputError
from resize_pipeline.layout import MANIFEST_FILE, RUN_FILE

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "npy")  # the image member of a sample, by extension


def split_key(member: str) -> tuple[str | None, str]:
    """A tar member name -> (sample key, extension), split at the first dot of the basename, as
    webdataset (``base_plus_ext``) and DALI's wds2idx group members; (None, "") when it has no dot."""
    slash = member.rfind("/") + 1
    dot = member.find(".", slash)
    if dot <= slash:
        return None, ""
    return member[:dot], member[dot + 1 :]


def tar_samples(tf) -> Iterator[tuple[str, Iterator[tuple[str, Any]]]]:
    """The samples of an open tar, in order: ``(key, members)`` where `members` yields ``(ext, TarInfo)``
    for the regular members of that key (grouped as webdataset and wds2idx group them: consecutive
    members whose names agree up to the first dot of the basename). Lazy, so it works on a streamed
    tar (mode ``r|``) as long as each sample's members are used before the next sample."""
    from itertools import groupby

    def members() -> Iterator[tuple[str, str, Any]]:
        for m in tf:
            if m.isreg():
                key, ext = split_key(m.name)
                if key is not None:
                    yield key, ext, m

    for key, group in groupby(members(), key=lambda t: t[0]):
        yield key, ((ext, m) for _, ext, m in group)


@dataclass(frozen=True, slots=True)
class ShardRef:
    """One shard file listed in the manifest."""

    name: str
    format: str
    samples: int
    bytes: int
    sha256: str
    url: str  # a plain path for local output, else the fsspec URL (``s3://...``)
    path: str  # the path on `Output.fs`
    generation: int = 1  # the generation that wrote it
    #: positions (ascending) of its samples superseded in the generation read: readers skip them
    dead: tuple[int, ...] = ()
    #: the last generation (up to the one read) that superseded one of its samples; 0: none did
    dead_in: int = 0

    @property
    def live(self) -> int:
        """Samples readers read from this file (its samples less the superseded ones)."""
        return self.samples - len(self.dead)


@dataclass(frozen=True)
class Output:
    """A finished conversion: filesystem, root path, manifest, and the generation read."""

    dest: str
    fs: Any
    root: str
    manifest: dict[str, Any]
    #: the generation read (`generations.view.choose`: the latest complete one by default)
    generation: int = 1
    _dead: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def dead(self) -> dict[str, Any]:
        """Shard file name -> (positions of its samples superseded up to `generation`, the last
        generation that superseded one); read once."""
        if "files" not in self._dead:
            from resize_pipeline.readers.generations import dead_by_file

            self._dead["files"] = dead_by_file(self.fs, self.root, self.manifest, self.generation)
        return self._dead["files"]

    def shards(self, fmt: str | None = None, *, with_dead: bool = True) -> list[ShardRef]:
        """The complete shard files of the generation read, in order; only those of `fmt`
        ("webdataset" or "parquet") when given. Each carries its superseded samples (`ShardRef.dead`;
        not read with ``with_dead=False``: checking the files needs only their names)."""
        from resize_pipeline.readers.generations import file_generation

        if fmt is not None:
            formats.get(fmt)  # ValueError naming the formats
        out = []
        dead = self.dead() if with_dead and self.manifest.get("generations") else {}
        for s in self.manifest.get("shards", []):
            if fmt is not None and s["format"] != fmt:
                continue
            g = file_generation(s)
            if g > self.generation:
                continue
            path = posixpath.join(self.root, s["name"])
            gone, last = dead.get(s["name"], ((), 0))
            out.append(ShardRef(s["name"], s["format"], int(s.get("samples", -1)), int(s["bytes"]), s["sha256"],
                                self.url(s["name"]), path, g, tuple(int(p) for p in gone), int(last)))
        return out

    @property
    def live_samples(self) -> int:
        """Samples a reader of this generation reads (of the first format listed)."""
        listed = self.formats()
        return sum(r.live for r in self.shards(listed[0] if listed else None))

    def formats(self) -> list[str]:
        return list(self.manifest.get("formats", []))

    def path(self, name: str) -> str:
        return posixpath.join(self.root, name)

    @property
    def is_local(self) -> bool:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return protocol in ("file", "local")

    def url(self, name: str) -> str:
        """A file of DEST as other libraries take it: a plain local path, or the fsspec URL."""
        path = self.path(name)
        return path if self.is_local else self.fs.unstrip_protocol(path)


def open_output(dest: str, storage_options: dict[str, Any] | None = None, generation: int | None = None) -> Output:
    """Open DEST at `generation` (default: the latest complete one); `OutputError` with a one-line
    reason when it is missing, unfinished or not ours, or has no such generation."""
    from fsspec.core import url_to_fs

    try:
        fs, root = url_to_fs(dest, **(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise OutputError(f"cannot open {dest}: {exc}") from None
    root = root.rstrip("/") or root
    path = posixpath.join(root, MANIFEST_FILE)
    try:
        if not fs.exists(path):
            if not fs.exists(root):
                raise OutputError(f"{dest}: no such folder")
            if not fs.isdir(root):
                raise OutputError(f"{dest} is a file, not a conversion output folder")
            if fs.exists(posixpath.join(root, RUN_FILE)):
                raise OutputError(f"{dest}: the conversion has not finished (no {MANIFEST_FILE} yet); "
                                  "rerun the same convert command to complete it")
            raise OutputError(f"{dest} is not a resize-pipeline output (no {MANIFEST_FILE})")
        with fs.open(path, "r", encoding="utf-8") as fh:
            manifest = json.load(fh)
    except OutputError:
        raise
    except (OSError, ValueError) as exc:
        raise OutputError(f"cannot read {dest}/{MANIFEST_FILE}: {type(exc).__name__}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("tool") != "resize_pipeline" or "shards" not in manifest:
        raise OutputError(f"{dest}/{MANIFEST_FILE} was not written by resize-pipeline")
    from resize_pipeline.readers.generations import choose

    return Output(dest, fs, root, manifest, choose(manifest, generation, dest))


def shard_urls(dest: str, fmt: str = "webdataset", storage_options: dict[str, Any] | None = None,
               generation: int | None = None) -> list[str]:
    """The complete shards of `fmt` listed in DEST's manifest, as URLs, in order (of `generation`:
    default the latest; their superseded samples are the readers' to skip: `superseded`).

    Works on any output: ``--format both`` (only the `fmt` files), one shard or many, local or fsspec.
    """
    out = open_output(dest, storage_options, generation)
    refs = out.shards(fmt)
    if not refs:
        raise OutputError(f"{dest} has no {fmt} shards (formats: {', '.join(out.formats()) or 'none'})")
    return [r.url for r in refs]


def superseded(dest: str, storage_options: dict[str, Any] | None = None,
               generation: int | None = None) -> set[tuple[str, str]]:
    """``(shard file name, sample key)`` of every sample superseded up to `generation` (default: the
    latest): what a reader built on the formats' own libraries filters out (`docs/reading.md`)."""
    import pyarrow.parquet as pq

    from resize_pipeline.readers.generations import superseded_files

    out = open_output(dest, storage_options, generation)
    found: set[tuple[str, str]] = set()
    for name in superseded_files(out.manifest, out.generation):
        with out.fs.open(out.path(name), "rb") as fh:
            t = pq.read_table(fh, columns=["file", "key"], use_threads=False)  # records.read_table
        found.update(zip(t.column("file").to_pylist(), t.column("key").to_pylist(), strict=True))
    return found
