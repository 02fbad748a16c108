"""Check and time decoding: DALI mixed (nvJPEG) vs DALI CPU vs Pillow, decode-only and decode+resize.

One run on the lent GPU machine does everything (see docs/dali.md); it also runs without a GPU,
skipping the GPU rows::

    python benchmarks/gpu_check.py                       # GPU machine: 2048 images, full table
    python benchmarks/gpu_check.py --n 96 --min-seconds 1 --procs 2 --threads 2   # CPU sandbox

It generates an ImageNet-like JPEG corpus in memory (crops of skimage photos, 500x375..1024x768,
quality 75..95), checks that the decoders agree (mean abs diff in levels), then measures images/s:

- Pillow, N processes (decode at full size; decode + 224 center-crop with JPEG draft + bilinear);
- DALI CPU-only (``device_id=None``), T threads, batch B;
- DALI mixed, batch B, 8 threads, for each ``--hw-loads`` value with fancy chroma upsampling, and
  the last value without it: ``decode_gpu`` (full size, into torch CUDA tensors) and
  ``decode_resize_gpu_batch`` (224 center-crop on the GPU, (B,3,224,224)).

Each figure is the median of ``--repeats`` windows of ``--min-seconds``. A failing GPU row prints
its traceback and the run goes on; the exit status is 1 if a check or a row failed.

It prints a markdown table and peak memory (RSS, torch.cuda.max_memory_allocated, device memory in
use, which includes DALI's own pools) and writes gpu_check.json under $OUT (or --out) if given.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from resize_pipeline.decode.pillow import PillowDecoder  # noqa: E402
from resize_pipeline.geometry import draft_request, plan_resize  # noqa: E402
from resize_pipeline.resize.classical import ClassicalResizer  # noqa: E402

TARGET = (224, 224)
_CORPUS: list[bytes] = []  # set before the Pillow pool forks


# -- corpus --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _photos() -> list[np.ndarray]:
    from skimage import data

    return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.hubble_deep_field()]


def _make_one(args: tuple[int, int]) -> bytes:
    from PIL import Image

    seed, idx = args
    rng = np.random.default_rng([seed, idx])
    photos = _photos()
    src = Image.fromarray(photos[idx % len(photos)])
    sw, sh = src.size
    cw, ch = int(sw * rng.uniform(0.45, 1.0)), int(sh * rng.uniform(0.45, 1.0))
    left, top = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch + 1))
    w = int(rng.integers(500, 1025))
    h = int(np.clip(w * rng.uniform(0.6, 0.9), 375, 768))
    if rng.random() < 0.25:  # some portrait images
        w, h = h, w
    img = src.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(75, 96)))
    return buf.getvalue()


def make_corpus(n: int, seed: int, procs: int) -> list[bytes]:
    with mp.get_context("fork").Pool(procs) as pool:
        return pool.map(_make_one, [(seed, i) for i in range(n)], chunksize=16)


# -- Pillow baseline (multiprocessing) ---------------------------------------------------------
def _plan(w: int, h: int):
    return plan_resize(w, h, TARGET, "center-crop")


def _pillow_work(args: tuple[int, int, bool]) -> int:
    start, stop, resize = args
    dec = PillowDecoder(draft=resize)
    resizer = ClassicalResizer("bilinear")
    done = 0
    for blob in _CORPUS[start:stop]:
        if resize:

            def req(w, h):
                return draft_request(w, h, _plan(w, h))

            img = dec.decode_one(blob, req)
            resizer.resize_one(img, _plan(img.shape[1], img.shape[0]))
        else:
            dec.decode_one(blob)
        done += 1
    return done


def bench_pillow(procs: int, resize: bool, min_seconds: float, repeats: int) -> list[float]:
    """Images/s of `procs` Pillow processes over the corpus, one figure per timed window."""
    n = len(_CORPUS)
    step = max(1, min(32, n // (procs * 4) or 1))
    tasks = [(i, min(n, i + step), resize) for i in range(0, n, step)]
    rates = []
    with mp.get_context("fork").Pool(procs) as pool:
        pool.map(_pillow_work, tasks[:procs])  # warm up the workers
        for _ in range(repeats):
            done, t0 = 0, time.perf_counter()
            while True:
                done += sum(pool.map(_pillow_work, tasks))
                if time.perf_counter() - t0 >= min_seconds:
                    break
            rates.append(done / (time.perf_counter() - t0))
    return rates


# -- DALI ----------------------------------------------------------------------------------------
def bench_batches(
    step, corpus: list[bytes], batch: int, min_seconds: float, repeats: int, sync=None
) -> list[float]:
    """Images/s of `step(batch_blobs)` over the corpus, one figure per window of `min_seconds`."""
    batches = [corpus[i : i + batch] for i in range(0, len(corpus), batch)]
    step(batches[0])  # warm-up: pipeline build, allocations
    if sync:
        sync()
    rates = []
    for _ in range(repeats):
        done, t0 = 0, time.perf_counter()
        while True:
            for b in batches:
                out = step(b)
                done += len(b)
                del out
            if sync:
                sync()
            if time.perf_counter() - t0 >= min_seconds:
                break
        rates.append(done / (time.perf_counter() - t0))
    return rates


def mad(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2048, help="corpus size (images)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--gpu-threads", type=int, default=8, help="DALI threads for the mixed rows")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="DALI threads for the CPU rows")
    ap.add_argument("--procs", type=int, default=os.cpu_count(), help="Pillow processes")
    ap.add_argument("--hw-loads", default="0.65,0.9", help="hw_decoder_load values for the mixed rows")
    ap.add_argument("--min-seconds", type=float, default=2.0, help="length of one timed window")
    ap.add_argument("--repeats", type=int, default=3, help="timed windows per figure (median reported)")
    ap.add_argument("--skip-pillow", action="store_true")
    ap.add_argument("--skip-dali-cpu", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_check.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    from resize_pipeline.decode.dali import DaliDecoder, cuda_device_count

    has_gpu = cuda_device_count() > 0 and torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if has_gpu else "none"
    print(
        f"# gpu_check: python {platform.python_version()}, torch {torch.__version__}, GPU: {device}, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )

    t0 = time.perf_counter()
    corpus = make_corpus(args.n, args.seed, args.procs)
    sizes = [len(b) for b in corpus]
    print(
        f"corpus: {len(corpus)} JPEGs, mean {np.mean(sizes) / 1024:.0f} KiB, "
        f"made in {time.perf_counter() - t0:.1f}s",
        flush=True,
    )
    global _CORPUS
    _CORPUS = corpus

    rows: list[dict] = []
    checks: dict[str, float] = {}
    failures: list[str] = []

    def row(name: str, decode: list[float] | None, resize: list[float] | None, note: str = "") -> None:
        med = lambda v: None if not v else float(np.median(v))  # noqa: E731
        rows.append(
            {
                "decoder": name,
                "decode_img_s": med(decode),
                "decode_resize224_img_s": med(resize),
                "decode_runs": decode,
                "decode_resize224_runs": resize,
                "note": note,
            }
        )
        fmt = lambda v: "-" if not v else f"{np.median(v):,.0f} ({min(v):,.0f}..{max(v):,.0f})"  # noqa: E731
        print(
            f"  {name}: decode {fmt(decode)} img/s, decode+resize224 {fmt(resize)} img/s {note}", flush=True
        )

    # correctness first: DALI CPU vs Pillow (and mixed vs CPU below)
    sample = corpus[: min(64, len(corpus))]
    pil = PillowDecoder(draft=False)
    ref = [pil.decode_one(b) for b in sample]
    cpu_dec = DaliDecoder(device="cpu", batch_size=args.batch, num_threads=args.threads)
    cpu_out = cpu_dec.decode(sample)
    checks["dali_cpu_vs_pillow_mad"] = max(mad(a, b) for a, b in zip(cpu_out, ref, strict=True))
    plan_out = cpu_dec.decode_resize(sample, _plan)
    resizer = ClassicalResizer("bilinear")
    ref224 = [resizer.resize_one(r, _plan(r.shape[1], r.shape[0])) for r in ref]
    checks["dali_cpu_resize224_vs_pillow_bilinear_mad"] = max(
        mad(a, b) for a, b in zip(plan_out, ref224, strict=True)
    )

    # the pre-screen runs in the calling thread: its rate caps one DaliDecoder's throughput
    from resize_pipeline.decode.dali import probe

    t1 = time.perf_counter()
    for blob in corpus:
        probe(blob)
    probe_rate = len(corpus) / (time.perf_counter() - t1)
    print(f"  pre-screen (probe), 1 thread: {probe_rate:,.0f} img/s", flush=True)

    # Pillow rows fork before any CUDA context exists
    if not args.skip_pillow:
        row(
            f"Pillow, {args.procs} processes",
            bench_pillow(args.procs, False, args.min_seconds, args.repeats),
            bench_pillow(args.procs, True, args.min_seconds, args.repeats),
            "(resize: JPEG draft + bilinear)",
        )
    if not args.skip_dali_cpu:
        row(
            f"DALI CPU, b{args.batch} t{args.threads}",
            bench_batches(cpu_dec.decode, corpus, args.batch, args.min_seconds, args.repeats),
            bench_batches(
                lambda b: cpu_dec.decode_resize(b, _plan), corpus, args.batch, args.min_seconds, args.repeats
            ),
        )

    if has_gpu:
        loads = [float(v) for v in args.hw_loads.split(",") if v]
        # fancy (libjpeg-like) chroma upsampling may keep images off the hardware decoder: time both
        configs = [(load, True) for load in loads] + [(loads[-1], False)]
        for load, fancy in configs:
            name = f"DALI mixed, b{args.batch} t{args.gpu_threads} hw_decoder_load={load} fancy={int(fancy)}"
            try:  # a failing GPU row must not cost the rest of the (expensive) run
                dec = DaliDecoder(
                    device="mixed",
                    batch_size=args.batch,
                    num_threads=args.gpu_threads,
                    hw_decoder_load=load,
                    jpeg_fancy_upsampling=fancy,
                )
                tag = f"fancy{int(fancy)}"
                if f"dali_mixed_{tag}_vs_cpu_mad" not in checks:
                    mixed_out = dec.decode(sample)
                    checks[f"dali_mixed_{tag}_vs_cpu_mad"] = max(
                        mad(a, b) for a, b in zip(mixed_out, cpu_out, strict=True)
                    )
                    gpu224 = dec.decode_resize_gpu(sample, _plan)
                    checks[f"dali_mixed_{tag}_resize224_vs_cpu_mad"] = max(
                        mad(g.permute(1, 2, 0).cpu().numpy(), c)
                        for g, c in zip(gpu224, plan_out, strict=True)
                    )
                    batch = dec.decode_resize_gpu_batch(sample, _plan)
                    checks["gpu_batch_shape_ok"] = float(
                        tuple(batch.images.shape) == (len(sample), 3, TARGET[1], TARGET[0])
                        and not batch.errors
                    )
                sync = torch.cuda.synchronize
                row(
                    name,
                    bench_batches(dec.decode_gpu, corpus, args.batch, args.min_seconds, args.repeats, sync),
                    bench_batches(
                        lambda b, d=dec: d.decode_resize_gpu_batch(b, _plan),
                        corpus,
                        args.batch,
                        args.min_seconds,
                        args.repeats,
                        sync,
                    ),
                    f"stats {dict(dec.stats)}",
                )
                del dec
            except Exception:  # noqa: BLE001 - report and go on
                import traceback

                traceback.print_exc()
                failures.append(name)
                row(name, None, None, "FAILED (traceback above)")
    else:
        rows.append({"decoder": "DALI mixed", "note": "skipped: no CUDA GPU visible"})
        print("  DALI mixed: skipped (no CUDA GPU visible)", flush=True)

    mem = {
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_children_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }
    if has_gpu:
        free, total = torch.cuda.mem_get_info()
        mem["torch_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        mem["device_in_use_mib_at_end"] = (total - free) / 2**20

    print(
        f"\n| decoder | decode img/s | decode + resize 224 img/s | note |  (median of {args.repeats})\n"
        "| --- | ---: | ---: | --- |"
    )
    for r in rows:
        d, z = r.get("decode_img_s"), r.get("decode_resize224_img_s")
        print(
            f"| {r['decoder']} | {'-' if d is None else f'{d:,.0f}'} | {'-' if z is None else f'{z:,.0f}'} "
            f"| {r.get('note', '')} |"
        )
    print("\nchecks (max over samples of the mean abs diff, levels):", json.dumps(checks))
    print("memory (MiB):", json.dumps({k: round(v, 1) for k, v in mem.items()}))
    print(f"pre-screen (probe) in the calling thread: {probe_rate:,.0f} img/s")
    result = {
        "device": device,
        "cpus": os.cpu_count(),
        "corpus": {"n": len(corpus), "mean_kib": float(np.mean(sizes) / 1024), "seed": args.seed},
        "args": vars(args),
        "rows": rows,
        "checks": checks,
        "memory_mib": mem,
        "probe_img_s_1_thread": probe_rate,
    }
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(result, indent=2))
    bad = [k for k, v in checks.items() if k.endswith("_mad") and v > 2.0]
    if bad or failures or checks.get("gpu_batch_shape_ok", 1.0) != 1.0:
        print(
            "CHECK FAILED:",
            bad,
            failures,
            "gpu batch shape ok:",
            checks.get("gpu_batch_shape_ok"),
            flush=True,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
