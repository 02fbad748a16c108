"""Issue 20, unbounded resources: what one worker holds is bounded, whatever the inputs.

- Decoded pixels per batch (``--max-batch-pixels``): a batch of large images is split into smaller
  consecutive batches; the bytes written do not change; the peak memory follows the budget.
- Bytes read per input (``--max-bytes``): an input over the cap is a ``read`` error row, refused
  before it is read (a 16 GiB sparse file, a tar member by its header, an object by a ranged read); a
  manifest row pointing at ``/dev/zero`` (or any path that is not a regular file) is one too.

Figures: ``benchmarks/bench_bounds.py`` (docs/reliability.md, section 11).
"""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from .helpers import cli_cmd, cli_env, manifest_without_timing, run_cli, textured, tree_files, write_jpegs

ARGS = ("--size", "32", "--workers", "1", "-q")


def _png(w: int, h: int, seed: int) -> bytes:
    b = io.BytesIO()
    Image.fromarray(textured(w, h, seed)).save(b, "PNG", compress_level=1)
    return b.getvalue()


def _errors(dest: Path) -> dict[str, dict]:
    return {json.loads(x)["path"].rsplit("/", 1)[-1]: json.loads(x)
            for x in (dest / "_errors.jsonl").read_text().splitlines()}


def _same_output(a: Path, b: Path) -> None:
    fa, fb = tree_files(a), tree_files(b)
    assert set(fa) == set(fb)
    for name in fa:
        if name == "_manifest.json":
            ma, mb = manifest_without_timing(fa[name]), manifest_without_timing(fb[name])
            for m in (ma, mb):
                m.pop("config")  # the run options differ (max_batch_pixels)
            assert ma == mb
        else:
            assert fa[name] == fb[name], name


# ---------------------------------------------------------------------------------- decoded pixels
def test_the_budget_cuts_batches_in_order_and_never_splits_an_image():
    from resize_pipeline.stages import PixelBudget

    budget = PixelBudget(250)
    blobs = [_png(10, 10, i) for i in range(3)] + [_png(30, 30, 3)] + [_png(10, 10, 4)] * 2 + [b"not an image"]
    n = len(blobs)
    batch = {"key": np.array([f"k{i}" for i in range(n)], dtype=object), "data": np.empty(n, dtype=object),
             "error": np.array([""] * n, dtype=object)}
    batch["data"][:] = blobs
    parts = budget(batch)
    assert [list(p["key"]) for p in parts] == [["k0", "k1"], ["k2"], ["k3"], ["k4", "k5", "k6"]]
    assert all(isinstance(p["data"], np.ndarray) for p in parts)
    assert PixelBudget(10_000)(batch) is None  # within the budget: one batch, untouched


def test_jpeg_draft_decoding_is_counted():
    from resize_pipeline.stages import PixelBudget

    jpeg = io.BytesIO()
    Image.fromarray(textured(800, 600, 1)).save(jpeg, "JPEG")
    full = PixelBudget(1).decoded_pixels(jpeg.getvalue())
    drafted = PixelBudget(1, lambda w, h: (100, 75)).decoded_pixels(jpeg.getvalue())
    assert (full, drafted) == (800 * 600, 100 * 75)  # 1/8 scale still gives the request


@pytest.mark.parametrize("resizer", ["bilinear", "learned"])
def test_splitting_batches_changes_no_byte(tmp_path, resizer):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(9):
        (src / f"{i}.png").write_bytes(_png(300 + 7 * i, 200 + 5 * i, i))
    (src / "broken.png").write_bytes(b"\x89PNG broken")
    whole, split = tmp_path / "whole", tmp_path / "split"
    args = ("--size", "32", "--workers", "1", "-q", "--samples-per-shard", "4", "--batch-size", "64",
            "--resizer", resizer, "--format", "both")
    assert run_cli(str(src), str(whole), *args).returncode == 0
    r = run_cli(str(src), str(split), *args, "--max-batch-pixels", "150000")  # about 2 images a batch
    assert r.returncode == 0, r.stderr
    _same_output(whole, split)


#: runs the CLI, then prints this process's peak RSS (VmHWM belongs to the process image: not the
#: pages it shared with the forking test process before exec, which ru_maxrss would count)
_PEAK = ("import sys; from resize_pipeline.cli import main; rc = main(sys.argv[1:]); "
         "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0], file=sys.stderr); "
         "sys.exit(rc)")


def _peak_mib(args: list[str]) -> float:
    r = subprocess.run([sys.executable, "-c", _PEAK, "convert", *args], env=cli_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return int(r.stderr.strip().splitlines()[-1].split()[1]) / 1024


@pytest.mark.slow
def test_peak_memory_follows_the_pixel_budget(tmp_path):
    """6 PNGs of 3000x3000 (27 MB each decoded): all at once without a budget, one at a time with one."""
    src = tmp_path / "src"
    src.mkdir()
    row = np.linspace(0, 255, 3000).astype(np.uint8)
    img = np.stack([np.tile(row, (3000, 1))] * 3, -1)
    for i in range(6):
        img[:4, :4, 2] = i
        Image.fromarray(img).save(src / f"{i}.png", compress_level=1)
    base = [str(src), str(tmp_path / "out"), "--size", "32", "--workers", "1", "-q", "--batch-size", "64",
            "--overwrite"]
    unbounded = _peak_mib([*base, "--max-batch-pixels", str(1 << 40)])
    bounded = _peak_mib([*base, "--max-batch-pixels", str(9_000_000)])
    assert bounded < unbounded - 80, (bounded, unbounded)  # 5 x 27 MB fewer decoded images held


# --------------------------------------------------------------------------------- bytes per input
def _limited(as_bytes: int):
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))
    return limit


def test_a_dev_zero_row_and_a_huge_sparse_file_are_read_errors(tmp_path):
    """Under a 4 GiB address-space limit (main reads /dev/zero until MemoryError, and the sparse file
    whole): both are refused before anything is read."""
    src = tmp_path / "src"
    write_jpegs(src, 3, seed=9)
    with open(src / "huge.jpg", "wb") as fh:
        fh.truncate(16 << 30)  # 16 GiB, no disk blocks
    (src / "fifo.jpg").unlink(missing_ok=True)
    os.mkfifo(src / "fifo.jpg")  # opening it must not wait for a writer
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\n" + "".join(f"{p}\n" for p in sorted(src.iterdir())) + "/dev/zero\n")
    dest = tmp_path / "out"
    r = subprocess.run(cli_cmd(str(manifest), str(dest), *ARGS, "--read-timeout", "20"), env=cli_env(),
                       capture_output=True, text=True, timeout=300, preexec_fn=_limited(4 << 30))
    assert r.returncode == 0, r.stderr
    errors = _errors(dest)
    assert set(errors) == {"huge.jpg", "zero", "fifo.jpg"}
    assert errors["huge.jpg"]["stage"] == "read" and errors["huge.jpg"]["error_type"] == "InputTooLarge"
    assert errors["huge.jpg"]["error"] == "17179869184 bytes, over the --max-bytes limit of 268435456: not read"
    assert errors["zero"]["error_type"] == "NotAFile"
    assert errors["zero"]["error"] == "not a regular file (a character device): not read"
    assert errors["fifo.jpg"]["error"] == "not a regular file (a FIFO): not read"
    assert json.loads((dest / "_manifest.json").read_text())["counts"]["written"] == 3


def test_inputs_over_max_bytes_fail_alone_in_folders_tars_and_parquet_files(tmp_path):
    small = [Image.fromarray(textured(30, 20, i)) for i in range(2)]
    big = Image.fromarray(np.random.default_rng(1).integers(0, 255, (200, 200, 3), dtype=np.uint8))
    blobs = {}
    for name, im in (("a.jpg", small[0]), ("b.jpg", small[1]), ("big.jpg", big)):
        b = io.BytesIO()
        im.save(b, "JPEG", quality=95)
        blobs[name] = b.getvalue()
    assert max(len(blobs["a.jpg"]), len(blobs["b.jpg"])) < 4000 < len(blobs["big.jpg"])
    folder = tmp_path / "folder"
    folder.mkdir()
    tar = tmp_path / "data.tar"
    with tarfile.open(tar, "w") as tf:
        for name, data in blobs.items():
            (folder / name).write_bytes(data)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    parquet = tmp_path / "images.parquet"
    pq.write_table(pa.table({"key": [n[:-4] for n in blobs], "image": list(blobs.values())}), parquet)
    for source in (folder, tar, parquet):
        dest = tmp_path / f"out-{source.name}"
        r = run_cli(str(source), str(dest), *ARGS, "--max-bytes", "4000")
        assert r.returncode == 0, r.stderr
        m = json.loads((dest / "_manifest.json").read_text())["counts"]
        assert (m["written"], m["failed"], m["failed_by_stage"]) == (2, 1, {"read": 1})
        [err] = _errors(dest).values()
        assert err["error_type"] == "InputTooLarge" and err["key"].endswith("big")
        assert err["error"] == f"{len(blobs['big.jpg'])} bytes, over the --max-bytes limit of 4000: not read"


def test_an_object_over_max_bytes_is_refused_by_a_ranged_read(s3_endpoint, s3_bucket, tmp_path, fault_proxy):
    """On S3 the size is not known before reading: at most --max-bytes + 1 bytes are fetched."""
    import fsspec

    from .conftest import storage_options

    fs = fsspec.filesystem("s3", skip_instance_cache=True, **storage_options(s3_endpoint))
    rng = np.random.default_rng(2)
    for name, side in (("a.jpg", 20), ("big.jpg", 300)):
        b = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(b, "JPEG", quality=95)
        fs.pipe_file(f"{s3_bucket}/in/{name}", b.getvalue())
    config = tmp_path / "c.toml"
    config.write_text(f"[storage_options]\nkey = 'x'\nsecret = 'x'\n[storage_options.client_kwargs]\n"
                      f"endpoint_url = '{fault_proxy.url}'\nregion_name = 'us-east-1'\n")
    dest = tmp_path / "out"
    r = run_cli(f"s3://{s3_bucket}/in", str(dest), *ARGS, "--max-bytes", "5000", "--config", str(config))
    assert r.returncode == 0, r.stderr
    err = _errors(dest)["big.jpg"]
    assert err["error_type"] == "InputTooLarge" and err["error"].startswith("more than 5000 bytes")
    assert fault_proxy.gets[f"/{s3_bucket}/in/big.jpg"] >= 1
