"""kd_regression: knowledge distillation for regression problems with noisy labels."""

__version__ = "0.1.0"
