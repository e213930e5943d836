"""Entry point: ``kd-regression --config CONFIG[:arg] --workdir DIR`` (installed with the
package; ``python -m experiments.main`` from the repository root is the same).

``CONFIG`` is a config file, or the name of a shipped one (``sinusoid``, ``faces``,
``mpiigaze``, ``multipie``, ``arrays``), so the command works from any directory.

Exit status: 0 done; 2 a mistake in the command line or the config, or a workdir that
cannot be used as it is (in use by another run, results of another config or other data,
a damaged record), found before any work (one line on stderr, nothing touched;
``--verbose`` adds the traceback); 130/143 interrupted (SIGINT/SIGTERM;
rerun the same command to resume); 1 any other failure (traceback, then one line).
"""

import logging as std_logging
import os
import sys
import threading
import time
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from experiments.sweep import resume, sweep
from experiments.sweep.validation import ConfigError
from kd_regression import interrupts, sharding
from kd_regression.fileio import DirectoryLockedError

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
_NOT_CONFIGS = ("__init__", "common")  # modules in configs/ that are not configs

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results, stores and logs.")
_VERBOSE = flags.DEFINE_bool(
    "verbose",
    False,
    "Every fit's per-step log and metrics (as --verbosity=1), and the traceback of a config error.",
)
flags.mark_flags_as_required(["config", "workdir"])
USAGE_ERROR = 2  # the status of a command-line or config mistake


class _QuietLibraries(std_logging.Filter):
    """Only our lines below WARNING: the libraries' INFO chatter is dropped (JAX's "Unable
    to initialize backend 'tpu'" on every machine without one, matplotlib's font cache);
    their warnings and errors still show. With ``--verbose`` the libraries' INFO lines show
    too, except orbax's (a few per checkpoint save)."""

    def __init__(self, verbose: bool):
        super().__init__()
        self._verbose = verbose
        # Our lines: logged from our packages' files (orbax logs through absl's logger too).
        self._ours = tuple(os.path.dirname(m.__file__) + os.sep for m in (sweep, interrupts))

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.levelno >= std_logging.WARNING or record.pathname.startswith(self._ours):
            return True
        return self._verbose and "orbax" not in record.pathname


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    handler = logging.get_absl_handler()
    handler.setFormatter(None)
    handler.addFilter(_QuietLibraries(_VERBOSE.value))
    if _VERBOSE.value:
        # Our own lines at verbosity 1 (absl's logger only: set_verbosity would set the
        # root logger, and every library's debug chatter with it).
        logging.get_absl_logger().setLevel(std_logging.DEBUG)
    # Multi-process (KD_REGRESSION_DISTRIBUTED=1): before any computation; see docs/scaling.md.
    sharding.initialize()
    with interrupts.handle():
        try:
            sweep.run(_CONFIG.value, _WORKDIR.value)
        except interrupts.Interrupted as e:
            _exit(f"{e}; rerun the same command to resume", e.exit_code)
        except ConfigError as e:  # found before any work: nothing was written
            if _VERBOSE.value:
                traceback.print_exc()
            _exit(f"kd-regression: config error: {e}", USAGE_ERROR)
        except (resume.WorkdirRefused, DirectoryLockedError) as e:  # before any work too
            if _VERBOSE.value:
                traceback.print_exc()
            _exit(f"kd-regression: {e}", USAGE_ERROR)
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
        elif not os.path.isfile(path):  # ml_collections says only "failed loading"
            names = [n[:-3] for n in sorted(os.listdir(CONFIGS)) if n.endswith(".py")]
            print(
                f"kd-regression: config error: --config: no config file {path!r} (a path, or "
                f"a shipped config: {', '.join(n for n in names if n not in _NOT_CONFIGS)})",
                file=sys.stderr,
            )
            sys.exit(USAGE_ERROR)
        break
    return out


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with each mistake (a misspelt ``--config.`` override, a value of
    the wrong type, a config file that does not load, a missing flag) as one line on
    stderr and exit status 2 (absl's own: a page of traceback, or status 1)."""
    try:
        return flags.FLAGS(argv)
    except Exception as e:
        if any(a in ("--verbose", "--verbose=true", "--verbose=True") for a in argv):
            traceback.print_exc()
        print(f"kd-regression: {_flag_error(e, argv)}", file=sys.stderr, flush=True)
        sys.exit(USAGE_ERROR)


def _flag_error(e: Exception, argv: list[str]) -> str:
    """One line for a flag that did not parse, naming the flag."""
    while e.args and isinstance(e.args[0], Exception):  # ml_collections wraps KeyErrors
        e = e.args[0]
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    lines = [part.strip() for part in text.splitlines() if part.strip()]
    # A config file that failed to load: what was tried, and its last line (the error).
    text = lines[0].rstrip(":") + ("; " + lines[-1] if len(lines) > 1 else "") if lines else ""
    if isinstance(e, KeyError):  # an override of a key the config does not have
        key = text.split(";")[0].strip("'\"")
        given = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        named = [a for a in given if a.split(".")[-1] == key] or given
        return f"config error: {', '.join(named)}: no such config key ({text})"
    if isinstance(e, flags.Error):
        return f"{text} (see --helpshort)"
    return f"config error: {text}"


def cli() -> None:
    """The console script ``kd-regression``."""
    app.run(main, argv=_shipped_config(sys.argv), flags_parser=_parse_flags)


if __name__ == "__main__":
    cli()
