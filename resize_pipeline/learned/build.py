"""What a training run is built from: its datasets, its resizer, its classifier.

`build_datasets` reads ``--data`` / ``--val-data`` (`data`, or the `synthetic` task) and holds out a
seeded split; `build_resizer` makes the learned resizer, a fixed baseline or the frozen exported one
of ``learned:PATH`` (whose input scale the run then uses: `frozen_scale`); `build_classifier` the
user's backbone (`backbones`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import Subset

from resize_pipeline.errors import ConfigError
from resize_pipeline.learned.model import variant_config
from resize_pipeline.learned.modules import FixedResizer, FrozenResizer
from resize_pipeline.learned.train_config import BASELINES, TrainConfig, frozen_path


class Datasets(NamedTuple):
    train: Any
    val: Any
    num_classes: int
    classes: list[str]
    inputs: int  # rows listed for training and held-out, bad ones included
    errors: list[dict[str, str]]  # what the listings could not list or label


def build_datasets(cfg: TrainConfig) -> Datasets:
    """The training and held-out sets at the resizer's input size."""
    from resize_pipeline.learned import data, synthetic

    size = cfg.input_size
    if cfg.data == "synthetic":
        syn = synthetic.SyntheticConfig(size=size)
        tr = synthetic.SyntheticGratings(cfg.num_train, cfg.data_seed, syn)
        va = synthetic.SyntheticGratings(cfg.num_val, cfg.data_seed + 1, syn)
        return Datasets(tr, va, syn.num_classes, tr.classes, len(tr) + len(va), [])
    full = data.open_dataset(cfg.data, size)
    if cfg.val_data:
        val = data.open_dataset(cfg.val_data, size)
        return Datasets(full, val, max(full.num_classes, val.num_classes), full.classes,
                        len(full) + len(full.errors) + len(val) + len(val.errors), full.errors + val.errors)
    if len(full) < 2:
        raise ValueError(f"{cfg.data}: {len(full)} labelled image(s); need at least 2 to hold one out")
    g = torch.Generator().manual_seed(cfg.data_seed)
    perm = torch.randperm(len(full), generator=g).tolist()
    n_val = max(1, int(len(full) * cfg.val_fraction))
    return Datasets(Subset(full, perm[n_val:]), Subset(full, perm[:n_val]), full.num_classes, full.classes,
                    len(full) + len(full.errors), full.errors)


def base_dataset(ds: Any) -> Any:
    """The dataset under a `Subset` (the held-out split)."""
    return ds.dataset if isinstance(ds, Subset) else ds


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
    path = frozen_path(cfg.resizer)
    if path is not None:
        return FrozenResizer(path)
    return FixedResizer(BASELINES[cfg.resizer])


def build_classifier(cfg: TrainConfig, num_classes: int) -> nn.Module:
    from resize_pipeline.learned.backbones import build_backbone

    return build_backbone(cfg.backbone, num_classes, width=cfg.classifier_width, weights=cfg.backbone_weights)


def frozen_scale(cfg: TrainConfig, notify: Callable[[str], None]) -> TrainConfig:
    """Behind ``learned:PATH`` the inputs are made at the exported resizer's own input scale."""
    path = frozen_path(cfg.resizer)
    if path is None:
        return cfg
    from resize_pipeline.learned.export import load_resizer_module

    try:
        scale = float(load_resizer_module(path)[1]["input_scale"])
    except Exception as exc:  # noqa: BLE001 - a resizer that cannot load: one line
        raise ConfigError(f"--resizer {cfg.resizer}: cannot load the resizer: {exc}") from None
    if scale != cfg.input_scale:
        notify(f"{cfg.resizer}: input scale {scale:g} (the exported resizer's), not --input-scale {cfg.input_scale:g}")
        cfg = replace(cfg, input_scale=scale)
    return cfg
