"""Learned vs classical resizers at equal output size: same classifier, same data, several seeds.

`evaluate(EvaluateConfig(...))` is the public function behind ``resize-pipeline evaluate``. Each
(resizer, seed) pair is one full `train` run with the same backbone, recipe and number of steps; the
seed changes the model initialisation and the batch order, the data (``data_seed``) stays fixed so
that the spread measures training noise. Resizers:

- ``learned:PATH``: an exported resizer (what ``train --export`` wrote, as ``convert`` names it),
  frozen: the backbone is trained behind it, the resizer never changes. The inputs of every run are
  then made at its input scale, so the baselines see the same pixels. Its colour fidelity on held-out
  real photos is measured once (`fidelity`).
- ``learned``: a resizer trained jointly from scratch in each run (and its fidelity measured per run);
- the classical baselines (`train_config.BASELINES`).

With ``backbone_weights`` the backbone starts from those weights; with ``epochs=0`` as well it is
scored as it is (no training, so one run per resizer whatever the seeds).
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from resize_pipeline.errors import ConfigError, OutputError
from resize_pipeline.learned.monitor import duration
from resize_pipeline.learned.train_config import RESIZERS, TrainConfig, frozen_path

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
FIDELITY_KEYS = ("grey_spread_mean", "grey_spread_max_pixel", "lowpass_psnr_median", "lowpass_psnr_min", "psnr_median")


def is_learned(name: str) -> bool:
    return name == "learned" or name.startswith("learned:")


def label(name: str) -> str:
    path = frozen_path(name)
    return f"learned, exported `{path}` (frozen)" if path is not None else LABELS.get(name, name)


@dataclass(frozen=True, slots=True)
class EvaluateConfig:
    train: TrainConfig = TrainConfig()
    seeds: tuple[int, ...] = (0, 1, 2)
    resizers: tuple[str, ...] = DEFAULT_RESIZERS
    json_out: str | None = None
    markdown_out: str | None = None
    #: held-out photos for the colour-fidelity check of each learned resizer (0 = skip the check)
    fidelity_photos: int = 48
    fidelity_size: int = 224

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("at least one seed is required")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must differ, got {self.seeds}")
        if not self.resizers:
            raise ValueError("at least one resizer is required")
        if len(set(self.resizers)) != len(self.resizers):
            raise ValueError(f"resizers must differ, got {', '.join(self.resizers)}")
        for r in self.resizers:
            if r not in RESIZERS and not (frozen_path(r) or "").strip():
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


def _fidelity_of(resizer: Any, photos: list, size: int) -> dict[str, Any]:
    from resize_pipeline.learned.fidelity import fidelity_report

    rep = fidelity_report(resizer, photos, size=size)
    return {
        "grey_spread_mean": rep["grey_spread"]["mean"],
        "grey_spread_max_pixel": rep["grey_spread_max"],
        "lowpass_psnr_median": rep["lowpass_psnr"]["median"],
        "lowpass_psnr_min": rep["lowpass_psnr"]["min"],
        "psnr_median": rep["psnr"]["median"],
        "photos": rep["images"],
        "size": size,
    }


def _fidelity(resizer_net: Any, photos: list, size: int) -> dict[str, Any]:
    """Fidelity of a trained net, measured as ``convert`` would run it: exported, then loaded."""
    from resize_pipeline.learned.export import export_resizer
    from resize_pipeline.learned.inference import LearnedResizer

    with tempfile.TemporaryDirectory() as tmp:
        path = export_resizer(resizer_net, tmp)
        return _fidelity_of(LearnedResizer(str(path), device="cpu", precision="fp32"), photos, size)


def _heldout_photos(n: int) -> list:
    if n == 0:
        return []
    try:
        from resize_pipeline.learned.fidelity import heldout_photos

        return heldout_photos(n)
    except ImportError as exc:
        log.warning("colour-fidelity check skipped: %s", exc)
        return []


def check_writable(path: str | None, flag: str) -> None:
    """`ConfigError` now, before hours of training, when `path` cannot be written."""
    if not path:
        return
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigError(f"{flag} {path}: is a folder")
    if not os.path.isdir(parent):
        raise ConfigError(f"{flag} {path}: no such folder {parent}")
    try:  # the real test (os.access says yes to root, and on read-only mounts): write a file there
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".resize-pipeline-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot write in {parent} ({exc.strerror or exc})") from None
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ConfigError(f"{flag} {path}: not writable")


def _input_scale(cfg: EvaluateConfig) -> TrainConfig:
    """With one exported resizer (or several of one input scale), every run makes its inputs at that
    scale, so the baselines see the same pixels as the exported resizer."""
    from resize_pipeline.learned.export import load_resizer_module

    scales = set()
    for r in cfg.resizers:
        path = frozen_path(r)
        if path is not None:
            try:
                scales.add(float(load_resizer_module(path)[1]["input_scale"]))
            except Exception as exc:  # noqa: BLE001 - a resizer that cannot load: one line
                raise ConfigError(f"--resizers {r}: cannot load the resizer: {exc}") from None
    if len(scales) == 1:
        return replace(cfg.train, input_scale=scales.pop())
    if len(scales) > 1:
        log.warning("exported resizers of different input scales: baselines use --input-scale %g", cfg.train.input_scale)
    return cfg.train


def evaluate(cfg: EvaluateConfig, notify: Callable[[str], None] | None = None, save: bool = True) -> dict:
    """Train/evaluate every (resizer, seed); returns runs and a per-resizer summary.

    `save`: write `json_out` / `markdown_out` at the end (`save_report`); the CLI prints the results
    first and saves them itself, so that an unwritable path never loses them."""
    from resize_pipeline.learned.train import train

    check_writable(cfg.json_out, "--json")
    check_writable(cfg.markdown_out, "--markdown")
    base = _input_scale(cfg)
    seeds = cfg.seeds
    if base.epochs == 0 and base.resolved_pretrain_epochs == 0:
        seeds = seeds[:1]  # nothing is trained: every seed would give the same number
        log.info("--epochs 0: the given backbone is scored as it is, one run per resizer")
    photos = _heldout_photos(cfg.fidelity_photos) if any(is_learned(r) for r in cfg.resizers) else []
    runs: list[dict[str, Any]] = []
    exported: dict[str, Any] = {}
    rank = 0
    n_runs = len(cfg.resizers) * len(seeds)
    for resizer in cfg.resizers:
        for seed in seeds:
            tcfg = replace(base, resizer=resizer, seed=seed, out_dir=None, export_dir=None, resume=False)
            first = not runs
            res = train(tcfg, notify=notify if first else None)  # the cost is said once, for the first run
            rank = res.rank
            if first and notify is not None and n_runs > 1 and rank == 0:
                notify(f"evaluate: {n_runs} runs like this one ({res.seconds:.0f} s): about "
                       f"{duration(res.seconds * n_runs)} in all")
            run: dict[str, Any] = {
                "resizer": resizer,
                "seed": seed,
                "val_accuracy": res.val_accuracy,
                "final_loss": res.epoch_losses[-1] if res.epoch_losses else None,
                "steps": res.steps,
                "batch_size": res.batch_size,
                "skipped_inputs": len(res.skipped),
                "seconds": round(res.seconds, 1),
            }
            if resizer == "learned" and photos and rank == 0:
                run["fidelity"] = _fidelity(res.resizer, photos, cfg.fidelity_size)
            runs.append(run)
            log.info("%s seed=%d: %.4f", resizer, seed, res.val_accuracy)
        path = frozen_path(resizer)
        if path is not None and photos and rank == 0:
            from resize_pipeline.learned.inference import LearnedResizer

            exported[resizer] = _fidelity_of(LearnedResizer(path, device="cpu", precision="fp32"), photos,
                                             cfg.fidelity_size)
    summary = {
        r: summarize([float(x["val_accuracy"]) for x in runs if x["resizer"] == r]) for r in cfg.resizers
    }
    fid_runs = [x["fidelity"] for x in runs if "fidelity" in x]
    fidelity = None
    if fid_runs:
        fidelity = {key: summarize([float(f[key]) for f in fid_runs]) for key in FIDELITY_KEYS}
        fidelity["photos"] = fid_runs[0]["photos"]  # type: ignore[assignment]
        fidelity["size"] = fid_runs[0]["size"]  # type: ignore[assignment]
    report = {"config": asdict(replace(cfg, train=base, seeds=seeds)), "runs": runs, "summary": summary,
              "fidelity": fidelity, "exported_fidelity": exported, "rank": rank}
    if save and rank == 0:
        save_report(report, cfg.json_out, cfg.markdown_out)
    return report


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_report(report: dict, json_out: str | None, markdown_out: str | None) -> None:
    """Write the report as JSON and / or Markdown. A file that cannot be written is replaced by a copy
    in the temporary folder (so no result is lost), then `OutputError` names both (one line)."""
    failed = []
    for path, text, suffix in ((json_out, json.dumps(report, indent=2) + "\n", ".json"),
                               (markdown_out, format_markdown(report) + "\n", ".md")):
        if not path:
            continue
        try:
            _write(path, text)
        except OSError as exc:
            fd, fallback = tempfile.mkstemp(prefix="resize-pipeline-evaluate-", suffix=suffix)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            failed.append(f"cannot write {path} ({exc.strerror or exc}); the results are in {fallback}")
    if failed:
        raise OutputError("; ".join(failed))


def _header(report: dict) -> str:
    tcfg = report["config"]["train"]
    return (
        f"data={tcfg['data']} backbone={tcfg['backbone']} output {tcfg['target_size']}px (resizer input "
        f"{round(tcfg['target_size'] * tcfg['input_scale'])}px), variant {tcfg['variant']}, "
        f"seeds={list(report['config']['seeds'])}"
    )


def _fid_groups(report: dict) -> list[tuple[str, dict]]:
    """(name, fidelity summary) for the trained ``learned`` runs and each exported resizer; the
    exported ones hold single values, shown as mean = min = max."""
    out = []
    if report.get("fidelity"):
        out.append(("learned", report["fidelity"]))
    for name, f in (report.get("exported_fidelity") or {}).items():
        one = {k: {"mean": f[k], "std": 0.0, "min": f[k], "max": f[k]} for k in FIDELITY_KEYS}
        out.append((name, {**one, "photos": f["photos"], "size": f["size"]}))
    return out


def format_summary(report: dict) -> str:
    """A plain-text table: accuracy mean, std, min, max and every seed; then the fidelity lines."""
    width = max(14, *(len(n) for n in report["summary"]))
    lines = [_header(report), f"{'resizer':<{width}} {'mean acc':>8} {'std':>7} {'min':>7} {'max':>7}  per seed"]
    for name, s in report["summary"].items():
        per = " ".join(f"{a:.4f}" for a in s["accuracies"])
        lines.append(f"{name:<{width}} {s['mean']:8.4f} {s['std']:7.4f} {s['min']:7.4f} {s['max']:7.4f}  {per}")
    baselines = {k: v["mean"] for k, v in report["summary"].items() if not is_learned(k)}
    for name, s in report["summary"].items():
        if is_learned(name) and baselines:
            gains = ", ".join(f"{k} {100 * (s['mean'] - v):+.1f}" for k, v in baselines.items())
            lines.append(f"{name} minus baseline (points): {gains}")
    for name, fid in _fid_groups(report):
        g, lp = fid["grey_spread_mean"], fid["lowpass_psnr_median"]
        spread = f" (seeds {_db(lp['min'])}-{_db(lp['max'])})" if name == "learned" else ""
        lines.append(
            f"{name} on {fid['photos']} held-out photos at {fid['size']}px: grey spread {g['mean']:.2f} "
            f"(max {g['max']:.2f}) grey levels; low-pass PSNR vs bilinear median {_db(lp['mean'])} dB{spread}"
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
        text = label(name)
        row = f"| {text} | {s['mean']:.4f} ± {s['std']:.4f} | {s['min']:.4f} – {s['max']:.4f} | {per} |"
        lines.append(row.replace(f"| {text} |", f"| **{text}** |", 1) if is_learned(name) else row)
    for name, fid in _fid_groups(report):
        g, lp = fid["grey_spread_mean"], fid["lowpass_psnr_median"]
        lines += [
            "",
            f"| {label(name)}, on {fid['photos']} held-out photos at {fid['size']} px | mean over seeds | min – max |",
            "|---|---|---|",
            f"| grey spread (grey levels) | {g['mean']:.2f} | {g['min']:.2f} – {g['max']:.2f} |",
            f"| low-pass PSNR vs bilinear, median (dB) | {_db(lp['mean'])} | {_db(lp['min'])} – {_db(lp['max'])} |",
        ]
    return "\n".join(lines)
