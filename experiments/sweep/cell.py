"""One cell of the sweep: a (noise model, level[, fold]) for every seed at once.

Its data (the task's splits with label noise), its teacher, the teacher's store, one
student per method, and the rows of results.jsonl: the method's four calls
(:mod:`kd_regression.distill`) on a population of seeds, plus the keys that let a rerun
find its checkpoints and stores again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
import zlib
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from experiments.report import figures
from experiments.sweep.validation import TEACHER, cell_name, seeds, train_config
from kd_regression import distill, interrupts, losses, models, noise
from kd_regression.methods import NOISE_RATE, LossConfig, get_method
from kd_regression.trainer import Trainer

CHECKPOINTS, STORES = "checkpoints", "teacher_store"  # workdir/<this>/<cell name>/...

# Where data are read from, not what they are: left out of the teacher's fingerprint.
DATA_PATHS = ("data_dir", "manual_dir")


@dataclasses.dataclass(frozen=True)
class Cell:
    kind: str  # the noise model
    level: float
    fold: int | None = None

    @property
    def name(self) -> str:
        return cell_name(self.kind, self.level, self.fold)


class Trainers:
    """One :class:`kd_regression.Trainer` per (role, method), compiled once for the
    whole sweep (the per-cell δ and η live in the train state, so they never recompile)."""

    def __init__(self, config: ml_collections.ConfigDict, task, loss_cfg: LossConfig, mesh: Mesh):
        self.config, self.task, self.loss_cfg, self.mesh = config, task, loss_cfg, mesh
        self._cache: dict[tuple[str, str], Trainer] = {}

    def get(self, role: str, method_name: str) -> Trainer:
        key = (role, method_name)
        if key not in self._cache:
            method = get_method(method_name)
            self._cache[key] = Trainer(
                self.task.model_fn(self.config[role], method.two_heads),
                method,
                train_config(self.config, role),
                self.loss_cfg,
                mesh=self.mesh,
                population=self.task.population,
            )
        return self._cache[key]


@dataclasses.dataclass
class Context:
    """What every cell of one sweep shares."""

    config: ml_collections.ConfigDict
    loss_cfg: LossConfig
    task: Any
    trainers: Trainers
    workdir: str
    writer: Any


def cell_data(config: ml_collections.ConfigDict, task, cell: Cell) -> dict[str, np.ndarray]:
    """Population-stacked splits ``[S, n, ...]``: inputs, noisy train/val targets, the
    corruption mask, and the clean test labels (label space, for the metrics)."""
    out: dict[str, list] = {}
    for seed in seeds(config):
        splits = task.splits(config.dataset, seed, cell.fold)
        label_range = task.label_range(config.dataset, splits)
        # The noise key depends on the seed, model, level (and fold) only; the data do not
        # change with the level, so a column of the summary is the same examples, noisier.
        stream = f"{cell.kind}:{cell.level}"
        stream += "" if cell.fold is None else f":fold{cell.fold}"
        key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(stream.encode()))
        noisy = {
            name: noise.add_label_noise(
                k, splits[name][1], kind=cell.kind, level=cell.level, label_range=label_range
            )
            for name, k in zip(("train", "validation"), jax.random.split(key), strict=True)
        }
        row = {
            "x_train": splits["train"][0],
            "y_train": task.to_target(np.asarray(noisy["train"].labels)),
            "corrupted": np.asarray(noisy["train"].corrupted),
            "x_val": splits["validation"][0],
            "y_val": task.to_target(np.asarray(noisy["validation"].labels)),
            "x_test": splits["test"][0],
            "labels_test": splits["test"][1],
        }
        for k, v in row.items():
            out.setdefault(k, []).append(v)
    return {k: np.stack(v) for k, v in out.items()}


def digest(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def teacher_spec(config: ml_collections.ConfigDict, task, cell: Cell) -> dict:
    """Everything the cell's teacher depends on, and nothing else: its checkpoints and its
    store are keyed by it, so a changed config never resumes or reuses them."""
    ignored = (*DATA_PATHS, *task.not_in_fingerprint)
    dataset = {k: v for k, v in config.dataset.to_dict().items() if k not in ignored}
    dataset["version"] = task.version
    content = task.content_digest(config.dataset)
    if content is not None:
        dataset["content_sha256"] = content
    huber = config.teacher.method == "scratch_huber"
    given = task.teacher_predictions(config.teacher)
    if given is not None:  # the file is the teacher: nothing of teacher.* is used
        teacher, teacher_loss = {"predictions": given.fingerprint}, {}
    else:
        teacher = {k: v for k, v in config.teacher.to_dict().items() if k != "checkpoint_every"}
        teacher_loss = {"huber_delta": config.loss.huber_delta} if huber else {}
    return {
        "dataset": dataset,
        "noise": {"kind": cell.kind, "level": cell.level}
        | ({} if cell.fold is None else {"fold": cell.fold}),
        "seeds": seeds(config),
        "teacher": teacher,
        "teacher_loss": teacher_loss,
    }


def teacher_checkpoint_dir(checkpoints: str, spec: dict) -> str:
    """Where a cell's teacher (``spec``: :func:`teacher_spec`) keeps its checkpoints; fold
    teachers add ``-fold{j}``."""
    return os.path.join(checkpoints, f"teacher-{digest(spec)}")


def student_spec(config: ml_collections.ConfigDict, store_fingerprint: dict, constants) -> dict:
    """Everything a cell's students depend on besides their method."""
    return {
        "teacher_store": store_fingerprint,
        # The δ and η a student trains with, as read from the store: a store whose
        # statistics changed (even one edited and re-hashed) never resumes old students.
        "loss_constants": {k: np.asarray(v).tolist() for k, v in constants.items()},
        "student": config.student.to_dict(),
        "loss": config.loss.to_dict(),
    }


def student_checkpoint_dir(checkpoints: str, method: str, spec: dict) -> str:
    return os.path.join(checkpoints, f"{method}-{digest({**spec, 'method': method})}")


def rows(ctx: Context, cell: Cell, method: str, head: str, pred, labels, extra=None) -> list:
    """One row of results.jsonl per seed: the test metrics of ``pred`` ``[S, n, d]``."""
    metrics = ctx.task.metrics(pred, labels)
    out = []
    for s, seed in enumerate(seeds(ctx.config)):
        row = {
            "method": method,
            "head": head,
            "noise": cell.kind,
            "level": float(cell.level),
            "seed": seed,
            **({} if cell.fold is None else {"fold": cell.fold}),
            "rmse": float(metrics["rmse"][s]),
            "mae": float(metrics["mae"][s]),
            # A task's further metrics (per output, for a user's data with several).
            **{k: float(v[s]) for k, v in metrics.items() if k not in ("rmse", "mae")},
        }
        # JSON has no NaN: an undefined score (e.g. precision with nothing rejected) is null.
        row.update(
            {k: None if math.isnan(v) else v for k, v in (extra[s] if extra else {}).items()}
        )
        out.append(row)
    return out


def run_cell(ctx: Context, cell: Cell) -> tuple[list[dict], dict | None]:
    """Teacher, store and every student of one cell; returns its rows and fits (or None)."""
    interrupts.check()  # a signal whose exception a library swallowed (TF's import does)
    config, t0 = ctx.config, time.time()
    data = cell_data(config, ctx.task, cell)
    spec = teacher_spec(config, ctx.task, cell)
    checkpoints = os.path.join(ctx.workdir, CHECKPOINTS, cell.name)
    teacher, teacher_test = _teacher(ctx, cell, data, spec, checkpoints)
    store = distill.store_predictions(
        teacher,
        os.path.join(ctx.workdir, STORES, cell.name),
        y=data["y_train"],
        loss_config=ctx.loss_cfg,
        fingerprint=spec,
        chunk_rows=config.store.chunk_rows,
        parity_sample=config.store.parity_sample,
        on_mismatch=config.store.on_mismatch,
    )
    constants = distill.store_constants(store, ctx.loss_cfg)
    t_teacher = time.time() - t0
    out = []
    if teacher_test is not None:  # a teacher given as a file may have no test predictions
        out = rows(ctx, cell, TEACHER, models.MAIN_HEAD, teacher_test, data["labels_test"])
    detection = _detection(ctx, cell, data, store.load(), constants)
    fits, grid = _teacher_fits(ctx, cell, data, teacher)
    students = student_spec(
        config, distill.store_fingerprint(teacher, spec, ctx.loss_cfg), constants
    )
    for name in config.methods:
        t1 = time.time()
        student = distill.train_student(
            data["x_train"],
            data["y_train"],
            store,
            None,
            name,
            seeds=seeds(config),
            inference_head=config.inference_head,
            trainer=ctx.trainers.get("student", name),
            checkpoint_dir=student_checkpoint_dir(checkpoints, name, students),
            writer=ctx.writer,
            name=f"{cell.name}/{name}",
            method_constants=method_constants(cell, name),
        )
        extra = detection if get_method(name).rejects else None
        if get_method(name).selects:
            extra = _selection_scores(ctx, cell, data, student)
        for head, pred in student.heads(data["x_test"]).items():
            out += rows(ctx, cell, name, head, pred, data["labels_test"], extra)
        if fits is not None and name in figures.FIT_METHODS:
            fits[name] = student.predict(grid)[0, :, 0]
        logging.vlog(1, "%s/%s: %.1fs", cell.name, name, time.time() - t1)
    logging.vlog(1, "cell %s: teacher %.1fs, total %.1fs", cell.name, t_teacher, time.time() - t0)
    return out, fits


def _teacher(ctx: Context, cell: Cell, data, spec: dict, checkpoints: str):
    """The cell's teacher (trained, or given as a file), and its test predictions (or None)."""
    config = ctx.config
    given = ctx.task.teacher_predictions(config.teacher)
    if given is not None:
        n = config.num_seeds
        teacher = distill.given_teacher(  # the same file for every seed (folds broadcast)
            np.broadcast_to(given.train, (n, *given.train.shape)),
            folds=given.folds,
            seeds=seeds(config),
        )
        test = None if given.test is None else np.broadcast_to(given.test, (n, *given.test.shape))
        return teacher, test
    teacher = distill.train_teacher(
        data["x_train"],
        data["y_train"],
        validation=(data["x_val"], data["y_val"]),  # early stopping on noisy labels
        seeds=seeds(config),
        folds=config.teacher.folds,
        trainer=ctx.trainers.get(TEACHER, config.teacher.method),
        checkpoint_dir=teacher_checkpoint_dir(checkpoints, spec),
        writer=ctx.writer,
        name=f"{cell.name}/teacher",
    )
    return teacher, teacher.predict(data["x_test"])


def method_constants(cell: Cell, method: str) -> dict:
    """The constants ``method`` needs beyond δ and η, from what the experiment knows:
    ``small_loss_oracle``'s noise rate is the outlier rate p (0 under Gaussian noise or
    none: no label there is an outlier to drop)."""
    if NOISE_RATE not in get_method(method).constants:
        return {}
    return {NOISE_RATE: float(cell.level) if cell.kind == "outliers" else 0.0}


def _detection(ctx: Context, cell: Cell, data, predictions: np.ndarray, constants: dict):
    """Per seed: how well TOR's δ finds the corrupted training labels."""
    rejected = np.asarray(
        jax.vmap(lambda y, t, d: losses.outlier_mask(y, t, threshold=d))(
            data["y_train"], predictions, constants["threshold"]
        )
    )
    return _scores(ctx, cell, data, rejected)


def _selection_scores(ctx: Context, cell: Cell, data, student) -> list[dict]:
    """Per seed: how well small-loss selection finds the corrupted training labels, scored
    with the trained student: the fraction q of the whole training split with its largest
    own loss (the batch's rule, on a batch of the whole split)."""
    n = ctx.config.num_seeds
    q = student.constants.get(NOISE_RATE, np.full(n, ctx.loss_cfg.small_loss_drop))
    pred = student.heads(data["x_train"])[models.MAIN_HEAD]
    rejected = np.asarray(
        jax.vmap(
            lambda p, y, q: losses.small_loss_mask(losses.squared_error(p, y), drop_fraction=q)
        )(pred, data["y_train"], np.asarray(q, np.float32))
    )
    return _scores(ctx, cell, data, rejected)


def _scores(ctx: Context, cell: Cell, data, rejected: np.ndarray) -> list[dict]:
    """Per seed, ``rejected`` ``[S, n]`` scored against the true corruption mask. Where
    nothing was injected and the task's labels are not known to be clean, there is no mask
    to score against: precision and recall are NaN (null), the rejection rate stays."""
    unknown = not ctx.task.labels_known_clean and (cell.kind == "none" or cell.level == 0)
    out = []
    for s in range(ctx.config.num_seeds):
        scores = noise.detection_scores(rejected[s], data["corrupted"][s])
        if unknown:
            scores.update(precision=math.nan, recall=math.nan)
        out.append(scores)
    return out


def _teacher_fits(ctx: Context, cell: Cell, data, teacher) -> tuple[dict | None, Any]:
    """The start of fits.png's arrays, if the task draws this cell: (fits, population grid)."""
    grid = ctx.task.fits_grid(ctx.config, cell.kind, cell.level)
    if grid is None:
        return None, None
    grid_p = np.broadcast_to(grid, (ctx.config.num_seeds, *grid.shape))
    fits = {
        "noise": cell.kind,
        "level": cell.level,
        "grid": grid[:, 0],
        **ctx.task.fits_data(ctx.config, data),
        TEACHER: teacher.predict(grid_p)[0, :, 0],
    }
    return fits, grid_p
