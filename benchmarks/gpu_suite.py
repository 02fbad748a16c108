"""The prepared GPU run (issue 10): GPU tests, the decoder's own rate, the whole conversion, the CNN alone.

    python benchmarks/gpu_suite.py --out "$OUT"          # on the GPU machine, DALI installed (<= 8 min)
    python benchmarks/gpu_suite.py --cpu --small --out /tmp/suite   # anywhere: DALI CPU, CPU CNN, small n

One process, in this order, each step guarded by a time budget (``--budget`` seconds; a step that no
longer fits is skipped and says so) and each failure caught (a traceback, the row marked failed, the
run goes on); ``gpu_suite.json`` is rewritten after every step, so a run cut short still returns what
it measured:

1. ``pytest -m gpu`` on the GPU test files (``--pytest-paths``): tolerance of the CUDA-graph CNN vs
   eager fp32, the GPU path vs the CPU path end to end, DALI mixed vs CPU. Log: ``pytest_gpu.log``.
2. **decode-only**: `DaliDecoder` (mixed: nvJPEG + GPU crop/resize into torch CUDA tensors; ``--cpu``:
   DALI CPU-only) over the corpus, at 224 (the classical output) and 448 (the learned resizer's
   input), with the runner's settings (threads, batch, ``hw_decoder_load``), header probes computed
   beforehand: the decoder's rate, the reference of every ratio. On the GPU also at 224 with
   ``jpeg_fancy_upsampling`` off (DALI's default; ours is on): if it is much faster, the hardware
   decoder is not taking its share with fancy upsampling on.
3. **convert**, classical (``bilinear`` -> DALI linear, fused) and ``learned`` (DALI 448 -> CNN fp16
   with a CUDA graph captured at start-up), through the local engine as ``convert`` runs it, with
   1, 2 and 4 worker processes sharing the GPU (``--procs``; 1 = one in-process worker): read
   threads with the header probe, DALI one run in flight, the CNN one batch behind on its own
   stream, one pinned copy per batch, OpenCV JPEG q95 in threads, tar shards on local disk. Steady
   rate from the first shard result of every worker to the last; start-up and end-to-end rate apart;
   peak device memory in use (``nvidia-smi``, all processes) and per process, next to the engine's
   estimate (`engine.local.estimate_worker_gpu_mib`); the shards' digest (the same for 1, 2 and 4
   processes: ``targets.same_bytes``) and how the samples went (``paths``: decoded by DALI/Pillow,
   CNN as CUDA graph or eager).
4. **CNN alone** (bundled resizer, 448 -> 224, batch ``--batch``, real pixels from DALI): eager fp32,
   eager fp16 channels_last (deterministic cuDNN, the product's), the same with ``cudnn.benchmark``
   (what determinism costs), fp16 + CUDA graphs (the product path), bf16 + CUDA graphs, fp16 +
   ``torch.compile`` + CUDA graphs; max/mean |difference| from eager fp32 in grey levels.
5. **encode**: nvImageCodec (``nvidia-nvimgcodec-cu13``, GPU nvJPEG) on the CNN's output batch, when
   importable; and the host path alone (read -> ready-made 224 arrays -> OpenCV encode -> tar) with
   all cores (`bench_host.py`'s pass-through runner), then `bench_host.py` pinned to 1, 2, 4, ...
   cores, OpenCV vs Pillow: the quiet-machine figure of the host path's scaling (1 -> 2 cores).

It prints one table (img/s, x decode-only, peak torch GPU memory, device memory in use incl. DALI's
pools) and the targets of the issue, and writes ``gpu_suite.json`` and ``pytest_gpu.log`` to ``--out``.

On the lent GPU machine (``../shared/device/README.md``: no network, no DALI; 15 minutes of device
time per session including start-up, a command <= 10 minutes, files back from $OUT <= 8), from the
repository root of the checkout the session sends:

1. Here: ``../shared/device/carry_wheels.sh`` (DALI + nvImageCodec wheels; ~270 MB in parts
   ``.carry1..N``, ignored by git). The suite needs nothing else there: OpenCV, scikit-image, pyarrow,
   safetensors, pytest are installed on that machine; the package runs from the tree (no install).
2. Device calls, back to back (the machine stays warm 30 s between calls):
   ``carry [".carry1"]``: ``mkdir -p /tmp/parts && cp .carry1/* /tmp/parts/`` ... up to N-1, then
   ``carry [".carryN"]``, ``timeout_s 570``:
   ``source .carryN/install_carried.sh .carryN && PYTHONUNBUFFERED=1 python3 benchmarks/gpu_suite.py --budget 360 --out $OUT``
3. ``give_back``. The reply's output_tail holds the table; ``gpu_suite.json`` and ``pytest_gpu.log``
   come back under files_at. Copy the table into docs/benchmarks.md ("GPU"), naming the card.
Budget (15 minutes of device time in all): start ~1-2 min, N-1 carrying calls (N = 5 for DALI alone)
~0.5 min each, the last call ~1 min of wheel install + the suite (corpus ~10 s, then ``--budget``
seconds of steps; a step that no longer fits is skipped, one that overruns prints its threads'
stacks) = ~12 min; there is no time for a second full run, so read the JSON even when rows failed.
"""

from __future__ import annotations

import argparse
import faulthandler
import io
import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from the tree, uninstalled
sys.path.insert(0, str(REPO / "benchmarks"))

GPU_TESTS = ("tests/learned/test_cuda_runner.py", "tests/learned/test_learned_inference.py",
             "tests/decode/test_dali.py", "tests/test_gpu_path.py", "tests/test_determinism.py")
log = logging.getLogger("gpu_suite")


# -- corpus ------------------------------------------------------------------------------------------
_PHOTOS: list[np.ndarray] = []


def _make_one(i: int) -> bytes:
    """An ImageNet-like JPEG: a crop of a real photo, 500..1024 px wide, quality 75..95."""
    from PIL import Image

    rng = np.random.default_rng([7, i])
    src = Image.fromarray(_PHOTOS[i % len(_PHOTOS)])
    sw, sh = src.size
    cw, ch = int(sw * rng.uniform(0.45, 1.0)), int(sh * rng.uniform(0.45, 1.0))
    left, top = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch + 1))
    w = int(rng.integers(500, 1025))
    h = int(np.clip(w * rng.uniform(0.6, 0.9), 375, 768))
    if rng.random() < 0.25:
        w, h = h, w
    buf = io.BytesIO()
    src.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.BICUBIC).save(
        buf, "JPEG", quality=int(rng.integers(75, 96)))
    return buf.getvalue()


def make_corpus(root: str, distinct: int, total: int, procs: int) -> list[bytes]:
    """`distinct` JPEGs under `root`, hard-linked up to `total` files (each a separate input). Forks
    before any CUDA or DALI state exists."""
    from resize_pipeline.sample_data import load_photos

    _PHOTOS[:] = list(load_photos().values())
    with mp.get_context("fork").Pool(procs) as pool:
        blobs = pool.map(_make_one, range(distinct), chunksize=8)
    os.makedirs(root, exist_ok=True)
    for i, b in enumerate(blobs):
        with open(os.path.join(root, f"{i:07d}.jpg"), "wb") as fh:
            fh.write(b)
    for i in range(distinct, total):
        os.link(os.path.join(root, f"{i % distinct:07d}.jpg"), os.path.join(root, f"{i:07d}.jpg"))
    return blobs


def steady_rate(stamps: list[float], counts: list[int], workers: int) -> float:
    """Images/s once all `workers` are running: the least-squares slope of cumulative images over
    completion time, from the `workers`-th shard result on (with one worker: from its first)."""
    cum = np.cumsum(counts, dtype=float)
    k = max(0, min(workers, len(stamps) - 1) - 1)
    t, c = np.asarray(stamps[k:]), cum[k:]
    if len(t) < 2 or t[-1] <= t[0]:
        return float(cum[-1] / max(1e-9, stamps[-1] - stamps[0])) if len(stamps) > 1 else 0.0
    return float(np.polyfit(t - t[0], c, 1)[0])


# -- the steps ---------------------------------------------------------------------------------------
class Suite:
    def __init__(self, args) -> None:
        self.args = args
        self.t0 = time.perf_counter()
        self.rows: list[dict] = []
        self.report: dict = {"rows": self.rows, "args": vars(args)}
        self.gpu = not args.cpu
        self.torch = None

    def left(self) -> float:
        return self.args.budget - (time.perf_counter() - self.t0)

    def save(self) -> None:
        if self.args.out:
            Path(self.args.out).mkdir(parents=True, exist_ok=True)
            Path(self.args.out, "gpu_suite.json").write_text(json.dumps(self.report, indent=1, default=str))

    def mem_reset(self) -> None:
        if self.gpu:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()

    def mem(self) -> dict:
        if not self.gpu:
            return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        free, total = self.torch.cuda.mem_get_info()
        return {"peak_gpu_mib": self.torch.cuda.max_memory_allocated() / 2**20,
                "device_used_mib": (total - free) / 2**20}

    def row(self, name: str, fn, *, needs: float = 10.0, kind: str = "") -> dict | None:
        """Run one measurement; `fn` returns a dict with at least ``img_s``."""
        entry: dict = {"row": name, "kind": kind}
        if self.left() < needs:
            entry["note"] = f"skipped: {self.left():.0f} s of the budget left, needs ~{needs:.0f}"
            print(f"-- {name}: {entry['note']}", flush=True)
            self.rows.append(entry)
            self.save()
            return None
        print(f"-- {name} ...", flush=True)
        t = time.perf_counter()
        # a step that hangs (a deadlock on first contact with the GPU) prints every thread's stack
        faulthandler.dump_traceback_later(max(30.0, self.left()), exit=False)
        try:
            self.mem_reset()
            entry.update(fn())
            entry.update(self.mem())
        except Exception as exc:  # noqa: BLE001 - report, keep measuring
            traceback.print_exc()
            entry["note"] = f"FAILED: {type(exc).__name__}: {str(exc)[:200]}"
        finally:
            faulthandler.cancel_dump_traceback_later()
        entry["step_s"] = time.perf_counter() - t
        print(f"   {json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in entry.items()})}",
              flush=True)
        self.rows.append(entry)
        self.save()
        return entry

    # 1 ---------------------------------------------------------------------------------------------
    def pytest(self) -> None:
        a = self.args
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rs",
               *(a.pytest_paths.split() if a.pytest_paths else GPU_TESTS)]
        t = time.perf_counter()
        try:
            out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=a.pytest_timeout,
                                 env=dict(os.environ, TQDM_DISABLE="1"))
            text, rc = out.stdout + out.stderr, out.returncode
        except subprocess.TimeoutExpired as exc:
            text, rc = f"{exc.stdout or ''}{exc.stderr or ''}\nTIMEOUT after {a.pytest_timeout} s", -1
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        summary = lines[-1] if lines else ""
        self.report["pytest"] = {"cmd": " ".join(cmd), "rc": rc, "summary": summary,
                                 "seconds": time.perf_counter() - t}
        if a.out:
            Path(a.out, "pytest_gpu.log").write_text(text)
        print(f"-- pytest -m gpu: rc {rc}: {summary}", flush=True)
        self.save()

    # 2 ---------------------------------------------------------------------------------------------
    def decode_only(self, blobs: list[bytes], out_side: int, fancy: bool = True) -> dict:
        from resize_pipeline.decode.dali import DaliDecoder
        from resize_pipeline.decode.probe import probe
        from resize_pipeline.geometry import ResizeOp, plan_resize

        a = self.args
        dec = DaliDecoder(device="mixed" if self.gpu else "cpu", num_threads=a.threads, batch_size=a.batch,
                          hw_decoder_load=a.hw_decoder_load, jpeg_fancy_upsampling=fancy, interp="linear")
        probes = [probe(b) for b in blobs]  # the read stage's job in the pipeline, not the decoder's

        def plan(w, h):
            op = plan_resize(w, h, (224, 224), "center-crop")
            return ResizeOp(op.box, (out_side, out_side))

        batches = [(blobs[i : i + a.batch], probes[i : i + a.batch]) for i in range(0, len(blobs), a.batch)]

        def one_pass(n_images: int) -> tuple[int, object]:
            done, inflight, last = 0, [], None
            while done < n_images:
                for b, p in batches:
                    inflight.append(dec.submit(b, plan, probes=p, gpu=self.gpu))
                    if len(inflight) > 2:
                        last = dec.finish(inflight.pop(0))
                    done += len(b)
                    if done >= n_images:
                        break
            while inflight:
                last = dec.finish(inflight.pop(0))
            if self.gpu:
                self.torch.cuda.synchronize()
            return done, last

        one_pass(min(len(blobs), 4 * a.batch))  # build + warm up
        best = 0.0
        for _ in range(a.repeats):
            t = time.perf_counter()
            done, last = one_pass(a.n)
            best = max(best, done / (time.perf_counter() - t))
        self._sample = last  # a decoded batch (real pixels) for the CNN rows
        return {"img_s": best, "n": a.n, "stats": dict(dec.stats), "decoder": dec.describe()}

    # 3 ---------------------------------------------------------------------------------------------
    def convert(self, src: str, resizer: str, workers: int = 1) -> dict:
        """The local engine (`engine.local.run_local`, what ``convert`` runs) on the GPU path: one
        in-process worker, or `workers` processes sharing the one GPU. Steady rate: `steady_rate` over
        the shard results once every worker has delivered one (the first results carry the start-up:
        pipelines, weights, graph capture, worker processes). Device memory in use (all processes) is
        sampled every 0.5 s (``nvidia-smi``): its peak over the row, minus what was in use before, per
        process, is what `engine.local.estimate_worker_gpu_mib` estimates. The shards' digest is
        recorded: rows with 1, 2 and 4 processes must write the same bytes."""
        import hashlib
        import shutil
        import threading

        from resize_pipeline.config import ConvertConfig
        from resize_pipeline.devices import gpu_memory_used_mib
        from resize_pipeline.engine.local import estimate_worker_gpu_mib, run_local
        from resize_pipeline.preflight import resolve
        from resize_pipeline.shards import plan_shards
        from resize_pipeline.sources import list_source

        a = self.args
        dst = tempfile.mkdtemp(prefix=f"suite_{resizer}_", dir=a.tmp)
        cfg = ConvertConfig(src, dst, size=224, mode="center-crop", resizer=resizer, decoder="dali",
                            device="cuda" if self.gpu else "cpu", batch_size=a.batch, encode="jpg", quality=95,
                            samples_per_shard=a.per_shard, workers=workers, hw_decoder_load=a.hw_decoder_load,
                            quiet=True, overwrite=True)
        resolved = resolve(cfg)
        tasks = plan_shards(list_source(src).items, a.per_shard)
        base = gpu_memory_used_mib(0) if self.gpu else None
        peak, stop = [base or 0], threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                used = gpu_memory_used_mib(0)
                if used is not None:
                    peak[0] = max(peak[0], used)

        sampler = threading.Thread(target=sample, daemon=True)
        if base is not None:
            sampler.start()
        t0 = time.perf_counter()
        stamps, results = [], []
        try:
            for r in run_local(cfg, resolved, tasks):
                stamps.append(time.perf_counter())
                results.append(r)
        finally:
            stop.set()
        failed = sum(r.failed for r in results)
        if failed:
            raise RuntimeError(f"{failed} samples failed: {next(r.errors[:1] for r in results if r.failed)}")
        digest = hashlib.sha256()
        for name in sorted(os.listdir(dst)):
            if name.endswith(".tar"):
                digest.update(name.encode() + Path(dst, name).read_bytes())
        shutil.rmtree(dst, ignore_errors=True)
        built = results[0].built or {}
        paths: dict[str, dict[str, int]] = {}
        for r in results:
            for col, counts in r.paths.items():
                for how, k in counts.items():
                    paths.setdefault(col, {})[how] = paths.setdefault(col, {}).get(how, 0) + k
        out = {"img_s": steady_rate(stamps, [r.written for r in results], workers),
               "n": sum(r.written for r in results), "workers": workers,
               "startup_s": stamps[0] - t0, "end_to_end_img_s": sum(r.written for r in results) / (stamps[-1] - t0),
               "resolved": resolved.output_dict(), "paths": paths, "tar_sha256": digest.hexdigest(),
               "estimated_gpu_mib_per_process": estimate_worker_gpu_mib(cfg, resolved)["total"],
               "built": {k: v for k, v in built.items() if k in ("decoder", "resizer", "encoder", "overlap")}}
        if base is not None:
            out.update(device_peak_mib=peak[0], device_mib_per_process=(peak[0] - base) / workers)
        return out

    # 4 ---------------------------------------------------------------------------------------------
    def cnn_input(self):
        torch = self.torch
        a = self.args
        x = getattr(self, "_sample", None)
        imgs = [t for t in (x or []) if not isinstance(t, Exception)]
        if imgs and self.gpu:
            batch = torch.stack(imgs)
        elif imgs:
            batch = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2)
        else:
            batch = torch.randint(0, 256, (4, 3, 448, 448), dtype=torch.uint8)
        reps = -(-a.cnn_batch // batch.shape[0])
        batch = batch.repeat(reps, 1, 1, 1)[: a.cnn_batch]
        return batch.to("cuda" if self.gpu else "cpu").contiguous(memory_format=torch.channels_last)

    def cnn(self, x, ref, *, precision: str, graphs: bool, compile: bool = False, benchmark: bool = False) -> dict:
        """The CNN alone. `graphs`: captured up front for 448 -> 224 (what the pipeline does in the
        fixed-size modes). `benchmark`: eager with cuDNN's timed algorithm choice instead of the
        runner's deterministic one (what determinism costs)."""
        from resize_pipeline.learned.inference import LearnedResizer

        torch = self.torch
        a = self.args
        r = LearnedResizer(device="cuda" if self.gpu else "cpu", batch_size=x.shape[0], precision=precision,
                           cuda_graphs=graphs, compile=compile, threads=a.threads if not self.gpu else None,
                           graph_shapes=[(224, 224)] if graphs else ())
        if benchmark:
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
        t = time.perf_counter()
        y = r.resize_tensor(x, (224, 224))
        first_s = time.perf_counter() - t
        for _ in range(2):
            r.resize_tensor(x, (224, 224))
        sync = torch.cuda.synchronize if self.gpu else (lambda: None)
        sync()
        done, t = 0, time.perf_counter()
        while time.perf_counter() - t < a.min_seconds or done == 0:
            r.resize_tensor(x, (224, 224))
            done += x.shape[0]
        sync()
        rate = done / (time.perf_counter() - t)
        y = r.resize_tensor(x, (224, 224)).clone()
        out = {"img_s": rate, "batch": int(x.shape[0]), "first_call_s": first_s}
        if ref is not None:
            d = (y.int() - ref.int()).abs()
            out.update(max_diff_vs_fp32=int(d.max()), mean_diff_vs_fp32=float(d.float().mean()))
        self._cnn_out = y
        if benchmark:  # back to what the product runs with
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
        if r._runner is not None:
            out["runner"] = dict(r._runner.stats)
        return out

    # 5 ---------------------------------------------------------------------------------------------
    def nvimgcodec(self) -> dict:
        from nvidia import nvimgcodec

        torch = self.torch
        a = self.args
        y = self._cnn_out  # (B, 3, 224, 224) uint8 on the GPU, channels_last
        hwc = y.permute(0, 2, 3, 1)
        if not hwc.is_contiguous():
            hwc = hwc.contiguous()
        images = [hwc[i] for i in range(hwc.shape[0])]
        enc = nvimgcodec.Encoder()
        params = nvimgcodec.EncodeParams(
            quality_type=nvimgcodec.QualityType.QUALITY, quality_value=95,
            chroma_subsampling=nvimgcodec.ChromaSubsampling.CSS_420)
        stream = torch.cuda.current_stream().cuda_stream
        enc.encode(images, "jpeg", params=params, cuda_stream=stream)
        done, t = 0, time.perf_counter()
        while time.perf_counter() - t < a.min_seconds or done == 0:
            out = enc.encode(images, "jpeg", params=params, cuda_stream=stream)
            done += len(images)
        rate = done / (time.perf_counter() - t)
        blobs = [bytes(c) for c in out]
        from PIL import Image

        back = np.asarray(Image.open(io.BytesIO(blobs[0])).convert("RGB"))
        ref = hwc[0].cpu().numpy()
        return {"img_s": rate, "mean_bytes": float(np.mean([len(b) for b in blobs])),
                "mean_diff_after_decode": float(np.abs(back.astype(int) - ref).mean())}

    def host_path(self, src: str) -> dict:
        from bench_host import host_runner, make_arrays

        from resize_pipeline.runner import TaskQueue
        from resize_pipeline.shards import plan_shards
        from resize_pipeline.sources import list_source

        a = self.args
        dst = tempfile.mkdtemp(prefix="suite_host_", dir=a.tmp)
        runner, _ = host_runner(src, dst, threads=a.threads, fmt="webdataset", jpeg_backend="auto", batch=a.batch,
                                per_shard=a.per_shard, arrays=make_arrays())
        tasks = plan_shards(list_source(src).items, a.per_shard)
        list(runner.run(TaskQueue.of(tasks[:1])))
        n = sum(len(x.items) for x in tasks[1:])
        c0, t = time.process_time(), time.perf_counter()
        list(runner.run(TaskQueue.of(tasks[1:])))
        dt = time.perf_counter() - t
        return {"img_s": n / dt, "n": n, "cores_busy": (time.process_time() - c0) / dt,
                "encoder": runner.built["encoder"]}

    def host_scaling(self) -> dict:
        """`bench_host.py` on this machine: the host path pinned to 1, 2, 4, ... cores, OpenCV vs
        Pillow (on the GPU machine nothing else runs: this is the quiet-machine scaling figure)."""
        a = self.args
        cores = [c for c in (1, 2, 4, 8, 16, 32) if c <= (os.cpu_count() or 1)]
        path = os.path.join(a.tmp, "bench_host.json")
        cmd = [sys.executable, str(REPO / "benchmarks" / "bench_host.py"), "--n", str(a.host_n), "--repeats", "1",
               "--skip-stages", "--backends", "opencv,pillow", "--cores", ",".join(map(str, cores)), "--json", path]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=max(30.0, self.left()))
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        print(out.stdout[-2500:], flush=True)
        report = json.loads(Path(path).read_text())
        runs = report["runs"]
        one = {r["backend"]: r["img_s"] for r in runs if r["cores"] == 1}
        best = max((r for r in runs if r["backend"] == "opencv"), key=lambda r: r["img_s"])
        return {"img_s": best["img_s"], "cores": best["cores"], "runs": runs,
                "x_2_cores": {b: next(r["img_s"] for r in runs if r["backend"] == b and r["cores"] == 2) / v
                              for b, v in one.items() if any(r["cores"] == 2 for r in runs)},
                "machine_check": report.get("machine_scaling")}

    # ---------------------------------------------------------------------------------------------------
    def run(self) -> int:
        a = self.args
        t = time.perf_counter()
        src = os.path.join(a.tmp, "src")
        blobs = make_corpus(src, a.n_distinct, a.n + a.per_shard, max(1, min(16, os.cpu_count() or 1)))
        self.report["corpus"] = {"distinct": len(blobs), "files": a.n + a.per_shard,
                                 "mean_kib": float(np.mean([len(b) for b in blobs]) / 1024),
                                 "seconds": time.perf_counter() - t}
        print(f"corpus: {len(blobs)} distinct JPEGs (mean {self.report['corpus']['mean_kib']:.0f} KiB), "
              f"{a.n + a.per_shard} files, {time.perf_counter() - t:.1f} s", flush=True)
        import torch

        self.torch = torch
        if self.gpu and not torch.cuda.is_available():
            print("no CUDA GPU visible: running in CPU mode (--cpu)", flush=True)
            self.gpu = False
        try:
            import nvidia.dali as dali

            dali_version = dali.__version__
        except ImportError:
            dali_version = None
        self.report.update(
            device=torch.cuda.get_device_name(0) if self.gpu else "cpu", cpus=os.cpu_count(),
            python=platform.python_version(), torch=torch.__version__, dali=dali_version, mode="gpu" if self.gpu else "cpu")
        print(f"# gpu_suite: {self.report['device']}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
              f"DALI {dali_version}, python {platform.python_version()}", flush=True)
        self.save()
        if not a.skip_pytest:
            self.pytest()
        if dali_version is None:
            print("DALI is not installed: decode and convert rows skipped", flush=True)
        else:
            self.row("decode-only 224 (DALI, decoder rate)", lambda: self.decode_only(blobs, 224), kind="decode224")
            if self.gpu:  # DALI's own default; with fancy upsampling on, does the HW decoder keep its share?
                self.row("decode-only 224, jpeg_fancy_upsampling off (DALI's default)",
                         lambda: self.decode_only(blobs, 224, fancy=False), kind="decode224_nofancy")
            self.row("decode-only 448 (DALI, learned input)", lambda: self.decode_only(blobs, 448), kind="decode448")
            # processes per GPU (finding 6): one process's host side is bounded by its GIL, each process
            # holds its own CUDA context, DALI pools and CNN: 1, 2 and 4 processes sharing the GPU
            for resizer, label, kind, need in (("bilinear", "bilinear (DALI resize)", "convert_classical", 30),
                                               ("learned", "learned (DALI 448 -> CNN)", "convert_learned", 45)):
                for procs in a.procs:
                    self.row(f"convert {label}, jpg q95, tar, {procs} process(es) on the GPU",
                             lambda r=resizer, p=procs: self.convert(src, r, p), needs=need + 10 * procs,
                             kind=kind if procs == 1 else f"{kind}_{procs}p")
        x = self.cnn_input()
        ref = None
        cnn_rows = [("fp32", False, False, False)] + (
            [("fp16", False, False, False), ("fp16", False, False, True), ("fp16", True, False, False),
             ("bf16", True, False, False)] if self.gpu else [("bf16", False, False, False)])
        if self.gpu and not a.no_compile:
            cnn_rows.append(("fp16", True, True, False))
        for precision, graphs, comp, bench in cnn_rows:
            label = f"CNN alone 448->224, {precision}" + (", CUDA graphs" if graphs else ", eager") + \
                (", torch.compile" if comp else "") + (", cudnn.benchmark (not deterministic)" if bench else "")
            got = self.row(label, lambda p=precision, g=graphs, c=comp, b=bench, rf=ref: self.cnn(
                x, rf, precision=p, graphs=g, compile=c, benchmark=b), needs=90 if comp else 15, kind="cnn")
            if ref is None and got and "img_s" in got:
                ref = self._cnn_out
        if self.gpu:
            self.row("encode: nvImageCodec JPEG q95 4:2:0 on the GPU (CNN output)", self.nvimgcodec, kind="encode")
        self.row(f"host path: read -> 224 arrays -> OpenCV jpg q95 -> tar, {a.threads} threads",
                 lambda: self.host_path(src), needs=20, kind="host")
        self.row("host path pinned to 1, 2, 4.. cores (bench_host.py; best OpenCV row)", self.host_scaling,
                 needs=60, kind="host_scaling")
        return self.summarise()

    def summarise(self) -> int:
        rows = self.rows
        base = next((r["img_s"] for r in rows if r.get("kind") == "decode224" and "img_s" in r), None)
        base448 = next((r["img_s"] for r in rows if r.get("kind") == "decode448" and "img_s" in r), None)
        mode = "GPU" if self.gpu else "CPU mode"
        print(f"\n## gpu_suite ({mode}): {self.report.get('device')}, {self.report.get('cpus')} CPUs, "
              f"batch {self.args.batch}, {self.args.n} images per run")
        print("| row | img/s | x decode-only | peak torch GPU MiB | device in use MiB | note |")
        print("| --- | ---: | ---: | ---: | ---: | --- |")
        for r in rows:
            rate = r.get("img_s")
            x = f"{rate / base:.2f}" if rate and base else "-"
            if r.get("kind") == "convert_learned" and rate and base448:
                x += f" ({rate / base448:.2f} of 448)"
            note = r.get("note", "")
            if "max_diff_vs_fp32" in r:
                note += f" max/mean diff vs fp32 {r['max_diff_vs_fp32']}/{r['mean_diff_vs_fp32']:.3f}"
            if "x_2_cores" in r:
                note += " 1->2 cores: " + ", ".join(f"{b} {v:.2f}x" for b, v in r["x_2_cores"].items())
                checks = ", ".join(f"{c:.2f}x" for c in r["machine_check"] or [])
                note += f" (best at {r['cores']} cores; machine check {checks})"
            if "startup_s" in r:
                note += f" start-up {r['startup_s']:.1f} s, end to end {r['end_to_end_img_s']:,.0f} img/s"
            if "device_mib_per_process" in r:
                note += (f" device {r['device_mib_per_process']:,.0f} MiB/process (estimate "
                         f"{r['estimated_gpu_mib_per_process']:,} MiB)")
            if r.get("paths"):
                note += " " + "; ".join(f"{k}: {v}" for k, v in r["paths"].items())
            gm = r.get("peak_gpu_mib")
            dm = r.get("device_used_mib")
            print(f"| {r['row']} | {'-' if rate is None else f'{rate:,.0f}'} | {x} | "
                  f"{'-' if gm is None else f'{gm:,.0f}'} | {'-' if dm is None else f'{dm:,.0f}'} | {note.strip()} |")
        targets = {}
        for kind, goal in (("convert_classical", 0.8), ("convert_learned", 0.5)):
            for k in (kind, *(f"{kind}_{p}p" for p in self.args.procs if p != 1)):
                r = next((r for r in rows if r.get("kind") == k and "img_s" in r), None)
                if r and base:
                    targets[k] = {"ratio": r["img_s"] / base, "target": goal, "met": r["img_s"] / base >= goal}
        cnn = [r for r in rows if r.get("kind") == "cnn" and "img_s" in r]
        if cnn and base:
            best = max(cnn, key=lambda r: r["img_s"])
            targets["cnn_alone_best"] = {"row": best["row"], "ratio": best["img_s"] / base, "aim": 2.0}
        for kind in ("convert_classical", "convert_learned"):  # determinism across process counts
            digests = {r.get("workers"): r["tar_sha256"] for r in rows
                       if str(r.get("kind", "")).startswith(kind) and "tar_sha256" in r}
            if len(digests) > 1:
                targets[f"{kind}_same_bytes"] = {"processes": sorted(digests), "met": len(set(digests.values())) == 1}
        self.report["targets"] = targets
        pt = self.report.get("pytest")
        print(f"\ntargets: {json.dumps(targets)}")
        if pt:
            print(f"pytest -m gpu: rc {pt['rc']}: {pt['summary']}")
        self.save()
        failed = [r["row"] for r in rows if str(r.get("note", "")).startswith("FAILED")]
        if failed:
            print(f"FAILED rows: {failed}")
        return 1 if failed or (pt and pt["rc"] not in (0, 5)) else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_suite.json and pytest_gpu.log")
    ap.add_argument("--cpu", action="store_true", help="CPU mode: DALI CPU-only, CNN on the CPU (auto without CUDA)")
    ap.add_argument("--small", action="store_true", help="tiny sizes, for a CPU-only machine")
    ap.add_argument("--n", type=int, default=None, help="images per decode/convert run (default 24576; --small 48)")
    ap.add_argument("--n-distinct", type=int, default=None, help="distinct JPEGs generated (default 2048; --small 16)")
    ap.add_argument("--per-shard", type=int, default=None, help="samples per shard (default 1024; --small 8)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 128; --small 16)")
    ap.add_argument("--cnn-batch", type=int, default=None, help="CNN-alone batch (default 256; --small 4)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--hw-decoder-load", type=float, default=0.65)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--host-n", type=int, default=None, help="images per host-scaling run (default 12000; --small 64)")
    ap.add_argument("--min-seconds", type=float, default=None, help="timed window of the CNN/encode rows")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for the steps after the corpus")
    ap.add_argument("--pytest-paths", default="", help=f"test files for pytest -m gpu (default {' '.join(GPU_TESTS)})")
    ap.add_argument("--pytest-timeout", type=float, default=180.0)
    ap.add_argument("--skip-pytest", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile CNN row")
    ap.add_argument("--procs", default="1,2,4", help="worker processes per GPU for the convert rows (1,2,4)")
    args = ap.parse_args(argv)
    args.procs = [int(p) for p in str(args.procs).split(",") if p.strip()]
    small = args.small
    for name, big, tiny in (("n", 24576, 48), ("n_distinct", 2048, 16), ("per_shard", 1024, 8), ("batch", 128, 16),
                            ("cnn_batch", 256, 4), ("min_seconds", 2.0, 0.2), ("host_n", 12000, 64)):
        if getattr(args, name) is None:
            setattr(args, name, tiny if small else big)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as tmp:
        args.tmp = tmp
        return Suite(args).run()


if __name__ == "__main__":
    sys.exit(main())
