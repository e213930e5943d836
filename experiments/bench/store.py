r"""Student training throughput with and without a teacher, printed side by side.

For the sinusoid MLPs and for a CNN on MPIIGaze-sized eye images (36×60×1), the same
student trains for the same steps with:

  (a) scratch  - no teacher: batches of (x, y) from memory, scratch_l2;
  (b) store    - teacher predictions streamed from the on-disk teacher store (tensorstore
                 reads of each batch's rows), kd_mix;
  (b') loaded  - the same store loaded into memory first (small stores), kd_mix;
  (c) online   - the teacher's forward pass inside the jitted train step, kd_mix.

Goal: (b) within 10 % of (a); (c)/(b) says what the store saves. Run:

  python -m experiments.bench.store              # about 5 minutes on a 2-core CPU
  python -m experiments.bench.store --scale 0.05 --rows 0.05 --repeats 1   # a smoke run
"""

from __future__ import annotations

import functools
import os
import tempfile
import time

import jax
import numpy as np
import optax
from absl import app, flags

from kd_regression import input_pipeline, models, teacher_store, train

_SCALE = flags.DEFINE_float("scale", 1.0, "Multiplies every case's timed steps.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Rounds over all variants; the median is shown.")
_WARMUP = flags.DEFINE_integer("warmup", 20, "Untimed steps first (compilation, caches).")
_ROWS = flags.DEFINE_float(
    "rows",
    1.0,
    "Multiplies every case's number of examples (a smoke run's: filling the CNN teacher's "
    "store is a forward pass over every example).",
)


def _throughput(step, state, batch_iter, steps, warmup, batch_size):
    for _ in range(warmup):
        state, _ = step(state, next(batch_iter))
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, _ = step(state, next(batch_iter))
    jax.block_until_ready(state)
    return steps * batch_size / (time.perf_counter() - t0)


def bench(name, x, y, teacher_fn, student_fn, batch_size, workdir, steps, warmup, repeats):
    tx = optax.adam(1e-3)
    t_graph, t_state = train.init_state(teacher_fn, tx, jax.random.key(1))
    t_predict = jax.jit(train.make_predict_fn(t_graph))
    store = teacher_store.compute(
        os.path.join(workdir, name),
        lambda i: np.asarray(t_predict(t_state, x[i])["main"]),
        fingerprint={"bench": name},
        out_shape=y.shape,
        batch_size=1024,
        chunk_rows=1024,
    )

    def student(method):
        graph, state = train.init_state(
            functools.partial(student_fn, two_heads=False), tx, jax.random.key(0)
        )
        return state, train.make_train_step(graph, tx, method)

    def batches(arrays):
        return input_pipeline.batches(arrays, batch_size=batch_size, seed=0)

    state, fn = student("scratch_l2")
    scratch_step = jax.jit(fn, donate_argnums=0)
    kd_state, kd_fn = student("kd_mix")
    kd_step = jax.jit(kd_fn, donate_argnums=0)
    t_fn = train.make_predict_fn(t_graph)

    def online(state, batch, t_state):
        teacher = jax.lax.stop_gradient(t_fn(t_state, batch["x"])["main"])
        return kd_fn(state, {**batch, "teacher": teacher})

    online_jit = jax.jit(online, donate_argnums=0)
    variants = {
        "(a) scratch": (scratch_step, state, {"x": x, "y": y}),
        "(b) store": (kd_step, kd_state, {"x": x, "y": y, "teacher": store}),
        "(b') loaded": (kd_step, kd_state, {"x": x, "y": y, "teacher": store.load()}),
        "(c) online": (lambda s, b: online_jit(s, b, t_state), kd_state, {"x": x, "y": y}),
    }
    results = {k: [] for k in variants}
    for _ in range(repeats):  # interleaved rounds, so drifts in machine load hit all alike
        for k, (step, init, arrays) in variants.items():
            fresh = jax.tree.map(lambda a: a.copy(), init)  # the step donates its state
            results[k].append(_throughput(step, fresh, batches(arrays), steps, warmup, batch_size))
    return {k: float(np.median(v)) for k, v in results.items()}


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    n_mlp, n_cnn = (max(256, int(n * _ROWS.value)) for n in (20000, 4096))
    cases = [
        (
            "sinusoid MLP (teacher 128-128-128, student 16-16, batch 128)",
            rng.uniform(-1, 1, (n_mlp, 1)).astype(np.float32),
            rng.normal(size=(n_mlp, 1)).astype(np.float32),
            functools.partial(models.mlp, 1, [128, 128, 128], 1),
            functools.partial(models.mlp, 1, [16, 16], 1),
            128,
            3000,
        ),
        (
            # experiments/configs/mpiigaze.py's teacher and student. Fewer timed steps than
            # the MLP: on a 2-core CPU a step of these full-resolution trunks takes 0.1-0.2 s,
            # 0.4 s with the teacher online.
            "CNN on 36x60x1 images (teacher ResNet 32-64-128, 2 blocks a stage; "
            "student MobileNet-like 16-32-64; batch 64)",
            rng.uniform(0, 1, (n_cnn, 36, 60, 1)).astype(np.float32),
            rng.normal(size=(n_cnn, 2)).astype(np.float32),
            functools.partial(
                models.image_regressor, "resnet", 1, (32, 64, 128), 2, stem=32, blocks_per_stage=2
            ),
            functools.partial(models.image_regressor, "mobilenet", 1, (16, 32, 64), 2, stem=16),
            64,
            60,
        ),
    ]
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU cores; "
        f"median of {_REPEATS.value} interleaved rounds"
    )
    with tempfile.TemporaryDirectory() as workdir:
        for i, (name, x, y, teacher_fn, student_fn, batch, steps) in enumerate(cases):
            steps = max(1, int(steps * _SCALE.value))
            r = bench(
                f"case{i}",
                x,
                y,
                teacher_fn,
                student_fn,
                batch,
                workdir,
                steps,
                _WARMUP.value,
                _REPEATS.value,
            )
            base = r["(a) scratch"]
            print(f"\n{name}, {steps} timed steps")
            for k, v in r.items():
                print(f"  {k:12s} {v:12,.0f} examples/s   {v / base:6.2f} × scratch")
            print(
                f"  (b)/(a) = {r['(b) store'] / base:.2f}   "
                f"(c)/(b) = {r['(c) online'] / r['(b) store']:.2f}"
            )


if __name__ == "__main__":
    app.run(main)
