"""Export a trained model of a finished sweep: ONNX, StableHLO and a metadata JSON.

    python -m experiments.export --workdir W --cell outliers_0.3 --method tor_multitask \
        --seed 0 [--head label|teacher|all] [--format onnx,stablehlo]

writes ``W/export/<cell>/<method>-seed<S>.onnx`` (and ``.stablehlo``, ``.json``), each
checked against the JAX model on the test split it was scored on before it is kept (see
:mod:`kd_regression.export`). ``--method teacher`` exports the cell's teacher. The JSON
says what a user of the file must know: the input's shape and normalisation, each output
head's meaning and how to get the label back, the training fingerprint, the test metric
in results.jsonl and the same metric of the exported file.

Exit status: 0 written; 2 a request the workdir cannot serve (no such cell, method or
seed, an unfinished fit: the message lists what exists; a workdir that is not a
directory), nothing written; 130 / 143 interrupted by Ctrl-C / SIGTERM (one line, nothing
written; staging folders a SIGKILL left are removed by the next export); 1 an export
that failed (an operation the converter does not support, a mismatch, a damaged store or
a full disk), nothing written: the files are staged and renamed into place at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile

from experiments.sweep import trained
from experiments.sweep.validation import ConfigError
from kd_regression import __version__, export, interrupts, models
from kd_regression.fileio import atomic_write_text

__all__ = ["FORMATS", "export_model", "main"]

FORMATS = ("onnx", "stablehlo")
EXPORT_DIR = "export"
USAGE_ERROR = 2
SENTENCES = ("input", "targets", "to_label")  # of Task.deployment; its other keys are arrays
HEAD_ROLES = {
    models.MAIN_HEAD: "the model's only head",
    models.LABEL_HEAD: "the head trained on the labels (TOR's loss)",
    models.TEACHER_HEAD: "the head trained to imitate the teacher",
}


def export_model(
    workdir: str,
    *,
    cell: str,
    method: str,
    seed: int,
    head: str | None = None,
    formats: tuple[str, ...] = FORMATS,
    depthwise: str = "conv",
) -> dict[str, str]:
    """Exports (cell, method, seed) of ``workdir``; returns ``{format or "json": path}``.

    ``head``: the output head to keep (default: the inference head; ``"all"``: every
    head). ``depthwise``: how an image student's depthwise convolutions are written
    (``"conv"``: one grouped convolution each, which onnxruntime runs 5-20× faster on a
    CPU, see docs/export.md; ``"taps"``: shifted multiply-adds, as the sweep trains them
    on a CPU; the same parameters and function, and each file is checked against the
    model as trained). Raises
    :class:`experiments.sweep.trained.LoadError` (or ``ValueError``) for a request the workdir
    cannot serve and :class:`kd_regression.export.ExportError` for a model
    that does not export; in both cases nothing is written.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ValueError(f"format {', '.join(unknown) or '(none)'}: one or more of {FORMATS}")
    # A signal is acted on only between the steps (interrupts.check): jax2onnx and XLA call
    # back into Python from C++, and an exception a signal raised there was swallowed (the
    # export went on and exited 0) or aborted the process with its staging folder left.
    with interrupts.deferred():
        return _export_model(workdir, cell, method, seed, head, formats, depthwise)


def _export_model(workdir, cell, method, seed, head, formats, depthwise) -> dict[str, str]:
    model = trained.load(workdir, cell=cell, method=method, seed=seed)
    interrupts.check()
    heads = _heads(model, head)
    x, labels = model.test_split()
    reference = _only(model.fn, heads)  # the model as trained
    fn = _only(model.function(depthwise), heads)
    stem = os.path.join(model.workdir, EXPORT_DIR, cell, f"{method}-seed{seed}")
    directory = os.path.dirname(stem)
    os.makedirs(directory, exist_ok=True)
    _remove_stale_staging(directory, os.path.basename(stem))
    # Everything is written in a temporary directory beside the files and renamed into
    # place at the end: a failure leaves the previous export, if any, as it was. Its name
    # holds our pid, so a later export can tell it from a live one if we are killed.
    prefix = f".{os.path.basename(stem)}.tmp{os.getpid()}-"
    staging = tempfile.mkdtemp(prefix=prefix, dir=directory)
    try:
        staged = _stage(
            model,
            f"{cell}/{method}-seed{seed}",
            fn,
            reference,
            heads,
            x,
            labels,
            formats,
            depthwise,
            staging,
        )
        interrupts.check()  # the last point to stop: the files are renamed all or none
        paths = {}
        for fmt in (*FORMATS, "json"):  # another format of an earlier export goes
            path = f"{stem}.{fmt}"
            if fmt in staged:
                os.replace(staged[fmt], path)
                paths[fmt] = path
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return paths


def _remove_stale_staging(directory: str, base: str) -> None:
    """Staging folders of ``base`` that a killed export left (SIGKILL, a crash): those
    whose process is gone, and those of versions that did not name it."""
    for entry in os.listdir(directory):
        if not entry.startswith(f".{base}.tmp"):
            continue
        pid = re.match(r"(\d+)-", entry[len(f".{base}.tmp") :])
        if pid is not None and _alive(int(pid.group(1))):
            continue
        shutil.rmtree(os.path.join(directory, entry), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stage(model, name, fn, reference, heads, x, labels, formats, depthwise, staging):
    """Each format checked and written in ``staging``, then the JSON: ``{fmt: path}``."""
    paths, checks = {}, {}
    for fmt in formats:  # each is checked on the test split before it is written
        interrupts.check()
        paths[fmt] = os.path.join(staging, f"model.{fmt}")
        write = export.export_onnx if fmt == "onnx" else export.export_stablehlo
        checks[fmt] = write(
            fn, x.shape[1:], paths[fmt], name=name, check_inputs=x, reference=reference
        )
    # The exported file's own test metric: what a user of the file gets.
    first = formats[0]
    interrupts.check()
    runner = (export.load_onnx if first == "onnx" else export.load_stablehlo)(paths[first])
    outputs = export.run_batched(runner, x)
    meta = _metadata(model, heads, x, formats, checks, outputs, labels)
    meta["model"]["depthwise"] = depthwise if model.has_depthwise else None
    paths["json"] = os.path.join(staging, "model.json")
    atomic_write_text(paths["json"], json.dumps(meta, indent=2) + "\n")
    return paths


def _heads(model: trained.Trained, head: str | None) -> list[str]:
    if head is None:
        return [model.inference_head]
    if head == "all":
        return list(model.heads)
    if head not in model.heads:
        raise ValueError(
            f"--head {head}: {model.method} has the head(s) {', '.join(model.heads)} (or all)"
        )
    return [head]


def _only(fn, heads: list[str]):
    def only(x):
        out = fn(x)  # the model once, whatever the heads kept
        return {h: out[h] for h in heads}

    return only


def _metadata(model, heads, x, formats, checks, outputs, labels) -> dict:
    """What the JSON beside the files says (see the module's docstring)."""
    deploy = model.task.deployment(model.config.dataset)
    dims = ["batch", *map(int, x.shape[1:])]
    metric, metric_name = model.task.metric
    scored = {}
    for h in heads:
        row = model.rows.get(h)
        scored[h] = {
            "metric": metric,
            "metric_name": metric_name,
            "results_jsonl": None if row is None else row[metric],
            "exported_file": model.metrics(outputs[h], labels)[metric],
        }
    return {
        "model": {
            "workdir": model.workdir,
            "cell": model.cell,
            "method": model.method,
            "role": "teacher" if model.method == trained.TEACHER else "student",
            "seed": model.seed,
            "parameters": model.parameters,
            "checkpoint": os.path.relpath(model.checkpoint_dir, model.workdir),
            "step": model.step,
        },
        "files": {fmt: f"{model.method}-seed{model.seed}.{fmt}" for fmt in (*formats, "json")},
        "input": {
            "name": "x",
            "shape": dims,
            "dtype": "float32",
            "normalisation": deploy["input"],
        },
        "outputs": {
            h: {
                "shape": ["batch", int(outputs[h].shape[-1])],
                "meaning": f"{deploy['targets']}; {HEAD_ROLES[h]}",
            }
            for h in heads
        },
        "heads": heads,
        # The head to use, if this file has it (None: --head kept only the other one).
        "inference_head": model.inference_head if model.inference_head in heads else None,
        "to_label": deploy["to_label"],
        "statistics": {k: v for k, v in deploy.items() if k not in SENTENCES},
        "fingerprint": {"method": model.method, "seed": model.seed, **model.fingerprint},
        "test": scored,
        "check": {
            "split": "test",
            "examples": len(x),
            "max_abs_difference": checks,
            "tolerance": export.TOLERANCE,
        },
        "library_version": __version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.export", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workdir", required=True, help="a finished sweep's workdir")
    parser.add_argument("--cell", required=True, help="e.g. outliers_0.3 (fold3/outliers_0.3)")
    parser.add_argument("--method", required=True, help="a method of the sweep, or teacher")
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--head", default=None, help="label, teacher or all (default: inference)")
    parser.add_argument("--format", default=",".join(FORMATS), help="onnx, stablehlo or both")
    parser.add_argument(
        "--depthwise",
        default="conv",
        choices=models.DEPTHWISE_IMPLS,
        help="an image student's depthwise convolutions: conv (grouped, default) or taps",
    )
    args = parser.parse_args(argv)
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    try:
        with interrupts.handle():
            paths = _export(args, formats)
    except interrupts.Interrupted as e:  # the staging folder is gone; nothing replaced
        print(
            f"export {e}; rerun the same command (an export is written whole or not at all)",
            file=sys.stderr,
        )
        return e.exit_code
    except (export.ExportError, OSError) as e:  # OSError: a damaged store, a full disk
        print(f"export failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except (trained.LoadError, ConfigError, ValueError) as e:
        print(f"export: {e}", file=sys.stderr)
        return USAGE_ERROR
    _report(paths)
    return 0


def _export(args, formats: tuple[str, ...]) -> dict[str, str]:
    return export_model(
        args.workdir,
        cell=args.cell,
        method=args.method,
        seed=args.seed,
        head=args.head,
        formats=formats,
        depthwise=args.depthwise,
    )


def _report(paths: dict[str, str]) -> None:
    with open(paths["json"], encoding="utf-8") as f:
        test = json.load(f)["test"]
    for h, t in test.items():
        logged = "none" if t["results_jsonl"] is None else f"{t['results_jsonl']:.4g}"
        print(
            f"{h} head: {t['metric_name']} {t['exported_file']:.4g} of the exported file "
            f"(results.jsonl: {logged})"
        )
    print("wrote " + ", ".join(paths.values()))


if __name__ == "__main__":
    sys.exit(main())
