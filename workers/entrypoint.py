"""Ray job entrypoint: ``resize-pipeline convert ... --engine ray --address auto``.

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python workers/entrypoint.py s3://bucket/raw s3://bucket/shards --size 256 --format both

Arguments are those of ``resize-pipeline convert``; ``--engine ray`` and ``--address auto`` (the
cluster the job runs in) are added unless given. Rerunning the same job resumes from the shards
already complete in DEST.

A job runs in its uploaded working directory (``.../runtime_resources/working_dir_files/_ray_pkg_...``),
so a relative local SOURCE or DEST would name a folder there: it is refused with a hint (one line,
exit 2). ``deploy/submit.sh`` makes local paths absolute before it submits.
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


def in_a_job() -> bool:
    """Whether this process is a Ray job's driver (``ray job submit`` sets this variable)."""
    return bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")) or "working_dir_files" in os.getcwd()


def relative_paths(argv: list[str]) -> list[tuple[str, str]]:
    """(``SOURCE``/``DEST``, value) for the positional paths of a convert command line that are
    relative local paths (the flags that take a value are the config's, `config.cli_options`)."""
    from resize_pipeline.config import Bool, cli_options, flag_names

    valued = {"--config"}
    for name, option in cli_options().items():
        if not isinstance(option.kind, Bool):
            valued.update(flag_names(name, option))
    positional: list[str] = []
    tokens = iter(argv[1:])
    for tok in tokens:
        if tok == "--":
            positional += list(tokens)
            break
        if tok.startswith("-") and tok != "-":
            if tok in valued:
                next(tokens, None)
            continue
        positional.append(tok)
    return [(what, v) for what, v in zip(("SOURCE", "DEST"), positional[:2], strict=False)
            if "://" not in v and not os.path.isabs(v)]


def main(args: list[str] | None = None) -> int:
    # `python workers/entrypoint.py` puts workers/ on sys.path, not the checkout that holds the package
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    from resize_pipeline.cli import main as cli_main

    argv = build_argv(sys.argv[1:] if args is None else args)
    if in_a_job():
        bad = relative_paths(argv)
        if bad:
            what, value = bad[0]
            print(f"resize-pipeline convert: error: {what} {value!r} is a relative path, and a Ray job runs in its "
                  f"uploaded working directory ({os.getcwd()}), where it would name another folder: give an "
                  "absolute path on a filesystem every node sees, or a URL (deploy/submit.sh makes local paths "
                  "absolute)", file=sys.stderr)
            return 2
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
