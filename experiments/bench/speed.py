r"""Speed: our training against the obvious PyTorch loop, and against the machine.

Every section prints its figures side by side from one run:

  mlp       the sinusoid student MLP (16, 16), tor_multitask, batch 128: examples/s of our
            jitted step on batches already on the device (1 and 16 steps per call), of
            our whole loop (loop.fit on the real input pipeline, 16 steps per call as
            the sinusoid config runs it), and of the PyTorch loop; goal >= 3x PyTorch.
  cnn       the faces student CNN (MobileNet-like, 25x25 images), tor_multitask, batch 64
            (loop.fit at 1 step per call, as the image configs run it); goal: at least
            on par with PyTorch.
  sweep     the whole sinusoid sweep (experiments/configs/sinusoid.py, every cell, seed and
            method; early stopping off so both sides train the same steps): our
            sweep.run, end to end, against the same trainings run one after another in
            PyTorch (training, the teacher's evaluations and predictions only; no store,
            no reports); goal >= 10x.
  flops     achieved FLOP/s of the faces CNNs' train steps (XLA's count of one compiled
            step / time), as a fraction of a large float32 matmul's, per batch size and
            steps per call.
  pipeline  the same loop.fit loop fed by the real input pipeline and by batches already
            on the device (each block of steps already stacked), alternating; goal:
            within 5 %.

  pip install -r requirements-bench.txt          # PyTorch (CPU), for mlp / cnn / sweep
  python -m experiments.bench.speed              # everything: about 30 min on 2 cores
  python -m experiments.bench.speed --only=mlp,cnn,flops,pipeline   # about 6 min
  python -m experiments.bench.speed --scale=0.02 --repeats=1 --sweep_config=quick \
      --sweep_methods=scratch_l2,tor_multitask                                    # smoke

Numbers are medians over ``--repeats`` rounds; compilation is excluded by warm-up steps
(the sweep's total includes its compilations, as a user's run does).
"""

from __future__ import annotations

import functools
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, logging

from experiments.bench import common
from experiments.bench import machine as bench_machine
from experiments.bench.common import FACE_STUDENT, METHOD, SECTIONS, K
from kd_regression import methods, models


def bench_mlp():
    import torch

    from experiments.bench import torch_baseline

    arrays = common.data(2000, (1,))
    steps = common.steps(4000)
    model_fn = functools.partial(models.mlp, 1, [16, 16], 1, two_heads=True)
    ours = common.ours_rates(model_fn, arrays, 128, steps, loop_k=K)  # config.steps_per_call
    torch_model = torch_baseline.MLP(1, [16, 16], 1, two_heads=True)
    torch_baseline.load_flax(torch_model, ours[0].params)
    theirs = common.torch_rate(torch_model, arrays, 128, steps)
    common.versus(
        f"mlp: sinusoid student MLP (16, 16), {METHOD}, batch 128, {steps} steps "
        f"(torch {torch.__version__}, {torch.get_num_threads()} threads)",
        ours,
        theirs,
        ">= 3x",
    )


def bench_cnn():
    from experiments.bench import torch_baseline

    arrays = common.data(4096, (25, 25, 1))
    steps = common.steps(400)
    # loop_k: config.steps_per_call of the image configs
    ours = common.ours_rates(common.face_student(), arrays, 64, steps, loop_k=1)
    w = FACE_STUDENT
    torch_model = torch_baseline.MobileNet(
        1, w["widths"], 1, stem=w["stem"], stem_stride=w["stem_stride"], two_heads=True
    )
    torch_baseline.load_flax(torch_model, ours[0].params, ours[0].model_state)
    theirs = common.torch_rate(torch_model, arrays, 64, steps, nchw=True)
    common.versus(
        f"cnn: faces student CNN {w['widths']}, 25x25x1, {METHOD}, batch 64, {steps} steps",
        ours,
        theirs,
        "on par with or faster than",
    )


def _sweep_config():
    """The sinusoid config both sides run: the same steps (no early stop), one checkpoint."""
    from experiments.configs import sinusoid

    config = sinusoid.get_config(common.SWEEP_CONFIG.value)
    if common.SWEEP_METHODS.value:  # the smoke test: one single-head and one two-head student
        config.methods = tuple(common.SWEEP_METHODS.value)
    config.teacher.patience = None  # the same steps on both sides
    config.teacher.num_steps = common.steps(config.teacher.num_steps)
    config.student.num_steps = common.steps(config.student.num_steps)
    config.teacher.eval_every = min(config.teacher.eval_every, config.teacher.num_steps)
    config.teacher.checkpoint_every = config.teacher.num_steps
    config.student.checkpoint_every = config.student.num_steps
    return config


def _torch_seed(config, cfg, at, data: dict, i: int, seed: int) -> None:
    """Seed ``seed`` (member ``i`` of ``data``) of the cell ``at`` in PyTorch: the teacher
    with its evaluations and training-set predictions, then every method's student and its
    test predictions."""
    import torch

    from experiments.bench import torch_baseline
    from experiments.sweep import cell

    t, s = config.teacher, config.student
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
    # δ and η as the sweep computes them (methods.loss_constants, the config's rule).
    constants = {
        k: float(v)
        for k, v in methods.loss_constants(
            jnp.asarray(as_t["y_train"].numpy()), jnp.asarray(t_train.numpy()), cfg
        ).items()
    }
    arrays = {"x": as_t["x_train"], "y": as_t["y_train"], "teacher": t_train}
    for method in config.methods:
        two = methods.get_method(method).two_heads
        student = torch_baseline.MLP(1, list(s.hidden), 1, two_heads=two)
        torch_baseline.fit(
            student,
            method,
            arrays,
            steps=s.num_steps,
            batch_size=s.batch_size,
            learning_rate=s.learning_rate,
            constants={**constants, **cell.method_constants(at, method)},
            cfg=cfg,
            seed=seed,
        )
        student.eval()
        with torch.no_grad():
            student(as_t["x_test"])


def bench_sweep():
    from experiments import tasks
    from experiments.sweep import cell, sweep

    config = _sweep_config()
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

    # PyTorch: the same trainings one after another.
    cfg = methods.LossConfig.from_dict(config.loss.to_dict())
    t0 = time.perf_counter()
    for kind, level in cells:
        at = cell.Cell(kind, level)
        data = cell.cell_data(config, tasks.get_task("sinusoid"), at)
        for i, seed in enumerate(seeds):
            _torch_seed(config, cfg, at, data, i, seed)
    theirs = time.perf_counter() - t0
    t, s = config.teacher, config.student
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


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    unknown = sorted(set(common.ONLY.value) - set(SECTIONS))
    if unknown:
        raise app.UsageError(f"--only: unknown sections {unknown}; allowed {SECTIONS}")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} CPUs)")
    benches = {
        "mlp": bench_mlp,
        "cnn": bench_cnn,
        "sweep": bench_sweep,
        "flops": bench_machine.bench_flops,
        "pipeline": bench_machine.bench_pipeline,
    }
    for name in SECTIONS:
        if name in common.ONLY.value:
            benches[name]()


if __name__ == "__main__":
    app.run(main)
