"""The regression tasks the sweep runs, one module each, by ``dataset.name``.

``base`` says what a task gives the sweep; ``sinusoid``, ``faces``, ``mpiigaze`` and
``multipie`` are the benchmarks; ``arrays`` is a user's own file.
"""

from __future__ import annotations

import ml_collections

from experiments.tasks.arrays import ArraysTask
from experiments.tasks.base import Splits, Task, image_model
from experiments.tasks.faces import FacesTask
from experiments.tasks.mpiigaze import MpiiGazeTask
from experiments.tasks.multipie import MultiPieTask
from experiments.tasks.sinusoid import SinusoidTask

__all__ = ["TASKS", "Splits", "Task", "get_task", "image_model"]

TASKS = {
    task.name: task
    for task in (SinusoidTask(), FacesTask(), MpiiGazeTask(), MultiPieTask(), ArraysTask())
}


def get_task(name: str, config: ml_collections.ConfigDict | None = None) -> Task:
    """The task ``name``; bound to ``config`` when given (a user's data: its models)."""
    if name not in TASKS:
        raise ValueError(f"dataset.name={name!r} is not one of {sorted(TASKS)}")
    return TASKS[name] if config is None else TASKS[name].bind(config)
