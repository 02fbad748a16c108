"""Random SIGKILLs: kill a conversion at a random moment, rerun it, check the output is byte-identical to
an undisturbed run and that nothing is left behind (docs/reliability.md quotes the result).

Each round: start ``resize-pipeline convert`` (1 or 2 workers, alternating), SIGKILL it after a random
delay (the job alone, or its whole process group), then rerun the same command to completion and
compare every file with the reference run (``_manifest.json`` without its timings). With ``--s3`` the
destination is a bucket on a local moto S3 server (nothing leaves 127.0.0.1).

With ``--update`` each round kills an *update*: DEST starts as generation 1 of SOURCE (converted with
``--update``), SOURCE then grows (new images, two changed, one deleted, a duplicate), and the killed
command is ``convert ... --update --on-change replace --prune-deleted --dedup sha256``; its rerun must
give the same generation 2 as an update that was never killed.

    python benchmarks/kill_campaign.py --rounds 20
    python benchmarks/kill_campaign.py --rounds 10 --s3
    python benchmarks/kill_campaign.py --rounds 20 --update [--s3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--size", "48", "--samples-per-shard", "5", "--format", "both", "--batch-size", "2", "-q"]


def make_source(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(n):
        w, h = (int(v) for v in rng.integers(64, 200, 2))
        y, x = np.mgrid[0:h, 0:w]
        img = np.stack([x * 255 // w, y * 255 // h, (x + y + i * 7) % 256], -1).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:05d}.jpg", quality=85)
    (folder / "broken.jpg").write_bytes(b"not an image")


def env_for(config: Path | None) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


UPDATE = ["--update", "--on-change", "replace", "--prune-deleted", "--dedup", "sha256"]


def cmd(src: str, dest: str, workers: int, config: Path | None, update: bool = False) -> list[str]:
    extra = ["--config", str(config)] if config else []
    return [sys.executable, "-m", "resize_pipeline.cli", "convert", src, dest, *ARGS, "--workers", str(workers), *extra,
            *(UPDATE if update else [])]


def grow_source(folder: Path, n: int) -> None:
    """What arrives between two nights: n/3 new images (one a copy of an old one), two changed, one gone."""
    rng = np.random.default_rng(1)
    for i in range(n, n + max(3, n // 3)):
        w, h = (int(v) for v in rng.integers(64, 200, 2))
        y, x = np.mgrid[0:h, 0:w]
        img = np.stack([y * 255 // h, x * 255 // w, (x * y + i) % 256], -1).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:05d}.jpg", quality=85)
    (folder / f"{n + 1000:05d}.jpg").write_bytes((folder / "00003.jpg").read_bytes())
    for i, seed in ((1, 7), (5, 8)):
        y, x = np.mgrid[0:90, 0:120]
        Image.fromarray(np.stack([x * 2 % 256, y * 2 % 256, (x + seed * 40) % 256], -1).astype(np.uint8)).save(
            folder / f"{i:05d}.jpg", quality=85)
        os.utime(folder / f"{i:05d}.jpg", ns=(1, 2 * 10**18 + i))
    (folder / "00002.jpg").unlink()


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def dest(self, name: str) -> str:
        return str(self.root / name)

    def files(self, name: str) -> dict[str, bytes]:
        base = self.root / name
        return {p.relative_to(base).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}

    def clear(self, name: str) -> None:
        shutil.rmtree(self.root / name, ignore_errors=True)

    def copy(self, a: str, b: str) -> None:
        shutil.copytree(self.root / a, self.root / b)


class S3Store:
    def __init__(self, tmp: Path) -> None:
        from moto.server import ThreadedMotoServer

        os.environ.update(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1",
                          AWS_EC2_METADATA_DISABLED="true")
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        import boto3
        import s3fs

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id="x",
                     aws_secret_access_key="x").create_bucket(Bucket="campaign")
        self.fs = s3fs.S3FileSystem(key="x", secret="x", client_kwargs={"endpoint_url": self.endpoint,
                                                                         "region_name": "us-east-1"})
        self.config = tmp / "s3.toml"
        self.config.write_text("[storage_options]\nkey = 'x'\nsecret = 'x'\n[storage_options.client_kwargs]\n"
                               f"endpoint_url = '{self.endpoint}'\nregion_name = 'us-east-1'\n")

    def dest(self, name: str) -> str:
        return f"s3://campaign/{name}"

    def files(self, name: str) -> dict[str, bytes]:
        self.fs.invalidate_cache()
        base = f"campaign/{name}/"
        return {p[len(base):]: self.fs.cat_file(p) for p in sorted(self.fs.find(base))}

    def clear(self, name: str) -> None:
        self.fs.invalidate_cache()
        if self.fs.exists(f"campaign/{name}"):
            self.fs.rm(f"campaign/{name}", recursive=True)

    def copy(self, a: str, b: str) -> None:
        for key, data in self.files(a).items():
            self.fs.pipe_file(f"campaign/{b}/{key}", data)
        self.fs.invalidate_cache()


def converted_nothing(files: dict[str, bytes]) -> bool:
    return "_manifest.json" in files and json.loads(files["_manifest.json"])["run"]["converted"] == 0


def comparable(files: dict[str, bytes], without_workers: bool) -> dict[str, bytes]:
    """The files as they must match: the manifest without its timings and DEST. A rerun that had
    nothing left to convert (killed after its last shard, before the manifest) has no workers to
    report in ``components`` (documented in docs/reliability.md): then both sides drop them."""
    out = dict(files)
    if "_manifest.json" in out:
        m = json.loads(out["_manifest.json"])
        m.pop("created", None)
        m.pop("run", None)
        for g in m.get("generations", []):  # each generation's time
            g.pop("created", None)
            g.pop("seconds", None)
        m.pop("config", None)  # holds DEST, which differs per round
        if without_workers:
            m["components"] = {k: v for k, v in m.get("components", {}).items() if k in ("requested", "resolved")}
        out["_manifest.json"] = json.dumps(m, sort_keys=True).encode()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--images", type=int, default=80)
    ap.add_argument("--s3", action="store_true")
    ap.add_argument("--update", action="store_true", help="kill updates (generation 2) instead of first runs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        src = tmp / "src"
        make_source(src, args.images)
        store = S3Store(tmp) if args.s3 else LocalStore(tmp)
        config = getattr(store, "config", None)
        refs = {}
        if args.update:  # generation 1, then SOURCE grows; the rounds start from a copy of generation 1
            r = subprocess.run(cmd(str(src), store.dest("base"), 1, config, True), env=env_for(config),
                               capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            grow_source(src, args.images)
        for workers in (1, 2):
            if args.update:
                store.copy("base", f"ref{workers}")
            t = time.perf_counter()
            r = subprocess.run(cmd(str(src), store.dest(f"ref{workers}"), workers, config, args.update),
                               env=env_for(config), capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            refs[workers] = (store.files(f"ref{workers}"), time.perf_counter() - t)
        survived, results = 0, []
        for i in range(args.rounds):
            workers = 1 + i % 2
            name = f"run{i}"
            ref, seconds = refs[workers]
            delay = rng.uniform(0.2, max(0.3, seconds * 0.9))
            group = rng.random() < 0.5
            if args.update:
                store.copy("base", name)
            proc = subprocess.Popen(cmd(str(src), store.dest(name), workers, config, args.update),
                                    env=env_for(config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
            time.sleep(delay)
            finished_first = proc.poll() is not None
            if not finished_first:
                os.killpg(proc.pid, signal.SIGKILL) if group else proc.send_signal(signal.SIGKILL)
            proc.wait()
            time.sleep(0.6)  # orphaned workers notice their parent is gone within 0.5 s
            r = subprocess.run(cmd(str(src), store.dest(name), workers, config, args.update), env=env_for(config),
                               capture_output=True, text=True)
            raw = store.files(name)
            nothing_left = converted_nothing(raw)
            got, ref = comparable(raw, nothing_left), comparable(ref, nothing_left)
            leftovers = [k for k in got if ".partial" in k or k.endswith("_lock.json")]
            ok = r.returncode == 0 and got == ref and not leftovers
            survived += ok
            results.append({"round": i, "workers": workers, "delay_s": round(delay, 2), "killed": not finished_first,
                            "group": group, "ok": ok, "rerun_rc": r.returncode, "rerun_converted_nothing": nothing_left,
                            "diff": sorted(set(got) ^ set(ref)) or [k for k in ref if got.get(k) != ref[k]][:3]})
            print(json.dumps(results[-1]), flush=True)
            store.clear(name)
        killed = sum(r["killed"] for r in results)
        print(json.dumps({"rounds": args.rounds, "killed_mid_run": killed, "byte_identical_after_rerun": survived,
                          "dest": "s3 (moto)" if args.s3 else "local", "update": args.update}))


if __name__ == "__main__":
    main()
