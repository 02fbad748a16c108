"""Peak memory of a conversion vs dataset size: it should not grow with the number of images.

Generates N small JPEGs (64..160 px; 256 distinct images written cyclically, so generating 20k takes
seconds), converts each dataset in a fresh subprocess and samples the RSS of the whole process tree
(the job plus its worker processes) from /proc every 20 ms. Also reports the largest single process's
own peak (VmHWM) and the sum of every process's peak (an upper bound
of the tree's peak that no sampling gap can miss).

    python benchmarks/bench_memory.py                 # 2k and 20k, library entry point
    python benchmarks/bench_memory.py --sizes 2000 20000 --cli --workers 2

Linux only (/proc).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def make_dataset(folder: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    blobs = []
    for i in range(256):
        w, h = (int(v) for v in rng.integers(64, 161, 2))
        y, x = np.mgrid[0:h, 0:w]
        base = rng.uniform(30, 220, 3)
        img = np.stack(
            [base[0] + 40 * np.sin(x / (3 + i % 7)), base[1] + 30 * np.cos(y / 4.0), base[2] + 0.3 * (x + y)],
            -1,
        )
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
        blobs.append(buf.getvalue())
    for i in range(n):
        sub = folder / f"{i // 1000:03d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:07d}.jpg").write_bytes(blobs[i % len(blobs)])


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _status_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of `pid` in KB; VmHWM is the process's own peak RSS, so nothing between samples is
    missed for a single process."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def tree_rss_kb(root: int, hwm: dict[int, int]) -> tuple[int, int]:
    """(sum of RSS over `root` and all its descendants, number of processes); updates `hwm[pid]`."""
    kids = _children()
    total, n, stack = 0, 0, [root]
    while stack:
        pid = stack.pop()
        rss, peak = _status_kb(pid)
        total += rss
        hwm[pid] = max(hwm.get(pid, 0), peak)
        n += 1
        stack.extend(kids.get(pid, []))
    return total, n


def run_one(src: Path, dst: Path, workers: int, cli: bool, extra: list[str]) -> dict:
    args = [str(src), str(dst), "--size", "64", "--format", "both", "--workers", str(workers), "-q", *extra]
    if cli:
        cmd = [sys.executable, "-m", "resize_pipeline.cli", "convert", *args]
    else:  # the library entry point (the CLI's parser also imports torch for the `train` command)
        cmd = [
            sys.executable,
            "-c",
            "import sys; from resize_pipeline.commands.convert import config_from_args, add_parser; "
            "import argparse; p = argparse.ArgumentParser(); s = p.add_subparsers(); add_parser(s); "
            "a = p.parse_args(['convert'] + sys.argv[1:]); from resize_pipeline import convert; "
            "print(convert(config_from_args(a)).line())",
            *args,
        ]
    env = dict(os.environ, PYTHONPATH=str(REPO), TQDM_DISABLE="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak_tree, peak_procs, samples, hwm = 0, 0, [], {}
    while proc.poll() is None:
        rss, n = tree_rss_kb(proc.pid, hwm)
        peak_tree, peak_procs = max(peak_tree, rss), max(peak_procs, n)
        samples.append(rss)
        time.sleep(0.02)
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"conversion failed ({proc.returncode}):\n{err.decode()[-2000:]}")
    manifest = json.loads((dst / "_manifest.json").read_text())
    # steady state: median tree RSS over the second half of the run
    steady = float(np.median(samples[len(samples) // 2 :])) if samples else 0.0
    return {
        "images": manifest["counts"]["total"],
        "written": manifest["counts"]["written"],
        "seconds": round(seconds, 1),
        "img_per_s": round(manifest["counts"]["total"] / seconds, 1),
        "peak_tree_mb": round(peak_tree / 1024, 1),
        "steady_tree_mb": round(steady / 1024, 1),
        "max_single_process_mb": round(max(hwm.values(), default=0) / 1024, 1),
        "sum_of_process_peaks_mb": round(sum(hwm.values()) / 1024, 1),
        "processes": peak_procs,
        "job_process_peak_mb": round(hwm.get(proc.pid, 0) / 1024, 1),
        "max_worker_peak_mb": round(max((v for k, v in hwm.items() if k != proc.pid), default=0) / 1024, 1),
        "shards": len(manifest["shard_stats"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--samples-per-shard", type=int, default=500)
    ap.add_argument("--cli", action="store_true", help="run `python -m resize_pipeline.cli convert` instead")
    ap.add_argument("--workdir", help="where to write datasets and outputs (default: a temp dir, removed)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_memory_"))
    rows = []
    try:
        for n in args.sizes:
            src, dst = work / f"src_{n}", work / f"out_{n}"
            t = time.perf_counter()
            if not src.exists():
                make_dataset(src, n)
            gen = time.perf_counter() - t
            shutil.rmtree(dst, ignore_errors=True)
            r = run_one(
                src, dst, args.workers, args.cli, ["--samples-per-shard", str(args.samples_per_shard)]
            )
            r["generate_s"] = round(gen, 1)
            rows.append(r)
            print(json.dumps(r), flush=True)
            shutil.rmtree(dst, ignore_errors=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    cols = [
        "images",
        "shards",
        "seconds",
        "img_per_s",
        "peak_tree_mb",
        "steady_tree_mb",
        "max_single_process_mb",
        "sum_of_process_peaks_mb",
        "job_process_peak_mb",
        "max_worker_peak_mb",
        "processes",
    ]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    if len(rows) >= 2:
        print(
            f"\npeak tree RSS ratio {rows[-1]['images']} vs {rows[0]['images']} images: "
            f"{rows[-1]['peak_tree_mb'] / rows[0]['peak_tree_mb']:.2f}x"
        )


if __name__ == "__main__":
    main()
