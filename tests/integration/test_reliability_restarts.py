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
  still away; once the server is back the same ending arrives, once;
- agent killed mid-step and started again without its work dir: it kills the orphaned
  playbook, the server settles the run at registration and names the containers to
  remove; other nodes' containers on the same engine are left alone.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from .conftest import PIPELINE_LABEL, Process, Server
from .reliability import (
    FAST_SERVER,
    IMAGE,
    EngineEvents,
    Expected,
    check_against_engine,
    labelled,
    launch_agent,
    launch_server,
    marked_processes,
    node_state,
    process_marker,
    remove_named,
    run_temp_dirs,
    running_names,
    wait_until,
)

STEP_LABEL = "io.beaglewind.gamepipeline.step"

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
    # The run's TMPDIR holds Mitogen's socket, which a SIGKILL leaves behind.
    temp_dirs = run_temp_dirs(tmp_path / "agent-work")
    assert [path for path in temp_dirs if list(path.glob("mitogen_unix_*.sock"))]

    agent.stop(signal.SIGKILL)
    wait_until(lambda: node_state(server, node_id) == "offline", 10, "node offline")
    assert server.api.pipeline(pipeline_id)["state"] == "running"
    assert all(path.is_dir() for path in temp_dirs)

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
    assert [path for path in temp_dirs if path.exists()] == []


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


def three_steps(run_id: str, seconds: int) -> str:
    """A service that stays (the result of step 0), a script step of ``seconds``, and
    a service that would start after it."""
    return yaml.safe_dump(
        {
            "name": "reliability-reconcile",
            "steps": [
                {"name": "db", "type": "service", "container": {
                    "image": IMAGE, "container_name": f"gp-{run_id}-db"}},
                {"name": "slow", "container": {
                    "image": IMAGE, "container_name": f"gp-{run_id}-slow",
                    "commands": [f"sleep {seconds}"]}},
                {"name": "game", "type": "service", "container": {
                    "image": IMAGE, "container_name": f"gp-{run_id}-game"}},
            ],
        }
    )  # fmt: skip


def labelled_container(
    engine: docker.DockerClient, name: str, pipeline_id: str, step: int
) -> None:
    """A running container labelled as step ``step`` of ``pipeline_id``, as some
    other run on the same engine would leave it."""
    engine.containers.run(
        IMAGE, ["sleep", "300"], name=name, detach=True,
        labels={PIPELINE_LABEL: pipeline_id, STEP_LABEL: str(step)},
    )  # fmt: skip


def test_agent_back_without_its_work_dir_settles_at_once_and_leaves_nothing_behind(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    events: EngineEvents,
    processes: list[Process],
    run_id: str,
) -> None:
    """A node reimaged mid-step: the new agent has no marker and no journal. Before it
    registers it kills the playbook its predecessor left running (found by its run
    markers in /proc) and lists the labelled containers on its engine. The server
    fails the run at registration, not heartbeats later (every 10 s here, 3 needed),
    naming the step cut short, and has the agent remove that step's container; the
    completed step's container stays, the next step's never starts, and another
    node's container and one of a pipeline the server does not know are untouched."""
    node_id, other_id = f"node-{run_id}", f"other-{run_id}"
    server = launch_server(tmp_path)
    processes.append(server)
    agent = launch_agent(tmp_path, server.grpc_address, node_id)
    other = launch_agent(tmp_path, server.grpc_address, other_id, name="other")
    processes += [agent, other]
    for node in (node_id, other_id):
        wait_until(
            lambda n=node: node_state(server, n) == "online", 30, "agents online"
        )

    # Another node's failed pipeline, with a container of its failed step on this
    # same engine, and a container of a pipeline this server never saw.
    foreign = server.api.submit(two_steps(run_id, ["exit 3"], "f"), node=other_id)
    assert server.api.wait(foreign, timeout=60)["state"] == "failed"
    labelled_container(docker_client, f"gp-{run_id}-foreign", foreign, 0)
    unknown = f"unknown-{run_id}"
    labelled_container(docker_client, f"gp-{run_id}-unknown", unknown, 1)

    pipeline_id = server.api.submit(three_steps(run_id, 20), node=node_id)
    slow, game = f"gp-{run_id}-slow", f"gp-{run_id}-game"
    wait_until(
        lambda: slow in running_names(docker_client, pipeline_id),
        60,
        "the script step's container",
    )
    step_started = time.monotonic()
    wait_step_running(server, pipeline_id, 1)

    agent.stop(signal.SIGKILL)
    # The killed agent's playbook runs on in its own session (on this engine until
    # the step's task ends and it writes to the dead agent's terminal: 20 s here).
    orphans = marked_processes("GAMEPIPELINE_NODE_ID", node_id)
    assert orphans, "no process of the node's runs carries its marker"
    dead_agents = {process_marker(pid, "GAMEPIPELINE_AGENT") for pid in orphans}
    dead_agents.discard("")
    (tmp_path / "agent-work").rename(tmp_path / "agent-work-lost")
    restarted_at = time.monotonic()
    restarted = launch_agent(tmp_path, server.grpc_address, node_id)
    processes.append(restarted)
    final = server.api.wait(pipeline_id, timeout=60)
    settled_in = time.monotonic() - restarted_at

    print(f"settled {settled_in:.1f} s after the new agent was started")
    assert settled_in < 20, f"took {settled_in:.1f} s: the heartbeat fallback's pace"
    assert (final["state"], final["reason"]) == ("failed", "agent_restarted"), final
    assert "the agent restarted during step 1" in final["message"], final
    assert "without its records" in final["message"], final
    assert [s["state"] for s in final["steps"]] == ["completed", "failed", "skipped"]
    assert final["steps"][1]["reason"] == "agent_restarted", final
    left = {
        p
        for agent in dead_agents
        for p in marked_processes("GAMEPIPELINE_AGENT", agent)
    }
    assert not left & set(orphans), "the dead agent's playbooks live on"
    assert "killed leftover process group" in restarted.log.read_text()

    db = f"gp-{run_id}-db"
    wait_until(
        lambda: {c.name for c in labelled(docker_client, pipeline_id)} == {db},
        30,
        lambda: f"containers left: {labelled(docker_client, pipeline_id)}",
    )
    # Past the end the script step would have had, had its playbook lived on.
    time.sleep(max(0.0, step_started + 24 - time.monotonic()))
    check_against_engine(
        server,
        docker_client,
        pipeline_id,
        Expected("failed", "agent_restarted", ["completed", "failed", "skipped"], {db}),
        events=events,
    )
    assert events.starts(pipeline_id)[game] == 0, "the next step's container started"
    assert not [
        p
        for agent in dead_agents
        for p in marked_processes("GAMEPIPELINE_AGENT", agent)
    ]

    assert running_names(docker_client, foreign) == {f"gp-{run_id}-foreign"}
    assert running_names(docker_client, unknown) == {f"gp-{run_id}-unknown"}
    assert f"containers of pipeline {unknown}, which this server does not know" in (
        server.log.read_text()
    )
    assert "no longer knows this run" not in final["message"]
