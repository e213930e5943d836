r"""The compression table: each config's teacher against its student, as deployed files.

For the sinusoid (MLP 128³ against 16²), faces (ResNet against MobileNet-like), MPIIGaze
and Multi-PIE config models (random weights: latency does not depend on them), printed
side by side with the teacher/student ratios:

  parameters, FLOPs per example (XLA's count), ONNX file size, onnxruntime CPU latency at
  batch 1 (median and p95 of many calls, one thread), onnxruntime throughput at batch 64
  (one thread), JAX's own jitted latency at batch 1, and, given finished workdirs, each
  model's test error there (teacher and tor_multitask student, mean over seeds).

The student is exported as the sweep trains it (``tor_multitask``: two heads, the label
head kept), with its depthwise convolutions as trained (``taps``) and as one grouped
convolution (``conv``, the same parameters). Run:

  python -m experiments.bench.export                      # about 3 minutes on a 2-core CPU
  python -m experiments.bench.export --runs sinusoid=DIR,faces=DIR --cell outliers_0.2
  python -m experiments.bench.export --tasks sinusoid --calls 20   # a smoke run
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
import types

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from experiments import tasks
from experiments.configs import faces, mpiigaze, multipie, sinusoid
from experiments.report import report
from experiments.sweep.validation import cell_name
from kd_regression import export, models

_TASKS = flags.DEFINE_list("tasks", ["sinusoid", "faces", "mpiigaze", "multipie"], "Tasks.")
_CALLS = flags.DEFINE_integer("calls", 500, "Timed calls per latency measurement.")
_BATCH = flags.DEFINE_integer("batch", 64, "Batch size of the throughput measurement.")
_RUNS = flags.DEFINE_list("runs", [], "task=WORKDIR of finished sweeps, for the test errors.")
_CELL = flags.DEFINE_string("cell", "outliers_0.2", "The cell whose test errors are shown.")

CONFIGS = {"sinusoid": sinusoid, "faces": faces, "mpiigaze": mpiigaze, "multipie": multipie}
INPUTS = {  # one example's shape, as the task's models take it
    "sinusoid": (1,),
    "faces": (25, 25, 1),
    "mpiigaze": (36, 60, 1),
    "multipie": (64, 64, 3),
}
STUDENT_METHOD = "tor_multitask"


def _model(task: str, role: str, depthwise: str | None = None):
    """The config's model of ``role`` (random weights), and its export function."""
    config = CONFIGS[task].get_config()
    two_heads = role == "student"
    make = tasks.TASKS[task].model_fn(config[role], two_heads)
    if depthwise is not None:
        make = functools.partial(make, depthwise=depthwise)
    model = make(rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    head = models.LABEL_HEAD if two_heads else models.MAIN_HEAD
    # inference_fn reads a train state's params and model_state only
    predict = export.inference_fn(graphdef, types.SimpleNamespace(params=params, model_state=rest))
    return model, params, lambda x: {head: predict(x)[head]}


def _times(call, calls: int) -> np.ndarray:
    for _ in range(max(5, calls // 20)):  # warm-up: compilation, allocations, caches
        call()
    out = np.empty(calls)
    for i in range(calls):
        t = time.perf_counter()
        call()
        out[i] = time.perf_counter() - t
    return out


def _ort_session(path: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def measure(task: str, role: str, directory: str, depthwise: str | None = None) -> dict:
    """One model's figures (see the module's docstring)."""
    model, params, fn = _model(task, role, depthwise)
    shape = INPUTS[task]
    rng = np.random.default_rng(0)
    x1 = rng.uniform(0, 1, (1, *shape)).astype(np.float32)
    xb = rng.uniform(0, 1, (_BATCH.value, *shape)).astype(np.float32)
    path = os.path.join(directory, f"{task}-{role}-{depthwise}.onnx")
    export.export_onnx(fn, shape, path, name=f"{task} {role}", check_inputs=xb[:8])
    session = _ort_session(path)
    out = session.get_outputs()[0].name
    ort_1 = _times(lambda: session.run([out], {"x": x1}), _CALLS.value)
    calls_b = max(5, _CALLS.value // 10)
    ort_b = _times(lambda: session.run([out], {"x": xb}), calls_b)
    jitted = jax.jit(fn)
    x1_jax = jax.device_put(x1)
    jax_1 = _times(lambda: jax.block_until_ready(jitted(x1_jax)), _CALLS.value)
    return {
        "params": models.param_count(params),
        "mflops": models.flops_per_example(model, shape) / 1e6,
        "onnx_kb": os.path.getsize(path) / 1024,
        "ort_p50_ms": 1e3 * float(np.median(ort_1)),
        "ort_p95_ms": 1e3 * float(np.percentile(ort_1, 95)),
        "ort_ex_s": _BATCH.value / float(np.median(ort_b)),
        "jax_p50_ms": 1e3 * float(np.median(jax_1)),
    }


def call_floor(directory: str) -> float:
    """Median ms of ``session.run`` on a one-operation model: the fixed cost of a call."""
    path = os.path.join(directory, "floor.onnx")
    x = np.zeros((1, *INPUTS["faces"]), np.float32)
    export.export_onnx(
        lambda v: {"y": v + 1.0}, INPUTS["faces"], path, name="floor", check_inputs=x
    )
    session = _ort_session(path)
    return 1e3 * float(np.median(_times(lambda: session.run(["y"], {"x": x}), _CALLS.value)))


def test_errors(workdir: str, cell: str) -> dict[str, float]:
    """Teacher and student test error (the task's metric, mean over seeds and folds) in
    ``cell`` (a name without its fold, e.g. ``outliers_0.2``)."""
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
        metric = tasks.get_task(json.load(f)["dataset"]["name"]).metric[0]
    rows = report.load_rows(os.path.join(workdir, "results.jsonl"))
    out = {}
    for role, method, head in (
        ("teacher", "teacher", models.MAIN_HEAD),
        ("student", STUDENT_METHOD, models.LABEL_HEAD),
    ):
        picked = [
            r[metric]
            for r in rows
            if cell_name(r["noise"], float(r["level"])) == cell  # all folds of it, if any
            and (r["method"], r["head"]) == (method, head)
        ]
        out[role] = float(np.mean(picked)) if picked else None
    return out


COLUMNS = (  # (key, heading, format)
    ("params", "params", "{:,.0f}"),
    ("mflops", "MFLOPs", "{:.4g}"),
    ("onnx_kb", "ONNX KiB", "{:.1f}"),
    ("ort_p50_ms", "ORT b=1 p50 ms", "{:.3f}"),
    ("ort_p95_ms", "ORT b=1 p95 ms", "{:.3f}"),
    ("ort_ex_s", "ORT b={batch} ex/s", "{:,.0f}"),
    ("jax_p50_ms", "JAX b=1 p50 ms", "{:.3f}"),
    ("error", "test error", "{:.4g}"),
)


def table(results: dict[str, dict[str, dict]]) -> str:
    """Markdown: per task, the teacher, the student(s) and teacher/student ratios."""
    heads = [h.format(batch=_BATCH.value) for _, h, _ in COLUMNS]
    lines = ["| model | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for task, models_ in results.items():
        teacher = models_["teacher"]
        for label, m in models_.items():
            cells = [f.format(m[k]) if m.get(k) is not None else "–" for k, _, f in COLUMNS]
            lines.append(f"| {task} {label} | " + " | ".join(cells) + " |")
            if label == "teacher":
                continue
            ratio = []
            for k, _, _ in COLUMNS:  # how many times smaller / faster the student is
                t, s = teacher.get(k), m.get(k)
                if t is None or s is None or not s:
                    ratio.append("–")
                elif k in ("ort_ex_s", "error"):
                    ratio.append(f"{s / t:.2f}×")  # throughput: student/teacher
                else:
                    ratio.append(f"**{t / s:.1f}×**")
            lines.append(f"| {task} teacher / {label} | " + " | ".join(ratio) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    runs = dict(item.split("=", 1) for item in _RUNS.value)
    results = {}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as directory:
        for task in _TASKS.value:
            if task not in CONFIGS:
                raise app.UsageError(f"--tasks: {task!r} is not one of {sorted(CONFIGS)}")
            errors = test_errors(runs[task], _CELL.value) if task in runs else {}
            row = {"teacher": measure(task, "teacher", directory)}
            row["teacher"]["error"] = errors.get("teacher")
            variants = ("taps", "conv") if task != "sinusoid" else (None,)
            for mode in variants:
                label = "student" if mode is None else f"student ({mode})"
                row[label] = measure(task, "student", directory, mode)
                row[label]["error"] = errors.get("student")
            results[task] = row
            print(f"{task}: measured ({time.time() - t0:.0f} s)", flush=True)
        floor = call_floor(directory)
    print()
    print(table(results))
    print()
    print(
        f"onnxruntime's floor per call at batch 1 (a one-Add model of a faces-sized input, "
        f"the same Python call): p50 {floor:.4f} ms"
    )
    print()
    print(
        f"onnxruntime {_ort_version()}, CPU, 1 thread; JAX {jax.__version__} on "
        f"{jax.devices()[0].platform}; {_CALLS.value} calls at batch 1. Ratios: teacher / "
        f"student (how many times smaller or faster), throughput and error: student / teacher."
    )


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    app.run(main)
