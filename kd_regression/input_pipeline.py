"""Batches from arrays (in memory or a teacher store), a pure function of (seed, step).

The batch at step ``i`` depends only on the seed and ``i``: each epoch is a fresh
permutation drawn from ``(seed, epoch)``, so a run resumed at step ``i`` sees exactly the
batches an uninterrupted run would, and a population gets one independent shuffle per
member. Arrays are joined by row: row ``i`` of every array is example ``i`` (its stable
index), so teacher predictions stored by example index line up with their examples
whatever the shuffle.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np


def _permutation(seed: int, member: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, member, epoch]).permutation(n)


def batch_indices(n: int, *, batch_size: int, seed: int, step: int, member: int = 0) -> np.ndarray:
    """Row indices ``[batch_size]`` of the batch at ``step`` (0-based) for one member.

    An epoch is ``n // batch_size`` batches without replacement; the last ``n % batch_size``
    rows of each epoch's permutation are left out of that epoch (every batch has the same
    shape, so the train step compiles once; the next epoch is a fresh permutation).
    """
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size={batch_size} must be in [1, n={n}] (the split size)")
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
) -> Iterator[dict[str, np.ndarray]]:
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
    arguments raise here, not at the first ``next``.
    """
    axis = 0 if population is None else 1
    sizes = {k: v.shape[axis] if v.ndim > axis else None for k, v in arrays.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise ValueError(f"arrays must share their example axis {axis}; got sizes {sizes}")
    if population is not None:
        bad = {k: v.shape for k, v in arrays.items() if v.shape[0] != population}
        if bad:
            raise ValueError(f"population={population} but arrays have leading axes {bad}")
    n = next(iter(sizes.values()))
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size={batch_size} must be in [1, n={n}] (the split size)")
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
    return _batches(arrays, n, batch_size, members, start_step, population, block_steps, lo, hi)


def _batches(arrays, n, batch_size, members, start_step, population, block_steps, lo, hi):
    per_epoch = n // batch_size
    local = hi - lo
    perms: dict[tuple[int, int], np.ndarray] = {}

    def indices(m: int, step: int) -> np.ndarray:
        epoch, pos = divmod(step, per_epoch)
        if (m, epoch) not in perms:
            if len(perms) > 2 * len(members):
                perms.clear()  # keeps memory bounded; permutations are cheap to redraw
            perms[(m, epoch)] = _permutation(*members[m], epoch, n)
        return perms[(m, epoch)][pos * batch_size + lo : pos * batch_size + hi]

    step = start_step
    while True:
        # One gather for several steps: a store-backed array pays its per-read overhead once.
        idx = {
            m: np.concatenate([indices(m, s) for s in range(step, step + block_steps)])
            for m in range(len(members))
        }
        if population is None:
            block = {k: np.asarray(v[idx[0]]) for k, v in arrays.items()}
        else:
            block = {k: np.stack([v[m, idx[m]] for m in idx]) for k, v in arrays.items()}
        for i in range(block_steps):
            part = slice(i * local, (i + 1) * local)
            yield {k: b[part] if population is None else b[:, part] for k, b in block.items()}
        step += block_steps
