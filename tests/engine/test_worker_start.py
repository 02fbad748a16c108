"""How the local engine starts its worker processes (CI hang of 2026-12-03).

A job's driver has threads of its own while it starts workers (the planner reading the listing with
pyarrow, the DEST lock's heartbeat, the progress bar). A worker process ``fork``ed from it inherits
whatever lock one of those threads held at that instant, held forever by a thread that does not exist
in the child: on CI a worker hung in Arrow's static initialisation, and the job with it. Workers must
start from a clean process (``forkserver``, or ``spawn``), never as a fork of the threaded driver.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.reliability.helpers import REPO, cli_env, fault_env, run_cli, write_jpegs

DRIVER = textwrap.dedent(
    """
    import importlib, sys, threading, time
    from pathlib import Path

    tmp = Path(sys.argv[1])
    sys.path.insert(0, str(tmp))
    (tmp / "slowmod.py").write_text(
        "import pathlib, time\\n"
        f"pathlib.Path({str(tmp / 'inside')!r}).touch()\\n"
        "time.sleep(4)\\n"
    )

    from resize_pipeline import runner

    built = runner.ShardRunner.__init__

    def needs_slowmod(self, *a, **k):  # what a worker process runs first, if it is a copy of this one
        import slowmod  # noqa: F401
        built(self, *a, **k)

    runner.ShardRunner.__init__ = needs_slowmod
    # a driver thread in the middle of an import (it holds that module's lock) while the workers start,
    # as the planner thread is in the middle of a pyarrow read
    threading.Thread(target=importlib.import_module, args=("slowmod",), daemon=True).start()
    while not (tmp / "inside").exists():
        time.sleep(0.01)

    from resize_pipeline.cli import main
    sys.exit(main(["convert", str(tmp / "src"), str(tmp / "out"), "--size", "32", "--samples-per-shard",
                   "2", "--workers", "2", "--encode", "png", "-q"]))
    """
)


def test_worker_processes_do_not_inherit_the_driver_threads_locks(tmp_path: Path):
    write_jpegs(tmp_path / "src", 6, seed=3)
    r = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path)], env=cli_env(), cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "out").glob("*.tar"))) == 3


def test_a_script_without_a_main_guard_runs_once(tmp_path: Path):
    """Worker processes run our code only: a user's script that calls `convert` at the top level (no
    ``if __name__ == "__main__":``) is not run again in each worker, as ``spawn``/``forkserver`` would
    by default (each worker would convert again, or stop on multiprocessing's bootstrapping error)."""
    write_jpegs(tmp_path / "src", 6, seed=4)
    script = tmp_path / "job.py"
    script.write_text(
        "from resize_pipeline import ConvertConfig, convert\n"
        f"print('ran', convert(ConvertConfig({str(tmp_path / 'src')!r}, {str(tmp_path / 'out')!r}, size=32,\n"
        "    samples_per_shard=2, workers=2, quiet=True)).written)\n"
    )
    r = subprocess.run([sys.executable, str(script)], env=cli_env(), cwd=tmp_path, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ran", "6"], r.stdout


def test_workers_that_die_as_they_start_stop_the_job_in_one_line(tmp_path: Path):
    """A worker process that dies before it reports anything is replaced; one that can never start
    (here: it exits as it builds its runner) would be replaced forever, the job hanging: after a few
    in a row the job stops with one line (exit 2), and DEST keeps what a rerun resumes from."""
    write_jpegs(tmp_path / "src", 6, seed=5)
    out = tmp_path / "out"
    args = (str(tmp_path / "src"), str(out), "--size", "32", "--samples-per-shard", "2", "--workers", "2", "-q")
    r = run_cli(*args, env=fault_env(tmp_path, worker_dies_at_start=True), timeout=60)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    line = r.stderr.strip().splitlines()[-1]  # after a warning for each worker replaced
    assert line.startswith("resize-pipeline: error: worker processes die as they start (exit code 1; "), line
    r = run_cli(*args, timeout=60)  # nothing in the way any more: the same command completes
    assert r.returncode == 0, r.stderr
    assert len(list(out.glob("*.tar"))) == 3
