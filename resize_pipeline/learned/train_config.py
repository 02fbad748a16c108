"""`TrainConfig` (everything a training run depends on, validated once) and `TrainResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from resize_pipeline.learned.model import DEFAULT_VARIANT, INTERPOLATIONS, variant_config

#: fixed resizers the classifier can be trained behind (torch ops; "-aa" = antialiased, like Pillow).
BASELINES = {
    "bilinear": "bilinear-aa",
    "bilinear-noaa": "bilinear",
    "bicubic": "bicubic-aa",
    "bicubic-noaa": "bicubic",
    "area": "area",
}
#: ``learned`` trains a resizer; ``learned:PATH`` is an exported one, frozen (`modules.FrozenResizer`)
RESIZERS = ("learned", "learned:PATH", *BASELINES)
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")
#: the batch size when none is given: 64 (the bundled recipe), but 16 for a CPU run at --size >= 128,
#: where a batch of 64 at 448 px input held ~10 GB (docs/benchmarks.md, "Training memory")
DEFAULT_BATCH = 64
CPU_LARGE_BATCH = 16
CPU_LARGE_SIZE = 128


def frozen_path(resizer: str) -> str | None:
    """PATH of ``learned:PATH``; None for anything else."""
    return resizer.split(":", 1)[1] if resizer.startswith("learned:") else None


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Everything a training run depends on (recorded in checkpoints and the exported model's JSON)."""

    data: str = "synthetic"  # "synthetic", an ImageFolder dir, a convert output, shards, a manifest
    val_data: str | None = None  # default: synthetic -> a fresh generated set; else a held-out split
    target_size: int = 32  # classifier input side; the resizer sees input_scale x this
    resizer: str = "learned"  # learned | learned:PATH (frozen) | a baseline
    variant: str = DEFAULT_VARIANT
    interpolation: str = "bilinear"
    input_scale: float = 2.0
    zero_init_last: bool = True
    backbone: str = "small"  # small | torchvision:NAME | timm:NAME | MODULE:CALLABLE
    backbone_weights: str | None = None  # a local state dict loaded into the backbone
    #: epochs training the backbone alone behind the fixed skip interpolation before joint training;
    #: None = the paper's recipe: 0 for "small" or when backbone_weights are given, else = epochs.
    pretrain_epochs: int | None = None
    #: >= 1; 0 only with backbone_weights (`evaluate`: the given backbone as it is, no training)
    epochs: int = 6
    max_steps: int | None = None  # stop early, over all phases (tests, smoke runs)
    batch_size: int | None = None  # per process; None: `resolved_batch_size`
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
    #: above this fraction of bad (unreadable, undecodable, unlabelled) inputs, training stops
    max_bad_fraction: float = 0.01
    #: read every input once before training and check its header (`prescan`): bad files known up front
    prescan: bool = True
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

        if self.resizer not in RESIZERS and not (frozen_path(self.resizer) or "").strip():
            raise ValueError(f"unknown resizer {self.resizer!r}; expected one of {', '.join(RESIZERS)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"unknown interpolation {self.interpolation!r}; expected one of {', '.join(INTERPOLATIONS)}"
            )
        if self.precision not in TRAIN_PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; expected one of {', '.join(TRAIN_PRECISIONS)}")
        if self.target_size < 4:
            raise ValueError(f"size must be >= 4, got {self.target_size}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.epochs < 0 or (self.epochs == 0 and not self.backbone_weights):
            raise ValueError(f"epochs must be >= 1 (0 only with --backbone-weights), got {self.epochs}")
        if self.pretrain_epochs is not None and self.pretrain_epochs < 0:
            raise ValueError(f"pretrain_epochs must be >= 0, got {self.pretrain_epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if not self.fidelity_weight >= 0:  # also refuses nan
            raise ValueError(f"fidelity_weight must be >= 0, got {self.fidelity_weight}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if not self.input_scale > 0:
            raise ValueError(f"input_scale must be > 0, got {self.input_scale}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        BackboneSpec.parse(self.backbone)  # syntax only; the import happens when the model is built
        variant_config(self.variant)

    @property
    def input_size(self) -> int:
        return int(round(self.target_size * self.input_scale))

    @property
    def learned(self) -> bool:
        """A resizer is trained (not a baseline, not a frozen ``learned:PATH``)."""
        return self.resizer == "learned"

    @property
    def resolved_pretrain_epochs(self) -> int:
        if self.pretrain_epochs is not None:
            return self.pretrain_epochs
        return 0 if self.backbone == "small" or self.backbone_weights else self.epochs

    def resolved_batch_size(self, device_type: str) -> int:
        """`batch_size`, or the default for the device: `DEFAULT_BATCH`, `CPU_LARGE_BATCH` on a CPU at
        ``target_size >= CPU_LARGE_SIZE``."""
        if self.batch_size is not None:
            return self.batch_size
        return CPU_LARGE_BATCH if device_type == "cpu" and self.target_size >= CPU_LARGE_SIZE else DEFAULT_BATCH


@dataclass(slots=True)
class TrainResult:
    config: TrainConfig
    val_accuracy: float
    losses: list[float] = field(default_factory=list)  # per step, all phases
    epoch_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    pretrain_steps: int = 0
    resizer: Any = None
    classifier: Any = None
    export_dir: str | None = None
    rank: int = 0
    world_size: int = 1
    batch_size: int = 0
    #: error records of the inputs skipped (unreadable, undecodable, unlabelled), and where they are listed
    skipped: list[dict[str, str]] = field(default_factory=list)
    skipped_file: str | None = None
    inputs: int = 0  # inputs listed (train + held-out), bad ones included
