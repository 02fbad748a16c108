"""Images/s of the Ray engine with 1 vs 2 CPU actors (scaling ratio), with the local engine as reference.

    python benchmarks/bench_ray.py [--num 1200] [--samples-per-shard 50] [--repeats 2] [--cpus 2]

Corpus: `resize_pipeline.sample_data.make_sample_dataset` (augmented skimage photos, JPEG/PNG/WebP,
~120..1400 px). Every run converts the whole corpus to 224x224 (center crop, bilinear, JPEG q95,
WebDataset) into a fresh folder, on one local Ray cluster started once (``num_cpus=--cpus``), after
a warm-up run. Two figures per run, best of ``--repeats``:

- end-to-end: inputs / wall clock of `convert` (listing, planning and actor start-up included: a
  fresh process per actor that imports the package and builds the stages, ~2-4 s here);
- steady: images committed after the first shard / time from the first to the last commit (the
  stats files' times), i.e. the streaming rate once the actors run, which is what a long job sees.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import tempfile
import time


def commit_rate(dest: str) -> float:
    """Images committed after the first shard / time from the first to the last commit (the stats
    files' modification times): the streaming rate once the workers run."""
    import json

    from resize_pipeline.layout import STATS_DIR

    d = os.path.join(dest, STATS_DIR)
    done = sorted((os.stat(os.path.join(d, f)).st_mtime, json.load(open(os.path.join(d, f)))["total"])
                  for f in os.listdir(d))
    if len(done) < 2 or done[-1][0] <= done[0][0]:
        return float("nan")
    return sum(n for _, n in done[1:]) / (done[-1][0] - done[0][0])


def _run(src: str, dest: str, engine: str, workers: int, args) -> tuple[float, float]:
    """(end-to-end img/s, steady img/s) of one `convert` of `src` (listing and planning included)."""
    from resize_pipeline import convert
    from resize_pipeline.config import ConvertConfig

    shutil.rmtree(dest, ignore_errors=True)
    config = ConvertConfig(source=src, dest=dest, size=224, mode="center-crop", resizer="bilinear",
                           encode="jpg", quality=95, samples_per_shard=args.samples_per_shard,
                           engine=engine, workers=workers, quiet=True, batch_size=args.batch_size)
    t0 = time.perf_counter()
    summary = convert(config)
    wall = time.perf_counter() - t0
    return summary.total / wall, commit_rate(dest)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=1200, help="images in the generated corpus")
    p.add_argument("--samples-per-shard", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cpus", type=int, default=2, help="num_cpus of the local Ray cluster")
    p.add_argument("--no-local", action="store_true", help="skip the local engine reference rows")
    args = p.parse_args(argv)

    import ray

    from resize_pipeline.sample_data import make_sample_dataset
    from resize_pipeline.sources import list_source

    tmp = tempfile.mkdtemp(prefix="bench_ray_")
    try:
        src = os.path.join(tmp, "in")
        t0 = time.perf_counter()
        make_sample_dataset(src, args.num, seed=0)
        items = list_source(src).items
        small = os.path.join(tmp, "small")  # the warm-up's corpus: a few images
        os.makedirs(small)
        for it in items[: 2 * args.cpus]:
            shutil.copy(it.url[len("file://"):], os.path.join(small, os.path.basename(it.url)))
        mib = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(src) for f in fs) / 2**20
        print(f"corpus: {len(items)} images, {mib:.1f} MiB, made in {time.perf_counter() - t0:.1f} s", flush=True)
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        rows: list[tuple[str, int, float, float]] = []
        try:
            ray.data.DataContext.get_current().enable_progress_bars = False
            logging.getLogger("ray.data").setLevel(logging.WARNING)
            _run(small, os.path.join(tmp, "warm"), "ray", args.cpus,
                 argparse.Namespace(**{**vars(args), "samples_per_shard": 2}))  # Ray's worker processes
            for engine in ["ray"] if args.no_local else ["ray", "local"]:
                for workers in (1, args.cpus):
                    runs = [_run(src, os.path.join(tmp, f"{engine}{workers}"), engine, workers, args)
                            for _ in range(args.repeats)]
                    e2e, steady = max(r[0] for r in runs), max(r[1] for r in runs)
                    rows.append((engine, workers, e2e, steady))
                    print(f"{engine:5s} workers={workers}: end-to-end {e2e:7.1f} img/s, steady {steady:7.1f} img/s",
                          flush=True)
        finally:
            ray.shutdown()
        print()
        print("| engine | workers | end-to-end img/s | steady img/s | steady scaling vs 1 worker |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for engine, workers, e2e, steady in rows:
            one = next(r[3] for r in rows if r[0] == engine and r[1] == 1)
            print(f"| {engine} | {workers} | {e2e:.1f} | {steady:.1f} | {steady / one:.2f}x |")
        print(f"\nload average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
