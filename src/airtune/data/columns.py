"""Columns of token ids kept flat (one values array + lengths), so that splitting, packing and writing
Arrow never goes through a Python list per token."""

from __future__ import annotations

import numpy as np


class IntLists:
    """A column whose rows are lists of int32: `values` back to back, `lengths` per row."""

    __slots__ = ("values", "lengths")

    def __init__(self, values: np.ndarray, lengths: np.ndarray):
        self.values = np.asarray(values, dtype=np.int32)
        self.lengths = np.asarray(lengths, dtype=np.int64)

    @classmethod
    def from_lists(cls, rows: list[list[int]]) -> IntLists:
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        if len(rows) == 0:
            return cls(np.zeros(0, np.int32), lengths)
        values = np.fromiter((x for r in rows for x in r), dtype=np.int32, count=int(lengths.sum()))
        return cls(values, lengths)

    @classmethod
    def concat(cls, parts: list[IntLists]) -> IntLists:
        if not parts:
            return cls(np.zeros(0, np.int32), np.zeros(0, np.int64))
        return cls(np.concatenate([p.values for p in parts]), np.concatenate([p.lengths for p in parts]))

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def offsets(self) -> np.ndarray:
        out = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=out[1:])
        return out

    def take(self, idx) -> IntLists:
        """Rows `idx`, in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        lengths = self.lengths[idx]
        total = int(lengths.sum())
        if total == 0:
            return IntLists(np.zeros(0, np.int32), lengths)
        starts = self.offsets[:-1][idx]
        new_starts = np.zeros(len(idx), dtype=np.int64)
        np.cumsum(lengths[:-1], out=new_starts[1:])
        gather = np.repeat(starts - new_starts, lengths) + np.arange(total, dtype=np.int64)
        return IntLists(self.values[gather], lengths)

    def regroup(self, row_lengths) -> IntLists:
        """The same values cut into rows of `row_lengths` (which must sum to the total)."""
        row_lengths = np.asarray(row_lengths, dtype=np.int64)
        assert int(row_lengths.sum()) == len(self.values)
        return IntLists(self.values, row_lengths)

    def row(self, i: int) -> list[int]:
        o = self.offsets
        return self.values[o[i]:o[i + 1]].tolist()

    def to_arrow(self):
        import pyarrow as pa

        offsets = self.offsets
        values = pa.array(self.values, type=pa.int32())
        if offsets[-1] > np.iinfo(np.int32).max:
            return pa.LargeListArray.from_arrays(pa.array(offsets, type=pa.int64()), values)
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32), type=pa.int32()), values)


def positions(example_lengths: np.ndarray) -> np.ndarray:
    """0, 1, ... restarting at each example: the position_ids of examples laid back to back."""
    example_lengths = np.asarray(example_lengths, dtype=np.int64)
    total = int(example_lengths.sum())
    starts = np.zeros(len(example_lengths), dtype=np.int64)
    np.cumsum(example_lengths[:-1], out=starts[1:])
    return (np.arange(total, dtype=np.int64) - np.repeat(starts, example_lengths)).astype(np.int32)


def best_fit_decreasing(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Bins of example indices, each summing to at most `capacity` tokens (longest first, tightest bin).

    Deterministic: ties are broken by the example's index. Inside a bin the examples keep the order
    they were placed in (longest first).
    """
    import bisect

    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    remaining: list[tuple[int, int]] = []  # (room left, bin id), sorted
    bins: list[list[int]] = []
    for i in order:
        n = int(lengths[i])
        k = bisect.bisect_left(remaining, (n, -1))
        if k == len(remaining):
            bins.append([i])
            room, b = capacity - n, len(bins) - 1
        else:
            room, b = remaining.pop(k)
            bins[b].append(i)
            room -= n
        bisect.insort(remaining, (room, b))
    return bins
