"""The noise sweep: for every noise model, level and seed, a teacher and one student per method.

One *cell* is a (noise model, level[, fold]) pair (:mod:`experiments.sweep.cell`). Within a
cell every seed is a member of one population: data, noise, teacher and students of all
seeds train in one vmapped, jitted program, and each method's train step is compiled once
for the whole sweep. This module is the loop over cells: the workdir's lock, what a rerun
skips (:mod:`experiments.sweep.resume`), results.jsonl after each cell, and the report.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

import jax
import ml_collections
from absl import logging

from experiments import tasks
from experiments.report import outputs, report
from experiments.sweep import resume
from experiments.sweep.cell import Cell, Context, Trainers, run_cell
from experiments.sweep.validation import report_options, validate
from kd_regression import interrupts, sharding, writers
from kd_regression.fileio import DirectoryLock, DirectoryLockedError, atomic_write_text
from kd_regression.methods import LossConfig
from kd_regression.metric_window import NonFiniteError

__all__ = ["cells", "ran_as", "run", "validate"]


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """Runs the whole sweep and writes results.jsonl, summary.md and the figures.

    Rerun with the same config and workdir, it resumes: cells already in results.jsonl are
    skipped, and an unfinished teacher or student continues from its last checkpoint. The
    run holds ``workdir``'s lock throughout: a second run there fails at once.
    """
    loss_cfg = validate(config)
    # Absolute and normalised once: tensorstore refuses paths with ".." parts, and a
    # relative path would change meaning if anything changed the working directory.
    workdir = os.path.abspath(workdir)
    lock = _lock(workdir)
    try:
        return _run_locked(config, loss_cfg, workdir)
    except interrupts.Interrupted as e:
        e.where = e.where or "start-up (before the first cell)"
        raise
    finally:
        if lock is not None:
            lock.release()


def _lock(workdir: str) -> DirectoryLock | None:
    """Process 0 takes the workdir's lock for the whole run (its other processes share it);
    every process stops if it cannot be had."""
    lock, problem = None, None
    if sharding.is_primary():
        try:
            lock = DirectoryLock(workdir)
        except DirectoryLockedError as e:
            problem = e
        except OSError as e:
            raise OSError(e.errno, f"workdir {workdir} is not writable: {e}") from e
    text = "locked" if problem is None else "refused"  # the others take process 0's word
    try:
        sharding.check_agreement(text, f"whether process 0 holds the lock of {workdir}")
    except Exception:
        if problem is not None:
            raise problem from None
        raise
    if problem is not None:
        raise problem
    return lock


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _setup_line(config: ml_collections.ConfigDict, loss_cfg: LossConfig, folds: list) -> str:
    """summary.md's sentence on how the teacher and δ were made."""
    given = config.teacher.get("predictions")  # only configs of users' data have the key
    if given:
        how = "out-of-fold" if config.teacher.get("fold_key") else "its"
        teacher = f"Teacher: predictions given in {given} ({how} predictions on the training split)"
    else:
        teacher = f"Teacher: {config.teacher.method}, " + (
            f"out-of-fold predictions from {config.teacher.folds} fold teachers"
            if config.teacher.folds
            else "predictions on its own training split"
        )
    setup = f"{teacher}; TOR threshold: {loss_cfg.threshold_method}."
    if folds != [None]:
        setup += (
            f" {len(folds)} folds (test people {folds}): each seed's number is its mean over "
            "the folds; mean and standard error are then over seeds."
        )
    return setup


def _start(config: ml_collections.ConfigDict, workdir: str, task) -> dict:
    """The finished cells (all processes agree on them); stale files of earlier runs go."""
    resume.check_writable(workdir, jax.process_index())
    inputs = resume.inputs_of(task, config)
    done = resume.finished_cells(workdir, config, task, inputs)
    sharding.check_agreement(repr(sorted(done, key=repr)), f"the finished cells in {workdir}")
    if sharding.is_primary():
        resume.remove_temporaries(workdir)
        # paired.*: the end writes them again (none without references).
        stale = [resume.FAILURE_FILE, "paired.png", "paired.jsonl"]
        stale += [] if done else [resume.FITS_FILE, "fits.png"]  # of an earlier config
        for name in stale:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(workdir, name))
        config_path = os.path.join(workdir, resume.CONFIG_FILE)
        config_text = config.to_json_best_effort(indent=2)
        if not done and _read(config_path) != config_text:  # the times of another config
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(workdir, resume.RUN_TIMES_FILE))
        atomic_write_text(config_path, config_text)
        text = json.dumps(inputs, indent=2, sort_keys=True) + "\n"
        atomic_write_text(os.path.join(workdir, resume.INPUTS_FILE), text)
    return done


def cells(config: ml_collections.ConfigDict, folds: list) -> list[Cell]:
    """Every cell of the sweep, in the order it runs them."""
    return [
        Cell(kind, level, fold)
        for fold in folds
        for kind in config.noise
        for level in map(float, config.noise[kind])
    ]


def ran_as(config: ml_collections.ConfigDict, cell: Cell) -> Cell:
    """The cell whose run made ``cell``'s rows (and holds its checkpoints and store): itself,
    or for level 0 the first level 0 of its fold (the same run under every noise model)."""
    if cell.level != 0.0:
        return cell
    return next(c for c in cells(config, [cell.fold]) if c.level == 0.0)


def _to_run(cells: list[Cell], done: dict) -> set[int]:
    """The indices of the cells that will train (not finished, not a copy of level 0)."""
    out, clean = set(), set()
    for i, cell in enumerate(cells):
        if cell.level == 0.0:
            if cell.fold in clean:
                continue  # the same run as the first level 0 of its fold
            clean.add(cell.fold)
        if (cell.fold, cell.kind, cell.level) not in done:
            out.add(i)
    return out


class _SweepProgress:
    """The line after each cell: ``cell 3/9 (outliers 0.2): 12 s; ETA for the sweep 1 min``.

    The ETA is the mean time of the cells trained so far times the cells left to train.
    """

    def __init__(self, cells: list[Cell], to_run: set[int]):
        self.cells, self.to_run, self.times = cells, to_run, []

    def line(self, i: int, seconds: float | None, note: str = "") -> str:
        cell = self.cells[i]
        where = f"{cell.kind} {cell.level:g}" + ("" if cell.fold is None else f", fold {cell.fold}")
        head = f"cell {i + 1}/{len(self.cells)} ({where})"
        if seconds is None:
            return f"{head}: {note}"
        self.times.append(seconds)
        left = sum(1 for j in self.to_run if j > i)
        if not left:
            return f"{head}: {_duration(seconds)}; the sweep's last cell"
        eta = _duration(left * sum(self.times) / len(self.times))
        return f"{head}: {_duration(seconds)}; ETA for the sweep {eta}"


def _duration(seconds: float) -> str:
    if seconds < 59.95:  # what rounds to 60.0 s is a minute
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _run_locked(config: ml_collections.ConfigDict, loss_cfg: LossConfig, workdir: str):
    primary = sharding.is_primary()  # the one process that writes shared files
    task = tasks.get_task(config.dataset.name, config)
    done = _start(config, workdir, task)
    folds = task.folds(config.dataset)
    writer = writers.make_writer(os.path.join(workdir, "logs"))
    mesh = sharding.make_mesh(config.num_devices or None)
    logging.info("data-parallel over %d devices (%d processes)", mesh.size, jax.process_count())
    ctx = Context(config, loss_cfg, task, Trainers(config, task, loss_cfg, mesh), workdir, writer)
    fits_path = os.path.join(workdir, resume.FITS_FILE)
    rows: list[dict] = []
    fits = resume.load_fits(fits_path) if done else None
    clean_rows = {}  # level 0 is the same run under every noise model: run it once per fold
    test_labels = _test_labels(task, config)
    wording = {"metric": task.metric, "quick": config.quick, "test_labels": test_labels}
    wording |= report_options(config)  # the paired comparisons
    setup, t0 = _setup_line(config, loss_cfg, folds), time.time()
    every = cells(config, folds)
    progress = _SweepProgress(every, _to_run(every, done))
    try:
        for i, cell in enumerate(every):
            finished = done.get((cell.fold, cell.kind, cell.level))
            cell_rows, cell_fits = _cell_rows(ctx, cell, finished, clean_rows, progress, i)
            if cell.level == 0.0:
                clean_rows[cell.fold] = cell_rows
            rows += cell_rows
            if primary and cell_fits is not None:  # before the rows that mark it done
                resume.save_fits(fits_path, cell_fits)
            fits = cell_fits or fits
            if primary and finished is None:
                text = "".join(json.dumps(r) + "\n" for r in rows)
                results = os.path.join(workdir, resume.RESULTS)
                atomic_write_text(results, text)  # rows of finished cells only
    except NonFiniteError as e:
        if primary:  # the report of what finished, and of what went bad
            _record_time(workdir, t0, "failed")
            text = report.summary_markdown(rows, setup=setup, failure=str(e), **wording)
            _write_failure(workdir, e, text)
        raise
    except BaseException as e:
        # The error on its way out is what the user must see: closing the metric writers
        # (which may fail on the same full disk) must not replace it.
        with contextlib.suppress(Exception):
            writer.close()
        if primary:
            ended = "interrupted" if isinstance(e, interrupts.Interrupted) else "failed"
            _record_time(workdir, t0, ended)
        raise
    writer.close()
    elapsed = time.time() - t0
    if primary:
        runs = [r["seconds"] for r in resume.record_run_time(workdir, elapsed, "finished")]
        paths = outputs.write_all(rows, fits, workdir, elapsed_s=runs, setup=setup, **wording)
        names = [os.path.basename(p) for p in paths] + [resume.RESULTS]
        print(
            f"sweep finished in {_duration(elapsed)}; wrote {', '.join(names)} in {workdir} "
            "(TensorBoard logs in logs/)",
            flush=True,
        )
    return rows


def _cell_rows(ctx: Context, cell, finished, clean_rows: dict, progress, i: int):
    """(rows, fits or None) of ``cell``: its rows in results.jsonl (``finished``), level 0's
    rows of another noise model (the same run), or a run of it."""
    if finished is not None:
        logging.info(progress.line(i, None, f"in {resume.RESULTS} already, skipped"))
        return finished, None
    if cell.level == 0.0 and cell.fold in clean_rows:
        logging.info(progress.line(i, None, "level 0: the same run as before, reused"))
        return [{**r, "noise": cell.kind} for r in clean_rows[cell.fold]], None
    t_cell = time.time()
    try:
        out = run_cell(ctx, cell)
    except interrupts.Interrupted as e:
        e.where = e.where or f"cell {cell.name}"
        raise
    logging.info(progress.line(i, time.time() - t_cell))
    return out


def _record_time(workdir: str, t0: float, ended: str) -> None:
    """This run's time, recorded on the way out of a run that did not finish; a failure to
    record it (the same full disk) must not replace the error on its way out."""
    with contextlib.suppress(Exception):
        resume.record_run_time(workdir, time.time() - t0, ended)


def _test_labels(task, config: ml_collections.ConfigDict) -> str:
    """What the metrics are measured against, for summary.md and the figure."""
    if task.test_labels_clean(config.dataset):
        return report.CLEAN_TEST
    return (
        "against the test labels as given (not known to be clean: dataset.test_labels_clean "
        "is False)"
    )


def _write_failure(workdir: str, e: NonFiniteError, summary: str) -> None:
    """failure.json (what went bad, for a program) and summary.md (for a reader)."""
    failure = {
        "fit": e.name,
        "step": e.step,
        "metrics": e.metrics,
        "members": e.members,
        "last_good_checkpoint": e.checkpoint_dir,
        "last_good_step": e.checkpoint_step,
        "error": str(e),
    }
    path = os.path.join(workdir, resume.FAILURE_FILE)
    atomic_write_text(path, json.dumps(failure, indent=2) + "\n")
    atomic_write_text(os.path.join(workdir, "summary.md"), summary)
