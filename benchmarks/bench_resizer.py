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
        torch.manual_seed(0)
        x = torch.rand(args.batch, 3, inp, inp, device=dev)
        xl = x.contiguous(memory_format=torch.channels_last)
        n = naive.to(dev)
        f = copy.deepcopy(folded).to(dev)
        fl = copy.deepcopy(folded).to(dev).to(memory_format=torch.channels_last)
        if dev == "cpu":
            torch.set_num_threads(1)
            with torch.no_grad():
                ref = to_u8(n(x, out))

        def run(m, amp=None):
            def fn(t):
                with torch.inference_mode():
                    if amp is None:
                        return m(t, out)
                    with torch.autocast(dev, dtype=amp):
                        return m(t, out)

            return fn

        rows: list[tuple[str, object, torch.Tensor]] = []
        if dev == "cpu":
            rows.append(("naive eager fp32 (BN, NCHW, 1 thread)", run(n), x))
            torch.set_num_threads(args.threads)
        rows += [
            (f"naive eager fp32 (BN, NCHW, {torch.get_num_threads()} threads)", run(n), x),
            ("BN folded, NCHW", run(f), x),
            ("BN folded, channels_last", run(fl), xl),
            ("BN folded, channels_last, bf16 autocast", run(fl, torch.bfloat16), xl),
        ]
        if dev == "cuda":
            rows.append(("BN folded, channels_last, fp16 autocast", run(fl, torch.float16), xl))
        if not args.no_compile:
            try:
                fc = torch.compile(copy.deepcopy(fl), dynamic=False)
                rows.append(("BN folded, channels_last, torch.compile", run(fc), xl))
                rows.append(("BN folded, channels_last, compile + bf16", run(fc, torch.bfloat16), xl))
            except Exception as e:  # noqa: BLE001 - report and go on
                print(f"torch.compile unavailable: {e}")
        base = None
        if dev == "cuda":
            with torch.no_grad():
                ref = to_u8(n(x, out))
        for name, fn, t in rows:
            try:
                sec = timeit(fn, t, args.iters)
                y = to_u8(fn(t))
            except Exception as e:  # noqa: BLE001
                print(f"{dev:<6} {name:<44} failed: {type(e).__name__}: {str(e)[:80]}")
                continue
            ips = args.batch / sec
            base = base or ips
            diff = int((y.cpu().int() - ref.cpu().int()).abs().max())
            print(f"{dev:<6} {name:<44} {ips:8.1f} {ips / base:8.2f} {diff:9d}")
        # end to end through the Resizer API (Pillow pre-resize + CNN + uint8), from uint8 HWC
        import numpy as np

        from resize_pipeline.geometry import ResizeOp

        r = LearnedResizer(weights, device=dev, batch_size=args.batch)
        imgs = [
            np.random.default_rng(i).integers(0, 256, (600, 800, 3), dtype=np.uint8)
            for i in range(args.batch)
        ]
        ops = [ResizeOp((100.0, 0.0, 700.0, 600.0), out)] * args.batch
        sec = timeit(lambda _: r.resize(imgs, ops), x, max(2, args.iters // 2), warmup=1)
        print(
            f"{dev:<6} {'LearnedResizer.resize (800x600 u8 -> 224, e2e)':<44} {args.batch / sec:8.1f} "
            f"{args.batch / sec / base:8.2f} {'-':>9}"
        )


if __name__ == "__main__":
    main()
