"""`TarStream` writes exactly what ``tarfile`` (PAX, streamed) writes, including when the bytes reach
the file (a byte cap reads the file's size), and `webdataset` reads it back."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from resize_pipeline.sinks.webdataset import TarStream, tar_header


class Recorder(io.BytesIO):
    """A file that remembers its size after every write call."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def write(self, data) -> int:
        n = super().write(data)
        self.sizes.append(self.tell())
        return n


def _members(seed: int = 0):
    rng = np.random.default_rng(seed)
    names = ["a.jpg", "k" * 96 + ".jpg", "k" * 97 + ".json", "k" * 150 + ".jpg", "ünïcode_ключ.jpg",
             "cats__Tom_Jerry_v2.cls", "x" * 100]
    sizes = [0, 1, 511, 512, 513, 10240, 10241, 30000]
    out = []
    for i in range(60):
        out.append((names[i % len(names)] if i < 20 else f"s{i:05d}.jpg", bytes(rng.integers(0, 256, sizes[i % len(sizes)] + i, dtype=np.uint8))))
    return out


def _reference(members) -> tuple[bytes, list[int]]:
    f = Recorder()
    tar = tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT)
    sizes_at_sample = []
    for name, data in members:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o444
        info.uname = info.gname = "resize"
        tar.addfile(info, io.BytesIO(data))
        sizes_at_sample.append(f.tell())
    tar.close()
    return f.getvalue(), sizes_at_sample


def test_bytes_and_flush_points_equal_tarfile():
    members = _members()
    want, want_sizes = _reference(members)
    f = Recorder()
    stream = TarStream(f)
    got_sizes = []
    for m in members:
        stream.add([m])
        got_sizes.append(f.tell())
    stream.close()
    assert f.getvalue() == want
    assert got_sizes == want_sizes  # what a byte cap sees between samples


@pytest.mark.parametrize("name", ["a.jpg", "k" * 100, "k" * 101, "é.jpg", "sp ace.json"])
@pytest.mark.parametrize("size", [0, 7, 8**11 - 1])
def test_header_equals_tarfile(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o444
    info.uname = info.gname = "resize"
    assert tar_header(name, size) == info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")


def test_webdataset_reads_a_stream_back(tmp_path):
    wds = pytest.importorskip("webdataset")
    path = tmp_path / "s.tar"
    with open(path, "wb") as fh:
        stream = TarStream(fh)
        for i in range(5):
            stream.add([(f"k{i}.cls", str(i).encode()), (f"k{i}.json", b"{}")])
        stream.close()
    rows = list(wds.WebDataset(str(path), shardshuffle=False))
    assert [r["__key__"] for r in rows] == [f"k{i}" for i in range(5)]
    assert [int(r["cls"]) for r in rows] == list(range(5))
