"""Exit 2 and one line for every bad input, error rows for per-row problems (issue 12, findings 2, 3, 5,
6, 8 and 12).

- file names that are not UTF-8 are written and recorded losslessly, and read back the same;
- config strings are never booleans, booleans never sizes; invalid values are refused up front;
- a torn or list-shaped ``_run.json``, a read-only DEST, a ``.tar`` that is not a tar, a JSON manifest
  that is not a list of objects or has integer paths: one line, exit 2;
- an unreadable sub-folder becomes error rows (stage ``list``): every input is accounted for;
- a read that never answers becomes a ``read`` error after ``--read-timeout`` (its batch goes on);
  error rows never hold file contents; a missing destination bucket is never created.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from resize_pipeline.cli import main

from .helpers import fault_env, mount_tmpfs, one_line_error, run_cli, umount, write_jpegs

ARGS = ("--size", "32", "--samples-per-shard", "8", "--workers", "1", "-q")
BAD = b"bad\xff name.jpg"  # legal on Linux, not UTF-8


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad") / "src"
    write_jpegs(root, 6, seed=5)
    return root


def _refused(capsys, *argv: str) -> str:
    assert main(["convert", *argv]) == 2
    return one_line_error(capsys.readouterr().err)


def _errors(dest: Path) -> list[dict]:
    return [json.loads(line) for line in (dest / "_errors.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------ finding 2
def test_names_that_are_not_utf8_are_written_and_recorded_losslessly(src, tmp_path, capsys):
    folder = tmp_path / "names"
    write_jpegs(folder, 5, seed=6)
    raw = os.fsencode(folder)
    good = (folder / "000001.jpg").read_bytes()
    with open(raw + b"/" + BAD, "wb") as fh:
        fh.write(good)
    with open(raw + b"/broken\xfe.jpg", "wb") as fh:
        fh.write(b"not an image")
    dest = tmp_path / "dst"
    assert main(["convert", str(folder), str(dest), *ARGS, "--format", "both"]) == 0
    m = json.loads((dest / "_manifest.json").read_text(encoding="utf-8"))  # valid UTF-8 throughout
    assert m["counts"] == dict(m["counts"], total=7, written=6, failed=1)
    (err,) = _errors(dest)
    assert os.fsencode(err["path"]) == b"file://" + raw + b"/broken\xfe.jpg"  # the exact bytes back
    sources = []
    for tar in sorted(dest.glob("*.tar")):
        with tarfile.open(tar) as tf:
            sources += [json.loads(tf.extractfile(x).read().decode("utf-8"))["source"] for x in tf
                        if x.name.endswith(".json")]
    assert b"file://" + raw + b"/" + BAD in [os.fsencode(s) for s in sources]
    parquet = [s for p in sorted(dest.glob("*.parquet")) for s in pq.read_table(p).column("source").to_pylist()]
    assert f"file://{folder}/bad\\xff name.jpg" in parquet  # UTF-8 column: the byte shown as \xff
    for stats in (dest / "_stats").iterdir():
        json.loads(stats.read_text(encoding="utf-8"))
    assert main(["convert", str(folder), str(dest), *ARGS, "--format", "both"]) == 0  # resumes: all reused
    assert json.loads((dest / "_manifest.json").read_text())["run"]["converted"] == 0


# ------------------------------------------------------------------------------- findings 3 and 6
@pytest.mark.parametrize(("config", "flags"), [
    ('overwrite = "false"', ()), ("size = true", ()), ('quality = "95"', ()), ('samples_per_shard = "10"', ()),
    ('max_pixels = "lots"', ()), ("resizer = 5", ()), ("batch_size = 2.5", ()),
    ("", ("--row-group-size", "0")), ("", ("--row-group-size", "-3")), ("", ("--background", "#zzzzzz")),
    ("", ("--pad-color", "#+f+f+f")), ("", ("--device", "bogus")),
])
def test_bad_values_are_refused_before_dest_is_touched(src, tmp_path, capsys, config, flags):
    dest = tmp_path / "dst"
    (dest / "_stats").mkdir(parents=True)
    (dest / "keep.tar").write_bytes(b"k")
    cfg = tmp_path / "c.toml"
    cfg.write_text(config + "\n")
    _refused(capsys, str(src), str(dest), "--workers", "1", "-q", "--config", str(cfg), *flags)
    assert sorted(p.name for p in dest.iterdir()) == ["_stats", "keep.tar"]


def test_usage_errors_are_the_message_then_try_help(capsys):
    assert main(["convert", "a", "b", "--no-such-flag"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "unrecognized arguments" in err[0] and "--help" in err[1]


# ------------------------------------------------------------------------------------ finding 5
@pytest.mark.parametrize("content", ['{"fingerprint": "abc', "[1, 2]", '"text"', "{}", ""])
def test_a_torn_or_foreign_run_record_is_refused(src, tmp_path, capsys, content):
    dest = tmp_path / "dst"
    dest.mkdir()
    (dest / "_run.json").write_text(content)
    for extra in ((), ("--overwrite",)):
        assert "_run.json" in _refused(capsys, str(src), str(dest), *ARGS, *extra)
    assert sorted(os.listdir(dest)) == ["_run.json"] and (dest / "_run.json").read_text() == content


def test_a_read_only_dest_is_one_line(src, tmp_path, capsys):
    ro = tmp_path / "ro"
    if not mount_tmpfs(ro, "size=1m", "ro"):
        if os.geteuid() == 0:
            pytest.skip("root cannot mount a read-only tmpfs here (and permissions do not stop root)")
        ro.chmod(0o555)
    try:
        for dest in (ro, ro / "sub"):
            line = _refused(capsys, str(src), str(dest), *ARGS)
            assert "read-only" in line or "not writable" in line
    finally:
        umount(ro)
        ro.chmod(0o755)


def test_a_dest_that_is_a_file(src, tmp_path, capsys):
    dest = tmp_path / "notes.txt"
    dest.write_text("mine")
    for target in (dest, dest / "sub"):
        assert "not a" in _refused(capsys, str(src), str(target), *ARGS).lower()
    assert dest.read_text() == "mine"


def test_a_source_tar_that_is_not_a_tar(src, tmp_path, capsys):
    fake = tmp_path / "in" / "data-000.tar"
    fake.parent.mkdir()
    fake.write_text("this is not a tar\n" * 40)
    assert "data-000.tar" in _refused(capsys, str(fake), str(tmp_path / "d1"), *ARGS)
    assert not (tmp_path / "d1").exists()
    # in a folder of good tars, the broken one is an error row (stage list); the rest is converted
    good = tmp_path / "in" / "data-001.tar"
    with tarfile.open(good, "w") as tf:
        for p in sorted(src.glob("*.jpg")):
            info = tarfile.TarInfo(p.stem + ".jpg")
            info.size = p.stat().st_size
            tf.addfile(info, io.BytesIO(p.read_bytes()))
    dest = tmp_path / "d2"
    assert main(["convert", str(fake.parent), str(dest), *ARGS]) == 0
    m = json.loads((dest / "_manifest.json").read_text())
    assert (m["counts"]["written"], m["counts"]["failed"], m["counts"]["failed_by_stage"]) == (6, 1, {"list": 1})
    (err,) = _errors(dest)
    assert err["stage"] == "list" and err["path"].endswith("data-000.tar")


@pytest.mark.parametrize(("name", "content", "expect"), [
    ("m.json", "[1, 2]", "list of objects"),
    ("m.json", '[{"path": 5}, {"path": 6}]', "not text paths"),
    ("m.json", '[{"path": "a.jpg"}, {"path": 7}]', "column 'path' mixes int and str"),
    ("m.json", '{"path": "a.jpg"}', "list of objects"),
    ("m.jsonl", '{"path": 1}\n{"path": 2}\n', "not text paths"),
    ("m.csv", "path\n\x00\x01\n", None),
])
def test_malformed_manifests_are_one_line(tmp_path, capsys, name, content, expect):
    man = tmp_path / name
    man.write_text(content)
    rc = main(["convert", str(man), str(tmp_path / "dst"), *ARGS])
    err = capsys.readouterr().err
    if expect is None:  # readable, but its one row is no file: a read error, not a crash
        assert rc == 0, err
        return
    assert rc == 2 and expect in one_line_error(err)


def test_manifest_rows_without_a_path_are_error_rows(src, tmp_path, capsys):
    man = tmp_path / "m.jsonl"
    rows = [{"path": str(p)} for p in sorted(src.glob("*.jpg"))[:3]] + [{"path": None}, {"path": ""}]
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dest = tmp_path / "dst"
    assert main(["convert", str(man), str(dest), *ARGS]) == 0
    m = json.loads((dest / "_manifest.json").read_text())
    assert (m["counts"]["total"], m["counts"]["written"], m["counts"]["failed_by_stage"]) == (5, 3, {"list": 2})


# ------------------------------------------------------------------------------------ finding 8
def _tree_with_sub(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "tree"
    write_jpegs(root / "cats", 3, seed=7)
    write_jpegs(root / "dogs", 2, seed=8)
    return root, root / "dogs"


def _check_unreadable_accounted(dest: Path) -> None:
    m = json.loads((dest / "_manifest.json").read_text())
    c = m["counts"]
    assert (c["written"], c["failed"], c["total"], c["failed_by_stage"]) == (3, 1, 4, {"list": 1})
    (err,) = _errors(dest)
    assert err["stage"] == "list" and err["path"].endswith("/dogs") and "Permission denied" in err["error"]


def test_an_unreadable_sub_folder_becomes_error_rows(tmp_path):
    root, sub = _tree_with_sub(tmp_path)
    dest = tmp_path / "dst"
    r = run_cli(str(root), str(dest), *ARGS, env=fault_env(tmp_path, unreadable=str(sub)))
    assert r.returncode == 0, r.stderr
    _check_unreadable_accounted(dest)


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not stop root (the injected test covers it)")
def test_an_unreadable_sub_folder_by_permissions(tmp_path, capsys):
    root, sub = _tree_with_sub(tmp_path)
    sub.chmod(0)
    try:
        assert main(["convert", str(root), str(tmp_path / "dst"), *ARGS]) == 0
    finally:
        sub.chmod(0o755)
    _check_unreadable_accounted(tmp_path / "dst")


# ----------------------------------------------------------------------------------- finding 12
@pytest.fixture
def http_server(src):
    """Serves the source images; ``/hang/...`` never answers (until the test ends)."""
    release = threading.Event()
    files = {f"/{p.name}": p.read_bytes() for p in src.glob("*.jpg")}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _answer(self, body: bool) -> None:
            if self.path.startswith("/hang/"):
                release.wait(600)
                return
            data = files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer(True)

        def do_HEAD(self) -> None:
            self._answer(False)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    release.set()
    server.shutdown()
    server.server_close()


def test_a_read_that_never_answers_times_out_alone(src, tmp_path, http_server):
    pytest.importorskip("aiohttp")
    man = tmp_path / "m.csv"
    names = sorted(p.name for p in src.glob("*.jpg"))
    man.write_text("path\n" + "".join(f"{http_server}/{n}\n" for n in names[:3]) + f"{http_server}/hang/x.jpg\n"
                   + "".join(f"{http_server}/{n}\n" for n in names[3:]))
    dest = tmp_path / "dst"
    r = run_cli(str(man), str(dest), *ARGS, "--batch-size", "16", "--read-timeout", "2", timeout=90)
    assert r.returncode == 0, r.stderr
    m = json.loads((dest / "_manifest.json").read_text())
    assert (m["counts"]["written"], m["counts"]["failed"]) == (6, 1)  # its batch-mates were not held
    (err,) = _errors(dest)
    assert (err["stage"], err["error_type"]) == ("read", "ReadTimeout") and err["path"].endswith("/hang/x.jpg")


def test_error_rows_never_echo_file_contents(src, tmp_path, capsys):
    secret = tmp_path / "secret.jpg"
    secret.write_text("root:$6$SECRETHASH:19000:0:99999:7:::\n")
    png_head = tmp_path / "fake.png"
    png_head.write_bytes(b"\x89PNG\r\n\x1a\nTOPSECRET-not-a-real-png")
    man = tmp_path / "m.csv"
    man.write_text(f"path\n{secret}\n{png_head}\n{next(src.glob('*.jpg'))}\n")
    for decoder in ("pillow", "dali"):
        if decoder == "dali":
            pytest.importorskip("nvidia.dali")
        dest = tmp_path / f"dst-{decoder}"
        assert main(["convert", str(man), str(dest), *ARGS, "--decoder", decoder]) == 0
        text = (dest / "_errors.jsonl").read_text()
        assert len(_errors(dest)) == 2
        for leak in ("root:", "SECRET", "TOPSECRET", "\\x89PNG"):
            assert leak not in text, text


def test_a_missing_destination_bucket_is_not_created(s3_endpoint, src, tmp_path):
    import boto3

    from .conftest import storage_options

    config = tmp_path / "c.toml"
    so = storage_options(s3_endpoint)
    config.write_text(f"[storage_options]\nkey = 'x'\nsecret = 'x'\n[storage_options.client_kwargs]\n"
                      f"endpoint_url = '{so['client_kwargs']['endpoint_url']}'\nregion_name = 'us-east-1'\n")
    r = run_cli(str(src), "s3://no-such-bucket-r2/out", *ARGS, "--config", str(config))
    assert r.returncode == 2 and "does not exist" in one_line_error(r.stderr)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="x")
    assert "no-such-bucket-r2" not in [b["Name"] for b in client.list_buckets()["Buckets"]]
