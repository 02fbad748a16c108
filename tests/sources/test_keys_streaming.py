"""Keys of a streamed listing (`StreamingKeys`): exactly `unique_keys`' rule (a row's key depends only on
the rows before it), a block at a time, with the keys given so far in memory and then on local disk
(`KeyIndex`), whose pages do not stay in the process's resident memory."""

from __future__ import annotations

import random

import numpy as np
import pytest

from resize_pipeline.sources import keys
from resize_pipeline.sources.keyindex import KeyIndex, key_hashes
from resize_pipeline.sources.keys import StreamingKeys, sanitize_key, unique_keys


def _streamed(rels: list[str], block: int, spill: int) -> list[str]:
    sk = StreamingKeys(len(rels), spill=spill)
    try:
        out: list[str] = []
        for a in range(0, len(rels), block):
            out += sk.assign(rels[a:a + block])
        return out
    finally:
        sk.close()


def _hostile(seed: int, n: int) -> list[str]:
    """Paths that collide after sanitising, repeat, and name earlier rows' suffixed keys."""
    rng = random.Random(seed)
    base = ["a b.jpg", "a_b.jpg", "a..b.jpg", "x/y.png", "x__y.png", "c.jpg", "C.JPG", "d/e f.jpg"]
    rels: list[str] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.5:
            rels.append(rng.choice(base))
        elif r < 0.7 and rels:
            rels.append(rng.choice(rels))
        elif r < 0.85:  # the key an earlier collision got: `plain_<sha1>` or `plain_<sha1>_<n>`
            p = rng.choice(base)
            suffix = f"_{rng.randrange(3)}" if rng.random() < 0.5 else ""
            rels.append(f"{sanitize_key(p)}_{keys._digest(p)}{suffix}.jpg")
        else:
            rels.append(f"f{rng.randrange(50)}/{rng.randrange(50)}.jpg")
    return rels


@pytest.mark.parametrize("spill", [10**9, 0, 7])  # memory only; disk from the start; moving mid-way
@pytest.mark.parametrize("block", [1, 5, 64, 10_000])
@pytest.mark.parametrize("flush", [1 << 21, 16])  # keys held in memory before they go to the disk table
def test_streamed_keys_equal_the_reference_rule(block, spill, flush, monkeypatch):
    from resize_pipeline.sources import keyindex

    monkeypatch.setattr(keyindex, "FLUSH", flush)
    for seed in range(4):
        rels = _hostile(seed, 400)
        got = _streamed(rels, block, spill)
        assert got == unique_keys(rels), (seed, block, spill)
        assert len(set(got)) == len(got)


def test_the_issue_example_and_100k_copies_of_one_path_on_disk():
    rels = ["a b.jpg", "a_b.jpg", "a..b.jpg", "a b.jpg", "a b.jpg", "x/y.png", "x__y.png", "a_b_" + keys._digest("a b.jpg")]
    assert _streamed(rels, 3, 0) == unique_keys(rels)
    many = ["imgs/same.jpg"] * 100_000
    got = _streamed(many, 8192, 1000)
    assert got[0] == "imgs__same" and got[-1].endswith("_99998") and len(set(got)) == len(got)


@pytest.mark.parametrize("flush", [1 << 21, 2])
def test_key_index_is_exact_when_hashes_collide(monkeypatch, flush):
    """Two different keys with one hash: the text read back from the log tells them apart (held in
    memory, or in the disk table)."""
    from resize_pipeline.sources import keyindex

    monkeypatch.setattr(keyindex, "FLUSH", flush)
    def one_hash(ks):
        return np.full(len(ks), 12345, dtype=np.uint64)

    monkeypatch.setattr(keyindex, "key_hashes", one_hash)
    idx = KeyIndex(16, spill=0)
    try:
        idx.add(["a"], one_hash(["a"]))
        idx.add(["b"], one_hash(["b"]))  # same slot chain
        idx.add(["c"], one_hash(["c"]))
        assert idx.on_disk and idx.maybe(["z"], one_hash(["z"])).all()  # the hash is there...
        assert not idx.contains("z", 12345) and idx.contains("b", 12345) and idx.contains("c", 12345)
    finally:
        idx.close()


@pytest.mark.parametrize("flush", [1 << 21, 1000])
def test_key_index_grows_and_keeps_every_key(flush, monkeypatch):
    from resize_pipeline.sources import keyindex

    monkeypatch.setattr(keyindex, "FLUSH", flush)
    idx = KeyIndex(0, spill=100)  # a small table on disk, doubled several times
    try:
        ks = [f"k{i}" for i in range(300_000)]
        for a in range(0, len(ks), 50_000):
            chunk = ks[a:a + 50_000]
            h = key_hashes(chunk)
            assert not idx.maybe(chunk, h).any()
            idx.add(chunk, h)
        probe = ks[::997] + ["nope", "k300000"]
        found = [idx.contains(k) for k in probe]
        assert found == [True] * (len(probe) - 2) + [False, False]
        assert len(idx) == 300_000
    finally:
        idx.close()


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def test_key_index_on_disk_does_not_stay_resident():
    """1M keys: a Python set of them would hold ~100 MB; the index on disk leaves < 60 MB resident:
    its filter (16 bits a key, here) and the keys it holds before placing them (32 bytes each), while
    its table's pages go back to the page cache after each block. Both have a fixed cap (~130 MB)."""
    sk = StreamingKeys(1_000_000, spill=10_000)
    try:
        before = _rss_kib()
        for a in range(0, 1_000_000, 65_536):
            sk.assign([f"train/n{i // 1000:05d}/img_{i:09d}.JPEG" for i in range(a, min(1_000_000, a + 65_536))])
        grown = (_rss_kib() - before) / 1024
        assert sk.index.on_disk and len(sk.index) == 1_000_000
        assert grown < 60, f"{grown:.0f} MiB resident"
    finally:
        sk.close()


def test_a_killed_process_s_key_folder_is_removed_by_the_next(tmp_path, monkeypatch):
    import subprocess
    import sys
    import tempfile

    from resize_pipeline.sources.keyindex import private_folder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f"resize-pipeline-keys-{int(dead.stdout)}-abc"
    left.mkdir()
    (left / "keys.log").write_bytes(b"x" * 10)
    mine = private_folder("resize-pipeline-keys")
    assert not left.exists() and mine.startswith(str(tmp_path))


@pytest.mark.parametrize("capacity", [1, 100_000, 10**8])
def test_home_slots_grow_with_the_hash_and_fill_the_table(tmp_path, capacity):
    """A key's home slot never decreases as its hash grows (the held keys, sorted by hash, are placed
    in slot order without a sort), stays inside the table, and spreads hashes evenly over it."""
    from resize_pipeline.sources.keyindex import _DiskSet

    d = _DiskSet(str(tmp_path), capacity)
    try:
        rng = np.random.default_rng(0)
        h = np.sort(np.concatenate([rng.integers(1, 2**64 - 1, 200_000, dtype=np.uint64, endpoint=True),
                                    np.array([1, 2, 2**53, 2**63, 2**64 - 2048, 2**64 - 1], dtype=np.uint64)]))
        s = d._slots(h)
        assert (s[1:] >= s[:-1]).all() and int(s.max()) < d.capacity and int(s[0]) == 0
        assert int(s[-1]) == d.capacity - 1
        counts = np.bincount((s * np.uint64(10) // np.uint64(d.capacity)).astype(np.int64), minlength=10)
        assert counts.min() > 0.9 * len(h) / 10  # tenths of the table get their share
    finally:
        d.close()


def test_the_filter_lets_through_no_more_new_keys_than_a_bloom_filter_should(tmp_path, monkeypatch):
    """1M keys in a filter at its cap (2^24 bits here, 2^29 for real: a power of two), three bits each:
    a new key passes with probability about (1 - e^(-3n/m))^3 = 0.4%. Bit positions derived from the
    hash's low bits alone passed ~n/m = 6% (each pass costs a lookup in the disk table)."""
    from resize_pipeline.sources import keyindex
    from resize_pipeline.sources.keyindex import _DiskSet

    monkeypatch.setattr(keyindex, "FILTER_BYTES", 1 << 21)
    d = _DiskSet(str(tmp_path), 4_000_000)
    assert d.bits.nbytes == 1 << 21
    try:
        rng = np.random.default_rng(7)
        d._to_filter(rng.integers(1, 2**64 - 1, 1_000_000, dtype=np.uint64, endpoint=True))
        passed = d._in_filter(key_hashes([f"new/{i}.jpg" for i in range(100_000)])).mean()
        assert passed < 0.01, passed
    finally:
        d.close()
