"""The learned resizer (Talebi & Milanfar, ICCV 2021): model, training, evaluation, export, inference.

Modules: `model` (network + variant registry), `folding` (BN folding), `synthetic` (the synthetic
task), `data` (labelled real images through ``convert``'s sources, reader and decoder), `prescan`,
`backbones` (the classifier: small / torchvision / timm / your factory), `classifier`,
`train_config`, `build`, `train` (the loop), `modules`, `monitor` (skipped inputs, divergence, cost),
`distributed` (torchrun), `evaluate`, `fidelity` (colour metrics on real photos), `export` (frozen
artifact), `inference` (`LearnedResizer`), `preview`. Everything but this package's `bundled_note`
needs torch; import the submodules you need. See docs/learned_resizer.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

#: the bundled checkpoint (``--resizer learned``): model.safetensors, config.json, MODEL_CARD.md,
#: evaluation.json (accuracy, 3 seeds) and fidelity.json (colour fidelity on held-out photos).
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "weights" / "default"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def bundled_note() -> str:
    """One line on what the bundled checkpoint was trained on and how colour-safe it measured.

    Printed by ``demo`` and by ``convert --resizer learned`` (bundled checkpoint). Reads only the JSON
    files next to the weights (no torch import); never raises.
    """
    meta = _read_json(BUNDLED_DIR / "config.json")
    arch = meta.get("architecture", "unknown architecture")
    sha = str(meta.get("sha256", ""))[:12]
    tcfg = meta.get("provenance", {}).get("train_config", {})
    residual = meta.get("config", {}).get("residual", "rgb")
    size = tcfg.get("target_size", "?")
    insize = round(size * tcfg.get("input_scale", 2.0)) if isinstance(size, int) else "?"
    if tcfg.get("data", "synthetic") == "synthetic":
        trained = f"trained on a synthetic fine-grating task (crops of scikit-image photos, {insize}->{size} px)"
    else:
        trained = f"trained on {tcfg.get('data')} ({insize}->{size} px)"
    parts = [f"bundled learned resizer {arch} (sha256 {sha}): {trained}, not on your data"]
    if residual == "rgb":
        parts.append("paper RGB residual: colours may shift on photos")
    else:
        safety = "one-channel high-passed residual" if residual == "luma-hp" else "one-channel residual"
        parts.append(f"colour-safe by construction ({safety}: grey stays grey)")
    fid = _read_json(BUNDLED_DIR / "fidelity.json")
    lp = fid.get("lowpass_psnr", {}).get("median")
    grey = fid.get("grey_spread", {}).get("mean")
    if isinstance(lp, (int, float)) and isinstance(grey, (int, float)):
        db = "inf" if math.isinf(lp) else f"{lp:.1f}"
        parts.append(
            f"on {fid.get('images')} held-out photos at {fid.get('size')} px: grey spread {grey:.2f} levels, "
            f"low-pass PSNR vs bilinear {db} dB median"
        )
    parts.append("train one for your data and backbone with `resize-pipeline train --backbone ...`")
    return "; ".join(parts)
