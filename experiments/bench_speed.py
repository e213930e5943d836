r"""Speed: our training against the obvious PyTorch loop, and against the machine.

Every section prints its figures side by side from one run:

  mlp       the sinusoid student MLP (16, 16), tor_multitask, batch 128: examples/s of our
            jitted step on batches already on the device (1 and 16 steps per call), of
            our whole loop (train.fit on the real input pipeline, 16 steps per call as
            the sinusoid config runs it), and of the PyTorch loop; goal >= 3x PyTorch.
  cnn       the faces student CNN (MobileNet-like, 25x25 images), tor_multitask, batch 64
            (train.fit at 1 step per call, as the image configs run it); goal: at least
            on par with PyTorch.
  sweep     the whole sinusoid sweep (experiments/configs/sinusoid.py, every cell, seed and
            method; early stopping off so both sides train the same steps): our
            sweep.run, end to end, against the same trainings run one after another in
            PyTorch (training, the teacher's evaluations and predictions only; no store,
            no reports); goal >= 10x.
  flops     achieved FLOP/s of the faces CNNs' train steps (XLA's count of one compiled
            step / time), as a fraction of a large float32 matmul's, per batch size and
            steps per call.
  pipeline  the same train.fit loop fed by the real input pipeline and by batches already
            on the device (each block of steps already stacked), alternating; goal:
            within 5 %.

  pip install -r requirements-bench.txt          # PyTorch (CPU), for mlp / cnn / sweep
  python -m experiments.bench_speed              # everything: about 30 min on 2 cores
  python -m experiments.bench_speed --only=mlp,cnn,flops,pipeline   # about 6 min
  python -m experiments.bench_speed --scale=0.02 --repeats=1 --sweep_config=quick  # smoke

Numbers are medians over ``--repeats`` rounds; compilation is excluded by warm-up steps
(the sweep's total includes its compilations, as a user's run does).
"""

from __future__ import annotations

import functools
import itertools
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging

from kd_regression import input_pipeline, models, train

SECTIONS = ("mlp", "cnn", "sweep", "flops", "pipeline")
_ONLY = flags.DEFINE_list("only", list(SECTIONS), f"Sections to run, of {SECTIONS}.")
_SCALE = flags.DEFINE_float("scale", 1.0, "Multiplies every section's step counts.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Rounds per measurement; the median is shown.")
_FLOPS_BATCHES = flags.DEFINE_list(
    "flops_batches",
    ["64", "256", "1024"],
    "Batch sizes of the flops section (the teacher's stop at 256: its 16-step scan is slow).",
)
_SWEEP_CONFIG = flags.DEFINE_string(
    "sweep_config", "", "Argument of the sinusoid config for the sweep section ('quick': tiny)."
)

METHOD = "tor_multitask"
CONSTANTS = {"threshold": np.float32(0.3), "eta": np.float32(1.0)}
K = 16  # train steps per compiled call (config.steps_per_call in the experiments)


def _steps(n: int) -> int:
    return max(2, int(n * _SCALE.value))


def _median(fn) -> float:
    return float(np.median([fn() for _ in range(_REPEATS.value)]))


def _data(n, x_shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, *x_shape)).astype(np.float32)
    y = rng.normal(size=(n, 1)).astype(np.float32)
    teacher = (y + rng.normal(scale=0.2, size=(n, 1))).astype(np.float32)
    return {"x": x, "y": y, "teacher": teacher}


def _copy(state):
    return jax.tree.map(lambda a: a.copy(), state)


def _ours(model_fn, arrays, batch_size, steps, loop_k, lr=3e-3):
    """examples/s of our jitted step on device batches, one step and K steps per call, and
    of train.fit on the real input pipeline (``loop_k`` steps per call, as the model's
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
        s = _copy(state)
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
        return _fit_rate(
            state, step, multi, lambda start: feed(start_step=start), steps, batch_size, loop_k
        )

    return state, _median(one_per_call), _median(k_per_call), _median(whole_loop), loop_k


def _fit_rate(state, step, multi, feed, steps, batch_size, k=K):
    """examples/s of train.fit (``k`` steps per call, logging every tenth of the run)."""
    kw = dict(multi_step=multi if k > 1 else None, steps_per_call=k)
    # Warm-up: one block and one single step compile both programs.
    train.fit(_copy(state), step, feed, num_steps=k + 1, log_every=k + 1, **kw)
    s = _copy(state)
    t0 = time.perf_counter()
    result = train.fit(s, step, feed, num_steps=steps, log_every=max(1, steps // 10), **kw)
    jax.block_until_ready(result.state)
    return steps * batch_size / (time.perf_counter() - t0)


def _torch(torch_model, arrays, batch_size, steps, lr=3e-3, nchw=False):
    import torch

    from experiments import torch_baseline

    x = arrays["x"].transpose(0, 3, 1, 2) if nchw else arrays["x"]
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    tensors["x"] = torch.from_numpy(np.ascontiguousarray(x))
    cfg = train.LossConfig()
    constants = {k: float(v) for k, v in CONSTANTS.items()}
    state = {k: v.clone() for k, v in torch_model.state_dict().items()}

    def run():
        torch_model.load_state_dict(state)
        kw = dict(batch_size=batch_size, learning_rate=lr, constants=constants, cfg=cfg)
        torch_baseline.fit(torch_model, METHOD, tensors, steps=8, **kw)  # warm-up
        torch_model.load_state_dict(state)
        seconds = torch_baseline.fit(torch_model, METHOD, tensors, steps=steps, **kw)
        return steps * batch_size / seconds

    return _median(run)


def _versus(name, ours, theirs, goal):
    _, one, k, loop, loop_k = ours
    print(f"\n{name}")
    for label, rate in (
        ("ours: jitted step, 1 step per call", one),
        (f"ours: jitted step, {K} steps per call", k),
        (f"ours: train.fit + input pipeline, {loop_k}/call", loop),
        ("PyTorch: eager loop", theirs),
    ):
        print(f"  {label:44s} {rate:12,.0f} examples/s  {rate / theirs:6.2f}x PyTorch")
    print(f"  goal: ours (train.fit) {goal} PyTorch")


def bench_mlp():
    import torch

    from experiments import torch_baseline

    arrays = _data(2000, (1,))
    model_fn = functools.partial(models.mlp, 1, [16, 16], 1, two_heads=True)
    ours = _ours(model_fn, arrays, 128, _steps(4000), loop_k=K)  # config.steps_per_call
    torch_model = torch_baseline.MLP(1, [16, 16], 1, two_heads=True)
    torch_baseline.load_flax(torch_model, ours[0].params)
    theirs = _torch(torch_model, arrays, 128, _steps(4000))
    _versus(
        f"mlp: sinusoid student MLP (16, 16), {METHOD}, batch 128, {_steps(4000)} steps "
        f"(torch {torch.__version__}, {torch.get_num_threads()} threads)",
        ours,
        theirs,
        ">= 3x",
    )


FACE_STUDENT = dict(widths=(8, 16, 32), stem=8, stem_stride=2, blocks_per_stage=1)


def _face_student(two_heads=True):
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


def bench_cnn():
    from experiments import torch_baseline

    arrays = _data(4096, (25, 25, 1))
    ours = _ours(_face_student(), arrays, 64, _steps(400), loop_k=1)  # config.steps_per_call
    w = FACE_STUDENT
    torch_model = torch_baseline.MobileNet(
        1, w["widths"], 1, stem=w["stem"], stem_stride=w["stem_stride"], two_heads=True
    )
    torch_baseline.load_flax(torch_model, ours[0].params, ours[0].model_state)
    theirs = _torch(torch_model, arrays, 64, _steps(400), nchw=True)
    _versus(
        f"cnn: faces student CNN {w['widths']}, 25x25x1, {METHOD}, batch 64, {_steps(400)} steps",
        ours,
        theirs,
        "on par with or faster than",
    )


def bench_sweep():
    import torch

    from experiments import sweep, torch_baseline
    from experiments.configs import sinusoid

    config = sinusoid.get_config(_SWEEP_CONFIG.value)
    config.teacher.patience = None  # the same steps on both sides
    config.teacher.num_steps = _steps(config.teacher.num_steps)
    config.student.num_steps = _steps(config.student.num_steps)
    config.teacher.eval_every = min(config.teacher.eval_every, config.teacher.num_steps)
    config.teacher.checkpoint_every = config.teacher.num_steps
    config.student.checkpoint_every = config.student.num_steps
    cells = []  # level 0 runs once for all noise models, as in the sweep
    for kind in config.noise:
        for level in config.noise[kind]:
            if not (float(level) == 0.0 and any(lv == 0.0 for _, lv in cells)):
                cells.append((kind, float(level)))
    seeds = [config.seed + s for s in range(config.num_seeds)]
    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        sweep.run(config, workdir)
        ours = time.perf_counter() - t0

    # PyTorch: the same trainings one after another (teacher with its evaluations and
    # training-set predictions, then every method's student and its test predictions).
    cfg = train.LossConfig.from_dict(config.loss.to_dict())
    t, s = config.teacher, config.student
    t0 = time.perf_counter()
    for kind, level in cells:
        data = sweep._cell_data(config, kind, level)
        for i, seed in enumerate(seeds):
            torch.manual_seed(seed)
            as_t = {k: torch.from_numpy(np.asarray(v[i])) for k, v in data.items()}
            teacher = torch_baseline.MLP(1, list(t.hidden), 1)
            val_x, val_y = as_t["x_val"], as_t["y_val"]
            torch_baseline.fit(
                teacher,
                t.method,
                {"x": as_t["x_train"], "y": as_t["y_train"]},
                steps=t.num_steps,
                batch_size=t.batch_size,
                learning_rate=t.learning_rate,
                constants={},
                cfg=cfg,
                seed=seed,
                eval_every=t.eval_every,
                eval_fn=lambda m, vx=val_x, vy=val_y: (m(vx)["main"] - vy).square().mean(),
            )
            teacher.eval()
            with torch.no_grad():
                t_train = teacher(as_t["x_train"])["main"]
            # δ and η as the sweep computes them (train.loss_constants, the config's rule).
            constants = {
                k: float(v)
                for k, v in train.loss_constants(
                    jnp.asarray(as_t["y_train"].numpy()), jnp.asarray(t_train.numpy()), cfg
                ).items()
            }
            arrays = {"x": as_t["x_train"], "y": as_t["y_train"], "teacher": t_train}
            for method in config.methods:
                two = train.get_method(method).two_heads
                student = torch_baseline.MLP(1, list(s.hidden), 1, two_heads=two)
                torch_baseline.fit(
                    student,
                    method,
                    arrays,
                    steps=s.num_steps,
                    batch_size=s.batch_size,
                    learning_rate=s.learning_rate,
                    constants=constants,
                    cfg=cfg,
                    seed=seed,
                )
                student.eval()
                with torch.no_grad():
                    student(as_t["x_test"])
    theirs = time.perf_counter() - t0
    runs = len(cells) * len(seeds)
    examples = runs * (
        t.num_steps * t.batch_size + len(config.methods) * s.num_steps * s.batch_size
    )
    print(
        f"\nsweep: sinusoid, {len(cells)} cells x {len(seeds)} seeds x (teacher "
        f"{t.num_steps} steps + {len(config.methods)} students x {s.num_steps} steps)"
    )
    for label, seconds in (
        ("ours: sweep.run, end to end", ours),
        ("PyTorch: the trainings one by one", theirs),
    ):
        print(f"  {label:44s} {seconds:9.1f} s {examples / seconds:12,.0f} examples/s")
    print(f"  ratio ours/PyTorch: {theirs / ours:.2f}x (goal >= 10x)")


def _flops_case(name, model_fn, method, shape, batch_size, peak):
    tx = optax.adam(3e-3)
    graphdef, state = train.init_state(model_fn, tx, jax.random.key(0), CONSTANTS)
    single = train.make_train_step(graphdef, tx, method)
    flops = None
    for k, fn in ((1, single), (K, train.make_multi_step(single))):
        step = jax.jit(fn, donate_argnums=0)
        batch = _data(batch_size * k, shape)
        if k > 1:
            batch = {key: v.reshape(k, batch_size, *v.shape[1:]) for key, v in batch.items()}
        batch = jax.device_put(batch)
        if flops is None:  # XLA's count of one step (it counts a scan's body once)
            cost = step.lower(state, batch).compile().cost_analysis()
            flops = float((cost[0] if isinstance(cost, list | tuple) else cost)["flops"])
        calls = max(2, _steps(int(2e10 / max(flops * k, 1.0))))

        def run(step=step, batch=batch, calls=calls, per_call=flops * k):
            s, _ = step(_copy(state), batch)
            jax.block_until_ready(s)
            t0 = time.perf_counter()
            for _ in range(calls):
                s, _ = step(s, batch)
            jax.block_until_ready(s)
            return calls * per_call / (time.perf_counter() - t0)

        achieved = _median(run)
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

    peak = _median(time_matmul)
    print(f"\nflops: float32 matmul {n}x{n}: {peak / 1e9:,.1f} GFLOP/s (the reference)")
    print(
        f"  {'train step (XLA CPU)':34s} {'batch':>6s} {'steps':>5s} {'GFLOP/step':>11s} "
        f"{'GFLOP/s':>9s} {'of matmul':>9s}"
    )
    teacher = functools.partial(
        models.image_regressor, "resnet", 1, (16, 32, 64), 1, stem=16, stem_stride=2
    )
    sizes = [int(b) for b in _FLOPS_BATCHES.value]
    for batch_size in sizes:
        student = _face_student()
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
    arrays = _data(4096, shape)
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
                label: _fit_rate(state, step, multi, f, steps, batch_size, k)
                for label, f in feeds.items()
            }
            for _ in range(_REPEATS.value)
        ]
        rates = {label: float(np.median([r[label] for r in rounds])) for label in feeds}
        (a, ra), (b, rb) = rates.items()
        print(f"    {k:2d} step(s) per call: {a} {ra:10,.0f} examples/s, {b} {rb:10,.0f}:")
        print(f"      the pipeline is {1 - ra / rb:+.1%} slower (goal: within 5 %)")


def bench_pipeline():
    print("\npipeline: train.fit fed by the input pipeline vs by batches already on device")
    mlp = functools.partial(models.mlp, 1, [16, 16], 1, two_heads=True)
    _pipeline_case("sinusoid student MLP", mlp, (1,), 128, _steps(4000))
    _pipeline_case("faces student CNN", _face_student(), (25, 25, 1), 64, _steps(800))


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    unknown = sorted(set(_ONLY.value) - set(SECTIONS))
    if unknown:
        raise app.UsageError(f"--only: unknown sections {unknown}; allowed {SECTIONS}")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} CPUs)")
    for name in SECTIONS:
        if name in _ONLY.value:
            globals()[f"bench_{name}"]()


if __name__ == "__main__":
    app.run(main)
