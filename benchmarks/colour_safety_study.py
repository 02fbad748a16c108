"""Which colour-safety design? Held-out accuracy and colour fidelity of resizer designs, N seeds.

    python benchmarks/colour_safety_study.py --out DIR [--designs baselines,paper,paper-fidelity,luma,...]
                                             [--seeds 0,1,2] [--threads 1] [--reuse EVAL.json ...]

Each design is one `resize-pipeline evaluate --resizers learned` run (the bundled recipe: synthetic
task, SmallResNet, 64->32, 276 steps) with the design's variant / loss, over the seeds. Every trained
resizer is then run at 448->224 on 48 held-out photos (`learned.fidelity`): grey spread and
low-pass (sigma 2) PSNR against Pillow bilinear. Designs:

- ``paper``: the paper's 3-channel residual (``resizer_n16_r1``), task loss only;
- ``paper-fidelity``: the same plus ``--fidelity-weight 100`` (low-pass MSE to the bilinear skip);
- ``luma``: one-channel residual added equally to R, G, B (``resizer_n16_r1_luma``);
- ``luma-hp``: the same, high-passed by its own 5x5 box mean (``resizer_n16_r1_lumahp``);
- ``luma-hp-fidelity``: ``luma-hp`` plus ``--fidelity-weight 100`` (the bundled recipe);
- ``baselines``: the same backbone behind bilinear / bicubic, antialiased and not.

``--reuse`` takes `evaluate` JSON files already run with the same recipe (e.g. the bundled
checkpoint's ``evaluation.json``): their baselines and learned runs fill the table instead of
being rerun. Writes DIR/<design>.json and prints a Markdown table (also DIR/study.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from dataclasses import replace

from resize_pipeline.learned.evaluate import EvaluateConfig, evaluate
from resize_pipeline.learned.train import TrainConfig

DESIGNS = {
    "paper": {"variant": "resizer_n16_r1", "fidelity_weight": 0.0},
    "paper-fidelity": {"variant": "resizer_n16_r1", "fidelity_weight": 100.0},
    "luma": {"variant": "resizer_n16_r1_luma", "fidelity_weight": 0.0},
    "luma-hp": {"variant": "resizer_n16_r1_lumahp", "fidelity_weight": 0.0},
    "luma-hp-fidelity": {"variant": "resizer_n16_r1_lumahp", "fidelity_weight": 100.0},  # the bundled recipe
}
BASELINES = ("bilinear", "bilinear-noaa", "bicubic", "bicubic-noaa")
DESIGN_OF_VARIANT = {"resizer_n16_r1_luma": "luma", "resizer_n16_r1_lumahp": "luma-hp"}


def _ms(values: list[float], fmt: str = "{:.4f}") -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{fmt.format(mean)} ± {fmt.format(std)} ({fmt.format(min(values))} – {fmt.format(max(values))})"


def _rows(report: dict) -> list[dict]:
    tcfg = report["config"]["train"]
    design = DESIGN_OF_VARIANT.get(tcfg["variant"], "paper")
    if tcfg.get("fidelity_weight"):
        design += "-fidelity"
    return [dict(run, design=design if run["resizer"] == "learned" else run["resizer"]) for run in report["runs"]]


def table(runs: list[dict]) -> str:
    order = [*BASELINES, *DESIGNS]
    lines = [
        "| design | held-out accuracy, mean ± std (min – max) | grey spread (levels) "
        "| low-pass PSNR vs bilinear, median (dB) | PSNR vs bilinear, median (dB) | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for name in order:
        rs = [r for r in runs if r["design"] == name]
        if not rs:
            continue
        fid = [r["fidelity"] for r in rs if "fidelity" in r]
        grey = _ms([f["grey_spread_mean"] for f in fid], "{:.2f}") if fid else "0"
        lp = _ms([f["lowpass_psnr_median"] for f in fid], "{:.1f}") if fid else "(classical filter)"
        full = _ms([f["psnr_median"] for f in fid], "{:.1f}") if fid else ""
        seeds = ", ".join(str(r["seed"]) for r in rs)
        lines.append(f"| {name} | {_ms([r['val_accuracy'] for r in rs])} | {grey} | {lp} | {full} | {seeds} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--designs", default=",".join(["baselines", *DESIGNS]))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reuse", nargs="*", default=[], help="evaluate JSON files to take runs from")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    runs: list[dict] = []
    for path in args.reuse:
        with open(path) as f:
            runs += _rows(json.load(f))
    have = {r["design"] for r in runs}
    for design in [d.strip() for d in args.designs.split(",") if d.strip()]:
        if design in have or (design == "baselines" and set(BASELINES) <= have):
            continue
        if design not in DESIGNS and design != "baselines":
            raise SystemExit(f"unknown design {design!r}; expected baselines or one of {', '.join(DESIGNS)}")
        tcfg = TrainConfig(threads=args.threads, progress=False)
        resizers = BASELINES
        if design != "baselines":
            tcfg, resizers = replace(tcfg, **DESIGNS[design]), ("learned",)
        out = os.path.join(args.out, f"{design}.json")
        report = evaluate(EvaluateConfig(train=tcfg, seeds=seeds, resizers=resizers, json_out=out))
        runs += _rows(report)
        print(f"{design}: done ({out})", flush=True)
    md = table(runs)
    with open(os.path.join(args.out, "study.md"), "w") as f:
        f.write(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
