"""Entry point: ``kd-regression --config CONFIG[:arg] --workdir DIR`` (installed with the
package; ``python -m experiments.main`` from the repository root is the same).

``CONFIG`` is a config file, or the name of a shipped one (``sinusoid``, ``faces``,
``mpiigaze``, ``multipie``), so the command works from any directory.
"""

import logging as std_logging
import os
import sys
import threading
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # TF only writes summaries here

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import sweep
from kd_regression import interrupts, sharding

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

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
    with interrupts.handle():
        try:
            sweep.run(_CONFIG.value, _WORKDIR.value)
        except interrupts.Interrupted as e:
            _exit(f"{e}; rerun the same command to resume", e.exit_code)
        except Exception as e:
            traceback.print_exc()  # for whoever debugs it; the last line says what failed
            _exit(f"kd-regression failed: {type(e).__name__}: {e}", 1)


def _exit(line: str, code: int) -> None:
    """Ends the process with ``line`` as its last line of output, and status ``code``.

    After a failed checkpoint save, orbax's threads go on logging the same failure for a
    while (pages of it): they get up to 10 s to finish, and what they log after that is
    dropped. The interpreter's exit handlers are skipped for the same reason; every file
    the run keeps is written and synced already.
    """
    deadline = time.monotonic() + 10
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    std_logging.disable(std_logging.CRITICAL)
    threading.excepthook = lambda args: None
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)
    os._exit(code)


def _shipped_config(argv: list[str]) -> list[str]:
    """``--config NAME[:arg]`` of a shipped config becomes the path of its file."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            where, prefix = i, "--config="
        elif arg == "--config" and i + 1 < len(out):
            where, prefix = i + 1, ""
        else:
            continue
        path, sep, rest = out[where][len(prefix) :].partition(":")
        shipped = os.path.join(CONFIGS, f"{path}.py")
        if not os.path.exists(path) and os.sep not in path and os.path.exists(shipped):
            out[where] = prefix + shipped + sep + rest
        break
    return out


def cli() -> None:
    """The console script ``kd-regression``."""
    app.run(main, argv=_shipped_config(sys.argv))


if __name__ == "__main__":
    cli()
