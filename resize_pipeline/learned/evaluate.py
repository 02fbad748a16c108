"""Learned vs classical resizers at equal output size: same classifier, same data, several seeds.

`evaluate(EvaluateConfig(...))` is the public function behind ``resize-pipeline evaluate``. Each
(resizer, seed) pair is one full `train` run with the same backbone, recipe and number of steps; the
seed changes the model initialisation and the batch order, the data (``data_seed``) stays fixed so
that the spread measures training noise. For each learned run the exported resizer is also checked
on held-out real photos (`fidelity`): greyscale stays grey, low-pass PSNR against Pillow bilinear.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import tempfile
from dataclasses import asdict, dataclass, replace
from typing import Any

from resize_pipeline.learned.train import RESIZERS, TrainConfig, train

log = logging.getLogger(__name__)

DEFAULT_RESIZERS = ("bilinear", "bilinear-noaa", "bicubic", "bicubic-noaa", "learned")
LABELS = {
    "bilinear": "bilinear, antialiased (Pillow, `--resizer bilinear`)",
    "bilinear-noaa": "bilinear, no antialias (TF-style)",
    "bicubic": "bicubic, antialiased (Pillow, `--resizer bicubic`)",
    "bicubic-noaa": "bicubic, no antialias",
    "area": "area",
    "learned": "learned",
}


@dataclass(frozen=True, slots=True)
class EvaluateConfig:
    train: TrainConfig = TrainConfig()
    seeds: tuple[int, ...] = (0, 1, 2)
    resizers: tuple[str, ...] = DEFAULT_RESIZERS
    json_out: str | None = None
    markdown_out: str | None = None
    #: held-out photos for the colour-fidelity check of each learned run (0 = skip the check)
    fidelity_photos: int = 48
    fidelity_size: int = 224

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("at least one seed is required")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must differ, got {self.seeds}")
        if not self.resizers:
            raise ValueError("at least one resizer is required")
        for r in self.resizers:
            if r not in RESIZERS:
                raise ValueError(f"unknown resizer {r!r}; expected one of {', '.join(RESIZERS)}")
        if self.fidelity_photos < 0 or self.fidelity_size < 8:
            raise ValueError("fidelity_photos must be >= 0 and fidelity_size >= 8")


def summarize(values: list[float]) -> dict[str, float | list[float]]:
    """mean, sample std, min, max and the values themselves."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "accuracies": values,
    }


def _fidelity(resizer_net: Any, photos: list, size: int) -> dict[str, Any]:
    from resize_pipeline.learned.export import export_resizer
    from resize_pipeline.learned.fidelity import fidelity_report
    from resize_pipeline.learned.inference import LearnedResizer

    with tempfile.TemporaryDirectory() as tmp:
        path = export_resizer(resizer_net, tmp)
        r = LearnedResizer(str(path), device="cpu", precision="fp32")
        rep = fidelity_report(r, photos, size=size)
    return {
        "grey_spread_mean": rep["grey_spread"]["mean"],
        "grey_spread_max_pixel": rep["grey_spread_max"],
        "lowpass_psnr_median": rep["lowpass_psnr"]["median"],
        "lowpass_psnr_min": rep["lowpass_psnr"]["min"],
        "psnr_median": rep["psnr"]["median"],
        "photos": rep["images"],
        "size": size,
    }


def _heldout_photos(n: int) -> list:
    if n == 0:
        return []
    try:
        from resize_pipeline.learned.fidelity import heldout_photos

        return heldout_photos(n)
    except ImportError as exc:
        log.warning("colour-fidelity check skipped: %s", exc)
        return []


def evaluate(cfg: EvaluateConfig) -> dict:
    """Train/evaluate every (resizer, seed); returns runs and a per-resizer summary."""
    photos = _heldout_photos(cfg.fidelity_photos) if "learned" in cfg.resizers else []
    runs: list[dict[str, Any]] = []
    rank = 0
    for resizer in cfg.resizers:
        for seed in cfg.seeds:
            tcfg = replace(cfg.train, resizer=resizer, seed=seed, out_dir=None, export_dir=None, resume=False)
            res = train(tcfg)
            rank = res.rank
            run: dict[str, Any] = {
                "resizer": resizer,
                "seed": seed,
                "val_accuracy": res.val_accuracy,
                "final_loss": res.epoch_losses[-1] if res.epoch_losses else None,
                "steps": res.steps,
                "seconds": round(res.seconds, 1),
            }
            if resizer == "learned" and photos and rank == 0:
                run["fidelity"] = _fidelity(res.resizer, photos, cfg.fidelity_size)
            runs.append(run)
            log.info("%s seed=%d: %.4f", resizer, seed, res.val_accuracy)
    summary = {
        r: summarize([float(x["val_accuracy"]) for x in runs if x["resizer"] == r]) for r in cfg.resizers
    }
    fid_runs = [x["fidelity"] for x in runs if "fidelity" in x]
    fidelity = None
    if fid_runs:
        fidelity = {
            key: summarize([float(f[key]) for f in fid_runs])
            for key in ("grey_spread_mean", "grey_spread_max_pixel", "lowpass_psnr_median", "lowpass_psnr_min", "psnr_median")
        }
        fidelity["photos"] = fid_runs[0]["photos"]  # type: ignore[assignment]
        fidelity["size"] = fid_runs[0]["size"]  # type: ignore[assignment]
    report = {"config": asdict(cfg), "runs": runs, "summary": summary, "fidelity": fidelity}
    if rank == 0:
        if cfg.json_out:
            with open(cfg.json_out, "w") as f:
                json.dump(report, f, indent=2)
                f.write("\n")
        if cfg.markdown_out:
            with open(cfg.markdown_out, "w") as f:
                f.write(format_markdown(report) + "\n")
    return report


def _header(report: dict) -> str:
    tcfg = report["config"]["train"]
    return (
        f"data={tcfg['data']} backbone={tcfg['backbone']} output {tcfg['target_size']}px (resizer input "
        f"{round(tcfg['target_size'] * tcfg['input_scale'])}px), variant {tcfg['variant']}, "
        f"seeds={list(report['config']['seeds'])}"
    )


def format_summary(report: dict) -> str:
    """A plain-text table: accuracy mean, std, min, max and every seed; then the fidelity line."""
    lines = [_header(report), f"{'resizer':<14} {'mean acc':>8} {'std':>7} {'min':>7} {'max':>7}  per seed"]
    for name, s in report["summary"].items():
        per = " ".join(f"{a:.4f}" for a in s["accuracies"])
        lines.append(f"{name:<14} {s['mean']:8.4f} {s['std']:7.4f} {s['min']:7.4f} {s['max']:7.4f}  {per}")
    if "learned" in report["summary"]:
        best = {k: v["mean"] for k, v in report["summary"].items() if k != "learned"}
        gains = ", ".join(f"{k} {100 * (report['summary']['learned']['mean'] - v):+.1f}" for k, v in best.items())
        if gains:
            lines.append(f"learned minus baseline (points): {gains}")
    fid = report.get("fidelity")
    if fid:
        g, lp = fid["grey_spread_mean"], fid["lowpass_psnr_median"]
        lines.append(
            f"learned on {fid['photos']} held-out photos at {fid['size']}px: grey spread {g['mean']:.2f} "
            f"(max {g['max']:.2f}) grey levels; low-pass PSNR vs bilinear median {_db(lp['mean'])} dB "
            f"(seeds {_db(lp['min'])}-{_db(lp['max'])})"
        )
    return "\n".join(lines)


def _db(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.1f}"


def format_markdown(report: dict) -> str:
    """The same results as a Markdown table (mean ± std, min–max, per seed)."""
    seeds = ", ".join(str(s) for s in report["config"]["seeds"])
    lines = [
        f"<!-- {_header(report)} -->",
        f"| resizer before the classifier | mean acc ± std | min – max | per seed {seeds} |",
        "|---|---|---|---|",
    ]
    for name, s in report["summary"].items():
        per = ", ".join(f"{a:.4f}" for a in s["accuracies"])
        label = LABELS.get(name, name)
        row = f"| {label} | {s['mean']:.4f} ± {s['std']:.4f} | {s['min']:.4f} – {s['max']:.4f} | {per} |"
        lines.append(row.replace(f"| {label} |", f"| **{label}** |") if name == "learned" else row)
    fid = report.get("fidelity")
    if fid:
        g, lp = fid["grey_spread_mean"], fid["lowpass_psnr_median"]
        lines += [
            "",
            f"| learned, on {fid['photos']} held-out photos at {fid['size']} px | mean over seeds | min – max |",
            "|---|---|---|",
            f"| grey spread (grey levels) | {g['mean']:.2f} | {g['min']:.2f} – {g['max']:.2f} |",
            f"| low-pass PSNR vs bilinear, median (dB) | {_db(lp['mean'])} | {_db(lp['min'])} – {_db(lp['max'])} |",
        ]
    return "\n".join(lines)
