"""What a rerun finds in its workdir: the finished cells, temporaries, fits, the config.

results.jsonl is rewritten whole (atomically) after each cell, so a cell is either in it
completely or not at all; a rerun with the same config skips the finished cells, and an
unfinished teacher or student resumes from its checkpoint (:func:`kd_regression.loop.fit`).
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
from absl import logging

from experiments.report import outputs, report
from experiments.sweep.validation import TEACHER, cell_name, flatten, seeds
from kd_regression import models
from kd_regression.fileio import atomic_write, atomic_write_text
from kd_regression.methods import get_method

RESULTS = "results.jsonl"
CONFIG_FILE = "config.json"
FITS_FILE = "fits.npz"  # the arrays of fits.png, so a resumed sweep can draw it again
FAILURE_FILE = "failure.json"  # why the last run stopped (non-finite training), if it did
# Digests of what the config names but does not hold: a data file, a teacher's predictions.
INPUTS_FILE = "inputs.json"
RUN_TIMES_FILE = "run_times.json"  # each run's seconds: a resumed sweep's time is their sum
# How a sweep runs or is reported, not what it computes: a resumed sweep may change these.
# The paths of a user's files too: inputs.json holds their content's digests, checked apart.
RUN_KEYS = (
    "num_devices",
    "steps_per_call",
    "dataset.data_dir",
    "dataset.manual_dir",
    "dataset.path",
    "dataset.test_labels_clean",
    "teacher.predictions",
    # What summary.md shows, not what the rows are.
    "report.paired_references",
    "report.robust_baselines",
)
# Keys added since a workdir may have been made, with the value they had before.
NEW_KEYS = {"quick": False, "loss.small_loss_drop": 0.2}


class WorkdirRefused(ValueError):
    """The workdir cannot be used as it is (results of another config or other data, a
    damaged record): found before any work, nothing touched. The command line prints its
    message as one line and exits with status 2."""


def with_new_keys(values: dict) -> dict:
    """A workdir's config.json ``values`` (nested) with each of NEW_KEYS it lacks."""
    values = json.loads(json.dumps(values))  # a deep copy
    for path, default in NEW_KEYS.items():
        *parents, leaf = path.split(".")
        node = values
        for key in parents:
            node = node.setdefault(key, {})
        node.setdefault(leaf, default)
    return values


def check_same_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Results in ``workdir`` belong to one config: refuse to mix another's rows in."""
    path = os.path.join(workdir, CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            old = flatten(with_new_keys(json.load(f)))
    except FileNotFoundError:
        raise WorkdirRefused(
            f"{workdir} holds {RESULTS} but no {CONFIG_FILE}, so which config made them is "
            "unknown: use a new --workdir"
        ) from None
    except ValueError as e:
        raise WorkdirRefused(_damaged(path, e)) from e
    new = flatten(json.loads(config.to_json_best_effort()))
    absent = "<absent>"
    changed = [
        f"{k}: {old.get(k, absent)!r} -> {new.get(k, absent)!r}"
        for k in sorted(set(old) | set(new))
        if k not in RUN_KEYS and old.get(k, absent) != new.get(k, absent)
    ]
    if changed:
        raise WorkdirRefused(
            f"{workdir} holds the results of another config ({'; '.join(changed)}): rerun "
            "with the same config to resume it, or use a new --workdir, or move "
            f"{RESULTS} away (checkpoints and stores the configs share are then reused)"
        )


def _damaged(path: str, e: Exception) -> str:
    results = os.path.join(os.path.dirname(path), RESULTS)
    return (
        f"{path} is damaged ({e}), so which config made {results} is unknown: restore it, "
        f"or move {results} away (the run then recomputes it, reusing the checkpoints and "
        "stores that still match), or use a new --workdir"
    )


def inputs_of(task, config: ml_collections.ConfigDict) -> dict:
    """What the results depend on besides the config: the content of the files it names."""
    given = task.teacher_predictions(config.teacher)
    return {
        "dataset_sha256": task.content_digest(config.dataset),
        "teacher_predictions": None if given is None else given.fingerprint,
    }


def check_same_inputs(workdir: str, inputs: dict) -> None:
    """Results made from other files' content (the same paths, changed) are refused."""
    path = os.path.join(workdir, INPUTS_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
    except FileNotFoundError:
        return  # a workdir of a version that did not record them
    except ValueError as e:
        raise WorkdirRefused(_damaged(path, e)) from e
    changed = [k for k in sorted(set(old) | set(inputs)) if old.get(k) != inputs.get(k)]
    if changed:
        raise WorkdirRefused(
            f"{workdir} holds results made from other data: {', '.join(changed)} changed "
            f"since (the file at the same path has other content; see {INPUTS_FILE}): use a "
            f"new --workdir, or move {RESULTS} away to recompute them"
        )


def finished_cells(
    workdir: str, config: ml_collections.ConfigDict, task, inputs: dict
) -> dict[tuple, list[dict]]:
    """The cells whose rows are all in ``workdir``'s results.jsonl, by (fold, noise, level).

    A cell with missing or repeated rows (an edited file) is recomputed, never duplicated.
    """
    path = os.path.join(workdir, RESULTS)
    rows = report.load_rows(path) if os.path.exists(path) else []
    if not rows:
        return {}
    check_same_config(workdir, config)
    check_same_inputs(workdir, inputs)  # inputs_of(task, config)
    given = task.teacher_predictions(config.teacher)
    # A teacher given as a file without test predictions has no row.
    heads = {TEACHER: [models.MAIN_HEAD]} if given is None or given.test is not None else {}
    for name in config.methods:
        two = get_method(name).two_heads
        heads[name] = [models.LABEL_HEAD, models.TEACHER_HEAD] if two else [models.MAIN_HEAD]
    expected = sorted((m, h, s) for m, hs in heads.items() for h in hs for s in seeds(config))
    cells: dict[tuple, list[dict]] = {}
    for i, r in enumerate(rows):
        try:
            cells.setdefault((r.get("fold"), r["noise"], float(r["level"])), []).append(r)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: row {i + 1} has no valid noise or level ({e!r})") from e
    done = {}
    for cell, cell_rows in cells.items():
        if sorted((r.get("method"), r.get("head"), r.get("seed")) for r in cell_rows) == expected:
            done[cell] = cell_rows
        else:
            logging.warning(
                "%s: cell %s has %d of %d rows: recomputed",
                path,
                cell_name(cell[1], cell[2], cell[0]),
                len(cell_rows),
                len(expected),
            )
    return done


def save_fits(path: str, fits: dict) -> None:
    atomic_write(path, lambda f: np.savez(f, **{k: np.asarray(v) for k, v in fits.items()}))


def load_fits(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with np.load(path) as z:
        return {k: z[k].item() if z[k].ndim == 0 else z[k] for k in z.files}


def record_run_time(workdir: str, seconds: float, ended: str) -> list[dict]:
    """Appends this run's time to RUN_TIMES_FILE (``ended``: finished, interrupted or
    failed); returns every run's record. summary.md's sweep time is their sum: a resumed
    sweep counts the time of each run, a rerun of a finished one adds its few seconds."""
    path = os.path.join(workdir, RUN_TIMES_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            runs = json.load(f)["runs"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        runs = []  # none yet, or unreadable: the time of the runs from now on
    runs.append({"seconds": round(seconds, 1), "ended": ended})
    atomic_write_text(path, json.dumps({"runs": runs}, indent=2) + "\n")
    return runs


def remove_temporaries(workdir: str) -> None:
    """Temporary files of writes a killed run left unfinished (their targets are intact)."""
    ours = (RESULTS, CONFIG_FILE, INPUTS_FILE, FITS_FILE, FAILURE_FILE, RUN_TIMES_FILE)
    ours += outputs.OUTPUTS
    for name in os.listdir(workdir):
        if any(name.startswith(f"{target}.tmp") for target in ours):
            logging.info("removing %s, left by an interrupted write", name)
            os.remove(os.path.join(workdir, name))


def check_writable(workdir: str, process_index: int) -> None:
    """Before any work: a workdir that cannot be written fails now, not after an hour."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write-test-{process_index}")
        atomic_write_text(probe, "")
        os.remove(probe)
    except OSError as e:
        raise OSError(e.errno, f"workdir {workdir} is not writable: {e}") from e
