"""A model and a method compiled once for a population of seeds: :class:`Trainer`.

:class:`TrainConfig` says how one model trains; a :class:`Trainer` holds its jitted train,
evaluate and predict programs (vmapped over the seeds, or looped over them) and runs
:func:`kd_regression.loop.fit` on one population's arrays. :mod:`kd_regression.distill`
builds on it; reuse one Trainer for many populations (the sweep's cells) to compile once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from kd_regression import input_pipeline, loop, sharding, train
from kd_regression.methods import LossConfig, Method, get_method

__all__ = ["TrainConfig", "Trainer", "looped"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How one model trains (Adam at ``learning_rate``, batches of ``batch_size``).

    ``eval_every``: evaluations on the validation split (early stopping with ``patience``
    evaluations without improvement; None: never stop early); default: at the end only.
    ``checkpoint_every``: default ``eval_every``. ``log_every``: default ``num_steps // 10``.
    ``steps_per_call``: train steps per compiled call (the same numbers; fewer dispatches).
    """

    learning_rate: float = 1e-3
    batch_size: int = 128
    num_steps: int = 1000
    eval_every: int | None = None
    patience: int | None = None
    checkpoint_every: int | None = None
    steps_per_call: int = 1
    log_every: int | None = None

    def __post_init__(self):
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate={self.learning_rate}: must be > 0")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}: must be >= 1")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience={self.patience}: must be None (off) or >= 1")
        optional = {"eval_every": self.eval_every, "checkpoint_every": self.checkpoint_every}
        optional["log_every"] = self.log_every
        loop.check_intervals(
            num_steps=self.num_steps,
            steps_per_call=self.steps_per_call,
            **{k: v for k, v in optional.items() if v is not None},
        )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], ignore: Iterable[str] = ()) -> TrainConfig:
        """A config from ``values``; a key that is not a field is an error naming it (a
        misspelt field must not vanish), except those in ``ignore`` (a config section that
        holds other settings too, such as the model's)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names - set(ignore))
        if unknown:
            raise ValueError(f"unknown training keys {unknown}; allowed: {sorted(names)}")
        return cls(**{k: v for k, v in values.items() if k in names})


def looped(fn: Callable, in_shardings=None, out_sharding=None) -> Callable:
    """``fn`` over a population one member at a time, stacked like its vmapped version.

    ``in_shardings`` / ``out_sharding``: where a member's arguments and the stacked results
    are placed (a data-parallel ``fn`` takes a replicated state and a split batch).
    """
    take = jax.jit(lambda tree, i: jax.tree.map(lambda a: a[i], tree), out_shardings=in_shardings)
    stack = jax.jit(
        lambda *trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees), out_shardings=out_sharding
    )

    def run(*args):
        members = jax.tree.leaves(args[0])[0].shape[0]
        return stack(*(fn(*take(args, i)) for i in range(members)))

    return run


class Trainer:
    """One model and method, compiled once for a population: train, evaluate, predict.

    The train step is data-parallel over ``mesh`` (default: every device; state
    replicated, each batch split along its example axis); prediction and evaluation run on
    one local device. ``population``: ``"vmap"`` (one program for all seeds) or ``"loop"``
    (one seed after another: faster for convolutions on a CPU, where a vmapped convolution
    is a grouped one). Reuse a Trainer to train many populations without recompiling.
    """

    def __init__(
        self,
        model_fn: Callable[..., Any],
        method: Method | str,
        config: TrainConfig,
        loss_config: LossConfig | None = None,
        *,
        mesh: Mesh | None = None,
        population: str = "vmap",
    ):
        if population not in ("vmap", "loop"):
            raise ValueError(f"population={population!r}: 'vmap' or 'loop'")
        self.method = get_method(method) if isinstance(method, str) else method
        self.config, self.loss_config = config, loss_config or LossConfig()
        self.mesh = mesh or sharding.make_mesh()
        sharding.check_batch_size(config.batch_size, self.mesh)
        self.model_fn = model_fn
        self.tx = optax.adam(config.learning_rate)
        graphdef = train.init_state(model_fn, self.tx, jax.random.key(0))[0]
        self.graphdef = graphdef  # the model's static structure (an export rebuilds from it)
        fns = (
            train.make_train_step(graphdef, self.tx, self.method, self.loss_config),
            train.make_predict_fn(graphdef),
            train.make_eval_step(graphdef, self.method, self.loss_config),
        )
        multi = train.make_multi_step(fns[0])
        if population == "vmap":  # batches [P, B, ...], blocks [P, K, B, ...]
            self.step = sharding.data_parallel(jax.vmap(fns[0]), self.mesh, axis=1)
            self.multi_step = sharding.data_parallel(jax.vmap(multi), self.mesh, axis=2)
            self._predict, self._evaluate = (jax.jit(jax.vmap(f)) for f in fns[1:])
        else:
            rep = sharding.replicated(self.mesh)
            self.step, self.multi_step = (
                looped(
                    sharding.data_parallel(f, self.mesh, axis=axis),
                    in_shardings=(rep, sharding.batch_sharding(self.mesh, axis)),
                    out_sharding=rep,
                )
                for f, axis in ((fns[0], 0), (multi, 1))
            )
            self._predict, self._evaluate = (looped(jax.jit(f)) for f in fns[1:])

    def fit(
        self,
        arrays: Mapping[str, Any],
        *,
        seeds: Sequence[int],
        stream: int,
        constants: Mapping[str, Any] | None = None,
        validation: Mapping[str, Any] | None = None,
        checkpoint_dir: str | None = None,
        writer: Any = None,
        name: str = "train",
    ) -> loop.FitResult:
        """Trains one population on ``arrays`` (``x``, ``y``, optionally ``teacher``, each
        ``[S, n, ...]``; ``teacher`` may be a store); early stopping on ``validation``
        (``x``, ``y``), if given. The returned states are one-device copies."""
        c = self.config
        keys = jnp.stack([jax.random.fold_in(jax.random.key(s), stream) for s in seeds])
        _, state = train.init_population(self.model_fn, self.tx, keys, constants)
        eval_fn = None
        if validation is not None:
            val = {k: jnp.asarray(v) for k, v in validation.items()}

            def eval_fn(state):
                return self._evaluate(sharding.local_copy(state), val)["loss"]

        result = loop.fit(
            state,
            self.step,
            lambda start: input_pipeline.batches(
                arrays,
                batch_size=c.batch_size,
                seed=list(seeds),
                start_step=start,
                population=len(seeds),
                rows=sharding.process_rows(c.batch_size),  # this process's part of a batch
            ),
            num_steps=c.num_steps,
            eval_fn=eval_fn,
            eval_every=c.eval_every or c.num_steps,
            patience=c.patience,
            writer=writer,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=c.checkpoint_every,
            log_every=c.log_every or max(1, c.num_steps // 10),
            name=name,
            mesh=self.mesh,
            batch_axis=1,
            multi_step=self.multi_step,
            steps_per_call=c.steps_per_call,
        )
        return result._replace(state=sharding.local_copy(result.state))

    def predict(self, state: train.TrainState, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every head on ``x`` ``[S, n, ...]``: ``{head: [S, n, d]}``, in batches."""
        return train.predict(self._predict, state, x, population=True)
