"""Joint training of the resizer with a classifier on a labelled dataset (task loss only).

``train(TrainConfig(...))`` is the public function behind ``resize-pipeline train``. The same loop
trains a fixed classical baseline (``resizer="bilinear"`` etc.) so that `evaluate` compares like with
like: same classifier, same data, same output size, same steps.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from resize_pipeline.learned.classifier import SmallResNet
from resize_pipeline.learned.model import DEFAULT_VARIANT, INTERPOLATIONS, interpolate, variant_config
from resize_pipeline.learned.util import resolve_device, seed_everything

log = logging.getLogger(__name__)

#: fixed resizers the classifier can be trained behind (torch ops; "bilinear" = antialiased, like Pillow).
BASELINES = {
    "bilinear": "bilinear-aa",
    "bilinear-noaa": "bilinear",
    "bicubic": "bicubic-aa",
    "area": "area",
}
RESIZERS = ("learned", *BASELINES)


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Everything a training run depends on (recorded in checkpoints and the exported model's JSON)."""

    data: str = "synthetic"  # "synthetic", an ImageFolder dir, a dir / glob of *.tar or *.parquet
    val_data: str | None = None  # default: synthetic -> a fresh generated set; else a held-out split
    target_size: int = 32  # classifier input side; the resizer sees input_scale x this
    resizer: str = "learned"
    variant: str = DEFAULT_VARIANT
    interpolation: str = "bilinear"
    input_scale: float = 2.0
    zero_init_last: bool = True
    epochs: int = 6
    max_steps: int | None = None  # stop early (tests, smoke runs)
    batch_size: int = 64
    lr: float = 1e-3  # classifier (Adam)
    resizer_lr: float = 1e-4
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    classifier_width: int = 32
    seed: int = 0
    data_seed: int = 0  # the synthetic train set; the synthetic val set uses data_seed + 1
    num_train: int = 3000  # synthetic only
    num_val: int = 2000  # synthetic only
    val_fraction: float = 0.2  # real data without val_data
    device: str = "auto"
    threads: int | None = None
    workers: int = 0
    out_dir: str | None = None  # checkpoints (last.pt) and, by default, the exported resizer
    export_dir: str | None = None  # where the frozen resizer goes (default: out_dir/resizer)
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.resizer not in RESIZERS:
            raise ValueError(f"unknown resizer {self.resizer!r}; expected one of {', '.join(RESIZERS)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"unknown interpolation {self.interpolation!r}; expected one of {', '.join(INTERPOLATIONS)}"
            )
        if self.target_size < 4 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("target_size >= 4, epochs >= 1 and batch_size >= 1 are required")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    @property
    def input_size(self) -> int:
        return int(round(self.target_size * self.input_scale))


@dataclass(slots=True)
class TrainResult:
    config: TrainConfig
    val_accuracy: float
    losses: list[float] = field(default_factory=list)  # per step
    epoch_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    resizer: nn.Module | None = None
    classifier: nn.Module | None = None
    export_dir: str | None = None


class FixedResizer(nn.Module):
    """A classical resize as a module (no parameters), same call signature as the learned one."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.mode == "area":
            return F.interpolate(x, size=size, mode="area")
        return interpolate(x, size, self.mode)


def build_datasets(cfg: TrainConfig) -> tuple[Any, Any, int]:
    """(train, val, num_classes) at the resizer's input size."""
    from resize_pipeline.learned import data

    size = cfg.input_size
    val: Any
    if cfg.data == "synthetic":
        syn = data.SyntheticConfig(size=size)
        train = data.SyntheticGratings(cfg.num_train, cfg.data_seed, syn)
        val = data.SyntheticGratings(cfg.num_val, cfg.data_seed + 1, syn)
        return train, val, syn.num_classes
    full = data.open_dataset(cfg.data, size)
    num_classes = max(full.labels) + 1
    if cfg.val_data:
        val = data.open_dataset(cfg.val_data, size)
        return full, val, max(num_classes, max(val.labels) + 1)
    g = torch.Generator().manual_seed(cfg.data_seed)
    perm = torch.randperm(len(full), generator=g).tolist()
    n_val = max(1, int(len(full) * cfg.val_fraction))
    return Subset(full, perm[n_val:]), Subset(full, perm[:n_val]), num_classes


def build_resizer(cfg: TrainConfig) -> nn.Module:
    if cfg.resizer == "learned":
        from resize_pipeline.learned.model import LearnedResizerNet

        rcfg = variant_config(
            cfg.variant,
            interpolation=cfg.interpolation,
            input_scale=cfg.input_scale,
            zero_init_last=cfg.zero_init_last,
        )
        return LearnedResizerNet(rcfg)
    return FixedResizer(BASELINES[cfg.resizer])


def _to_float(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.to(device, non_blocking=True).float().div_(255.0)


@torch.no_grad()
def evaluate_accuracy(
    resizer: nn.Module, classifier: nn.Module, loader: DataLoader, size: int, device: torch.device
) -> float:
    resizer.eval()
    classifier.eval()
    correct = total = 0
    for x, y in loader:
        logits = classifier(resizer(_to_float(x, device), (size, size)))
        correct += int((logits.argmax(1).cpu() == y).sum())
        total += len(y)
    return correct / max(total, 1)


def train(cfg: TrainConfig) -> TrainResult:
    """Train classifier (+ learned resizer) and report held-out accuracy; export the resizer if asked."""
    from tqdm.auto import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    train_set, val_set, num_classes = build_datasets(cfg)
    log.info(
        "data: %d train / %d val, %d classes, input %d -> %d",
        len(train_set),
        len(val_set),
        num_classes,
        cfg.input_size,
        cfg.target_size,
    )

    seed_everything(cfg.seed)  # model init independent of how much randomness data generation used
    resizer = build_resizer(cfg).to(device)
    classifier = SmallResNet(num_classes, cfg.classifier_width).to(device)
    groups = [{"params": classifier.parameters(), "lr": cfg.lr}]
    if cfg.resizer == "learned":
        groups.append({"params": resizer.parameters(), "lr": cfg.resizer_lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=gen,
        num_workers=cfg.workers,
        drop_last=len(train_set) > cfg.batch_size,
    )
    total = (
        len(loader) * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, len(loader) * cfg.epochs)
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    val_loader = DataLoader(val_set, batch_size=256, num_workers=cfg.workers)
    size = (cfg.target_size, cfg.target_size)

    start_epoch, step = 0, 0
    result = TrainResult(cfg, 0.0)
    ckpt_path = os.path.join(cfg.out_dir, "last.pt") if cfg.out_dir else None
    if cfg.resume and ckpt_path and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        resizer.load_state_dict(ck["resizer"])
        classifier.load_state_dict(ck["classifier"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start_epoch, step = ck["epoch"], ck["step"]
        result.losses, result.epoch_losses = ck["losses"], ck["epoch_losses"]
        gen.set_state(ck["generator"])
        log.info("resumed from %s at epoch %d", ckpt_path, start_epoch)

    bar = tqdm(
        total=total, initial=step, desc=f"train {cfg.resizer} seed={cfg.seed}", disable=not cfg.progress
    )
    for epoch in range(start_epoch, cfg.epochs):
        if step >= total:
            break
        resizer.train()
        classifier.train()
        running, n = 0.0, 0
        for x, y in loader:
            x, y = _to_float(x, device), y.to(device)
            loss = F.cross_entropy(classifier(resizer(x, size)), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            result.losses.append(loss.item())
            running, n = running + result.losses[-1], n + 1
            bar.update(1)
            bar.set_postfix(loss=f"{running / n:.3f}", epoch=epoch + 1)
            if step >= total:
                break
        result.epoch_losses.append(running / max(n, 1))
        log.info("epoch %d: mean loss %.4f", epoch + 1, running / max(n, 1))
        if ckpt_path:
            os.makedirs(os.path.dirname(ckpt_path) or ".", exist_ok=True)
            torch.save(
                {
                    "resizer": resizer.state_dict(),
                    "classifier": classifier.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "epoch": epoch + 1,
                    "step": step,
                    "losses": result.losses,
                    "epoch_losses": result.epoch_losses,
                    "generator": gen.get_state(),
                    "config": asdict(cfg),
                },
                ckpt_path,
            )
    bar.close()

    result.val_accuracy = evaluate_accuracy(resizer, classifier, val_loader, cfg.target_size, device)
    result.seconds, result.steps = time.perf_counter() - t0, step
    result.resizer, result.classifier = resizer, classifier
    log.info(
        "%s seed=%d: val accuracy %.4f after %d steps (%.0f s)",
        cfg.resizer,
        cfg.seed,
        result.val_accuracy,
        step,
        result.seconds,
    )
    export_dir = cfg.export_dir or (os.path.join(cfg.out_dir, "resizer") if cfg.out_dir else None)
    if export_dir and cfg.resizer == "learned":
        from resize_pipeline.learned.export import export_resizer

        provenance = {
            "train_config": asdict(cfg),
            "steps": step,
            "val_accuracy": result.val_accuracy,
            "final_epoch_loss": result.epoch_losses[-1] if result.epoch_losses else None,
            "torch": torch.__version__,
        }
        result.export_dir = str(export_resizer(resizer, export_dir, provenance))
    return result
