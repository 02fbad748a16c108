"""Training rows in compact columns: what goes in comes out, across chunks, with any file name; a
100k-image training folder costs about a hundred bytes a row, not Python objects."""

import gc
import tracemalloc

import numpy as np
import pyarrow as pa
from PIL import Image

from resize_pipeline.learned import data, rowstore
from resize_pipeline.sources.base import SourceItem


def _block(a: int, b: int) -> dict[str, list]:
    r = range(a, b)
    return {"key": [f"c{i % 7}/img_{i:07d}" for i in r],
            "url": [f"file:///data/shard-{i // 1000:05d}.tar" for i in r],
            "offset": [512 * i for i in r], "length": [100 + i for i in r], "row": [-1] * len(r)}


def test_rows_come_back_across_chunks(monkeypatch):
    monkeypatch.setattr(rowstore, "FLUSH", 100)
    store = rowstore.RowStore()
    odd = "caf\udce9.jpg"  # a file name that is not UTF-8 (surrogateescape), in the second chunk
    blocks = [_block(0, 37), _block(37, 150), _block(150, 151), _block(151, 400)]
    blocks[1]["key"][80] = odd
    for b in blocks:
        store.add(b)
    store.finish()
    assert len(store) == 400 and len(store.keys.chunks) == 2  # flushed at 150 rows, then at 400
    labels = np.arange(400) % 3
    got = store.items(0, 400, labels, ["a", "b", "c"])
    want = [SourceItem(k, u, int(labels[i]), "abc"[labels[i]], "", o, n, r, 0) for i, (k, u, o, n, r) in
            enumerate(zip(*(sum((b[c] for b in blocks), []) for c in ("key", "url", "offset", "length", "row")), strict=True))]
    assert got == want and got[117].key == odd
    assert store.items(99, 152, labels[99:152]) == [
        SourceItem(w.key, w.url, w.label, str(w.label), "", w.offset, w.length, w.row, 0) for w in want[99:152]]
    assert store.items(399, 500, labels[399:]) == store.items(399, 400, labels[399:]) and store.items(5, 5, []) == []


def test_a_hundred_thousand_rows_stay_compact():
    """~100 bytes a row (Arrow text + numpy); the same rows as Python lists (`sources.rows.RowTable`)
    take ~300, and a forked DataLoader worker would copy them."""
    n = 100_000
    store = rowstore.RowStore()
    gc.collect()
    arrow0 = pa.total_allocated_bytes()
    tracemalloc.start()
    try:
        for a in range(0, n, 16384):
            store.add(_block(a, min(n, a + 16384)))
        store.finish()
        gc.collect()
        python_bytes = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    arrow_bytes = pa.total_allocated_bytes() - arrow0
    assert python_bytes < 40 * n, python_bytes  # numpy's three int64 columns (24 B/row) and little else
    assert arrow_bytes < 60 * n, arrow_bytes  # keys as text, the tars' URLs shared
    assert store.items(n - 1, n, [3])[0].key == f"c{(n - 1) % 7}/img_{n - 1:07d}"


def test_open_dataset_keeps_an_odd_file_name(tmp_path):
    """A file name that is not UTF-8 reaches the reader as listed (the sample decodes)."""
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (20, 12), (10, 200, 30)).save(tmp_path / cls / "ok.png")
    odd = b"caf\xe9.png"
    Image.new("RGB", (9, 9), (1, 2, 3)).save(bytes(tmp_path / "b") + b"/" + odd, "PNG")
    ds = data.open_dataset(str(tmp_path), 8)
    assert len(ds) == 3 and ds.classes == ["a", "b"] and ds.labels.tolist() == [0, 1, 1]
    samples = ds.__getitems__([0, 1, 2])
    assert all(s.error is None and s.image.shape == (3, 8, 8) for s in samples)
    assert [ds.item(i).label_name for i in range(3)] == ["a", "b", "b"]
