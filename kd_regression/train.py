"""Train state, pure train/eval steps, the fit loop with early stopping, checkpoints, metrics.

The model is split once (``nnx.split``) into a static graph and pytrees; everything that
changes during training lives in :class:`TrainState`, a plain pytree. So one train step
jits as is, ``jax.vmap`` batches it over a leading population axis (one student per seed,
in one compiled program), and a later issue can shard it. Teacher parameters never enter a
student's state: the student's batch carries the teacher's stored predictions.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx, struct
from jax.sharding import Mesh

from kd_regression import checkpoints, interrupts, sharding
from kd_regression.checkpoints import CheckpointWriteError, checkpoint_words
from kd_regression.fileio import with_filename
from kd_regression.methods import METHODS, LossConfig, Method, get_method, loss_constants
from kd_regression.models import Heads

__all__ = [
    "METHODS",
    "CheckpointWriteError",
    "FitResult",
    "LossConfig",
    "NonFiniteError",
    "TrainState",
    "fit",
    "get_method",
    "init_population",
    "init_state",
    "loss_constants",
    "make_eval_step",
    "make_multi_step",
    "make_predict_fn",
    "make_train_step",
    "make_writer",
    "predict",
    "regression_metrics",
]

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
ModelFn = Callable[..., nnx.Module]  # called as model_fn(rngs=nnx.Rngs(key))


class TrainState(struct.PyTreeNode):
    """Everything a train step reads and writes; a pytree (vmap- and checkpoint-able).

    ``constants`` holds per-dataset loss constants (TOR's δ, AIL's η): arrays, so each
    member of a vmapped population can have its own, and never optimised.
    """

    step: jax.Array
    params: nnx.State
    model_state: nnx.State  # non-parameter variables (e.g. batch statistics)
    opt_state: optax.OptState
    rng: jax.Array
    constants: dict[str, jax.Array]


def init_state(
    model_fn: ModelFn,
    tx: optax.GradientTransformation,
    key: jax.Array,
    constants: Mapping[str, jax.Array] | None = None,
) -> tuple[nnx.GraphDef, TrainState]:
    """Builds the model from ``key`` and returns its static graph and a fresh state."""
    init_key, state_key = jax.random.split(key)
    graphdef, params, model_state = nnx.split(model_fn(rngs=nnx.Rngs(init_key)), nnx.Param, ...)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=tx.init(params),
        rng=state_key,
        constants=_own_constants(constants),
    )
    return graphdef, state


def init_population(
    model_fn: ModelFn,
    tx: optax.GradientTransformation,
    keys: jax.Array,
    constants: Mapping[str, jax.Array] | None = None,
) -> tuple[nnx.GraphDef, TrainState]:
    """One state per key (``keys: [P]``), stacked on a leading axis; constants ``[P]``."""
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: model_fn(rngs=nnx.Rngs(0))))
    states = jax.vmap(lambda k: init_state(model_fn, tx, k)[1])(keys)
    return graphdef, states.replace(constants=_own_constants(constants))


def _own_constants(constants: Mapping[str, jax.Array] | None) -> dict[str, jax.Array]:
    # Copies: the train step donates the state, which must not free the caller's arrays.
    return {k: jnp.array(v, jnp.float32, copy=True) for k, v in (constants or {}).items()}


def _tree_where(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    method: Method | str,
    loss_config: LossConfig | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """A pure ``(state, batch) -> (state, metrics)`` step, not yet jitted.

    The per-step key is ``fold_in(state.rng, state.step)``, so a resumed run draws the same
    dropout masks. A step whose loss or gradient is not finite leaves parameters and
    optimiser state untouched and reports ``finite = False``; :func:`fit` stops on it.
    """
    method = get_method(method) if isinstance(method, str) else method
    cfg = loss_config or LossConfig()

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        step_rng = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params, model_state):
            # copy=True: fresh variables in this trace, so the forward pass may update the
            # model state (batch statistics); NNX refuses to mutate variables of another trace.
            model = nnx.merge(graphdef, params, model_state, copy=True)
            heads = model(batch["x"], deterministic=False, rngs=nnx.Rngs(dropout=step_rng))
            per_example, aux = method.loss(heads, batch, state.constants, cfg)
            return jnp.mean(per_example), (aux, nnx.state(model, nnx.Not(nnx.Param)))

        (loss, (aux, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.model_state
        )
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new_state = state.replace(
            step=state.step + 1,
            params=_tree_where(finite, params, state.params),
            opt_state=_tree_where(finite, opt_state, state.opt_state),
            model_state=_tree_where(finite, model_state, state.model_state),
        )
        return new_state, {"loss": loss, "grad_norm": grad_norm, "finite": finite, **aux}

    return train_step


def make_multi_step(
    train_step: Callable[[TrainState, Batch], tuple[TrainState, Metrics]],
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """``k`` train steps in one call: ``lax.scan`` over batches stacked on a leading axis
    ``[k, batch, ...]``; returns the final state and the per-step metrics ``[k, ...]``.

    The same steps in the same order as ``k`` calls of ``train_step``; jit (and vmap) it
    like the step. One call per ``k`` steps keeps a small model from being bound by the
    per-call dispatch cost (see ``experiments/bench_speed.py``).
    """

    def multi_step(state: TrainState, batches: Batch) -> tuple[TrainState, Metrics]:
        return jax.lax.scan(train_step, state, batches)

    return multi_step


def make_eval_step(
    graphdef: nnx.GraphDef,
    method: Method | str,
    loss_config: LossConfig | None = None,
) -> Callable[[TrainState, Batch], Metrics]:
    """A pure ``(state, batch) -> metrics`` step in inference mode (no dropout, no update).

    ``metrics["loss"]`` is the method's mean loss on the batch (e.g. a teacher's validation
    loss on the noisy validation labels, the early-stopping signal), plus the method's own
    batch metrics.
    """
    method = get_method(method) if isinstance(method, str) else method
    cfg = loss_config or LossConfig()
    predict_fn = make_predict_fn(graphdef)

    def eval_step(state: TrainState, batch: Batch) -> Metrics:
        heads = predict_fn(state, batch["x"])
        per_example, aux = method.loss(heads, batch, state.constants, cfg)
        return {"loss": jnp.mean(per_example), **aux}

    return eval_step


def make_predict_fn(graphdef: nnx.GraphDef) -> Callable[[TrainState, jax.Array], Heads]:
    """A pure ``(state, x) -> heads`` function in inference mode (no dropout)."""

    def predict_fn(state: TrainState, x: jax.Array) -> Heads:
        return nnx.merge(graphdef, state.params, state.model_state)(x, deterministic=True)

    return predict_fn


def predict(
    predict_fn: Callable[[TrainState, jax.Array], Heads],
    state: TrainState,
    x: np.ndarray | jax.Array,
    *,
    batch_size: int = 4096,
    population: bool = False,
) -> dict[str, np.ndarray]:
    """Heads over a whole split, batched; ``predict_fn`` should be jitted (and vmapped).

    With ``population``, ``x`` has a leading population axis ``[P, n, ...]`` and the result
    ``[P, n, d]``; otherwise ``x`` is ``[n, ...]``.
    """
    axis = 1 if population else 0
    n = x.shape[axis]
    chunks = []
    for start in range(0, n, batch_size):
        xb = x[:, start : start + batch_size] if population else x[start : start + batch_size]
        chunks.append(jax.device_get(predict_fn(state, jnp.asarray(xb))))
    return {k: np.concatenate([c[k] for c in chunks], axis=axis) for k in chunks[0]}


def regression_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    """RMSE and MAE over examples and output dimensions (last two axes) of ``[..., n, d]``."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} differ in shape")
    err = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
    return {
        "rmse": np.sqrt(np.mean(err**2, axis=(-2, -1))),
        "mae": np.mean(np.abs(err), axis=(-2, -1)),
    }


class _JsonlWriter:
    """A CLU-style metric writer appending one JSON line per ``write_scalars`` call."""

    def __init__(self, path: str):
        self._path = path
        self._file = open(path, "a", encoding="utf-8")  # closed by close()

    @contextlib.contextmanager
    def _naming_errors(self):
        try:
            yield
        except OSError as e:  # a full disk: say which file
            raise with_filename(e, self._path) from e

    def _write(self, row: dict):
        with self._naming_errors():
            self._file.write(json.dumps(row) + "\n")

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        self._write({"step": int(step), **{k: float(v) for k, v in scalars.items()}})

    def write_hparams(self, hparams: Mapping[str, Any]):
        self._write({"hparams": {k: str(v) for k, v in hparams.items()}})

    def write_summaries(self, step, values, metadata=None):  # not used by this library
        pass

    def write_images(self, step, images):
        pass

    def write_videos(self, step, videos):
        pass

    def write_audios(self, step, audios, *, sample_rate):
        pass

    def write_texts(self, step, texts):
        pass

    def write_histograms(self, step, arrays, num_buckets=None):
        pass

    def write_pointcloud(self, step, point_clouds, *, point_colors=None, configs=None):
        pass

    def flush(self):
        with self._naming_errors():
            self._file.flush()

    def close(self):
        with self._naming_errors():
            self._file.close()


def make_writer(logdir: str | None) -> Any:
    """CLU metric writers: a readable log, TensorBoard events and ``metrics.jsonl`` in logdir.

    Only process 0 writes files; other processes only log.
    """
    # Imported here: clu.metric_writers imports TensorFlow (for its summary writer), which
    # costs seconds and is not needed by the rest of the library.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    from clu import metric_writers

    if logdir is None or jax.process_index() > 0:
        return metric_writers.create_default_writer(just_logging=True, asynchronous=False)
    os.makedirs(logdir, exist_ok=True)
    default = metric_writers.create_default_writer(logdir, asynchronous=False)
    return metric_writers.MultiWriter(
        [default, _JsonlWriter(os.path.join(logdir, "metrics.jsonl"))]
    )


class FitResult(NamedTuple):
    state: TrainState  # the best state by validation loss (the last one without eval_fn)
    last_state: TrainState
    best_val: np.ndarray | None  # best validation loss, per population member
    best_step: np.ndarray | None
    steps_run: int


class NonFiniteError(FloatingPointError):
    """:func:`fit` stopped: a train step's loss or gradient was NaN or infinite.

    The update of the members that went bad was not applied at that step (see
    :func:`make_train_step`), and no state from that step on was checkpointed: the last good
    checkpoint (if any) is the latest one on disk, kept as it was.

    Attributes:
      name: ``fit``'s ``name``.
      step: the first step (1-based: the state's step after it) that was not finite.
      metrics: which went bad: ``["loss"]``, ``["grad_norm"]`` or both, over ``members``.
      members: the population members that went bad (indices on the leading population
        axis; ``[0]`` for a state without one).
      checkpoint_dir: ``fit``'s ``checkpoint_dir`` (absolute), or None.
      checkpoint_step: the step of the last good checkpoint there, or None if none.
    """

    def __init__(
        self,
        name: str,
        step: int,
        metrics: list[str],
        members: list[int],
        checkpoint_dir: str | None = None,
        checkpoint_step: int | None = None,
        detail: str = "",
    ):
        self.name, self.step, self.metrics, self.members = name, step, metrics, members
        self.checkpoint_dir, self.checkpoint_step = checkpoint_dir, checkpoint_step
        self._detail = detail
        what = " and ".join(metrics) or "loss or gradient"
        super().__init__(
            f"{name}: non-finite {what} at step {step}{detail}; parameters were left at "
            "their last finite values; last good checkpoint: "
            f"{checkpoint_words(checkpoint_dir, checkpoint_step)}"
        )

    def __reduce__(self):
        args = (self.name, self.step, self.metrics, self.members, self.checkpoint_dir)
        return type(self), (*args, self.checkpoint_step, self._detail)


def _stack(batches: list[Batch], axis: int) -> Batch:
    """Per-step batches (from an iterator without ``next_block``) stacked on ``axis``."""
    return {key: np.stack([b[key] for b in batches], axis=axis) for key in batches[0]}


def _per_step(pending: list[tuple[Metrics, int | None]], axis: int) -> list[Metrics]:
    """Host copies of per-step metrics; a block's (``k`` steps on ``axis``) split by step."""
    out = []
    for metrics, k in jax.device_get(pending):
        if k is None:
            out.append(metrics)
        else:
            out += [{key: np.take(v, i, axis=axis) for key, v in metrics.items()} for i in range(k)]
    return out


_CHECKED = ("loss", "grad_norm")  # the metrics whose finiteness a train step checks


def _first_non_finite(host: list[Metrics], first_step: int) -> dict[str, Any] | None:
    """The first step of a window of per-step host metrics that was not finite, or None.

    ``finite`` (from the step) says whether a step went bad; which of ``loss`` and
    ``grad_norm`` did is read from their values, over the members that went bad.
    """
    for i, m in enumerate(host):
        finite = np.asarray(m["finite"])
        if finite.all():
            continue
        bad = ~finite.reshape(-1)
        values = {
            key: np.asarray(m[key], np.float64).reshape(-1)[bad] for key in _CHECKED if key in m
        }
        return {
            "step": first_step + i,
            "metrics": [key for key, v in values.items() if not np.isfinite(v).all()],
            "members": np.flatnonzero(bad).tolist(),
            "population": finite.ndim > 0,
            "values": {key: v.tolist() for key, v in values.items()},
        }
    return None


def _summarise(host: list[Metrics]) -> dict[str, float]:
    """Means of a window of per-step host metrics (checked finite already)."""
    keys = [k for k in host[0] if k != "finite"]
    return {k: float(np.mean([np.mean(m[k]) for m in host])) for k in keys}


def fit(
    state: TrainState,
    train_step: Callable[[TrainState, Batch], tuple[TrainState, Metrics]],
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
    multi_step: Callable[[TrainState, Batch], tuple[TrainState, Metrics]] | None = None,
    steps_per_call: int = 1,
    keep_checkpoints: int = 2,
) -> FitResult:
    """Runs ``train_step`` for ``num_steps``, keeping the state with the best validation loss.

    Args:
      state: initial state, optionally with a leading population axis.
      train_step: jitted (and for a population vmapped) step from :func:`make_train_step`.
      batches: ``batches(start_step)`` yields the batches from ``start_step`` on, so a run
        restored from a checkpoint continues on the same data.
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
      multi_step: ``steps_per_call`` steps in one call (:func:`make_multi_step`, jitted
        like ``train_step``), on the steps' batches stacked on ``batch_axis`` (so each
        batch's example axis moves to ``batch_axis + 1``); used wherever no log,
        evaluation or checkpoint falls inside the block, so the results are those of
        single steps. Fewer calls: small models are no longer bound by dispatch.

    Raises:
      NonFiniteError: a step's loss or gradient was NaN or infinite (its update was not
        applied). Every step's metrics are checked at each log, evaluation and checkpoint,
        so no checkpoint holds a state from that step on; the error names the step, the
        metrics and members that went bad, and the last good checkpoint, which is kept.
      CheckpointWriteError: a checkpoint could not be written (e.g. the disk is full; an
        asynchronous save's failure is raised too, at the latest when ``fit`` returns).
        The previous checkpoint is kept, and a rerun resumes from it.
    """
    for arg, value in (
        ("num_steps", num_steps),
        ("eval_every", eval_every),
        ("log_every", log_every),
        ("checkpoint_every", checkpoint_every or 1),
        ("steps_per_call", steps_per_call),
    ):
        if value < 1:
            raise ValueError(f"fit: {arg} must be >= 1, got {value}")
    checkpoint_every = checkpoint_every or eval_every
    place = place_block = lambda batch: batch
    in_mesh = contextlib.nullcontext
    if mesh is not None:
        in_mesh = functools.partial(jax.set_mesh, mesh)
        state = sharding.replicate(state, mesh)
        place = functools.partial(sharding.shard_batch, mesh=mesh, axis=batch_axis)
        place_block = functools.partial(sharding.shard_batch, mesh=mesh, axis=batch_axis + 1)
    best = None  # never an alias of `state`, whose buffers the train step donates
    best_val = best_step = None
    since_best = 0
    stopped = False
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = checkpoints.Checkpoints(checkpoint_dir, name=name, max_to_keep=keep_checkpoints)
        checkpoint_dir = ckpt.directory
    step = start = int(np.max(jax.device_get(state.step)))

    def drain(window: list[Metrics], pending: list[tuple[Metrics, int | None]], step: int):
        """Host copies of the pending metrics appended to the window, which is checked."""
        window += _per_step(pending, batch_axis)
        pending.clear()
        bad = _first_non_finite(window, step - len(window) + 1)
        if bad is not None:
            try:
                if ckpt is not None:  # so that the last good checkpoint named is complete
                    ckpt.finish()
            except CheckpointWriteError:
                # Both went wrong: the non-finite step is raised (naming the checkpoint
                # before the failed one), the failed save logged.
                logging.exception("%s: a checkpoint save failed before a non-finite step", name)
            raise NonFiniteError(
                name,
                bad["step"],
                bad["metrics"],
                bad["members"],
                checkpoint_dir,
                None if ckpt is None else ckpt.good_step,
                _non_finite_detail(bad),
            )

    failed, interrupted = False, None
    try:
        restored = None if ckpt is None else _resume(ckpt, state, with_best=eval_fn is not None)
        if restored is not None:
            step = start = restored["step"]
            state, best, stopped = restored["state"], restored["best"], restored["stopped"]
            best_val, best_step = restored["best_val"], restored["best_step"]
            since_best = restored["since_best"]
        window: list[Metrics] = []  # per-step metrics since the last log (host copies)
        pending: list[tuple[Metrics, int | None]] = []  # device metrics, steps per call
        t0 = time.time()
        it = iter(batches(start)) if not stopped else iter(())
        events = [log_every, *([eval_every] if eval_fn is not None else [])]
        events += [checkpoint_every] if ckpt is not None else []
        k = steps_per_call if multi_step is not None else 1
        while step < num_steps:
            interrupts.check()  # a signal whose exception some library swallowed
            # Up to the next log, evaluation, checkpoint or the end, in calls of k steps.
            boundary = min(num_steps, *((step // e + 1) * e for e in events))
            block, singles = None, []
            if k > 1 and boundary - step >= k:
                if hasattr(it, "next_block"):  # input_pipeline.batches: stacked already
                    block = it.next_block(k)
                else:
                    singles = list(itertools.islice(it, k))
                    if len(singles) == k:
                        block, singles = _stack(singles, batch_axis), []
            else:
                singles = list(itertools.islice(it, 1))
            if block is None and not singles:
                break  # the batches ran out
            with in_mesh():  # the step's computation, under jax.set_mesh with a mesh
                if block is not None:
                    state, metrics = multi_step(state, place_block(block))
                    pending.append((metrics, k))
                    step += k
                for batch in singles:
                    state, metrics = train_step(state, place(batch))
                    pending.append((metrics, None))
                    step += 1
            if step % log_every == 0 or step == num_steps:
                drain(window, pending, step)
                scalars = _summarise(window)
                window = []
                if writer is not None:
                    writer.write_scalars(step, {f"{name}/{key}": v for key, v in scalars.items()})
                rate = (step - start) / max(time.time() - t0, 1e-9)
                logging.info(
                    "%s: step %d/%d, %.0f steps/s, ETA %.0fs, loss %.4g",
                    name,
                    step,
                    num_steps,
                    rate,
                    (num_steps - step) / rate,
                    scalars["loss"],
                )
            if eval_fn is not None and (step % eval_every == 0 or step == num_steps):
                # No evaluation of a state that went non-finite; the host copies are kept
                # for the next log.
                drain(window, pending, step)
                val = np.asarray(jax.device_get(eval_fn(state)), np.float64)
                if best_val is None:
                    best_val, best_step = np.full_like(val, np.inf), np.zeros(val.shape, np.int64)
                improved = val < best_val
                best = _select_members(improved, state, state if best is None else best)
                best_val = np.where(improved, val, best_val)
                best_step = np.where(improved, step, best_step)
                since_best = 0 if improved.any() else since_best + 1
                if writer is not None:
                    writer.write_scalars(step, {f"{name}/val_loss": float(np.mean(val))})
                stopped = patience is not None and since_best >= patience
            if ckpt is not None and (step % checkpoint_every == 0 or step == num_steps or stopped):
                # Every step since the last check is checked before the save: a checkpoint
                # never holds a state that went non-finite.
                drain(window, pending, step)
                aux = _aux_template(state)
                aux.update(since_best=since_best, stopped=stopped)
                if best_val is not None:
                    aux.update(best_val=best_val, best_step=best_step)
                items = {"state": state, "best": state if best is None else best, "aux": aux}
                ckpt.save(step, items)
            if stopped:
                logging.info("%s: early stop at step %d (best %s)", name, step, best_step)
                break
        drain(window, pending, step)
        if writer is not None:
            writer.flush()
        logging.info("%s: %d steps in %.1fs", name, step - start, time.time() - t0)
        final = best if eval_fn is not None else state
        return FitResult(final, state, best_val, best_step, step)
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


def _resume(ckpt: checkpoints.Checkpoints, state: TrainState, *, with_best: bool) -> dict | None:
    """The state and early-stopping record of the latest usable checkpoint, or None."""
    restored = ckpt.restore({"state": state, "best": state, "aux": _aux_template(state)})
    if restored is None:
        return None
    step, items = restored
    aux = items["aux"]
    logging.info("%s: resumed from checkpoint at step %d", ckpt.name, step)
    out = {"step": step, "state": items["state"], "stopped": bool(aux["stopped"])}
    if not with_best:  # without evaluations the best state is the last one
        return {**out, "best": None, "best_val": None, "best_step": None, "since_best": 0}
    return {
        **out,
        "best": items["best"],
        "best_val": np.asarray(aux["best_val"]),
        "best_step": np.asarray(aux["best_step"]),
        "since_best": int(aux["since_best"]),
    }


def _non_finite_detail(bad: Mapping[str, Any]) -> str:
    """`` (loss nan, grad_norm 0.5)``, or with members ``[1]: loss [nan], ...``."""
    if bad["population"]:
        values = ", ".join(
            f"{k} [{', '.join(f'{x:.6g}' for x in v)}]" for k, v in bad["values"].items()
        )
        return f" (population members {bad['members']}: {values})"
    return " (" + ", ".join(f"{k} {v[0]:.6g}" for k, v in bad["values"].items()) + ")"


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


def _aux_template(state: TrainState) -> dict[str, Any]:
    """The early-stopping record saved beside the states (+inf: no evaluation yet)."""
    shape = state.step.shape
    return {
        "best_val": np.full(shape, np.inf),
        "best_step": np.zeros(shape, np.int64),
        "since_best": 0,
        "stopped": False,
    }
