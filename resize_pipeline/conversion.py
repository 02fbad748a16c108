"""`convert(config)`: the one public function behind ``resize-pipeline convert``."""

from __future__ import annotations

import logging
import os
import posixpath
import time
from dataclasses import dataclass, field
from typing import Any

from fsspec.core import url_to_fs

from resize_pipeline.config import ConvertConfig
from resize_pipeline.errors import OutputError, SourceError
from resize_pipeline.manifest import (
    ERRORS_FILE,
    MANIFEST_FILE,
    completed_shards,
    finalize,
    prepare_dest,
    remove_partials,
)
from resize_pipeline.shards import plan_shards
from resize_pipeline.sources import list_source

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Summary:
    total: int
    written: int
    failed: int
    seconds: float
    dest: str
    resumed_shards: int = 0
    shards: int = 0
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0

    @property
    def manifest_path(self) -> str:
        return posixpath.join(self.dest, MANIFEST_FILE)

    @property
    def errors_path(self) -> str:
        return posixpath.join(self.dest, ERRORS_FILE)

    def line(self) -> str:
        return (
            f"{self.total} inputs: {self.written} written, {self.failed} failed "
            f"({self.images_per_second:.1f} img/s, {self.seconds:.1f} s) -> {self.dest}"
            + (f" [{self.resumed_shards} shard(s) reused]" if self.resumed_shards else "")
        )


def _normalise(url: str) -> str:
    return url if "://" in url else os.path.abspath(url)


def convert(config: ConvertConfig, *, progress: bool | None = None) -> Summary:
    """Convert `config.source` into shards in `config.dest`; resumes completed shards.

    Raises `SourceError` / `OutputError` / `ConfigError` when the job cannot run at all; bad inputs
    never raise, they are recorded in ``_errors.jsonl``.
    """
    t0 = time.perf_counter()
    config = config.replace(source=_normalise(config.source), dest=_normalise(config.dest))
    listing = list_source(
        config.source,
        storage_options=config.storage_options,
        path_column=config.path_column,
        label_column=config.label_column,
    )
    if not listing.items:
        raise SourceError(f"no images found in {config.source}")
    log.info("listed %d inputs (%s) from %s", len(listing.items), listing.kind, config.source)
    try:
        fs, root = url_to_fs(config.dest, **config.storage_options)
        fs.makedirs(root, exist_ok=True)
    except (OSError, ValueError, ImportError) as exc:
        raise OutputError(f"cannot write to {config.dest}: {exc}") from None
    run = prepare_dest(fs, root, config, listing.items)
    remove_partials(fs, root)
    tasks = plan_shards(listing.items, config.samples_per_shard, config.shard_prefix)
    done = completed_shards(fs, root, tasks)
    pending = [t for t in tasks if t.index not in done]
    if done:
        log.info("resuming: %d of %d shards already complete", len(done), len(tasks))
    results = list(done.values())

    show = (not config.quiet) if progress is None else progress
    from tqdm.auto import tqdm

    bar = tqdm(total=len(listing.items), initial=sum(r.total for r in results), unit="img",
               disable=not show, desc="convert", dynamic_ncols=True)
    with bar:
        if config.engine == "ray":
            try:
                from workers.ray_engine import run_ray
            except ImportError as exc:
                raise OutputError(f"the ray engine needs `pip install resize-pipeline[ray]`: {exc}") from None
            results.extend(run_ray(config, pending, on_progress=bar.update))
        else:
            from resize_pipeline.engine.local import run_local

            results.extend(run_local(config, pending, on_progress=bar.update))
    seconds = time.perf_counter() - t0
    remove_partials(fs, root)  # temp files of a worker that died mid-shard (its shard was redone)
    components = {}
    try:
        from resize_pipeline.stages import ConvertStage

        components = ConvertStage.describe_config(config)
    except Exception:  # noqa: BLE001 - descriptive only
        components = {"resizer": config.resizer, "decoder": config.decoder}
    manifest = finalize(
        fs, root, config, run, results,
        listing_kind=listing.kind, classes=listing.classes, skipped=listing.skipped,
        seconds=seconds, components=components,
    )
    c = manifest["counts"]
    return Summary(c["total"], c["written"], c["failed"], seconds, config.dest, len(done), len(tasks), manifest)
