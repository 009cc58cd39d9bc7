"""The gRPC face of the server: ``GamePipelineGRPCService`` for the agents.

The contract is ``proto/gamepipeline.proto``; this module keeps its promises.

``PipelineStream`` (one per agent, long-lived):
  the first message must be ``register``, else the stream ends with INVALID_ARGUMENT; a
  contract version other than ours ends it with FAILED_PRECONDITION naming both. The
  answer is ``registered``; then ``pipeline`` and ``cancel`` messages come as the
  dispatcher decides and each ``heartbeat`` is answered with ``heartbeat_ack``. While a
  node's stream is live, another agent registering with its node id is refused with
  ALREADY_EXISTS naming the agent that holds it (and the node's view in the HTTP API
  shows the refusal); the holder's own re-registration (same instance id) replaces its
  old stream, which ends with ABORTED. A stream whose
  heartbeats stop ends with UNAVAILABLE. When the stream ends for any reason the node
  is marked offline (unless a newer stream took its place).

``UpdatePipelineStatus`` / ``UpdateStepStatus`` (unary, retried freely by the agent):
  each report is judged and, if it changes the record, committed before the answer
  goes back. The commit happens on the store's writer thread, which groups the reports
  that arrive together into one transaction; the handler awaits it, so the event loop
  serves other calls meanwhile. ``applied=false`` says it changed nothing, with ``duplicate=true`` for a
  sequence number already seen; ``detail`` says why in either case. Malformed reports
  are INVALID_ARGUMENT, unknown pipelines NOT_FOUND, a report from a node other than
  the one the pipeline is assigned to PERMISSION_DENIED.

Authentication (``security``): when the server has agent tokens, every call must carry
``authorization: Bearer <token>`` metadata. A missing or unknown token is UNAUTHENTICATED
before anything else is read; a known token used for another node (in ``register`` or
in a report's ``node_id``) is PERMISSION_DENIED and changes nothing. The health service
stays open.

Every ``ServerError`` becomes a status code through ``GRPC_STATUS``, here and nowhere
else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

import grpc

from gamepipeline.pipeline.states import PipelineState
from gamepipeline.proto import gamepipeline_pb2 as pb
from gamepipeline.proto import gamepipeline_pb2_grpc as pb_grpc
from gamepipeline.server.dispatcher import AgentSession, Dispatcher, StreamEnd
from gamepipeline.server.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NodeTaken,
    NotFound,
    ServerError,
    Unauthenticated,
    UnsupportedProtocol,
    WrongNode,
)
from gamepipeline.server.messages import pipeline_report, step_report
from gamepipeline.server.metrics import Metrics
from gamepipeline.server.security import Security, bearer_token
from gamepipeline.server.store import ReportOutcome, StepReport, Store
from gamepipeline.wire import AUTH_METADATA_KEY, PROTOCOL_VERSION, node_id_problem

log = logging.getLogger(__name__)

GRPC_STATUS: Final[dict[type[ServerError], grpc.StatusCode]] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    # Transient for the agent: the node is free again once its holder goes away.
    NodeTaken: grpc.StatusCode.ALREADY_EXISTS,
    Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    WrongNode: grpc.StatusCode.PERMISSION_DENIED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    UnsupportedProtocol: grpc.StatusCode.FAILED_PRECONDITION,
}


def grpc_status(error: ServerError) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        if kind in GRPC_STATUS:
            return GRPC_STATUS[kind]
    return grpc.StatusCode.INTERNAL


class PipelineService(pb_grpc.GamePipelineGRPCServiceServicer):
    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        metrics: Metrics | None = None,
        security: Security | None = None,
    ) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._metrics = metrics or Metrics()
        self._security = security or Security()

    def _authenticate(self, context: Any) -> str | None:
        """The node the call's token belongs to; None when agents are not
        authenticated (no tokens configured).

        Raises:
            Unauthenticated: the token is missing or unknown.
        """
        if self._security.agents_open:
            return None
        header = None
        for key, value in context.invocation_metadata() or ():
            if key == AUTH_METADATA_KEY:
                header = value
        node_id = self._security.agent_for(bearer_token(header))
        if node_id is None:
            why = "carries no token" if header is None else "carries an unknown token"
            raise Unauthenticated(
                f"the call from {context.peer()} {why}; give the agent its node's "
                "token (--token-file or `token:` in its configuration)"
            )
        return node_id

    def _authorize_report(self, context: Any, node_id: str) -> None:
        """Check the caller's token against the node a report claims to come from."""
        allowed = self._authenticate(context)
        if allowed is not None and allowed != node_id:
            raise Forbidden(
                f"the token of node {allowed} cannot report as node {node_id}; "
                "each agent reports with its own node's token"
            )

    async def PipelineStream(
        self, request_iterator: AsyncIterator[pb.PipelineStreamRequest], context: Any
    ) -> AsyncIterator[pb.PipelineStreamResponse]:
        try:
            allowed = self._authenticate(context)
            registration = await _registration(request_iterator)
            if allowed is not None and allowed != registration.node_id:
                raise Forbidden(
                    f"the token of node {allowed} cannot register node "
                    f"{registration.node_id}; give each agent its own node's token"
                )
            session = await self._dispatcher.attach(registration, context.peer())
        except ServerError as err:
            log.warning("refused a stream from %s: %s", context.peer(), err.message)
            await context.abort(grpc_status(err), err.message)
            return

        reader = asyncio.create_task(self._read(session, request_iterator))
        try:
            while True:
                item = await session.outbox.get()
                if isinstance(item, StreamEnd):
                    if item.code is not None:
                        await context.abort(item.code, item.detail)
                    return
                yield item
        finally:
            reader.cancel()
            self._dispatcher.detach(session)

    async def _read(
        self,
        session: AgentSession,
        request_iterator: AsyncIterator[pb.PipelineStreamRequest],
    ) -> None:
        """Take the agent's messages off the stream until it ends."""
        try:
            async for request in request_iterator:
                kind = request.WhichOneof("kind")
                if kind == "heartbeat":
                    await self._dispatcher.heartbeat(session, request.heartbeat)
                elif kind == "ack":
                    await self._dispatcher.acknowledge(session, request.ack)
                else:
                    session.end(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"stream already registered as node {session.node_id}; "
                        f"send register once per stream, got {kind or 'an empty message'}",
                    )
                    return
            session.end(None, "agent closed its side of the stream")
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.info("stream of node %s broke: %s", session.node_id, err)
            session.end(None, "stream broke")

    async def UpdatePipelineStatus(
        self, request: pb.UpdatePipelineStatusRequest, context: Any
    ) -> pb.UpdatePipelineStatusResponse:
        try:
            self._authorize_report(context, request.node_id)
            report = pipeline_report(request)
            outcome = await self._store.apply_pipeline_report_async(report)
        except ServerError as err:
            self._metrics.rejected("pipeline")
            await context.abort(grpc_status(err), err.message)
            raise  # not reached: abort raises
        self._metrics.report(
            "pipeline", applied=outcome.applied, duplicate=outcome.duplicate
        )
        if outcome.applied and report.state is not PipelineState.RUNNING:
            self._dispatcher.wake()  # a slot came free
        return pb.UpdatePipelineStatusResponse(
            applied=outcome.applied, duplicate=outcome.duplicate, detail=outcome.detail
        )

    async def UpdateStepStatus(
        self, request: pb.UpdateStepStatusRequest, context: Any
    ) -> pb.UpdateStepStatusResponse:
        try:
            self._authorize_report(context, request.node_id)
            report = step_report(request)
            outcome = await self._store.apply_step_report_async(report)
        except ServerError as err:
            self._metrics.rejected("step")
            await context.abort(grpc_status(err), err.message)
            raise  # not reached: abort raises
        self._metrics.report(
            "step", applied=outcome.applied, duplicate=outcome.duplicate
        )
        if outcome.applied and report.state.is_final:
            self._observe_step(report, outcome)
        return pb.UpdateStepStatusResponse(
            applied=outcome.applied, duplicate=outcome.duplicate, detail=outcome.detail
        )

    def _observe_step(self, report: StepReport, outcome: ReportOutcome) -> None:
        """Time a step that just ended, if it ever started."""
        if outcome.step_seconds is not None:
            self._metrics.step_duration.labels(
                outcome.step_type, report.state.value
            ).observe(outcome.step_seconds)


async def _registration(
    request_iterator: AsyncIterator[pb.PipelineStreamRequest],
) -> pb.AgentRegistration:
    """Read and check the stream's first message."""
    try:
        first = await anext(request_iterator)
    except StopAsyncIteration:
        raise InvalidRequest("the stream ended before the agent registered") from None
    kind = first.WhichOneof("kind")
    if kind != "register":
        raise InvalidRequest(
            f"the first message on PipelineStream must be register, got "
            f"{kind or 'an empty message'}; send AgentRegistration first"
        )
    registration = first.register
    if not registration.node_id:
        raise InvalidRequest("register has an empty node_id; give the node's fleet id")
    problem = node_id_problem(registration.node_id)
    if problem:
        raise InvalidRequest(f"register: node_id {problem}")
    if registration.protocol_version != PROTOCOL_VERSION:
        raise UnsupportedProtocol(
            f"node {registration.node_id} speaks protocol version "
            f"{registration.protocol_version}, this server speaks {PROTOCOL_VERSION}; "
            "run an agent and a server of the same contract version"
        )
    if registration.capacity < 1:
        raise InvalidRequest(
            f"node {registration.node_id} registered with capacity "
            f"{registration.capacity}; register with capacity 1 or more"
        )
    return registration
