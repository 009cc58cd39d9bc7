"""The agent's stream against a real gRPC peer: registration, heartbeats, reconnects,
final refusals, and status reports delivered once and in order across an outage.

No Docker needed: these tests never hand the agent a pipeline to run.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gamepipeline import wire
from gamepipeline.agent.app import (
    AgentConfig,
    FatalConnectionError,
    RunningAgent,
    start_agent,
)
from gamepipeline.agent.events import PipelineReport, StepReport
from gamepipeline.agent.reporter import Reporter
from gamepipeline.proto import gamepipeline_pb2 as pb
from gamepipeline.proto import gamepipeline_pb2_grpc as pb_grpc
from tests.integration.agent_peer import Peer, RecordingServicer


@pytest.fixture
def peer() -> Iterator[Peer]:
    p = Peer()
    yield p
    p.stop()


def config_for(address: str, work: Path, **extra: object) -> AgentConfig:
    return AgentConfig(
        server_address=address,
        node_id="node-a",
        hostname="gamenode-a",
        labels={"gpu": "none", "zone": "test"},
        capacity=2,
        work_dir=work,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
def agent(peer: Peer, tmp_path: Path) -> Iterator[RunningAgent]:
    running = start_agent(config_for(peer.address, tmp_path / "work"))
    yield running
    running.stop(timeout=10)


def test_agent_registers_first_with_its_identity(
    peer: Peer, agent: RunningAgent
) -> None:
    servicer = peer.servicer
    servicer.wait_for(lambda: servicer.streams, 15, "a registration")

    registration = servicer.streams[0].registration
    assert registration.node_id == "node-a"
    assert registration.hostname == "gamenode-a"
    assert dict(registration.labels) == {"gpu": "none", "zone": "test"}
    assert registration.capacity == 2
    assert registration.protocol_version == wire.PROTOCOL_VERSION
    assert registration.agent_version
    assert list(registration.running_pipeline_ids) == []


def test_agent_heartbeats_at_the_interval_the_server_names(
    peer: Peer, agent: RunningAgent
) -> None:
    servicer = peer.servicer  # names 1 s, the agent's own default is 10 s
    servicer.wait_for(lambda: len(servicer.heartbeats()) >= 3, 10, "three heartbeats")
    beats = servicer.heartbeats()
    gaps = [(b.sent_at_ms - a.sent_at_ms) / 1000 for a, b in itertools.pairwise(beats)]
    assert all(0.5 < gap < 2.5 for gap in gaps), gaps


def test_cancel_of_a_pipeline_not_running_here_is_ignored(
    peer: Peer, agent: RunningAgent
) -> None:
    servicer = peer.servicer
    servicer.wait_for(lambda: servicer.streams, 15, "a registration")
    servicer.send(
        pb.PipelineStreamResponse(cancel=pb.CancelPipeline(pipeline_id="nope"))
    )
    count = len(servicer.heartbeats())
    servicer.wait_for(lambda: len(servicer.heartbeats()) > count + 1, 10, "heartbeats")
    assert len(servicer.streams) == 1
    assert servicer.updates == []


def test_agent_reregisters_after_the_server_restarts(tmp_path: Path) -> None:
    """F11: a server restart is transient; the agent comes back on its own."""
    first = Peer()
    port = first.port
    running = start_agent(config_for(first.address, tmp_path / "work"))
    try:
        first.servicer.wait_for(lambda: first.servicer.streams, 15, "registration")
        first.stop()
        time.sleep(1.5)
        second = Peer(port=port)
        try:
            second.servicer.wait_for(
                lambda: second.servicer.streams, 20, "a new registration"
            )
            assert running.alive
            assert second.servicer.streams[0].registration.node_id == "node-a"
        finally:
            second.stop()
    finally:
        running.stop(timeout=10)


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    ],
)
def test_final_refusal_stops_the_agent_without_retrying(
    tmp_path: Path, code: grpc.StatusCode
) -> None:
    servicer = RecordingServicer()
    servicer.reject_stream = (code, "protocol version 1 is not spoken here")
    peer = Peer(servicer)
    try:
        running = start_agent(config_for(peer.address, tmp_path / "work"))
        assert running.wait(10), "the agent kept retrying a final refusal"
        assert isinstance(running.error, FatalConnectionError)
        assert running.error.code == code
        assert "protocol version 1" in str(running.error)
        running.stop(timeout=5)
    finally:
        peer.stop()


def test_reports_made_while_disconnected_arrive_once_in_order(tmp_path: Path) -> None:
    """F11 / issue 4: reports queue up (journaled) while the server is away and are
    delivered once, in order, after it is back."""
    peer = Peer()
    port = peer.port
    peer.stop()
    reporter = Reporter("node-a", tmp_path / "journal")
    reporter.start()
    try:
        reporter.submit("p1", PipelineReport(pb.PIPELINE_STATE_RUNNING))
        reporter.submit("p1", StepReport(0, pb.STEP_STATE_RUNNING))
        reporter.submit("p2", PipelineReport(pb.PIPELINE_STATE_RUNNING))
        reporter.submit("p1", StepReport(0, pb.STEP_STATE_COMPLETED))
        reporter.submit("p1", PipelineReport(pb.PIPELINE_STATE_COMPLETED))

        # Disconnected: a channel to a port nobody listens on.
        dead = grpc.insecure_channel(f"127.0.0.1:{port}")
        reporter.set_stub(pb_grpc.GamePipelineGRPCServiceStub(dead))
        assert not reporter.flush(2.5)
        assert reporter.pending() == 5

        back = Peer(port=port)
        try:
            assert reporter.flush(20), "reports were not delivered after reconnecting"
            updates = back.servicer.updates
            assert [(u.pipeline_id, u.sequence) for u in updates] == [
                ("p1", 1),
                ("p1", 2),
                ("p2", 1),
                ("p1", 3),
                ("p1", 4),
            ]
            assert back.servicer.duplicates == []
            assert all(u.node_id == "node-a" for u in updates)
        finally:
            back.stop()
            dead.close()
    finally:
        reporter.stop()


def test_journal_survives_an_agent_restart(tmp_path: Path) -> None:
    """Reports not delivered before the agent stopped are delivered by the next one,
    with sequence numbers that carry on."""
    first = Reporter("node-a", tmp_path / "journal")
    first.submit("p1", PipelineReport(pb.PIPELINE_STATE_RUNNING))
    first.submit("p1", StepReport(0, pb.STEP_STATE_RUNNING))

    second = Reporter("node-a", tmp_path / "journal")
    assert second.pending() == 2
    second.submit("p1", StepReport(0, pb.STEP_STATE_COMPLETED))
    peer = Peer()
    channel = grpc.insecure_channel(peer.address)
    second.start()
    try:
        second.set_stub(pb_grpc.GamePipelineGRPCServiceStub(channel))
        assert second.flush(10)
        assert [u.sequence for u in peer.servicer.updates] == [1, 2, 3]
    finally:
        second.stop()
        channel.close()
        peer.stop()
