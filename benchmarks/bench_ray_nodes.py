"""Ray over several nodes: throughput with 1, 2 and 3 actor nodes on a local `ray.cluster_utils.Cluster`
(a head with no CPU for actors, and three worker nodes of one CPU each: each node limited to its
share). On a 2-core machine the nodes cannot add CPU, so the images go through a stage that sleeps
instead of using it (`sleep_stage.py`: ``--sleep`` seconds per image before the real read, decode
and encode of small images): what scales is Ray's scheduling of the shard tasks, the actors, the
listing parts and the commits, which is what this measures. One actor per node (``--workers k``, one
CPU each: Ray Data spreads them over the nodes).

    python benchmarks/bench_ray_nodes.py [--num 480] [--sleep 0.05] [--samples-per-shard 12]

For each node count: end-to-end img/s of `convert` (listing, actor start-up included), and the
steady rate (images committed after the first shard / time from the first to the last commit);
scaling = steady(k) / (k x steady(1)), target >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=480)
    ap.add_argument("--sleep", type=float, default=0.05, help="seconds per image the sleeping stage waits")
    ap.add_argument("--samples-per-shard", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    sys.path[:0] = [str(REPO), str(HERE)]
    os.environ["RESIZE_PIPELINE_BENCH_SLEEP"] = str(args.sleep)
    import ray
    from bench_ray import commit_rate
    from ray.cluster_utils import Cluster

    from resize_pipeline import convert
    from resize_pipeline.config import ConvertConfig
    from resize_pipeline.sample_data import make_sample_dataset

    tmp = tempfile.mkdtemp(prefix="bench_nodes_")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for i in range(3):
            cluster.add_node(num_cpus=1, resources={f"node_{i}": 1})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, runtime_env={
            "worker_process_setup_hook": "sleep_stage.install",
            "env_vars": {"PYTHONPATH": os.pathsep.join([str(HERE), str(REPO)]),
                         "RESIZE_PIPELINE_BENCH_SLEEP": str(args.sleep)}})
        ray.data.DataContext.get_current().enable_progress_bars = False
        src = os.path.join(tmp, "in")
        make_sample_dataset(src, args.num, seed=0)
        print(json.dumps({"machine": f"{os.cpu_count()} CPUs", "load": os.getloadavg(), "num": args.num,
                          "sleep_s_per_image": args.sleep, "samples_per_shard": args.samples_per_shard}), flush=True)

        def run(k: int, name: str) -> tuple[float, float]:
            dest = os.path.join(tmp, name)
            shutil.rmtree(dest, ignore_errors=True)
            cfg = ConvertConfig(source=src, dest=dest, size=64, samples_per_shard=args.samples_per_shard,
                                engine="ray", workers=k, ray_cpus_per_actor=1.0, batch_size=4, quiet=True)
            t0 = time.perf_counter()
            s = convert(cfg)
            return s.total / (time.perf_counter() - t0), commit_rate(dest)

        run(3, "warm")  # Ray's worker processes on every node
        rows = []
        for k in (1, 2, 3):
            runs = [run(k, f"k{k}") for _ in range(args.repeats)]
            e2e, steady = max(r[0] for r in runs), max(r[1] for r in runs)
            rows.append((k, e2e, steady))
            print(json.dumps({"nodes": k, "end_to_end_img_s": round(e2e, 1), "steady_img_s": round(steady, 1),
                              "load": os.getloadavg()[0]}), flush=True)
        one = rows[0][2]
        print("\n| actor nodes | end-to-end img/s | steady img/s | steady / (k x 1 node) |")
        print("| ---: | ---: | ---: | ---: |")
        for k, e2e, steady in rows:
            print(f"| {k} | {e2e:.1f} | {steady:.1f} | {steady / (k * one):.2f} |")
        print(f"\nideal per node: {1 / args.sleep:.1f} img/s (the sleep alone); load after: {os.getloadavg()}")
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
