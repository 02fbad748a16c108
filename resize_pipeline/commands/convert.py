"""``resize-pipeline convert SOURCE DEST``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

# flag -> ConvertConfig field, for everything that is a plain value
_FLAGS: dict[str, str] = {
    "size": "size", "mode": "mode", "resizer": "resizer", "format": "format", "encode": "encode",
    "quality": "quality", "samples_per_shard": "samples_per_shard", "max_shard_bytes": "max_shard_bytes",
    "shard_prefix": "shard_prefix", "workers": "workers", "parallelism": "parallelism",
    "batch_size": "batch_size", "decoder": "decoder", "engine": "engine", "address": "address",
    "device": "device", "background": "background", "pad_color": "pad_color", "max_pixels": "max_pixels",
    "path_column": "path_column", "label_column": "label_column", "row_group_size": "row_group_size",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    from resize_pipeline.config import ENCODINGS, ENGINES, FORMATS, PARALLELISM
    from resize_pipeline.decode import DECODERS
    from resize_pipeline.geometry import MODES

    p = sub.add_parser("convert", help="convert images into WebDataset/Parquet shards",
                       description="Convert SOURCE (folder, glob, manifest, tars, Parquet; any fsspec URL) "
                       "into resized shards in DEST, with _manifest.json and _errors.jsonl.")
    p.add_argument("source", help="folder, glob ('data/**/*.jpg'), manifest (.csv/.jsonl/.parquet), tar(s); local or s3://, gs://, memory://")
    p.add_argument("dest", help="output folder (local or fsspec URL)")
    p.add_argument("--config", help="TOML/YAML file of the same options (flags given here win)")
    p.add_argument("--size", help="N or WxH (default 224)")
    p.add_argument("--mode", choices=MODES, help="stretch | center-crop (default) | pad | shorter-side | longer-side")
    p.add_argument("--resizer", help="nearest|bilinear (default)|bicubic|lanczos|area|learned|learned:PATH")
    p.add_argument("--format", choices=FORMATS, help="webdataset (default) | parquet | both")
    p.add_argument("--encode", choices=ENCODINGS, help="jpg (default) | png | webp | npy")
    p.add_argument("--quality", type=int, help="jpg/webp quality (default 95)")
    p.add_argument("--samples-per-shard", type=int, help="inputs per shard (default 1000)")
    p.add_argument("--max-shard-bytes", type=int, help="also roll shard parts past this many bytes")
    p.add_argument("--shard-prefix", help="shard file prefix (default 'shard')")
    p.add_argument("--workers", type=int, help="parallel workers (default: one per CPU core)")
    p.add_argument("--parallelism", choices=PARALLELISM, help="workers as processes (default) or threads")
    p.add_argument("--batch-size", type=int, help="images per batch through the stages (default 64)")
    p.add_argument("--decoder", choices=DECODERS, help="pillow (default) | dali | auto")
    p.add_argument("--engine", choices=ENGINES, help="local (default) | ray")
    p.add_argument("--address", help="Ray address for --engine ray (auto, ray://host:10001)")
    p.add_argument("--device", help="torch device for the learned resizer: auto (default), cpu, cuda, cuda:1")
    p.add_argument("--background", help="colour alpha is composited over: R,G,B or #rrggbb (default white)")
    p.add_argument("--pad-color", help="letterbox colour for --mode pad (default 0,0,0)")
    p.add_argument("--max-pixels", type=int, help="refuse images declaring more pixels (bomb guard)")
    p.add_argument("--no-draft", dest="draft", action="store_false", default=None,
                   help="decode JPEGs at full resolution (default: DCT-domain draft downscale when much larger)")
    p.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=None,
                   help="run read/decode/resize/encode concurrently in threads (default: auto, on with a GPU "
                   "or a remote source, off for CPU-only local work)")
    p.add_argument("--path-column", help="manifest column holding paths")
    p.add_argument("--label-column", help="manifest column holding labels")
    p.add_argument("--row-group-size", type=int, help="Parquet rows per row group (default 512)")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace existing output in DEST")
    p.add_argument("-q", "--quiet", action="store_true", default=None, help="no progress bar or summary")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from resize_pipeline.config import ConvertConfig, load_config_file

    values: dict[str, Any] = load_config_file(args.config) if args.config else {}
    for flag, fld in _FLAGS.items():
        v = getattr(args, flag, None)
        if v is not None:
            values[fld] = v
    for flag in ("draft", "overwrite", "quiet", "overlap"):
        v = getattr(args, flag, None)
        if v is not None:
            values[flag] = v
    values["source"], values["dest"] = args.source, args.dest
    return ConvertConfig.from_dict(values)


def run(args: argparse.Namespace) -> int:
    from resize_pipeline.conversion import convert

    config = config_from_args(args)
    summary = convert(config)
    if not config.quiet:
        print(summary.line())
        print(f"manifest: {summary.manifest_path}")
        if summary.failed:
            print(f"errors:   {summary.errors_path}", file=sys.stderr)
    return 0
