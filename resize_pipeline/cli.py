"""``resize-pipeline``: a thin CLI over one public function per command."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from resize_pipeline import __version__

#: command modules under resize_pipeline.commands; each has add_parser(subparsers) and run(args) -> int
COMMANDS = ("convert", "inspect", "demo", "train", "evaluate", "preview")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resize-pipeline",
        description="Convert image datasets into training-ready WebDataset/Parquet shards with a learned resizer.",
    )
    parser.add_argument("--version", action="version", version=f"resize-pipeline {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"resize_pipeline.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"resize_pipeline.commands.{name}":
                continue  # command not part of this build
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from resize_pipeline.errors import ResizePipelineError

    try:
        return int(args.func(args) or 0)
    except ResizePipelineError as exc:
        print(f"resize-pipeline: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("resize-pipeline: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
