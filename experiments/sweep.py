"""The noise sweep: for every noise model, level and seed, a teacher and one student per method.

One *cell* is a (noise model, level[, fold]) pair (:mod:`experiments.cell`). Within a
cell every seed is a member of one population: data, noise, teacher and students of all
seeds train in one vmapped, jitted program, and each method's train step is compiled once
for the whole sweep. This module is the loop over cells: the workdir's lock, what a rerun
skips (:mod:`experiments.resume`), results.jsonl after each cell, and the report.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

import jax
import ml_collections
from absl import logging

from experiments import report, resume, tasks
from experiments.cell import Cell, Context, Trainers, run_cell
from experiments.validation import validate
from kd_regression import interrupts, sharding, writers
from kd_regression.fileio import DirectoryLock, DirectoryLockedError, atomic_write_text
from kd_regression.methods import LossConfig
from kd_regression.metric_window import NonFiniteError

__all__ = ["run", "validate"]


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


def _setup_line(config: ml_collections.ConfigDict, loss_cfg: LossConfig, folds: list) -> str:
    """summary.md's sentence on how the teacher and δ were made."""
    setup = (
        f"Teacher: {config.teacher.method}, "
        + (
            f"out-of-fold predictions from {config.teacher.folds} fold teachers"
            if config.teacher.folds
            else "predictions on its own training split"
        )
        + f"; TOR threshold: {loss_cfg.threshold_method}."
    )
    if folds != [None]:
        setup += (
            f" {len(folds)} folds (test people {folds}): each seed's number is its mean over "
            "the folds; mean and standard error are then over seeds."
        )
    return setup


def _start(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The finished cells (all processes agree on them); stale files of earlier runs go."""
    resume.check_writable(workdir, jax.process_index())
    done = resume.finished_cells(workdir, config)
    sharding.check_agreement(repr(sorted(done, key=repr)), f"the finished cells in {workdir}")
    if sharding.is_primary():
        resume.remove_temporaries(workdir)
        stale = [resume.FAILURE_FILE]
        stale += [] if done else [resume.FITS_FILE, "fits.png"]  # of an earlier config
        for name in stale:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(workdir, name))
        config_path = os.path.join(workdir, resume.CONFIG_FILE)
        atomic_write_text(config_path, config.to_json_best_effort(indent=2))
    return done


def _cells(config: ml_collections.ConfigDict, folds: list):
    for fold in folds:
        for kind in config.noise:
            for level in map(float, config.noise[kind]):
                yield Cell(kind, level, fold)


def _run_locked(config: ml_collections.ConfigDict, loss_cfg: LossConfig, workdir: str):
    primary = sharding.is_primary()  # the one process that writes shared files
    done = _start(config, workdir)
    task = tasks.get_task(config.dataset.name)
    folds = task.folds(config.dataset)
    writer = writers.make_writer(os.path.join(workdir, "logs"))
    mesh = sharding.make_mesh(config.num_devices or None)
    logging.info("data-parallel over %d devices (%d processes)", mesh.size, jax.process_count())
    ctx = Context(config, loss_cfg, task, Trainers(config, task, loss_cfg, mesh), workdir, writer)
    fits_path = os.path.join(workdir, resume.FITS_FILE)
    rows: list[dict] = []
    fits = resume.load_fits(fits_path) if done else None
    clean_rows = {}  # level 0 is the same run under every noise model: run it once per fold
    setup, t0 = _setup_line(config, loss_cfg, folds), time.time()
    try:
        for cell in _cells(config, folds):
            finished = done.get((cell.fold, cell.kind, cell.level))
            cell_fits = None
            if finished is not None:
                cell_rows = finished
                logging.info("cell %s: in %s already, skipped", cell.name, resume.RESULTS)
            elif cell.level == 0.0 and cell.fold in clean_rows:
                cell_rows = [{**r, "noise": cell.kind} for r in clean_rows[cell.fold]]
            else:
                try:
                    cell_rows, cell_fits = run_cell(ctx, cell)
                except interrupts.Interrupted as e:
                    e.where = e.where or f"cell {cell.name}"
                    raise
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
            _write_failure(
                workdir,
                e,
                report.summary_markdown(rows, setup=setup, metric=task.metric, failure=str(e)),
            )
        raise
    except BaseException:
        # The error on its way out is what the user must see: closing the metric writers
        # (which may fail on the same full disk) must not replace it.
        with contextlib.suppress(Exception):
            writer.close()
        raise
    writer.close()
    elapsed = time.time() - t0
    if primary:
        report.write_all(rows, fits, workdir, elapsed_s=elapsed, setup=setup, metric=task.metric)
        print(f"sweep finished in {elapsed:.1f}s; results in {workdir}", flush=True)
    return rows


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
