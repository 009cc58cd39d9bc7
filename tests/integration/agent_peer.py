"""A real gRPC peer for the agent's tests: a small servicer on port 0 that records.

It speaks the generated ``GamePipelineGRPCService`` over real gRPC (sync server, the
server's keepalive options), accepts a registration, answers heartbeats, lets the test
push ``pipeline`` and ``cancel`` messages down the stream, and records every status
report in arrival order, deduplicating by sequence number as the real server does.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

from gamepipeline import wire
from gamepipeline.proto import gamepipeline_pb2 as pb
from gamepipeline.proto import gamepipeline_pb2_grpc as pb_grpc

Update = pb.UpdatePipelineStatusRequest | pb.UpdateStepStatusRequest


@dataclass
class Stream:
    registration: pb.AgentRegistration
    outgoing: queue.Queue[pb.PipelineStreamResponse] = field(
        default_factory=queue.Queue
    )
    requests: list[pb.PipelineStreamRequest] = field(default_factory=list)


class RecordingServicer(pb_grpc.GamePipelineGRPCServiceServicer):
    def __init__(self, heartbeat_interval: int = 1) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.cond = threading.Condition()
        self.streams: list[Stream] = []
        self.updates: list[Update] = []
        self.duplicates: list[Update] = []
        self.reject_stream: tuple[grpc.StatusCode, str] | None = None
        self.fail_updates: grpc.StatusCode | None = None

    # -- the service -------------------------------------------------------------------

    def PipelineStream(
        self, request_iterator: Iterator[pb.PipelineStreamRequest], context: Any
    ) -> Iterator[pb.PipelineStreamResponse]:
        first = next(request_iterator)
        if self.reject_stream is not None:
            context.abort(*self.reject_stream)
        if not first.HasField("register"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "register first")
        stream = Stream(first.register)
        with self.cond:
            self.streams.append(stream)
            self.cond.notify_all()
        threading.Thread(
            target=self._read, args=(stream, request_iterator), daemon=True
        ).start()
        yield pb.PipelineStreamResponse(
            registered=pb.RegistrationAccepted(
                node_id=first.register.node_id,
                heartbeat_interval_seconds=self.heartbeat_interval,
                protocol_version=wire.PROTOCOL_VERSION,
                server_version="test-peer",
            )
        )
        while context.is_active():
            try:
                yield stream.outgoing.get(timeout=0.1)
            except queue.Empty:
                continue

    def _read(
        self, stream: Stream, requests: Iterator[pb.PipelineStreamRequest]
    ) -> None:
        try:
            for request in requests:
                with self.cond:
                    stream.requests.append(request)
                    self.cond.notify_all()
                if request.HasField("heartbeat"):
                    stream.outgoing.put(
                        pb.PipelineStreamResponse(
                            heartbeat_ack=pb.HeartbeatAck(
                                sent_at_ms=request.heartbeat.sent_at_ms
                            )
                        )
                    )
        except grpc.RpcError:
            pass

    def UpdatePipelineStatus(
        self, request: pb.UpdatePipelineStatusRequest, context: Any
    ) -> pb.UpdatePipelineStatusResponse:
        applied, duplicate = self._record(request, context)
        return pb.UpdatePipelineStatusResponse(applied=applied, duplicate=duplicate)

    def UpdateStepStatus(
        self, request: pb.UpdateStepStatusRequest, context: Any
    ) -> pb.UpdateStepStatusResponse:
        applied, duplicate = self._record(request, context)
        return pb.UpdateStepStatusResponse(applied=applied, duplicate=duplicate)

    def _record(self, request: Update, context: Any) -> tuple[bool, bool]:
        if self.fail_updates is not None:
            context.abort(self.fail_updates, "told to fail")
        with self.cond:
            seen = {
                u.sequence for u in self.updates if u.pipeline_id == request.pipeline_id
            }
            if request.sequence in seen:
                self.duplicates.append(request)
                return False, True
            self.updates.append(request)
            self.cond.notify_all()
            return True, False

    # -- for the tests -----------------------------------------------------------------

    def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 30, what: str = ""
    ) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                result = predicate()
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out waiting for {what or predicate}; "
                        f"updates: {[_show(u) for u in self.updates]}"
                    )
                self.cond.wait(min(left, 0.2))

    def send(self, message: pb.PipelineStreamResponse) -> None:
        with self.cond:
            stream = self.streams[-1]
        stream.outgoing.put(message)

    def acks(self) -> list[pb.PipelineAck]:
        return [r.ack for s in self.streams for r in s.requests if r.HasField("ack")]

    def heartbeats(self) -> list[pb.Heartbeat]:
        return [
            r.heartbeat
            for s in self.streams
            for r in s.requests
            if r.HasField("heartbeat")
        ]

    def pipeline_updates(self, pid: str) -> list[pb.UpdatePipelineStatusRequest]:
        return [
            u
            for u in self.updates
            if isinstance(u, pb.UpdatePipelineStatusRequest) and u.pipeline_id == pid
        ]

    def step_updates(self, pid: str, index: int) -> list[pb.UpdateStepStatusRequest]:
        return [
            u
            for u in self.updates
            if isinstance(u, pb.UpdateStepStatusRequest)
            and u.pipeline_id == pid
            and u.step_index == index
        ]

    def final(self, pid: str) -> pb.UpdatePipelineStatusRequest | None:
        finals = [
            u
            for u in self.pipeline_updates(pid)
            if u.state
            in (
                pb.PIPELINE_STATE_COMPLETED,
                pb.PIPELINE_STATE_FAILED,
                pb.PIPELINE_STATE_CANCELED,
            )
        ]
        assert len(finals) <= 1, f"more than one final state: {finals}"
        return finals[0] if finals else None


def _show(update: Update) -> str:
    kind = (
        f"step {update.step_index}"
        if isinstance(update, pb.UpdateStepStatusRequest)
        else "pipeline"
    )
    return f"{update.pipeline_id}#{update.sequence} {kind} state={update.state} reason={update.reason} {update.message!r}"


class Peer:
    """The recording servicer served on a port the OS picked (or a given one)."""

    def __init__(
        self, servicer: RecordingServicer | None = None, port: int = 0
    ) -> None:
        self.servicer = servicer or RecordingServicer()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=32),
            options=list(wire.SERVER_OPTIONS),
        )
        pb_grpc.add_GamePipelineGRPCServiceServicer_to_server(
            self.servicer, self.server
        )
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(grace=None)
