"""A real gRPC peer that plays the agent's part against an in-process server.

Nothing is mocked: the peer opens a real channel over loopback, registers on a real
``PipelineStream``, and sends real status reports. Tests drive it step by step, which a
full agent (with Docker and ansible-runner behind it) would not let them do.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import grpc
import requests

from gamepipeline.proto import gamepipeline_pb2 as pb
from gamepipeline.proto import gamepipeline_pb2_grpc as pb_grpc
from gamepipeline.server.app import RunningServer, start_server
from gamepipeline.wire import AGENT_CHANNEL_OPTIONS, PROTOCOL_VERSION

_END = object()

GAME_DOCUMENT: dict[str, Any] = {
    "name": "game",
    "description": "two steps: prepare, then the game",
    "envs": ["TOKEN"],
    "args": ["PORT"],
    "steps": [
        {
            "name": "prepare",
            "container": {"image": "busybox", "commands": ["echo ready"]},
        },
        {
            "name": "game",
            "type": "service",
            "container": {
                "image": "game-server:latest",
                "ports": ["${{ args.PORT }}:8080"],
                "environment": {"TOKEN": "${{ envs.TOKEN }}"},
            },
        },
    ],
}


class AgentPeer:
    def __init__(self, grpc_port: int, node_id: str) -> None:
        self.node_id = node_id
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{grpc_port}", options=list(AGENT_CHANNEL_OPTIONS)
        )
        self.stub = pb_grpc.GamePipelineGRPCServiceStub(self.channel)
        self.received: queue.Queue[Any] = queue.Queue()
        self.sequences: collections.Counter[str] = collections.Counter()
        self.end_code: grpc.StatusCode | None = None
        self.end_detail = ""
        self._outgoing: queue.Queue[pb.PipelineStreamRequest | None] = queue.Queue()
        self._call: Any = None

    # the stream

    def open(self, first: pb.PipelineStreamRequest) -> None:
        self._outgoing.put(first)
        self._call = self.stub.PipelineStream(self._requests())
        threading.Thread(target=self._read, daemon=True).start()

    def register(
        self,
        *,
        capacity: int = 2,
        running: tuple[str, ...] = (),
        protocol_version: int = PROTOCOL_VERSION,
        inventory: pb.NodeInventory | None = None,
        instance: pb.AgentInstance | None = None,
    ) -> pb.RegistrationAccepted:
        self.open(
            pb.PipelineStreamRequest(
                register=pb.AgentRegistration(
                    node_id=self.node_id,
                    hostname=f"{self.node_id}.test",
                    labels={"gpu": "none"},
                    capacity=capacity,
                    agent_version="peer",
                    protocol_version=protocol_version,
                    running_pipeline_ids=list(running),
                    inventory=inventory,
                    instance=instance,
                )
            )
        )
        registered: pb.RegistrationAccepted = self.expect("registered")
        return registered

    def _requests(self) -> Iterator[pb.PipelineStreamRequest]:
        while (item := self._outgoing.get()) is not None:
            yield item

    def _read(self) -> None:
        try:
            for message in self._call:
                self.received.put(message)
        except grpc.RpcError as err:
            self.end_code, self.end_detail = err.code(), err.details()
        else:
            self.end_code = grpc.StatusCode.OK
        self.received.put(_END)

    def expect(self, kind: str, timeout: float = 5.0) -> Any:
        """The next message of ``kind``, skipping heartbeat acks unless asked for."""
        while True:
            try:
                message = self.received.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"{self.node_id}: no {kind} within {timeout} s"
                ) from None
            if message is _END:
                raise AssertionError(
                    f"{self.node_id}: stream ended ({self.end_code}: {self.end_detail}) "
                    f"while waiting for {kind}"
                )
            got = message.WhichOneof("kind")
            if got == kind:
                return getattr(message, kind)
            if got != "heartbeat_ack":
                raise AssertionError(f"{self.node_id}: expected {kind}, got {message}")

    def expect_nothing(self, within: float = 1.0) -> None:
        try:
            message = self.received.get(timeout=within)
        except queue.Empty:
            return
        raise AssertionError(f"{self.node_id}: expected nothing, got {message}")

    def wait_ended(self, timeout: float = 5.0) -> grpc.StatusCode:
        while True:
            message = self.received.get(timeout=timeout)
            if message is _END:
                assert self.end_code is not None
                return self.end_code

    def heartbeat(self, *running: str, sent_at_ms: int = 0) -> None:
        self._outgoing.put(
            pb.PipelineStreamRequest(
                heartbeat=pb.Heartbeat(
                    running_pipeline_ids=running, sent_at_ms=sent_at_ms
                )
            )
        )

    def ack(
        self, pipeline_id: str, *, accepted: bool = True, message: str = ""
    ) -> None:
        self._outgoing.put(
            pb.PipelineStreamRequest(
                ack=pb.PipelineAck(
                    pipeline_id=pipeline_id, accepted=accepted, message=message
                )
            )
        )

    def close(self) -> None:
        self._outgoing.put(None)
        if self._call is not None:
            self._call.cancel()
        self.channel.close()

    # reports

    def _next(self, pipeline_id: str, sequence: int | None) -> int:
        if sequence is None:
            self.sequences[pipeline_id] += 1
            return self.sequences[pipeline_id]
        return sequence

    def report(
        self,
        pipeline_id: str,
        state: int,
        *,
        reason: int = pb.END_REASON_UNSPECIFIED,
        message: str = "",
        sequence: int | None = None,
        node_id: str | None = None,
    ) -> pb.UpdatePipelineStatusResponse:
        response: pb.UpdatePipelineStatusResponse = self.stub.UpdatePipelineStatus(
            pb.UpdatePipelineStatusRequest(
                node_id=node_id or self.node_id,
                pipeline_id=pipeline_id,
                state=state,  # type: ignore[arg-type]
                reason=reason,  # type: ignore[arg-type]
                message=message,
                sequence=self._next(pipeline_id, sequence),
            ),
            timeout=5,
        )
        return response

    def report_step(
        self,
        pipeline_id: str,
        index: int,
        state: int,
        *,
        reason: int = pb.END_REASON_UNSPECIFIED,
        message: str = "",
        exit_code: int | None = None,
        output_tail: str = "",
        sequence: int | None = None,
    ) -> pb.UpdateStepStatusResponse:
        request = pb.UpdateStepStatusRequest(
            node_id=self.node_id,
            pipeline_id=pipeline_id,
            step_index=index,
            state=state,  # type: ignore[arg-type]
            reason=reason,  # type: ignore[arg-type]
            message=message,
            output_tail=output_tail,
            sequence=self._next(pipeline_id, sequence),
        )
        if exit_code is not None:
            request.exit_code = exit_code
        response: pb.UpdateStepStatusResponse = self.stub.UpdateStepStatus(
            request, timeout=5
        )
        return response


class Api:
    """The HTTP API of an in-process server."""

    def __init__(self, server: RunningServer) -> None:
        self.base = f"http://127.0.0.1:{server.http_port}"

    def url(self, path: str) -> str:
        return self.base + path

    def submit(self, document: Any = None, **envelope: Any) -> str:
        body = {"pipeline": GAME_DOCUMENT if document is None else document}
        body |= {"args": {"PORT": "8080"}, "envs": {"TOKEN": "s3cret"}} | envelope
        answer = requests.post(self.url("/api/pipelines"), json=body, timeout=5)
        assert answer.status_code == 201, answer.text
        pipeline_id: str = answer.json()["id"]
        return pipeline_id

    def pipeline(self, pipeline_id: str) -> dict[str, Any]:
        answer = requests.get(self.url(f"/api/pipelines/{pipeline_id}"), timeout=5)
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    def pipelines(self, query: str = "") -> list[dict[str, Any]]:
        answer = requests.get(self.url(f"/api/pipelines{query}"), timeout=5)
        assert answer.status_code == 200, answer.text
        result: list[dict[str, Any]] = answer.json()["pipelines"]
        return result

    def nodes(self) -> dict[str, dict[str, Any]]:
        answer = requests.get(self.url("/api/nodes"), timeout=5)
        return {node["node_id"]: node for node in answer.json()["nodes"]}

    def cancel(self, pipeline_id: str) -> requests.Response:
        return requests.post(
            self.url(f"/api/pipelines/{pipeline_id}/cancel"), timeout=5
        )


def start(db_path: Path, **options: Any) -> RunningServer:
    return start_server(db_path=db_path, **options)


def eventually(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    """``check()``'s answer once it stops raising AssertionError, within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class PeerFactory(Protocol):
    def __call__(self, node_id: str, port: int | None = None) -> AgentPeer: ...


@contextlib.contextmanager
def peer_factory(server: RunningServer) -> Iterator[PeerFactory]:
    """Make agent peers on ``server``'s gRPC port (or another), closed on exit."""
    made: list[AgentPeer] = []

    def make(node_id: str, port: int | None = None) -> AgentPeer:
        peer = AgentPeer(port or server.grpc_port, node_id)
        made.append(peer)
        return peer

    try:
        yield make
    finally:
        for peer in made:
            peer.close()
