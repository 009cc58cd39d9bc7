"""Capped, jittered exponential backoff, and which gRPC failures deserve a retry."""

from __future__ import annotations

import random
from collections.abc import Callable

import grpc

INITIAL_DELAY_SECONDS = 1.0
"""First wait after a failure: long enough not to hammer a restarting server."""

MAX_DELAY_SECONDS = 30.0
"""Cap on the wait, so an agent finds a server that is back within half a minute."""

HEALTHY_AFTER_SECONDS = 20.0
"""A stream that stayed up this long was healthy: the next failure starts from the
initial delay again instead of from where the last outage left off."""

FINAL_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        # The server ends a stream with ABORTED when another stream took the node
        # over: the agent's own newer one, or another agent's after this one fell
        # silent; reconnecting would only take the node id back and forth.
        grpc.StatusCode.ABORTED,
    }
)
"""Stream failures that retrying cannot fix: the agent stops and says why.

ALREADY_EXISTS (another live agent holds the node id) is not among them: the holder
may be gone behind a half-open connection, which the server notices within its offline
limit, and the agent must get in then."""

FINAL_REPORT_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
    }
)
"""Status report failures that retrying cannot fix: the report is dropped and logged."""


def is_transient(code: grpc.StatusCode | None, *, report: bool = False) -> bool:
    """Whether a call that failed with ``code`` is worth trying again.

    UNAVAILABLE (a restarting server) and UNKNOWN "Stream removed" (a connection cut
    mid-stream) are the common transient ones; everything that is not known to be final
    is treated as transient, so the agent never gives up on a server that may come back.
    """
    final = FINAL_REPORT_CODES if report else FINAL_CODES
    return code not in final


class Backoff:
    """Delays between attempts: ``initial * 2**n`` capped at ``cap``, each drawn at
    random from the upper half of that value so that a fleet of agents cut off at the
    same moment does not reconnect in lockstep.

    Not thread-safe; each retry loop owns one.
    """

    def __init__(
        self,
        initial: float = INITIAL_DELAY_SECONDS,
        cap: float = MAX_DELAY_SECONDS,
        *,
        rng: Callable[[float, float], float] = random.uniform,
    ) -> None:
        if initial <= 0 or cap < initial:
            raise ValueError(
                f"backoff needs 0 < initial <= cap, got {initial} and {cap}"
            )
        self.initial = initial
        self.cap = cap
        self.attempt = 0
        self._rng = rng

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return min(self.cap, self.initial * 2.0 ** min(self.attempt, 32))

    def next_delay(self) -> float:
        """The delay before the next attempt; each call moves one attempt on."""
        high = self.ceiling()
        self.attempt += 1
        return self._rng(high / 2, high)

    def reset(self) -> None:
        """Start over from the initial delay (after a healthy period)."""
        self.attempt = 0
