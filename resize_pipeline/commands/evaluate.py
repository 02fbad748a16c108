"""``resize-pipeline evaluate``: classifier accuracy with bilinear vs learned resizer, over seeds."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from resize_pipeline.commands.train import add_train_arguments

    p = subparsers.add_parser(
        "evaluate",
        help="train the same classifier behind bilinear and learned resizers; accuracy with seed spread",
    )
    add_train_arguments(p)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    p.add_argument(
        "--resizers",
        default="bilinear,bilinear-noaa,learned",
        help="comma-separated: learned, bilinear (antialiased, like Pillow), bilinear-noaa, bicubic, area",
    )
    p.add_argument("--json", dest="json_out", default=None, help="also write all runs as JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resize_pipeline.commands.train import train_config_from_args
    from resize_pipeline.errors import ConfigError
    from resize_pipeline.learned.evaluate import EvaluateConfig, evaluate, format_summary

    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
        cfg = EvaluateConfig(
            train=train_config_from_args(args),
            seeds=seeds,
            resizers=tuple(r.strip() for r in args.resizers.split(",") if r.strip()),
            json_out=args.json_out,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    print(format_summary(evaluate(cfg)))
    return 0
