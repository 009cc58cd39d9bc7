"""Issue 4, connection loss and vanished agents, with the real server and agent processes.

- the link between agent and server goes dark (a TCP proxy the test controls turns into
  a black hole): the agent keeps running its pipeline and journals its reports; the
  server marks the node offline; once the link is back the reports arrive once, in
  order, and the server's view matches the engine;
- the agent's process freezes (SIGSTOP; its TCP connection stays open): the server
  marks the node offline within its heartbeat limit and, after the node-lost grace
  period, fails its running pipeline with the reason node_lost; when the agent thaws,
  the server tells it to stop that run and its container goes.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from .conftest import Process
from .reliability import (
    FAST_SERVER,
    IMAGE,
    EngineEvents,
    Expected,
    Proxy,
    applied_sequences,
    check_against_engine,
    labelled,
    launch_agent,
    launch_server,
    node_state,
    remove_named,
    running_names,
    wait_until,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]


@pytest.fixture
def processes() -> Any:
    started: list[Process] = []
    yield started
    for proc in reversed(started):
        if proc.proc is not None and proc.proc.poll() is None:
            os.killpg(proc.proc.pid, signal.SIGCONT)
        proc.stop(signal.SIGTERM)
        print(f"--- {proc.name} log ---\n{proc.tail()}")


@pytest.fixture(autouse=True)
def no_leftovers(docker_client: docker.DockerClient, run_id: str) -> Any:
    yield
    remove_named(docker_client, f"gp-{run_id}")


def document(run_id: str, script: list[str], service: bool = True) -> str:
    steps: list[dict[str, Any]] = [
        {"name": "prepare", "container": {
            "image": IMAGE, "container_name": f"gp-{run_id}-prep", "commands": script}},
    ]  # fmt: skip
    if service:
        steps.append(
            {"name": "game", "type": "service", "container": {
                "image": IMAGE, "container_name": f"gp-{run_id}-game"}}
        )  # fmt: skip
    return yaml.safe_dump({"name": "reliability-network", "steps": steps})


def test_link_cut_mid_run_agent_journals_and_delivers_once_in_order(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    events: EngineEvents,
    processes: list[Process],
    run_id: str,
) -> None:
    node_id = f"node-{run_id}"
    server = launch_server(tmp_path, *FAST_SERVER)
    processes.append(server)
    proxy = Proxy(server.grpc_port).start()
    try:
        agent = launch_agent(tmp_path, proxy.address, node_id)
        processes.append(agent)
        wait_until(lambda: node_state(server, node_id) == "online", 30, "agent online")
        pipeline_id = server.api.submit(document(run_id, ["sleep 2"]), node=node_id)
        wait_until(
            lambda: server.api.pipeline(pipeline_id)["steps"][0]["state"] == "running",
            60,
            "step 0 to run",
        )

        proxy.cut()
        cut_at = time.monotonic()
        wait_until(lambda: node_state(server, node_id) == "offline", 10, "offline")
        offline_after = time.monotonic() - cut_at
        # The agent carries on alone: the service step's container comes up.
        wait_until(
            lambda: f"gp-{run_id}-game" in running_names(docker_client, pipeline_id),
            60,
            "the service step to start while the link is cut",
        )
        journal = tmp_path / "agent-work" / "journal" / "outbox"
        wait_until(
            lambda: len(list(journal.glob("*.pb"))) >= 3,
            30,
            "the agent to journal the reports it cannot send",
        )
        seen = server.api.pipeline(pipeline_id)
        assert seen["state"] == "running", seen
        assert seen["steps"][1]["state"] == "pending", seen

        proxy.restore()
        server.api.wait(pipeline_id, timeout=60)
        check_against_engine(
            server,
            docker_client,
            pipeline_id,
            Expected(
                "completed", "", ["completed", "completed"], {f"gp-{run_id}-game"}
            ),
            events=events,
        )
        # Every report was applied exactly once and in order: none lost, none twice.
        applied = applied_sequences([server.log], pipeline_id)
        assert applied == list(range(1, len(applied) + 1)), applied
        assert offline_after < 3 + 3, f"offline only after {offline_after:.1f} s"
        wait_until(lambda: not list(journal.glob("*.pb")), 10, "the journal to empty")
        assert node_state(server, node_id) == "online"
        assert proxy.connections >= 2  # the agent came back on a new connection
    finally:
        proxy.stop()


def test_frozen_agent_goes_offline_then_its_pipeline_fails_node_lost(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    events: EngineEvents,
    processes: list[Process],
    run_id: str,
) -> None:
    node_id = f"node-{run_id}"
    server = launch_server(tmp_path, *FAST_SERVER, "--node-lost-after", "4")
    processes.append(server)
    agent = launch_agent(tmp_path, server.grpc_address, node_id)
    processes.append(agent)
    wait_until(lambda: node_state(server, node_id) == "online", 30, "agent online")
    pipeline_id = server.api.submit(
        document(run_id, ["sleep 60"], service=False), node=node_id
    )
    wait_until(
        lambda: f"gp-{run_id}-prep" in running_names(docker_client, pipeline_id),
        60,
        "the step's container",
    )
    wait_until(
        lambda: server.api.pipeline(pipeline_id)["steps"][0]["state"] == "running",
        10,
        "step 0 reported running",
    )

    assert agent.proc is not None
    os.kill(agent.proc.pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    wait_until(lambda: node_state(server, node_id) == "offline", 15, "offline")
    offline_after = time.monotonic() - frozen_at
    server.api.wait(pipeline_id, timeout=20)
    lost_after = time.monotonic() - frozen_at
    # The step's container still runs: the node is gone, not its work.
    assert f"gp-{run_id}-prep" in running_names(docker_client, pipeline_id)
    shown = server.api.pipeline(pipeline_id)
    assert (shown["state"], shown["reason"]) == ("failed", "node_lost"), shown

    os.kill(agent.proc.pid, signal.SIGCONT)
    # Back, the agent restates what it runs; the server tells it to stop the run that
    # already ended, and its container goes.
    wait_until(
        lambda: not labelled(docker_client, pipeline_id), 40, "the container to go"
    )
    wait_until(lambda: node_state(server, node_id) == "online", 30, "agent online")
    time.sleep(1)  # any report the thawed agent sends about the run is now in
    check_against_engine(
        server,
        docker_client,
        pipeline_id,
        Expected("failed", "node_lost", ["failed"]),
        events=events,
    )
    assert offline_after < 3 + 3, f"offline only after {offline_after:.1f} s"
    assert 3 + 4 - 1.5 <= lost_after < 3 + 4 + 6, f"node_lost after {lost_after:.1f} s"
    assert "already ended failed" in server.log.read_text()


def test_link_cut_right_after_a_hand_over_does_not_run_the_pipeline_twice(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    events: EngineEvents,
    processes: list[Process],
    run_id: str,
) -> None:
    """The agent gets the pipeline, then the link goes dark before the server hears a
    word back (not even the ack): the agent runs it alone. When the link returns, the
    server still has it pending for that node and hands it over again on the new
    stream; the agent must not start it a second time."""
    node_id = f"node-{run_id}"
    server = launch_server(tmp_path, *FAST_SERVER)
    processes.append(server)
    proxy = Proxy(server.grpc_port).start()
    try:
        agent = launch_agent(tmp_path, proxy.address, node_id)
        processes.append(agent)
        wait_until(lambda: node_state(server, node_id) == "online", 30, "agent online")
        proxy.cut_after_large_message(400)
        pipeline_id = server.api.submit(document(run_id, ["true"]), node=node_id)
        wait_until(
            lambda: f"gp-{run_id}-game" in running_names(docker_client, pipeline_id),
            60,
            "the agent to run the pipeline alone",
        )
        wait_until(
            lambda: f"pipeline {pipeline_id}: run ended" in agent.log.read_text(),
            30,
            "the run to end",
        )
        assert server.api.pipeline(pipeline_id)["state"] == "pending"

        proxy.restore()
        server.api.wait(pipeline_id, timeout=60)
        time.sleep(2)  # a second run, if one started, would have shown by now
        check_against_engine(
            server,
            docker_client,
            pipeline_id,
            Expected(
                "completed", "", ["completed", "completed"], {f"gp-{run_id}-game"}
            ),
            events=events,
        )
        assert events.starts(pipeline_id) == {
            f"gp-{run_id}-prep": 1,
            f"gp-{run_id}-game": 1,
        }
    finally:
        proxy.stop()
