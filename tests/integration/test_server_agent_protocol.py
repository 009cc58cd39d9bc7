"""The server against a real gRPC peer in the agent's role (issue #2 item 5, issue #4).

Each test runs the server in-process on loopback ports the OS picks, with its SQLite
database in a temporary directory, and talks to it over real gRPC and real HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gamepipeline.pipeline import load_template
from gamepipeline.proto import gamepipeline_pb2 as pb
from gamepipeline.server.app import RunningServer
from gamepipeline.server.submission import Submission, prepare

from .server_peer import (
    GAME_DOCUMENT,
    AgentPeer,
    Api,
    PeerFactory,
    eventually,
    peer_factory,
    start,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "server.db"


@pytest.fixture
def server(db_path: Path) -> Iterator[RunningServer]:
    running = start(db_path)
    yield running
    running.stop()


@pytest.fixture
def api(server: RunningServer) -> Api:
    return Api(server)


@pytest.fixture
def peers(server: RunningServer) -> Iterator[PeerFactory]:
    with peer_factory(server) as make:
        yield make


# --- the main path -----------------------------------------------------------------------


def test_submitted_pipeline_reaches_the_named_agent_and_its_reports_show_over_http(
    api: Api, peers: Callable[[str], AgentPeer]
) -> None:
    peer = peers("node-a")
    peer.register()

    pipeline_id = api.submit(node="node-a")
    handed = peer.expect("pipeline")
    peer.ack(pipeline_id)

    assert handed.id == pipeline_id
    assert (
        json.loads(handed.document_json) == load_template(GAME_DOCUMENT).to_document()
    )
    assert dict(handed.arg_values) == {"PORT": "8080"}
    assert dict(handed.env_values) == {"TOKEN": "s3cret"}
    assert list(handed.envs) == ["TOKEN"] and list(handed.args) == ["PORT"]
    assert [(s.index, s.name, s.type) for s in handed.steps] == [
        (0, "prepare", "container"),
        (1, "game", "service"),
    ]
    assert handed.status.state == pb.PIPELINE_STATE_PENDING

    assert peer.report(pipeline_id, pb.PIPELINE_STATE_RUNNING).applied
    assert peer.report_step(pipeline_id, 0, pb.STEP_STATE_RUNNING).applied
    assert api.pipeline(pipeline_id)["current_step"] == 0
    peer.report_step(
        pipeline_id, 0, pb.STEP_STATE_COMPLETED, exit_code=0, output_tail="ready\n"
    )
    peer.report_step(pipeline_id, 1, pb.STEP_STATE_RUNNING)
    peer.report_step(pipeline_id, 1, pb.STEP_STATE_COMPLETED, message="container up")
    assert peer.report(pipeline_id, pb.PIPELINE_STATE_COMPLETED).applied

    shown = api.pipeline(pipeline_id)
    assert shown["state"] == "completed"
    assert shown["node"] == "node-a"
    assert shown["started_at"] and shown["finished_at"]
    assert [s["state"] for s in shown["steps"]] == ["completed", "completed"]
    assert shown["steps"][0]["exit_code"] == 0
    assert shown["steps"][0]["output_tail"] == "ready\n"
    assert shown["steps"][1]["message"] == "container up"
    assert shown["envs"] == {"declared": ["TOKEN"], "given": ["TOKEN"]}
    assert "s3cret" not in json.dumps(shown), "env values are never shown"


def test_failed_step_timeout_and_cancel_stay_three_different_outcomes(
    api: Api, peers: Callable[[str], AgentPeer]
) -> None:
    peer = peers("node-a")
    peer.register(capacity=3)
    outcomes = {
        "failed": (pb.PIPELINE_STATE_FAILED, pb.END_REASON_STEP_FAILED),
        "timeout": (pb.PIPELINE_STATE_FAILED, pb.END_REASON_TIMEOUT),
        "canceled": (pb.PIPELINE_STATE_CANCELED, pb.END_REASON_CANCELED),
    }
    ids = {}
    for name, (state, reason) in outcomes.items():
        ids[name] = api.submit(node="node-a")
        peer.expect("pipeline")
        peer.report(ids[name], pb.PIPELINE_STATE_RUNNING)
        peer.report_step(ids[name], 0, pb.STEP_STATE_FAILED, reason=reason)
        peer.report_step(ids[name], 1, pb.STEP_STATE_SKIPPED, reason=reason)
        peer.report(ids[name], state, reason=reason, message=name)

    shown = {name: api.pipeline(pid) for name, pid in ids.items()}
    assert {n: (p["state"], p["reason"]) for n, p in shown.items()} == {
        "failed": ("failed", "step_failed"),
        "timeout": ("failed", "timeout"),
        "canceled": ("canceled", "canceled"),
    }
    assert [s["state"] for s in shown["timeout"]["steps"]] == ["failed", "skipped"]


# --- the stream ---------------------------------------------------------------------------


def test_heartbeat_is_answered_with_its_own_timestamp(
    peers: Callable[[str], AgentPeer], api: Api
) -> None:
    peer = peers("node-a")
    accepted = peer.register()
    assert accepted.node_id == "node-a" and accepted.protocol_version == 1
    assert accepted.heartbeat_interval_seconds > 0

    peer.heartbeat(sent_at_ms=12345)

    assert peer.expect("heartbeat_ack").sent_at_ms == 12345
    assert api.nodes()["node-a"]["state"] == "online"


def test_first_message_other_than_register_ends_the_stream_with_invalid_argument(
    peers: Callable[[str], AgentPeer],
) -> None:
    peer = peers("node-a")
    peer.open(pb.PipelineStreamRequest(heartbeat=pb.Heartbeat()))

    assert peer.wait_ended() == grpc.StatusCode.INVALID_ARGUMENT
    assert "register" in peer.end_detail


def test_other_protocol_version_is_refused_with_failed_precondition_naming_both(
    peers: Callable[[str], AgentPeer], api: Api
) -> None:
    peer = peers("node-a")
    with pytest.raises(AssertionError):
        peer.register(protocol_version=99)

    assert peer.end_code == grpc.StatusCode.FAILED_PRECONDITION
    assert "99" in peer.end_detail and "1" in peer.end_detail
    assert "node-a" not in api.nodes()


def test_the_agents_own_new_stream_replaces_its_old_one_which_ends_aborted(
    peers: Callable[[str], AgentPeer], api: Api
) -> None:
    """The same agent (one instance id) reconnecting while the server still holds its
    old stream; agents that send no instance (older ones) are treated alike."""
    first, second = peers("node-a"), peers("node-a")
    itself = pb.AgentInstance(instance_id="a1", pid=41, started_at_ms=1)
    first.register(instance=itself)

    second.register(instance=itself)

    assert first.wait_ended() == grpc.StatusCode.ABORTED
    second.heartbeat(sent_at_ms=7)
    assert second.expect("heartbeat_ack").sent_at_ms == 7
    assert api.nodes()["node-a"]["state"] == "online", "the replaced stream's end"


def test_closed_stream_marks_the_node_offline(
    peers: Callable[[str], AgentPeer], api: Api
) -> None:
    peer = peers("node-a")
    peer.register()

    peer.close()

    eventually(lambda: _assert_equal(api.nodes()["node-a"]["state"], "offline"))


def test_node_whose_heartbeats_stop_is_marked_offline(
    db_path: Path, tmp_path: Path
) -> None:
    server = start(db_path, offline_after_seconds=1.5)
    peer = AgentPeer(server.grpc_port, "node-quiet")
    try:
        assert peer.register().heartbeat_interval_seconds == 1
        assert Api(server).nodes()["node-quiet"]["state"] == "online"

        assert peer.wait_ended(timeout=10) == grpc.StatusCode.UNAVAILABLE
        assert Api(server).nodes()["node-quiet"]["state"] == "offline"
    finally:
        peer.close()
        server.stop()


# --- reports ------------------------------------------------------------------------------


@pytest.fixture
def running_pipeline(
    api: Api, peers: Callable[[str], AgentPeer]
) -> tuple[AgentPeer, str]:
    peer = peers("node-a")
    peer.register()
    pipeline_id = api.submit(node="node-a")
    peer.expect("pipeline")
    peer.ack(pipeline_id)
    assert peer.report(pipeline_id, pb.PIPELINE_STATE_RUNNING).applied
    return peer, pipeline_id


def test_report_with_a_sequence_number_already_seen_changes_nothing(
    running_pipeline: tuple[AgentPeer, str], api: Api
) -> None:
    peer, pipeline_id = running_pipeline
    assert peer.report_step(pipeline_id, 0, pb.STEP_STATE_RUNNING, sequence=2).applied
    assert peer.report_step(pipeline_id, 0, pb.STEP_STATE_FAILED, sequence=3).applied

    retry = peer.report_step(pipeline_id, 0, pb.STEP_STATE_FAILED, sequence=3)
    stale = peer.report_step(pipeline_id, 0, pb.STEP_STATE_RUNNING, sequence=2)
    stale_pipeline = peer.report(pipeline_id, pb.PIPELINE_STATE_COMPLETED, sequence=1)

    for answer in (retry, stale, stale_pipeline):
        assert (answer.applied, answer.duplicate) == (False, True), answer
    shown = api.pipeline(pipeline_id)
    assert shown["state"] == "running"
    assert shown["steps"][0]["state"] == "failed"


def test_final_state_is_never_left(
    running_pipeline: tuple[AgentPeer, str], api: Api
) -> None:
    peer, pipeline_id = running_pipeline
    peer.report_step(pipeline_id, 0, pb.STEP_STATE_COMPLETED)
    peer.report(pipeline_id, pb.PIPELINE_STATE_CANCELED, reason=pb.END_REASON_CANCELED)

    back = peer.report(pipeline_id, pb.PIPELINE_STATE_RUNNING)
    other = peer.report(pipeline_id, pb.PIPELINE_STATE_COMPLETED)
    step_back = peer.report_step(pipeline_id, 0, pb.STEP_STATE_FAILED)

    for answer in (back, other, step_back):
        assert (answer.applied, answer.duplicate) == (False, False), answer
        assert "never left" in answer.detail
    shown = api.pipeline(pipeline_id)
    assert (shown["state"], shown["reason"]) == ("canceled", "canceled")
    assert shown["steps"][0]["state"] == "completed"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        pytest.param(
            {"node_id": "node-b"}, grpc.StatusCode.PERMISSION_DENIED, id="other-node"
        ),
        pytest.param(
            {"pipeline_id": "nope"}, grpc.StatusCode.NOT_FOUND, id="unknown-pipeline"
        ),
        pytest.param(
            {"sequence": 0}, grpc.StatusCode.INVALID_ARGUMENT, id="sequence-zero"
        ),
        pytest.param(
            {"step_index": 2}, grpc.StatusCode.INVALID_ARGUMENT, id="step-out-of-range"
        ),
        pytest.param(
            {"node_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, id="no-node-id"
        ),
    ],
)
def test_bad_step_report_answers_its_status_code(
    running_pipeline: tuple[AgentPeer, str],
    change: dict[str, Any],
    code: grpc.StatusCode,
) -> None:
    peer, pipeline_id = running_pipeline
    fields: dict[str, Any] = {
        "node_id": "node-a",
        "pipeline_id": pipeline_id,
        "step_index": 0,
        "state": pb.STEP_STATE_RUNNING,
        "sequence": 5,
    }
    with pytest.raises(grpc.RpcError) as caught:
        peer.stub.UpdateStepStatus(
            pb.UpdateStepStatusRequest(**(fields | change)), timeout=5
        )

    assert caught.value.code() == code, caught.value.details()


def test_pipeline_report_with_state_not_started_is_invalid(
    running_pipeline: tuple[AgentPeer, str],
) -> None:
    peer, pipeline_id = running_pipeline
    with pytest.raises(grpc.RpcError) as caught:
        peer.report(pipeline_id, pb.PIPELINE_STATE_NOT_STARTED)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_refused_pipeline_fails_with_reason_rejected(
    api: Api, peers: Callable[[str], AgentPeer]
) -> None:
    peer = peers("node-a")
    peer.register()
    pipeline_id = api.submit(node="node-a")
    peer.expect("pipeline")

    peer.ack(pipeline_id, accepted=False, message="image not allowed here")

    shown = eventually(lambda: _final(api.pipeline(pipeline_id)))
    assert (shown["state"], shown["reason"]) == ("failed", "rejected")
    assert "image not allowed here" in shown["message"]
    assert [s["state"] for s in shown["steps"]] == ["skipped", "skipped"]


# --- dispatch ------------------------------------------------------------------------------


def test_pipeline_for_an_offline_node_waits_with_the_reason_shown_then_goes_to_it(
    api: Api, peers: Callable[[str], AgentPeer]
) -> None:
    bystander = peers("node-b")
    bystander.register()
    pipeline_id = api.submit(node="node-a")

    waiting = eventually(lambda: _waiting(api.pipeline(pipeline_id)))
    assert "node-a" in waiting["message"]
    bystander.expect_nothing(within=0.5)

    peer = peers("node-a")
    peer.register()
    assert peer.expect("pipeline").id == pipeline_id
    assert api.pipeline(pipeline_id)["node"] == "node-a"


def test_pipeline_without_a_node_goes_to_a_connected_one(
    api: Api, peers: Callable[[str], AgentPeer]
) -> None:
    peer = peers("node-a")
    peer.register()

    pipeline_id = api.submit()

    assert peer.expect("pipeline").id == pipeline_id


def test_node_never_holds_more_pipelines_than_its_capacity(
    api: Api, peers: Callable[[str], AgentPeer]
) -> None:
    peer = peers("node-a")
    peer.register(capacity=1)
    first = api.submit()
    second = api.submit()
    assert peer.expect("pipeline").id == first
    peer.expect_nothing(within=1.5)
    assert "free slot" in api.pipeline(second)["message"]

    peer.report(first, pb.PIPELINE_STATE_RUNNING)
    peer.report(first, pb.PIPELINE_STATE_COMPLETED)

    assert peer.expect("pipeline").id == second


def test_assigned_pipeline_not_yet_started_is_sent_again_on_reconnect(
    api: Api, peers: Callable[[str], AgentPeer]
) -> None:
    first = peers("node-a")
    first.register()
    pipeline_id = api.submit(node="node-a")
    first.expect("pipeline")
    first.close()
    eventually(lambda: _assert_equal(api.nodes()["node-a"]["state"], "offline"))

    again = peers("node-a")
    again.register()

    assert again.expect("pipeline").id == pipeline_id


def test_pipeline_the_agent_already_runs_is_not_sent_again_on_reconnect(
    api: Api, peers: Callable[[str], AgentPeer]
) -> None:
    first = peers("node-a")
    first.register()
    pipeline_id = api.submit(node="node-a")
    first.expect("pipeline")
    first.close()
    eventually(lambda: _assert_equal(api.nodes()["node-a"]["state"], "offline"))

    again = peers("node-a")
    again.register(running=(pipeline_id,))

    again.expect_nothing(within=1.5)


# --- cancel ---------------------------------------------------------------------------------


def test_cancel_of_a_running_pipeline_goes_to_its_node_and_waits_for_its_report(
    running_pipeline: tuple[AgentPeer, str], api: Api
) -> None:
    peer, pipeline_id = running_pipeline

    answer = api.cancel(pipeline_id)

    assert answer.status_code == 202, answer.text
    assert answer.json()["state"] == "running" and answer.json()["cancel_requested"]
    assert peer.expect("cancel").pipeline_id == pipeline_id
    peer.report_step(
        pipeline_id, 0, pb.STEP_STATE_SKIPPED, reason=pb.END_REASON_CANCELED
    )
    peer.report_step(
        pipeline_id, 1, pb.STEP_STATE_SKIPPED, reason=pb.END_REASON_CANCELED
    )
    peer.report(pipeline_id, pb.PIPELINE_STATE_CANCELED, reason=pb.END_REASON_CANCELED)
    assert api.pipeline(pipeline_id)["state"] == "canceled"
    assert api.cancel(pipeline_id).status_code == 409


def test_cancel_requested_while_the_node_was_away_is_sent_when_it_returns(
    running_pipeline: tuple[AgentPeer, str], api: Api, peers: Callable[[str], AgentPeer]
) -> None:
    peer, pipeline_id = running_pipeline
    peer.close()
    eventually(lambda: _assert_equal(api.nodes()["node-a"]["state"], "offline"))

    assert api.cancel(pipeline_id).status_code == 202
    again = peers("node-a")
    again.register(running=(pipeline_id,))

    assert again.expect("cancel").pipeline_id == pipeline_id


def test_node_restating_a_pipeline_that_already_ended_is_told_to_cancel_it(
    api: Api, peers: Callable[[str], AgentPeer]
) -> None:
    first = peers("node-a")
    first.register()
    pipeline_id = api.submit(node="node-a")
    first.expect("pipeline")
    assert api.cancel(pipeline_id).status_code == 200  # pending: canceled at once
    assert first.expect("cancel").pipeline_id == pipeline_id
    first.close()

    again = peers("node-a")
    again.register(running=(pipeline_id,))

    assert again.expect("cancel").pipeline_id == pipeline_id


# --- failures of the fleet -------------------------------------------------------------------


def test_node_lost_past_its_grace_period_fails_its_running_pipelines(
    db_path: Path,
) -> None:
    server = start(db_path, offline_after_seconds=30, node_lost_after_seconds=1)
    api, peer = Api(server), AgentPeer(server.grpc_port, "node-a")
    try:
        peer.register()
        pipeline_id = api.submit(node="node-a")
        peer.expect("pipeline")
        peer.report(pipeline_id, pb.PIPELINE_STATE_RUNNING)
        peer.report_step(pipeline_id, 0, pb.STEP_STATE_RUNNING)
        peer.close()

        shown = eventually(lambda: _final(api.pipeline(pipeline_id)), timeout=10)
    finally:
        server.stop()

    assert (shown["state"], shown["reason"]) == ("failed", "node_lost")
    assert [(s["state"], s["reason"]) for s in shown["steps"]] == [
        ("failed", "node_lost"),
        ("skipped", "node_lost"),
    ]


def test_state_survives_a_server_restart_and_reports_carry_on(db_path: Path) -> None:
    server = start(db_path)
    peer = AgentPeer(server.grpc_port, "node-a")
    peer.register()
    pipeline_id = Api(server).submit(node="node-a")
    peer.expect("pipeline")
    peer.report(pipeline_id, pb.PIPELINE_STATE_RUNNING)
    peer.report_step(pipeline_id, 0, pb.STEP_STATE_RUNNING)
    peer.close()
    server.stop()

    server = start(db_path)
    try:
        api = Api(server)
        before = api.pipeline(pipeline_id)
        assert before["state"] == "running" and before["steps"][0]["state"] == "running"
        assert api.nodes()["node-a"]["state"] == "offline"

        again = AgentPeer(server.grpc_port, "node-a")
        again.sequences[pipeline_id] = peer.sequences[pipeline_id]
        again.register(running=(pipeline_id,))
        again.expect_nothing(within=0.5)
        replay = again.report_step(pipeline_id, 0, pb.STEP_STATE_RUNNING, sequence=2)
        assert replay.duplicate
        again.report_step(pipeline_id, 0, pb.STEP_STATE_COMPLETED)
        again.report_step(pipeline_id, 1, pb.STEP_STATE_COMPLETED)
        again.report(pipeline_id, pb.PIPELINE_STATE_COMPLETED)
        again.close()

        after = api.pipeline(pipeline_id)
    finally:
        server.stop()
    assert after["state"] == "completed"
    assert [s["state"] for s in after["steps"]] == ["completed", "completed"]


def test_pending_pipeline_is_dispatched_after_a_server_restart(db_path: Path) -> None:
    server = start(db_path)
    pipeline_id = Api(server).submit(node="node-a")
    server.stop()

    server = start(db_path)
    peer = AgentPeer(server.grpc_port, "node-a")
    try:
        peer.register()
        assert peer.expect("pipeline").id == pipeline_id
    finally:
        peer.close()
        server.stop()


# --- helpers ----------------------------------------------------------------------------------


def _assert_equal(actual: Any, expected: Any) -> None:
    assert actual == expected


def _final(pipeline: dict[str, Any]) -> dict[str, Any]:
    assert pipeline["state"] in {"completed", "failed", "canceled"}, pipeline["state"]
    return pipeline


def _waiting(pipeline: dict[str, Any]) -> dict[str, Any]:
    assert pipeline["state"] == "pending" and pipeline["message"], pipeline
    return pipeline


# --- hand-over that does not arrive -------------------------------------------------------


def test_pipeline_left_unacknowledged_is_sent_again_on_the_same_stream(
    db_path: Path,
) -> None:
    server = start(db_path, ack_wait_seconds=1.0)
    peer = AgentPeer(server.grpc_port, "node-a")
    try:
        peer.register()
        pipeline_id = Api(server).submit(node="node-a")
        assert peer.expect("pipeline").id == pipeline_id
        # No answer: the server sends it again on this stream, and again after that.
        assert peer.expect("pipeline", timeout=4).id == pipeline_id
        assert peer.expect("pipeline", timeout=4).id == pipeline_id
        peer.ack(pipeline_id)
        peer.expect_nothing(within=3)
        assert Api(server).pipeline(pipeline_id)["state"] == "pending"
    finally:
        peer.close()
        server.stop()


def test_pipeline_too_large_for_an_agent_fails_with_the_reason_and_is_not_sent(
    server: RunningServer, api: Api, peers: Callable[[str], AgentPeer]
) -> None:
    # Beyond what HTTP lets in (1 MiB bodies); the store takes it from elsewhere, e.g.
    # an older server version, and the dispatcher must not break the stream with it.
    huge = prepare(
        Submission(
            document=GAME_DOCUMENT,
            args={"PORT": "8080"},
            envs={"TOKEN": "x" * (5 * 1024 * 1024)},
            node="node-a",
        )
    )
    pipeline_id = server.store.create_pipeline(huge)
    peer = peers("node-a")
    peer.register()

    record = eventually(lambda: _ended(api.pipeline(pipeline_id)))
    assert record["state"] == "failed" and record["reason"] == "rejected"
    assert "more than the 4,194,304 an agent takes" in record["message"]
    assert "node-a" in record["message"]
    peer.expect_nothing(within=1.5)
    # The stream is still healthy: the next pipeline goes through.
    next_id = api.submit(node="node-a")
    assert peer.expect("pipeline").id == next_id


def _ended(record: dict[str, Any]) -> dict[str, Any]:
    assert record["state"] not in ("pending", "running"), record["state"]
    return record
