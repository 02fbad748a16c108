"""``resize-pipeline demo [DEST]``: convert the bundled sample photos end to end."""

from __future__ import annotations

import argparse
import os


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="convert the bundled sample dataset (scikit-image photos) end to end")
    p.add_argument("dest", nargs="?", default="demo_out", help="output folder (default ./demo_out)")
    p.add_argument("--num", type=int, default=300, help="sample images to generate (default 300)")
    p.add_argument("--resizer", default="learned", help="resizer to use (default: the bundled learned resizer)")
    p.add_argument("--workers", type=int, default=0, help="workers (default: one per core)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resize_pipeline.config import ConvertConfig
    from resize_pipeline.conversion import convert
    from resize_pipeline.sample_data import make_sample_dataset

    src = os.path.join(args.dest, "sample_input")
    if not os.path.isdir(src) or len(os.listdir(src)) == 0:
        make_sample_dataset(src, args.num)
    resizer = args.resizer
    if resizer == "learned":
        try:
            from resize_pipeline.learned.inference import LearnedResizer  # noqa: F401
        except ImportError:
            resizer = "bilinear"
    config = ConvertConfig(
        source=src,
        dest=os.path.join(args.dest, "shards"),
        size=(224, 224),
        mode="center-crop",
        resizer=resizer,
        format="both",
        samples_per_shard=100,
        workers=args.workers,
    )
    summary = convert(config)
    grid = None
    if resizer.startswith("learned"):
        from resize_pipeline.learned.preview import make_preview

        grid = os.path.join(args.dest, "preview.png")
        picks = sorted(os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs)[:: max(1, args.num // 4)][:4]
        make_preview(picks, grid, size=224)
    print(summary.line())
    print(f"shards:   {summary.dest} (WebDataset .tar and Parquet, {summary.shards} shard(s) each)")
    print(f"manifest: {summary.manifest_path}")
    print(f"errors:   {summary.errors_path}")
    if grid:
        print(f"preview:  {grid} (original | bilinear | bicubic | lanczos | learned)")
    if resizer == "learned":  # the bundled checkpoint: say what it is
        from resize_pipeline.learned import bundled_note

        print(f"note: {bundled_note()}")
    return 0
