"""What in DEST belongs to this tool, and what it may therefore replace or delete.

The tool deletes only what its own records say it wrote: the files listed by ``_stats/*.json``,
shard files named by the ``outputs`` pattern recorded in ``_run.json`` (prefix, digits, formats,
count), its own JSON documents (``_run.json``, ``_manifest.json``, ``_errors.jsonl``,
``_lock.json``, ``_stats/{shard}.json``), the DALI index files ``inspect --dali-index`` writes beside
our tars (``{shard}.idx``, ``_dali_index.json``) and temporary files of exactly its temp-name pattern whose
final name is one of those. Anything else in DEST is left alone, with or without ``--overwrite``.

Without ``_run.json`` DEST holds nothing of ours: ``--overwrite`` there is refused when DEST holds
any file, and a plain run is refused when a file is in the way of a name it would write. SOURCE and
DEST may not contain each other (`check_overlap`), so converting a folder into itself is refused
before anything is listed as input or written.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import asdict, dataclass
from typing import Any

from resize_pipeline.errors import ConfigError, OutputError
from resize_pipeline.shards import STATS_DIR, shard_width
from resize_pipeline.sinks.dest import TEMP_RE, Dest
from resize_pipeline.sinks.lock import LOCK_FILE

RUN_FILE = "_run.json"
MANIFEST_FILE = "_manifest.json"
ERRORS_FILE = "_errors.jsonl"
#: DALI index files' record, written by ``inspect --dali-index`` (`readers.dali.write_dali_indexes`)
DALI_INDEX_RECORD = "_dali_index.json"
#: this tool's own documents at the top of DEST
DOCUMENTS = (RUN_FILE, MANIFEST_FILE, ERRORS_FILE, LOCK_FILE, DALI_INDEX_RECORD)
EXTENSIONS = {"webdataset": "tar", "parquet": "parquet"}
#: digits in shard names: `shards.shard_width` gives at least 5; 20 hold any 64-bit count
MIN_WIDTH, MAX_WIDTH = 5, 20


@dataclass(frozen=True, slots=True)
class OutputNames:
    """The shard file names a run writes: ``{prefix}-{index:0{width}d}[-{part:03d}].{ext}``."""

    prefix: str
    width: int
    shards: int
    exts: tuple[str, ...]
    parts: bool

    @classmethod
    def of(cls, config, n_inputs: int) -> OutputNames:
        n_shards = -(-n_inputs // config.samples_per_shard)
        return cls(config.shard_prefix, shard_width(n_inputs, config.samples_per_shard), n_shards,
                   tuple(EXTENSIONS[f] for f in config.formats), config.max_shard_bytes is not None)

    @classmethod
    def from_record(cls, run: dict[str, Any]) -> OutputNames | None:
        """From ``_run.json`` (its ``outputs``; for records of release 0.1.0, its config)."""
        out = run.get("outputs")
        try:
            if isinstance(out, dict):
                return cls(str(out["prefix"]), int(out["width"]), int(out["shards"]),
                           tuple(str(e) for e in out["exts"]), bool(out["parts"]))
            cfg, n = run.get("config", {}), int(run.get("inputs", 0))
            per = int(cfg["samples_per_shard"])
            fmt = cfg["format"]
            exts = ("tar", "parquet") if fmt == "both" else (EXTENSIONS[fmt],)
            return cls(str(cfg.get("shard_prefix", "shard")), shard_width(n, per), -(-n // per), exts,
                       cfg.get("max_shard_bytes") is not None)
        except (KeyError, TypeError, ValueError):
            return None

    @staticmethod
    def problem(out: Any) -> str | None:
        """What is wrong with a recorded ``outputs`` (None: a record this tool could have written). A
        torn or edited one must not decide what ``--overwrite`` deletes (a width of 0 matches names
        without digits, a huge one breaks the pattern)."""
        if not isinstance(out, dict):
            return "outputs is not an object"
        prefix, width, shards, exts = out.get("prefix"), out.get("width"), out.get("shards"), out.get("exts")
        if not isinstance(prefix, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,200}", prefix):
            return "outputs.prefix is not a shard prefix"
        if not isinstance(width, int) or isinstance(width, bool) or not MIN_WIDTH <= width <= MAX_WIDTH:
            return f"outputs.width is not an integer in {MIN_WIDTH}..{MAX_WIDTH}"
        if not isinstance(shards, int) or isinstance(shards, bool) or not 0 <= shards < 10**width:
            return "outputs.shards is not a shard count"
        if not isinstance(exts, list) or not exts or not all(e in EXTENSIONS.values() for e in exts):
            return "outputs.exts is not a list of shard extensions"
        if not isinstance(out.get("parts"), bool):
            return "outputs.parts is not true or false"
        return None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exts"] = list(self.exts)
        return d

    def _pattern(self) -> re.Pattern[str]:
        part = r"(?:-\d{3})?" if self.parts else ""
        exts = "|".join(re.escape(e) for e in self.exts)
        return re.compile(rf"^{re.escape(self.prefix)}-(\d{{{self.width}}}){part}\.(?:{exts})$")

    def matches(self, name: str) -> bool:
        """Whether `name` is one of this run's shard file names."""
        m = self._pattern().match(name)
        return m is not None and int(m.group(1)) < self.shards


def _ours(name: str, names: list[OutputNames], in_stats: bool = False) -> bool:
    """A name this tool writes (a temp file of such a name included)."""
    m = TEMP_RE.match(name)
    if m:
        name = m.group("final")
    if in_stats:
        return name.endswith(".json") and any(n.matches(f"{name[:-5]}.{n.exts[0]}") for n in names)
    if name.endswith(".idx"):  # a DALI index beside one of our tars
        return any(n.matches(f"{name[:-4]}.tar") for n in names if "tar" in n.exts)
    return name in DOCUMENTS or any(n.matches(name) for n in names)


def _few(names: list[str], n: int = 4) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" (+{len(names) - n} more)" if len(names) > n else "")


def check_not_in_the_way(dest: Dest, entries: dict[str, str], names: OutputNames) -> None:
    """Refuse a folder where this run must write a file (``shard-00000.tar/``, ``_manifest.json/``),
    or a file where it needs its ``_stats/`` folder: never write *into* them."""
    blocked = sorted(e for e, kind in entries.items()
                     if kind == "directory" and (e in DOCUMENTS or names.matches(e)))
    if blocked:
        raise OutputError(f"{dest.url} holds a folder named like an output file ({_few(blocked)}); "
                          "move it away or choose another destination")
    if entries.get(STATS_DIR) == "file":
        raise OutputError(f"{posixpath.join(dest.url, STATS_DIR)} is a file where this tool keeps its shard "
                          "records; move it away or choose another destination")


def check_foreign(dest: Dest, entries: dict[str, str], names: OutputNames, overwrite: bool) -> None:
    """DEST without ``_run.json``: nothing in it is ours. ``--overwrite`` is refused if it holds
    anything (it would have nothing of ours to replace); a plain run if a file is in its way."""
    leftovers = {LOCK_FILE}  # a run killed before it wrote _run.json leaves its lock at most
    present = sorted(e for e in entries if e not in leftovers and not (TEMP_RE.match(e) and _ours(e, [names])))
    if overwrite and present:
        raise OutputError(f"--overwrite: {dest.url} holds files this tool did not write (no {RUN_FILE}): "
                          f"{_few(present)}; it only replaces its own output: choose an empty or new destination")
    in_way = [e for e in present if e in (MANIFEST_FILE, ERRORS_FILE, STATS_DIR) or names.matches(e)]
    if in_way:
        raise OutputError(f"{dest.url} already holds {_few(in_way)}, which this tool did not write (no {RUN_FILE}); "
                          "choose an empty or new destination")


def clear_dest(dest: Dest, old: dict[str, Any], names: OutputNames) -> int:
    """``--overwrite``: remove what the earlier run's records say it wrote, nothing else: the files its
    stats list, shard files of its recorded name pattern, its stats, manifest, error list and temp
    files. ``_run.json`` stays until the caller replaces it (DEST is never without its record), the
    lock is the caller's. Returns the number of files removed."""
    recorded = [n for n in (OutputNames.from_record(old), names) if n is not None]
    stats = {b for b, kind in dest.entries(STATS_DIR).items() if kind == "file" and _ours(b, recorded, in_stats=True)}
    listed: set[str] = set()
    for base in sorted(stats):
        if TEMP_RE.match(base):
            continue
        try:
            doc = dest.read_json(STATS_DIR, base)
        except (OSError, ValueError):
            continue  # torn: its shard's files are still matched by the recorded name pattern
        files = doc.get("files", []) if isinstance(doc, dict) else []
        listed |= {f["name"] for f in files if isinstance(f, dict) and isinstance(f.get("name"), str)
                   and "/" not in f["name"] and f["name"] not in DOCUMENTS}
    removed = 0
    for base, kind in sorted(dest.entries().items()):
        if kind == "file" and base not in (RUN_FILE, LOCK_FILE) and (base in listed or _ours(base, recorded)):
            dest.remove(base)
            removed += 1
    for base in sorted(stats):  # the records last: a crash in between leaves them to be redone
        dest.remove(STATS_DIR, base)
        removed += 1
    if not dest.object_store and dest.entries().get(STATS_DIR) == "directory" and not dest.entries(STATS_DIR):
        dest.remove(STATS_DIR, recursive=True)  # empty: ours (a folder still holding a file of yours stays)
    return removed


def remove_partials(dest: Dest, names: list[OutputNames]) -> None:
    """Temporary files of a killed run (a worker killed in the middle of a commit): ours only, by
    their exact temp-name pattern and a final name this tool writes."""
    for base, kind in dest.entries().items():
        if kind == "file" and TEMP_RE.match(base) and _ours(base, names):
            dest.remove(base)
    for base, kind in dest.entries(STATS_DIR).items():
        if kind == "file" and TEMP_RE.match(base) and _ours(base, names, in_stats=True):
            dest.remove(STATS_DIR, base)


# ------------------------------------------------------------------------------ SOURCE vs DEST
def _location(url: str, storage_options: dict[str, Any] | None) -> tuple[type, str]:
    from resize_pipeline.urls import is_local_fs, url_to_fs

    fs, path = url_to_fs(url, storage_options)
    if any(c in path for c in "*?["):  # a glob: what it can match lies below its fixed part
        fixed = []
        for part in path.split("/"):
            if any(c in part for c in "*?["):
                break
            fixed.append(part)
        path = "/".join(fixed) or "/"
    if is_local_fs(fs):
        path = os.path.realpath(path)
    return type(fs), path.rstrip("/") or "/"


def _inside(a: str, b: str) -> bool:
    return a == b or a.startswith(b if b.endswith("/") else b + "/")


def check_overlap(source: str, dest: str, storage_options: dict[str, Any] | None = None) -> None:
    """Refuse SOURCE inside DEST and DEST inside SOURCE (also through symlinks, ``file://`` URLs, ``..``):
    the job would list its own output as input, or its output could overwrite its input."""
    try:
        kind_s, src = _location(source, storage_options)
        kind_d, dst = _location(dest, storage_options)
    except (ImportError, ValueError, OSError):
        return  # cannot be opened: the listing or DEST says why
    if kind_s is not kind_d:
        return
    if _inside(src, dst):
        what = "is DEST itself" if src == dst else "is inside DEST"
        raise ConfigError(f"SOURCE {source} {what} ({dest}): the output would be mixed with its input; "
                          "choose a DEST outside SOURCE")
    if _inside(dst, src):
        raise ConfigError(f"DEST {dest} is inside SOURCE {source}: the output would be listed as input on the "
                          "next run; choose a DEST outside SOURCE")
