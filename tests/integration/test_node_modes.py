"""Operators take nodes out of service: maintenance and disabled (issue #9, issue #4).

The server runs in-process on loopback ports; a real gRPC peer plays the agent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from gamepipeline.proto import gamepipeline_pb2 as pb
from gamepipeline.server.app import RunningServer

from .server_peer import AgentPeer, Api, PeerFactory, eventually, peer_factory, start

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start(tmp_path / "server.db")
    yield running
    running.stop()


@pytest.fixture
def api(server: RunningServer) -> Api:
    return Api(server)


@pytest.fixture
def peers(server: RunningServer) -> Iterator[PeerFactory]:
    with peer_factory(server) as make:
        yield make


def node_action(api: Api, node_id: str, action: str) -> requests.Response:
    return requests.post(api.url(f"/api/nodes/{node_id}/{action}"), timeout=5)


def test_a_node_in_maintenance_takes_no_new_pipelines_until_enabled(
    api: Api, peers: Callable[[str], AgentPeer]
) -> None:
    peer = peers("node-a")
    peer.register()

    answer = node_action(api, "node-a", "maintenance")
    pipeline_id = api.submit(node="node-a")

    assert answer.status_code == 200, answer.text
    assert (answer.json()["state"], answer.json()["connected"]) == (
        "maintenance",
        True,
    )
    peer.expect_nothing(within=1.5)
    waiting = api.pipeline(pipeline_id)
    assert waiting["state"] == "pending"
    assert "node-a, which is in maintenance, to be" in waiting["message"]

    assert node_action(api, "node-a", "enable").json()["state"] == "online"
    assert peer.expect("pipeline").id == pipeline_id


def test_any_node_pipelines_skip_a_node_in_maintenance(
    api: Api, peers: Callable[[str], AgentPeer]
) -> None:
    closed, open_ = peers("node-a"), peers("node-b")
    closed.register(capacity=4)
    open_.register(capacity=1)
    node_action(api, "node-a", "maintenance")

    pipeline_id = api.submit()

    assert open_.expect("pipeline").id == pipeline_id
    closed.expect_nothing(within=1.0)


def test_maintenance_lets_a_running_pipeline_finish(
    api: Api, peers: Callable[[str], AgentPeer]
) -> None:
    peer = peers("node-a")
    peer.register()
    pipeline_id = api.submit(node="node-a")
    peer.expect("pipeline")
    peer.ack(pipeline_id)
    peer.report(pipeline_id, pb.PIPELINE_STATE_RUNNING)

    node_action(api, "node-a", "maintenance")

    peer.expect_nothing(within=1.0)  # no cancel
    assert peer.report(pipeline_id, pb.PIPELINE_STATE_COMPLETED).applied
    assert api.pipeline(pipeline_id)["state"] == "completed"


def test_disabling_a_node_cancels_what_it_runs_and_what_waits_for_it(
    api: Api, peers: Callable[[str], AgentPeer]
) -> None:
    peer = peers("node-a")
    peer.register(capacity=1)
    running = api.submit(node="node-a")
    peer.expect("pipeline")
    peer.ack(running)
    peer.report(running, pb.PIPELINE_STATE_RUNNING)

    answer = node_action(api, "node-a", "disable")

    assert answer.status_code == 200 and answer.json()["state"] == "disabled"
    assert peer.expect("cancel").pipeline_id == running
    assert api.pipeline(running)["cancel_requested"]
    peer.report(running, pb.PIPELINE_STATE_CANCELED, reason=pb.END_REASON_CANCELED)
    assert api.pipeline(running)["state"] == "canceled"
    later = api.submit(node="node-a")
    eventually(
        lambda: _assert_in(
            "node-a, which is disabled, to be", api.pipeline(later)["message"]
        )
    )


def test_disabling_a_node_cancels_the_pipelines_queued_for_it(
    api: Api, peers: Callable[[str], AgentPeer]
) -> None:
    peer = peers("node-a")
    peer.register(capacity=1)
    assert node_action(api, "node-a", "maintenance").status_code == 200
    queued = api.submit(node="node-a")
    eventually(lambda: _assert_in("maintenance", api.pipeline(queued)["message"]))
    elsewhere = api.submit(node="node-b")

    assert node_action(api, "node-a", "disable").status_code == 200

    assert api.pipeline(queued)["state"] == "canceled"
    assert api.pipeline(elsewhere)["state"] == "pending"
    assert node_action(api, "node-a", "enable").status_code == 200
    peer.expect_nothing(within=1.5)  # nothing of it runs once the node is back


def test_an_unknown_node_or_action_is_answered_404_naming_it(api: Api) -> None:
    unknown_node = node_action(api, "ghost", "maintenance")
    unknown_action = node_action(api, "ghost", "reboot")

    assert unknown_node.status_code == 404
    assert "node 'ghost' does not exist" in unknown_node.json()["error"]
    assert unknown_action.status_code == 404
    assert "no node action 'reboot'" in unknown_action.json()["error"]


def _assert_in(part: str, whole: str) -> None:
    assert part in whole, whole
