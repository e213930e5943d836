"""kd_regression.interrupts: SIGINT / SIGTERM stop a run, but never inside a deferred section."""

import os
import signal

import pytest

from kd_regression import interrupts


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_raises_interrupted_with_the_shells_exit_code(signum, code):
    before = signal.getsignal(signum)
    with interrupts.handle(), pytest.raises(interrupts.Interrupted) as info:
        os.kill(os.getpid(), signum)
        for _ in range(10**6):  # the handler runs at the next bytecode
            pass
    assert info.value.exit_code == code
    assert str(info.value) == f"interrupted by {signal.Signals(signum).name}"
    assert isinstance(info.value, KeyboardInterrupt)  # not caught by `except Exception`
    assert signal.getsignal(signum) is before  # the handler before is restored


def test_a_signal_inside_a_deferred_section_is_raised_when_it_ends():
    done = []
    with interrupts.handle(), pytest.raises(interrupts.Interrupted):
        with interrupts.deferred():
            with interrupts.deferred():  # nested: raised at the end of the outer one
                os.kill(os.getpid(), signal.SIGINT)
                done.append("inner")
            done.append("outer")
        done.append("after")
    assert done == ["inner", "outer"]


def test_an_error_inside_a_deferred_section_wins_and_the_signal_waits_for_the_next():
    with interrupts.handle():
        with pytest.raises(ValueError), interrupts.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            raise ValueError("the section's own error")
        with pytest.raises(interrupts.Interrupted) as info, interrupts.deferred():
            pass
    assert info.value.signum == signal.SIGTERM


def test_an_interrupt_a_library_swallowed_is_raised_again_at_the_next_check():
    # TensorFlow's import did this to a signal that arrived early in it (measured when a
    # metric writer imported it); any library may.
    with interrupts.handle():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10**6):
                pass
        except BaseException:
            pass  # swallowed, as by a bare `except:`
        with interrupts.deferred():  # raised once already: a cleanup section is not cut
            pass
        with pytest.raises(interrupts.Interrupted) as info:
            interrupts.check()
    assert info.value.signum == signal.SIGTERM
    interrupts.check()  # outside handle(): nothing pending
