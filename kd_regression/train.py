"""Train state and the pure train, eval and predict steps; regression metrics.

The model is split once (``nnx.split``) into a static graph and pytrees; everything that
changes during training lives in :class:`TrainState`, a plain pytree. So one train step
jits as is, ``jax.vmap`` batches it over a leading population axis (one student per seed,
in one compiled program), and :mod:`kd_regression.sharding` shards it. Teacher
parameters never enter a student's state: the student's batch carries the teacher's
stored predictions. The loop that runs these steps is :func:`kd_regression.loop.fit`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from kd_regression.methods import LossConfig, Method, get_method
from kd_regression.models import Heads

__all__ = [
    "TrainState",
    "init_population",
    "init_state",
    "make_eval_step",
    "make_multi_step",
    "make_predict_fn",
    "make_train_step",
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
    optimiser state untouched and reports ``finite = False``;
    :func:`kd_regression.loop.fit` stops on it.
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
    per-call dispatch cost (see ``experiments/bench/speed.py``).
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
