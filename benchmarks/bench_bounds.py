"""Peak memory of one worker on hostile inputs, side by side with a baseline checkout (issue 20).

    python benchmarks/bench_bounds.py --baseline /path/to/older/checkout [--work /tmp/bounds]

Cases (each a fresh ``resize-pipeline convert`` process, ``--workers 1``: the driver and its one
in-process worker, so the peak RSS is an upper bound of a worker's):

- ``8png``: 8 PNGs of 8000x8000 (about 200 KB each on disk, 64 Mpx each decoded) at batch 64, batch
  1, and batch 64 with ``--overlap`` (each step in its own thread);
- ``sparse``: a 16 GiB sparse ``.jpg`` (no disk blocks) beside 3 small JPEGs;
- ``devzero``: a manifest row pointing at ``/dev/zero`` beside 3 small JPEGs (run with ``--read-timeout
  5`` and a 4 GiB address-space limit, so the baseline cannot take the machine down).

For each: peak RSS (the process's ``VmHWM``), wall seconds, exit status, written/failed counts and, for the PNG
case, whether the shards are byte-identical to the baseline's. Prints a table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parents[1]


def make_inputs(work: Path) -> dict[str, Path]:
    pngs = work / "png8000"
    if not pngs.exists():
        pngs.mkdir(parents=True)
        w = h = 8000
        row = np.linspace(0, 255, w).astype(np.uint8)
        img = np.empty((h, w, 3), np.uint8)
        img[:, :, 0], img[:, :, 1], img[:, :, 2] = row, row[::-1], 128
        for i in range(8):
            img[:10, :10, 2] = i * 20
            Image.fromarray(img).save(pngs / f"big{i}.png")
    small = work / "small"
    if not small.exists():
        small.mkdir()
        rng = np.random.default_rng(0)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(small / f"s{i}.jpg")
    sparse = work / "sparse"
    if not sparse.exists():
        sparse.mkdir()
        for p in small.iterdir():
            (sparse / p.name).write_bytes(p.read_bytes())
        with open(sparse / "huge.jpg", "wb") as fh:
            fh.truncate(16 << 30)
    manifest = work / "devzero.csv"
    manifest.write_text("path\n" + "".join(f"{p}\n" for p in sorted(small.iterdir())) + "/dev/zero\n")
    return {"8png": pngs, "sparse": sparse, "devzero": manifest}


#: runs the CLI, then prints the process's peak RSS (VmHWM: this process image only)
PEAK = ("import sys; from resize_pipeline.cli import main; rc = main(sys.argv[1:]); "
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0], file=sys.stderr); "
        "sys.exit(rc)")


def run(code: Path, source: Path, dest: Path, args: list[str], limit_as: int | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", PEAK, "convert", str(source), str(dest), "-q", "--workers", "1",
           "--size", "224", *args]

    def limit() -> None:
        if limit_as:
            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))

    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, cwd=code, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         preexec_fn=limit)
    _, status, usage = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - t0
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    hwm = [line.split()[1] for line in err.splitlines() if line.startswith("VmHWM")]
    peak = int(hwm[-1]) / 1024 if hwm else usage.ru_maxrss / 1024
    out = {"rc": os.waitstatus_to_exitcode(status), "peak_mib": peak, "seconds": seconds}
    m = dest / "_manifest.json"
    if m.exists():
        c = json.loads(m.read_text())["counts"]
        out["written"], out["failed"] = c["written"], c["failed"]
        errors = [json.loads(x) for x in (dest / "_errors.jsonl").read_text().splitlines()]
        out["errors"] = sorted({f"{e['stage']}:{e['error_type']}" for e in errors})
    else:
        out["error"] = (err.strip().splitlines() or [""])[-1][:120]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, type=Path, help="checkout to compare with (e.g. a git worktree of main)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_bounds"))
    ns = ap.parse_args()
    ns.work.mkdir(parents=True, exist_ok=True)
    inputs = make_inputs(ns.work)
    cases = [
        ("8png batch 64", "8png", ["--batch-size", "64"], None),
        ("8png batch 1", "8png", ["--batch-size", "1"], None),
        ("8png batch 64 --overlap", "8png", ["--batch-size", "64", "--overlap"], None),
        ("16 GiB sparse .jpg", "sparse", ["--read-timeout", "20"], 6 << 30),
        ("/dev/zero row", "devzero", ["--read-timeout", "5"], 4 << 30),
    ]
    rows = []
    for label, key, args, limit_as in cases:
        got = {}
        for name, code in (("baseline", ns.baseline), ("this", HERE)):
            dest = ns.work / "out" / f"{name}-{label.replace(' ', '_').replace('/', '')}"
            subprocess.run(["rm", "-rf", str(dest)], check=True)
            got[name] = run(code, inputs[key], dest, args, limit_as)
            got[name]["dest"] = dest
        same = ""
        if key == "8png":
            a = {p.name: p.read_bytes() for p in got["baseline"]["dest"].glob("*.tar")}
            b = {p.name: p.read_bytes() for p in got["this"]["dest"].glob("*.tar")}
            same = "yes" if a and a == b else "NO"
        rows.append((label, got["baseline"], got["this"], same))
    print(f"{'case':<26} {'baseline peak':>14} {'this peak':>10} {'baseline s':>11} {'this s':>7}  same bytes  outcome (baseline | this)")
    for label, a, b, same in rows:
        def outcome(r: dict) -> str:
            if "written" in r:
                return f"rc {r['rc']}, {r['written']} written, {r['failed']} failed {','.join(r['errors'])}"
            return f"rc {r['rc']}: {r.get('error', '')}"
        print(f"{label:<26} {a['peak_mib']:>10.0f} MiB {b['peak_mib']:>6.0f} MiB {a['seconds']:>10.1f} "
              f"{b['seconds']:>7.1f}  {same:<10}  {outcome(a)} | {outcome(b)}")


if __name__ == "__main__":
    main()
