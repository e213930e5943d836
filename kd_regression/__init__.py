"""kd_regression: knowledge distillation for regression problems with noisy labels.

The method in four calls (:mod:`kd_regression.distill`)::

    import kd_regression as kd

    teacher = kd.train_teacher(x, y, teacher_fn, kd.TrainConfig(...), validation=(xv, yv))
    store = kd.store_predictions(teacher, "store_dir", y=y)
    student = kd.train_student(x, y, store, student_fn, "tor_multitask", kd.TrainConfig(...))
    y_hat = student.predict(x_test)

A teacher trained elsewhere goes in as ``kd.given_teacher(predictions)`` (or a callable
``x -> predictions``) wherever a trained one does.

The pieces they are made of live in their own modules: losses, methods, models, train
(train state and steps), loop (``fit``), teacher_store, input_pipeline, noise, sharding.
"""

__version__ = "0.1.0"

from kd_regression.checkpoints import CheckpointWriteError
from kd_regression.distill import (
    GivenTeacher,
    Student,
    Teacher,
    given_teacher,
    store_predictions,
    train_student,
    train_teacher,
)
from kd_regression.methods import METHODS, LossConfig, Method, get_method
from kd_regression.metric_window import NonFiniteError
from kd_regression.train import regression_metrics
from kd_regression.trainer import TrainConfig, Trainer

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
