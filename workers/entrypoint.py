"""Ray job entrypoint: ``resize-pipeline convert ... --engine ray --address auto``.

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python workers/entrypoint.py s3://bucket/raw s3://bucket/shards --size 256 --format both

Arguments are those of ``resize-pipeline convert``; ``--engine ray`` and ``--address auto`` (the
cluster the job runs in) are added unless given. Rerunning the same job resumes from the shards
already complete in DEST.
"""

from __future__ import annotations

import os
import sys


def build_argv(args: list[str]) -> list[str]:
    argv = ["convert", *args]
    if not any(a == "--engine" or a.startswith("--engine=") for a in args):
        argv += ["--engine", "ray"]
    if not any(a == "--address" or a.startswith("--address=") for a in args):
        argv += ["--address", "auto"]
    return argv


def main(args: list[str] | None = None) -> int:
    # `python workers/entrypoint.py` puts workers/ on sys.path, not the checkout that holds the package
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    from resize_pipeline.cli import main as cli_main

    return cli_main(build_argv(sys.argv[1:] if args is None else args))


if __name__ == "__main__":
    sys.exit(main())
