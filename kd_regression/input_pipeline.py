"""Batches from arrays (in memory or a teacher store), a pure function of (seed, step).

The batch at step ``i`` depends only on the seed and ``i``: each epoch is a fresh
permutation drawn from ``(seed, epoch)``, so a run resumed at step ``i`` sees exactly the
batches an uninterrupted run would, and a population gets one independent shuffle per
member. Arrays are joined by row: row ``i`` of every array is example ``i`` (its stable
index), so teacher predictions stored by example index line up with their examples
whatever the shuffle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def _permutation(seed: int, member: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, member, epoch]).permutation(n)


def _check_batch_size(batch_size: int, n: int) -> None:
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size={batch_size} must be in [1, n={n}] (the split size)")


def batch_indices(n: int, *, batch_size: int, seed: int, step: int, member: int = 0) -> np.ndarray:
    """Row indices ``[batch_size]`` of the batch at ``step`` (0-based) for one member.

    An epoch is ``n // batch_size`` batches without replacement; the last ``n % batch_size``
    rows of each epoch's permutation are left out of that epoch (every batch has the same
    shape, so the train step compiles once; the next epoch is a fresh permutation).
    """
    _check_batch_size(batch_size, n)
    per_epoch = n // batch_size
    epoch, pos = divmod(step, per_epoch)
    perm = _permutation(seed, member, epoch, n)
    return perm[pos * batch_size : (pos + 1) * batch_size]


def batches(
    arrays: Mapping[str, np.ndarray],
    *,
    batch_size: int,
    seed: int | Sequence[int],
    start_step: int = 0,
    population: int | None = None,
    block_steps: int = 16,
    rows: tuple[int, int] | None = None,
) -> Batches:
    """Endless batches from ``start_step`` on: a dict of the same keys, rows gathered.

    Args:
      arrays: equal-length arrays ``[n, ...]``, or with ``population`` ``[P, n, ...]``.
      seed: the shuffle's seed; for a population, one seed per member (member ``m`` then
        sees the batches of a single run with ``seed[m]``), or one int for all (member
        ``m`` shuffles with ``(seed, m)``).
      population: number of members ``P``; each member gets its own shuffle.
      block_steps: rows of this many steps are gathered at once (one read of a store-backed
        array instead of one per step); the batches do not depend on it.
      rows: ``(start, stop)``: yield (and read) only these rows of every global batch,
        e.g. this process's part, :func:`kd_regression.sharding.process_rows`; the global
        batches, and so the training, do not depend on how they are split.

    Arrays may be anything with ``shape``, ``ndim`` and NumPy outer indexing, e.g. a
    :class:`kd_regression.teacher_store.TeacherStore` read from disk as it goes. Bad
    arguments raise here, not at the first ``next``: among them a NaN or infinity in a
    float NumPy array (the error names the key and the first bad row; a store refuses
    non-finite rows itself when it is written). The iterator's ``next_block(k)``
    gives the next ``k`` steps' batches stacked (what ``loop.fit`` runs in one call).
    """
    axis = 0 if population is None else 1
    sizes = {k: v.shape[axis] if v.ndim > axis else None for k, v in arrays.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise ValueError(f"arrays must share their example axis {axis}; got sizes {sizes}")
    if population is not None:
        bad = {k: v.shape for k, v in arrays.items() if v.shape[0] != population}
        if bad:
            raise ValueError(f"population={population} but arrays have leading axes {bad}")
    for k, v in arrays.items():
        _check_finite(k, v, population is not None)
    n = next(iter(sizes.values()))
    _check_batch_size(batch_size, n)
    if np.ndim(seed) == 0:
        members = [(int(seed), m) for m in range(population or 1)]
    else:
        members = [(int(s), 0) for s in seed]
        if len(members) != (population or 1):
            raise ValueError(f"{len(members)} seeds for a population of {population or 1}")
    if block_steps < 1:
        raise ValueError(f"block_steps must be >= 1, got {block_steps}")
    lo, hi = (0, batch_size) if rows is None else rows
    if not 0 <= lo < hi <= batch_size:
        raise ValueError(f"rows={rows}: need 0 <= start < stop <= batch_size={batch_size}")
    return Batches(arrays, n, batch_size, members, start_step, population, block_steps, lo, hi)


_CHECK_ELEMENTS = 1 << 22  # elements per isfinite pass: 4 MiB of booleans at a time


def _check_finite(key: str, value, population: bool) -> None:
    """A ValueError naming ``key`` and its first row holding NaN or inf.

    One pass over the array, a block of rows at a time (about 50 ms per GB on one CPU
    core, no copy of the array); arrays that are not float NumPy arrays (integers, a
    teacher store read as it goes) are left alone.
    """
    if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating):
        return
    if value.size == 0:
        return
    for m, member in enumerate(value if population else value[None]):
        step = max(1, _CHECK_ELEMENTS // member[:1].size)
        for start in range(0, len(member), step):
            block = member[start : start + step]  # a view, whatever the strides
            finite = np.isfinite(block).reshape(len(block), -1).all(axis=1)
            if finite.all():
                continue
            row = start + int(np.argmin(finite))
            values = member[row].reshape(-1)
            at = f"row {row}" + (f" of member {m}" if population else "")
            raise ValueError(
                f"arrays[{key!r}] {at} holds {values[~np.isfinite(values)][0]}: inputs, labels "
                "and teacher outputs must be finite (a NaN or inf would poison every training "
                "step that draws the row)"
            )


class Batches:
    """The iterator :func:`batches` returns: per-step batches, or ``next_block(k)``.

    Rows are gathered for several steps at once into a buffer ``[steps, rows, ...]`` (a
    population's ``[P, steps, rows, ...]``); a step's batch, and a block of ``k`` steps,
    are views of it, so a block costs no copy beyond the gather.
    """

    def __init__(self, arrays, n, batch_size, members, start_step, population, block_steps, lo, hi):
        self._arrays, self._members, self._population = arrays, members, population
        self._per_epoch, self._batch_size, self._n = n // batch_size, batch_size, n
        self._block_steps, self._lo, self._hi = block_steps, lo, hi
        self._perms: dict[tuple[int, int], np.ndarray] = {}
        self._step = self._buffer_start = start_step
        self._buffer: dict[str, np.ndarray] = {}
        self._buffer_steps = 0

    def _indices(self, m: int, step: int) -> np.ndarray:
        epoch, pos = divmod(step, self._per_epoch)
        if (m, epoch) not in self._perms:
            if len(self._perms) > 2 * len(self._members):
                self._perms.clear()  # keeps memory bounded; permutations are cheap to redraw
            self._perms[(m, epoch)] = _permutation(*self._members[m], epoch, self._n)
        start = pos * self._batch_size
        return self._perms[(m, epoch)][start + self._lo : start + self._hi]

    def _fill(self, steps: int) -> None:
        """Gathers the rows of ``steps`` steps from the current one (one read of a
        store-backed array instead of one per step)."""
        first, rows = self._step, self._hi - self._lo
        idx = [
            np.concatenate([self._indices(m, s) for s in range(first, first + steps)])
            for m in range(len(self._members))
        ]
        buffer = {}
        for k, v in self._arrays.items():
            if self._population is None:
                b = np.asarray(v[idx[0]])
                buffer[k] = b.reshape(steps, rows, *b.shape[1:])
            else:
                b = np.stack([v[m, i] for m, i in enumerate(idx)])
                buffer[k] = b.reshape(b.shape[0], steps, rows, *b.shape[2:])
        self._buffer, self._buffer_start, self._buffer_steps = buffer, first, steps

    def next_block(self, k: int) -> dict[str, np.ndarray]:
        """The next ``k`` steps' batches stacked on the step axis (0; 1 for a population)."""
        if self._step + k > self._buffer_start + self._buffer_steps:
            self._fill(max(k, self._block_steps))
        i = self._step - self._buffer_start
        self._step += k
        if self._population is None:
            return {key: b[i : i + k] for key, b in self._buffer.items()}
        return {key: b[:, i : i + k] for key, b in self._buffer.items()}

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        block = self.next_block(1)
        return {key: b[0] if self._population is None else b[:, 0] for key, b in block.items()}
