"""A trained model out of this codebase: ONNX (``jax2onnx``) or serialized StableHLO
(``jax.export``), each verified against the JAX model before it is kept.

ONNX runs in onnxruntime and most deployment stacks (phones, edge boxes); StableHLO is
framework-neutral and versioned, reloaded with ``jax.export.deserialize``. The batch
dimension is symbolic in both, so one file serves every batch size. The model runs in
inference mode: batch norm uses its running averages, no dropout
(``deterministic=True``). ONNX needs the ``export`` extra (jax2onnx, onnxruntime).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging as absl_logging
from flax import nnx

from kd_regression import train
from kd_regression.fileio import atomic_write

__all__ = [
    "ExportError",
    "export_onnx",
    "export_stablehlo",
    "inference_fn",
    "load_onnx",
    "load_stablehlo",
    "max_abs_difference",
    "run_batched",
    "student_inference_fn",
]

Heads = Mapping[str, jax.Array]
BATCH = "batch"  # the symbolic batch dimension's name in the exported signature
TOLERANCE = 1e-5  # the largest abs difference a kept export may have from the JAX model
CHECK_BATCH = 256  # check inputs run in batches of this many (a whole test split fits)


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

    def only(x):
        out = fn(x)  # the model once, whatever the heads kept
        return {h: out[h] for h in heads}

    return only


def export_stablehlo(
    fn: Callable[[jax.Array], Heads],
    input_shape: Sequence[int],
    path: str,
    *,
    name: str,
    check_inputs: np.ndarray,
    reference: Callable[[jax.Array], Heads] | None = None,
    dtype=jnp.float32,
    tolerance: float = TOLERANCE,
) -> float:
    """Writes ``fn`` (``[batch, *input_shape] -> heads``) to ``path`` as serialized
    StableHLO with a symbolic batch, and returns the largest absolute difference between
    the reloaded file and ``reference`` (default ``fn``; e.g. the model as trained, where
    ``fn`` computes the same in other operations) on ``check_inputs`` (``[n, *input_shape]``).

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
    x = np.asarray(check_inputs, dtype)
    diff = max_abs_difference(run_batched(reference or fn, x), run_batched(reloaded.call, x))
    if not diff <= tolerance:  # also catches NaN
        raise ExportError(
            f"{name}: the exported StableHLO differs from the JAX model by {diff:.3g} "
            f"(more than {tolerance:g}) on {len(x)} inputs; not written"
        )
    atomic_write(path, lambda f: f.write(blob))
    return diff


def _convert(to_onnx, fn, heads: list[str], input_shape, name: str, skip: tuple[str, ...]):
    """``fn`` as a serialized ONNX model (jax2onnx's ``to_onnx``) without the graph passes
    ``skip``; its outputs are ``fn``'s ``heads`` in a fixed order, by name."""

    def flat(inputs):  # ONNX outputs are a list
        out = fn(inputs)
        return tuple(out[h] for h in heads)

    try:
        with _quiet_converter(), _without_passes(skip):
            proto = to_onnx(
                flat,
                [(BATCH, *(int(d) for d in input_shape))],
                model_name=name.replace("/", "_").replace(" ", "_"),
                input_names=["x"],
                output_names=heads,
            )
    except Exception as e:
        raise ExportError(f"{name}: cannot be converted to ONNX ({type(e).__name__}: {e})") from e
    return proto.SerializeToString()


def export_onnx(
    fn: Callable[[jax.Array], Heads],
    input_shape: Sequence[int],
    path: str,
    *,
    name: str,
    check_inputs: np.ndarray,
    reference: Callable[[jax.Array], Heads] | None = None,
    tolerance: float = TOLERANCE,
) -> float:
    """Writes ``fn`` (``[batch, *input_shape] -> heads``, float32) to ``path`` as ONNX with
    a symbolic batch (input ``x``, one output per head, by name), and returns the largest
    absolute difference between onnxruntime (CPU) on the file and ``reference`` (default
    ``fn``) on ``check_inputs``. An operation jax2onnx cannot convert, a file onnxruntime
    cannot load, or a difference above ``tolerance`` is an :class:`ExportError` naming
    ``name``; nothing is written.

    A file that does not load or does not match is converted once more without
    jax2onnx's graph passes in ``FALLBACK_SKIPS`` (a warning says so), and kept if that
    one passes the same check.
    """
    try:
        from jax2onnx import to_onnx
    except ImportError as e:
        raise ExportError(
            f"{name}: ONNX export needs jax2onnx and onnxruntime (pip install "
            f"'kd_regression[export]'): {e}"
        ) from e
    x = np.asarray(check_inputs, np.float32)
    expected = run_batched(reference or fn, x)
    heads = sorted(expected)
    problems = []
    for skip in ((), FALLBACK_SKIPS) if _can_skip() else ((),):
        blob = _convert(to_onnx, fn, heads, input_shape, name, skip)
        try:
            session = _session(blob)
            diff = max_abs_difference(expected, run_batched(lambda b, s=session: _run(s, b), x))
        except Exception as e:  # onnxruntime refuses the graph (e.g. inconsistent shapes)
            problems.append(f"does not load in onnxruntime ({type(e).__name__}: {e})")
            continue
        if diff <= tolerance:
            if skip:
                absl_logging.warning(
                    "%s: converted without jax2onnx's %s pass (with it, the file %s)",
                    name,
                    ", ".join(skip),
                    problems[-1],
                )
            atomic_write(path, lambda f, blob=blob: f.write(blob))
            return diff
        problems.append(
            f"run in onnxruntime differs from the JAX model by {diff:.3g} (more than "
            f"{tolerance:g}) on {len(x)} inputs"
        )
    retried = f"; without jax2onnx's {', '.join(FALLBACK_SKIPS)} pass too, it {problems[-1]}"
    raise ExportError(
        f"{name}: the ONNX file {problems[0]}{retried if len(problems) > 1 else ''}; not written"
    )


# jax2onnx 0.17's transpose-pair pass breaks a ResNet whose first stage has two identity
# blocks (MPIIGaze's and Multi-PIE's teachers): the second block's Add gets one operand in
# NCHW and the other in NHWC, and onnxruntime refuses the file. Without the pass the
# graph keeps a few more Transposes and is exact.
FALLBACK_SKIPS = ("remove_redundant_transpose_pairs",)


def _pass_list():
    """jax2onnx's private list of optimizer passes, or None where a version has none."""
    try:
        from jax2onnx.converter import ir_optimizations
    except ImportError:
        return None
    passes = getattr(ir_optimizations, "_OPTIMIZER_PASSES", None)
    names = {getattr(p, "name", None) for p in passes or ()}
    return ir_optimizations if set(FALLBACK_SKIPS) <= names else None


def _can_skip() -> bool:
    """Whether this jax2onnx has the passes of ``FALLBACK_SKIPS`` to convert without."""
    return _pass_list() is not None


@contextlib.contextmanager
def _without_passes(skip: tuple[str, ...]):
    """jax2onnx's optimizer without the passes named ``skip``."""
    if not skip:
        yield
        return
    ir_optimizations = _pass_list()
    passes = ir_optimizations._OPTIMIZER_PASSES
    ir_optimizations._OPTIMIZER_PASSES = tuple(p for p in passes if p.name not in skip)
    try:
        yield
    finally:
        ir_optimizations._OPTIMIZER_PASSES = passes


class _ConverterChatter(logging.Filter):
    """jax2onnx's and onnx-ir's INFO lines, and the BatchNorm warning of a module whose
    training-mode attribute is set (the converter always exports inference mode, as we
    call the model)."""

    def filter(self, record: logging.LogRecord) -> bool:
        converter = "jax2onnx" in record.pathname or "onnx_ir" in record.pathname
        if not converter:
            return True
        return record.levelno > logging.INFO and "use_running_average=False" not in str(record.msg)


@contextlib.contextmanager
def _quiet_converter():
    loggers = [logging.getLogger(), logging.getLogger("onnx_ir"), logging.getLogger("jax2onnx")]
    chatter = _ConverterChatter()
    handlers = [h for lg in loggers for h in lg.handlers]
    for h in handlers:
        h.addFilter(chatter)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(chatter)


def run_batched(fn: Callable, x: np.ndarray) -> dict[str, np.ndarray]:
    """``fn``'s heads on ``x`` (a JAX function or a loaded file), ``CHECK_BATCH`` rows at a
    time, as NumPy arrays."""
    if len(x) == 0:
        raise ExportError("no inputs to run the model on (an empty split)")
    parts = [fn(jnp.asarray(x[i : i + CHECK_BATCH])) for i in range(0, len(x), CHECK_BATCH)]
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}


def load_onnx(path: str) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """The model in a file of :func:`export_onnx`, in onnxruntime (CPU): ``x -> heads``."""
    with open(path, "rb") as f:
        session = _session(f.read())
    return lambda x: _run(session, x)


def _session(blob: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: jax2onnx's shape hints make it warn
    return ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])


def _run(session, x) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    out = session.run(names, {"x": np.asarray(x, np.float32)})
    return dict(zip(names, out, strict=True))


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
