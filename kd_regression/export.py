"""A trained model out of this codebase: serialized StableHLO (``jax.export``), verified.

StableHLO is framework-neutral and versioned: a file written here reloads with
``jax.export.deserialize`` (any JAX of a compatible calling convention) and runs on the
platforms it was exported for. The batch dimension is symbolic, so one file serves every
batch size. The model runs in inference mode: batch norm uses its running averages, no
dropout (``deterministic=True``). Every export is run back from the file and compared with
the JAX model before it is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kd_regression import train
from kd_regression.fileio import atomic_write

__all__ = [
    "ExportError",
    "export_stablehlo",
    "inference_fn",
    "load_stablehlo",
    "max_abs_difference",
    "student_inference_fn",
]

Heads = Mapping[str, jax.Array]
BATCH = "batch"  # the symbolic batch dimension's name in the exported signature


class ExportError(ValueError):
    """A model that cannot be exported, or whose export does not match it; nothing is
    written then."""


def inference_fn(graphdef: nnx.GraphDef, state: train.TrainState) -> Callable[[jax.Array], Heads]:
    """``x -> heads`` of one trained member (no population axis), in inference mode.

    The parameters and batch statistics are closed over, so an export holds them as
    constants: the file is the whole model.
    """
    predict = train.make_predict_fn(graphdef)
    return lambda x: predict(state, x)


def student_inference_fn(
    student, *, member: int = 0, heads: Sequence[str] | None = None
) -> Callable[[jax.Array], Heads]:
    """``x -> heads`` of member ``member`` of a trained :class:`~kd_regression.Student`
    population (seed ``student.seeds[member]``); ``heads``: only these (e.g. the inference
    head, ``["label"]``), in the student's target units."""
    state = jax.tree.map(lambda a: a[member], student.state)  # the population axis
    fn = inference_fn(student.trainer.graphdef, state)
    if heads is None:
        return fn
    return lambda x: {h: fn(x)[h] for h in heads}


def export_stablehlo(
    fn: Callable[[jax.Array], Heads],
    input_shape: Sequence[int],
    path: str,
    *,
    name: str,
    check_inputs: np.ndarray,
    dtype=jnp.float32,
    tolerance: float = 1e-5,
) -> float:
    """Writes ``fn`` (``[batch, *input_shape] -> heads``) to ``path`` as serialized
    StableHLO with a symbolic batch, and returns the largest absolute difference between
    the reloaded file and ``fn`` on ``check_inputs`` (``[n, *input_shape]``).

    A function that cannot be exported, or a reloaded file that differs from ``fn`` by
    more than ``tolerance``, is an :class:`ExportError` naming ``name``; nothing is written.
    """
    dims = ", ".join([BATCH, *(str(int(d)) for d in input_shape)])
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(dims), dtype)
    try:
        exported = jax.export.export(jax.jit(fn))(spec)
        blob = exported.serialize()
    except Exception as e:
        raise ExportError(
            f"{name}: cannot be exported to StableHLO ({type(e).__name__}: {e})"
        ) from e
    reloaded = jax.export.deserialize(blob)
    x = jnp.asarray(check_inputs, dtype)
    diff = max_abs_difference(fn(x), reloaded.call(x))
    if not diff <= tolerance:  # also catches NaN
        raise ExportError(
            f"{name}: the exported StableHLO differs from the JAX model by {diff:.3g} "
            f"(more than {tolerance:g}) on {len(x)} inputs; not written"
        )
    atomic_write(path, lambda f: f.write(blob))
    return diff


def load_stablehlo(path: str) -> Callable[[jax.Array], Heads]:
    """The model in a file of :func:`export_stablehlo`: ``x -> heads``, any batch size."""
    with open(path, "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    return exported.call


def max_abs_difference(a: Heads, b: Heads) -> float:
    """The largest absolute difference over every head (the heads must be the same)."""
    if set(a) != set(b):
        raise ExportError(f"heads differ: {sorted(a)} and {sorted(b)}")
    diffs = [np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k]))) for k in a]
    return float(max(diffs))
