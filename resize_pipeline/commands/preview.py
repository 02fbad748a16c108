"""``resize-pipeline preview IMAGE... --output grid.png``: classical filters vs the learned resizer."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("preview", help="PNG grid: original, bilinear, bicubic, lanczos, learned")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--output", "-o", required=True, help="PNG file to write")
    p.add_argument("--size", type=int, default=224, help="target side (default 224)")
    p.add_argument("--mode", default="center-crop", help="resize mode (default center-crop)")
    p.add_argument(
        "--resizer-path", default=None, help="exported resizer / TorchScript / .pt2 (default: bundled)"
    )
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resize_pipeline.learned.preview import make_preview

    out = make_preview(
        args.images,
        args.output,
        size=args.size,
        resizer_path=args.resizer_path,
        mode=args.mode,
        device=args.device,
    )
    print(f"preview written to {out}")
    return 0
