"""Samples/s of training-style reading: our shards vs the original image folder, same DataLoader.

    python benchmarks/bench_read.py [--num 2000] [--classes 8] [--workers 2] [--batch 64] [--repeats 3]

The corpus is ImageNet-like JPEGs (500..1024 px wide, q90) in an ImageFolder tree. The baseline is
what a training script does without preprocessing: a map-style dataset over the files (ImageFolder
labels), Pillow decode, shorter side to 224 + centre crop (bilinear), float CHW tensor, shuffled
DataLoader. The shards are the same images converted once by ``convert`` (224x224 center-crop,
bilinear, jpg q95, ``--format both``); read with `resize_pipeline.readers.torch_dataset` (tars, then
Parquet), 1000-sample shuffle buffer, the same DataLoader settings and the same output tensors.
One epoch per run; runs interleave and the best of `--repeats` is kept (the box is shared).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def make_imagefolder(root: str, n: int, classes: int, seed: int = 0) -> None:
    from bench_convert import make_corpus

    per = -(-n // classes)
    for c in range(classes):
        make_corpus(os.path.join(root, f"class_{c:02d}"), min(per, n - c * per), seed=seed + c)


class ImageFolderPillow:
    """torchvision's ImageFolder without torchvision: (path, class) list, Pillow, resize + crop."""

    def __init__(self, root: str, size: int = 224) -> None:
        classes = sorted(os.listdir(root))
        self.samples = [(os.path.join(root, c, f), i) for i, c in enumerate(classes)
                        for f in sorted(os.listdir(os.path.join(root, c)))]
        self.size = size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        import torch
        from PIL import Image

        path, label = self.samples[i]
        with Image.open(path) as im:
            img = im.convert("RGB")
        w, h = img.size
        s = self.size / min(w, h)
        img = img.resize((max(self.size, round(w * s)), max(self.size, round(h * s))), Image.Resampling.BILINEAR)
        left, top = (img.width - self.size) // 2, (img.height - self.size) // 2
        img = img.crop((left, top, left + self.size, top + self.size))
        x = torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float().div_(255)
        return x, label


def epoch(dataset, *, batch: int, workers: int, shuffle: bool) -> tuple[float, int]:
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch, num_workers=workers, shuffle=shuffle,
                        persistent_workers=False, generator=torch.Generator().manual_seed(0) if shuffle else None)
    t0 = time.perf_counter()
    n = 0
    for x, y in loader:
        assert x.shape[1:] == (3, 224, 224) and x.dtype == torch.float32
        n += len(y)
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=2000)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--samples-per-shard", type=int, default=500)
    ap.add_argument("--dir", help="work folder (default: a temporary one, removed after)")
    args = ap.parse_args()

    import torch

    from resize_pipeline.config import ConvertConfig
    from resize_pipeline.conversion import convert
    from resize_pipeline.readers import torch_dataset

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        corpus, out = os.path.join(tmp, "corpus"), os.path.join(tmp, "out")
        make_imagefolder(corpus, args.num, args.classes)
        src_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(corpus) for f in fs)
        t0 = time.perf_counter()
        convert(ConvertConfig(corpus, out, size=(224, 224), mode="center-crop", resizer="bilinear", format="both",
                              samples_per_shard=args.samples_per_shard, workers=args.workers, quiet=True))
        t_convert = time.perf_counter() - t0
        tar_bytes = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.endswith(".tar"))
        runs = {
            "ImageFolder + Pillow (original JPEGs)": lambda: epoch(ImageFolderPillow(corpus), batch=args.batch,
                                                                   workers=args.workers, shuffle=True),
            "torch_dataset, WebDataset tars": lambda: epoch(torch_dataset(out, shuffle=1000), batch=args.batch,
                                                            workers=args.workers, shuffle=False),
            "torch_dataset, Parquet": lambda: epoch(torch_dataset(out, format="parquet", shuffle=1000),
                                                    batch=args.batch, workers=args.workers, shuffle=False),
        }
        best: dict[str, float] = {}
        for r in range(args.repeats):
            for name, run in runs.items():
                dt, n = run()
                assert n == args.num, (name, n)
                best[name] = max(best.get(name, 0.0), n / dt)
                print(f"  repeat {r + 1}: {name}: {n / dt:.1f} samples/s", file=sys.stderr)
    print(f"{args.num} JPEGs ({args.classes} classes, 500..1024 px wide, {src_bytes / 2**20:.0f} MiB) -> "
          f"224x224 float tensors; DataLoader batch {args.batch}, {args.workers} workers, {os.cpu_count()} cores")
    print(f"one-time convert (224 center-crop, jpg q95, --format both): {t_convert:.1f} s; "
          f"tars {tar_bytes / 2**20:.0f} MiB")
    base = best["ImageFolder + Pillow (original JPEGs)"]
    print(f"{'reader':<42}{'samples/s':>10}{'x folder':>10}")
    for name, v in best.items():
        print(f"{name:<42}{v:>10.1f}{v / base:>10.2f}")


if __name__ == "__main__":
    main()
