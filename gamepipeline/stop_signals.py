"""SIGTERM and SIGINT for the server's and the agent's main threads.

A signal handler runs in the main thread between two bytecodes, wherever that thread
is: setting a ``threading.Event`` from it deadlocks when the main thread was inside
that event's own ``wait`` holding its lock (the lock is not reentrant), and the process
then ignores every later signal. The handler here only stores the signal's name; the
main thread polls for it.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """While entered, SIGTERM and SIGINT are noted instead of ending the process."""

    def __init__(self) -> None:
        #: The name of the first stop signal received ("" until one is).
        self.received = ""
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        self._previous = {sig: signal.signal(sig, self._note) for sig in STOP_SIGNALS}
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def wait(self, go_on: Callable[[], bool] = lambda: True, poll: float = 0.2) -> str:
        """Sleep until a stop signal comes or ``go_on`` says False; the signal's name,
        or "" if ``go_on`` ended the wait."""
        while not self.received and go_on():
            time.sleep(poll)
        return self.received

    def _note(self, signum: int, frame: Any) -> None:
        # No lock, no logging: only an assignment, which nothing can be holding.
        if not self.received:
            self.received = signal.Signals(signum).name
