"""Planning at scale (issue 18): the driver's peak memory and the time until the first shard starts,
for manifests of 10M and 100M rows (Parquet and CSV), beside another checkout (today's release).

Each measurement runs in a fresh process (peak RSS: the process's own ``VmHWM``, read by the process
itself at its end; a local in-process engine whose `ShardRunner` is replaced, from this script, by a
stand-in that takes each task and reports it converted without reading anything: what is measured
is the driver's listing, planning and scheduling, not image work):

- ``dryrun``: ``convert MANIFEST DEST --dry-run`` (every row read, keys, plan);
- ``run``: ``convert MANIFEST DEST`` with the stand-in runner: seconds until the first shard task
  reaches a worker, seconds until the job ends, peak RSS of the whole job's one process.

Also printed: the bytes of a Ray task row and of a pickled shard task (a descriptor), whatever the
shard size, and the 1B-row driver peak extrapolated from the measured slope.

    python benchmarks/bench_plan.py --rows 10000000 --formats parquet csv --base /tmp/base  # ~15 min
    python benchmarks/bench_plan.py --rows 100000000 --formats csv --modes run --base /tmp/base
    python benchmarks/bench_plan.py --rows --manifest /data/m100000000.parquet --modes run  # an existing one

The manifests (``path,label``: ``/mnt/datasets/<set>/<folder>/<name>.jpg``, ~60-character paths,
1000 files per folder; ``--caption`` adds a 60-character caption column) are written to ``--work``
and deleted at the end (100M rows: ~7.5 GB of CSV); ``--manifest`` measures existing ones (kept). Each
result also gives ``rows_per_s``: the rows listed per second over the whole job (in ``run`` mode the
stand-in converts nothing, so that is the listing's own rate). Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A convert run in which the shard runner is a stand-in: the driver's own cost, measured.
_RUN = r"""
import json, os, sys, time, threading
t0 = float(sys.argv[3])
first = []
from resize_pipeline import runner
from resize_pipeline.shards import ShardResult

class StandIn:
    def __init__(self, config, resolved, placement=None, threads=1):
        self.built = {"decoder": {"name": "stand-in"}}
    def run(self, tasks, on_progress=None):
        cond = tasks._cond
        while True:
            with cond:
                while not tasks._items and not tasks._closed:
                    cond.wait(0.5)
                if not tasks._items:
                    return
                item = tasks._items.popleft()
            task = item[0] if isinstance(item, tuple) else item
            if not first:
                first.append(time.time() - t0)
            if on_progress:
                on_progress(task.size)
            yield ShardResult(task.index, task.name, task.size, task.size, 0, [], [], 0.0, self.built)

runner.ShardRunner = StandIn
from resize_pipeline.conversion import convert
from resize_pipeline.config import ConvertConfig
s = convert(ConvertConfig(source=sys.argv[1], dest=sys.argv[2], samples_per_shard=int(sys.argv[4]), workers=1,
                          quiet=True, dry_run=sys.argv[5] == "dryrun"))
hwm = int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) / 1024
import resize_pipeline
print(json.dumps({"total": s.total, "shards": s.shards, "first_shard_s": first[0] if first else None,
                  "seconds": time.time() - t0, "peak_rss_mib": hwm, "code_path": resize_pipeline.__file__}))
"""


def manifest_rows(path: Path) -> int:
    """Rows of an existing manifest (Parquet: its metadata; CSV: its lines but the header)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with open(path, "rb") as fh:
        return sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 24), b"")) - 1


def write_manifest(path: Path, rows: int, fmt: str, caption: bool) -> None:
    """~60-character absolute paths in folders of 1000, an integer label (and a 60-character caption)."""
    chunk = 1_000_000

    def lines(a: int, b: int) -> list[str]:
        return [f"/mnt/datasets/laion-subset/{i // 1000:06d}/img_{i:010d}.jpg" for i in range(a, b)]

    if fmt == "csv":
        with open(path, "w") as fh:
            fh.write("path,label" + (",caption" if caption else "") + "\n")
            for a in range(0, rows, chunk):
                b = min(rows, a + chunk)
                cap = [f",a caption of exactly sixty characters for the image {i:08d}" for i in range(a, b)] \
                    if caption else [""] * (b - a)
                fh.write("".join(f"{p},{i % 1000}{c}\n" for i, p, c in zip(range(a, b), lines(a, b), cap,
                                                                              strict=True)))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = ["path", "label"] + (["caption"] if caption else [])
    schema = pa.schema([("path", pa.string()), ("label", pa.int64())] + ([("caption", pa.string())] if caption else []))
    with pq.ParquetWriter(path, schema) as w:
        for a in range(0, rows, chunk):
            b = min(rows, a + chunk)
            data = {"path": lines(a, b), "label": [i % 1000 for i in range(a, b)]}
            if caption:
                data["caption"] = [f"a caption of exactly sixty characters for the image {i:08d}" for i in range(a, b)]
            w.write_table(pa.table({c: data[c] for c in cols}, schema=schema))


def measure(repo: Path, man: Path, dest: Path, per_shard: int, mode: str, timeout: float) -> dict:
    shutil.rmtree(dest, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(repo), TQDM_DISABLE="1")
    t0 = time.time()
    try:
        out = subprocess.run([sys.executable, "-P", "-c", _RUN, str(man), str(dest), str(t0), str(per_shard), mode],
                             env=env, capture_output=True, text=True, timeout=timeout, cwd=man.parent)
    except subprocess.TimeoutExpired:
        return {"error": f"not done after {timeout:.0f} s"}
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:300]}
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["rows_per_s"] = round(r["total"] / r["seconds"]) if r.get("seconds") else None
    return r


def task_sizes() -> dict:
    """Bytes of a Ray task row and of a pickled descriptor task, for shards of 10 and 100k inputs."""
    import pickle

    import pyarrow as pa

    sys.path.insert(0, str(REPO))
    from resize_pipeline.shards import ShardTask
    from resize_pipeline.sources.rows import PartRows
    from workers.actors import task_row

    out = {}
    for per in (10, 100_000):
        t = ShardTask(123456, "shard-123456", PartRows("s3://bucket/some/dest", {}, "part-012345.parquet"),
                      0, per)
        row = task_row(**t.descriptor())
        out[per] = {"ray_row_bytes": pa.Table.from_pylist([row]).nbytes, "pickled_task_bytes": len(pickle.dumps(t))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="*", default=[10_000_000])
    ap.add_argument("--manifest", type=Path, nargs="*", default=[], help="existing manifests to measure (kept)")
    ap.add_argument("--formats", nargs="+", default=["parquet", "csv"], choices=["parquet", "csv"])
    ap.add_argument("--modes", nargs="+", default=["dryrun", "run"], choices=["dryrun", "run"])
    ap.add_argument("--samples-per-shard", type=int, default=10_000)
    ap.add_argument("--base", type=Path, help="another checkout to measure beside this one (e.g. today's main)")
    ap.add_argument("--base-max-rows", type=int, default=10**12, help="skip the base above this many rows")
    ap.add_argument("--caption", action="store_true", help="add a 60-character caption column")
    ap.add_argument("--work", type=Path, default=None, help="folder for the manifests (deleted after)")
    ap.add_argument("--timeout", type=float, default=7200)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-plan-", dir=args.work))
    print(json.dumps({"task_sizes": task_sizes()}), flush=True)
    results = []
    jobs = [(rows, fmt, None) for rows in args.rows for fmt in args.formats]
    jobs += [(manifest_rows(m), m.suffix.lstrip("."), m) for m in args.manifest]
    try:
        for rows, fmt, given in jobs:
            man = given or work / f"m{rows}.{fmt}"
            if given is None:
                t = time.time()
                write_manifest(man, rows, fmt, args.caption)
                print(json.dumps({"manifest": str(man), "rows": rows, "bytes": man.stat().st_size,
                                  "write_s": round(time.time() - t, 1)}), flush=True)
            repos = [("now", REPO)] + ([("base", args.base)] if args.base and rows <= args.base_max_rows else [])
            for mode in args.modes:
                for name, repo in repos:
                    r = measure(repo, man, work / "dest", args.samples_per_shard, mode, args.timeout)
                    r.update(rows=rows, format=fmt, mode=mode, code=name, caption=args.caption,
                             load=os.getloadavg()[0])
                    results.append(r)
                    print(json.dumps(r), flush=True)
            if given is None:
                man.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    now = {(r["rows"], r["format"], r["mode"]): r for r in results if r["code"] == "now" and "peak_rss_mib" in r}
    for fmt in sorted({f for _, f, _ in jobs}):
        for mode in args.modes:
            pts = sorted((k[0], v["peak_rss_mib"]) for k, v in now.items() if k[1] == fmt and k[2] == mode)
            if len(pts) >= 2:
                (r0, m0), (r1, m1) = pts[0], pts[-1]
                slope = (m1 - m0) / (r1 - r0)
                print(json.dumps({"format": fmt, "mode": mode, "mib_per_million_rows": round(slope * 1e6, 2),
                                  "extrapolated_1b_mib": round(m1 + slope * (10**9 - r1))}))


if __name__ == "__main__":
    main()
