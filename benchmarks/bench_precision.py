"""`LearnedResizer.resize` end to end (what the pipeline's resize stage pays) at one precision, for
timing whole processes side by side (the CPU default of ``--precision auto`` is set from this).

    python benchmarks/bench_precision.py --precision bf16 --n 48
    python benchmarks/bench_precision.py --precision fp32 --n 48

One process: load the bundled resizer, make `n` real-photo crops of 800x600 (scikit-image's samples),
one warm-up call, then `resize` them in batches of `--batch` (center-crop 224: Pillow crop + bilinear
pre-resize to 448 per image, the CNN, uint8) and print ``precision img/s`` of the timed part.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--sample-threads", type=int, default=None,
                    help="one torch thread per sample, this many samples at once (the pipeline's CPU way)")
    args = ap.parse_args()

    from PIL import Image

    from resize_pipeline.geometry import plan_resize
    from resize_pipeline.learned.inference import LearnedResizer
    from resize_pipeline.sample_data import load_photos

    photos = list(load_photos().values())
    images = [np.asarray(Image.fromarray(np.ascontiguousarray(photos[i % len(photos)][:, :, :3])).resize((800, 600)))
              for i in range(args.n)]
    ops = [plan_resize(800, 600, (224, 224), "center-crop")] * args.n
    r = LearnedResizer(device="cpu", batch_size=args.batch, precision=args.precision, threads=args.threads,
                       sample_threads=args.sample_threads)
    r.resize(images[: args.batch], ops[: args.batch])  # warm-up
    t = time.perf_counter()
    for s in range(0, args.n, args.batch):
        r.resize(images[s : s + args.batch], ops[s : s + args.batch])
    dt = time.perf_counter() - t
    print(f"{r.precision} sample_threads={args.sample_threads} {args.n / dt:.2f} img/s")


if __name__ == "__main__":
    main()
