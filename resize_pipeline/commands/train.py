"""``resize-pipeline train``: train the learned resizer jointly with a classifier, export it frozen."""

from __future__ import annotations

import argparse


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by ``train`` and ``evaluate`` (defaults = the bundled checkpoint's recipe)."""
    # names only (no torch import: the CLI starts without it); validated when the model is built
    variants = [f"resizer_n{n}_r{r}" for n in (16, 32) for r in (1, 2, 3, 4)]
    interpolations = ("bilinear", "bicubic", "bilinear-aa", "bicubic-aa")

    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        default="synthetic",
        help="'synthetic' (generated task), an ImageFolder dir, or a dir/glob of *.tar / *.parquet shards",
    )
    g.add_argument(
        "--val-data", default=None, help="held-out set (default: synthetic -> fresh set; else a split)"
    )
    g.add_argument("--val-fraction", type=float, default=0.2, help="held-out split without --val-data")
    g.add_argument("--num-train", type=int, default=3000, help="synthetic train images (default 3000)")
    g.add_argument("--num-val", type=int, default=2000, help="synthetic held-out images (default 2000)")
    g.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data / split")
    g = p.add_argument_group("model")
    g.add_argument("--size", type=int, default=32, help="classifier input side = resizer output (default 32)")
    g.add_argument(
        "--input-scale", type=float, default=2.0, help="resizer input = input_scale x size (default 2)"
    )
    g.add_argument("--variant", default="resizer_n16_r1", help=f"registered variant ({', '.join(variants)})")
    g.add_argument(
        "--interpolation", default="bilinear", help=f"skip/bottleneck resize ({', '.join(interpolations)})"
    )
    g.add_argument(
        "--no-zero-init",
        dest="zero_init_last",
        action="store_false",
        help="random init of the last 7x7 conv (default: zero, i.e. start as plain interpolation)",
    )
    g.add_argument("--classifier-width", type=int, default=32)
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=6)
    g.add_argument("--max-steps", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--lr", type=float, default=1e-3, help="classifier learning rate (AdamW, cosine)")
    g.add_argument("--resizer-lr", type=float, default=1e-4, help="resizer learning rate")
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--label-smoothing", type=float, default=0.1)
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--workers", type=int, default=0, help="DataLoader workers (real images)")
    g.add_argument("--no-progress", dest="progress", action="store_false")


def train_config_from_args(args: argparse.Namespace, **extra):
    from resize_pipeline.learned.train import TrainConfig

    return TrainConfig(
        data=args.data,
        val_data=args.val_data,
        val_fraction=args.val_fraction,
        num_train=args.num_train,
        num_val=args.num_val,
        data_seed=args.data_seed,
        target_size=args.size,
        input_scale=args.input_scale,
        variant=args.variant,
        interpolation=args.interpolation,
        zero_init_last=args.zero_init_last,
        classifier_width=args.classifier_width,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        resizer_lr=args.resizer_lr,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        device=args.device,
        threads=args.threads,
        workers=args.workers,
        progress=args.progress,
        **extra,
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the learned resizer jointly with a classifier and export it (safetensors + JSON)",
        description="Defaults reproduce the bundled checkpoint: "
        "resize-pipeline train --seed 0 --threads 1 --export resize_pipeline/weights/default",
    )
    add_train_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=None, help="checkpoints (last.pt, each epoch); export to OUT/resizer")
    p.add_argument("--export", dest="export_dir", default=None, help="write the frozen resizer here")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resize_pipeline.errors import ConfigError
    from resize_pipeline.learned.train import train

    try:
        cfg = train_config_from_args(
            args, seed=args.seed, out_dir=args.out_dir, export_dir=args.export_dir, resume=args.resume
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    res = train(cfg)
    print(
        f"held-out accuracy {res.val_accuracy:.4f} after {res.steps} steps ({res.seconds:.0f} s), "
        f"final train loss {res.epoch_losses[-1]:.4f}"
    )
    if res.export_dir:
        print(f"exported resizer: {res.export_dir}")
    elif cfg.resizer == "learned":
        print("note: nothing exported (pass --export DIR or --out-dir DIR)")
    return 0
