"""Joint training of the resizer with a classifier on a labelled dataset (task loss only).

``train(TrainConfig(...))`` is the public function behind ``resize-pipeline train``. The same loop
trains the classifier behind a fixed classical baseline (``resizer="bilinear"`` etc.) or behind an
exported, frozen resizer (``resizer="learned:PATH"``), so that `evaluate` compares like with like:
same classifier, same data, same output size, same steps.

Recipe (Talebi & Milanfar 2021): the classifier is the user's backbone (`backbones`); a real backbone
is first trained behind the fixed skip interpolation (bilinear) for ``pretrain_epochs`` (or comes
trained that way through ``backbone_weights``), then resizer and backbone are trained jointly for
``epochs``. With the zero-initialised last conv the learned resizer starts out as exactly that
bilinear resize, so joint training starts from what the backbone already knows.

While it runs (`monitor`): bad inputs are skipped and counted (``OUT_DIR/_skipped.jsonl``; above
``max_bad_fraction`` the run stops with one line); a non-finite loss or weight stops it with one line
naming the step; after the first steps it says what a step costs, the estimated total and the peak
memory.

Devices: ``device="cuda"`` trains under bf16 autocast with channels_last tensors. Multi-GPU (and
multi-process CPU, backend gloo): launch with ``torchrun --nproc-per-node N -m resize_pipeline.cli
train ...`` (`distributed`); each process reads its share of every epoch (DistributedSampler),
gradients are averaged by DistributedDataParallel, every process evaluates a slice of the held-out set
(counts summed), rank 0 checkpoints and exports. ``batch_size`` is per process.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from resize_pipeline.errors import ConfigError
from resize_pipeline.learned import distributed as dist_
from resize_pipeline.learned.build import (
    base_dataset,
    build_classifier,
    build_datasets,
    build_resizer,
    frozen_scale,
)
from resize_pipeline.learned.distributed import shutdown_distributed
from resize_pipeline.learned.model import interpolate
from resize_pipeline.learned.modules import (
    FixedResizer,
    GaussianLowpass,
    ResizeThenClassify,
)
from resize_pipeline.learned.monitor import CostMeter, RunLedger, check_finite
from resize_pipeline.learned.train_config import (
    BASELINES,
    RESIZERS,
    TRAIN_PRECISIONS,
    TrainConfig,
    TrainResult,
)
from resize_pipeline.learned.util import resolve_device, seed_everything

log = logging.getLogger(__name__)

__all__ = ["BASELINES", "RESIZERS", "TRAIN_PRECISIONS", "TrainConfig", "TrainResult", "train",
           "evaluate_accuracy", "shutdown_distributed", "build_datasets", "FixedResizer", "GaussianLowpass"]


def _batches(loader: DataLoader, ledger: RunLedger | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's batches without their bad samples, which go to `ledger` (without one: the log)."""
    for x, y, bad in loader:
        if bad:
            if ledger is not None:
                ledger.met([rec for _, rec in bad])
            else:
                for _, rec in bad:
                    log.warning("skipped %s (%s: %s)", rec.get("path"), rec.get("error_type"), rec.get("error"))
        if len(y):
            yield x, y


def _to_float(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    x = x.to(device, non_blocking=True).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "bf16":
        return torch.bfloat16
    if cfg.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


@torch.no_grad()
def evaluate_accuracy(
    resizer: nn.Module,
    classifier: nn.Module,
    loader: DataLoader,
    size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    world: int = 1,
    ledger: RunLedger | None = None,
) -> float:
    """Held-out accuracy over the samples that decode (the others go to `ledger`); under torchrun each
    process passes its own slice and counts are summed."""
    resizer.eval()
    classifier.eval()
    correct = total = 0
    for x, y in _batches(loader, ledger):
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            logits = classifier(resizer(_to_float(x, device, channels_last), (size, size)))
        correct += int((logits.argmax(1).cpu() == y).sum())
        total += len(y)
    correct, total = (int(v) for v in dist_.sum_counts([correct, total], world, device))
    return correct / max(total, 1)


# --- the loop ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Phase:
    name: str
    resizer: nn.Module
    epochs: int
    train_resizer: bool


def _cosine(total: int):
    def factor(step: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))

    return factor


def _save_checkpoint(path: str, state: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def _say(notify: Callable[[str], None] | None) -> Callable[[str], None]:
    return notify if notify is not None else (lambda msg: log.info("%s", msg))


def train(cfg: TrainConfig, notify: Callable[[str], None] | None = None) -> TrainResult:
    """Train classifier (+ learned resizer) and report held-out accuracy; export the resizer if asked.

    `notify` receives the lines a user should see while it runs (cost, warnings); default: the log."""
    from tqdm.auto import tqdm

    say = _say(notify)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, world, local_rank = dist_.distributed_env()
    device = resolve_device(cfg.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        dist_.init_distributed(device)
    amp_dtype = _amp_dtype(cfg, device)
    channels_last = cfg.channels_last and device.type == "cuda"
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    from resize_pipeline.learned.backbones import check_backbone

    check_backbone(cfg.backbone)  # a missing torchvision / timm / module fails before the data is read
    if cfg.backbone_weights and not os.path.isfile(cfg.backbone_weights):
        raise ConfigError(f"--backbone-weights {cfg.backbone_weights}: no such file")
    cfg = frozen_scale(cfg, say)
    batch = cfg.resolved_batch_size(device.type)
    try:
        ds = build_datasets(cfg)
    except ConfigError:
        raise
    except (ValueError, OSError) as exc:  # bad --data / --val-data: one line naming what is wrong
        raise ConfigError(f"training data: {exc}") from exc
    log.info("data: %d train / %d val, %d classes, input %d -> %d", len(ds.train), len(ds.val), ds.num_classes,
             cfg.input_size, cfg.target_size)
    ckpt_path = os.path.join(cfg.out_dir, "last.pt") if cfg.out_dir else None
    ledger = RunLedger(ds.inputs, cfg.max_bad_fraction, ds.errors, world=world, out_dir=cfg.out_dir if rank == 0 else None)
    if cfg.prescan and cfg.data != "synthetic":
        from resize_pipeline.learned.prescan import prescan

        for part in {id(d): d for d in (base_dataset(ds.train), base_dataset(ds.val))}.values():
            ledger.add(dist_.gather_lists(prescan(part, rank=rank, world=world, progress=cfg.progress), world))
    if ledger.over():
        ledger.sync(device)

    seed_everything(cfg.seed)  # model init independent of how much randomness data generation used
    resizer = build_resizer(cfg).to(device)
    classifier = build_classifier(cfg, ds.num_classes).to(device)
    if channels_last:
        resizer = resizer.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        classifier = classifier.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    learned = cfg.learned
    phases = []
    if cfg.resolved_pretrain_epochs:
        fixed = FixedResizer(cfg.interpolation) if learned else resizer
        phases.append(_Phase("pretrain", fixed, cfg.resolved_pretrain_epochs, False))
    phases.append(_Phase("joint" if learned else "train", resizer, cfg.epochs, learned))

    from resize_pipeline.learned.data import collate

    gen = torch.Generator().manual_seed(cfg.seed)
    sampler: Any = None
    if world > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(ds.train, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                                     drop_last=len(ds.train) >= world * batch)
    loader = DataLoader(
        ds.train,
        batch_size=batch,
        shuffle=sampler is None,
        sampler=sampler,
        generator=gen if sampler is None else None,
        num_workers=cfg.workers,
        collate_fn=collate,
        drop_last=len(ds.train) // world > batch,
        pin_memory=device.type == "cuda",
    )
    # each process evaluates every world-th held-out sample (exact: no padding, counts summed); batches
    # of the training size: a batch of 256 at 448 px held ~3 GB of activations on a CPU
    val_part = ds.val if world == 1 else Subset(ds.val, list(range(rank, len(ds.val), world)))
    val_loader = DataLoader(val_part, batch_size=batch, num_workers=cfg.workers, collate_fn=collate)
    size = (cfg.target_size, cfg.target_size)
    lowpass = GaussianLowpass(2.0).to(device) if learned and cfg.fidelity_weight > 0 else None
    phase_steps = []
    budget = cfg.max_steps
    for ph in phases:
        n = len(loader) * ph.epochs
        if budget is not None:
            n = min(n, budget)
            budget -= n
        phase_steps.append(n)

    start_phase, start_epoch, step = 0, 0, 0
    result = TrainResult(cfg, 0.0, rank=rank, world_size=world, batch_size=batch, inputs=ds.inputs)
    ck: dict[str, Any] | None = None
    if cfg.resume and ckpt_path and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        resizer.load_state_dict(ck["resizer"])
        classifier.load_state_dict(ck["classifier"])
        start_phase, start_epoch, step = ck.get("phase", 0), ck["epoch"], ck["step"]
        result.losses, result.epoch_losses = ck["losses"], ck["epoch_losses"]
        ledger.add(ck.get("skipped", []))
        gen.set_state(ck["generator"])
        log.info("resumed from %s at phase %d epoch %d", ckpt_path, start_phase, start_epoch)

    what = f"batch {batch}, {cfg.input_size}->{cfg.target_size} px, {cfg.backbone} on {device}"
    if device.type == "cpu" and cfg.target_size >= 128 and sum(phase_steps) > step and rank == 0:
        say(f"training on the CPU at --size {cfg.target_size} ({what}): {sum(phase_steps) - step} steps of "
            "several seconds each; a GPU (--device cuda) is far faster. The measured cost follows after 4 steps")
    meter = CostMeter(sum(phase_steps) - step, say if rank == 0 else (lambda _m: None), device, what)
    bar = tqdm(
        total=sum(phase_steps), initial=step, desc=f"train {cfg.resizer} seed={cfg.seed}",
        disable=not cfg.progress or rank != 0,
    )
    epoch_offset = sum(ph.epochs for ph in phases[:start_phase])
    for p_idx, ph in enumerate(phases):
        if p_idx < start_phase:
            continue
        total = phase_steps[p_idx]
        if total == 0:
            continue
        groups = [{"params": list(classifier.parameters()), "lr": cfg.lr}]
        if ph.train_resizer:
            groups.append({"params": list(resizer.parameters()), "lr": cfg.resizer_lr})
        trained = [classifier, resizer] if ph.train_resizer else [classifier]
        opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine(total))
        first = 0
        if ck is not None and p_idx == start_phase:
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            first = start_epoch
        done_before = sum(phase_steps[:p_idx])
        model: nn.Module = ResizeThenClassify(ph.resizer, classifier, size, channels_last)
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if device.type == "cuda" else None
            model = DDP(model, device_ids=ids)
        log.info("phase %s: %d epoch(s), %d steps, resizer %s", ph.name, ph.epochs, total,
                 "trained" if ph.train_resizer else "fixed")
        for epoch in range(first, ph.epochs):
            if step - done_before >= total:
                break
            if sampler is not None:
                sampler.set_epoch(epoch_offset + epoch)
            ph.resizer.train(ph.train_resizer)
            classifier.train()
            running, n = 0.0, 0
            for x, y in _batches(loader, ledger):
                x, y = _to_float(x, device, channels_last), y.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                    logits, out = model(x)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                    if lowpass is not None and ph.train_resizer:
                        skip = interpolate(x, size, cfg.interpolation)
                        fid = F.mse_loss(lowpass(out.float()), lowpass(skip.float()))
                        loss = loss + cfg.fidelity_weight * fid
                value = loss.item()
                if not dist_.all_true(math.isfinite(value), world, device):  # every process stops together
                    check_finite(step + 1, ph.name, value if not math.isfinite(value) else math.nan)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                check_finite(step, ph.name, modules=trained)  # the weights this step wrote
                result.losses.append(value)
                running, n = running + value, n + 1
                meter.step(step - (ck["step"] if ck is not None else 0))
                bar.update(1)
                bar.set_postfix(loss=f"{running / n:.3f}", phase=ph.name, epoch=epoch + 1)
                if step - done_before >= total:
                    break
            ledger.sync(device)
            result.epoch_losses.append(running / max(n, 1))
            log.info("%s epoch %d: mean loss %.4f", ph.name, epoch + 1, running / max(n, 1))
            if ckpt_path and rank == 0:
                _save_checkpoint(
                    ckpt_path,
                    {
                        "resizer": resizer.state_dict(),
                        "classifier": classifier.state_dict(),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "phase": p_idx,
                        "epoch": epoch + 1,
                        "step": step,
                        "losses": result.losses,
                        "epoch_losses": result.epoch_losses,
                        "generator": gen.get_state(),
                        "skipped": list(ledger.records.values()),
                        "config": asdict(cfg),
                    },
                )
        epoch_offset += ph.epochs
        if ph.name == "pretrain":
            result.pretrain_steps = step
        del model  # a DDP wrapper removes its gradient hooks when it goes
    bar.close()

    if world > 1:  # BN running stats drift per process after the last broadcast: evaluate rank 0's model
        dist_.broadcast_state(resizer, classifier)
    result.val_accuracy = evaluate_accuracy(
        resizer, classifier, val_loader, cfg.target_size, device, amp_dtype, channels_last, world, ledger
    )
    ledger.sync(device)
    result.seconds, result.steps = time.perf_counter() - t0, step
    result.resizer, result.classifier = resizer, classifier
    result.skipped = list(ledger.records.values())
    if ledger.count:
        log.info("%s", ledger.summary())
    log.info("%s seed=%d: val accuracy %.4f after %d steps (%.0f s)", cfg.resizer, cfg.seed,
             result.val_accuracy, step, result.seconds)
    export_dir = cfg.export_dir or (os.path.join(cfg.out_dir, "resizer") if cfg.out_dir else None)
    if rank == 0:
        if cfg.out_dir:
            from resize_pipeline.learned.backbones import backbone_state_dict

            os.makedirs(cfg.out_dir, exist_ok=True)
            torch.save(backbone_state_dict(classifier), os.path.join(cfg.out_dir, "backbone.pt"))
            result.skipped_file = ledger.write(cfg.out_dir)
        if export_dir and learned:
            from resize_pipeline.learned.export import export_resizer

            check_finite(step, "export", modules=[resizer])
            provenance = {
                "train_config": asdict(cfg),
                "steps": step,
                "pretrain_steps": result.pretrain_steps,
                "world_size": world,
                "batch_size": batch,
                "val_accuracy": result.val_accuracy,
                "final_epoch_loss": result.epoch_losses[-1] if result.epoch_losses else None,
                "skipped_inputs": ledger.count,
                "torch": torch.__version__,
            }
            result.export_dir = str(export_resizer(resizer, export_dir, provenance))
    dist_.barrier(world)
    if world > 1 and export_dir and learned:
        result.export_dir = export_dir
    return result
