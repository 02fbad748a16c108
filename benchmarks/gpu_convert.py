"""The whole conversion on one GPU next to the DALI decoder's own rate, in one run.

    python benchmarks/gpu_convert.py [--n 4096] [--batch 128]        # on the lent GPU machine
    python benchmarks/gpu_convert.py --n 64 --batch 16 --cpu          # smoke test without a GPU

Rows (images/s over the same ImageNet-like JPEG corpus written to local disk):
1. DALI mixed decode + crop + resize to 448 (the learned resizer's input), into torch: the decoder's rate;
2. `convert`, DALI mixed + learned resizer on the GPU, stages overlapped (the product path);
3. the same with `--no-overlap` (a serial chain: decode -> resize -> encode -> write);
4. `convert`, DALI mixed + bilinear on the GPU (classical baseline through the same pipeline).
It prints each rate, its ratio to row 1 (target >= 0.8), peak RSS and peak GPU memory, and writes
gpu_convert.json under $OUT when set. The learned resizer is the bundled checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_corpus(dest: str, n: int) -> None:
    from gpu_check import _make_one

    os.makedirs(dest, exist_ok=True)

    def one(i: int) -> None:
        with open(os.path.join(dest, f"{i:07d}.jpg"), "wb") as fh:
            fh.write(_make_one((0, i)))

    with ThreadPoolExecutor(os.cpu_count() or 4) as pool:
        list(pool.map(one, range(n)))


def decoder_rate(corpus: str, batch: int, cpu: bool) -> float:
    from resize_pipeline.decode.dali import DaliDecoder
    from resize_pipeline.geometry import ResizeOp, plan_resize

    blobs = [Path(corpus, f).read_bytes() for f in sorted(os.listdir(corpus))]
    dec = DaliDecoder(device="cpu" if cpu else "mixed", batch_size=batch, num_threads=8, hw_decoder_load=0.9)

    def plan(w, h):
        op = plan_resize(w, h, (224, 224), "center-crop")
        return ResizeOp(op.box, (448, 448))

    run = dec.decode_resize if cpu else dec.decode_resize_gpu_batch
    run(blobs[:batch], plan)  # warm up
    t0 = time.perf_counter()
    for s in range(0, len(blobs), batch):
        run(blobs[s : s + batch], plan)
    if not cpu:
        import torch

        torch.cuda.synchronize()
    return len(blobs) / (time.perf_counter() - t0)


def convert_rate(corpus: str, dst: str, batch: int, cpu: bool, **kw) -> tuple[float, dict]:
    from resize_pipeline import ConvertConfig
    from resize_pipeline.conversion import convert

    cfg = ConvertConfig(corpus, dst, size=224, mode="center-crop", decoder="auto", workers=1,
                        batch_size=batch, samples_per_shard=1024, quiet=True, overwrite=True,
                        device="cpu" if cpu else "cuda", **kw)
    s = convert(cfg)
    assert s.failed == 0, s.manifest["counts"]
    return s.total / s.seconds, s.manifest["components"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--cpu", action="store_true", help="DALI CPU + torch CPU (smoke test without a GPU)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="gpu_convert_")
    corpus = os.path.join(tmp, "corpus")
    t0 = time.perf_counter()
    make_corpus(corpus, args.n)
    print(f"corpus: {args.n} JPEGs in {time.perf_counter() - t0:.1f} s", flush=True)
    rows: list[tuple[str, float | None, str]] = []

    def row(label, fn):
        try:
            rate, extra = fn()
            rows.append((label, rate, json.dumps(extra)[:120]))
        except Exception as exc:  # noqa: BLE001 - keep measuring the other rows
            traceback.print_exc()
            rows.append((label, None, f"{type(exc).__name__}: {exc}"[:120]))
        print(rows[-1], flush=True)

    row("DALI decode+crop+resize448 (decoder rate)", lambda: (decoder_rate(corpus, args.batch, args.cpu), {}))
    for label, kw in (
        ("convert learned, overlapped", {"resizer": "learned"}),
        ("convert learned, --no-overlap", {"resizer": "learned", "overlap": False}),
        ("convert bilinear (DALI resize), overlapped", {"resizer": "bilinear"}),
    ):
        row(label, lambda kw=kw: convert_rate(corpus, os.path.join(tmp, "out"), args.batch, args.cpu, **kw))
    base = rows[0][1]
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_mem = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu_mem = torch.cuda.max_memory_allocated() / 2**20
            print(f"device: {torch.cuda.get_device_name()}")
    except ImportError:
        pass
    print("\n| run | img/s | x decoder |\n| --- | ---: | ---: |")
    for label, rate, _ in rows:
        r = f"{rate:.0f}" if rate else "failed"
        x = f"{rate / base:.2f}" if rate and base else "-"
        print(f"| {label} | {r} | {x} |")
    print(f"peak RSS {peak_rss:.0f} MiB, peak torch GPU memory {gpu_mem if gpu_mem is None else round(gpu_mem)} MiB")
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_convert.json").write_text(json.dumps({"rows": rows, "peak_rss_mib": peak_rss,
                                                             "gpu_mem_mib": gpu_mem}, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all(r[1] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
