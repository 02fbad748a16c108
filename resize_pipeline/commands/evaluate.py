"""``resize-pipeline evaluate``: classifier accuracy behind classical vs learned resizers, over seeds."""

from __future__ import annotations

import argparse
import os


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from resize_pipeline.commands.train import add_train_arguments

    p = subparsers.add_parser(
        "evaluate",
        help="train the same backbone behind an exported (learned:DIR) or trained resizer and classical ones; "
        "held-out accuracy with seed spread, colour fidelity",
    )
    add_train_arguments(p)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    p.add_argument(
        "--resizers",
        default="bilinear,bilinear-noaa,bicubic,bicubic-noaa,learned",
        help="comma-separated: learned:PATH (an exported resizer, frozen, as convert names it), learned (one "
        "trained in each run), bilinear / bicubic (antialiased, like Pillow), bilinear-noaa / bicubic-noaa (no "
        "antialias), area",
    )
    p.add_argument("--json", dest="json_out", default=None, help="also write all runs as JSON here")
    p.add_argument("--markdown", dest="markdown_out", default=None, help="also write the table as Markdown here")
    p.add_argument(
        "--fidelity-photos",
        type=int,
        default=48,
        help="held-out photos for the colour check of each learned run (0 = skip; needs scikit-image)",
    )
    p.add_argument("--fidelity-size", type=int, default=224, help="output side of that check (default 224)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resize_pipeline.commands.train import notify, train_config_from_args
    from resize_pipeline.errors import ConfigError
    from resize_pipeline.learned.distributed import shutdown_distributed
    from resize_pipeline.learned.evaluate import EvaluateConfig, evaluate, format_summary, save_report

    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
        cfg = EvaluateConfig(
            train=train_config_from_args(args),
            seeds=seeds,
            resizers=tuple(r.strip() for r in args.resizers.split(",") if r.strip()),
            json_out=args.json_out,
            markdown_out=args.markdown_out,
            fidelity_photos=args.fidelity_photos,
            fidelity_size=args.fidelity_size,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    try:
        report = evaluate(cfg, notify=notify, save=False)
    finally:
        shutdown_distributed()
    if int(os.environ.get("RANK", "0")) == 0:
        print(format_summary(report), flush=True)  # first: an unwritable --json never loses the results
        save_report(report, cfg.json_out, cfg.markdown_out)
    return 0
