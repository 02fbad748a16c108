"""Typed, frozen conversion config: the one description of every ``convert`` option.

Each `ConvertConfig` field carries an `Option` in its metadata: its help text, how values are typed and
range-checked (`Kind`), its choices, its CLI flag spelling, whether it changes the bytes written
(``output``: part of the fingerprint that guards resume) and whether it is on the command line. The
constructor checks every field through its `Option` (the one place ranges live), config files
(`load_config_file`) feed typed values to it, and ``commands/convert.py`` generates the ``convert``
flags from `cli_options` and parses their text with `Option.parse`.

Typing is strict: a string is never a boolean or a number, a boolean never a number or a size, a float
never an integer, and ``null`` is accepted only where a field is optional; every refusal is a
`ConfigError` naming the field, what it expects and what it got.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from resize_pipeline import formats
from resize_pipeline.errors import ConfigError
from resize_pipeline.geometry import MODES

ENCODINGS = ("jpg", "png", "webp", "npy")
ENGINES = ("local", "ray")
PARALLELISM = ("process", "thread")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: ``--on-change``: what ``--update`` does with an input converted before whose stamp changed
ON_CHANGE = ("refuse", "skip", "replace")
#: ``--dedup``: how equal inputs are recognised
DEDUP = ("sha256",)
MAX_SIDE = 16384
#: upper bounds of the numeric options (documented in docs/reliability.md): far beyond any real use,
#: well inside what the platform holds (a C long, a time_t, a thread wait)
MAX_INPUTS_PER_SHARD = 10_000_000
MAX_BYTES = 1 << 40  # 1 TiB
MAX_PIXELS = 1 << 40
MAX_ROW_GROUP = 1_000_000
MAX_WORKERS = 1024
MAX_BATCH = 65_536
MAX_SECONDS = 86_400.0  # one day; 0 or none means no timeout
MAX_RAY_RESOURCES = 1024.0
MAX_RETRIES = 1_000_000
DEVICE_FORMS = "auto, cpu, cuda or cuda:N (N >= 0)"
#: environment variables that override the Ray fields (`ray_knobs_from_env`)
RAY_ENV = {
    "ray_gpus_per_actor": "RESIZE_PIPELINE_RAY_GPUS_PER_ACTOR",
    "ray_cpus_per_actor": "RESIZE_PIPELINE_RAY_CPUS_PER_ACTOR",
    "ray_max_task_retries": "RESIZE_PIPELINE_RAY_MAX_TASK_RETRIES",
    "ray_ship_code": "RESIZE_PIPELINE_RAY_SHIP_CODE",
}


def describe(value: Any) -> str:
    """How a refused value is named in messages: ``the string '95'``, ``the boolean true``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        text = repr(value)
        return f"the string {text if len(text) <= 60 else text[:57] + '...'}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, (list, tuple)):
        text = _bounded_json(value, 61)  # as written in TOML/YAML: [1, true]
        return f"the list {text if len(text) <= 60 else text[:57] + '...'}"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__}"


def _bounded_json(value: Any, limit: int) -> str:
    """`value` as JSON, but only its first `limit` characters or so are ever built: a config value
    (a list of lists from YAML) may be huge, and a message never formats an unbounded value."""
    out: list[str] = []
    size = 0

    def emit(text: str) -> bool:
        nonlocal size
        out.append(text)
        size += len(text)
        return size < limit

    def walk(v: Any) -> bool:
        if isinstance(v, (list, tuple)):
            if not emit("["):
                return False
            for i, x in enumerate(v):
                if (i and not emit(", ")) or not walk(x):
                    return False
            return emit("]")
        if isinstance(v, Mapping):
            return emit("{...}")
        try:
            text = json.dumps(v)
        except (TypeError, ValueError):
            text = repr(v)
        return emit(text[:limit])

    walk(value)
    return "".join(out)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------- kinds
class Kind:
    """How one field's values are typed and checked.

    `check` takes a typed value (Python, TOML, YAML) and returns the normalised value; `parse` takes
    the text of a flag or an environment variable. Both raise `ConfigError` with ``label`` first.
    """

    expects = "a value"

    def check(self, label: str, value: Any, shown: str | None = None) -> Any:
        raise NotImplementedError

    def parse(self, label: str, text: str) -> Any:
        return self.check(label, text, repr(text))

    def refuse(self, label: str, value: Any, expects: str | None = None, shown: str | None = None) -> ConfigError:
        """The error for ``value`` (named ``shown``: a flag's text as typed, else `describe`)."""
        return ConfigError(f"{label} must be {expects or self.expects}, got {shown or describe(value)}")

    def describe_default(self, value: Any) -> str:
        return str(value)


@dataclass(frozen=True)
class Int(Kind):
    """An integer (never a bool, a float or a string in a config file) in ``lo..hi``."""

    lo: int | None = None
    hi: int | None = None

    @property
    def expects(self) -> str:  # type: ignore[override]
        if self.lo is not None and self.hi is not None:
            return f"an integer in {self.lo}..{self.hi}"
        if self.lo is not None:
            return f"an integer >= {self.lo}"
        return "an integer"

    def check(self, label: str, value: Any, shown: str | None = None) -> int:
        if not _is_int(value):
            raise self.refuse(label, value, "an integer", shown)
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise self.refuse(label, value, None, shown)
        return value

    def parse(self, label: str, text: str) -> int:
        if not re.fullmatch(r"\s*[+-]?\d+\s*", text):
            raise self.refuse(label, text, None, repr(text))
        return self.check(label, int(text), repr(text))


@dataclass(frozen=True)
class Float(Kind):
    """A finite number (an integer is fine, a bool or a string is not) in ``[lo, hi]``, or ``> lo``."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False

    @property
    def expects(self) -> str:  # type: ignore[override]
        if self.lo is not None and self.hi is not None:
            return f"a number in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}]"
        if self.lo is not None:
            return f"a number {'>' if self.lo_open else '>='} {self.lo:g}"
        return "a number"

    def check(self, label: str, value: Any, shown: str | None = None) -> float:
        if not (isinstance(value, (int, float)) and not isinstance(value, bool)) or not math.isfinite(value):
            raise self.refuse(label, value, None, shown)
        low = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        if low or (self.hi is not None and value > self.hi):
            raise self.refuse(label, value, None, shown)
        return float(value)

    def parse(self, label: str, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise self.refuse(label, text, None, repr(text)) from None
        return self.check(label, value, repr(text))

    def describe_default(self, value: Any) -> str:
        return f"{value:g}"


@dataclass(frozen=True)
class Timeout(Kind):
    """Seconds in ``(0, hi]``, or no timeout at all: ``0`` or ``none`` (also ``null`` in YAML), kept
    as None. A huge number is refused rather than taken as "no timeout" (``1e10`` overflows the
    platform's waits)."""

    hi: float = 86_400.0

    @property
    def seconds(self) -> Float:
        return Float(0.0, self.hi, lo_open=True)

    @property
    def expects(self) -> str:  # type: ignore[override]
        return f"{self.seconds.expects} (or 0 / none for no timeout)"

    def check(self, label: str, value: Any, shown: str | None = None) -> float | None:
        if isinstance(value, str) and value.strip().lower() == "none":
            return None
        if (_is_int(value) or isinstance(value, float)) and value == 0:
            return None
        if not (isinstance(value, (int, float)) and not isinstance(value, bool)) or not math.isfinite(value) \
                or not 0 < value <= self.hi:
            raise self.refuse(label, value, None, shown)
        return float(value)

    def parse(self, label: str, text: str) -> float | None:
        if text.strip().lower() == "none":
            return None
        try:
            value = float(text)
        except ValueError:
            raise self.refuse(label, text, None, repr(text)) from None
        return self.check(label, value, repr(text))

    def describe_default(self, value: Any) -> str:
        return "none" if value is None else f"{value:g}"


@dataclass(frozen=True)
class Bool(Kind):
    """``true``/``false`` only; a string such as ``"false"`` is refused (it would be truthy)."""

    expects = "true or false"

    def check(self, label: str, value: Any, shown: str | None = None) -> bool:
        if not isinstance(value, bool):
            raise self.refuse(label, value, None, shown)
        return value

    def parse(self, label: str, text: str) -> bool:  # environment variables
        word = text.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
        raise self.refuse(label, text, "1/true/yes/on or 0/false/no/off", repr(text))

    def describe_default(self, value: Any) -> str:
        return "on" if value else "off"


@dataclass(frozen=True)
class Str(Kind):
    """A non-empty string, optionally one of ``choices``, matching ``pattern`` or accepted by ``validate``.

    ``choices`` may be a function (resolved on use: the decoder list lives in a package that is only
    imported when needed). ``validate`` returns None, or what the value must be (for the message).
    """

    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    pattern: str | None = None
    pattern_says: str = ""
    validate: Callable[[str], str | None] | None = None

    @property
    def allowed(self) -> tuple[str, ...] | None:
        return self.choices() if callable(self.choices) else self.choices

    @property
    def expects(self) -> str:  # type: ignore[override]
        allowed = self.allowed
        return f"one of {', '.join(allowed)}" if allowed else "a string"

    def check(self, label: str, value: Any, shown: str | None = None) -> str:
        if not isinstance(value, str):
            raise self.refuse(label, value, "a string", shown)
        allowed = self.allowed
        if allowed is not None and value not in allowed:
            raise self.refuse(label, value, None, shown)
        if not value:
            raise self.refuse(label, value, "a non-empty string", shown)
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise self.refuse(label, value, self.pattern_says, shown)
        if self.validate is not None:
            expects = self.validate(value)
            if expects:
                raise self.refuse(label, value, expects, shown)
        return value


@dataclass(frozen=True)
class Size(Kind):
    """``N``, ``"N"``, ``"WxH"`` or ``[w, h]``, integers in 1..MAX_SIDE; normalised to ``(w, h)``."""

    expects = f"N, WxH or [w, h] with sides in 1..{MAX_SIDE} (e.g. 224 or 224x160)"

    def check(self, label: str, value: Any, shown: str | None = None) -> tuple[int, int]:
        if _is_int(value):
            w = h = value
        elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
            w, h = value
        elif isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
            w = h = int(value)
        elif isinstance(value, str) and re.fullmatch(r"\s*\d+\s*[xX]\s*\d+\s*", value):
            w, h = (int(v) for v in re.split(r"[xX]", value))
        else:
            raise self.refuse(label, value, None, shown)
        if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
            raise self.refuse(label, value, None, shown)
        return w, h

    def describe_default(self, value: Any) -> str:
        return str(value[0]) if value[0] == value[1] else f"{value[0]}x{value[1]}"


@dataclass(frozen=True)
class Color(Kind):
    """``"R,G,B"``, ``"#rrggbb"`` (exactly six hex digits) or ``[r, g, b]``, each 0..255."""

    expects = "R,G,B, #rrggbb or [r, g, b] with values in 0..255"

    def check(self, label: str, value: Any, shown: str | None = None) -> tuple[int, int, int]:
        if isinstance(value, str):
            v = value.strip()
            if re.fullmatch(r"#[0-9A-Fa-f]{6}", v):
                return int(v[1:3], 16), int(v[3:5], 16), int(v[5:7], 16)
            if not re.fullmatch(r"\s*\d{1,3}\s*,\s*\d{1,3}\s*,\s*\d{1,3}\s*", v):
                raise self.refuse(label, value, None, shown)
            rgb = tuple(int(p) for p in v.split(","))
        elif isinstance(value, (tuple, list)) and all(_is_int(c) for c in value):
            rgb = tuple(value)
        else:
            raise self.refuse(label, value, None, shown)
        if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
            raise self.refuse(label, value, None, shown)
        return rgb  # type: ignore[return-value]

    def describe_default(self, value: Any) -> str:
        return ",".join(str(c) for c in value)


@dataclass(frozen=True)
class StrMapping(Kind):
    """A mapping with string keys (fsspec ``storage_options``)."""

    expects = "a mapping"

    def check(self, label: str, value: Any, shown: str | None = None) -> dict[str, Any]:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise self.refuse(label, value, "a mapping with string keys", shown)
        return dict(value)


def _resizer_problem(spec: str) -> str | None:
    from resize_pipeline.resize import RESIZERS, validate_resizer_spec  # loads no model (no torch)

    try:
        validate_resizer_spec(spec)
    except ValueError:
        return f"one of {', '.join(RESIZERS)}"
    return None


def _device_problem(device: str) -> str | None:
    return None if re.fullmatch(r"auto|cpu|cuda|cuda:\d+", device) else DEVICE_FORMS


def _decoders() -> tuple[str, ...]:
    from resize_pipeline.decode import DECODERS

    return tuple(DECODERS)


# --------------------------------------------------------------------------------------------- option
@dataclass(frozen=True, slots=True)
class Option:
    """Everything about one config field but its name and default.

    Attributes:
        help: one line for ``convert --help`` and the docs.
        kind: the type and range (`Int`, `Float`, `Bool`, `Str`, `Size`, `Color`, `StrMapping`).
        output: changes the bytes written (part of `ConvertConfig.fingerprint`).
        cli: has a ``convert`` flag (``positional`` for SOURCE and DEST).
        positional: a positional argument of ``convert`` rather than a flag.
        optional: ``None`` (YAML ``null``) is a valid value, meaning "auto" or "not set".
        flags: the flag spellings; default ``--field-name`` (``--no-field-name`` for ``bool_flag="off"``).
        bool_flag: for booleans: ``"on"`` (the flag sets true), ``"off"`` (sets false), ``"both"``
            (``--x/--no-x``).
        metavar: the value's name in ``--help``.
        group: ``output``, ``run`` or ``ray``: the ``--help`` section.
        default_text: what ``--help`` says the default is (default: derived from the value).
    """

    help: str
    kind: Kind
    output: bool = True
    cli: bool = True
    positional: bool = False
    optional: bool = False
    flags: tuple[str, ...] = ()
    bool_flag: str = "both"
    metavar: str | None = None
    group: str = "output"
    default_text: str | None = None

    def check(self, label: str, value: Any) -> Any:
        if value is None:
            if self.optional:
                return None
            raise self.kind.refuse(label, value)
        return self.kind.check(label, value)

    def parse(self, label: str, text: str) -> Any:
        """The value of a flag or environment variable given as text, typed and range-checked."""
        return self.kind.parse(label, text)


def _opt(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **kw: Any) -> Any:
    return field(default=default, default_factory=factory, metadata={"option": Option(**kw)})


def _run(default: Any, **kw: Any) -> Any:
    return _opt(default, output=False, group="run", **kw)


def _ray(**kw: Any) -> Any:
    return _opt(None, output=False, group="ray", optional=True, **kw)


@dataclass(frozen=True, slots=True)
class ConvertConfig:
    """Everything that defines one conversion, checked on construction (and on `replace`).

    Fields whose `Option` says ``output=False`` do not change the bytes written: they are left out
    of the fingerprint that guards resume. `options` lists every field's `Option`.
    """

    source: str = _opt(positional=True, kind=Str(), help=(
        "folder, glob ('data/**/*.jpg'), manifest (.csv/.jsonl/.parquet), tar(s); local or s3://, gs://, memory://"))
    dest: str = _opt(positional=True, kind=Str(), help="output folder (local or fsspec URL)")
    # --- what is written (the output fingerprint) ---
    size: tuple[int, int] = _opt((224, 224), kind=Size(), metavar="N|WxH", help="target size: N (square) or WxH")
    mode: str = _opt("center-crop", kind=Str(choices=MODES), help=(
        "stretch; center-crop (shorter side, then centre crop); pad (keep ratio, letterbox with "
        "--pad-color); shorter-side; longer-side"))
    resizer: str = _opt("bilinear", kind=Str(validate=_resizer_problem), metavar="NAME", help=(
        "nearest, bilinear, bicubic, lanczos, area (Pillow filters), learned (the bundled CNN) or "
        "learned:PATH (an exported checkpoint)"))
    format: str = _opt("webdataset", kind=Str(choices=formats.CHOICES), help="shard format")
    encode: str = _opt("jpg", kind=Str(choices=ENCODINGS), help="image encoding (npy: raw uint8 HWC, lossless)")
    quality: int = _opt(95, kind=Int(1, 100), help="jpg/webp quality")
    samples_per_shard: int = _opt(1000, kind=Int(1, MAX_INPUTS_PER_SHARD), help="inputs per shard")
    max_shard_bytes: int | None = _opt(None, kind=Int(1024, MAX_BYTES), optional=True, metavar="BYTES",
                                       default_text="no cap", help="also roll shard parts past this many bytes")
    shard_prefix: str = _opt("shard", kind=Str(pattern=r"[A-Za-z0-9_-]+",
                                               pattern_says="made of letters, digits, _ and -"),
                             help="shard file name prefix")
    background: tuple[int, int, int] = _opt((255, 255, 255), kind=Color(), metavar="R,G,B|#rrggbb",
                                            help="colour alpha is composited over")
    pad_color: tuple[int, int, int] = _opt((0, 0, 0), kind=Color(), metavar="R,G,B|#rrggbb",
                                           help="letterbox colour for --mode pad")
    max_pixels: int = _opt(178_956_970, kind=Int(1, MAX_PIXELS), help="refuse images declaring more pixels (decompression-bomb guard)")
    draft: bool = _opt(True, kind=Bool(), bool_flag="off", flags=("--no-draft",), help=(
        "decode JPEGs at full resolution (default: DCT-domain draft downscale when much larger than needed)"))
    decoder: str = _opt("pillow", kind=Str(choices=_decoders), help=(
        "auto: DALI mixed (nvJPEG) on a GPU, else DALI CPU-only, else Pillow"))
    precision: str = _opt("auto", kind=Str(choices=PRECISIONS), help=(
        "learned resizer precision (auto: fp16 on a GPU; bf16 on CPUs with native bf16, else fp32)"))
    compile: bool = _opt(False, kind=Bool(), help="torch.compile the learned resizer")
    hw_decoder_load: float = _opt(0.65, kind=Float(0.0, 1.0), metavar="SHARE", help=(
        "share of JPEGs the DALI mixed decoder gives the GPU's hardware JPEG decoder (where it has one)"))
    # --- the GPU path and shard attempts (issue 17). Output options that only matter on some paths
    # (the learned resizer, the GPU, DALI mixed) are dropped from a run's fingerprint elsewhere
    # (`manifest.run_record`), so they never block the resume of a job they cannot change ---
    cuda_graphs: bool = _opt(True, kind=Bool(), help=(
        "learned resizer on a GPU: run the CNN as CUDA graphs captured at start-up (fixed-shape modes "
        "center-crop and stretch; other modes run eagerly); --no-cuda-graphs: always eager"))
    channels_last: bool = _opt(True, kind=Bool(), help=(
        "learned resizer: channels_last memory layout (the fast layout for fp16/bf16 convolutions)"))
    jpeg_fancy_upsampling: bool = _opt(True, kind=Bool(), help=(
        "DALI mixed (nvJPEG) decoder: upsample chroma like libjpeg-turbo/Pillow (DALI's own default is "
        "off: faster, but GPU and CPU decodes then differ)"))
    shard_attempts: int = _run(3, kind=Int(1, 100), metavar="N", help=(
        "attempts per shard (a failed stage or write, a GPU fault, a worker that died) before its inputs "
        "are recorded as failed (stage shard; a rerun attempts them again)"))
    path_column: str | None = _opt(None, kind=Str(), optional=True, metavar="NAME",
                                   default_text="path, url, file, ...", help="manifest column holding paths")
    label_column: str | None = _opt(None, kind=Str(), optional=True, metavar="NAME",
                                    default_text="label", help="manifest column holding labels")
    row_group_size: int = _opt(512, kind=Int(1, MAX_ROW_GROUP), help="Parquet rows per row group")
    # --- how it runs (not part of the output fingerprint) ---
    workers: int = _run(0, kind=Int(0, MAX_WORKERS), default_text="0 = one per CPU core", help="parallel workers")
    parallelism: str = _run("process", kind=Str(choices=PARALLELISM), help="workers as processes or threads")
    batch_size: int = _run(64, kind=Int(1, MAX_BATCH), help="images per batch through the stages")
    overlap: bool | None = _run(None, kind=Bool(), optional=True, default_text=(
        "auto: on with a GPU or a remote source, off for CPU-only local work; see runner.should_overlap"),
        help="run read/decode/resize/encode concurrently in threads")
    engine: str = _run("local", kind=Str(choices=ENGINES), help="local processes/threads, or a Ray cluster")
    address: str | None = _run(None, kind=Str(), optional=True, metavar="ADDRESS", default_text=(
        "RAY_ADDRESS if set, else a cluster of this job's own on this machine, shut down after it"),
        help="Ray cluster to join for --engine ray: auto (the one `ray start` made on this machine), HOST:PORT, "
             "ray://HOST:10001")
    device: str = _run("auto", kind=Str(validate=_device_problem), metavar="DEVICE",
                       help=f"torch device for the learned resizer: {DEVICE_FORMS}")
    read_timeout: float | None = _run(60.0, kind=Timeout(hi=MAX_SECONDS), optional=True, metavar="SECONDS",
                                      help="give up a single read after this long (recorded as a read error)")
    # --- bounds on what one worker holds and waits for (docs/reliability.md, section 11) ---
    max_batch_pixels: int = _run(1 << 27, kind=Int(1, MAX_PIXELS), metavar="PIXELS", help=(
        "decoded pixels one batch may hold at once: a batch of large images is split into smaller ones "
        "(same bytes written); one image larger than this is decoded alone"))
    max_bytes: int = _run(256 << 20, kind=Int(1, MAX_BYTES), metavar="BYTES", help=(
        "read at most this many bytes of one input; a larger input (or one that is not a regular file, "
        "such as /dev/zero) is a read error"))
    io_timeout: float | None = _run(30.0, kind=Timeout(hi=MAX_SECONDS), optional=True, metavar="SECONDS", help=(
        "give up an object-store request (list, write, lock) that gets no answer for this long; a write "
        "is retried, then the job stops (exit 2)"))
    dry_run: bool = _run(False, kind=Bool(), bool_flag="on",
                         help="list and plan, print counts and shards, convert nothing")
    overwrite: bool = _run(False, kind=Bool(), bool_flag="on", help="replace existing output in DEST")
    # --- growing datasets: not in the output fingerprint (an update must keep it), recorded per generation ---
    update: bool = _run(False, kind=Bool(), bool_flag="on", help=(
        "convert only the inputs DEST does not hold yet, into new shards: a new generation of DEST "
        "(an empty DEST: the first one)"))
    on_change: str = _run("refuse", kind=Str(choices=ON_CHANGE), help=(
        "with --update, inputs converted before whose size/mtime or ETag changed: refuse (exit 2, naming "
        "them), skip (keep the old sample) or replace (convert them again; the old sample is superseded)"))
    prune_deleted: bool = _run(False, kind=Bool(), bool_flag="on", help=(
        "with --update, mark the samples of inputs gone from SOURCE superseded (default: reported, kept)"))
    dedup: str | None = _run(None, kind=Str(choices=DEDUP), optional=True, default_text="off", help=(
        "an input whose bytes equal an already converted sample is recorded as its duplicate, not converted "
        "(within the run and across generations)"))
    quiet: bool = _run(False, kind=Bool(), bool_flag="on", flags=("-q", "--quiet"), help="no progress bar or summary")
    storage_options: dict[str, Any] = _run(dataclasses.MISSING, factory=dict, kind=StrMapping(), cli=False,
                                           help="fsspec options for SOURCE and DEST (config file or Python)")
    # --- Ray engine knobs (None: decided from the cluster); RESIZE_PIPELINE_RAY_* override them ---
    ray_gpus_per_actor: float | None = _ray(kind=Float(0.0, MAX_RAY_RESOURCES), metavar="N", default_text=(
        "when the job uses a GPU, a share of one: one actor per 4 of the smallest GPU node's CPUs per GPU "
        "(0.25 on 16-CPU one-GPU nodes; 1 with fewer than 8 CPUs per GPU, or when --ray-cpus-per-actor is "
        "given); else 0"), help="GPUs per Ray actor")
    ray_cpus_per_actor: float | None = _ray(kind=Float(0.0, MAX_RAY_RESOURCES, lo_open=True), metavar="N", default_text=(
        "1 without GPUs; else the CPUs per GPU of the smallest GPU node divided among the actors sharing it "
        "(4 on 16-CPU one-GPU nodes), at most 8"),
        help="CPUs reserved per Ray actor, also its decode/torch thread count")
    ray_max_task_retries: int | None = _ray(kind=Int(0, MAX_RETRIES), metavar="N", default_text=(
        "Ray's (it retries; the job's attempt ledger records a shard attempted --shard-attempts times as failed)"),
        help="Ray's own cap on retries of a task whose actor died (past it the whole job fails)")
    ray_ship_code: bool | None = _ray(kind=Bool(), default_text="on for ray://, off otherwise",
                                      help="upload this checkout's resize_pipeline and workers with the Ray job")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = f.metadata["option"].check(f"config: {f.name}", getattr(self, f.name))
            object.__setattr__(self, f.name, value)  # frozen: normalised once, here
        if self.mode in ("shorter-side", "longer-side") and self.size[0] != self.size[1]:
            raise ConfigError(f"mode {self.mode} takes a single size N, got {self.size[0]}x{self.size[1]}")
        if self.update and self.overwrite:
            raise ConfigError("--update adds to DEST and --overwrite replaces it: give one of them")
        if not self.update and (self.on_change != "refuse" or self.prune_deleted or self.dedup is not None):
            flag = "--on-change" if self.on_change != "refuse" else "--prune-deleted" if self.prune_deleted \
                else "--dedup"
            raise ConfigError(f"{flag} applies to --update only (--update on an empty DEST makes its first "
                              "generation)")

    @property
    def num_workers(self) -> int:
        return self.workers or max(1, os.cpu_count() or 1)

    @property
    def formats(self) -> tuple[str, ...]:
        return formats.expand(self.format)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        out.pop("storage_options")  # may hold credentials
        return out

    def output_dict(self) -> dict[str, Any]:
        """The fields that decide the bytes written (plus the source listing, checked separately)."""
        options = self.options()
        return {k: v for k, v in self.to_dict().items() if options[k].output and k != "dest"}

    def fingerprint(self) -> str:
        """The digest of `output_dict`. A run's own fingerprint (``_run.json``, the resume guard) also
        covers the driver's resolved choices: `manifest.run_record`."""
        return digest(self.output_dict())

    def replace(self, **changes: Any) -> ConvertConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def options(cls) -> dict[str, Option]:
        """Every field's `Option`, in field order."""
        return {f.name: f.metadata["option"] for f in dataclasses.fields(cls)}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every field's default (SOURCE and DEST have none)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConvertConfig:
        """A config from field names (dashes or underscores); unknown keys are refused by name."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"config must be a mapping of option names to values, got {describe(data)}")
        values = normalise_keys(data)
        names = list(cls.options())
        unknown = [k for k in values if k not in names]
        if unknown:
            hints = []
            for k in unknown[:10]:
                shown = k if len(k) <= 60 else k[:57] + "..."
                close = difflib.get_close_matches(k[:100], names, n=1)
                hints.append(f"{shown} (did you mean {close[0]}?)" if close else shown)
            if len(unknown) > 10:
                hints.append(f"(+{len(unknown) - 10} more)")
            raise ConfigError(f"unknown config keys: {', '.join(hints)}")
        missing = [k for k in ("source", "dest") if k not in values]
        if missing:
            raise ConfigError(f"config: {' and '.join(missing)} not given")
        return cls(**values)


def normalise_keys(data: Mapping[Any, Any]) -> dict[str, Any]:
    """``samples-per-shard`` -> ``samples_per_shard``; a key that is not a string is refused."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if not isinstance(k, str):
            raise ConfigError(f"config keys must be option names, got {describe(k)}")
        out[k.replace("-", "_")] = v
    return out


def cli_options() -> dict[str, Option]:
    """The fields that ``convert`` exposes as flags (not SOURCE, DEST or storage_options)."""
    return {k: o for k, o in ConvertConfig.options().items() if o.cli and not o.positional}


def flag_names(name: str, option: Option) -> tuple[str, ...]:
    """The flag spellings of field ``name`` (``--samples-per-shard``; ``--no-draft``; ``-q``, ``--quiet``)."""
    if option.flags:
        return option.flags
    stem = name.replace("_", "-")
    return (f"--no-{stem}",) if option.bool_flag == "off" and isinstance(option.kind, Bool) else (f"--{stem}",)


def parse_size(value: str | int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``224`` -> (224, 224); ``"224x160"`` or ``[224, 160]`` -> (224, 160) as (width, height)."""
    return Size().check("size", value)


def parse_color(value: str | tuple[int, int, int] | list[int]) -> tuple[int, int, int]:
    """``"255,255,255"``, ``"#ffffff"`` or ``[255, 255, 255]``: explicit RGB only."""
    return Color().check("colour", value)


def ray_knobs_from_env(config: ConvertConfig, environ: Mapping[str, str] | None = None) -> ConvertConfig:
    """`config` with the ``RESIZE_PIPELINE_RAY_*`` variables that are set (and not empty) applied.

    The variables override the ``ray_*`` fields (they are read on the driver, so they also reach a
    job started by ``ray job submit``). Values are parsed as the flags are; a bad one is a
    `ConfigError` naming the variable. ``RESIZE_PIPELINE_RAY_SHIP_CODE`` takes 1/0 (or true/false).
    """
    env = os.environ if environ is None else environ
    options = ConvertConfig.options()
    changes: dict[str, Any] = {}
    for name, var in RAY_ENV.items():
        raw = env.get(var)
        if raw is None or raw.strip() == "":
            continue
        changes[name] = options[name].parse(var, raw.strip())
    return config.replace(**changes) if changes else config


def digest(data: Any) -> str:
    """A short, stable digest of JSON-able `data` (key order does not matter)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_config_file(path: str) -> dict[str, Any]:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file of ConvertConfig fields.

    Keys use the flag names with dashes or underscores (``samples-per-shard`` = ``samples_per_shard``).
    A ``[convert]`` table / mapping, if present, is used. Values are typed as written (checked by
    `ConvertConfig`); any problem with the file itself is a one-line `ConfigError`.
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES >> 10} KiB: not a config file")
    if path.endswith(".toml"):
        import tomllib

        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"invalid TOML in {path}: not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid TOML in {path}: {_one_line(str(exc))}") from None
    elif path.endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.load(raw, Loader=_strict_yaml_loader())  # noqa: S506 - a SafeLoader, stricter still
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid YAML in {path}: {_yaml_problem(exc)}") from None
        if data is None:
            data = {}
    else:
        raise ConfigError(f"config file {path} must end in .toml, .yaml or .yml")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option names to values, got {describe(data)}")
    if "convert" in data:
        if not isinstance(data["convert"], dict):
            raise ConfigError(f"config file {path}: 'convert' must be a table of options, got {describe(data['convert'])}")
        data = data["convert"]
    return normalise_keys(data)


#: a config file is a few hundred bytes; anything much larger is not one
MAX_CONFIG_BYTES = 1 << 20


def _strict_yaml_loader() -> type:
    """`yaml.SafeLoader` that refuses aliases (``*name``: a few hundred bytes of nested aliases expand
    to gigabytes) and duplicate keys (the last would silently win; TOML refuses them too)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, "aliases (*name) are not allowed in a config file: write each value out",
                    event.start_mark)
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    fresh = key not in seen
                except TypeError:  # an unhashable key: the constructor below says so
                    continue
                if not fresh:
                    shown = describe(key) if not isinstance(key, str) else repr(key[:60])
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {shown}: each option may be given once", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _yaml_problem(exc: Exception) -> str:
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return _one_line(str(exc))
