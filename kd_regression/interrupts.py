"""Stopping on SIGINT / SIGTERM at once, but never inside a checkpoint save.

:func:`handle` turns both signals into :class:`Interrupted` (a ``KeyboardInterrupt``), raised
in the main thread where it is running, like Ctrl-C normally is. Code that must not be cut
in the middle runs in :func:`deferred`: orbax starts an asynchronous save by handing work
to a background thread, and an exception raised between the two left that thread waiting
300 s for a directory that was never made. A signal that arrives inside such a section is
raised when the section ends (only orbax's own part of a save is waited for, not the
writing, which goes on in the background and is finished on the way out).

Everything else a run writes is safe to cut anywhere: files are written to a temporary
name and renamed, teacher-store ranges are marked done only once written, and orbax
commits a checkpoint by a rename; the next run removes what was left half written.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_depth = 0  # how many deferred() sections the main thread is in
_received: int | None = None  # the first signal that arrived (the run is to stop)
_raised = False  # whether Interrupted was raised for it already


class Interrupted(KeyboardInterrupt):
    """A run was stopped by a signal. ``where`` is filled in on the way out (the fit and
    step, or the sweep's cell) for the one line the command prints."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.where: str | None = None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process killed by it (130, 143)."""
        return 128 + self.signum

    def __str__(self) -> str:
        return f"interrupted by {self.signal_name}" + (f" at {self.where}" if self.where else "")


def _handler(signum: int, frame) -> None:
    global _received, _raised
    _received = _received or signum
    if _depth == 0:
        _raised = True
        raise Interrupted(_received)


@contextlib.contextmanager
def handle(signals: tuple[int, ...] = SIGNALS) -> Iterator[None]:
    """Within this block (main thread only) ``signals`` raise :class:`Interrupted`."""
    global _received, _raised
    _received, _raised = None, False
    previous = {s: signal.signal(s, _handler) for s in signals}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        _received, _raised = None, False


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A section no signal cuts short: one that arrives inside is raised at its end.

    If the section itself raises, that error goes on as it is, and the signal is raised at
    the next :func:`check`.
    """
    global _depth, _raised
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if _depth == 0 and _received is not None and not _raised:
        _raised = True
        raise Interrupted(_received)


def check() -> None:
    """Raises :class:`Interrupted` if a signal has arrived, even if it was raised before.

    Called at the safe points of a run (each step of ``fit``, each cell of a sweep): an
    ``Interrupted`` raised inside a library that swallows every exception (TensorFlow's
    import does, in places) would otherwise be lost, and the run would go on.
    """
    global _raised
    if _received is not None:
        _raised = True
        raise Interrupted(_received)
