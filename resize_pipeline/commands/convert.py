"""``resize-pipeline convert SOURCE DEST``: flags generated from `ConvertConfig`'s field options."""

from __future__ import annotations

import argparse
import sys
from typing import Any

_GROUPS = {
    "output": "output options (they change the bytes written; a rerun with others is refused unless --overwrite)",
    "run": "how it runs",
    "ray": "Ray engine (--engine ray; RESIZE_PIPELINE_RAY_* environment variables override these)",
}


def _range(kind: Any) -> str | None:
    """The documented range of a numeric option (``1..65536``, ``[0, 1]``, ``(0, 86400] or 0/none``)."""
    from resize_pipeline.config import Float, Int, Timeout

    if isinstance(kind, Int) and kind.lo is not None and kind.hi is not None:
        return f"{kind.lo}..{kind.hi}"
    if isinstance(kind, Float) and kind.lo is not None and kind.hi is not None:
        return f"{'(' if kind.lo_open else '['}{kind.lo:g}, {kind.hi:g}]"
    if isinstance(kind, Timeout):
        return f"(0, {kind.hi:g}], or 0/none for no timeout"
    return None


def _help(option: Any, default: Any) -> str:
    from resize_pipeline.config import Bool

    parts = [option.help]  # choices: argparse shows them as {a,b,c}
    rng = _range(option.kind)
    if rng:
        parts.append(f"range {rng}")
    is_switch = isinstance(option.kind, Bool) and option.bool_flag != "both"
    if not is_switch and option.default_text is not None:
        parts.append(f"default: {option.default_text}")
    elif not is_switch:
        parts.append(f"default: {option.kind.describe_default(default)}")
    text = parts[0] + (f" ({'; '.join(parts[1:])})" if len(parts) > 1 else "")
    return text.replace("%", "%%")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """SOURCE, DEST, ``--config`` and one flag per `cli_options` field (values stay text until
    `config_from_args` parses them, so a bad value is a one-line `ConfigError` naming the flag)."""
    from resize_pipeline.config import Bool, ConvertConfig, Int, Str, cli_options, flag_names

    options = ConvertConfig.options()
    defaults = ConvertConfig.defaults()
    p.add_argument("source", help=options["source"].help.replace("%", "%%"))
    p.add_argument("dest", help=options["dest"].help.replace("%", "%%"))
    p.add_argument("--config", metavar="FILE",
                   help="TOML/YAML file of these options, dashes or underscores (flags given here win)")
    groups = {g: p.add_argument_group(title) for g, title in _GROUPS.items()}
    for name, option in cli_options().items():
        g = groups[option.group]
        flags = flag_names(name, option)
        help_ = _help(option, defaults.get(name))
        if isinstance(option.kind, Bool):
            action: Any = {"on": "store_true", "off": "store_false", "both": argparse.BooleanOptionalAction}
            g.add_argument(*flags, dest=name, action=action[option.bool_flag], default=None, help=help_)
        elif isinstance(option.kind, Str) and option.kind.allowed:
            g.add_argument(*flags, dest=name, choices=option.kind.allowed, default=None, help=help_)
        else:
            metavar = option.metavar or ("N" if isinstance(option.kind, Int) else name.upper())
            g.add_argument(*flags, dest=name, default=None, metavar=metavar, help=help_)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert images into WebDataset/Parquet shards",
                       description="Convert SOURCE (folder, glob, manifest, tars, Parquet; any fsspec URL) "
                       "into resized shards in DEST, with _manifest.json and _errors.jsonl.")
    add_arguments(p)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """The `ConvertConfig` of a parsed ``convert`` command line: the config file, then the flags given."""
    from resize_pipeline.config import ConvertConfig, cli_options, flag_names, load_config_file
    from resize_pipeline.errors import ConfigError

    values: dict[str, Any] = load_config_file(args.config) if getattr(args, "config", None) else {}
    given = [k for k in ("source", "dest") if k in values]
    if given:  # the positionals always win: a value here would be silently ignored
        raise ConfigError(f"config file {args.config}: {' and '.join(given)} must be given on the command line")
    options = ConvertConfig.options()
    for name, v in values.items():  # each value of the file is checked, even one a flag replaces
        if name in options:
            options[name].check(f"config: {name}", v)
    for name, option in cli_options().items():
        v = getattr(args, name, None)
        if v is None:
            continue
        if isinstance(v, str):  # a flag's text: typed and range-checked as the flag
            v = option.parse(flag_names(name, option)[-1], v)
        values[name] = v
    values["source"], values["dest"] = args.source, args.dest
    return ConvertConfig.from_dict(values)


def run(args: argparse.Namespace) -> int:
    from resize_pipeline.conversion import convert

    config = config_from_args(args)
    if config.resizer == "learned" and not config.quiet:  # the bundled checkpoint: say what it is
        from resize_pipeline.learned import bundled_note

        print(f"note: {bundled_note()}", file=sys.stderr)
    summary = convert(config)
    if summary.dry_run:  # its whole point is this output: printed even with --quiet
        print(summary.line())
        pending = summary.plan.get("pending", [])
        if pending:
            more = summary.shards - summary.resumed_shards - len(pending)
            print("to convert: " + ", ".join(pending) + (f" (+{more} more)" if more > 0 else ""))
        return 0
    if not config.quiet:
        print(summary.line())
        print(f"manifest: {summary.manifest_path}")
        if summary.failed:
            print(f"errors:   {summary.errors_path}", file=sys.stderr)
    return 0
