"""The reconnect policy (F11): about 1 s growing to a 30 s cap, jittered, reset after a
healthy period; which failures are final."""

from __future__ import annotations

import grpc
import pytest

from gamepipeline.agent.backoff import Backoff, is_transient


def upper(low: float, high: float) -> float:
    return high


def lower(low: float, high: float) -> float:
    return low


def test_delays_double_from_one_second_up_to_the_cap() -> None:
    backoff = Backoff(rng=upper)
    delays = [backoff.next_delay() for _ in range(8)]
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]


def test_jitter_stays_in_the_upper_half_of_each_step() -> None:
    backoff = Backoff(rng=lower)
    assert [backoff.next_delay() for _ in range(7)] == [0.5, 1, 2, 4, 8, 15, 15]
    real = Backoff()
    for _ in range(50):
        ceiling = real.ceiling()
        assert ceiling / 2 <= real.next_delay() <= ceiling <= 30


def test_jitter_spreads_a_fleet_that_lost_the_server_together() -> None:
    first_delays = {round(Backoff().next_delay(), 6) for _ in range(20)}
    assert len(first_delays) > 10


def test_reset_starts_over_after_a_healthy_period() -> None:
    backoff = Backoff(rng=upper)
    for _ in range(10):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == 1


def test_a_very_long_outage_does_not_overflow() -> None:
    backoff = Backoff(rng=upper)
    delays = [backoff.next_delay() for _ in range(5000)]
    assert delays[-1] == 30


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="0 < initial <= cap"):
        Backoff(initial=5, cap=1)


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNKNOWN,  # "Stream removed"
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        None,
    ],
)
def test_transient_failures_are_retried(code: grpc.StatusCode | None) -> None:
    assert is_transient(code)
    assert is_transient(code, report=True)


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
    ],
)
def test_authentication_and_argument_errors_are_final(code: grpc.StatusCode) -> None:
    assert not is_transient(code)
    assert not is_transient(code, report=True)


def test_stream_replaced_by_another_agent_is_final() -> None:
    assert not is_transient(grpc.StatusCode.ABORTED)


def test_a_node_held_by_another_live_agent_is_worth_retrying() -> None:
    """The holder may be gone behind a half-open connection; the server lets the
    waiting agent in once it notices."""
    assert is_transient(grpc.StatusCode.ALREADY_EXISTS)


def test_report_about_an_unknown_pipeline_is_not_retried() -> None:
    assert not is_transient(grpc.StatusCode.NOT_FOUND, report=True)
