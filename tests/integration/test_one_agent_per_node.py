"""One agent per node id: a second agent started with a node id that a live agent holds
is refused, and the holder's run goes on untouched.

The server's rule is pinned with peers that play the agent's part over real gRPC (a
refusal naming the holder, the holder's own reconnect, a holder that falls silent or
closes its stream); the whole story with real agent processes, a real server process
and real containers: the refused agent keeps trying and gets in once the holder stops,
and a second agent on the same work dir refuses to start.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
import yaml

from gamepipeline.proto import gamepipeline_pb2 as pb
from gamepipeline.server.app import RunningServer

from .conftest import Process, Server, gamepipeline_command, start_agent
from .server_peer import AgentPeer, Api, PeerFactory, eventually, peer_factory, start
from .test_api_contract import check_answer

pytestmark = pytest.mark.timeout(120)

HOLDER = pb.AgentInstance(instance_id="holder", pid=4242, started_at_ms=1)
SECOND = pb.AgentInstance(instance_id="second", pid=5151, started_at_ms=2)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start(tmp_path / "server.db", offline_after_seconds=3)
    yield running
    running.stop()


@pytest.fixture
def peers(server: RunningServer) -> Iterator[PeerFactory]:
    with peer_factory(server) as make:
        yield make


def _holding_a_running_pipeline(
    peers: Callable[[str], AgentPeer], api: Api
) -> tuple[AgentPeer, str]:
    holder = peers("node-a")
    holder.register(instance=HOLDER)
    pipeline_id = api.submit(node="node-a")
    holder.expect("pipeline")
    holder.ack(pipeline_id)
    assert holder.report(pipeline_id, pb.PIPELINE_STATE_RUNNING).applied
    assert holder.report_step(pipeline_id, 0, pb.STEP_STATE_RUNNING).applied
    return holder, pipeline_id


def test_a_second_agent_is_refused_naming_the_holder_and_the_holder_runs_on(
    server: RunningServer, peers: Callable[[str], AgentPeer]
) -> None:
    api = Api(server)
    holder, pipeline_id = _holding_a_running_pipeline(peers, api)
    second = peers("node-a")

    with pytest.raises(AssertionError):
        second.register(
            instance=SECOND,
            running=(),
            inventory=pb.NodeInventory(),  # a just-started agent's promise
        )

    assert second.end_code == grpc.StatusCode.ALREADY_EXISTS
    detail = second.end_detail
    assert detail.startswith("node node-a is held by another agent (host node-a.test, ")
    assert "pid 4242, registered since " in detail and " UTC" in detail
    assert "this agent (host node-a.test, pid 5151) is refused" in detail
    assert "--node-id" in detail and "no heartbeat for 3 s" in detail
    # The holder's stream, node record and run are as they were.
    holder.heartbeat(pipeline_id, sent_at_ms=9)
    assert holder.expect("heartbeat_ack").sent_at_ms == 9
    pipeline = api.pipeline(pipeline_id)
    assert pipeline["state"] == "running", pipeline
    assert pipeline["steps"][0]["state"] == "running", pipeline
    assert api.nodes()["node-a"]["state"] == "online"
    assert holder.report_step(pipeline_id, 0, pb.STEP_STATE_COMPLETED).applied


def test_the_refused_agent_gets_in_once_the_holder_falls_silent(
    server: RunningServer, peers: Callable[[str], AgentPeer]
) -> None:
    """A holder whose connection is half-open (it is gone, the server has not seen
    the stream end) blocks the node only until its heartbeats are overdue."""
    api = Api(server)
    _, pipeline_id = _holding_a_running_pipeline(peers, api)
    refused = peers("node-a")
    with pytest.raises(AssertionError):
        refused.register(instance=SECOND, inventory=pb.NodeInventory())
    assert refused.end_code == grpc.StatusCode.ALREADY_EXISTS

    # No heartbeat from the holder from now on; the newcomer retries as its backoff says.
    def retry() -> pb.RegistrationAccepted:
        newcomer = peers("node-a")
        try:
            return newcomer.register(instance=SECOND, inventory=pb.NodeInventory())
        except AssertionError:
            assert newcomer.end_code == grpc.StatusCode.ALREADY_EXISTS
            time.sleep(0.5)
            raise

    eventually(retry, timeout=10)
    # The newcomer does not run the holder's pipeline: its start settles it.
    pipeline = api.pipeline(pipeline_id)
    assert pipeline["state"] == "failed" and pipeline["reason"] == "agent_restarted"


def test_an_agent_whose_holder_closed_its_stream_gets_in_at_once(
    server: RunningServer, peers: Callable[[str], AgentPeer]
) -> None:
    api = Api(server)
    holder = peers("node-a")
    holder.register(instance=HOLDER)

    holder.close()  # the process died: its kernel closed the connection

    def registers() -> None:
        newcomer = peers("node-a")
        newcomer.register(instance=SECOND)

    # Well inside the offline limit (3 s): the closed stream is not a holder.
    started = time.monotonic()
    eventually(registers, timeout=2)
    assert time.monotonic() - started < 2
    assert api.nodes()["node-a"]["state"] == "online"


def _node_answer(api: Api, node_id: str) -> dict[str, Any]:
    """The node as ``GET /api/nodes/<id>`` shows it, checked against the OpenAPI
    description the server serves."""
    answer = requests.get(api.url(f"/api/nodes/{node_id}"), timeout=5)
    description = requests.get(api.url("/api/openapi.json"), timeout=5).json()
    check_answer(
        description, "/api/nodes/{node_id}", "get", answer.status_code, answer.json()
    )
    node: dict[str, Any] = answer.json()
    assert api.nodes()[node_id] == node  # the list shows the same
    return node


def test_a_refused_registration_shows_on_the_node_until_the_refused_agent_gets_in(
    server: RunningServer, peers: Callable[[str], AgentPeer]
) -> None:
    """The operator sees in the API what only the refused agent's log said: which
    agent was turned away, from where, when, and how often."""
    api = Api(server)
    holder = peers("node-a")
    holder.register(instance=HOLDER)
    assert _node_answer(api, "node-a")["refused_registration"] is None

    started = datetime.now(UTC)
    for _ in range(2):
        refused = peers("node-a")
        with pytest.raises(AssertionError):
            refused.register(instance=SECOND)
        assert refused.end_code == grpc.StatusCode.ALREADY_EXISTS

    node = _node_answer(api, "node-a")
    shown = node["refused_registration"]
    assert node["state"] == "online", node
    assert shown["instance_id"] == "second", shown
    assert (shown["hostname"], shown["pid"], shown["count"]) == ("node-a.test", 5151, 2)
    assert shown["peer"].startswith("ipv4:127.0.0.1:"), shown
    refused_at = datetime.fromisoformat(shown["refused_at"])
    assert started - timedelta(seconds=1) <= refused_at <= datetime.now(UTC), shown
    listed = subprocess.run(
        [*gamepipeline_command(), "nodes"],
        env=dict(os.environ, GAMEPIPELINE_URL=api.base, COLUMNS="300"),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert (
        "node node-a: another agent (host node-a.test, pid 5151, from "
        f"{shown['peer']}) was refused 2 times"
    ) in listed, listed

    # The holder's own reconnect is not the refused agent getting in.
    holder.close()
    holder = peers("node-a")
    holder.register(instance=HOLDER)
    assert _node_answer(api, "node-a")["refused_registration"] == shown

    # The holder goes away; the refused agent's next try gets the node and the
    # refusal is history.
    holder.close()

    def registers() -> None:
        peers("node-a").register(instance=SECOND)

    eventually(registers, timeout=2)
    assert _node_answer(api, "node-a")["refused_registration"] is None


# --- real agent processes ---------------------------------------------------------------


def _long_pipeline(name: str) -> str:
    return yaml.safe_dump(
        {
            "name": "long",
            "steps": [
                {
                    "name": "work",
                    "container": {
                        "image": "gamepipeline/stand-in:busybox",
                        "container_name": name,
                        "commands": ["sleep 12", "echo done"],
                    },
                }
            ],
        }
    )


def _agent_argv(server: Server, node_id: str, work: Path, workdir: Path) -> list[str]:
    """A second agent of ``node_id``, with the holder's token (``start_agent``'s)."""
    return [
        *gamepipeline_command(),
        "agent",
        "--server", server.grpc_address,
        "--node-id", node_id,
        "--work-dir", str(work),
        "--token-file", str(workdir / "holder-token"),
    ]  # fmt: skip


def _wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.2)


@pytest.mark.docker
def test_a_second_agent_process_waits_its_turn_and_leaves_the_run_alone(
    server_process: Server,
    node_id: str,
    workdir: Path,
    cleanup_containers: list[str],
    run_id: str,
) -> None:
    server = server_process
    holder = start_agent(workdir, server, node_id, name="holder")
    second: Process | None = None
    name = f"gp-holder-{run_id}"
    cleanup_containers.append(name)
    try:
        pipeline_id = server.api.submit(_long_pipeline(name), node=node_id)
        _wait_for(
            lambda: server.api.pipeline(pipeline_id)["state"] == "running", 60, "run"
        )
        second = Process(
            name="second",
            argv=_agent_argv(server, node_id, workdir / "second-work", workdir),
            log=workdir / "second.log",
        )
        second.start()

        # Refused, and says so with the holder's name; still alive, still trying.
        _wait_for(lambda: "is held by another agent" in second.tail(), 30, "refusal")
        holder_pid = holder.proc.pid if holder.proc else 0
        refusal = next(
            line for line in second.tail().splitlines() if "is held by" in line
        )
        assert f"node {node_id} is held by another agent" in refusal, refusal
        assert f"pid {holder_pid}, registered since" in refusal, refusal
        assert "server refused the registration" in refusal, refusal

        final = server.api.wait(pipeline_id, timeout=60)
        assert final["state"] == "completed", final
        assert final["steps"][0]["state"] == "completed", final
        assert second.proc is not None and second.proc.poll() is None

        # The holder goes away: the second agent's next try gets the node.
        holder.stop()
        _wait_for(
            lambda: "agent registered with server" in second.tail(), 40, "takeover"
        )
        node = next(n for n in server.api.nodes() if n["node_id"] == node_id)
        assert node["state"] == "online"
    finally:
        holder.stop()
        if second is not None:
            second.stop()
    print(f"--- second agent log ---\n{second.tail() if second else ''}")


@pytest.mark.docker
def test_a_second_agent_on_the_same_work_dir_refuses_to_start(
    server_process: Server, node_id: str, workdir: Path
) -> None:
    server = server_process
    holder = start_agent(workdir, server, node_id, name="holder")
    try:
        done = subprocess.run(
            _agent_argv(server, node_id, workdir / "holder-work", workdir),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        holder_pid = holder.proc.pid if holder.proc else 0
        assert done.returncode == 1, done.stderr
        assert f"work dir {workdir / 'holder-work'} is in use by another agent" in (
            done.stderr
        )
        assert f"pid {holder_pid} on " in done.stderr
        assert holder.proc is not None and holder.proc.poll() is None
        node = next(n for n in server.api.nodes() if n["node_id"] == node_id)
        assert node["state"] == "online"
        lock = (workdir / "holder-work" / "agent.lock").read_text()
        assert lock.startswith(f"pid {holder_pid} on "), lock
    finally:
        holder.stop()


@pytest.fixture
def server_process(workdir: Path, node_id: str) -> Iterator[Server]:
    from .conftest import start_server

    srv = start_server(workdir, nodes=[node_id])
    yield srv
    srv.stop()
    print(f"--- server log ---\n{srv.tail()}")
