"""Peak memory and time per step of `resize-pipeline train` on a CPU, side by side in one run.

    python benchmarks/bench_train_memory.py [--size 224] [--steps 3] [--images 100] [--threads 2]
                                            [--baseline SRC] [--out DIR]

Makes a photo folder (``--images`` JPEGs of 300-800 px, crops of scikit-image's photos, two classes),
then runs ``train --data FOLDER --size S --max-steps N --device cpu`` as a subprocess per
configuration and reports each one's peak resident memory (``wait4``'s ``ru_maxrss``: the training
process; DataLoader workers are off) and wall time:

- ``default batch``: this checkout's defaults (16 on a CPU at --size >= 128);
- ``--batch-size 64``: this checkout at the old default batch;
- ``baseline`` (with ``--baseline SRC``): another source tree (e.g. ``git worktree add /tmp/base
  29eaabe``) with its own defaults. Release 0.1.0's crop crashed on some image sizes (issue 16,
  finding 1), so the folder's sizes are chosen where its float box stayed inside the image.

The s/step column is what ``train`` itself measured (its cost line) where it prints one.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_folder(root: Path, n: int, size: int) -> None:
    import numpy as np
    import skimage.data as skdata
    from PIL import Image

    rng = np.random.default_rng(0)
    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    side = size * 2  # the resizer's input at --input-scale 2

    def old_box_ok(w: int, h: int) -> bool:
        c = side / (side / min(w, h))
        return (w - c) / 2 >= 0 and (h - c) / 2 >= 0

    for i in range(n):
        p = photos[i % len(photos)]
        h, w = p.shape[:2]
        ch, cw = int(rng.integers(h // 2, h)), int(rng.integers(w // 2, w))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        tw, th = int(rng.integers(300, 800)), int(rng.integers(300, 800))
        while not old_box_ok(tw, th):
            th, tw = (th + 1, tw) if th <= tw else (th, tw + 1)
        out = root / f"class{i % 2}" / f"img_{i:04d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(p[y : y + ch, x : x + cw]).resize((tw, th)).save(out, quality=90)


def run(src: Path, args: list[str], threads: int) -> tuple[float, float, str, int]:
    """(peak RSS GiB, wall s, the cost line or "", return code) of one ``train`` subprocess."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "resize_pipeline.cli", "train", *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=src)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out = (proc.stdout.read() if proc.stdout else "") + (proc.stderr.read() if proc.stderr else "")
    proc.returncode = os.waitstatus_to_exitcode(status)
    cost = next((ln for ln in out.splitlines() if "s/step" in ln), "")
    if proc.returncode:
        print(out[-2000:], file=sys.stderr)
    return usage.ru_maxrss / 2**20, wall, cost, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baseline", type=Path, default=None, help="another source tree, run with its defaults")
    ap.add_argument("--out", type=Path, default=None, help="where the photo folder goes (default: a temp dir)")
    a = ap.parse_args()
    tmp = a.out or Path(tempfile.mkdtemp(prefix="bench_train_"))
    folder = tmp / "photos"
    if not folder.exists():
        make_folder(folder, a.images, a.size)
    common = ["--data", str(folder), "--size", str(a.size), "--max-steps", str(a.steps), "--device", "cpu",
              "--threads", str(a.threads), "--no-progress"]
    configs = [("this code, default batch", REPO, []), ("this code, --batch-size 64", REPO, ["--batch-size", "64"])]
    if a.baseline:
        configs.append((f"baseline {a.baseline} (its defaults)", a.baseline, []))
    print(f"train --size {a.size}, {a.steps} steps, {a.images} photos, {a.threads} threads, CPU; "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    print(f"{'configuration':<48} {'peak RSS':>9} {'wall':>7}  s/step (train's own measure)")
    for name, src, extra in configs:
        rss, wall, cost, rc = run(src, common + extra, a.threads)
        per = re.search(r"([\d.]+) s/step", cost)
        status = "" if rc == 0 else f"  (exit {rc})"
        print(f"{name:<48} {rss:6.2f} GiB {wall:6.0f} s  {per.group(1) if per else '-'}{status}", flush=True)


if __name__ == "__main__":
    main()
