"""One tenant's cached hashes for the near tier, in compact arrays: window pHashes,
sequence numbers and ids (16 bytes for a uuid hex), grown geometrically; deleted slots
marked dead and compacted now and then, never a reload (``deeplens.hash_index``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

_HEX = frozenset("0123456789abcdef")
INDEX_FROM = 50_000  # rows: below, scanning the whole-image column is as fast


class TenantHashes:
    """One tenant's near-tier hashes, compact: per stored image its window hashes
    (8 bytes each), its id in 16 bytes (a uuid hex id; any other id also in a small
    side dict), its ``seq`` and a live flag: ~420 bytes for 49 windows. Rows are kept
    in the order they were read, which is ``seq`` order except for a row that committed
    late (found by an overlap sweep); ``seqs`` stays non-decreasing so a row is found
    by its ``seq`` with a binary search, and late rows are also kept in ``late``."""

    GROWTH = 1.5  # amortised growth: each row is copied a bounded number of times

    def __init__(self, width: int) -> None:
        self.width = width
        self.n = 0  # slots used (alive or dead)
        self.dead = 0
        self.generation = 0  # bumped when slots move (compact): slot numbers held across it are stale
        self.windows = np.empty((0, width), dtype=np.uint64)
        self.keys = np.empty((0, 16), dtype=np.uint8)
        self.seqs = np.empty(0, dtype=np.int64)
        self.alive = np.empty(0, dtype=bool)
        self.odd: dict[int, str] = {}  # slot -> an id that is not 32 hex digits
        self.late: dict[int, int] = {}  # seq -> slot of a row appended out of seq order
        self.last_seq = 0
        self.swept_at = float("-inf")  # monotonic time of the last overlap sweep
        self._whole: Any = None  # MultiIndex over the whole-image hashes of slots < _indexed
        self._indexed = 0

    def __len__(self) -> int:
        return self.n - self.dead

    def nbytes(self) -> int:
        """Resident bytes: the rows in use (capacity past them is allocated but untouched,
        so the operating system has given it no memory) and the side dicts."""
        per_row = self.width * 8 + 16 + 8 + 1
        index = self._whole.nbytes() if self._whole is not None else 0
        return per_row * self.n + 120 * (len(self.odd) + len(self.late)) + index

    def whole_within(self, phash: np.ndarray, radius: int) -> np.ndarray:
        """Slots (alive or dead) whose whole-image pHash is within ``radius`` of ``phash``,
        ascending: the near tier with the windows off. Past ``INDEX_FROM`` rows through a
        multi-index (``deeplens.hash_mih``: 0.27 ms at 1M against 45 ms for the scan,
        benchmarks/near_lookup_bench.py), rebuilt once the rows appended since pass an
        eighth of it; those are scanned."""
        from deeplens.hash_mih import MultiIndex

        if self.n < INDEX_FROM:
            column = self.windows[: self.n, 0]
            return np.flatnonzero(np.bitwise_count(column ^ phash) <= radius)
        if self._whole is None or self.n - self._indexed > max(4096, self._indexed // 8):
            self._whole = MultiIndex(self.windows[: self.n, 0].copy(), parts=4)
            self._indexed = self.n
        tail = self.windows[self._indexed : self.n, 0]
        found = self._whole.search(np.array([phash], dtype=np.uint64), radius)
        return np.concatenate([found, self._indexed + np.flatnonzero(
            np.bitwise_count(tail ^ phash) <= radius)])

    def append(self, seqs: np.ndarray, ids: Sequence[str], windows: np.ndarray) -> None:
        count = len(seqs)
        if not count:
            return
        self._reserve(self.n + count)
        start, stop = self.n, self.n + count
        self.windows[start:stop] = windows
        self.alive[start:stop] = True
        for offset, image_id in enumerate(ids):
            if len(image_id) == 32 and _HEX.issuperset(image_id):
                self.keys[start + offset] = np.frombuffer(bytes.fromhex(image_id), np.uint8)
            else:
                self.keys[start + offset] = 0
                self.odd[start + offset] = image_id
        floor = int(self.seqs[start - 1]) if start else 0
        for offset, seq in enumerate(seqs.tolist()):  # keep the column non-decreasing
            if seq < floor:
                self.late[seq] = start + offset
                seq = floor
            self.seqs[start + offset] = floor = seq
        self.n = stop
        self.last_seq = max(self.last_seq, int(seqs.max()))

    def _reserve(self, rows: int) -> None:
        if rows <= len(self.alive):
            return
        capacity = max(rows, int(len(self.alive) * self.GROWTH), 1024)
        for name in ("windows", "keys", "seqs", "alive"):
            old = getattr(self, name)
            new = np.empty((capacity, *old.shape[1:]), dtype=old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

    def image_id(self, slot: int) -> str:
        odd = self.odd.get(slot)
        return odd if odd is not None else self.keys[slot].tobytes().hex()

    def slots_of(self, seqs: Sequence[int]) -> np.ndarray:
        """The slot holding each of ``seqs`` (-1 where none): a binary search each."""
        wanted = np.asarray(seqs, dtype=np.int64)
        column = self.seqs[: self.n]
        found = np.searchsorted(column, wanted)
        inside = found < self.n
        hit = np.zeros(len(wanted), dtype=bool)
        hit[inside] = column[found[inside]] == wanted[inside]
        out = np.where(hit, found, -1)
        for i, seq in enumerate(wanted.tolist()):
            slot = self.late.get(seq)
            if slot is not None:
                out[i] = slot
            elif out[i] >= 0 and int(out[i]) in self.late.values():  # a late row's stand-in
                out[i] = -1
        return out

    def kill(self, slots: Iterable[int]) -> None:
        for slot in slots:
            if 0 <= slot < self.n and self.alive[slot]:
                self.alive[slot] = False
                self.dead += 1
        if self.dead > max(1024, self.n // 4):
            self.compact()

    def compact(self) -> None:
        """Drop dead slots (rare: a quarter of the rows dead), keeping the order."""
        keep = np.flatnonzero(self.alive[: self.n])
        remap = {int(old): new for new, old in enumerate(keep.tolist())
                 if int(old) in self.odd or int(old) in self.late.values()}
        self.odd = {remap[s]: i for s, i in self.odd.items() if s in remap}
        self.late = {q: remap[s] for q, s in self.late.items() if s in remap}
        for name in ("windows", "keys", "seqs", "alive"):
            column = getattr(self, name)
            column[: len(keep)] = column[keep]
        self.n, self.dead = len(keep), 0
        self.generation += 1
        self._whole, self._indexed = None, 0  # slots moved: rebuilt when next asked


def windows_of(phash: int, windows: bytes | None) -> np.ndarray:
    from deeplens.image_hashes import WINDOWS

    if windows:
        return np.frombuffer(windows, dtype=">u8").astype(np.uint64)
    # A row from before window hashes: its whole-image pHash stands in for every window.
    return np.full(len(WINDOWS), np.uint64(phash & 0xFFFFFFFFFFFFFFFF), dtype=np.uint64)


def append_rows(cached: TenantHashes, rows: Sequence[Any]) -> None:
    """Add a page of (seq, image_id, phash, windows) rows, decoded in bulk."""
    if not rows:
        return
    width = cached.width
    full = [r[3] is not None and len(r[3]) == 8 * width for r in rows]
    if all(full):
        windows = np.frombuffer(b"".join(r[3] for r in rows), dtype=">u8").astype(np.uint64)
        windows = windows.reshape(len(rows), width)
    else:  # rows from before window hashes: the whole-image pHash stands for every window
        phashes = np.fromiter((int(r[2]) for r in rows), dtype=np.int64, count=len(rows))
        windows = np.repeat(phashes.view(np.uint64)[:, None], width, axis=1)
        for i in np.flatnonzero(full).tolist():
            windows[i] = windows_of(int(rows[i][2]), rows[i][3])
    cached.append(np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)),
                  [r[1] for r in rows], windows)
