"""``inspect --verify`` for generations: every generation's record files and its shards' input records
against the sizes and sha256s recorded for them (the shard files themselves: `inspection.verify_shards`)."""

from __future__ import annotations

import hashlib
from typing import Any

from resize_pipeline.readers.output import Output, open_output


def verify_generations(dest: str, storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each generation's record files (records, superseded samples) and its shards' input records,
    against the sizes and sha256s the manifest and stats recorded: one ``{generation, ok, reason}``
    per generation (every generation, whatever the latest is)."""
    from resize_pipeline.layout import inputs_name
    from resize_pipeline.readers.generations import entries

    out = open_output(dest, storage_options)
    m = out.manifest
    stats_by_gen: dict[int, list[dict[str, Any]]] = {}
    for st in m.get("shard_stats", []):
        stats_by_gen.setdefault(int(st.get("generation", 1)), []).append(st)
    results = []
    for g in entries(m):
        number = int(g.get("generation", 1))
        refs = [(k, g[k]) for k in ("records", "superseded") if isinstance(g.get(k), dict)]
        refs += [(f"input record of {st['name']}", dict(st["inputs"], name="/".join(inputs_name(st["name"]))))
                 for st in stats_by_gen.get(number, []) if isinstance(st.get("inputs"), dict)]
        problems = []
        for what, ref in refs:
            problem = _check_file(out, str(ref.get("name")), ref.get("bytes"), ref.get("sha256"))
            if problem:
                problems.append(f"{what} ({ref.get('name')}): {problem}")
        results.append({"generation": number, "ok": not problems, "files": len(refs),
                        "reason": "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")})
    return results


def _check_file(out: Output, name: str, size: Any, sha256: Any) -> str:
    h, n = hashlib.sha256(), 0
    try:
        with out.fs.open(out.path(name), "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
                n += len(chunk)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"
    if size is not None and n != size:
        return f"{n} bytes, recorded {size}"
    if sha256 is not None and h.hexdigest() != sha256:
        return f"sha256 {h.hexdigest()[:16]}..., recorded {str(sha256)[:16]}..."
    return ""
