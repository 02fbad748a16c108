"""The frozen artifact: BN-folded weights (safetensors) + a JSON config, verified on load.

Layout of an exported resizer directory::

    model.safetensors   # FoldedResizerNet state dict, float32
    config.json         # architecture, pre-processing, contract, sha256 of model.safetensors, provenance

Weights that are not finite (NaN / infinity: a diverged run, an edited file) are refused both when
exporting and when loading, whatever wrote them (`ArtifactError`, a `ConfigError`).

`load_resizer_module(path)` also accepts a user's TorchScript file (``torch.jit.save``) or a
``torch.export`` program (``.pt2``) that follows the same contract (see `model` module docstring);
an optional sidecar ``<file>.json`` may give ``input_scale``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resize_pipeline.errors import ConfigError
from resize_pipeline.learned.folding import FoldedResizerNet, fold_batchnorm
from resize_pipeline.learned.model import LearnedResizerNet, ResizerConfig, variant_name
from resize_pipeline.learned.util import describe_nonfinite, nonfinite, sha256_file

log = logging.getLogger(__name__)

FORMAT = "resize_pipeline.learned_resizer"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CONTRACT = {
    "input": "float32 tensor (B, 3, H, W), RGB, values in [0, 1] (not normalised)",
    "size": "output size passed as (h, w)",
    "output": "float tensor (B, 3, h, w), RGB, ~[0, 1]; the caller clamps to [0, 1] and rounds x255 once",
}
TORCHSCRIPT_EXTS = (".pt", ".pth", ".ts", ".jit", ".torchscript")


class ArtifactError(ConfigError):
    """An exported resizer is missing, corrupted, or does not match its config (a ValueError)."""


def export_resizer(
    net: nn.Module, out_dir: str | os.PathLike, provenance: dict[str, Any] | None = None
) -> Path:
    """Fold BN, write ``model.safetensors`` + ``config.json`` to `out_dir`; returns the directory."""
    from safetensors.torch import save_file

    if isinstance(net, LearnedResizerNet):
        folded = fold_batchnorm(copy.deepcopy(net).cpu().eval())
    elif isinstance(net, FoldedResizerNet):
        folded = copy.deepcopy(net).cpu().eval()
    else:
        raise TypeError(f"expected LearnedResizerNet or FoldedResizerNet, got {type(net).__name__}")
    cfg = folded.config
    state = {k: v.detach().float().contiguous().clone() for k, v in folded.state_dict().items()}
    bad = nonfinite(state)
    if bad:  # a diverged model is never written as an artifact (nothing is created in out_dir)
        raise ArtifactError(f"refusing to export a resizer whose weights are not finite: "
                            f"{describe_nonfinite(bad, len(state))}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_FILE
    save_file(state, str(weights), metadata={"format": FORMAT})
    os.chmod(weights, 0o644)  # safetensors creates 0600; package data must be world-readable
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": variant_name(cfg),
        "folded": True,
        "config": cfg.to_dict(),
        "input_scale": cfg.input_scale,
        "interpolation": cfg.interpolation,
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "contract": CONTRACT,
        "weights": WEIGHTS_FILE,
        "sha256": sha256_file(str(weights)),
        "num_params": int(sum(v.numel() for k, v in state.items() if k not in ("mean", "inv_std"))),
        "provenance": provenance or {},
    }
    with open(out / CONFIG_FILE, "w") as f:
        json.dump(meta, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    log.info("exported resizer to %s (sha256 %s)", out, meta["sha256"][:12])
    return out


def _config_path(path: Path) -> Path:
    if path.is_dir():
        return path / CONFIG_FILE
    if path.suffix == ".safetensors":
        return path.with_name(CONFIG_FILE)
    return path


def load_artifact(path: str | os.PathLike) -> tuple[FoldedResizerNet, dict[str, Any]]:
    """Load and verify an exported resizer (directory, its config.json or its .safetensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg_path = _config_path(Path(path))
    if not cfg_path.is_file():
        raise ArtifactError(f"{cfg_path}: resizer config not found")
    try:
        meta: Any = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{cfg_path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(f"{cfg_path}: not a learned-resizer config (format must be {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{cfg_path}: unsupported format_version {meta.get('format_version')!r}")
    try:
        cfg = ResizerConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{cfg_path}: invalid resizer config: {e}") from e
    expected = {
        "architecture": variant_name(cfg),
        "input_scale": cfg.input_scale,
        "interpolation": cfg.interpolation,
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "folded": True,
    }
    for key, value in expected.items():
        if meta.get(key) != value:
            raise ArtifactError(f"{cfg_path}: {key}={meta.get(key)!r} does not match the config ({value!r})")

    weights = cfg_path.parent / meta.get("weights", WEIGHTS_FILE)
    if not weights.is_file():
        raise ArtifactError(f"{weights}: weights file not found")
    digest = sha256_file(str(weights))
    if digest != meta.get("sha256"):
        raise ArtifactError(
            f"{weights}: sha256 {digest} does not match {cfg_path.name} ({meta.get('sha256')}); "
            "the file is corrupted or belongs to another model"
        )
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"{weights}: cannot read safetensors ({e})") from e
    model = FoldedResizerNet(cfg)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or bad:
        raise ArtifactError(
            f"{weights}: weights do not match architecture {meta['architecture']} "
            f"(missing {missing[:4]}, unexpected {unexpected[:4]}, wrong shape {bad[:4]})"
        )
    bad = nonfinite(state)
    if bad:
        raise ArtifactError(f"{weights}: {describe_nonfinite(bad, len(state))}; the model diverged or the file "
                            "was edited: every image would come out wrong")
    model.load_state_dict(state)
    for name in ("mean", "inv_std"):
        if not torch.equal(state[name], own[name]):
            raise ArtifactError(f"{weights}: stored {name} does not match mean/std in {cfg_path.name}")
    meta["path"] = str(cfg_path.parent)
    return model.eval(), meta


def load_resizer_module(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """An exported artifact, a TorchScript file or a ``.pt2`` torch.export program, plus its metadata."""
    p = Path(path)
    if p.is_dir() or p.suffix in (".json", ".safetensors"):
        return load_artifact(p)
    if not p.is_file():
        raise ArtifactError(f"{p}: no such resizer file or directory")
    meta: dict[str, Any] = {"input_scale": 2.0, "path": str(p), "sha256": sha256_file(str(p))}
    side = p.with_name(p.name + ".json")
    if side.is_file():
        try:
            meta.update(json.loads(side.read_text()))
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{side}: not valid JSON ({e})") from e
    try:
        if p.suffix == ".pt2":
            program = torch.export.load(str(p))
            module: nn.Module = program.module()
            meta["format"] = "torch.export"
        else:
            module = torch.jit.load(str(p), map_location="cpu")
            meta["format"] = "torchscript"
    except Exception as e:  # torch raises RuntimeError / zipfile errors / pickle errors here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(
            f"{p}: not a TorchScript (torch.jit.save) or torch.export (.pt2) resizer: {first}"
        ) from e
    if not isinstance(meta.get("input_scale"), (int, float)) or not meta["input_scale"] > 0:
        raise ArtifactError(f"{side}: input_scale must be a positive number")
    try:
        state = dict(module.state_dict())
    except Exception:  # noqa: BLE001 - a module without a state dict: nothing to check
        state = {}
    bad = nonfinite(state)
    if bad:
        raise ArtifactError(f"{p}: {describe_nonfinite(bad, len(state))}; every image would come out wrong")
    return module, meta


def export_torchscript(net: nn.Module, path: str | os.PathLike) -> Path:
    """Script a (folded) resizer and save it; the file can be passed as ``--resizer learned:PATH``."""
    if isinstance(net, LearnedResizerNet):
        net = fold_batchnorm(copy.deepcopy(net).cpu().eval())
    scripted = torch.jit.script(copy.deepcopy(net).cpu().eval())
    torch.jit.save(scripted, str(path))
    side = Path(str(path) + ".json")
    side.write_text(
        json.dumps(
            {"input_scale": getattr(net, "config", ResizerConfig()).input_scale, "contract": CONTRACT},
            indent=2,
        )
    )
    return Path(path)


def export_program(
    net: nn.Module,
    path: str | os.PathLike,
    input_hw: tuple[int, int] = (448, 448),
    size_hw: tuple[int, int] = (224, 224),
) -> Path:
    """``torch.export`` a (folded) resizer to ``.pt2`` for one (input, output) shape, any batch size.

    Exported programs are shape-specialised: the output size is baked in (calling with another
    size fails with a guard error); the batch dimension is dynamic so the batch buckets work.
    """
    from torch.export import Dim

    if isinstance(net, LearnedResizerNet):
        net = fold_batchnorm(copy.deepcopy(net).cpu().eval())
    net = copy.deepcopy(net).cpu().eval()
    x = torch.rand(2, 3, *input_hw)
    program = torch.export.export(
        net,
        (x, tuple(size_hw)),
        dynamic_shapes={"x": {0: Dim("batch", min=1, max=4096)}, "size": (None, None)},
    )
    torch.export.save(program, str(path))
    side = Path(str(path) + ".json")
    side.write_text(
        json.dumps(
            {
                "input_scale": getattr(net, "config", ResizerConfig()).input_scale,
                "contract": CONTRACT,
                "input_hw": list(input_hw),
                "size_hw": list(size_hw),
            },
            indent=2,
        )
    )
    return Path(path)
