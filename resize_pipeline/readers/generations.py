"""What a reader of generation g sees: the shard files of generations 1..g, minus the samples those
generations superseded.

`_manifest.json` lists every shard file of every generation (``generation`` in each entry) and the
generations themselves (``generations``: counts, the record files, the superseded samples' file). A
manifest written before generations existed is generation 1, whole. Nothing a generation published
is ever rewritten: generation g+1 adds shard files and its own superseded file, then replaces the
manifest, so a reader that opened generation g keeps reading exactly g.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from resize_pipeline.errors import OutputError


def entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's generations, oldest first (one, synthesised, for a manifest without them)."""
    gens = manifest.get("generations")
    if isinstance(gens, list) and gens:
        return [g for g in gens if isinstance(g, dict)]
    counts = manifest.get("counts", {})
    return [{"generation": 1, "created": manifest.get("created"), "fingerprint": manifest.get("fingerprint"),
             "shards": sorted({str(s.get("shard", "")) for s in manifest.get("shards", [])} - {""}),
             "counts": {"listed": counts.get("total", 0), "new": counts.get("total", 0),
                        "written": counts.get("written", 0), "failed": counts.get("failed", 0)}, "legacy": True}]


def latest(manifest: dict[str, Any]) -> int:
    """The newest complete generation of a manifest."""
    return int(entries(manifest)[-1].get("generation", 1))


def file_generation(entry: dict[str, Any]) -> int:
    """The generation a manifest shard-file entry belongs to (1 for manifests without generations)."""
    g = entry.get("generation", 1)
    return int(g) if isinstance(g, int) and not isinstance(g, bool) else 1


def choose(manifest: dict[str, Any], generation: int | None, dest: str = "DEST") -> int:
    """`generation` checked against the manifest (None: the latest complete one)."""
    last = latest(manifest)
    if generation is None:
        return last
    if isinstance(generation, bool) or not isinstance(generation, int) or not 1 <= generation <= last:
        raise OutputError(f"{dest} has generations 1..{last}; no generation {generation!r}")
    return generation


def superseded_files(manifest: dict[str, Any], generation: int) -> list[str]:
    """The superseded-samples files (paths relative to DEST) of generations 1..`generation`."""
    return [name for _, name in _superseded_refs(manifest, generation)]


def _superseded_refs(manifest: dict[str, Any], generation: int) -> list[tuple[int, str]]:
    out = []
    for g in entries(manifest):
        ref, number = g.get("superseded"), int(g.get("generation", 1))
        if number <= generation and isinstance(ref, dict) and isinstance(ref.get("name"), str):
            out.append((number, ref["name"]))
    return out


def dead_positions(fs: Any, root: str, manifest: dict[str, Any], generation: int) -> dict[str, np.ndarray]:
    """Shard file name -> the sorted positions of its samples superseded up to `generation`."""
    return {f: p for f, (p, _) in dead_by_file(fs, root, manifest, generation).items()}


def dead_by_file(fs: Any, root: str, manifest: dict[str, Any], generation: int) -> dict[str, tuple[np.ndarray, int]]:
    """Shard file name -> (sorted superseded positions, the last generation that superseded one)."""
    import posixpath

    import pyarrow.parquet as pq

    found: dict[str, list[np.ndarray]] = defaultdict(list)
    last: dict[str, int] = {}
    for g, name in _superseded_refs(manifest, generation):
        try:
            with fs.open(posixpath.join(root, name), "rb") as fh:
                t = pq.read_table(fh, columns=["file", "position"], use_threads=False)  # records.read_table
        except (OSError, ValueError) as exc:
            raise OutputError(f"cannot read {name} (the samples a generation superseded): {exc}") from None
        files = t.column("file").to_numpy(zero_copy_only=False)
        pos = t.column("position").to_numpy()
        order = np.argsort(files, kind="stable")
        files, pos = files[order], pos[order]
        if len(files):
            bounds = np.flatnonzero(files[1:] != files[:-1]) + 1
            for a, b in zip(np.r_[0, bounds], np.r_[bounds, len(files)], strict=True):
                found[str(files[a])].append(pos[a:b])
                last[str(files[a])] = g
    return {f: (np.unique(np.concatenate(p)), last[f]) for f, p in found.items()}


def live_to_physical(dead: np.ndarray, live: int) -> int:
    """The position in a file of its `live`-th sample that is not in `dead` (sorted)."""
    p = live
    for d in dead.tolist():  # ascending: each dead position at or before p pushes p one further
        if d <= p:
            p += 1
        else:
            break
    return p


def live_mask(n: int, dead: np.ndarray | None) -> np.ndarray:
    """A boolean mask over a file's `n` samples: True where the sample is live."""
    mask = np.ones(n, dtype=bool)
    if dead is not None and len(dead):
        mask[dead[dead < n]] = False
    return mask
