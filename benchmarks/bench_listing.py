"""Listing and planning at scale (issue 12, finding 9): time vs rows, and peak memory of a 10M-row plan.

Three measurements, each in a fresh subprocess (so that peak RSS is the job's own, read with
``wait4``'s ``ru_maxrss``):

- ``repeated``: a CSV manifest whose N rows all name the same file (the case that was quadratic:
  2k rows took 4.8 s, 8k 73 s, 100k never finished) -> seconds to list;
- ``distinct``: N rows naming distinct files in folders of 1000 -> seconds to list;
- ``dryrun``: ``resize-pipeline convert MANIFEST DEST --dry-run`` on an N-row manifest: list (keys,
  digests, stamps), plan the shards, check DEST; peak RSS of the whole process.

    python benchmarks/bench_listing.py                       # repeated 2k/4k/8k/100k, distinct 100k/1M
    python benchmarks/bench_listing.py --dryrun 10000000     # the 10M-row plan (writes a ~0.4 GB CSV)
    python benchmarks/bench_listing.py --old /path/to/old/checkout --repeated 2000 4000

`--old` lists with another checkout of the package (e.g. release 0.1.0) for comparison. Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_LIST = """
import json, sys, time
from resize_pipeline.sources import list_source
t = time.perf_counter()
listing = list_source(sys.argv[1])
n = len(listing.items)
listed = time.perf_counter() - t
from resize_pipeline.shards import plan_shards
tasks = plan_shards(listing.items, 1000)
print(json.dumps({"rows": n, "seconds": listed, "plan_seconds": time.perf_counter() - t - listed,
                  "shards": len(tasks)}))
"""


def write_manifest(path: Path, rows: int, same: bool) -> None:
    with open(path, "w") as fh:
        fh.write("path,label\n")
        chunk = 100_000
        for a in range(0, rows, chunk):
            b = min(rows, a + chunk)
            if same:
                fh.write("imgs/same.jpg,1\n" * (b - a))
            else:
                fh.write("".join(f"train/c{i // 1000:05d}/img_{i:08d}.jpg,{i % 1000}\n" for i in range(a, b)))


def measured(argv: list[str], repo: Path) -> tuple[str, float, float]:
    env = dict(os.environ, PYTHONPATH=str(repo), TQDM_DISABLE="1")
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        pid = os.posix_spawn(argv[0], argv, env, file_actions=[(os.POSIX_SPAWN_DUP2, out.fileno(), 1),
                                                               (os.POSIX_SPAWN_DUP2, err.fileno(), 2)])
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{argv} failed: {err.read()[-2000:]}")
        return out.read(), wall, usage.ru_maxrss / 1024


def list_rows(tmp: Path, rows: int, same: bool, repo: Path, repeats: int) -> dict:
    man = tmp / f"m-{rows}-{int(same)}.csv"
    if not man.exists():
        write_manifest(man, rows, same)
    runs = []
    for _ in range(repeats):
        out, _, rss = measured([sys.executable, "-P", "-c", _LIST, str(man)], repo)  # -P: not the cwd's code
        runs.append(dict(json.loads(out), rss_mib=rss))
    return {"rows": rows, "same_path": same, "list_seconds_median": statistics.median(r["seconds"] for r in runs),
            "list_seconds": [round(r["seconds"], 3) for r in runs], "plan_seconds": runs[0]["plan_seconds"],
            "peak_rss_mib": max(r["rss_mib"] for r in runs), "repo": str(repo)}


def dry_run(tmp: Path, rows: int, repo: Path) -> dict:
    man = tmp / f"m-{rows}-0.csv"
    if not man.exists():
        t = time.perf_counter()
        write_manifest(man, rows, same=False)
        print(f"wrote {man} ({man.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.0f} s", flush=True)
    argv = [sys.executable, "-P", "-m", "resize_pipeline.cli", "convert", str(man), str(tmp / "dest"), "--dry-run"]
    out, wall, rss = measured(argv, repo)
    return {"rows": rows, "dry_run_seconds": round(wall, 1), "peak_rss_mib": round(rss), "output": out.strip(),
            "manifest_mib": round(man.stat().st_size / 2**20)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeated", type=int, nargs="*", default=[2000, 4000, 8000, 100_000])
    ap.add_argument("--distinct", type=int, nargs="*", default=[100_000, 1_000_000])
    ap.add_argument("--dryrun", type=int, nargs="*", default=[])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--old", type=Path, help="another checkout to list with (for comparison)")
    ap.add_argument("--tmp", type=Path, help="where the manifests go (default: a temporary folder)")
    args = ap.parse_args()
    repo = args.old or REPO
    with tempfile.TemporaryDirectory(dir=args.tmp) as d:
        tmp = Path(d)
        for n in args.repeated:
            print(json.dumps(list_rows(tmp, n, True, repo, args.repeats)), flush=True)
        for n in args.distinct:
            print(json.dumps(list_rows(tmp, n, False, repo, args.repeats)), flush=True)
        for n in args.dryrun:
            print(json.dumps(dry_run(tmp, n, repo)), flush=True)


if __name__ == "__main__":
    main()
