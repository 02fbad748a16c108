"""Images/s of the Ray engine with 1 vs 2 CPU actors (scaling ratio), with the local engine as reference.

    python benchmarks/bench_ray.py [--num 600] [--samples-per-shard 50] [--repeats 2] [--cpus 2]

Corpus: `resize_pipeline.sample_data.make_sample_dataset` (augmented skimage photos, JPEG/PNG/WebP,
~120..1400 px). Every run converts the whole corpus to 224x224 (center crop, bilinear, JPEG q95,
WebDataset) into a fresh folder through `resize_pipeline.convert`, on one local Ray cluster started
once (``num_cpus=--cpus``), after a warm-up run that starts the worker processes. Figures are wall
clock of ``convert()`` (listing, actor start, conversion, manifest), best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import tempfile
import time


def _convert(source: str, dest: str, engine: str, workers: int, args, expect: int | None = None) -> float:
    from resize_pipeline import convert
    from resize_pipeline.config import ConvertConfig

    shutil.rmtree(dest, ignore_errors=True)
    config = ConvertConfig(source=source, dest=dest, size=224, mode="center-crop", resizer="bilinear",
                           encode="jpg", quality=95, samples_per_shard=args.samples_per_shard,
                           engine=engine, workers=workers, quiet=True, batch_size=args.batch_size)
    t0 = time.perf_counter()
    summary = convert(config)
    seconds = time.perf_counter() - t0
    assert summary.total == (args.num if expect is None else expect), summary
    return summary.total / seconds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=600, help="images in the generated corpus")
    p.add_argument("--samples-per-shard", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cpus", type=int, default=2, help="num_cpus of the local Ray cluster")
    p.add_argument("--no-local", action="store_true", help="skip the local engine reference rows")
    args = p.parse_args(argv)

    import ray

    from resize_pipeline.sample_data import make_sample_dataset

    tmp = tempfile.mkdtemp(prefix="bench_ray_")
    try:
        src = os.path.join(tmp, "in")
        t0 = time.perf_counter()
        make_sample_dataset(src, args.num, seed=0)
        print(f"corpus: {args.num} images in {time.perf_counter() - t0:.1f} s "
              f"({sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(src) for f in fs) / 2**20:.1f} MiB)")
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        try:
            ray.data.DataContext.get_current().enable_progress_bars = False
            logging.getLogger("ray.data").setLevel(logging.WARNING)
            # warm-up: start Ray's worker processes (and import torch in them) once, outside the timings
            warm = os.path.join(tmp, "warm_in")
            make_sample_dataset(warm, 2 * args.cpus, seed=1)
            warm_args = argparse.Namespace(**{**vars(args), "samples_per_shard": 2})
            _convert(warm, os.path.join(tmp, "warm_out"), "ray", args.cpus, warm_args, expect=2 * args.cpus)
            # fixed cost of a run (listing, actor start: a fresh process importing torch, manifest)
            t0 = time.perf_counter()
            _convert(warm, os.path.join(tmp, "warm_out"), "ray", args.cpus, warm_args, expect=2 * args.cpus)
            print(f"fixed cost of a Ray run ({2 * args.cpus} images, {args.cpus} actors): "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)

            rows: list[tuple[str, int, float]] = []
            engines = ["ray"] if args.no_local else ["ray", "local"]
            for engine in engines:
                for workers in (1, args.cpus):
                    best = max(_convert(src, os.path.join(tmp, f"{engine}{workers}"), engine, workers, args)
                               for _ in range(args.repeats))
                    rows.append((engine, workers, best))
                    print(f"{engine:5s} workers={workers}: {best:7.1f} img/s", flush=True)
        finally:
            ray.shutdown()
        print()
        print("| engine | workers | img/s | scaling vs 1 |")
        print("| --- | ---: | ---: | ---: |")
        for engine, workers, ips in rows:
            one = next(r[2] for r in rows if r[0] == engine and r[1] == 1)
            print(f"| {engine} | {workers} | {ips:.1f} | {ips / one:.2f}x |")
        print(f"\nload average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
