"""The I/O-free state machine: what a report may do to a pipeline or a step."""

from __future__ import annotations

import pytest

from gamepipeline.pipeline.states import (
    EndReason,
    PipelineState,
    SequenceVerdict,
    StepState,
    Verdict,
    judge_pipeline_move,
    judge_sequence,
    judge_step_move,
    steps_after_end,
    steps_after_restart,
)

P = PipelineState
S = StepState


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (P.PENDING, P.RUNNING),
        (P.RUNNING, P.COMPLETED),
        (P.RUNNING, P.FAILED),
        (P.RUNNING, P.CANCELED),
        (P.PENDING, P.CANCELED),
        (P.PENDING, P.FAILED),
    ],
)
def test_pipeline_moves_forward(current: PipelineState, target: PipelineState) -> None:
    assert judge_pipeline_move(current, target).verdict is Verdict.APPLY


@pytest.mark.parametrize("final", [P.COMPLETED, P.FAILED, P.CANCELED])
@pytest.mark.parametrize("target", list(P))
def test_pipeline_never_leaves_a_final_state(
    final: PipelineState, target: PipelineState
) -> None:
    judgement = judge_pipeline_move(final, target)

    assert not judgement.applies
    expected = Verdict.UNCHANGED if target == final else Verdict.FINAL
    assert judgement.verdict is expected


def test_running_pipeline_does_not_go_back_to_pending() -> None:
    judgement = judge_pipeline_move(P.RUNNING, P.PENDING, what="pipeline p1")

    assert judgement.verdict is Verdict.BACKWARDS
    assert "pipeline p1" in judgement.detail


@pytest.mark.parametrize("final", [S.COMPLETED, S.FAILED, S.SKIPPED])
@pytest.mark.parametrize("target", list(S))
def test_step_never_leaves_a_final_state(final: StepState, target: StepState) -> None:
    assert not judge_step_move(final, target).applies


@pytest.mark.parametrize("target", [S.RUNNING, S.COMPLETED, S.FAILED, S.SKIPPED])
def test_pending_step_may_move_to_any_later_state(target: StepState) -> None:
    assert judge_step_move(S.PENDING, target).applies


def test_final_states_are_exactly_the_three_endings() -> None:
    assert {s for s in P if s.is_final} == {P.COMPLETED, P.FAILED, P.CANCELED}
    assert {s for s in S if s.is_final} == {S.COMPLETED, S.FAILED, S.SKIPPED}


@pytest.mark.parametrize(
    ("last", "sequence", "verdict"),
    [
        (0, 1, SequenceVerdict.NEW),
        (4, 5, SequenceVerdict.NEW),
        (4, 7, SequenceVerdict.NEW),
        (5, 5, SequenceVerdict.DUPLICATE),
        (5, 2, SequenceVerdict.DUPLICATE),
    ],
)
def test_sequence_numbers_already_seen_are_duplicates(
    last: int, sequence: int, verdict: SequenceVerdict
) -> None:
    assert judge_sequence(last, sequence) is verdict


def test_server_ending_fails_the_running_step_and_skips_the_pending_ones() -> None:
    moves = steps_after_end([S.COMPLETED, S.RUNNING, S.PENDING], EndReason.NODE_LOST)

    assert moves == [
        (1, S.FAILED, EndReason.NODE_LOST),
        (2, S.SKIPPED, EndReason.NODE_LOST),
    ]


@pytest.mark.parametrize(
    ("steps", "cut", "moves"),
    [
        # The running step was cut short; the completed one keeps its state.
        ([S.COMPLETED, S.RUNNING, S.PENDING], 1, [(1, S.FAILED), (2, S.SKIPPED)]),
        # Between two steps: the next one may have begun.
        ([S.COMPLETED, S.PENDING, S.PENDING], 1, [(1, S.FAILED), (2, S.SKIPPED)]),
        # Taken, no step reported yet.
        ([S.PENDING, S.PENDING], 0, [(0, S.FAILED), (1, S.SKIPPED)]),
        # Every step ended; only the pipeline's own report was lost.
        ([S.COMPLETED, S.COMPLETED], None, []),
    ],
)
def test_agent_restart_fails_the_step_cut_short_and_skips_the_rest(
    steps: list[StepState],
    cut: int | None,
    moves: list[tuple[int, StepState]],
) -> None:
    assert steps_after_restart(steps) == (
        cut,
        [(index, state, EndReason.AGENT_RESTARTED) for index, state in moves],
    )


def test_canceled_timeout_and_failed_are_distinct_reasons() -> None:
    reasons = {EndReason.CANCELED, EndReason.TIMEOUT, EndReason.STEP_FAILED}
    assert len({r.value for r in reasons}) == 3
