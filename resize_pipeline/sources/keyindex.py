"""The set of sample keys a listing has given so far, exact, in bounded memory (`KeyIndex`).

A key depends on the keys before it (`keys.unique_keys`: the first path keeps its plain key), so a
streaming listing must ask, for every row, "was this key given before?" over every earlier row.
Up to `SPILL` keys the answer comes from a Python set. Beyond that the set moves to the local disk,
so that the driver's memory does not grow with the listing:

- an open-addressing hash table (linear probing, at most `LOAD` full, doubled when needed) of
  16-byte slots ``(hash, where the key's text is in the log)``, memory-mapped and probed with numpy
  a block of keys at a time; after each block the mapped pages are handed back to the page cache
  (``MADV_DONTNEED``), so at most a block's pages (a page per key, ~64 MB) count in the process's
  resident memory;
- a log of the keys' text (UTF-8; `keys.sanitize_key` makes them ASCII), appended once per block: a hash
  found in the table is confirmed by reading the text back (``os.pread``), so the answer is exact.

It costs the local disk ~27 bytes per key for the table plus the keys' length for the log (about
80 bytes per input for typical paths), and about one page fault per key, in a temporary folder removed when the listing ends
(``TMPDIR`` chooses where; the folder of a process that was killed is removed by the next one).
"""

from __future__ import annotations

import logging
import mmap
import os
import shutil
import tempfile
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

#: keys held in a Python set before the set moves to the local disk
SPILL = 1 << 16
#: keys probed or placed at a time in the disk table
CHUNK = 4096
#: the disk table is grown past this share of its slots taken (linear probing stays short)
LOAD = 0.6
_EMPTY = np.uint64(0)


def private_folder(prefix: str) -> str:
    """A new temporary folder ``{prefix}-{pid}-...``; those a killed process of ours left (its pid
    gone) are removed first."""
    import re

    base = tempfile.gettempdir()
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)-")
    try:
        names = os.listdir(base)
    except OSError:
        names = []
    for name in names:
        m = pattern.match(name)
        if m and int(m.group(1)) != os.getpid():
            try:
                os.kill(int(m.group(1)), 0)
            except ProcessLookupError:
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)
            except OSError:
                pass
    return tempfile.mkdtemp(prefix=f"{prefix}-{os.getpid()}-")


def key_hashes(keys: Sequence[str]) -> np.ndarray:
    """64-bit hashes of `keys` (Python's string hash: fixed within one process, never 0 here)."""
    h = np.fromiter((hash(k) for k in keys), dtype=np.int64, count=len(keys)).view(np.uint64)
    h[h == _EMPTY] = np.uint64(1)
    return h


class _DiskSet:
    """The hash table and key log on local disk (see the module docstring)."""

    def __init__(self, folder: str, capacity: int) -> None:
        self.folder = folder
        self.log_path = os.path.join(folder, "keys.log")
        self.log_fd = os.open(self.log_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self.log_size = 0
        self.count = 0
        self._generation = 0
        self._open_table(max(1 << 16, int(capacity / LOAD) + 1))

    def _open_table(self, capacity: int) -> None:
        self._generation += 1
        path = os.path.join(self.folder, f"table-{self._generation}.bin")
        with open(path, "wb") as fh:
            fh.truncate(capacity * 16)  # sparse: zeros = empty slots
        self.table_path = path
        with open(path, "r+b") as fh:
            self._mm = mmap.mmap(fh.fileno(), capacity * 16)
        # a plain array over the mapping (numpy's memmap class costs ~0.1 ms per indexing)
        self.table = np.frombuffer(self._mm, dtype=np.uint64).reshape(capacity, 2)
        self.capacity, self.size = capacity, np.uint64(capacity)

    def release(self) -> None:
        """Hand the mapped pages back to the page cache (they leave this process's resident set)."""
        if hasattr(self._mm, "madvise"):
            self._mm.madvise(mmap.MADV_DONTNEED)

    # -- lookups --------------------------------------------------------------------------------
    def maybe(self, h: np.ndarray) -> np.ndarray:
        """Whether each hash is in the table (a hit is confirmed by `contains`)."""
        if len(h) > CHUNK:
            return np.concatenate([self.maybe(h[a:a + CHUNK]) for a in range(0, len(h), CHUNK)])
        found = np.zeros(len(h), dtype=bool)
        active = np.arange(len(h))
        pos = h % self.size
        table = self.table
        while active.size:
            slot = table[pos[active], 0]
            hit = slot == h[active]
            found[active[hit]] = True
            go_on = ~(hit | (slot == _EMPTY))
            active = active[go_on]
            pos[active] = (pos[active] + np.uint64(1)) % self.size
        return found

    def contains(self, key: str, h: int) -> bool:
        """Exact: some key in the table with hash `h` is `key` (its text read back from the log)."""
        hv = np.uint64(h)
        i = int(hv % self.size)
        table, data = self.table, key.encode("utf-8", "surrogatepass")
        while True:
            slot = table[i, 0]
            if slot == _EMPTY:
                return False
            if slot == hv:
                v = int(table[i, 1])
                offset, length = v >> 16, v & 0xFFFF
                if length == len(data) and os.pread(self.log_fd, length, offset) == data:
                    return True
            i = (i + 1) % self.capacity

    # -- inserts --------------------------------------------------------------------------------
    def add(self, keys: Sequence[str], h: np.ndarray) -> None:
        """Insert `keys` (none of them present) with their hashes `h`."""
        if not len(keys):
            return
        if self.count + len(keys) > self.capacity * LOAD:
            self._grow(self.count + len(keys))
        data = [k.encode("utf-8", "surrogatepass") for k in keys]
        lengths = np.fromiter((len(d) for d in data), dtype=np.uint64, count=len(data))
        if int(lengths.max()) > 0xFFFF:
            raise ValueError("a key longer than 65535 bytes")
        offsets = np.uint64(self.log_size) + np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.uint64)
        blob = b"".join(data)
        written = 0
        while written < len(blob):
            written += os.pwrite(self.log_fd, blob[written:], self.log_size + written)
        self.log_size += len(blob)
        values = (offsets << np.uint64(16)) | lengths
        for a in range(0, len(h), CHUNK):
            self._place(h[a:a + CHUNK], values[a:a + CHUNK])
        self.count += len(keys)

    def _place(self, h: np.ndarray, values: np.ndarray) -> None:
        table, size = self.table, self.size
        pending = np.arange(len(h))
        pos = h % size
        while pending.size:
            free = table[pos[pending], 0] == _EMPTY
            cand = pending[free]
            if cand.size:
                # several keys may reach the same free slot at once: the first takes it
                _, first = np.unique(pos[cand], return_index=True)
                won = cand[first]
                table[pos[won], 0] = h[won]
                table[pos[won], 1] = values[won]
                placed = np.zeros(len(h), dtype=bool)
                placed[won] = True
                pending = pending[~placed[pending]]
            pos[pending] = (pos[pending] + np.uint64(1)) % size

    def _grow(self, need: int) -> None:
        old, old_mm, old_path = self.table, self._mm, self.table_path
        capacity = self.capacity
        while need > capacity * LOAD:
            capacity *= 2
        self._open_table(capacity)
        for a in range(0, len(old), 1 << 16):
            chunk = np.array(old[a:a + (1 << 16)])
            full = chunk[:, 0] != _EMPTY
            h, v = chunk[full, 0].copy(), chunk[full, 1].copy()
            for b in range(0, len(h), CHUNK):
                self._place(h[b:b + CHUNK], v[b:b + CHUNK])
                self.release()
            if hasattr(old_mm, "madvise"):
                old_mm.madvise(mmap.MADV_DONTNEED)
        del old, chunk
        old_mm.close()
        os.remove(old_path)

    def close(self) -> None:
        try:
            del self.table
            self._mm.close()
        except (AttributeError, BufferError):
            pass
        try:
            os.close(self.log_fd)
        except OSError:
            pass


class KeyIndex:
    """Keys given so far: `maybe` (vectorised, no false negatives), `contains` (exact), `add`.

    Args:
        expected: how many keys the listing will hold at most (sizes the disk table; 0: unknown).
        spill: keys held in memory before moving to the local disk.
    """

    def __init__(self, expected: int = 0, spill: int = SPILL) -> None:
        self.expected, self.spill = expected, spill
        self._mem: set[str] | None = set()
        self._disk: _DiskSet | None = None
        self._folder: str | None = None

    @property
    def on_disk(self) -> bool:
        return self._disk is not None

    def __len__(self) -> int:
        return len(self._mem) if self._mem is not None else self._disk.count  # type: ignore[union-attr]

    def maybe(self, keys: Sequence[str], h: np.ndarray) -> np.ndarray:
        if self._mem is not None:
            mem = self._mem
            return np.fromiter((k in mem for k in keys), dtype=bool, count=len(keys))
        return self._disk.maybe(h)  # type: ignore[union-attr]

    def contains(self, key: str, h: int | None = None) -> bool:
        if self._mem is not None:
            return key in self._mem
        if h is None:
            h = int(key_hashes([key])[0])
        return self._disk.contains(key, h)  # type: ignore[union-attr]

    def add(self, keys: Sequence[str], h: np.ndarray) -> None:
        """Add `keys` (distinct, none present yet)."""
        if self._mem is not None:
            self._mem.update(keys)
            if len(self._mem) > self.spill:
                self._to_disk()
            return
        self._disk.add(keys, h)  # type: ignore[union-attr]

    def release(self) -> None:
        """Call between blocks: the disk table's pages leave the resident set."""
        if self._disk is not None:
            self._disk.release()

    def _to_disk(self) -> None:
        assert self._mem is not None
        self._folder = private_folder("resize-pipeline-keys")
        log.info("key index: %d keys, moving to the local disk (%s)", len(self._mem), self._folder)
        keys = list(self._mem)
        self._disk = _DiskSet(self._folder, 2 * max(self.expected, 4 * len(keys)))
        self._mem = None
        for a in range(0, len(keys), 1 << 16):
            chunk = keys[a:a + (1 << 16)]
            self._disk.add(chunk, key_hashes(chunk))
        self._disk.release()

    def close(self) -> None:
        if self._disk is not None:
            self._disk.close()
            self._disk = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        self._mem = set()

    def __enter__(self) -> KeyIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
