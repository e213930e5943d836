"""Tests for kd_regression.input_pipeline: batches as a pure function of (seed, step)."""

import itertools

import numpy as np
import pytest

from kd_regression import input_pipeline

N, BS = 10, 3  # 3 batches per epoch; row N % BS waits for a later epoch


def _arrays(n=N, population=None):
    x = np.arange(n, dtype=np.float32)[:, None]
    arrays = {"x": x, "y": 10 * x, "index": np.arange(n)}
    if population is not None:
        # Member m's rows are offset by 1000 m, so a row from another member is visible.
        arrays = {k: np.stack([v + 1000 * m for m in range(population)]) for k, v in arrays.items()}
    return arrays


def _take(it, k):
    return list(itertools.islice(it, k))


def _indices(step, *, n=N, seed=0, member=0):
    return input_pipeline.batch_indices(n, batch_size=BS, seed=seed, step=step, member=member)


def test_batch_indices_deterministic_and_epochs_cover_distinct_rows():
    steps = [_indices(s) for s in range(9)]
    for s, idx in enumerate(steps):
        assert idx.shape == (BS,) and np.issubdtype(idx.dtype, np.integer)
        np.testing.assert_array_equal(idx, _indices(s))
    epochs = [np.concatenate(steps[e * 3 : e * 3 + 3]) for e in range(3)]
    for rows in epochs:
        assert len(set(rows.tolist())) == 3 * BS and rows.min() >= 0 and rows.max() < N
    assert not np.array_equal(epochs[0], epochs[1])  # a fresh permutation per epoch


@pytest.mark.parametrize("other", [{"seed": 1}, {"member": 1}])
def test_batch_indices_differ_across_seeds_and_members(other):
    first = np.concatenate([_indices(s, n=100) for s in range(30)])
    second = np.concatenate([_indices(s, n=100, **other) for s in range(30)])
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("batch_size", [0, -1, N + 1])
def test_bad_batch_size_raises(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        input_pipeline.batch_indices(N, batch_size=batch_size, seed=0, step=0)
    with pytest.raises(ValueError, match="batch_size"):
        next(input_pipeline.batches(_arrays(), batch_size=batch_size, seed=0))


def test_batches_gather_rows_by_batch_indices():
    arrays = _arrays()
    for step, batch in enumerate(_take(input_pipeline.batches(arrays, batch_size=BS, seed=4), 7)):
        idx = input_pipeline.batch_indices(N, batch_size=BS, seed=4, step=step)
        assert set(batch) == set(arrays)
        for k, v in arrays.items():
            np.testing.assert_array_equal(batch[k], v[idx])
        np.testing.assert_array_equal(batch["y"], 10 * batch["x"])  # rows stay joined


@pytest.mark.parametrize("population", [None, 2])
@pytest.mark.parametrize("start", [1, 3, 5, 7])
def test_start_step_equals_skipping(start, population):
    arrays = _arrays(population=population)

    def run(start_step):
        return input_pipeline.batches(
            arrays, batch_size=BS, seed=2, start_step=start_step, population=population
        )

    skipped = _take(run(0), start + 6)[start:]
    for a, b in zip(skipped, _take(run(start), 6), strict=True):
        for k in arrays:
            np.testing.assert_array_equal(a[k], b[k])


def test_population_batches_stack_members():
    p = 3
    arrays = _arrays(population=p)
    got = _take(input_pipeline.batches(arrays, batch_size=BS, seed=1, population=p), 4)
    single = _take(input_pipeline.batches(_arrays(), batch_size=BS, seed=1), 4)
    for step, batch in enumerate(got):
        for k, v in arrays.items():
            assert batch[k].shape == (p, BS, *v.shape[2:])
            for m in range(p):
                idx = input_pipeline.batch_indices(N, batch_size=BS, seed=1, step=step, member=m)
                np.testing.assert_array_equal(batch[k][m], v[m, idx])
        np.testing.assert_array_equal(batch["x"][0], single[step]["x"])  # member 0 = no population
    orders = np.stack([np.concatenate([b["index"][m] % 1000 for b in got]) for m in range(p)])
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])


@pytest.mark.parametrize(
    "arrays, population",
    [
        ({"x": np.zeros((10, 1)), "y": np.zeros((9, 1))}, None),
        ({"x": np.zeros((2, 10, 1)), "y": np.zeros((2, 9, 1))}, 2),
        ({"x": np.zeros((2, 10, 1)), "y": np.zeros((3, 10, 1))}, 2),
        ({"x": np.zeros((3, 10, 1)), "y": np.zeros((3, 10, 1))}, 2),
        ({"x": np.zeros((2, 10, 1)), "c": np.zeros(2)}, 2),
    ],
    ids=["length", "population_length", "population_axes", "population_size", "no_example_axis"],
)
def test_mismatched_arrays_raise(arrays, population):
    with pytest.raises(ValueError):
        next(input_pipeline.batches(arrays, batch_size=2, seed=0, population=population))


@pytest.mark.parametrize("population", [None, 2])
def test_batches_do_not_depend_on_block_steps(population):
    shape = (30, 2) if population is None else (population, 30, 2)
    arrays = {"x": np.arange(np.prod(shape), dtype=np.float32).reshape(shape)}
    kwargs = dict(batch_size=4, seed=3, start_step=5, population=population)
    one = input_pipeline.batches(arrays, block_steps=1, **kwargs)
    many = input_pipeline.batches(arrays, block_steps=7, **kwargs)
    for _ in range(20):
        np.testing.assert_array_equal(next(one)["x"], next(many)["x"])


@pytest.mark.parametrize("population", [None, 3])
def test_batches_stream_from_a_teacher_store(tmp_path, population):
    from kd_regression import teacher_store

    shape = (50, 2) if population is None else (population, 50, 2)
    teacher = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    teacher_store.write(str(tmp_path), teacher, {"f": 1}, chunk_rows=8)
    store = teacher_store.open_store(str(tmp_path), {"f": 1})
    kwargs = dict(batch_size=6, seed=1, population=population, block_steps=4)
    from_disk = input_pipeline.batches({"teacher": store}, **kwargs)
    in_memory = input_pipeline.batches({"teacher": teacher}, **kwargs)
    for _ in range(25):  # several epochs
        np.testing.assert_array_equal(next(from_disk)["teacher"], next(in_memory)["teacher"])


def test_population_member_with_its_own_seed_matches_a_single_run():
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    seeds = [7, 11, 3]
    pop = input_pipeline.batches(
        {"x": np.stack([x] * 3)}, batch_size=4, seed=seeds, population=3, start_step=2
    )
    singles = [input_pipeline.batches({"x": x}, batch_size=4, seed=s, start_step=2) for s in seeds]
    for _ in range(12):
        got = next(pop)["x"]
        for m, single in enumerate(singles):
            np.testing.assert_array_equal(got[m], next(single)["x"])
    with pytest.raises(ValueError, match="2 seeds for a population of 3"):
        input_pipeline.batches({"x": np.stack([x] * 3)}, batch_size=4, seed=[1, 2], population=3)


@pytest.mark.parametrize("population", [None, 2])
def test_rows_split_every_global_batch(population):
    """Each process's rows of a batch, side by side, are the global batch."""
    arrays = _arrays(12, population)
    axis = 0 if population is None else 1
    kw = dict(batch_size=4, seed=[3, 4] if population else 3, population=population)
    whole = _take(input_pipeline.batches(arrays, start_step=5, **kw), 7)
    parts = [
        _take(input_pipeline.batches(arrays, start_step=5, rows=rows, **kw), 7)
        for rows in ((0, 2), (2, 4))
    ]
    for step, batch in enumerate(whole):
        for k, v in batch.items():
            joined = np.concatenate([p[step][k] for p in parts], axis=axis)
            np.testing.assert_array_equal(joined, v)
    assert parts[0][0]["x"].shape[axis] == 2


@pytest.mark.parametrize("rows", [(2, 2), (-1, 2), (0, 5)])
def test_bad_rows_raise(rows):
    with pytest.raises(ValueError, match=r"rows=.*batch_size=4"):
        input_pipeline.batches(_arrays(), batch_size=4, seed=0, rows=rows)


@pytest.mark.parametrize("population", [None, 2])
def test_next_block_stacks_the_next_steps(population):
    """Blocks and single steps in any mix give the per-step batches, in order."""
    arrays = _arrays(12, population)
    axis = 0 if population is None else 1
    kw = dict(batch_size=3, seed=[3, 4] if population else 3, population=population)
    whole = _take(input_pipeline.batches(arrays, start_step=2, block_steps=4, **kw), 14)
    it = input_pipeline.batches(arrays, start_step=2, block_steps=4, **kw)
    got = []
    for k in (1, 3, 5, 1, 4):  # blocks across and longer than the 4-step gather
        block = it.next_block(k)
        assert block["x"].shape[axis] == k
        got += [{key: np.take(v, i, axis=axis) for key, v in block.items()} for i in range(k)]
    for a, b in zip(whole, got, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize(
    "key, where, value, population, message",
    [
        ("x", (7, 0), np.nan, None, r"arrays\['x'\] row 7 holds nan"),
        ("y", (3, 0), -np.inf, None, r"arrays\['y'\] row 3 holds -inf"),
        ("teacher", (1, 6, 0), np.inf, 2, r"arrays\['teacher'\] row 6 of member 1 holds inf"),
    ],
)
def test_non_finite_values_are_refused_naming_key_and_first_row(
    key, where, value, population, message
):
    arrays = _arrays(population=population)
    arrays["teacher"] = arrays["y"] + 1
    arrays[key] = arrays[key].copy()
    arrays[key][where] = value
    later = (*where[:-2], where[-2] + 1, where[-1])  # a second bad row: the first is named
    arrays[key][later] = np.nan
    with pytest.raises(ValueError, match=message):
        input_pipeline.batches(arrays, batch_size=BS, seed=0, population=population)


def test_non_finite_check_spans_blocks_and_leaves_other_arrays_alone(monkeypatch):
    monkeypatch.setattr(input_pipeline, "_CHECK_ELEMENTS", 4)  # 2 rows of 2 per block
    x = np.zeros((9, 2), np.float32)
    x[8, 1] = np.nan  # in the last, partial block
    with pytest.raises(ValueError, match=r"arrays\['x'\] row 8 holds nan"):
        input_pipeline.batches({"x": x}, batch_size=2, seed=0)
    x[8, 1] = 0.0
    strided = np.zeros((9, 4), np.float32)[:, ::2]
    strided[2, 1] = np.inf
    with pytest.raises(ValueError, match=r"arrays\['x'\] row 2 holds inf"):
        input_pipeline.batches({"x": strided}, batch_size=2, seed=0)

    class Store:  # a teacher store stand-in that records every read
        shape, ndim, reads = (9, 1), 2, []

        def __getitem__(self, key):
            self.reads.append(key)
            return np.full((len(key), 1), np.nan, np.float32)

    store = Store()
    it = input_pipeline.batches({"x": x, "teacher": store, "i": np.arange(9)}, batch_size=2, seed=0)
    assert store.reads == []  # not read, so not checked, at construction
    next(it)
    assert len(store.reads) == 1


def test_arrays_with_different_row_counts_name_each_size():
    arrays = {"x": np.zeros((10, 1), np.float32), "y": np.zeros((9, 1), np.float32)}
    with pytest.raises(
        ValueError, match=r"share their example axis 0; got sizes \{'x': 10, 'y': 9\}"
    ):
        input_pipeline.batches(arrays, batch_size=2, seed=0)
