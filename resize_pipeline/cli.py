"""``resize-pipeline``: a thin CLI over one public function per command."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import NoReturn

from resize_pipeline.version import __version__

#: command modules under resize_pipeline.commands; each has add_parser(subparsers) and run(args) -> int
COMMANDS = ("convert", "inspect", "demo", "train", "evaluate", "preview")


class Parser(argparse.ArgumentParser):
    """argparse with short errors: ``PROG: error: MESSAGE`` and ``try 'PROG --help'``, exit 2.

    Sub-command parsers are made with this class too (``add_subparsers`` uses the parent's class), and
    an unknown flag after a command is reported by that command's parser, under its name.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, self.error_text(message))

    def error_text(self, message: str) -> str:
        return f"{self.prog}: error: {one_line(message)}\ntry '{self.prog} --help'\n"

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            owner: argparse.ArgumentParser = self
            for action in self._actions:
                if isinstance(action, argparse._SubParsersAction):
                    owner = action.choices.get(getattr(ns, action.dest, None) or "", self)
            owner.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns


def one_line(message: str) -> str:
    """A message of several lines as one (the CLI's errors are one line each)."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def build_parser() -> Parser:
    parser = Parser(
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) and usage errors (2, already printed)
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 2
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is shown as \xNN, never a crash
        reconfigure = getattr(stream, "reconfigure", None)
        if callable(reconfigure):
            reconfigure(errors="backslashreplace")
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    if not getattr(args, "func", None):
        sys.stderr.write(parser.error_text(f"a command is required: {', '.join(parser_commands(parser))}"))
        return 2
    from resize_pipeline.errors import ResizePipelineError

    try:
        return int(args.func(args) or 0)
    except ResizePipelineError as exc:
        print(f"resize-pipeline: error: {one_line(str(exc)) or type(exc).__name__}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        print("resize-pipeline: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def parser_commands(parser: argparse.ArgumentParser) -> list[str]:
    """The command names ``parser`` knows."""
    return [name for a in parser._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices]


def run(argv: list[str] | None = None) -> NoReturn:
    """The command line (``resize-pipeline``): `main`, its exit handlers, then the process ends without
    the interpreter's final teardown. Arrow finishes some reads on its own threads (a Parquet file read
    through a Python file object, as fsspec's are); one that lets go of its Python buffer while the
    interpreter is being torn down is ended inside a C++ destructor, and the process aborts
    ("terminate called without an active exception", exit 134) after the job succeeded: seen 9 times
    in 120 runs of ``convert --update --dry-run`` on a loaded 2-core machine. Everything the command
    wrote is committed before `main` returns; the exit handlers (logging, temporary folders,
    multiprocessing) still run and the streams are flushed."""
    import atexit

    code = main(argv)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(code & 0xFF if code >= 0 else 1)


if __name__ == "__main__":
    run()
