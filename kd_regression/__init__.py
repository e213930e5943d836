"""kd_regression: knowledge distillation for regression problems with noisy labels.

The method in four calls (:mod:`kd_regression.distill`)::

    import kd_regression as kd

    teacher = kd.train_teacher(x, y, teacher_fn, kd.TrainConfig(...), validation=(xv, yv))
    store = kd.store_predictions(teacher, "store_dir", y=y)
    student = kd.train_student(x, y, store, student_fn, "tor_multitask", kd.TrainConfig(...))
    y_hat = student.predict(x_test)

A teacher trained elsewhere goes in as ``kd.given_teacher(predictions)`` (or a callable
``x -> predictions``) wherever a trained one does.

The pieces they are made of live in their own modules: teachers, losses, thresholds,
methods, models, train (train state and steps), trainer, loop (``fit``), teacher_store,
input_pipeline, noise, sharding.
"""

__version__ = "0.1.0"

# Names are loaded on first use (PEP 562), so that a light entry point such as
# ``python -m kd_regression.datasets.build`` does not import JAX and tensorstore through
# this package, and no module of the package imports another through it.
_SOURCES = {
    "CheckpointWriteError": "checkpoints",
    "GivenTeacher": "teachers",
    "Student": "distill",
    "Teacher": "teachers",
    "given_teacher": "teachers",
    "store_predictions": "distill",
    "train_student": "distill",
    "train_teacher": "distill",
    "METHODS": "methods",
    "LossConfig": "methods",
    "Method": "methods",
    "get_method": "methods",
    "NonFiniteError": "metric_window",
    "regression_metrics": "train",
    "TrainConfig": "trainer",
    "Trainer": "trainer",
}


def __getattr__(name: str):
    if name not in _SOURCES:
        raise AttributeError(f"module 'kd_regression' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"kd_regression.{_SOURCES[name]}"), name)
    globals()[name] = value  # later uses skip this function
    return value


def __dir__():
    return sorted([*globals(), *_SOURCES])


__all__ = [
    "METHODS",
    "CheckpointWriteError",
    "GivenTeacher",
    "LossConfig",
    "Method",
    "NonFiniteError",
    "Student",
    "Teacher",
    "TrainConfig",
    "Trainer",
    "__version__",
    "get_method",
    "given_teacher",
    "regression_metrics",
    "store_predictions",
    "train_student",
    "train_teacher",
]
