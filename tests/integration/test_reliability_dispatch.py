"""Issue 4, dispatch by labels: a pipeline whose document has a ``node_selector`` goes to
a connected node in service whose labels carry every selected label and that has a free
slot; until one exists it waits, and the API says what it waits for."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from gamepipeline.proto import gamepipeline_pb2 as pb
from gamepipeline.server.app import RunningServer
from gamepipeline.wire import PROTOCOL_VERSION

from .server_peer import GAME_DOCUMENT, AgentPeer, Api, eventually, start

pytestmark = pytest.mark.timeout(60)

SELECTED = {**GAME_DOCUMENT, "node_selector": {"gpu": "nvidia", "region": "eu"}}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start(tmp_path / "server.db")
    yield running
    running.stop()


@pytest.fixture
def api(server: RunningServer) -> Api:
    return Api(server)


@pytest.fixture
def node(server: RunningServer) -> Iterator[Callable[..., AgentPeer]]:
    made: list[AgentPeer] = []

    def connect(node_id: str, labels: dict[str, str], capacity: int = 2) -> AgentPeer:
        peer = AgentPeer(server.grpc_port, node_id)
        made.append(peer)
        peer.open(
            pb.PipelineStreamRequest(
                register=pb.AgentRegistration(
                    node_id=node_id,
                    hostname=f"{node_id}.test",
                    labels=labels,
                    capacity=capacity,
                    agent_version="peer",
                    protocol_version=PROTOCOL_VERSION,
                )
            )
        )
        peer.expect("registered")
        return peer

    yield connect
    for peer in made:
        peer.close()


def waiting_for(api: Api, pipeline_id: str, *words: str) -> None:
    def check() -> None:
        shown = api.pipeline(pipeline_id)
        assert shown["state"] == "pending", shown
        assert all(word in shown["message"] for word in words), shown["message"]

    eventually(check)


def test_selector_picks_the_matching_node_with_a_free_slot_and_queues_otherwise(
    api: Api, node: Callable[..., AgentPeer]
) -> None:
    plain = node("node-plain", {"gpu": "none", "region": "eu"}, capacity=4)
    wrong_region = node("node-us", {"gpu": "nvidia", "region": "us"}, capacity=4)
    matching = node("node-eu", {"gpu": "nvidia", "region": "eu", "x": "y"}, capacity=1)

    first = api.submit(SELECTED)
    assert matching.expect("pipeline").id == first

    second = api.submit(SELECTED)  # the only matching node is full
    waiting_for(api, second, "gpu=nvidia", "region=eu", "free slot")
    plain.expect_nothing(within=1.0)
    wrong_region.expect_nothing(within=0.1)

    late = node("node-eu-2", {"gpu": "nvidia", "region": "eu"}, capacity=1)
    assert late.expect("pipeline").id == second
    assert api.pipeline(second)["node"] == "node-eu-2"

    unselected = api.submit()  # no selector: any node, the one with most free slots
    assert plain.expect("pipeline", timeout=5).id == unselected


def test_selector_no_node_matches_waits_with_the_labels_shown(
    api: Api, node: Callable[..., AgentPeer]
) -> None:
    other = node("node-plain", {"gpu": "none"})

    pipeline_id = api.submit(SELECTED)

    waiting_for(api, pipeline_id, "labelled gpu=nvidia, region=eu")
    other.expect_nothing(within=1.0)
    assert api.pipeline(pipeline_id)["document"]["node_selector"] == {
        "gpu": "nvidia",
        "region": "eu",
    }


def test_named_known_node_whose_labels_cannot_match_is_refused_at_submit(
    api: Api, node: Callable[..., AgentPeer]
) -> None:
    named = node("node-plain", {"gpu": "none", "region": "eu"})
    body = {"pipeline": SELECTED, "args": {"PORT": "8080"}, "envs": {"TOKEN": "t0k3n"}}

    answer = requests.post(
        api.url("/api/pipelines?node=node-plain"), json=body, timeout=5
    )

    assert answer.status_code == 409, answer.text
    error = answer.json()["error"]
    assert "node_selector gpu=nvidia, region=eu" in error
    assert "node-plain, whose labels are gpu=none, region=eu" in error
    assert answer.json()["problems"][0]["path"] == "node_selector"
    assert api.pipelines() == []
    named.expect_nothing(within=0.5)


def test_named_node_that_connects_later_with_other_labels_is_waited_for_by_selector(
    api: Api, node: Callable[..., AgentPeer]
) -> None:
    """A node the server has not seen is waited for (as before); once it connects
    without the selected labels, the message says which selector and which labels."""
    pipeline_id = api.submit(SELECTED, node="node-late")
    named = node("node-late", {"gpu": "none"})

    waiting_for(
        api,
        pipeline_id,
        "node-late",
        "do not match the node_selector gpu=nvidia, region=eu",
        "its labels: gpu=none",
    )
    assert "{" not in api.pipeline(pipeline_id)["message"]
    named.expect_nothing(within=1.0)
