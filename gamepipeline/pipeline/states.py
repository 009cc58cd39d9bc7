"""The life cycle of a pipeline and of its steps, free of I/O.

A pipeline is ``pending`` from submission until its agent starts it, ``running`` while its
steps run, and ends in exactly one of ``completed``, ``failed`` or ``canceled``. A step is
``pending``, then ``running``, and ends ``completed``, ``failed`` or ``skipped``.

The rules every report is judged by:

- a final state is never left: a report about a finished pipeline or step changes nothing;
- states only move forward (pending, then running, then a final state); a report may skip
  ``running`` (a pipeline canceled before it started, a step skipped after a failure), but
  nothing goes back to ``pending`` or from a final state to ``running``;
- a report whose sequence number was already seen is a duplicate and changes nothing.

Canceled, timed out and failed are different outcomes: the state says how it ended
(``failed`` or ``canceled``) and ``EndReason`` says why (``timeout``, ``step_failed``,
``node_lost``, ...), and neither is ever folded into the other.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class PipelineState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_final(self) -> bool:
        return self in _FINAL_PIPELINE_STATES


class StepState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def is_final(self) -> bool:
        return self in _FINAL_STEP_STATES


class EndReason(enum.StrEnum):
    """Why a pipeline or step ended the way it did; ``NONE`` while it has not ended."""

    NONE = ""
    STEP_FAILED = "step_failed"
    TIMEOUT = "timeout"
    CANCELED = "canceled"
    NODE_LOST = "node_lost"
    AGENT_RESTARTED = "agent_restarted"
    REJECTED = "rejected"


_FINAL_PIPELINE_STATES = frozenset(
    {PipelineState.COMPLETED, PipelineState.FAILED, PipelineState.CANCELED}
)
_FINAL_STEP_STATES = frozenset(
    {StepState.COMPLETED, StepState.FAILED, StepState.SKIPPED}
)

# Position in the life cycle: a move is allowed only to a higher rank.
_PIPELINE_RANK = {
    PipelineState.PENDING: 0,
    PipelineState.RUNNING: 1,
    PipelineState.COMPLETED: 2,
    PipelineState.FAILED: 2,
    PipelineState.CANCELED: 2,
}
_STEP_RANK = {
    StepState.PENDING: 0,
    StepState.RUNNING: 1,
    StepState.COMPLETED: 2,
    StepState.FAILED: 2,
    StepState.SKIPPED: 2,
}


class Verdict(enum.Enum):
    """What a report would do to a record."""

    APPLY = "apply"
    #: The record is already in the reported state.
    UNCHANGED = "unchanged"
    #: The record is in a final state, which is never left.
    FINAL = "final"
    #: The report would move the record backwards (running back to pending).
    BACKWARDS = "backwards"


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    detail: str

    @property
    def applies(self) -> bool:
        return self.verdict is Verdict.APPLY


def judge_pipeline_move(
    current: PipelineState, target: PipelineState, *, what: str = "pipeline"
) -> Judgement:
    """Judge moving a pipeline from ``current`` to ``target``."""
    rank = _PIPELINE_RANK
    return _judge(current, target, rank[current], rank[target], current.is_final, what)


def judge_step_move(
    current: StepState, target: StepState, *, what: str = "step"
) -> Judgement:
    """Judge moving a step from ``current`` to ``target``."""
    rank = _STEP_RANK
    return _judge(current, target, rank[current], rank[target], current.is_final, what)


def _judge(
    current: enum.StrEnum,
    target: enum.StrEnum,
    current_rank: int,
    target_rank: int,
    final: bool,
    what: str,
) -> Judgement:
    if current == target:
        return Judgement(Verdict.UNCHANGED, f"{what} is already {current}")
    if final:
        return Judgement(
            Verdict.FINAL,
            f"{what} already ended {current}; a final state is never left "
            f"(report of {target} ignored)",
        )
    if target_rank <= current_rank:
        return Judgement(
            Verdict.BACKWARDS,
            f"{what} is {current} and cannot go back to {target}",
        )
    return Judgement(Verdict.APPLY, f"{what} moved from {current} to {target}")


class SequenceVerdict(enum.Enum):
    NEW = "new"
    #: Seen before (a retry) or older than the last one applied (stale).
    DUPLICATE = "duplicate"


def judge_sequence(last_seen: int, sequence: int) -> SequenceVerdict:
    """Judge a report's sequence number against the last one seen for its pipeline.

    Numbers grow by one per report; a gap (``sequence > last_seen + 1``) is accepted,
    since the reports in between may have been about a state this one supersedes.
    """
    return SequenceVerdict.NEW if sequence > last_seen else SequenceVerdict.DUPLICATE


def steps_after_end(
    steps: list[StepState], reason: EndReason
) -> list[tuple[int, StepState, EndReason]]:
    """What happens to unfinished steps when the server itself ends a pipeline.

    Used when the server ends a pipeline no agent will report on (canceled before it
    started, node lost): a running step fails with the pipeline's reason, pending steps
    are skipped with it. Returns ``(index, new_state, reason)`` for each step that moves.
    """
    moves: list[tuple[int, StepState, EndReason]] = []
    for index, state in enumerate(steps):
        if state is StepState.RUNNING:
            moves.append((index, StepState.FAILED, reason))
        elif state is StepState.PENDING:
            moves.append((index, StepState.SKIPPED, reason))
    return moves


def steps_after_restart(
    steps: list[StepState],
) -> tuple[int | None, list[tuple[int, StepState, EndReason]]]:
    """What happens to a pipeline's steps when its agent restarted without its records.

    The step the records show running was cut short; when none runs (the agent was
    between two steps, or had not reported its first), the first step that had not
    ended is, since the agent may have begun it. That step fails with the reason
    ``agent_restarted`` and every other step that had not ended is skipped with it;
    steps that ended keep their state. Returns the cut-short step (None when every
    step had ended) and ``(index, new_state, reason)`` for each step that moves.
    """
    reason = EndReason.AGENT_RESTARTED
    running = [i for i, state in enumerate(steps) if state is StepState.RUNNING]
    unfinished = [i for i, state in enumerate(steps) if not state.is_final]
    cut = running[0] if running else (unfinished[0] if unfinished else None)
    moves = [
        (index, StepState.FAILED if index == cut else StepState.SKIPPED, reason)
        for index in unfinished
    ]
    return cut, moves
