"""What a nightly ``--update`` costs next to the full conversion, in one run (docs/benchmarks.md).

    python benchmarks/bench_update.py                   # 20k ImageNet-sized inputs on local disk, -> 224
    python benchmarks/bench_update.py --s3              # the same with SOURCE and DEST on moto S3 (ETags)
    python benchmarks/bench_update.py --corpus small --size 128   # 320x240 inputs: start-up costs dominate

Phases, each the whole ``resize-pipeline convert`` process (start-up, listing, stamps, diff included):

1. full: ``convert SRC DEST --update`` on an empty DEST (generation 1, every input);
2. +10 %: as many new inputs again as ``--new`` says land in SOURCE, then the same command
   (generation 2: lists everything, converts the new ones);
3. nothing new: the same command once more: it must write nothing (checked on DEST's files).

Printed per phase: wall and CPU seconds, peak memory of the process tree's largest process, inputs
converted per second, and the ratio of its wall time to the full run's (targets: <= 0.15 and <= 0.05).
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

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
#: distinct pictures the inputs are copies of (decoding cost is that of real photos' size and entropy)
BASES = 200
_BASES: dict[str, list[bytes]] = {}


def _imagenet_bases() -> list[bytes]:
    """ImageNet-like JPEGs (`bench_convert.make_corpus`: real photos, 500..1024 px wide, q90)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_convert import make_corpus

    with tempfile.TemporaryDirectory() as d:
        return [Path(p).read_bytes() for p in make_corpus(d, BASES)]


def make_inputs(folder: Path, start: int, n: int, seed: int = 0, corpus: str = "small") -> None:
    """`n` JPEGs named ``{class}/{i:06d}.jpg`` in 10 class folders: copies of `BASES` distinct pictures,
    ImageNet-sized (``imagenet``) or 320x240 (``small``)."""
    if corpus not in _BASES:
        _BASES[corpus] = _imagenet_bases() if corpus == "imagenet" else _small_bases(seed)
    bases = _BASES[corpus]
    for i in range(start, start + n):
        p = folder / f"class{i % 10}" / f"{i:06d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(bases[i % BASES])


def _small_bases(seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    bases = []
    for b in range(BASES):
        y, x = np.mgrid[0:240, 0:320].astype(np.float32)
        f = rng.uniform(0.01, 0.08, 3)
        img = np.stack([127 + 120 * np.sin(x * f[0] + b), 127 + 120 * np.sin(y * f[1] + 2 * b),
                        127 + 120 * np.sin((x + y) * f[2])], -1)
        img += rng.normal(0, 12, img.shape)
        import io

        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=85)
        bases.append(buf.getvalue())
    return bases


def timed(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run `cmd` to completion: wall s, CPU s (it and the processes it waited for), peak RSS MiB."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()  # type: ignore[union-attr]
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_mib": ru.ru_maxrss / 1024, "line": out.strip()}


class Local:
    def __init__(self, tmp: Path, corpus: str) -> None:
        self.tmp, self.corpus = tmp, corpus
        self.src, self.dest = tmp / "src", str(tmp / "dest")
        self.config: list[str] = []

    def add(self, start: int, n: int) -> None:
        make_inputs(self.src, start, n, corpus=self.corpus)

    def snapshot(self) -> dict[str, tuple[int, int]]:
        root = Path(self.dest)
        return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
                for p in root.rglob("*") if p.is_file()}

    def source(self) -> str:
        return str(self.src)

    def manifest(self) -> dict:
        return json.loads((Path(self.dest) / "_manifest.json").read_text())


class S3(Local):
    """SOURCE and DEST in a bucket of a moto server on 127.0.0.1 (changes seen through ETags)."""

    def __init__(self, tmp: Path, corpus: str) -> None:
        super().__init__(tmp, corpus)
        from moto.server import ThreadedMotoServer

        os.environ.update(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1",
                          AWS_EC2_METADATA_DISABLED="true")
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        import logging

        import s3fs

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x",
                     aws_secret_access_key="x").create_bucket(Bucket="bench")
        self.fs = s3fs.S3FileSystem(key="x", secret="x", client_kwargs={"endpoint_url": endpoint,
                                                                         "region_name": "us-east-1"})
        self.dest = "s3://bench/dest"
        cfg = tmp / "s3.toml"
        cfg.write_text("[storage_options]\nkey = 'x'\nsecret = 'x'\n[storage_options.client_kwargs]\n"
                       f"endpoint_url = '{endpoint}'\nregion_name = 'us-east-1'\n")
        self.config = ["--config", str(cfg)]

    def add(self, start: int, n: int) -> None:
        staging = self.tmp / f"staging-{start}"
        make_inputs(staging, start, n, corpus=self.corpus)
        from concurrent.futures import ThreadPoolExecutor

        files = [p for p in staging.rglob("*.jpg")]

        def put(p: Path) -> None:
            self.fs.pipe_file(f"bench/src/{p.relative_to(staging).as_posix()}", p.read_bytes())

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, files))
        shutil.rmtree(staging)

    def source(self) -> str:
        return "s3://bench/src"

    def snapshot(self) -> dict[str, tuple[int, int]]:
        self.fs.invalidate_cache()
        return {p: (info["size"], str(info.get("LastModified"))) for p, info in
                self.fs.find("bench/dest", detail=True).items()}  # type: ignore[misc]

    def manifest(self) -> dict:
        self.fs.invalidate_cache()
        return json.loads(self.fs.cat_file("bench/dest/_manifest.json"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=20_000)
    ap.add_argument("--new", type=float, default=0.10, help="share of new inputs before the update")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", default="224")
    ap.add_argument("--corpus", choices=("imagenet", "small"), default="imagenet")
    ap.add_argument("--s3", action="store_true")
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO), TQDM_DISABLE="1")
    with tempfile.TemporaryDirectory() as d:
        store = S3(Path(d), args.corpus) if args.s3 else Local(Path(d), args.corpus)
        store.add(0, args.inputs)

        def convert() -> dict[str, float]:
            return timed([sys.executable, "-m", "resize_pipeline.cli", "convert", store.source(), store.dest,
                          "--size", args.size, "--format", "webdataset", "--workers", str(args.workers),
                          "--update", *store.config], env)

        rows = [("full conversion (generation 1)", args.inputs, convert())]
        extra = int(args.inputs * args.new)
        store.add(args.inputs, extra)
        rows.append((f"+{args.new:.0%} new, --update (generation 2)", extra, convert()))
        before = store.snapshot()
        rows.append(("nothing new, --update", 0, convert()))
        unchanged = store.snapshot() == before
        m = store.manifest()
    full = rows[0][2]["wall_s"]
    where = "moto S3 (ETags)" if args.s3 else "local disk"
    print(f"{args.inputs} {args.corpus} inputs on {where}, --size {args.size}, {args.workers} workers, "
          f"load {tuple(round(x, 1) for x in os.getloadavg())}")
    print(f"{'phase':<40} {'converted':>9} {'wall s':>8} {'cpu s':>8} {'peak MiB':>9} {'img/s':>8} {'/ full':>7}")
    for name, n, r in rows:
        print(f"{name:<40} {n:>9} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} {r['peak_mib']:>9.0f} "
              f"{(n / r['wall_s'] if n else 0):>8.0f} {r['wall_s'] / full:>7.3f}")
    print(f"generations: {[g['generation'] for g in m['generations']]}; the last update wrote nothing: {unchanged}")
    for _, _, r in rows:
        print("  ", r["line"])


if __name__ == "__main__":
    main()
