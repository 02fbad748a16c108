"""Bilinear vs learned resizer at equal output size: same classifier, same data, several seeds.

`evaluate(EvaluateConfig(...))` is the public function behind ``resize-pipeline evaluate``. Each
(resizer, seed) pair is one full `train` run; the seed changes the model initialisation and the batch
order, the data (``data_seed``) stays fixed so that the spread measures training noise.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import asdict, dataclass, replace
from typing import Any

from resize_pipeline.learned.train import RESIZERS, TrainConfig, train

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EvaluateConfig:
    train: TrainConfig = TrainConfig()
    seeds: tuple[int, ...] = (0, 1, 2)
    resizers: tuple[str, ...] = ("bilinear", "bilinear-noaa", "learned")
    json_out: str | None = None

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("at least one seed is required")
        for r in self.resizers:
            if r not in RESIZERS:
                raise ValueError(f"unknown resizer {r!r}; expected one of {', '.join(RESIZERS)}")


def summarize(accuracies: list[float]) -> dict[str, float | list[float]]:
    return {
        "mean": statistics.fmean(accuracies),
        "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        "min": min(accuracies),
        "max": max(accuracies),
        "accuracies": accuracies,
    }


def evaluate(cfg: EvaluateConfig) -> dict:
    """Train/evaluate every (resizer, seed); returns runs and a per-resizer summary."""
    runs: list[dict[str, Any]] = []
    for resizer in cfg.resizers:
        for seed in cfg.seeds:
            tcfg = replace(cfg.train, resizer=resizer, seed=seed, out_dir=None, export_dir=None, resume=False)
            res = train(tcfg)
            runs.append(
                {
                    "resizer": resizer,
                    "seed": seed,
                    "val_accuracy": res.val_accuracy,
                    "final_loss": res.epoch_losses[-1] if res.epoch_losses else None,
                    "steps": res.steps,
                    "seconds": round(res.seconds, 1),
                }
            )
            log.info("%s seed=%d: %.4f", resizer, seed, res.val_accuracy)
    summary = {
        r: summarize([float(x["val_accuracy"]) for x in runs if x["resizer"] == r]) for r in cfg.resizers
    }
    report = {"config": asdict(cfg), "runs": runs, "summary": summary}
    if cfg.json_out:
        with open(cfg.json_out, "w") as f:
            json.dump(report, f, indent=2)
    return report


def format_summary(report: dict) -> str:
    tcfg = report["config"]["train"]
    lines = [
        f"data={tcfg['data']} output {tcfg['target_size']}px (resizer input "
        f"{round(tcfg['target_size'] * tcfg['input_scale'])}px), seeds={report['config']['seeds']}",
        f"{'resizer':<14} {'mean acc':>8} {'std':>7} {'min':>7} {'max':>7}  per seed",
    ]
    for name, s in report["summary"].items():
        per = " ".join(f"{a:.4f}" for a in s["accuracies"])
        lines.append(f"{name:<14} {s['mean']:8.4f} {s['std']:7.4f} {s['min']:7.4f} {s['max']:7.4f}  {per}")
    return "\n".join(lines)
