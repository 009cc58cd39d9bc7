"""``gamepipeline.stop_signals``: real signals sent to this process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from gamepipeline.stop_signals import StopSignals


def test_a_stop_signal_ends_the_wait_with_its_name_and_the_first_one_counts() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.wait(poll=0.01) == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


WAITER = """
from gamepipeline.stop_signals import StopSignals
with StopSignals() as signals:
    print("ready", flush=True)
    print(signals.wait(poll=0.0005), flush=True)
"""


def test_a_process_waiting_ends_on_every_sigterm_it_gets() -> None:
    """The agent once hung for good on a SIGTERM that came while its main thread was
    inside the ``threading.Event`` its handler set. Here, a process in the wait gets
    SIGTERM, many times over, at whatever point of its loop."""
    for _ in range(20):
        waiter = subprocess.Popen(
            [sys.executable, "-c", WAITER], stdout=subprocess.PIPE, text=True
        )
        assert waiter.stdout is not None
        assert waiter.stdout.readline() == "ready\n"
        waiter.send_signal(signal.SIGTERM)
        out, _ = waiter.communicate(timeout=5)
        assert (waiter.returncode, out) == (0, "SIGTERM\n")


def test_the_wait_also_ends_when_go_on_says_false() -> None:
    calls = iter([True, True, False])
    with StopSignals() as signals:
        assert signals.wait(lambda: next(calls), poll=0.01) == ""
