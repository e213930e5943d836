"""Entry point: ``python -m experiments.main --config CONFIG[:arg] --workdir DIR``."""

import logging as std_logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # TF only writes summaries here

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import sweep
from kd_regression import sharding

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results, stores and logs.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(std_logging.Filter):
    """Drops orbax's per-save INFO chatter; its warnings and errors still show."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    handler = logging.get_absl_handler()
    handler.setFormatter(None)
    handler.addFilter(_QuietLibraries())
    # Multi-process (KD_REGRESSION_DISTRIBUTED=1): before any computation; see the README.
    sharding.initialize()
    sweep.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
