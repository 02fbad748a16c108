"""`convert(config)`: the one public function behind ``resize-pipeline convert``.

    resolve (device, decoder, resizer: checked here, before DEST is touched)
      -> list SOURCE -> prepare DEST (resume guard) -> plan shards -> skip done shards
      -> engine (local or Ray) runs `ShardRunner`s -> finalize (_errors.jsonl, _manifest.json)
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import time
from dataclasses import dataclass, field
from typing import Any

from resize_pipeline.config import ConvertConfig, ray_knobs_from_env
from resize_pipeline.errors import ConfigError, OutputError, SourceError
from resize_pipeline.manifest import (
    ERRORS_FILE,
    MANIFEST_FILE,
    completed_shards,
    finalize,
    prepare_dest,
    remove_partials,
)
from resize_pipeline.shards import ShardResult, plan_shards
from resize_pipeline.sources import list_source
from resize_pipeline.urls import normalise

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
    #: inputs converted by this run (resumed shards excluded)
    converted: int = 0

    @property
    def images_per_second(self) -> float:
        """Inputs this run converted per second (shards reused from an earlier run do not count)."""
        return self.converted / self.seconds if self.seconds > 0 else 0.0

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


def _components(built: list[dict[str, Any]], config, resolved) -> dict[str, Any]:
    """What the workers reported they built (the first one's, plus any that differ)."""
    distinct: list[dict[str, Any]] = []
    for b in built:
        b = {k: v for k, v in b.items() if k != "pid"}
        if b not in distinct:
            distinct.append(b)
    out: dict[str, Any] = dict(distinct[0]) if distinct else {}
    if len(distinct) > 1:
        out["workers"] = distinct
    out["resolved"] = resolved.to_dict()
    out["requested"] = {"decoder": config.decoder, "device": config.device, "resizer": config.resizer}
    return out


def _previous_components(dest, run: dict[str, Any]) -> dict[str, Any] | None:
    """The components an earlier run of the same job recorded (kept when this run converts nothing)."""
    from resize_pipeline.manifest import MANIFEST_FILE

    try:
        old = dest.read_json(MANIFEST_FILE)
    except (OSError, ValueError):
        return None
    if isinstance(old, dict) and old.get("fingerprint") == run["fingerprint"]:
        return old.get("components")
    return None


def convert(config: ConvertConfig, *, progress: bool | None = None) -> Summary:
    """Convert `config.source` into shards in `config.dest`; resumes completed shards.

    Raises `ConfigError` (nothing can work: bad device, decoder, resizer), `SourceError` or
    `OutputError` when the job cannot run at all; a config error leaves DEST untouched. Bad inputs
    never raise: they are recorded in ``_errors.jsonl``.
    """
    from resize_pipeline.preflight import check, resolve

    t0 = time.perf_counter()
    config = config.replace(source=normalise(config.source), dest=normalise(config.dest))
    checked = check(config)  # before anything else: a config error costs nothing and touches nothing
    if config.engine == "ray":
        try:
            from workers.ray_engine import session
        except ImportError as exc:
            raise ConfigError(f"--engine ray needs `pip install 'resize-pipeline[ray]'`: {exc}") from None
        config = ray_knobs_from_env(config)
        cluster: Any = session(config)
    else:
        cluster = contextlib.nullcontext(None)
    with cluster as cluster_gpus:
        resolved = resolve(config, gpus=cluster_gpus, checked=checked)
        return _convert(config, resolved, t0, progress)


def _convert(config: ConvertConfig, resolved, t0: float, progress: bool | None) -> Summary:
    from resize_pipeline.sinks.dest import Dest

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
        dest = Dest(config.dest, config.storage_options)
        if dest.exists() and not dest.isdir():
            raise OutputError(f"DEST {config.dest} is a file, not a folder: give a folder (it is created if missing)")
        dest.makedirs()
    except OutputError:
        raise
    except (OSError, ValueError, ImportError) as exc:
        raise OutputError(f"cannot write to {config.dest}: {type(exc).__name__}: {exc}") from None
    run = prepare_dest(dest, config, resolved, listing.items)
    previous = _previous_components(dest, run)
    remove_partials(dest)
    tasks = plan_shards(listing.items, config.samples_per_shard, config.shard_prefix)
    done = completed_shards(dest, tasks)
    pending = [t for t in tasks if t.index not in done]
    if done:
        log.info("resuming: %d of %d shards already complete", len(done), len(tasks))
    results: list[ShardResult] = list(done.values())
    built: list[dict[str, Any]] = []

    show = (not config.quiet) if progress is None else progress
    from tqdm.auto import tqdm

    bar = tqdm(total=len(listing.items), initial=sum(r.total for r in results), unit="img",
               disable=not show, desc="convert", dynamic_ncols=True)
    with bar:
        if config.engine == "ray":
            from workers.ray_engine import run_ray

            stream = run_ray(config, resolved, pending, on_progress=bar.update)
        else:
            from resize_pipeline.engine.local import run_local

            stream = run_local(config, resolved, pending, on_progress=bar.update)
        for res in stream:
            if res.built and res.built not in built:
                built.append(res.built)
            results.append(res)
    seconds = time.perf_counter() - t0
    remove_partials(dest)  # temp files of a worker that died mid-commit (its shard was redone)
    converted = sum(r.total for r in results) - sum(r.total for r in done.values())
    manifest = finalize(
        dest, config, run, results,
        listing_kind=listing.kind, classes=listing.classes, skipped=listing.skipped,
        seconds=seconds, components=_components(built, config, resolved) if built else previous
        or _components(built, config, resolved),
        converted=converted,
    )
    c = manifest["counts"]
    return Summary(c["total"], c["written"], c["failed"], seconds, config.dest, len(done), len(tasks), manifest,
                   converted)
