"""Issue 20, finding 5 and the object-store calls that never answer, against moto's S3 server on
127.0.0.1 (through a fault-injecting proxy) and a real loopback TCP server that accepts connections and
never answers.

- A persistent 500 on the final ``_manifest.json`` upload: exit 2, one line; the shards stay; a rerun
  finishes the manifest.
- Every object-store call (list, write, lock) has a deadline (``--io-timeout``): a stuck call is
  retried, then the job ends with exit 2 and one line; ``-v`` and the progress bar say what is waited on.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import fsspec
import pytest

from .conftest import storage_options
from .helpers import REPO, cli_env, one_line_error, run_cli, write_jpegs

pytest.importorskip("s3fs")

ARGS = ("--size", "16", "--samples-per-shard", "3", "--workers", "1")


def _config(tmp_path, endpoint: str, botocore_attempts: int | None = None) -> str:
    path = tmp_path / f"s3-{abs(hash(endpoint))}-{botocore_attempts}.toml"
    text = (f"[storage_options]\nkey = 'x'\nsecret = 'x'\n[storage_options.client_kwargs]\n"
            f"endpoint_url = '{endpoint}'\nregion_name = 'us-east-1'\n")
    if botocore_attempts:  # botocore's own retries of a 500 (kept short: the test is about what follows)
        text += f"[storage_options.config_kwargs.retries]\nmax_attempts = {botocore_attempts}\n"
    path.write_text(text)
    return str(path)


@pytest.fixture
def src(tmp_path):
    root = tmp_path / "src"
    write_jpegs(root, 7, seed=8)
    return root


def _s3(endpoint: str):
    return fsspec.filesystem("s3", skip_instance_cache=True, **storage_options(endpoint))


# ------------------------------------------------------------------------------------------ finding 5
@pytest.mark.slow
def test_a_persistent_500_on_the_manifest_upload_is_one_line_and_a_rerun_finishes(
        s3_endpoint, s3_bucket, fault_proxy, src, tmp_path):
    fault_proxy.always = {f"PUT /{s3_bucket}/out/_manifest.json": 500}
    dest = f"s3://{s3_bucket}/out"
    r = run_cli(str(src), dest, *ARGS, "-q", "--config", _config(tmp_path, fault_proxy.url, 1), timeout=300)
    assert r.returncode == 2, r.stderr  # main: a 75-line traceback, rc 1
    line = one_line_error(r.stderr)
    assert "_manifest.json" in line and "rerun the same command to finish" in line
    fs = _s3(s3_endpoint)
    names = {p.rsplit("/", 1)[-1] for p in fs.find(f"{s3_bucket}/out")}
    assert {"shard-00000.tar", "shard-00001.tar", "shard-00002.tar", "_errors.jsonl"} <= names
    assert "_manifest.json" not in names and "_lock.json" not in names
    fault_proxy.always = {}
    again = run_cli(str(src), dest, *ARGS, "--config", _config(tmp_path, fault_proxy.url, 1), timeout=300)
    assert again.returncode == 0, again.stderr
    assert "[3 shard(s) reused]" in again.stdout
    fs.invalidate_cache()
    assert json.loads(fs.cat_file(f"{s3_bucket}/out/_manifest.json"))["counts"]["written"] == 7


# --------------------------------------------------------------------------- calls that never answer
def test_a_dest_endpoint_that_never_answers_ends_the_job_in_one_line(silent_endpoint, src, tmp_path):
    t0 = time.time()
    r = run_cli(str(src), "s3://bucket/out", *ARGS, "-q", "--io-timeout", "2",
                "--config", _config(tmp_path, silent_endpoint), timeout=120)
    assert r.returncode == 2, r.stderr  # main: silent for minutes (10 with the defaults)
    assert time.time() - t0 < 60
    line = one_line_error(r.stderr)
    assert "cannot reach s3://bucket/out" in line and "no answer within 2 s" in line


def test_a_source_endpoint_that_never_answers_ends_the_job_in_one_line(silent_endpoint, tmp_path):
    t0 = time.time()
    r = run_cli("s3://bucket/in", str(tmp_path / "out"), *ARGS, "-q", "--io-timeout", "2",
                "--config", _config(tmp_path, silent_endpoint), timeout=120)
    assert r.returncode == 2, r.stderr
    assert time.time() - t0 < 60
    line = one_line_error(r.stderr)
    assert "cannot list s3://bucket/in" in line and "no answer within 2 s (looking at s3://bucket/in)" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("stuck", "doing"), [
    ("PUT /{b}/out/shard-00001.tar", "writing s3://{b}/out/shard-00001.tar"),  # a worker's shard upload
    ("GET /{b}/out/_lock.json", "reading _lock.json"),  # the lock, in the driver
])
def test_a_stuck_call_is_retried_then_the_job_stops_in_one_line(s3_bucket, fault_proxy, src, tmp_path, stuck, doing):
    fault_proxy.always = {stuck.format(b=s3_bucket): "hang"}
    t0 = time.time()
    r = run_cli(str(src), f"s3://{s3_bucket}/out", *ARGS, "-q", "--io-timeout", "1",
                "--config", _config(tmp_path, fault_proxy.url), timeout=180)
    assert r.returncode == 2, r.stderr
    assert time.time() - t0 < 90
    line = one_line_error(r.stderr)
    assert f"s3://{s3_bucket}/out gives no answer ({doing.format(b=s3_bucket)}" in line
    assert "no answer within 1 s" in line and "4 attempts" in line and "rerun the same command" in line


@pytest.mark.slow
def test_the_progress_bar_and_verbose_logs_say_what_is_waited_on(s3_bucket, fault_proxy, src, tmp_path):
    target = f"s3://{s3_bucket}/out/shard-00001.tar"
    fault_proxy.always = {f"PUT /{s3_bucket}/out/shard-00001.tar": "hang"}
    r = subprocess.run([sys.executable, "-m", "resize_pipeline.cli", "-v", "convert", str(src),
                        f"s3://{s3_bucket}/out", *ARGS, "--io-timeout", "2",
                        "--config", _config(tmp_path, fault_proxy.url)],
                       env=cli_env(), cwd=REPO, capture_output=True, text=True, timeout=180)
    assert r.returncode == 2, r.stderr
    # a small shard is uploaded when its file is closed
    assert f"waiting on closing {target}: no answer for 1 s, giving up at 2 s" in r.stderr  # -v
    assert re.search(rf"waiting on closing {re.escape(target)} \(\d+ s\)\]", r.stderr)  # the bar's postfix
    assert r.stderr.strip().splitlines()[-1].startswith("resize-pipeline: error: ")


def test_waits_are_listed_while_they_last():
    import threading

    from resize_pipeline.waits import NoAnswer, describe_waits, waiting, within

    release = threading.Event()
    seen: list[str] = []

    def watch() -> None:
        while not release.is_set():
            text = describe_waits()
            if text:
                seen.append(text)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with pytest.raises(NoAnswer, match=r"no answer within 1 s \(reading x\)"):
        within(1.0, lambda: release.wait(30), "reading x")
    release.set()
    watcher.join(5)
    assert seen and seen[-1].startswith("waiting on reading x (")
    assert waiting() == [] and describe_waits() == ""
    assert within(1.0, lambda: 7, "fast") == 7
    with pytest.raises(KeyError):
        within(1.0, lambda: {}["k"], "failing")
