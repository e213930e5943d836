"""The training loop: ``fit`` runs train steps with logs, evaluations, early stopping and
checkpoints, in the shape of big_vision's and the Flax examples' loops.

Its pieces live beside it, each small: the early-stopping record
(:class:`EarlyStopping`), the window of per-step metrics with its non-finite guard
(:mod:`kd_regression.metric_window`), the verified checkpoints
(:mod:`kd_regression.checkpoints`), and the batches, which come as blocks of steps
(:class:`BlockIterator`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh

from kd_regression import checkpoints, interrupts, sharding, writers
from kd_regression.metric_window import MetricWindow
from kd_regression.train import Batch, Metrics, TrainState

__all__ = [
    "BlockIterator",
    "EarlyStopping",
    "FitResult",
    "StackedBatches",
    "check_intervals",
    "fit",
    "load_trained",
]

Step = Callable[[TrainState, Batch], tuple[TrainState, Metrics]]


class BlockIterator(Protocol):
    """Batches step by step (``next``), or ``k`` steps' batches stacked (``next_block``).

    :class:`kd_regression.input_pipeline.Batches` is one; :func:`fit` wraps any other
    iterator of batches in :class:`StackedBatches`.
    """

    def __next__(self) -> Batch: ...

    def next_block(self, k: int) -> Batch | None:
        """The next ``k`` steps' batches stacked, or None if fewer than ``k`` are left
        (those are then still given by ``next``)."""


class StackedBatches:
    """A :class:`BlockIterator` over an iterator of per-step batches (stacked on ``axis``)."""

    def __init__(self, batches: Iterator[Batch], axis: int):
        self._it, self._axis, self._left = iter(batches), axis, []

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        return self._left.pop(0) if self._left else next(self._it)

    def next_block(self, k: int) -> Batch | None:
        steps = self._left + list(itertools.islice(self._it, k - len(self._left)))
        if len(steps) < k:
            self._left = steps
            return None
        self._left = []
        return {key: np.stack([b[key] for b in steps], axis=self._axis) for key in steps[0]}


def _block_iterator(batches: Iterator[Batch], axis: int) -> BlockIterator:
    # Imported here: input_pipeline knows nothing of the loop.
    from kd_regression.input_pipeline import Batches

    return batches if isinstance(batches, Batches) else StackedBatches(batches, axis)


class FitResult(NamedTuple):
    state: TrainState  # the best state by validation loss (the last one without eval_fn)
    last_state: TrainState
    best_val: np.ndarray | None  # best validation loss, per population member
    best_step: np.ndarray | None
    steps_run: int


@dataclasses.dataclass
class EarlyStopping:
    """The best state per population member, and when to stop (``patience`` evaluations
    without improvement of any member; None: never)."""

    patience: int | None
    best: Any = None  # never an alias of the live state, whose buffers a step donates
    best_val: np.ndarray | None = None
    best_step: np.ndarray | None = None
    since_best: int = 0
    stopped: bool = False

    def update(self, step: int, val: np.ndarray, state: TrainState) -> None:
        """Records one evaluation's validation loss ``val`` (scalar or ``[P]``)."""
        if self.best_val is None:
            self.best_val = np.full_like(val, np.inf)
            self.best_step = np.zeros(val.shape, np.int64)
        improved = val < self.best_val
        self.best = _select_members(improved, state, state if self.best is None else self.best)
        self.best_val = np.where(improved, val, self.best_val)
        self.best_step = np.where(improved, step, self.best_step)
        self.since_best = 0 if improved.any() else self.since_best + 1
        self.stopped = self.patience is not None and self.since_best >= self.patience

    def record(self, state: TrainState) -> dict[str, Any]:
        """What a checkpoint saves of it (beside the best state)."""
        aux = _aux_template(state)
        aux.update(since_best=self.since_best, stopped=self.stopped)
        if self.best_val is not None:
            aux.update(best_val=self.best_val, best_step=self.best_step)
        return aux

    def restore(self, best: TrainState, aux: Mapping[str, Any], *, with_best: bool) -> None:
        """Takes back a checkpoint's record (without evaluations the best is the last)."""
        self.stopped = bool(aux["stopped"])
        if with_best:
            self.best = best
            self.best_val, self.best_step = (
                np.asarray(aux["best_val"]),
                np.asarray(aux["best_step"]),
            )
            self.since_best = int(aux["since_best"])


class _Progress:
    """Steps per second and the time left, for the log line.

    CLU's ``periodic_actions.ReportProgress`` does this too, but it writes its rates into
    the metric files (and CLU imported TensorFlow, seconds for every fit).
    """

    # Without --verbose (writers.verbose()), a fit logs its progress at most this often: a
    # fit of a few seconds says nothing until it ends, a teacher of many minutes keeps
    # saying where it is.
    QUIET_INTERVAL_S = 30.0

    def __init__(self, start: int, num_steps: int):
        self.start, self.num_steps, self.t0 = start, num_steps, time.time()
        self._shown = self.t0

    def due(self) -> bool:
        """Whether a log step's line is shown: always when verbose, else every 30 s."""
        now = time.time()
        if writers.verbose() or now - self._shown >= self.QUIET_INTERVAL_S:
            self._shown = now
            return True
        return False

    def line(self, step: int) -> str:
        rate = (step - self.start) / max(time.time() - self.t0, 1e-9)
        eta = (self.num_steps - step) / rate
        return f"step {step}/{self.num_steps}, {rate:.0f} steps/s, ETA {eta:.0f}s"

    def elapsed(self) -> float:
        return time.time() - self.t0


def check_intervals(**values: int) -> None:
    """A ValueError naming the first of ``values`` (step counts and intervals) below 1."""
    for arg, value in values.items():
        if value < 1:
            raise ValueError(f"{arg}={value}: must be >= 1")


def fit(
    state: TrainState,
    train_step: Step,
    batches: Callable[[int], Iterator[Batch]],
    *,
    num_steps: int,
    eval_fn: Callable[[TrainState], jax.Array] | None = None,
    eval_every: int = 100,
    patience: int | None = None,
    writer: Any = None,
    checkpoint_dir: str | None = None,
    checkpoint_every: int | None = None,
    log_every: int = 100,
    name: str = "train",
    mesh: Mesh | None = None,
    batch_axis: int = 0,
    multi_step: Step | None = None,
    steps_per_call: int = 1,
    keep_checkpoints: int = 2,
) -> FitResult:
    """Runs ``train_step`` for ``num_steps``, keeping the state with the best validation loss.

    Args:
      state: initial state, optionally with a leading population axis.
      train_step: jitted (and for a population vmapped) step from
        :func:`kd_regression.train.make_train_step`.
      batches: ``batches(start_step)`` yields the batches from ``start_step`` on, so a run
        restored from a checkpoint continues on the same data: an
        :class:`kd_regression.input_pipeline.Batches` (which stacks blocks of steps
        itself) or any iterator of batches.
      eval_fn: ``state -> validation loss`` (scalar, or ``[P]`` for a population); without
        it there is no early stopping and the last state is returned.
      patience: stop after this many evaluations without improvement of every member
        (``None``: run all steps; the best state is still returned).
      checkpoint_dir: orbax checkpoints of (state, best state, early-stopping record)
        every ``checkpoint_every`` steps (default ``eval_every``), at the last step and at
        an early stop; a run with a checkpoint there resumes from it (a finished or
        early-stopped run returns at once). Each checkpoint carries digests of its arrays
        and files, checked on restore; a damaged one is set aside with a warning and the
        one before it used (:mod:`kd_regression.checkpoints`).
      keep_checkpoints: how many of the latest checkpoints are kept on disk.
      mesh: data-parallel training over this mesh (:mod:`kd_regression.sharding`): the
        state is replicated on it and every batch split along ``batch_axis`` (1 for a
        population ``[P, B, ...]``); ``train_step`` must be jitted with the same shardings
        (:func:`kd_regression.sharding.data_parallel`). With several processes, ``batches``
        yields this process's rows of each global batch. The returned states are then
        replicated arrays on the mesh (:func:`kd_regression.sharding.local_copy` gives
        one-device copies); ``eval_fn`` receives them as they are.
      multi_step: ``steps_per_call`` steps in one call
        (:func:`kd_regression.train.make_multi_step`, jitted like ``train_step``), on the
        steps' batches stacked on ``batch_axis`` (so each batch's example axis moves to
        ``batch_axis + 1``); used wherever no log, evaluation or checkpoint falls inside the
        block, so the results are those of single steps. Fewer calls: small models are no
        longer bound by dispatch.

    Raises:
      NonFiniteError: a step's loss or gradient was NaN or infinite (its update was not
        applied). Every step's metrics are checked at each log, evaluation and checkpoint,
        so no checkpoint holds a state from that step on; the error names the step, the
        metrics and members that went bad, and the last good checkpoint, which is kept.
      CheckpointWriteError: a checkpoint could not be written (e.g. the disk is full; an
        asynchronous save's failure is raised too, at the latest when ``fit`` returns).
        The previous checkpoint is kept, and a rerun resumes from it.
    """
    check_intervals(
        num_steps=num_steps,
        eval_every=eval_every,
        log_every=log_every,
        checkpoint_every=checkpoint_every or 1,
        steps_per_call=steps_per_call,
    )
    checkpoint_every = checkpoint_every or eval_every
    in_mesh, place, place_block = _placement(mesh, batch_axis)
    if mesh is not None:
        state = sharding.replicate(state, mesh)
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = checkpoints.Checkpoints(checkpoint_dir, name=name, max_to_keep=keep_checkpoints)
    stopping = EarlyStopping(patience)
    window = MetricWindow(name, batch_axis, ckpt)
    step = int(np.max(jax.device_get(state.step)))
    failed, interrupted = False, None
    try:
        if ckpt is not None:
            step, state = _resume(ckpt, state, stopping, with_best=eval_fn is not None, step=step)
        progress = _Progress(step, num_steps)
        it = _block_iterator(batches(step) if not stopping.stopped else iter(()), batch_axis)
        events = [log_every, *([eval_every] if eval_fn is not None else [])]
        events += [checkpoint_every] if ckpt is not None else []
        k = steps_per_call if multi_step is not None else 1
        while step < num_steps:
            interrupts.check()  # a signal whose exception some library swallowed
            # Up to the next log, evaluation, checkpoint or the end, in calls of k steps.
            boundary = min(num_steps, *((step // e + 1) * e for e in events))
            block = it.next_block(k) if k > 1 and boundary - step >= k else None
            batch = next(it, None) if block is None else None
            if block is None and batch is None:
                break  # the batches ran out
            with in_mesh():  # the step's computation, under jax.set_mesh with a mesh
                if block is not None:
                    state, metrics = multi_step(state, place_block(block))
                    window.add(metrics, k)
                    step += k
                else:
                    state, metrics = train_step(state, place(batch))
                    window.add(metrics, None)
                    step += 1
            last = step == num_steps
            if step % log_every == 0 or last:
                scalars = window.summary(step)
                if writer is not None:
                    writer.write_scalars(step, {f"{name}/{key}": v for key, v in scalars.items()})
                if progress.due():
                    logging.info("%s: %s, loss %.4g", name, progress.line(step), scalars["loss"])
            if eval_fn is not None and (step % eval_every == 0 or last):
                window.check(step)  # no evaluation of a state that went non-finite
                val = np.asarray(jax.device_get(eval_fn(state)), np.float64)
                window.check_validation(step, val)
                stopping.update(step, val, state)
                if writer is not None:
                    writer.write_scalars(step, {f"{name}/val_loss": float(np.mean(val))})
            if ckpt is not None and (step % checkpoint_every == 0 or last or stopping.stopped):
                window.check(step)  # a checkpoint never holds a state that went non-finite
                best = state if stopping.best is None else stopping.best
                ckpt.save(step, {"state": state, "best": best, "aux": stopping.record(state)})
            if stopping.stopped:
                best_step = stopping.best_step
                logging.vlog(1, "%s: early stop at step %d (best %s)", name, step, best_step)
                break
        window.check(step)
        if writer is not None:
            writer.flush()
        logging.vlog(1, "%s: %d steps in %.1fs", name, step - progress.start, progress.elapsed())
        final = stopping.best if eval_fn is not None else state
        return FitResult(final, state, stopping.best_val, stopping.best_step, step)
    except BaseException as e:
        failed = True
        interrupted = e if isinstance(e, interrupts.Interrupted) else None
        raise
    finally:  # a crash must not leave an asynchronous checkpoint save half done
        if ckpt is not None:
            ckpt.close(failed)
        if interrupted is not None and interrupted.where is None:  # for the line printed
            last = "none" if ckpt is None or ckpt.good_step is None else f"step {ckpt.good_step}"
            interrupted.where = f"{name}, step {step} (last checkpoint: {last})"


def _placement(mesh: Mesh | None, batch_axis: int):
    """(context of a step, placement of a batch, of a block of steps) for ``mesh``."""
    if mesh is None:
        same = lambda batch: batch  # noqa: E731
        return contextlib.nullcontext, same, same
    return (
        functools.partial(jax.set_mesh, mesh),
        functools.partial(sharding.shard_batch, mesh=mesh, axis=batch_axis),
        functools.partial(sharding.shard_batch, mesh=mesh, axis=batch_axis + 1),
    )


def _resume(
    ckpt: checkpoints.Checkpoints,
    state: TrainState,
    stopping: EarlyStopping,
    *,
    with_best: bool,
    step: int,
) -> tuple[int, TrainState]:
    """The step and state of the latest usable checkpoint (``stopping`` restored with
    them); ``(step, state)`` as given if there is none."""
    restored = ckpt.restore(_restore_template(state))
    if restored is None:
        return step, state
    step, items = restored
    logging.info("%s: resumed from checkpoint at step %d", ckpt.name, step)
    stopping.restore(items["best"], items["aux"], with_best=with_best)
    return step, items["state"]


def load_trained(checkpoint_dir: str, template: TrainState, *, name: str):
    """The model a finished :func:`fit` returned, read back from its ``checkpoint_dir``:
    ``(step, state, stopped)``, ``state`` shaped like ``template`` (the best state by
    validation loss; the last one without evaluations). None if there is no usable
    checkpoint. The latest checkpoint is that of the last step (or the early stop), so
    a caller checks ``step``/``stopped`` to know the fit had finished. Read only: a
    damaged checkpoint is skipped with a warning, not set aside."""
    ckpt = checkpoints.Checkpoints(checkpoint_dir, name=name)
    try:  # a reader: a damaged checkpoint is left where it is
        restored = ckpt.restore(_restore_template(template), set_aside=False)
    finally:
        ckpt.close(failed=False)
    if restored is None:
        return None
    step, items = restored
    return step, items["best"], bool(items["aux"]["stopped"])


def _select_members(mask: np.ndarray, new: Any, old: Any) -> Any:
    """Per population member (leading axis, or a scalar mask): ``new`` where mask, else ``old``."""
    mask = np.asarray(mask)

    def select(a, b):
        m = jnp.asarray(mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim)))
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            # jnp.where does not take typed keys; select on their raw data.
            return jax.random.wrap_key_data(
                jnp.where(m[..., None], jax.random.key_data(a), jax.random.key_data(b)),
                impl=jax.random.key_impl(a),
            )
        return jnp.where(m, a, b)

    return jax.tree.map(select, new, old)


def _restore_template(state: TrainState) -> dict[str, Any]:
    """What a checkpoint of :func:`fit` holds, shaped like ``state``."""
    return {"state": state, "best": state, "aux": _aux_template(state)}


def _aux_template(state: TrainState) -> dict[str, Any]:
    """The early-stopping record saved beside the states (+inf: no evaluation yet)."""
    shape = state.step.shape
    return {
        "best_val": np.full(shape, np.inf),
        "best_step": np.zeros(shape, np.int64),
        "since_best": 0,
        "stopped": False,
    }
