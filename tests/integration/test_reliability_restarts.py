"""Issue 4, restarts: the real server and agent processes killed with SIGKILL at chosen
points and started again, then the server's records held to the engine's ground truth.

- server killed mid-run: the agent keeps running and journals; the server restarted on
  the same gRPC port rebuilds from SQLite, the agent reconnects under backoff (F11) and
  re-registers, the run goes on to completion, the pipeline queued behind it is
  dispatched once;
- agent killed mid-step: the next agent on the same work dir fails the run with the
  reason agent_restarted naming the step, removes that step's container, and no
  container is started twice;
- both killed mid-step: the agent comes back first and journals while the server is
  still away; once the server is back the same ending arrives, once.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from .conftest import Process, Server
from .reliability import (
    FAST_SERVER,
    IMAGE,
    EngineEvents,
    Expected,
    check_against_engine,
    database_row,
    labelled,
    launch_agent,
    launch_server,
    node_state,
    remove_named,
    running_names,
    wait_until,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(150)]


@pytest.fixture
def processes(docker_client: docker.DockerClient) -> Any:
    """Every process a test starts is stopped at the end, its log shown on failure."""
    started: list[Process] = []
    yield started
    for proc in reversed(started):
        proc.stop(signal.SIGKILL if proc.name.startswith("server") else signal.SIGTERM)
        print(f"--- {proc.name} log ---\n{proc.tail()}")


@pytest.fixture(autouse=True)
def no_leftovers(docker_client: docker.DockerClient, run_id: str) -> Any:
    yield
    remove_named(docker_client, f"gp-{run_id}")


def two_steps(run_id: str, first: list[str], name: str = "a") -> str:
    """A script step (``first``) and then a service that keeps running."""
    return yaml.safe_dump(
        {
            "name": f"reliability-{name}",
            "steps": [
                {"name": "prepare", "container": {
                    "image": IMAGE, "container_name": f"gp-{run_id}-{name}-prep",
                    "commands": first}},
                {"name": "game", "type": "service", "container": {
                    "image": IMAGE, "container_name": f"gp-{run_id}-{name}-game"}},
            ],
        }
    )  # fmt: skip


def step_state(server: Server, pipeline_id: str, index: int) -> str:
    return str(server.api.pipeline(pipeline_id)["steps"][index]["state"])


def wait_step_running(server: Server, pipeline_id: str, index: int = 0) -> None:
    wait_until(
        lambda: step_state(server, pipeline_id, index) == "running",
        60,
        f"step {index} of {pipeline_id} to run",
    )


def test_server_killed_mid_run_restarts_and_the_run_goes_on_to_its_end(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    events: EngineEvents,
    processes: list[Process],
    run_id: str,
) -> None:
    node_id = f"node-{run_id}"
    server = launch_server(tmp_path, *FAST_SERVER)
    processes.append(server)
    agent = launch_agent(tmp_path, server.grpc_address, node_id, "--capacity", "1")
    processes.append(agent)
    wait_until(lambda: node_state(server, node_id) == "online", 30, "agent online")

    first = server.api.submit(two_steps(run_id, ["sleep 4"]), node=node_id)
    queued = server.api.submit(two_steps(run_id, ["true"], "b"), node=node_id)
    wait_step_running(server, first)
    assert server.api.pipeline(queued)["state"] == "pending"

    server.stop(signal.SIGKILL)
    # The agent carries on alone: the script step runs to its end (its container is
    # removed once it exits) while the agent backs off a few times (F11).
    prep = f"gp-{run_id}-a-prep"
    wait_until(
        lambda: (
            events.starts(first)[prep] == 1
            and prep not in {c.name for c in labelled(docker_client, first)}
        ),
        60,
        "the script step to end while the server is down",
    )

    again = launch_server(
        tmp_path, *FAST_SERVER, grpc_port=server.grpc_port, name="server-2"
    )
    processes.append(again)
    again.api.wait(first, timeout=60)
    again.api.wait(queued, timeout=60)
    logs = [server.log, again.log]

    check_against_engine(
        again,
        docker_client,
        first,
        Expected("completed", "", ["completed", "completed"], {f"gp-{run_id}-a-game"}),
        events=events,
        server_logs=logs,
    )
    check_against_engine(
        again,
        docker_client,
        queued,
        Expected("completed", "", ["completed", "completed"], {f"gp-{run_id}-b-game"}),
        events=events,
        server_logs=logs,
    )
    # F11: the stream ended as transient, the agent came back with growing, jittered
    # delays and registered again on the new stream.
    agent_log = agent.log.read_text()
    assert re.search(r"stream ended: StatusCode\.(UNAVAILABLE|UNKNOWN)", agent_log)
    delays = [float(d) for d in re.findall(r"reconnecting in ([\d.]+)s", agent_log)]
    assert len(delays) >= 2, delays
    assert 0.5 <= delays[0] <= 1.0, delays
    assert max(delays) <= 30 and delays[1] >= 1.0, (
        delays
    )  # uniform(1, 2), logged to 0.1 s
    assert len(re.findall(r"agent registered with server", agent_log)) == 2
    assert f"node {node_id} registered" in again.log.read_text()
    assert "refused the agent" not in agent_log


def test_agent_killed_mid_step_fails_the_run_naming_the_step_and_removes_its_container(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    events: EngineEvents,
    processes: list[Process],
    run_id: str,
) -> None:
    node_id = f"node-{run_id}"
    server = launch_server(tmp_path, *FAST_SERVER)
    processes.append(server)
    agent = launch_agent(tmp_path, server.grpc_address, node_id)
    processes.append(agent)
    wait_until(lambda: node_state(server, node_id) == "online", 30, "agent online")

    pipeline_id = server.api.submit(two_steps(run_id, ["sleep 60"]), node=node_id)
    wait_until(
        lambda: f"gp-{run_id}-a-prep" in running_names(docker_client, pipeline_id),
        60,
        "the script step's container",
    )
    wait_step_running(server, pipeline_id)

    agent.stop(signal.SIGKILL)
    wait_until(lambda: node_state(server, node_id) == "offline", 10, "node offline")
    assert server.api.pipeline(pipeline_id)["state"] == "running"

    restarted = launch_agent(tmp_path, server.grpc_address, node_id)
    processes.append(restarted)
    server.api.wait(pipeline_id, timeout=60)

    shown = check_against_engine(
        server,
        docker_client,
        pipeline_id,
        Expected("failed", "agent_restarted", ["failed", "skipped"]),
        events=events,
    )
    assert "during step 0" in shown["message"], shown
    assert node_state(server, node_id) == "online"


def test_server_and_agent_killed_mid_step_settle_once_both_are_back(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    events: EngineEvents,
    processes: list[Process],
    run_id: str,
) -> None:
    node_id = f"node-{run_id}"
    server = launch_server(tmp_path, *FAST_SERVER)
    processes.append(server)
    agent = launch_agent(tmp_path, server.grpc_address, node_id)
    processes.append(agent)
    wait_until(lambda: node_state(server, node_id) == "online", 30, "agent online")
    pipeline_id = server.api.submit(two_steps(run_id, ["sleep 60"]), node=node_id)
    wait_step_running(server, pipeline_id)

    agent.stop(signal.SIGKILL)
    server.stop(signal.SIGKILL)

    # The agent comes back first: it settles the run and journals the reports.
    restarted = launch_agent(tmp_path, server.grpc_address, node_id)
    processes.append(restarted)
    wait_until(
        lambda: "the last agent left unfinished" in restarted.log.read_text(),
        30,
        "the restarted agent to settle the run",
    )
    assert not labelled(docker_client, pipeline_id)
    journal = tmp_path / "agent-work" / "journal" / "outbox"
    assert list(journal.glob("*.pb")), "the settled run's reports are not journaled"

    again = launch_server(
        tmp_path, *FAST_SERVER, grpc_port=server.grpc_port, name="server-2"
    )
    processes.append(again)
    again.api.wait(pipeline_id, timeout=60)

    shown = check_against_engine(
        again,
        docker_client,
        pipeline_id,
        Expected("failed", "agent_restarted", ["failed", "skipped"]),
        events=events,
        server_logs=[server.log, again.log],
    )
    assert "during step 0" in shown["message"], shown
    wait_until(lambda: not list(journal.glob("*.pb")), 10, "the journal to empty")


def test_agent_back_without_its_work_dir_has_its_forgotten_run_failed(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    processes: list[Process],
    run_id: str,
) -> None:
    """A node reimaged mid-run: the new agent has no marker and no journal. It lists
    nothing, heartbeat after heartbeat, so the server fails the run it holds for the
    node with the reason agent_restarted instead of showing it running for ever."""
    node_id = f"node-{run_id}"
    server = launch_server(tmp_path, *FAST_SERVER)
    processes.append(server)
    agent = launch_agent(tmp_path, server.grpc_address, node_id)
    processes.append(agent)
    wait_until(lambda: node_state(server, node_id) == "online", 30, "agent online")
    pipeline_id = server.api.submit(two_steps(run_id, ["sleep 60"]), node=node_id)
    wait_step_running(server, pipeline_id)

    agent.stop(signal.SIGKILL)
    # Moved, not deleted: the killed agent's ansible-playbook (its own session) may
    # still write there for a moment; for the new agent the folder is gone either way.
    (tmp_path / "agent-work").rename(tmp_path / "agent-work-lost")
    restarted = launch_agent(tmp_path, server.grpc_address, node_id)
    processes.append(restarted)
    final = server.api.wait(pipeline_id, timeout=30)

    assert (final["state"], final["reason"]) == ("failed", "agent_restarted"), final
    assert [s["state"] for s in final["steps"]] == ["failed", "skipped"]
    stored = database_row(server.db_path, pipeline_id)
    assert (stored["state"], stored["reason"]) == ("failed", "agent_restarted")
    assert "no longer knows this run" in final["message"]
