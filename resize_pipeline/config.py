"""Typed, frozen conversion config, validated once; loadable from TOML/YAML and mirrored by the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from resize_pipeline.errors import ConfigError
from resize_pipeline.geometry import MODES

FORMATS = ("webdataset", "parquet", "both")
ENCODINGS = ("jpg", "png", "webp", "npy")
ENGINES = ("local", "ray")
PARALLELISM = ("process", "thread")


def parse_size(value: str | int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``224`` -> (224, 224); ``"224x160"`` -> (224, 160) as (width, height)."""
    if isinstance(value, int):
        w = h = value
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        w, h = int(value[0]), int(value[1])
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        w = h = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+\s*[xX]\s*\d+\s*", value):
        w, h = (int(v) for v in re.split(r"[xX]", value))
    else:
        raise ConfigError(f"invalid size {value!r}; expected N or WxH, e.g. 224 or 224x160")
    if not (1 <= w <= 16384 and 1 <= h <= 16384):
        raise ConfigError(f"size {w}x{h} out of range (1..16384)")
    return w, h


def parse_color(value: str | tuple[int, int, int] | list[int]) -> tuple[int, int, int]:
    """``"255,255,255"``, ``"#ffffff"``, ``"white"``-free: explicit RGB only."""
    parts: list[str] | list[int]
    if isinstance(value, str):
        v = value.strip()
        if v.startswith("#") and len(v) == 7:
            return tuple(int(v[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        parts = v.split(",")
    else:
        parts = [int(x) for x in value]
    try:
        rgb = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"invalid colour {value!r}; expected R,G,B or #rrggbb") from None
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ConfigError(f"invalid colour {value!r}; expected three values in 0..255")
    return rgb  # type: ignore[return-value]


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"invalid {name} {value!r}; expected one of {', '.join(allowed)}")


@dataclass(frozen=True, slots=True)
class ConvertConfig:
    """Everything that defines one conversion. Fields marked ``output=False`` do not change the bytes
    written (they are left out of the fingerprint that guards resume)."""

    source: str
    dest: str
    size: tuple[int, int] = (224, 224)
    mode: str = "center-crop"
    resizer: str = "bilinear"
    format: str = "webdataset"
    encode: str = "jpg"
    quality: int = 95
    samples_per_shard: int = 1000
    max_shard_bytes: int | None = None
    shard_prefix: str = "shard"
    background: tuple[int, int, int] = (255, 255, 255)
    pad_color: tuple[int, int, int] = (0, 0, 0)
    max_pixels: int = 178_956_970
    draft: bool = True
    decoder: str = "pillow"
    path_column: str | None = None
    label_column: str | None = None
    row_group_size: int = 512
    # --- how it runs (not part of the output fingerprint) ---
    workers: int = field(default=0, metadata={"output": False})
    parallelism: str = field(default="process", metadata={"output": False})
    batch_size: int = field(default=64, metadata={"output": False})
    overlap: bool | None = field(default=None, metadata={"output": False})  # None: auto (see runner.should_overlap)
    engine: str = field(default="local", metadata={"output": False})
    address: str | None = field(default=None, metadata={"output": False})
    device: str = field(default="auto", metadata={"output": False})
    overwrite: bool = field(default=False, metadata={"output": False})
    quiet: bool = field(default=False, metadata={"output": False})
    storage_options: dict[str, Any] = field(default_factory=dict, metadata={"output": False})

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen normalisation
        set_("size", parse_size(self.size))
        set_("background", parse_color(self.background))
        set_("pad_color", parse_color(self.pad_color))
        if not self.source:
            raise ConfigError("source is empty")
        if not self.dest:
            raise ConfigError("dest is empty")
        _choice("mode", self.mode, MODES)
        _choice("format", self.format, FORMATS)
        _choice("encode", self.encode, ENCODINGS)
        _choice("engine", self.engine, ENGINES)
        _choice("parallelism", self.parallelism, PARALLELISM)
        from resize_pipeline.decode import DECODERS
        from resize_pipeline.resize import validate_resizer_spec

        _choice("decoder", self.decoder, DECODERS)
        try:
            validate_resizer_spec(self.resizer)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.mode in ("shorter-side", "longer-side") and self.size[0] != self.size[1]:
            raise ConfigError(f"mode {self.mode} takes a single size N, got {self.size[0]}x{self.size[1]}")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"quality {self.quality} out of range 1..100")
        if self.samples_per_shard < 1:
            raise ConfigError("samples_per_shard must be >= 1")
        if self.max_shard_bytes is not None and self.max_shard_bytes < 1024:
            raise ConfigError("max_shard_bytes must be >= 1024")
        if self.workers < 0:
            raise ConfigError("workers must be >= 0 (0 = one per CPU core)")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be >= 1")
        if self.max_pixels < 1:
            raise ConfigError("max_pixels must be >= 1")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.shard_prefix):
            raise ConfigError(f"shard_prefix {self.shard_prefix!r} may use only letters, digits, _ and -")

    @property
    def num_workers(self) -> int:
        return self.workers or max(1, os.cpu_count() or 1)

    @property
    def formats(self) -> tuple[str, ...]:
        return ("webdataset", "parquet") if self.format == "both" else (self.format,)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        out.pop("storage_options")  # may hold credentials
        return out

    def output_dict(self) -> dict[str, Any]:
        """The fields that decide the bytes written (plus the source listing, checked separately)."""
        d = self.to_dict()
        for f in dataclasses.fields(self):
            if f.metadata.get("output") is False:
                d.pop(f.name, None)
        d.pop("dest")
        return d

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.output_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def replace(self, **changes: Any) -> ConvertConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConvertConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**data)


def load_config_file(path: str) -> dict[str, Any]:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file of ConvertConfig fields.

    Keys use the flag names with dashes or underscores (``samples-per-shard`` = ``samples_per_shard``).
    A ``[convert]`` table / mapping, if present, is used.
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if path.endswith(".toml"):
        import tomllib

        try:
            data = tomllib.loads(raw.decode())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid TOML in {path}: {exc}") from None
    elif path.endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(raw) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid YAML in {path}: {exc}") from None
    else:
        raise ConfigError(f"config file {path} must end in .toml, .yaml or .yml")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping")
    if isinstance(data.get("convert"), dict):
        data = data["convert"]
    return {k.replace("-", "_"): v for k, v in data.items()}
