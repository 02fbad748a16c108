"""The set of sample keys a listing has given so far, exact, in bounded memory (`KeyIndex`).

A key depends on the keys before it (`keys.unique_keys`: the first path keeps its plain key), so a
streaming listing must ask, for every row, "was this key given before?" over every earlier row.
Up to `SPILL` keys the answer comes from a Python set. Beyond that the set moves to the local disk,
so that the driver's memory does not grow with the listing:

- an open-addressing hash table (linear probing, at most `LOAD` full, doubled when needed) of
  16-byte slots ``(hash, where the key's text is in the log)``, written through a memory mapping
  `CHUNK` keys at a time in slot order (a contiguous stretch of it), whose pages are handed back to
  the page cache (``MADV_DONTNEED``) after each chunk, and looked up with ``pread`` (a lookup lands
  anywhere: through the mapping, each would keep a page, or a whole large folio of the page cache,
  resident), so the table is never resident beyond a chunk's stretch, however large it is;
- in front of it, in memory of a fixed size (at most `FILTER_BYTES` + 33 x `FLUSH` + 32 x `RUN_KEYS`
  bytes, ~135 MB, whatever the listing's size): a filter, three bits per key, that most new keys fail
  (no disk access for them), and the last keys added, held sorted by hash, placed into the table
  `FLUSH` at a time in slot order (a key's home slot grows with its hash, so no sort is needed then);
- a log of the keys' text (UTF-8; `keys.sanitize_key` makes them ASCII), appended once per block: a hash
  found in the table is confirmed by reading the text back (``os.pread``), so the answer is exact.

It costs the local disk ~27 bytes per key for the table plus the keys' length for the log (about
80 bytes per input for typical paths), in a temporary folder removed when the listing ends
(``TMPDIR`` chooses where; the folder of a process that was killed is removed by the next one).
"""

from __future__ import annotations

import logging
import mmap
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from itertools import pairwise

import numpy as np

log = logging.getLogger(__name__)

#: keys held in a Python set before the set moves to the local disk
SPILL = 1 << 16
#: keys placed at a time in the disk table (in slot order: a contiguous stretch of it)
CHUNK = 4096
#: slots read at a time by a lookup (one ``pread``; linear probing rarely goes further)
PROBE_SLOTS = 8
#: bytes of the in-memory filter in front of the disk table (fixed: it does not grow with the keys)
FILTER_BYTES = 64 << 20
#: keys held in memory (sorted; 32 bytes each with the merge buffers) before they go into the disk
#: table all at once, in slot order
FLUSH = 1 << 21
#: keys added last, held in small sorted runs (a block each) before they are merged into the held keys
#: (a merge costs the held keys' size: paid once per `RUN_KEYS` keys or `MAX_RUNS` blocks, not per block)
RUN_KEYS = 1 << 17
MAX_RUNS = 16
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
    """The hash table and key log on local disk (see the module docstring), with two things of a
    fixed size in memory in front of it: a filter (three bits per key: a key whose bits are not all
    set was never added, so most new keys never touch the disk table), and the keys added last, held
    sorted by hash, then placed into the table `FLUSH` at a time in slot order (a page of the table is
    touched about once per flush, not once per key). A key's home slot grows with its hash (`_slots`),
    so the held keys, sorted by hash, are already in slot order."""

    def __init__(self, folder: str, capacity: int) -> None:
        self.folder = folder
        self.log_path = os.path.join(folder, "keys.log")
        self.log_fd = os.open(self.log_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self.log_size = 0
        self.count = 0
        self._generation = 0
        self._fd: int | None = None
        self._open_table(max(1 << 16, int(capacity / LOAD) + 1))
        nbytes = int(min(FILTER_BYTES, max(1 << 16, 2 * capacity)))  # ~16 bits a key, up to the cap
        self.bits = np.zeros(nbytes, dtype=np.uint8)
        self.nbits = np.uint64(nbytes * 8)
        size = min(FLUSH, max(1 << 16, capacity))
        self._held = [np.empty(size, dtype=np.uint64) for _ in range(4)]  # hashes, values; twice (merging)
        self._mask = np.empty(size, dtype=bool)
        self.nheld = 0
        small = min(RUN_KEYS, size)
        self._recent = [np.empty(small, dtype=np.uint64), np.empty(small, dtype=np.uint64)]
        self._runs = [0]  # where each sorted run of `_recent` ends (after a leading 0)

    def _open_table(self, capacity: int) -> None:
        self._generation += 1
        path = os.path.join(self.folder, f"table-{self._generation}.bin")
        with open(path, "wb") as fh:
            fh.truncate(capacity * 16)  # sparse: zeros = empty slots
        self.table_path = path
        with open(path, "r+b") as fh:
            self._mm = mmap.mmap(fh.fileno(), capacity * 16)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(path, os.O_RDONLY)  # lookups read slots with pread: nothing mapped
        # a plain array over the mapping (numpy's memmap class costs ~0.1 ms per indexing)
        self.table = np.frombuffer(self._mm, dtype=np.uint64).reshape(capacity, 2)
        self.capacity, self.size = capacity, np.uint64(capacity)
        self._scale, self._last = capacity / 2.0**53, np.uint64(capacity - 1)

    def _slots(self, h: np.ndarray) -> np.ndarray:
        """Each hash's home slot: its top 53 bits scaled to the table, so that a larger hash never has
        a smaller slot (the held keys, sorted by hash, are placed in slot order without a sort)."""
        s = (h >> np.uint64(11)).astype(np.float64) * self._scale
        return np.minimum(s.astype(np.uint64), self._last)

    # -- the filter -------------------------------------------------------------------------------
    def _bits_of(self, h: np.ndarray) -> np.ndarray:
        """Three bit positions per hash, shape (3, n): ``h1 + i * h2`` from the hash's two halves (two
        independent hashes: a step derived from the low bits alone made the three bits a function of
        the low ``log2(bits)`` bits at the filter's cap, so that it let through ~keys/bits of new keys:
        about a quarter at 100M keys instead of ~8%)."""
        h1 = h & np.uint64(0xFFFFFFFF)
        h2 = (h >> np.uint64(32)) | np.uint64(1)
        return np.stack([(h1 + np.uint64(i) * h2) % self.nbits for i in range(3)])

    def _in_filter(self, h: np.ndarray) -> np.ndarray:
        pos = self._bits_of(h)
        got = (self.bits[(pos >> np.uint64(3)).astype(np.int64)] >> (pos & np.uint64(7)).astype(np.uint8)) & 1
        return np.asarray(got.all(axis=0), dtype=bool)

    def _to_filter(self, h: np.ndarray) -> None:
        pos = self._bits_of(h).ravel()
        np.bitwise_or.at(self.bits, (pos >> np.uint64(3)).astype(np.int64),
                         np.left_shift(1, (pos & np.uint64(7)).astype(np.uint8)).astype(np.uint8))

    # -- the keys held in memory ------------------------------------------------------------------
    @property
    def nrecent(self) -> int:
        return self._runs[-1]

    def _hold(self, h: np.ndarray, v: np.ndarray) -> None:
        """Hold (h, v): a new sorted run of the recent keys, merged into the held keys when the runs
        are full."""
        order = np.argsort(h, kind="stable")
        h, v = h[order], v[order]
        a, m = self.nrecent, len(h)
        if a + m > len(self._recent[0]) or len(self._runs) > MAX_RUNS:
            self._merge_recent()
            a = 0
        if m > len(self._recent[0]):
            self._merge(h, v)
            return
        self._recent[0][a:a + m], self._recent[1][a:a + m] = h, v
        self._runs.append(a + m)

    def _merge_recent(self) -> None:
        n = self.nrecent
        if n:
            rh, rv = self._recent[0][:n], self._recent[1][:n]
            order = np.argsort(rh, kind="stable")
            self._merge(rh[order], rv[order])
        self._runs = [0]

    def _merge(self, h: np.ndarray, v: np.ndarray) -> None:
        """Merge sorted (h, v) into the held keys, kept sorted by hash (two buffers, in turn)."""
        n, m = self.nheld, len(h)
        ch, cv, oh, ov = self._held
        pos = np.searchsorted(ch[:n], h) + np.arange(m)
        old = self._mask[:n + m]
        old[:] = True
        old[pos] = False
        oh[pos], ov[pos] = h, v
        oh[:n + m][old], ov[:n + m][old] = ch[:n], cv[:n]
        self._held = [oh, ov, ch, cv]
        self.nheld = n + m

    def _segments(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The held keys as sorted (hashes, values) segments: the merged ones, then each recent run."""
        out = [(self._held[0][:self.nheld], self._held[1][:self.nheld])]
        rh, rv = self._recent
        out += [(rh[a:b], rv[a:b]) for a, b in pairwise(self._runs)]
        return out

    def _held_hits(self, h: np.ndarray) -> np.ndarray:
        found = np.zeros(len(h), dtype=bool)
        for sh, _ in self._segments():
            found |= np.searchsorted(sh, h, side="right") > np.searchsorted(sh, h, side="left")
        return found

    def flush(self) -> None:
        """Place the held keys into the disk table, in slot order, and let their pages go."""
        self._merge_recent()
        n = self.nheld
        if not n:
            return
        if self.count > self.capacity * LOAD:
            self._grow(self.count)
        h, v = self._held[0][:n], self._held[1][:n]  # sorted by hash: in slot order
        for a in range(0, n, CHUNK):
            self._place(h[a:a + CHUNK], v[a:a + CHUNK])
            self.release()  # at most a chunk's pages resident, however large the table
        self.nheld = 0

    def release(self) -> None:
        """Hand the mapped pages back to the page cache (they leave this process's resident set)."""
        if hasattr(self._mm, "madvise"):
            self._mm.madvise(mmap.MADV_DONTNEED)

    # -- lookups --------------------------------------------------------------------------------
    def maybe(self, h: np.ndarray) -> np.ndarray:
        """Whether each hash was added (no false negatives; a hit is confirmed by `contains`)."""
        found = np.zeros(len(h), dtype=bool)
        ask = np.flatnonzero(self._in_filter(h))
        if ask.size:
            hq = h[ask]
            found[ask] = self._held_hits(hq) | self._probe(hq)
        return found

    def _probe(self, h: np.ndarray) -> np.ndarray:
        """Whether each hash is in the disk table."""
        slots = self._slots(h).tolist()
        return np.fromiter((any(True for _ in self._chain(int(hv), i)) for hv, i in zip(h.tolist(), slots,
                                                                                         strict=True)),
                           dtype=bool, count=len(h))

    def _chain(self, hv: int, i: int) -> Iterator[int]:
        """The values of the slots holding hash `hv` on its probe sequence from slot `i`, read with
        ``pread`` (a lookup lands anywhere in the table: through the mapping each one would map a
        page, or a whole large folio of the page cache, until the next release)."""
        fd, capacity = self._fd, self.capacity
        assert fd is not None
        while True:
            n = min(PROBE_SLOTS, capacity - i)
            slots = memoryview(os.pread(fd, 16 * n, 16 * i)).cast("Q")
            for k in range(0, 2 * n, 2):
                if slots[k] == hv:
                    yield slots[k + 1]
                elif slots[k] == 0:
                    return
            i = (i + n) % capacity

    def _is(self, v: int, data: bytes) -> bool:
        offset, length = v >> 16, v & 0xFFFF
        return length == len(data) and os.pread(self.log_fd, length, offset) == data

    def contains(self, key: str, h: int) -> bool:
        """Exact: some key added with hash `h` is `key` (its text read back from the log)."""
        hv = np.uint64(h)
        hs = np.asarray([hv], dtype=np.uint64)
        if not self._in_filter(hs)[0]:
            return False
        data = key.encode("utf-8", "surrogatepass")
        for sh, sv in self._segments():
            lo, hi = int(np.searchsorted(sh, hv, side="left")), int(np.searchsorted(sh, hv, side="right"))
            if any(self._is(int(sv[j]), data) for j in range(lo, hi)):
                return True
        return any(self._is(v, data) for v in self._chain(int(hv), int(self._slots(hs)[0])))

    # -- inserts --------------------------------------------------------------------------------
    def add(self, keys: Sequence[str], h: np.ndarray) -> None:
        """Add `keys` (none of them present) with their hashes `h`."""
        if not len(keys):
            return
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
        self._to_filter(h)
        room = len(self._mask)
        for a in range(0, len(h), room):
            piece = slice(a, a + room)
            if self.nheld + self.nrecent + len(h[piece]) > room:
                self.flush()
            self._hold(h[piece], values[piece])
            self.count += len(h[piece])

    def _place(self, h: np.ndarray, values: np.ndarray) -> None:
        table, size = self.table, self.size
        pending = np.arange(len(h))
        pos = self._slots(h)
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
        """A table twice as large (or more), holding what the old one held."""
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
        for fd in (self.log_fd, self._fd):
            try:
                if fd is not None:
                    os.close(fd)
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
        self._disk = _DiskSet(self._folder, max(self.expected, 4 * len(keys)))
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
