"""Translation between the store's records and the contract's messages."""

from __future__ import annotations

import json
from typing import Final

from gamepipeline.pipeline.states import EndReason, PipelineState, StepState
from gamepipeline.proto import gamepipeline_pb2 as pb
from gamepipeline.server.errors import InvalidRequest
from gamepipeline.server.store import (
    PipelineRecord,
    PipelineReport,
    StepRecord,
    StepReport,
)

PIPELINE_STATE_TO_PB: Final = {
    PipelineState.PENDING: pb.PIPELINE_STATE_PENDING,
    PipelineState.RUNNING: pb.PIPELINE_STATE_RUNNING,
    PipelineState.COMPLETED: pb.PIPELINE_STATE_COMPLETED,
    PipelineState.FAILED: pb.PIPELINE_STATE_FAILED,
    PipelineState.CANCELED: pb.PIPELINE_STATE_CANCELED,
}
PIPELINE_STATE_FROM_PB: Final = {v: k for k, v in PIPELINE_STATE_TO_PB.items()}

STEP_STATE_TO_PB: Final = {
    StepState.PENDING: pb.STEP_STATE_PENDING,
    StepState.RUNNING: pb.STEP_STATE_RUNNING,
    StepState.COMPLETED: pb.STEP_STATE_COMPLETED,
    StepState.FAILED: pb.STEP_STATE_FAILED,
    StepState.SKIPPED: pb.STEP_STATE_SKIPPED,
}
STEP_STATE_FROM_PB: Final = {v: k for k, v in STEP_STATE_TO_PB.items()}

END_REASON_TO_PB: Final = {
    EndReason.NONE: pb.END_REASON_UNSPECIFIED,
    EndReason.STEP_FAILED: pb.END_REASON_STEP_FAILED,
    EndReason.TIMEOUT: pb.END_REASON_TIMEOUT,
    EndReason.CANCELED: pb.END_REASON_CANCELED,
    EndReason.NODE_LOST: pb.END_REASON_NODE_LOST,
    EndReason.AGENT_RESTARTED: pb.END_REASON_AGENT_RESTARTED,
    EndReason.REJECTED: pb.END_REASON_REJECTED,
}
END_REASON_FROM_PB: Final = {v: k for k, v in END_REASON_TO_PB.items()}


def pipeline_message(
    record: PipelineRecord, steps: list[StepRecord]
) -> pb.GamePipeline:
    """The ``pipeline`` message that hands a pipeline to its agent."""
    return pb.GamePipeline(
        id=record.id,
        model=record.model,
        name=record.name,
        description=record.description,
        envs=record.declared_envs,
        args=record.declared_args,
        steps=[
            pb.PipelineStep(
                index=step.index,
                name=step.name,
                type=step.type,
                status=pb.StepStatus(
                    state=STEP_STATE_TO_PB[step.state],
                    reason=END_REASON_TO_PB[step.reason],
                    message=step.message,
                ),
            )
            for step in steps
        ],
        status=pb.PipelineStatus(
            state=PIPELINE_STATE_TO_PB[record.state],
            reason=END_REASON_TO_PB[record.reason],
            message=record.message,
            current_step=record.current_step,
            started_at_ms=record.started_at_ms or 0,
            finished_at_ms=record.finished_at_ms or 0,
        ),
        document_json=json.dumps(record.document, ensure_ascii=False),
        arg_values=record.arg_values,
        env_values=record.env_values,
        timeout_seconds=record.timeout_seconds,
    )


def pipeline_report(request: pb.UpdatePipelineStatusRequest) -> PipelineReport:
    """Check an ``UpdatePipelineStatus`` request; raise ``InvalidRequest`` if malformed."""
    _check_ids(request.node_id, request.pipeline_id, request.sequence)
    state = PIPELINE_STATE_FROM_PB.get(request.state)
    if state is None:
        raise InvalidRequest(
            f"state {request.state} in the report on pipeline {request.pipeline_id} is "
            "not a pipeline state an agent may report; send PENDING, RUNNING, "
            "COMPLETED, FAILED or CANCELED"
        )
    return PipelineReport(
        node_id=request.node_id,
        pipeline_id=request.pipeline_id,
        state=state,
        reason=_reason(request.reason, request.pipeline_id),
        message=request.message,
        sequence=request.sequence,
        timestamp_ms=request.timestamp_ms,
    )


def step_report(request: pb.UpdateStepStatusRequest) -> StepReport:
    """Check an ``UpdateStepStatus`` request; raise ``InvalidRequest`` if malformed."""
    _check_ids(request.node_id, request.pipeline_id, request.sequence)
    state = STEP_STATE_FROM_PB.get(request.state)
    if state is None:
        raise InvalidRequest(
            f"state {request.state} in the report on step {request.step_index} of "
            f"pipeline {request.pipeline_id} is not a step state; send one of "
            "PENDING, RUNNING, COMPLETED, FAILED or SKIPPED"
        )
    if request.step_index < 0:
        raise InvalidRequest(
            f"step_index {request.step_index} in the report on pipeline "
            f"{request.pipeline_id} is negative; steps count from 0"
        )
    return StepReport(
        node_id=request.node_id,
        pipeline_id=request.pipeline_id,
        step_index=request.step_index,
        state=state,
        reason=_reason(request.reason, request.pipeline_id),
        message=request.message,
        sequence=request.sequence,
        exit_code=request.exit_code if request.HasField("exit_code") else None,
        output_tail=request.output_tail,
        timestamp_ms=request.timestamp_ms,
    )


def _check_ids(node_id: str, pipeline_id: str, sequence: int) -> None:
    if not node_id:
        raise InvalidRequest(
            "node_id is empty; send the node id the agent registered with"
        )
    if not pipeline_id:
        raise InvalidRequest(f"pipeline_id is empty in a report from node {node_id}")
    if sequence < 1:
        raise InvalidRequest(
            f"sequence {sequence} in the report on pipeline {pipeline_id} is not "
            "positive; number each pipeline's reports 1, 2, 3, ..."
        )


def _reason(value: int, pipeline_id: str) -> EndReason:
    reason: EndReason | None = END_REASON_FROM_PB.get(value)  # type: ignore[call-overload]
    if reason is None:
        raise InvalidRequest(
            f"reason {value} in the report on pipeline {pipeline_id} is not an EndReason"
        )
    return reason
