"""Colour fidelity of learned resizers on held-out real photos, against Pillow bilinear.

    python benchmarks/colour_fidelity.py [--weights DIR ...] [--photos 48] [--size 224]
                                         [--json OUT.json] [--per-photo] [--classical]

For each resizer (default: the bundled checkpoint) and each held-out photo (scikit-image's bundled
photos, augmented with their own seed: `resize_pipeline.learned.fidelity.heldout_photos`), resized
with ``center-crop`` to SIZE through the same `Resizer.resize` call ``convert`` uses:

- grey spread: the photo converted to greyscale (three equal channels) is resized; the mean over
  pixels of max(R,G,B) - min(R,G,B) is reported (grey levels; every classical filter gives 0);
- low-pass PSNR: both the resizer's output and Pillow bilinear's are blurred with a Gaussian of
  sigma 2 px, then compared (dB; the issue's target for the bundled checkpoint is a median >= 30);
- PSNR: the same without the blur (fine detail differs by design; for context).

``--json`` writes the first resizer's full report (summary and one row per photo); the bundled
checkpoint's is ``resize_pipeline/weights/default/fidelity.json``. ``--classical`` adds bicubic and
lanczos rows for scale. Inference runs in fp32 on the CPU (bit-stable numbers).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

from resize_pipeline.learned.fidelity import HELDOUT_SEED, fidelity_report, format_fidelity, heldout_photos
from resize_pipeline.learned.inference import DEFAULT_WEIGHTS, LearnedResizer
from resize_pipeline.resize.classical import ClassicalResizer


def _jsonable(obj):
    if isinstance(obj, float) and math.isinf(obj):
        return "inf"
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    return obj


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", nargs="+", default=[str(DEFAULT_WEIGHTS)], help="exported resizer dirs")
    ap.add_argument("--photos", type=int, default=48)
    ap.add_argument("--seed", type=int, default=HELDOUT_SEED)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--json", default=None, help="write the first resizer's report here")
    ap.add_argument("--per-photo", action="store_true", help="print one line per source photo too")
    ap.add_argument("--classical", action="store_true", help="also bicubic and lanczos vs bilinear")
    args = ap.parse_args()

    photos = heldout_photos(args.photos, args.seed)
    print(f"{len(photos)} held-out photos (seed {args.seed}), center-crop to {args.size}, vs Pillow bilinear; "
          f"{platform.processor() or platform.machine()}")
    resizers = [(w, LearnedResizer(w, device="cpu", precision="fp32")) for w in args.weights]
    if args.classical:
        resizers += [(name, ClassicalResizer(name)) for name in ("bicubic", "lanczos")]
    first = None
    for label, r in resizers:
        t = time.perf_counter()
        rep = fidelity_report(r, photos, size=args.size)
        arch = getattr(r, "meta", {}).get("architecture", "")
        print(format_fidelity(rep, f"{label} {arch}: ") + f" ({time.perf_counter() - t:.0f} s)")
        if args.per_photo:
            for name in sorted({row["photo"] for row in rep["rows"]}):
                rows = [row for row in rep["rows"] if row["photo"] == name and not row["greyscale_source"]]
                if rows:
                    lp = sorted(row["lowpass_psnr"] for row in rows)
                    print(f"    {name:<22} n={len(rows):2d} low-pass PSNR median {lp[len(lp) // 2]:.1f} "
                          f"min {lp[0]:.1f}; grey spread max "
                          f"{max(row['grey_spread'] for row in rep['rows'] if row['photo'] == name):.2f}")
        if first is None:
            if os.path.abspath(label) == os.path.abspath(DEFAULT_WEIGHTS):
                label = "bundled (resize_pipeline/weights/default)"
            first = dict(rep, resizer=label, sha256=getattr(r, "sha256", ""), architecture=arch,
                         photo_seed=args.seed, precision="fp32")
    if args.json and first is not None:
        with open(args.json, "w") as f:
            json.dump(_jsonable(first), f, indent=1)
            f.write("\n")
        print(f"report: {args.json}")


if __name__ == "__main__":
    main()
