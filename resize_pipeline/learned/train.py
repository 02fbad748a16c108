"""Joint training of the resizer with a classifier on a labelled dataset (task loss only).

``train(TrainConfig(...))`` is the public function behind ``resize-pipeline train``. The same loop
trains a fixed classical baseline (``resizer="bilinear"`` etc.) so that `evaluate` compares like with
like: same classifier, same data, same output size, same steps.

Recipe (Talebi & Milanfar 2021): the classifier is the user's backbone (`backbones`); a real backbone
is first trained behind the fixed skip interpolation (bilinear) for ``pretrain_epochs`` (or comes
trained that way through ``backbone_weights``), then resizer and backbone are trained jointly for
``epochs``. With the zero-initialised last conv the learned resizer starts out as exactly that
bilinear resize, so joint training starts from what the backbone already knows.

Devices: ``device="cuda"`` trains under bf16 autocast with channels_last tensors. Multi-GPU (and
multi-process CPU, backend gloo): launch with ``torchrun --nproc-per-node N -m resize_pipeline.cli
train ...``; each process reads its share of every epoch (DistributedSampler), gradients are averaged
by DistributedDataParallel, every process evaluates a slice of the held-out set (counts summed), rank 0
checkpoints and exports. ``batch_size`` is per process.
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

from resize_pipeline.errors import ConfigError
from resize_pipeline.learned.model import DEFAULT_VARIANT, INTERPOLATIONS, interpolate, variant_config
from resize_pipeline.learned.util import resolve_device, seed_everything

log = logging.getLogger(__name__)

#: fixed resizers the classifier can be trained behind (torch ops; "-aa" = antialiased, like Pillow).
BASELINES = {
    "bilinear": "bilinear-aa",
    "bilinear-noaa": "bilinear",
    "bicubic": "bicubic-aa",
    "bicubic-noaa": "bicubic",
    "area": "area",
}
RESIZERS = ("learned", *BASELINES)
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Everything a training run depends on (recorded in checkpoints and the exported model's JSON)."""

    data: str = "synthetic"  # "synthetic", an ImageFolder dir, a convert output, shards, a manifest
    val_data: str | None = None  # default: synthetic -> a fresh generated set; else a held-out split
    target_size: int = 32  # classifier input side; the resizer sees input_scale x this
    resizer: str = "learned"
    variant: str = DEFAULT_VARIANT
    interpolation: str = "bilinear"
    input_scale: float = 2.0
    zero_init_last: bool = True
    backbone: str = "small"  # small | torchvision:NAME | timm:NAME | MODULE:CALLABLE
    backbone_weights: str | None = None  # a local state dict loaded into the backbone
    #: epochs training the backbone alone behind the fixed skip interpolation before joint training;
    #: None = the paper's recipe: 0 for "small" or when backbone_weights are given, else = epochs.
    pretrain_epochs: int | None = None
    epochs: int = 6
    max_steps: int | None = None  # stop early, over all phases (tests, smoke runs)
    batch_size: int = 64  # per process
    lr: float = 1e-3  # classifier (AdamW)
    resizer_lr: float = 1e-4
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    #: weight of a low-frequency fidelity term: MSE between Gaussian(sigma=2 px) blurs of the resizer's
    #: output and of its skip interpolation (0 = task loss only, as in the paper). 100 = the bundled
    #: recipe: same held-out accuracy, output closer to bilinear (benchmarks/colour_safety_study.py).
    fidelity_weight: float = 100.0
    classifier_width: int = 32  # "small" only
    seed: int = 0
    data_seed: int = 0  # the synthetic train set; the synthetic val set uses data_seed + 1
    num_train: int = 3000  # synthetic only
    num_val: int = 2000  # synthetic only
    val_fraction: float = 0.2  # real data without val_data
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA (when supported), fp32 on CPU
    channels_last: bool = True  # on CUDA
    threads: int | None = None
    workers: int = 0
    out_dir: str | None = None  # checkpoints (last.pt), backbone.pt and, by default, the exported resizer
    export_dir: str | None = None  # where the frozen resizer goes (default: out_dir/resizer)
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        from resize_pipeline.learned.backbones import BackboneSpec

        if self.resizer not in RESIZERS:
            raise ValueError(f"unknown resizer {self.resizer!r}; expected one of {', '.join(RESIZERS)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"unknown interpolation {self.interpolation!r}; expected one of {', '.join(INTERPOLATIONS)}"
            )
        if self.precision not in TRAIN_PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; expected one of {', '.join(TRAIN_PRECISIONS)}")
        if self.target_size < 4 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("target_size >= 4, epochs >= 1 and batch_size >= 1 are required")
        if self.pretrain_epochs is not None and self.pretrain_epochs < 0:
            raise ValueError(f"pretrain_epochs must be >= 0, got {self.pretrain_epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.fidelity_weight < 0:
            raise ValueError(f"fidelity_weight must be >= 0, got {self.fidelity_weight}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        BackboneSpec.parse(self.backbone)  # syntax only; the import happens when the model is built
        variant_config(self.variant)

    @property
    def input_size(self) -> int:
        return int(round(self.target_size * self.input_scale))

    @property
    def resolved_pretrain_epochs(self) -> int:
        if self.pretrain_epochs is not None:
            return self.pretrain_epochs
        return 0 if self.backbone == "small" or self.backbone_weights else self.epochs


@dataclass(slots=True)
class TrainResult:
    config: TrainConfig
    val_accuracy: float
    losses: list[float] = field(default_factory=list)  # per step, all phases
    epoch_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    pretrain_steps: int = 0
    resizer: nn.Module | None = None
    classifier: nn.Module | None = None
    export_dir: str | None = None
    rank: int = 0
    world_size: int = 1


class FixedResizer(nn.Module):
    """A classical resize as a module (no parameters), same call signature as the learned one."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.mode == "area":
            return F.interpolate(x, size=size, mode="area")
        return interpolate(x, size, self.mode)


class ResizeThenClassify(nn.Module):
    """resizer -> classifier as one module (what DistributedDataParallel wraps); returns both outputs."""

    def __init__(self, resizer: nn.Module, classifier: nn.Module, size: tuple[int, int], channels_last: bool):
        super().__init__()
        self.resizer, self.classifier, self.size, self.channels_last = resizer, classifier, size, channels_last

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.resizer(x, self.size)
        if self.channels_last:
            y = y.contiguous(memory_format=torch.channels_last)
        return self.classifier(y), y


class GaussianLowpass(nn.Module):
    """Depthwise Gaussian blur (reflect padding) for the fidelity term."""

    kernel: torch.Tensor

    def __init__(self, sigma: float = 2.0) -> None:
        super().__init__()
        radius = max(1, math.ceil(3 * sigma))
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = k / k.sum()
        self.radius = radius
        self.register_buffer("kernel", k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, r = x.shape[1], self.radius
        h, w = x.shape[-2:]
        mode = "reflect" if r < min(h, w) else "replicate"
        x = F.pad(x, (r, r, r, r), mode=mode)
        kx = self.kernel.to(x.dtype).view(1, 1, 1, -1).expand(c, 1, 1, -1)
        ky = self.kernel.to(x.dtype).view(1, 1, -1, 1).expand(c, 1, -1, 1)
        return F.conv2d(F.conv2d(x, kx, groups=c), ky, groups=c)


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
    if len(full) < 2:
        raise ValueError(f"{cfg.data}: {len(full)} labelled image(s); need at least 2 to hold one out")
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


def build_classifier(cfg: TrainConfig, num_classes: int) -> nn.Module:
    from resize_pipeline.learned.backbones import build_backbone

    return build_backbone(cfg.backbone, num_classes, width=cfg.classifier_width, weights=cfg.backbone_weights)


DECODE_ERROR = "cannot decode training image"


def _batches(loader: DataLoader):
    """Iterate `loader`; an image that cannot be decoded (also inside a worker process, where the
    DataLoader wraps the message in a traceback) becomes a one-line `ConfigError` naming it."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except ValueError as exc:
            line = next((ln for ln in reversed(str(exc).splitlines()) if DECODE_ERROR in ln), None)
            if line is None:
                raise
            raise ConfigError(line[line.index(DECODE_ERROR):]) from exc
        yield batch


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
) -> float:
    """Held-out accuracy; under torchrun each process passes its own slice and counts are summed."""
    resizer.eval()
    classifier.eval()
    correct = total = 0
    for x, y in _batches(loader):
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            logits = classifier(resizer(_to_float(x, device, channels_last), (size, size)))
        correct += int((logits.argmax(1).cpu() == y).sum())
        total += len(y)
    if world > 1:
        import torch.distributed as dist

        counts = torch.tensor([correct, total], dtype=torch.float64, device=device)
        dist.all_reduce(counts)
        correct, total = int(counts[0].item()), int(counts[1].item())
    return correct / max(total, 1)


# --- distributed (torchrun) --------------------------------------------------------------------------


def _distributed_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _init_distributed(device: torch.device) -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        log.info("process group: backend %s, rank %d of %d", backend, dist.get_rank(), dist.get_world_size())


def shutdown_distributed() -> None:
    """Destroy the process group `train` started under torchrun (call once, at the end of a command)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _broadcast_state(*modules: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every process."""
    import torch.distributed as dist

    with torch.no_grad():
        for m in modules:
            for t in [*m.parameters(), *m.buffers()]:
                dist.broadcast(t.data, 0)


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


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


def train(cfg: TrainConfig) -> TrainResult:
    """Train classifier (+ learned resizer) and report held-out accuracy; export the resizer if asked."""
    from tqdm.auto import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, world, local_rank = _distributed_env()
    device = resolve_device(cfg.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        _init_distributed(device)
    amp_dtype = _amp_dtype(cfg, device)
    channels_last = cfg.channels_last and device.type == "cuda"
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    from resize_pipeline.learned.backbones import check_backbone

    check_backbone(cfg.backbone)  # a missing torchvision / timm / module fails before the data is read
    if cfg.backbone_weights and not os.path.isfile(cfg.backbone_weights):
        raise ConfigError(f"--backbone-weights {cfg.backbone_weights}: no such file")
    try:
        train_set, val_set, num_classes = build_datasets(cfg)
    except ConfigError:
        raise
    except (ValueError, OSError) as exc:  # bad --data / --val-data: one line naming what is wrong
        raise ConfigError(f"training data: {exc}") from exc
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
    classifier = build_classifier(cfg, num_classes).to(device)
    if channels_last:
        resizer = resizer.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        classifier = classifier.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    learned = cfg.resizer == "learned"
    phases = []
    if cfg.resolved_pretrain_epochs:
        fixed = FixedResizer(cfg.interpolation) if learned else resizer
        phases.append(_Phase("pretrain", fixed, cfg.resolved_pretrain_epochs, False))
    phases.append(_Phase("joint" if learned else "train", resizer, cfg.epochs, learned))

    gen = torch.Generator().manual_seed(cfg.seed)
    sampler: Any = None
    if world > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                                     drop_last=len(train_set) >= world * cfg.batch_size)
    loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=gen if sampler is None else None,
        num_workers=cfg.workers,
        drop_last=len(train_set) // world > cfg.batch_size,
        pin_memory=device.type == "cuda",
    )
    # each process evaluates every world-th held-out sample (exact: no padding, counts summed)
    val_part = val_set if world == 1 else Subset(val_set, list(range(rank, len(val_set), world)))
    val_loader = DataLoader(val_part, batch_size=256, num_workers=cfg.workers)
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
    result = TrainResult(cfg, 0.0, rank=rank, world_size=world)
    ckpt_path = os.path.join(cfg.out_dir, "last.pt") if cfg.out_dir else None
    ck: dict[str, Any] | None = None
    if cfg.resume and ckpt_path and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        resizer.load_state_dict(ck["resizer"])
        classifier.load_state_dict(ck["classifier"])
        start_phase, start_epoch, step = ck.get("phase", 0), ck["epoch"], ck["step"]
        result.losses, result.epoch_losses = ck["losses"], ck["epoch_losses"]
        gen.set_state(ck["generator"])
        log.info("resumed from %s at phase %d epoch %d", ckpt_path, start_phase, start_epoch)

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
            for x, y in _batches(loader):
                x, y = _to_float(x, device, channels_last), y.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                    logits, out = model(x)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                    if lowpass is not None and ph.train_resizer:
                        skip = interpolate(x, size, cfg.interpolation)
                        fid = F.mse_loss(lowpass(out.float()), lowpass(skip.float()))
                        loss = loss + cfg.fidelity_weight * fid
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                result.losses.append(loss.item())
                running, n = running + result.losses[-1], n + 1
                bar.update(1)
                bar.set_postfix(loss=f"{running / n:.3f}", phase=ph.name, epoch=epoch + 1)
                if step - done_before >= total:
                    break
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
                        "config": asdict(cfg),
                    },
                )
        epoch_offset += ph.epochs
        if ph.name == "pretrain":
            result.pretrain_steps = step
        del model  # a DDP wrapper removes its gradient hooks when it goes
    bar.close()

    if world > 1:  # BN running stats drift per process after the last broadcast: evaluate rank 0's model
        _broadcast_state(resizer, classifier)
    result.val_accuracy = evaluate_accuracy(
        resizer, classifier, val_loader, cfg.target_size, device, amp_dtype, channels_last, world
    )
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
    if rank == 0:
        if cfg.out_dir:
            from resize_pipeline.learned.backbones import backbone_state_dict

            os.makedirs(cfg.out_dir, exist_ok=True)
            torch.save(backbone_state_dict(classifier), os.path.join(cfg.out_dir, "backbone.pt"))
        if export_dir and learned:
            from resize_pipeline.learned.export import export_resizer

            provenance = {
                "train_config": asdict(cfg),
                "steps": step,
                "pretrain_steps": result.pretrain_steps,
                "world_size": world,
                "val_accuracy": result.val_accuracy,
                "final_epoch_loss": result.epoch_losses[-1] if result.epoch_losses else None,
                "torch": torch.__version__,
            }
            result.export_dir = str(export_resizer(resizer, export_dir, provenance))
    _barrier(world)
    if world > 1 and export_dir and learned:
        result.export_dir = export_dir
    return result
