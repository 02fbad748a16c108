"""DEST's layout: every name this tool writes in DEST, what each file means, and which names are ours.

    DEST/
      {prefix}-{index}.{ext}         a shard file (``shard-00000.tar``); with ``--max-shard-bytes``
      {prefix}-{index}-{part}.{ext}  its parts (``shard-00000-001.parquet``); ext per `formats`
      {shard}.idx                    DALI index of a tar (``inspect --dali-index``)
      _stats/{shard}.json            a shard's commit record (counts, files with sha256, failed
                                     inputs), written after its files: a shard is complete only with it
      _listing/part-{p}.parquet      the listing, in order, in parts of whole shards (`listing_part`): the
                                     rows (`sources.base.ROW_COLUMNS`) each worker reads for its shard
                                     (a shard task is a row range of a part), with their digests
      _listing/run-{t}-{k}.parquet   sorted runs of a folder listed in parallel (Ray), merged into the
                                     parts, then removed (`listing_run`)
      _listing/_index.json           written when the listing is complete: its parts, rows and digests
      _inputs/{shard}.parquet        the inputs a shard took (key, identity, stamp, written or failed,
                                     its sample's place, sha256 with --dedup): what DEST holds, for
                                     ``--update``; written after the shard's files, before its stats
      _generations/{g}.plan.parquet  the rows generation g converts, and
      _generations/{g}.pending.parquet  the records it will keep if its conversions succeed: written
                                     before its shards (``--update``: a rerun resumes exactly this
                                     plan), removed once generation g is published
      _generations/{g}.records.parquet  generation g's records that are not in a shard: inputs held as
                                     duplicates (``--dedup``), samples it supersedes, restamped inputs
      _generations/{g}.superseded.parquet  the samples readers of generation >= g skip: file, position,
                                     key (``--on-change replace``, ``--prune-deleted``)
      _run.json                      the job's record, written before any shard: config fingerprint,
                                     the listing's extent and source stamp, the shard names it writes
                                     (`OutputNames`)
      _manifest.json                 written last, from the commit records: what readers read
      _errors.jsonl                  every failed input with its reason (written with the manifest)
      _lock.json                     only while a job runs (`sinks.lock`)
      {shard}.g{g}.idx               DALI index of a tar without the samples generation g superseded
      _dali_index.json               which tar each DALI index describes (``inspect --dali-index``)
      .{name}.partial-{pid}-{token}  a file being written (local disks; renamed when complete)

This module only names things. Who may delete what follows from these names (`ownership`); what the
records hold is `manifest`'s (run record, commit records, manifest) and `sinks.lock`'s; how files
are written is `sinks.dest`'s.

What is *ours* in DEST (`is_ours`): our documents, shard files matching a recorded `OutputNames`
pattern, commit and input records of such shards, generation records, DALI indexes beside our tars,
listing parts, runs and index in `_listing/`, and temp files whose final name is one of those.
Nothing else is ever replaced or deleted.

Shard numbers continue across generations (``--update``): generation g's shards follow the last
shard of g-1, named with the width the first generation chose (``shard-100000`` after
``shard-99999``: the number is never cut, and a name is ours only in exactly that spelling).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from resize_pipeline import formats

MANIFEST_FILE = "_manifest.json"
RUN_FILE = "_run.json"
ERRORS_FILE = "_errors.jsonl"
LOCK_FILE = "_lock.json"
#: DALI index files' record, written by ``inspect --dali-index`` (`readers.dali.write_dali_indexes`)
DALI_INDEX_RECORD = "_dali_index.json"
STATS_DIR = "_stats"
#: the listing of the job (`listing_part`, `listing_run`, `LISTING_INDEX`)
LISTING_DIR = "_listing"
#: in `LISTING_DIR`: the record of a complete listing
LISTING_INDEX = "_index.json"
#: per-shard input records (`inputs_name`)
INPUTS_DIR = "_inputs"
#: per-generation records (`generation_file`)
GENERATIONS_DIR = "_generations"
#: the folders of DEST that hold only this tool's records
RECORD_DIRS = (STATS_DIR, INPUTS_DIR, GENERATIONS_DIR, LISTING_DIR)
#: what a generation file holds (`generation_file`)
GENERATION_KINDS = ("plan", "pending", "records", "superseded")
#: this tool's own documents at the top of DEST
DOCUMENTS = (RUN_FILE, MANIFEST_FILE, ERRORS_FILE, LOCK_FILE, DALI_INDEX_RECORD)

#: digits in shard names: `shard_width` gives at least 5; 20 hold any 64-bit count
MIN_WIDTH, MAX_WIDTH = 5, 20

#: the most shards a DEST holds (all generations together)
MAX_SHARDS = 10**15
#: a file being written: ``.{final name}.partial-{pid}-{token}`` (`temp_name`)
TEMP_RE = re.compile(r"^\.(?P<final>.+)\.partial-\d+-[0-9a-f]{8}$")


def temp_name(name: str) -> str:
    """A fresh temporary name for final name `name` (hidden, unique per process and call)."""
    return f".{name}.partial-{os.getpid()}-{secrets.token_hex(4)}"


def final_name(name: str) -> str | None:
    """The final name a temporary file `name` stands for; None when it is not one of ours."""
    m = TEMP_RE.match(name)
    return m.group("final") if m else None


# ----------------------------------------------------------------------------------------- shards
def shard_width(n: int, samples_per_shard: int) -> int:
    """Digits in the shard names of a listing of `n` inputs (at least 5)."""
    return max(5, len(str(max(0, (n - 1) // samples_per_shard))))


def shard_name(prefix: str, index: int, width: int) -> str:
    """Shard `index`'s name without extension: ``shard-00042``."""
    return f"{prefix}-{index:0{width}d}"


def shard_file(shard: str, ext: str, part: int | None = None) -> str:
    """A shard's file name: ``{shard}.{ext}``, or part `part` of it: ``{shard}-{part:03d}.{ext}``."""
    return f"{shard}.{ext}" if part is None else f"{shard}-{part:03d}.{ext}"


def stats_name(shard: str) -> tuple[str, str]:
    """Where shard `shard`'s commit record lives, relative to DEST."""
    return STATS_DIR, f"{shard}.json"


# ---------------------------------------------------------------------------------------- listing
_LISTING_RE = re.compile(r"^(?:part-\d{5,}|run-\d{5,}-\d{5,})\.parquet$")


def listing_part(index: int) -> tuple[str, str]:
    """Where listing part `index` lives, relative to DEST (``_listing/part-00000.parquet``)."""
    return LISTING_DIR, f"part-{index:05d}.parquet"


def listing_run(task: int, run: int) -> tuple[str, str]:
    """Where sorted run `run` of listing task `task` lives, relative to DEST."""
    return LISTING_DIR, f"run-{task:05d}-{run:05d}.parquet"


def inputs_name(shard: str) -> tuple[str, str]:
    """Where shard `shard`'s input record lives, relative to DEST."""
    return INPUTS_DIR, f"{shard}.parquet"


def generation_file(generation: int, kind: str) -> tuple[str, str]:
    """Where generation `generation`'s `kind` record (one of `GENERATION_KINDS`) lives, relative to DEST."""
    if kind not in GENERATION_KINDS or not 1 <= generation < 10**6:
        raise ValueError(f"generation file {generation} {kind!r}")
    return GENERATIONS_DIR, f"{generation:06d}.{kind}.parquet"


_GENERATION_RE = re.compile(rf"^\d{{6}}\.(?:{'|'.join(GENERATION_KINDS)})\.parquet$")


def dali_index_name(shard_file_name: str, generation: int | None = None) -> str:
    """``shard-00000.tar`` -> ``shard-00000.idx`` (DALI's wds2idx default: the name up to its first dot);
    with `generation`: ``shard-00000.g000003.idx``, the index without the samples superseded up to
    that generation."""
    stem = shard_file_name.split(".", 1)[0]
    return f"{stem}.idx" if generation is None else f"{stem}.g{generation:06d}.idx"


@dataclass(frozen=True, slots=True)
class OutputNames:
    """The shard file names a run writes: ``{prefix}-{index:0{width}d}[-{part:03d}].{ext}`` for
    ``index < shards``. Recorded in ``_run.json`` (``outputs``): what ``--overwrite`` and a resume may
    later remove."""

    prefix: str
    width: int
    shards: int
    exts: tuple[str, ...]
    parts: bool

    def __post_init__(self) -> None:
        # a record is read back from DEST: refuse what no run of ours writes (it would match nothing,
        # or everything), so that a hand-edited or foreign record can never widen what is deleted
        why = self.problem({**asdict(self), "exts": list(self.exts)})
        if why is not None:
            raise ValueError(why)

    @classmethod
    def of(cls, config, n_inputs: int) -> OutputNames:
        n_shards = -(-n_inputs // config.samples_per_shard)
        return cls(config.shard_prefix, shard_width(n_inputs, config.samples_per_shard), n_shards,
                   formats.extensions(config.formats), config.max_shard_bytes is not None)

    @classmethod
    def from_record(cls, run: dict[str, Any]) -> OutputNames | None:
        """From ``_run.json`` (its ``outputs``; for records of release 0.1.0, its config); None when
        the record does not hold a valid pattern."""
        out = run.get("outputs")
        try:
            if isinstance(out, dict):
                if cls.problem(out) is not None:
                    return None
                return cls(str(out["prefix"]), out["width"], out["shards"], tuple(str(e) for e in out["exts"]),
                           bool(out["parts"]))
            cfg, n = run.get("config", {}), int(run.get("inputs", 0))
            per = int(cfg["samples_per_shard"])
            return cls(str(cfg.get("shard_prefix", "shard")), shard_width(n, per), -(-n // per),
                       formats.extensions(formats.expand(cfg["format"])), cfg.get("max_shard_bytes") is not None)
        except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError, OverflowError):
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
        # generations continue the numbering past 10**width (names then grow by a digit)
        if not isinstance(shards, int) or isinstance(shards, bool) or not 0 <= shards <= MAX_SHARDS:
            return "outputs.shards is not a shard count"
        known = {f.ext for f in formats.REGISTRY.values()}
        if not isinstance(exts, list) or not exts or not all(e in known for e in exts):
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
        return re.compile(rf"^{re.escape(self.prefix)}-(\d{{{self.width},}}){part}\.(?:{exts})$")

    def matches(self, name: str) -> bool:
        """Whether `name` is one of this run's shard file names (spelt exactly as `shard_name` spells it)."""
        m = self._pattern().match(name)
        if m is None:
            return False
        digits = m.group(1)
        return int(digits) < self.shards and shard_name(self.prefix, int(digits), self.width) == f"{self.prefix}-{digits}"


_GEN_INDEX_RE = re.compile(r"^(?P<stem>.+)\.g\d{6}\.idx$")


def is_ours(name: str, names: Iterable[OutputNames], in_stats: bool = False, folder: str | None = None) -> bool:
    """Whether `name` (a file at the top of DEST, or in the record folder `folder`: ``_stats/`` with
    `in_stats`, ``_inputs/``, ``_generations/``, ``_listing/``) is one this tool writes under the recorded `names`
    (a temp file of such a name included)."""
    names = list(names)
    name = final_name(name) or name
    folder = STATS_DIR if in_stats else folder
    if folder == LISTING_DIR:  # listing files are ours whatever the record says: their names are ours alone
        return name == LISTING_INDEX or _LISTING_RE.match(name) is not None
    if folder == STATS_DIR:
        return name.endswith(".json") and any(n.matches(shard_file(name[:-5], n.exts[0])) for n in names)
    if folder == INPUTS_DIR:
        return name.endswith(".parquet") and any(n.matches(shard_file(name[:-8], n.exts[0])) for n in names)
    if folder == GENERATIONS_DIR:
        return bool(_GENERATION_RE.match(name))
    if folder is not None:
        return False
    if name.endswith(".idx"):  # a DALI index beside one of our tars (of all samples, or of a generation's)
        m = _GEN_INDEX_RE.match(name)
        stem = m.group("stem") if m else name[:-4]
        return any(n.matches(f"{stem}.tar") for n in names if "tar" in n.exts)
    return name in DOCUMENTS or any(n.matches(name) for n in names)
