"""What a conversion wrote: counts, shards, labels, output sizes, errors; shard checksums; a contact sheet.

`inspect_output(dest)` reads ``_manifest.json`` and ``_errors.jsonl`` and scans the shards once
(Parquet: the small columns, plus the image column for byte sizes, when there are no tars; WebDataset:
each sample's ``.json``/``.cls`` members and the member sizes from the tar headers). `verify_shards`
recomputes every shard's sha256 against the manifest. `contact_sheet` draws random samples with
their keys and labels. ``resize-pipeline inspect`` is the thin CLI over these.

A DEST grown by ``convert --update`` is inspected as one generation (the latest by default): its
shards and live samples; the report lists every generation (`Report.generations`), and
`generations.verify.verify_generations` checks each generation's record files and input records.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import posixpath
import random
import re
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from resize_pipeline import formats
from resize_pipeline.errors import OutputError
from resize_pipeline.layout import ERRORS_FILE
from resize_pipeline.readers.output import IMAGE_EXTS, Output, ShardRef, open_output, tar_samples

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SampleInfo:
    """One written sample as the scan sees it, with where its image bytes are."""

    key: str
    label: int
    label_name: str
    width: int
    height: int
    nbytes: int
    shard: str
    offset: int = -1  # tar: byte offset of the image member
    row: int = -1  # Parquet: row in the file


@dataclass
class Report:
    """Everything `inspect_output` found; `to_dict` is the ``--json`` document."""

    dest: str
    counts: dict[str, Any]
    formats: list[str]
    encode: str
    size: list[int]
    mode: str
    shards: list[dict[str, Any]]
    total_bytes: int
    classes: list[str]
    labels: dict[str, int]
    image_sizes: dict[str, int]
    payload_bytes: dict[str, float]
    errors: list[dict[str, Any]]
    scanned: str  # the format the scan read ("webdataset" or "parquet")
    not_scanned: list[str] = field(default_factory=list)  # shards left out of the scan (failed --verify)
    samples: list[SampleInfo] = field(default_factory=list, repr=False)  # the random picks (sheet)
    verify: list[dict[str, Any]] | None = None
    sheet: str | None = None
    generation: int = 1  # the generation inspected
    generations: list[dict[str, Any]] = field(default_factory=list)  # every generation's entry
    verify_generations: list[dict[str, Any]] | None = None

    @property
    def generations_ok(self) -> bool | None:
        return None if self.verify_generations is None else all(bool(v["ok"]) for v in self.verify_generations)

    @property
    def verified_ok(self) -> bool | None:
        if self.verify is None:
            return None
        return all(bool(v["ok"]) for v in self.verify) and self.generations_ok is not False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("samples")
        d["verified_ok"] = self.verified_ok
        return d

    def generation_lines(self) -> list[str]:
        """The generations section of `text` (only for a DEST grown by ``convert --update``)."""
        if len(self.generations) <= 1 and not any(g.get("kind") == "update" for g in self.generations):
            return []
        lines = [f"generations: {len(self.generations)} (inspected: {self.generation})"]
        for g in self.generations:
            c = g.get("counts", {})
            shards = g.get("shards", [])
            span = f"{shards[0]} .. {shards[-1]}" if len(shards) > 1 else (shards[0] if shards else "no shards")
            lines.append(f"  {g.get('generation'):>3} {g.get('created', '?')}  {span} ({len(shards)})  "
                         + ", ".join(f"{k} {c.get(k, 0)}" for k in ("new", "changed", "deleted", "duplicates",
                                                                      "failed", "superseded")))
        if self.verify_generations is not None:
            bad = [v for v in self.verify_generations if not v["ok"]]
            lines.append(f"verify: {len(self.verify_generations) - len(bad)}/{len(self.verify_generations)} "
                         "generations' records match the manifest")
            lines.extend(f"  MISMATCH generation {v['generation']}: {v['reason']}" for v in bad)
        return lines

    def text(self) -> str:
        c = self.counts
        lines = [
            f"{self.dest}: {c.get('total', 0)} inputs: {c.get('written', 0)} written, {c.get('failed', 0)} failed"
            + (f" ({', '.join(f'{k} {v}' for k, v in sorted(c.get('failed_by_stage', {}).items()))})"
               if c.get("failed_by_stage") else ""),
            f"output: {', '.join(self.formats)}, {self.encode}, {'x'.join(map(str, self.size))} {self.mode}",
            f"shards: {len(self.shards)} files, {_human(self.total_bytes)}",
        ]
        for s in self.shards:
            gone = f"  ({s['superseded']} superseded)" if s.get("superseded") else ""
            lines.append(f"  {s['name']:<28} {s['samples']:>8} samples {_human(s['bytes']):>10}{gone}")
        if self.not_scanned:
            lines.append(f"not scanned (failed verification): {', '.join(self.not_scanned)}")
        if self.labels:
            lines.append(f"labels ({len(self.labels)}, from the {self.scanned} shards):")
            width = max(len(k) for k in self.labels)
            top = max(self.labels.values())
            for name, n in self.labels.items():
                lines.append(f"  {name:<{width}} {n:>8} {'#' * max(1, round(30 * n / top)) if n else ''}")
        if self.image_sizes:
            lines.append("image sizes: " + ", ".join(f"{k} x{v}" for k, v in self.image_sizes.items()))
        if self.payload_bytes:
            p = self.payload_bytes
            lines.append("bytes per image: " + ", ".join(f"{k} {_human(p[k])}" for k in ("min", "p50", "p90", "p99", "max", "mean")))
        if self.errors:
            lines.append(f"most common errors (of {c.get('failed', 0)}; all in {ERRORS_FILE}):")
            for e in self.errors:
                lines.append(f"  {e['count']:>6} x {e['stage']}: {e['error_type']}: {e['error']}  (e.g. {e['example']})")
        lines.extend(self.generation_lines())
        if self.verify is not None:
            bad = [v for v in self.verify if not v["ok"]]
            listed = [v for v in self.verify if v.get("status") != "EXTRA"]
            good = sum(1 for v in listed if v["ok"])
            lines.append(f"verify: {good}/{len(listed)} shards match the manifest's sha256")
            lines.extend(f"  {v.get('status', 'MISMATCH')} {v['name']}: {v['reason']}" for v in bad)
        if self.sheet:
            lines.append(f"contact sheet: {self.sheet} ({len(self.samples)} samples)")
        return "\n".join(lines)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# --------------------------------------------------------------------------------------------- scan


def tar_infos(out: Output, ref: ShardRef) -> Iterator[SampleInfo]:
    """Each sample of a tar: sizes from the headers, label and size from the small members. Local
    files are read by seeking over image data; remote ones are streamed (one request, not one a sample)."""
    def flush(key: str, parts: dict[str, Any]) -> SampleInfo | None:
        img = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
        if img is None:
            return None
        info = parts.get("json") or {}
        cls = parts.get("cls")
        label = int(cls) if cls not in (None, b"") else int(info.get("label", -1))
        return SampleInfo(key, label, str(info.get("label_name", "") or ""), int(info.get("width", 0)),
                          int(info.get("height", 0)), img[1], ref.name, offset=img[0])

    mode = "r:" if out.is_local else "r|"
    with out.fs.open(ref.path, "rb") as fh, tarfile.open(fileobj=fh, mode=mode) as tf:  # type: ignore[call-overload]
        for key, members in tar_samples(tf):
            parts: dict[str, Any] = {}
            for ext, m in members:
                ext = ext.lower()
                if ext in ("json", "cls"):
                    data = tf.extractfile(m)
                    raw = data.read() if data else b""
                    try:
                        parts[ext] = json.loads(raw) if ext == "json" else raw.strip()
                    except ValueError:
                        parts[ext] = None
                else:
                    parts[ext] = (m.offset_data, m.size)
            s = flush(key, parts)
            if s is not None:
                yield s


def parquet_infos(out: Output, ref: ShardRef) -> Iterator[SampleInfo]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    with out.fs.open(ref.path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        row = 0
        for g in range(pf.num_row_groups):
            t = pf.read_row_group(g, columns=["key", "label", "label_name", "width", "height", "image"])
            image = t.column("image")
            if hasattr(image.type, "get_field_index") and image.type.get_field_index("bytes") >= 0:
                image = image.flatten()[image.type.get_field_index("bytes")]
            sizes = pc.binary_length(image).to_pylist()
            for key, label, name, w, h, n in zip(
                t.column("key").to_pylist(), t.column("label").to_pylist(), t.column("label_name").to_pylist(),
                t.column("width").to_pylist(), t.column("height").to_pylist(), sizes, strict=True,
            ):
                yield SampleInfo(key, -1 if label is None else int(label), name or "", int(w), int(h), int(n or 0),
                                 ref.name, row=row)
                row += 1


def _quantiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)

    def q(p: float) -> int:
        return v[min(len(v) - 1, int(round(p * (len(v) - 1))))]

    return {"min": v[0], "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": v[-1],
            "mean": round(sum(v) / len(v), 1)}


def _normalise(message: str, key: str, path: str) -> str:
    """An error message with the sample's own path/key and numbers masked, so alike errors group."""
    for s, repl in ((path, "<path>"), (path.rsplit("/", 1)[-1], "<file>"), (key, "<key>")):
        if s:
            message = message.replace(s, repl)
    return re.sub(r"\d+", "N", message)


def common_errors(out: Output, top: int = 5) -> list[dict[str, Any]]:
    """The `top` most frequent (stage, type, message) among ``_errors.jsonl``, with an example key."""
    path = out.path(ERRORS_FILE)
    if not out.fs.exists(path):
        return []
    groups: Counter = Counter()
    example: dict[tuple, str] = {}
    with out.fs.open(path, "r", encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                e = json.loads(line)
            except ValueError:
                continue
            g = (e.get("stage", "?"), e.get("error_type", "?"),
                 _normalise(str(e.get("error", "")), str(e.get("key", "")), str(e.get("path", ""))))
            groups[g] += 1
            example.setdefault(g, str(e.get("key", "")))
    return [{"stage": g[0], "error_type": g[1], "error": g[2], "count": n, "example": example[g]}
            for g, n in sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]


def inspect_output(
    dest: str,
    *,
    storage_options: dict[str, Any] | None = None,
    sample_count: int = 16,
    seed: int = 0,
    top_errors: int = 5,
    skip: frozenset[str] | set[str] = frozenset(),
    generation: int | None = None,
) -> Report:
    """Summarise DEST (at `generation`: default the latest); keeps `sample_count` random samples
    (reservoir, `seed`) for `contact_sheet`.

    Shards named in `skip` (those that failed `verify_shards`) are left out of the scan, and so are
    the samples the generation superseded.
    """
    from resize_pipeline.readers.generations import entries

    out = open_output(dest, storage_options, generation)
    m = out.manifest
    tars, parquets = out.shards("webdataset"), out.shards("parquet")
    refs, scanned = (tars, "webdataset") if tars else (parquets, "parquet")
    read = formats.get(scanned).load("infos")
    classes = [str(c) for c in m.get("classes", [])]
    labels: Counter = Counter()
    sizes: Counter = Counter()
    nbytes: list[int] = []
    rng = random.Random(seed)
    picks: list[SampleInfo] = []
    seen = 0
    for ref in refs:
        if ref.name in skip:
            continue
        dead = set(ref.dead)
        try:
            for pos, s in enumerate(read(out, ref)):
                if pos in dead:
                    continue
                name = s.label_name or (classes[s.label] if 0 <= s.label < len(classes) else "")
                labels[name or (str(s.label) if s.label >= 0 else "(unlabelled)")] += 1
                sizes[f"{s.width}x{s.height}"] += 1
                nbytes.append(s.nbytes)
                seen += 1
                if len(picks) < sample_count:
                    picks.append(s)
                else:
                    j = rng.randrange(seen)
                    if j < sample_count:
                        picks[j] = s
        except (OSError, ValueError, tarfile.TarError) as exc:
            raise OutputError(f"cannot read shard {ref.name} of {dest}: {type(exc).__name__}: {exc} "
                              "(--verify checks every shard against the manifest)") from None
    order = {c: i for i, c in enumerate(classes)}
    label_hist = dict(sorted(labels.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    shards: list[dict[str, Any]] = [
        dict({"name": r.name, "format": r.format, "samples": r.samples, "bytes": r.bytes},
             **({"generation": r.generation, "superseded": len(r.dead)} if m.get("generations") else {}))
        for r in out.shards()
    ]
    counts = dict(m.get("counts", {}))
    gens = entries(m)
    if out.generation < int(gens[-1].get("generation", 1)):  # an earlier generation: its own view
        own = gens[out.generation - 1].get("counts", {})
        live = out.live_samples
        counts = {"total": live + int(own.get("failed", 0)), "written": live, "failed": int(own.get("failed", 0))}
    return Report(
        dest=dest,
        counts=counts,
        formats=out.formats(),
        encode=str(m.get("encode", "")),
        size=list(m.get("size", [])),
        mode=str(m.get("mode", "")),
        shards=shards,
        total_bytes=sum(r.bytes for r in out.shards()),
        classes=classes,
        labels=label_hist,
        image_sizes=dict(sizes.most_common(10)),
        payload_bytes=_quantiles(nbytes),
        errors=common_errors(out, top_errors),
        scanned=scanned,
        not_scanned=[r.name for r in refs if r.name in skip],
        samples=picks,
        generation=out.generation,
        generations=[g for g in entries(m) if int(g.get("generation", 1)) <= out.generation],
    )


# ------------------------------------------------------------------------------------------- verify


def _verify_one(out: Output, ref: ShardRef) -> dict[str, Any]:
    """One manifest shard checked: ``{name, ok, status, reason}``; status ``ok``, ``MISMATCH`` (size or
    sha256 differ, or the file is missing) or ``UNREADABLE`` (a folder, not a regular file, no
    permission, a read error): the shard is reported and the others are still checked."""
    def bad(status: str, reason: str) -> dict[str, Any]:
        return {"name": ref.name, "ok": False, "status": status, "reason": reason}

    try:
        kind = out.fs.info(ref.path).get("type")
    except FileNotFoundError:
        return bad("MISMATCH", "missing")
    except Exception as exc:  # noqa: BLE001 - any failure to look at it is this shard's result
        return bad("UNREADABLE", f"{type(exc).__name__}: {_first_line(exc)}")
    if kind == "directory":
        return bad("UNREADABLE", "a folder, not a file")
    if kind not in ("file", None):  # a FIFO would block the read forever, a device never end
        return bad("UNREADABLE", f"not a regular file ({kind})")
    h, n = hashlib.sha256(), 0
    try:
        with out.fs.open(ref.path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
                n += len(chunk)
                if n > ref.bytes:  # already wrong: no need to read a huge file to the end
                    return bad("MISMATCH", f"more than the {ref.bytes} bytes the manifest says")
    except FileNotFoundError:
        return bad("MISMATCH", "missing")
    except Exception as exc:  # noqa: BLE001
        return bad("UNREADABLE", f"{type(exc).__name__}: {_first_line(exc)}")
    if n != ref.bytes:
        return bad("MISMATCH", f"{n} bytes, manifest says {ref.bytes}")
    if h.hexdigest() != ref.sha256:
        return bad("MISMATCH", f"sha256 {h.hexdigest()[:16]}..., manifest says {ref.sha256[:16]}...")
    return {"name": ref.name, "ok": True, "status": "ok", "reason": ""}


def _first_line(exc: BaseException) -> str:
    return ((str(exc).strip().splitlines() or [""])[0])[:300]


def extra_shards(out: Output) -> list[str]:
    """Files in DEST named like shards of this output (``{prefix}-*.tar`` / ``.parquet``: what a reader's
    glob would pick up) that the manifest does not list."""
    prefix = str((out.manifest.get("config") or {}).get("shard_prefix") or "shard")
    listed = {r.name for r in out.shards(with_dead=False)}
    pattern = re.compile(rf"^{re.escape(prefix)}-.*\.(?:tar|parquet)$")
    out.fs.invalidate_cache(out.root)
    try:
        names = [posixpath.basename(p.rstrip("/")) for p in out.fs.ls(out.root, detail=False)]
    except FileNotFoundError:
        return []
    return sorted(n for n in names if pattern.match(n) and n not in listed)


def verify_shards(dest: str, storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Recompute each shard file's size and sha256: one ``{name, ok, status, reason}`` per manifest entry
    (see `_verify_one`), then one ``EXTRA`` entry per file named like a shard that the manifest does
    not list (a foreign ``shard-00009.tar`` beside ours)."""
    out = open_output(dest, storage_options)
    results = [_verify_one(out, ref) for ref in out.shards(with_dead=False)]
    for name in extra_shards(out):
        results.append({"name": name, "ok": False, "status": "EXTRA",
                        "reason": "in DEST but not in the manifest (not written by this conversion)"})
    return results


# -------------------------------------------------------------------------------------- contact sheet


def _image_bytes(out: Output, s: SampleInfo) -> bytes:
    path = out.path(s.shard)
    if s.offset >= 0:
        return out.fs.cat_file(path, start=s.offset, end=s.offset + s.nbytes)
    import pyarrow.parquet as pq

    from resize_pipeline.sources.image_column import column_bytes

    with out.fs.open(path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        base = 0
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if s.row < base + n:
                col = pf.read_row_group(g, columns=["image"]).column(0)
                return column_bytes(col.slice(s.row - base, 1))[0] or b""
            base += n
    raise ValueError(f"row {s.row} not in {s.shard}")


def contact_sheet(dest: str, samples: list[SampleInfo], path: str, *, encode: str = "jpg", cell: int = 160,
                  columns: int = 4, storage_options: dict[str, Any] | None = None) -> str:
    """Draw `samples` (thumbnails with key and label) into a PNG at `path` (local or fsspec URL)."""
    import fsspec
    import numpy as np
    from PIL import Image, ImageDraw, ImageOps

    from resize_pipeline.encode import decode_payload

    if not samples:
        raise OutputError(f"{dest} has no written samples to draw")
    out = open_output(dest, storage_options)
    text_h = 28
    cols = max(1, min(columns, len(samples)))
    rows = (len(samples) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell, rows * (cell + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, s in enumerate(samples):
        x, y = (i % cols) * cell, (i // cols) * (cell + text_h)
        try:
            img = Image.fromarray(np.asarray(decode_payload(_image_bytes(out, s), encode)))
            img = ImageOps.contain(img, (cell - 4, cell - 4), Image.Resampling.BICUBIC)  # up or down
            sheet.paste(img, (x + (cell - img.width) // 2, y + (cell - img.height) // 2))
        except Exception as exc:  # noqa: BLE001 - a sample that does not decode is shown as such
            draw.text((x + 4, y + cell // 2), f"undecodable: {type(exc).__name__}", fill="red")
        label = " ".join(p for p in (str(s.label) if s.label >= 0 else "", s.label_name) if p) or "none"
        draw.text((x + 3, y + cell), s.key[-26:], fill="black")
        draw.text((x + 3, y + cell + 13), f"label {label}"[:26], fill="dimgray")
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    try:
        with fsspec.open(path, "wb", **(storage_options or {})) as fh:
            fh.write(buf.getvalue())
    except OSError as exc:
        raise OutputError(f"cannot write the contact sheet {path}: {exc}") from None
    return path
