"""``resize-pipeline train``: train the learned resizer jointly with a classifier, export it frozen."""

from __future__ import annotations

import argparse

#: the command that reproduces the bundled checkpoint (also in its MODEL_CARD.md)
REPRODUCE = "resize-pipeline train --seed 0 --threads 1 --export resize_pipeline/weights/default"


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by ``train`` and ``evaluate`` (defaults = the bundled checkpoint's recipe)."""
    # names only (no torch import: the CLI starts without it); validated when the model is built
    variants = ", ".join(
        f"resizer_n{n}_r{r}{suffix}" for suffix in ("", "_luma", "_lumahp") for n in (16, 32) for r in (1, 2, 3, 4)
    )
    interpolations = ("bilinear", "bicubic", "bilinear-aa", "bicubic-aa")

    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        default="synthetic",
        help="'synthetic' (generated task), an ImageFolder dir, a `convert` output dir (_manifest.json), "
        "a dir/glob of *.tar / *.parquet shards, or a manifest (.csv/.tsv/.jsonl/.json/.parquet: path + label)",
    )
    g.add_argument(
        "--val-data", default=None, help="held-out set (default: synthetic -> fresh set; else a split)"
    )
    g.add_argument("--val-fraction", type=float, default=0.2, help="held-out split without --val-data")
    g.add_argument(
        "--no-prescan",
        dest="prescan",
        action="store_false",
        help="skip reading every input once before training (its header check finds empty, unidentifiable, "
        "oversized and truncated files up front); bad files are then only found when first met",
    )
    g.add_argument("--num-train", type=int, default=3000, help="synthetic train images (default 3000)")
    g.add_argument("--num-val", type=int, default=2000, help="synthetic held-out images (default 2000)")
    g.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data / split")
    g.add_argument(
        "--max-bad-fraction",
        type=float,
        default=0.01,
        help="inputs that cannot be read, decoded or labelled are skipped and counted (OUT_DIR/_skipped.jsonl); "
        "above this fraction of the inputs training stops (default 0.01)",
    )
    g = p.add_argument_group("model")
    g.add_argument("--size", type=int, default=32, help="classifier input side = resizer output (default 32)")
    g.add_argument(
        "--input-scale", type=float, default=2.0, help="resizer input = input_scale x size (default 2)"
    )
    g.add_argument(
        "--variant",
        default="resizer_n16_r1_lumahp",
        help="registered variant: no suffix = the paper's RGB residual, _luma = one-channel residual, "
        f"_lumahp = one-channel high-passed residual (colour-safe; default resizer_n16_r1_lumahp). {variants}",
    )
    g.add_argument(
        "--interpolation", default="bilinear", help=f"skip/bottleneck resize ({', '.join(interpolations)})"
    )
    g.add_argument(
        "--no-zero-init",
        dest="zero_init_last",
        action="store_false",
        help="random init of the last 7x7 conv (default: zero, i.e. start as plain interpolation)",
    )
    g.add_argument(
        "--backbone",
        default="small",
        help="classifier trained with the resizer: small (built-in SmallResNet), torchvision:NAME, timm:NAME "
        "or MODULE:CALLABLE (a factory f(num_classes) -> nn.Module taking ImageNet-normalised RGB)",
    )
    g.add_argument(
        "--backbone-weights",
        default=None,
        metavar="PATH",
        help="local state dict (torch.save / .safetensors) loaded into the backbone; nothing is downloaded",
    )
    g.add_argument("--classifier-width", type=int, default=32, help="width of the 'small' backbone")
    g = p.add_argument_group("optimisation")
    g.add_argument(
        "--pretrain-epochs",
        type=int,
        default=None,
        help="epochs training the backbone alone behind bilinear before joint training (default: 0 for "
        "'small' or with --backbone-weights, else = --epochs: the paper's recipe)",
    )
    g.add_argument("--epochs", type=int, default=6, help="joint training epochs (default 6; evaluate: 0 with "
                   "--backbone-weights scores that backbone as it is)")
    g.add_argument("--max-steps", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None,
                   help="per process (default 64; 16 on a CPU at --size >= 128, where 64 needs ~10 GB)")
    g.add_argument("--lr", type=float, default=1e-3, help="classifier learning rate (AdamW, cosine)")
    g.add_argument("--resizer-lr", type=float, default=1e-4, help="resizer learning rate")
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--label-smoothing", type=float, default=0.1)
    g.add_argument(
        "--fidelity-weight",
        type=float,
        default=100.0,
        help="weight of a low-pass fidelity term: MSE of Gaussian (sigma 2 px) blurs of the output and of its "
        "bilinear skip (default 100, the bundled recipe; 0 = task loss only, as in the paper)",
    )
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (torchrun: one GPU per process)")
    g.add_argument("--precision", default="auto", help="auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16")
    g.add_argument(
        "--no-channels-last", dest="channels_last", action="store_false", help="keep NCHW tensors on CUDA"
    )
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
        max_bad_fraction=args.max_bad_fraction,
        prescan=args.prescan,
        target_size=args.size,
        input_scale=args.input_scale,
        variant=args.variant,
        interpolation=args.interpolation,
        zero_init_last=args.zero_init_last,
        backbone=args.backbone,
        backbone_weights=args.backbone_weights,
        classifier_width=args.classifier_width,
        pretrain_epochs=args.pretrain_epochs,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        resizer_lr=args.resizer_lr,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        fidelity_weight=args.fidelity_weight,
        device=args.device,
        precision=args.precision,
        channels_last=args.channels_last,
        threads=args.threads,
        workers=args.workers,
        progress=args.progress,
        **extra,
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the learned resizer jointly with a classifier and export it (safetensors + JSON)",
        description=f"Defaults reproduce the bundled checkpoint: {REPRODUCE}. "
        "Several GPUs (or CPU processes): torchrun --nproc-per-node N -m resize_pipeline.cli train ...",
    )
    add_train_arguments(p)
    p.add_argument(
        "--resizer",
        default="learned",
        help="learned (default), learned:PATH (an exported resizer, frozen: only the backbone trains behind "
        "it), or a fixed baseline to train the backbone behind: bilinear, bilinear-noaa, bicubic, bicubic-noaa, area",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out-dir", default=None, help="checkpoints (last.pt, each epoch), backbone.pt; export to OUT/resizer"
    )
    p.add_argument("--export", dest="export_dir", default=None, help="write the frozen resizer here")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt")
    p.set_defaults(func=run)


def notify(message: str) -> None:
    """What `train` / `evaluate` say while they run (cost, skipped inputs): one line on stderr."""
    import sys

    print(f"resize-pipeline: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from resize_pipeline.errors import ConfigError
    from resize_pipeline.learned.distributed import shutdown_distributed
    from resize_pipeline.learned.train import train

    try:
        cfg = train_config_from_args(
            args,
            resizer=args.resizer,
            seed=args.seed,
            out_dir=args.out_dir,
            export_dir=args.export_dir,
            resume=args.resume,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    try:
        res = train(cfg, notify=notify)
    finally:
        shutdown_distributed()
    if res.rank != 0:
        return 0
    procs = f" on {res.world_size} processes" if res.world_size > 1 else ""
    pre = f" ({res.pretrain_steps} behind bilinear first)" if res.pretrain_steps else ""
    final = f"final train loss {res.epoch_losses[-1]:.4f}" if res.epoch_losses else "no training step"
    print(
        f"held-out accuracy {res.val_accuracy:.4f} after {res.steps} steps{pre}{procs} of batch {res.batch_size} "
        f"({res.seconds:.0f} s), {final}"
    )
    if res.skipped:
        where = f", listed in {res.skipped_file}" if res.skipped_file else " (pass --out-dir to list them)"
        print(f"skipped {len(res.skipped)} of {res.inputs} inputs that could not be read, decoded or labelled{where}")
    if cfg.out_dir:
        print(f"checkpoint: {cfg.out_dir}/last.pt, trained backbone: {cfg.out_dir}/backbone.pt")
    if res.export_dir:
        print(f"exported resizer: {res.export_dir}  (use: resize-pipeline convert ... --resizer learned:{res.export_dir})")
    elif cfg.resizer == "learned":
        print("note: nothing exported (pass --export DIR or --out-dir DIR)")
    return 0
