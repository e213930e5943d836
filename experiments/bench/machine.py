"""The speed benchmark's machine sections: our training against the machine itself.

  flops     bench_flops: achieved FLOP/s of the faces CNNs' train steps (XLA's count of
            one compiled step / time) as a fraction of a large float32 matmul's.
  pipeline  bench_pipeline: loop.fit fed by the real input pipeline against batches
            already on the device.

Run them with ``python -m experiments.bench.speed --only=flops,pipeline`` (the flags and
helpers are in experiments/bench/common.py; experiments/bench/speed.py documents every
section).
"""

from __future__ import annotations

import functools
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.bench import common
from experiments.bench.common import CONSTANTS, METHOD, K
from kd_regression import input_pipeline, models, train


def _flops_case(name, model_fn, method, shape, batch_size, peak):
    tx = optax.adam(3e-3)
    graphdef, state = train.init_state(model_fn, tx, jax.random.key(0), CONSTANTS)
    single = train.make_train_step(graphdef, tx, method)
    flops = None
    for k, fn in ((1, single), (K, train.make_multi_step(single))):
        step = jax.jit(fn, donate_argnums=0)
        batch = common.data(batch_size * k, shape)
        if k > 1:
            batch = {key: v.reshape(k, batch_size, *v.shape[1:]) for key, v in batch.items()}
        batch = jax.device_put(batch)
        if flops is None:  # XLA's count of one step (it counts a scan's body once)
            cost = step.lower(state, batch).compile().cost_analysis()
            flops = float((cost[0] if isinstance(cost, list | tuple) else cost)["flops"])
        calls = max(2, common.steps(int(2e10 / max(flops * k, 1.0))))

        def run(step=step, batch=batch, calls=calls, per_call=flops * k):
            s, _ = step(common.copy(state), batch)
            jax.block_until_ready(s)
            t0 = time.perf_counter()
            for _ in range(calls):
                s, _ = step(s, batch)
            jax.block_until_ready(s)
            return calls * per_call / (time.perf_counter() - t0)

        achieved = common.median(run)
        print(
            f"  {name:34s} {batch_size:6d} {k:5d} {flops / 1e9:11.3f} {achieved / 1e9:9.1f} "
            f"{achieved / peak:9.1%}"
        )


def bench_flops():
    n = 2048
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    matmul = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(matmul(a, a))

    def time_matmul():
        t0 = time.perf_counter()
        for _ in range(5):
            out = matmul(a, a)
        jax.block_until_ready(out)
        return 5 * 2 * n**3 / (time.perf_counter() - t0)

    peak = common.median(time_matmul)
    print(f"\nflops: float32 matmul {n}x{n}: {peak / 1e9:,.1f} GFLOP/s (the reference)")
    print(
        f"  {'train step (XLA CPU)':34s} {'batch':>6s} {'steps':>5s} {'GFLOP/step':>11s} "
        f"{'GFLOP/s':>9s} {'of matmul':>9s}"
    )
    teacher = functools.partial(
        models.image_regressor, "resnet", 1, (16, 32, 64), 1, stem=16, stem_stride=2
    )
    sizes = [int(b) for b in common.FLOPS_BATCHES.value]
    for batch_size in sizes:
        student = common.face_student()
        _flops_case(
            "faces student (MobileNet-like)", student, METHOD, (25, 25, 1), batch_size, peak
        )
    for batch_size in [b for b in sizes if b <= 256]:
        _flops_case("faces teacher (ResNet)", teacher, "scratch_l2", (25, 25, 1), batch_size, peak)


class _OnDevice:
    """The same batches, all on the device before the loop starts: each step's, and every
    block of K steps already stacked (fit's next_block), so feeding costs nothing."""

    def __init__(self, host):
        self.steps = jax.device_put(host)
        self.blocks = {
            i: jax.device_put({key: np.stack([b[key] for b in host[i : i + K]]) for key in host[0]})
            for i in range(0, len(host) - K + 1, K)
        }
        jax.block_until_ready((self.steps, self.blocks))
        self.step = 0

    def start(self, step):
        self.step = step
        return self

    def __iter__(self):
        return self

    def __next__(self):
        self.step += 1
        return self.steps[self.step - 1]

    def next_block(self, k):
        assert k == K and self.step in self.blocks, (k, self.step)  # fit's blocks align here
        self.step += k
        return self.blocks[self.step - k]


def _pipeline_case(name, model_fn, shape, batch_size, steps):
    arrays = common.data(4096, shape)
    tx = optax.adam(3e-3)
    graphdef, state = train.init_state(model_fn, tx, jax.random.key(0), CONSTANTS)
    single = train.make_train_step(graphdef, tx, METHOD)
    step = jax.jit(single, donate_argnums=0)
    multi = jax.jit(train.make_multi_step(single), donate_argnums=0)
    feed = functools.partial(input_pipeline.batches, arrays, batch_size=batch_size, seed=0)
    on_device = _OnDevice(list(itertools.islice(feed(), steps + 2 * K)))
    feeds = {
        "input pipeline (host arrays)": lambda start: feed(start_step=start),
        "batches already on device": on_device.start,
    }
    print(f"  {name}, batch {batch_size}, {steps} steps:")
    for k in (1, K):
        # The two feeds alternate within each round, so a drift of the machine's speed
        # affects both alike.
        rounds = [
            {
                label: common.fit_rate(state, step, multi, f, steps, batch_size, k)
                for label, f in feeds.items()
            }
            for _ in range(common.REPEATS.value)
        ]
        rates = {label: float(np.median([r[label] for r in rounds])) for label in feeds}
        (a, ra), (b, rb) = rates.items()
        print(f"    {k:2d} step(s) per call: {a} {ra:10,.0f} examples/s, {b} {rb:10,.0f}:")
        print(f"      the pipeline is {1 - ra / rb:+.1%} slower (goal: within 5 %)")


def bench_pipeline():
    print("\npipeline: loop.fit fed by the input pipeline vs by batches already on device")
    mlp = functools.partial(models.mlp, 1, [16, 16], 1, two_heads=True)
    _pipeline_case("sinusoid student MLP", mlp, (1,), 128, common.steps(4000))
    _pipeline_case("faces student CNN", common.face_student(), (25, 25, 1), 64, common.steps(800))
