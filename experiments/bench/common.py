"""Shared pieces of the speed benchmark (``python -m experiments.bench.speed``).

The absl flags of every section (defined here, once: the section modules import this one,
never ``experiments.bench.speed``, which runs as ``__main__``), the constants, and the
helpers that time our training (``ours_rates``, ``fit_rate``) and the PyTorch loop
(``torch_rate``) and print them side by side (``versus``). The sections themselves are in
experiments/bench/speed.py (mlp, cnn, sweep) and experiments/bench/machine.py (flops,
pipeline).
"""

from __future__ import annotations

import functools
import itertools
import time

import jax
import numpy as np
import optax
from absl import flags

from kd_regression import input_pipeline, loop, methods, models, train

SECTIONS = ("mlp", "cnn", "sweep", "flops", "pipeline")
ONLY = flags.DEFINE_list("only", list(SECTIONS), f"Sections to run, of {SECTIONS}.")
SCALE = flags.DEFINE_float("scale", 1.0, "Multiplies every section's step counts.")
REPEATS = flags.DEFINE_integer("repeats", 3, "Rounds per measurement; the median is shown.")
FLOPS_BATCHES = flags.DEFINE_list(
    "flops_batches",
    ["64", "256", "1024"],
    "Batch sizes of the flops section (the teacher's stop at 256: its 16-step scan is slow).",
)
SWEEP_CONFIG = flags.DEFINE_string(
    "sweep_config", "", "Argument of the sinusoid config for the sweep section ('quick': tiny)."
)
SWEEP_METHODS = flags.DEFINE_list(
    "sweep_methods", [], "Students of the sweep section (default: the config's methods)."
)

METHOD = "tor_multitask"
CONSTANTS = {"threshold": np.float32(0.3), "eta": np.float32(1.0)}
K = 16  # train steps per compiled call (config.steps_per_call in the experiments)


def steps(n: int) -> int:
    return max(2, int(n * SCALE.value))


def median(fn) -> float:
    return float(np.median([fn() for _ in range(REPEATS.value)]))


def data(n, x_shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, *x_shape)).astype(np.float32)
    y = rng.normal(size=(n, 1)).astype(np.float32)
    teacher = (y + rng.normal(scale=0.2, size=(n, 1))).astype(np.float32)
    return {"x": x, "y": y, "teacher": teacher}


def copy(state):
    return jax.tree.map(lambda a: a.copy(), state)


def ours_rates(model_fn, arrays, batch_size, steps, loop_k, lr=3e-3):
    """examples/s of our jitted step on device batches, one step and K steps per call, and
    of loop.fit on the real input pipeline (``loop_k`` steps per call, as the model's
    experiment config runs it)."""
    tx = optax.adam(lr)
    graphdef, state = train.init_state(model_fn, tx, jax.random.key(0), CONSTANTS)
    single = train.make_train_step(graphdef, tx, METHOD)
    step = jax.jit(single, donate_argnums=0)
    multi = jax.jit(train.make_multi_step(single), donate_argnums=0)
    host = list(itertools.islice(input_pipeline.batches(arrays, batch_size=batch_size, seed=0), K))
    on_device = jax.device_put(host)
    block = jax.device_put({k: np.stack([b[k] for b in host]) for k in host[0]})

    def timed(fn, calls):
        s = copy(state)
        s, _ = fn(s)  # warm-up: compilation, caches
        jax.block_until_ready(s)
        t0 = time.perf_counter()
        for _ in range(calls):
            s, _ = fn(s)
        jax.block_until_ready(s)
        return calls * batch_size / (time.perf_counter() - t0)

    def one_per_call():
        return timed(lambda s: step(s, on_device[0]), steps)

    def k_per_call():
        return K * timed(lambda s: multi(s, block), max(1, steps // K))

    feed = functools.partial(input_pipeline.batches, arrays, batch_size=batch_size, seed=0)

    def whole_loop():
        return fit_rate(
            state, step, multi, lambda start: feed(start_step=start), steps, batch_size, loop_k
        )

    return state, median(one_per_call), median(k_per_call), median(whole_loop), loop_k


def fit_rate(state, step, multi, feed, steps, batch_size, k=K):
    """examples/s of loop.fit (``k`` steps per call, logging every tenth of the run)."""
    kw = dict(multi_step=multi if k > 1 else None, steps_per_call=k)
    # Warm-up: one block and one single step compile both programs.
    loop.fit(copy(state), step, feed, num_steps=k + 1, log_every=k + 1, **kw)
    s = copy(state)
    t0 = time.perf_counter()
    result = loop.fit(s, step, feed, num_steps=steps, log_every=max(1, steps // 10), **kw)
    jax.block_until_ready(result.state)
    return steps * batch_size / (time.perf_counter() - t0)


def torch_rate(torch_model, arrays, batch_size, steps, lr=3e-3, nchw=False):
    """examples/s of the PyTorch loop (experiments/bench/torch_baseline.py) on the same arrays."""
    import torch

    from experiments.bench import torch_baseline

    x = arrays["x"].transpose(0, 3, 1, 2) if nchw else arrays["x"]
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    tensors["x"] = torch.from_numpy(np.ascontiguousarray(x))
    cfg = methods.LossConfig()
    constants = {k: float(v) for k, v in CONSTANTS.items()}
    state = {k: v.clone() for k, v in torch_model.state_dict().items()}

    def run():
        torch_model.load_state_dict(state)
        kw = dict(batch_size=batch_size, learning_rate=lr, constants=constants, cfg=cfg)
        torch_baseline.fit(torch_model, METHOD, tensors, steps=8, **kw)  # warm-up
        torch_model.load_state_dict(state)
        seconds = torch_baseline.fit(torch_model, METHOD, tensors, steps=steps, **kw)
        return steps * batch_size / seconds

    return median(run)


def versus(name, ours, theirs, goal):
    """Prints ``ours_rates``'s figures against PyTorch's."""
    _, one, k, loop, loop_k = ours
    print(f"\n{name}")
    for label, rate in (
        ("ours: jitted step, 1 step per call", one),
        (f"ours: jitted step, {K} steps per call", k),
        (f"ours: loop.fit + input pipeline, {loop_k}/call", loop),
        ("PyTorch: eager loop", theirs),
    ):
        print(f"  {label:44s} {rate:12,.0f} examples/s  {rate / theirs:6.2f}x PyTorch")
    print(f"  goal: ours (loop.fit) {goal} PyTorch")


FACE_STUDENT = dict(widths=(8, 16, 32), stem=8, stem_stride=2, blocks_per_stage=1)


def face_student(two_heads=True):
    w = FACE_STUDENT
    return functools.partial(
        models.image_regressor,
        "mobilenet",
        1,
        w["widths"],
        1,
        two_heads=two_heads,
        stem=w["stem"],
        stem_stride=w["stem_stride"],
        blocks_per_stage=w["blocks_per_stage"],
    )
