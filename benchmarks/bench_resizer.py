"""Learned-resizer throughput at 448 -> 224: naive eager fp32 vs the optimised inference path.

    python benchmarks/bench_resizer.py [--batch 16] [--iters 6] [--weights DIR] [--no-compile]

Prints images/s for each variant, the speed-up over naive, and the max difference of the uint8
output against the naive fp32 output (in grey levels). Runs the CUDA rows too when a GPU is present.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import tempfile
import time

import torch

from resize_pipeline.learned.export import export_resizer, load_artifact
from resize_pipeline.learned.inference import DEFAULT_WEIGHTS, LearnedResizer
from resize_pipeline.learned.model import LearnedResizerNet, ResizerConfig


def training_form_net(config: ResizerConfig) -> LearnedResizerNet:
    """A training-form net (with BN, non-trivial stats); speed does not depend on the weight values."""
    torch.manual_seed(0)
    net = LearnedResizerNet(config)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.nn.init.normal_(net.out_conv.weight, std=0.01)
    return net.eval()


def timeit(fn, x, iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters


def to_u8(y: torch.Tensor) -> torch.Tensor:
    return y.float().clamp(0, 1).mul(255).round().to(torch.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()

    out = (args.size, args.size)
    inp = int(args.size * 2)
    if os.path.exists(os.path.join(args.weights, "config.json")):
        config = ResizerConfig.from_dict(load_artifact(args.weights)[1]["config"])
    else:  # before the bundled checkpoint exists
        config = ResizerConfig()
    naive = training_form_net(config)
    tmp = tempfile.mkdtemp()
    weights = str(export_resizer(naive, tmp))  # same weights, BN folded, through the real export path
    folded, _ = load_artifact(weights)
    print(
        f"# learned resizer {inp}->{args.size}, batch {args.batch}, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    print(f"{'device':<6} {'variant':<44} {'img/s':>8} {'x naive':>8} {'max|d| u8':>9}")

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        bench_device(dev, args, naive, folded, weights, out, inp)


def forward_fn(m, out: tuple[int, int], dev: str, amp: torch.dtype | None = None):
    def fn(t: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if amp is None:
                return m(t, out)
            with torch.autocast(dev, dtype=amp):
                return m(t, out)

    return fn


def bench_device(dev: str, args, naive, folded, weights: str, out: tuple[int, int], inp: int) -> None:
    import numpy as np

    from resize_pipeline.geometry import ResizeOp

    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, inp, inp, device=dev)
    xl = x.contiguous(memory_format=torch.channels_last)
    n = naive.to(dev)
    f = copy.deepcopy(folded).to(dev)
    fl = copy.deepcopy(folded).to(dev).to(memory_format=torch.channels_last)
    default_threads = torch.get_num_threads()
    with torch.no_grad():
        ref = to_u8(n(x, out))
    # (name, fn, input, cpu threads)
    rows = [
        (f"naive eager fp32 (BN, NCHW, {default_threads} thr)", forward_fn(n, out, dev), x, default_threads),
        ("BN folded, NCHW", forward_fn(f, out, dev), x, args.threads),
        ("BN folded, channels_last", forward_fn(fl, out, dev), xl, args.threads),
        (
            "BN folded, channels_last, bf16 autocast",
            forward_fn(fl, out, dev, torch.bfloat16),
            xl,
            args.threads,
        ),
    ]
    if dev == "cpu":
        rows.append(("BN folded, channels_last, 1 thread", forward_fn(fl, out, dev), xl, 1))
    if dev == "cuda":
        rows.append(
            ("BN folded, channels_last, fp16 autocast", forward_fn(fl, out, dev, torch.float16), xl, 1)
        )
    if not args.no_compile:
        fc = torch.compile(copy.deepcopy(fl), dynamic=False)
        rows.append(("BN folded, channels_last, torch.compile", forward_fn(fc, out, dev), xl, args.threads))
        rows.append(
            ("BN folded, chl, compile + bf16", forward_fn(fc, out, dev, torch.bfloat16), xl, args.threads)
        )
    base = None
    for name, fn, t, threads in rows:
        torch.set_num_threads(threads)
        try:
            sec = timeit(fn, t, args.iters)
            y = to_u8(fn(t))
        except Exception as e:  # noqa: BLE001 - report the failure and go on with the other rows
            print(f"{dev:<6} {name:<44} failed: {type(e).__name__}: {str(e)[:80]}")
            continue
        ips = args.batch / sec
        base = base or ips
        diff = int((y.cpu().int() - ref.cpu().int()).abs().max())
        print(f"{dev:<6} {name:<44} {ips:8.1f} {ips / base:8.2f} {diff:9d}", flush=True)
    torch.set_num_threads(args.threads)
    # end to end through the Resizer API (Pillow crop + pre-resize, CNN, uint8) from 800x600 uint8 HWC
    imgs = [
        np.random.default_rng(i).integers(0, 256, (600, 800, 3), dtype=np.uint8) for i in range(args.batch)
    ]
    ops = [ResizeOp((100.0, 0.0, 700.0, 600.0), out)] * args.batch
    for precision in ("fp32", "bf16"):
        r = LearnedResizer(weights, device=dev, batch_size=args.batch, precision=precision)
        sec = timeit(lambda _, r=r: r.resize(imgs, ops), x, max(2, args.iters // 2), warmup=1)
        name = f"LearnedResizer.resize e2e 800x600 u8, {precision}"
        print(f"{dev:<6} {name:<44} {args.batch / sec:8.1f} {args.batch / sec / (base or 1):8.2f} {'-':>9}")


if __name__ == "__main__":
    main()
