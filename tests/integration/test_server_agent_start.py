"""Issue 4, agent restarts, the server's part: an agent that just started sends the
labelled containers it found with its registration, and the server settles at once what
the agent no longer knows, then names the containers to remove (real server in-process,
a real gRPC peer in the agent's role, real SQLite).

The rule: every running pipeline of the node the agent does not list, and every pending
one it had taken (acknowledged, or left containers of), fails with the reason
agent_restarted naming the step cut short; the containers to remove are those of steps
that did not complete, in this node's failed or canceled pipelines the agent does not
list. An agent that sends no inventory (an older one) is settled by the heartbeat
fallback instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

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


def found(pipeline_id: str, step: int, name: str) -> pb.FoundContainer:
    return pb.FoundContainer(
        pipeline_id=pipeline_id, step_index=step, name=name, running=True
    )


def take(peer: AgentPeer, server: RunningServer, node: str, *, ack: bool = True) -> str:
    """Submit a two-step pipeline to ``node`` and have ``peer`` receive it (and
    acknowledge it, once the server has recorded that)."""
    pipeline_id = Api(server).submit(node=node)
    assert peer.expect("pipeline").id == pipeline_id
    if ack:
        peer.ack(pipeline_id)

        def recorded() -> None:
            assert server.store.get_pipeline(pipeline_id).acknowledged

        eventually(recorded)
    return pipeline_id


def offline(api: Api, node: str) -> None:
    def check() -> None:
        assert api.nodes()[node]["state"] == "offline"

    eventually(check)


def test_agent_that_started_afresh_has_what_it_no_longer_knows_settled_at_registration(
    server: RunningServer, api: Api, peers: Callable[[str], AgentPeer]
) -> None:
    old = peers("node-a")
    old.register(capacity=8)
    other = peers("node-b")
    other.register(capacity=2)

    cut = take(old, server, "node-a")  # step 0 completed, step 1 running
    old.report(cut, pb.PIPELINE_STATE_RUNNING)
    old.report_step(cut, 0, pb.STEP_STATE_RUNNING)
    old.report_step(cut, 0, pb.STEP_STATE_COMPLETED)
    old.report_step(cut, 1, pb.STEP_STATE_RUNNING)
    acked = take(old, server, "node-a")  # taken, never reported running
    taken = take(old, server, "node-a", ack=False)  # its containers prove it was taken
    untaken = take(old, server, "node-a", ack=False)  # handed over again
    listed = take(old, server, "node-a")  # the new agent still reports on it
    old.report(listed, pb.PIPELINE_STATE_RUNNING)
    done = take(old, server, "node-a")  # completed: its containers are its result
    old.report(done, pb.PIPELINE_STATE_RUNNING)
    for index in (0, 1):
        old.report_step(done, index, pb.STEP_STATE_COMPLETED)
    old.report(done, pb.PIPELINE_STATE_COMPLETED)
    foreign = take(
        other, server, "node-b"
    )  # another node's, failed, on a shared engine
    other.report(foreign, pb.PIPELINE_STATE_RUNNING)
    other.report_step(
        foreign, 0, pb.STEP_STATE_FAILED, reason=pb.END_REASON_STEP_FAILED
    )
    other.report(foreign, pb.PIPELINE_STATE_FAILED, reason=pb.END_REASON_STEP_FAILED)
    old.close()
    offline(api, "node-a")

    inventory = pb.NodeInventory(
        containers=[
            found(cut, 0, "cut-db"),
            found(cut, 1, "cut-slow"),
            found(taken, 0, "taken-db"),
            found(listed, 0, "listed-db"),
            found(done, 1, "done-game"),
            found(foreign, 0, "foreign-db"),
            found("never-submitted", 0, "stranger"),
        ]
    )
    new = peers("node-a")
    accepted = new.register(capacity=8, running=(listed,), inventory=inventory)

    assert sorted(c.name for c in accepted.remove_containers) == [
        "cut-slow",
        "taken-db",
    ]
    shown = api.pipeline(cut)
    assert (shown["state"], shown["reason"]) == ("failed", "agent_restarted")
    assert shown["message"].startswith("the agent restarted during step 1 "), shown
    assert [(s["state"], s["reason"]) for s in shown["steps"]] == [
        ("completed", ""),
        ("failed", "agent_restarted"),
    ]
    for pipeline_id in (acked, taken):
        shown = api.pipeline(pipeline_id)
        assert (shown["state"], shown["reason"]) == ("failed", "agent_restarted")
        assert "during step 0" in shown["message"], shown
        assert [s["state"] for s in shown["steps"]] == ["failed", "skipped"]
    assert api.pipeline(listed)["state"] == "running"
    assert api.pipeline(done)["state"] == "completed"
    assert api.pipeline(untaken)["state"] == "pending"
    assert new.expect("pipeline").id == untaken


def test_registration_again_with_the_same_inventory_changes_nothing_more(
    server: RunningServer, api: Api, peers: Callable[[str], AgentPeer]
) -> None:
    """The agent sends its inventory until a registration is accepted; one whose answer
    was lost is settled again to the same effect."""
    old = peers("node-a")
    old.register()
    pipeline_id = take(old, server, "node-a")
    old.report(pipeline_id, pb.PIPELINE_STATE_RUNNING)
    old.report_step(pipeline_id, 0, pb.STEP_STATE_RUNNING)
    old.close()
    offline(api, "node-a")
    inventory = pb.NodeInventory(containers=[found(pipeline_id, 0, "prep")])

    first = peers("node-a")
    answer = first.register(inventory=inventory)
    settled = api.pipeline(pipeline_id)
    first.close()
    offline(api, "node-a")
    again = peers("node-a").register(inventory=inventory)

    assert [c.name for c in answer.remove_containers] == ["prep"]
    assert [c.name for c in again.remove_containers] == ["prep"]
    assert api.pipeline(pipeline_id) == settled


def test_agent_without_an_inventory_has_a_forgotten_run_failed_after_heartbeats(
    server: RunningServer, api: Api, peers: Callable[[str], AgentPeer]
) -> None:
    """The fallback for older agents: a run their heartbeats leave out three times in
    a row fails, since no report will ever come."""
    old = peers("node-a")
    old.register()
    pipeline_id = take(old, server, "node-a")
    old.report(pipeline_id, pb.PIPELINE_STATE_RUNNING)
    old.report_step(pipeline_id, 0, pb.STEP_STATE_RUNNING)
    old.close()
    offline(api, "node-a")

    new = peers("node-a")
    accepted = new.register()
    assert list(accepted.remove_containers) == []
    for _ in range(2):
        new.heartbeat()
        new.expect("heartbeat_ack")
    assert api.pipeline(pipeline_id)["state"] == "running"
    new.heartbeat()
    new.expect("heartbeat_ack")

    shown: dict[str, Any] = eventually(lambda: _failed(api, pipeline_id))
    assert shown["reason"] == "agent_restarted"
    assert "no longer knows this run" in shown["message"]


def _failed(api: Api, pipeline_id: str) -> dict[str, Any]:
    shown = api.pipeline(pipeline_id)
    assert shown["state"] == "failed", shown
    return shown
