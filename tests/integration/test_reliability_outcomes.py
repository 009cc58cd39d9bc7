"""Issue 4, cancel and timeouts end to end: the real server and agent, one run of each
ending at once on one node, held to the engine afterwards.

Canceled, timed out and failed stay three different outcomes in the API, in the SQLite
file and on the wire (the server's records come only from the agent's reports); each
one's containers are gone (a canceled or timed-out step's container is stopped and
removed, a failed script step's exited container too); a pending pipeline is canceled
at once without ever starting; a finished pipeline answers 409.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from gamepipeline.client import ApiError

from .reliability import (
    FAST_SERVER,
    IMAGE,
    EngineEvents,
    Expected,
    check_against_engine,
    database_row,
    launch_agent,
    launch_server,
    node_state,
    remove_named,
    running_names,
    wait_until,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]


@pytest.fixture(autouse=True)
def no_leftovers(docker_client: docker.DockerClient, run_id: str) -> Iterator[None]:
    yield
    remove_named(docker_client, f"gp-{run_id}")


def script(run_id: str, name: str, commands: list[str], **step: Any) -> str:
    steps: list[dict[str, Any]] = [
        {"name": name, **step, "container": {
            "image": IMAGE, "container_name": f"gp-{run_id}-{name}",
            "commands": commands}},
        {"name": "game", "type": "service", "container": {"image": IMAGE}},
    ]  # fmt: skip
    return yaml.safe_dump({"name": f"outcome-{name}", "steps": steps})


def test_canceled_timed_out_and_failed_stay_apart_and_leave_no_container(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    events: EngineEvents,
    run_id: str,
) -> None:
    node_id = f"node-{run_id}"
    server = launch_server(tmp_path, *FAST_SERVER)
    agent = launch_agent(tmp_path, server.grpc_address, node_id, "--capacity", "3")
    try:
        wait_until(lambda: node_state(server, node_id) == "online", 30, "agent online")
        canceled = server.api.submit(
            script(run_id, "cancel", ["sleep 60"]), node=node_id
        )
        timed_out = server.api.submit(
            script(run_id, "slow", ["sleep 60"], timeout="3s"), node=node_id
        )
        failed = server.api.submit(
            script(run_id, "broken", ["echo breaking", "exit 3"]), node=node_id
        )
        pending = server.api.submit(
            script(run_id, "never", ["true"]), node=f"absent-{run_id}"
        )

        # A pending pipeline is canceled at once and never starts anywhere.
        answer = server.api.cancel(pending)
        assert (answer["state"], answer["reason"]) == ("canceled", "canceled"), answer
        stored = database_row(server.db_path, pending)
        assert (stored["state"], stored["reason"]) == ("canceled", "canceled")
        assert [s["state"] for s in stored["steps"]] == ["skipped", "skipped"]

        wait_until(
            lambda: f"gp-{run_id}-cancel" in running_names(docker_client, canceled),
            60,
            "the step to cancel to be running",
        )
        server.api.cancel(canceled)
        ends = {
            pipeline_id: server.api.wait(pipeline_id, timeout=60)
            for pipeline_id in (canceled, timed_out, failed)
        }
        with pytest.raises(ApiError) as finished:
            server.api.cancel(canceled)
        assert finished.value.status == 409

        outcomes = {
            canceled: (
                "cancel",
                Expected("canceled", "canceled", ["failed", "skipped"]),
            ),
            timed_out: ("slow", Expected("failed", "timeout", ["failed", "skipped"])),
            failed: (
                "broken",
                Expected("failed", "step_failed", ["failed", "skipped"]),
            ),
        }
        for pipeline_id, (name, expected) in outcomes.items():
            shown = check_against_engine(
                server, docker_client, pipeline_id, expected, events=events
            )
            assert events.starts(pipeline_id) == {f"gp-{run_id}-{name}": 1}
            # The step says why too, in the API and in the file.
            stored = database_row(server.db_path, pipeline_id)
            assert shown["steps"][0]["reason"] == expected.reason
            assert stored["steps"][0]["reason"] == expected.reason
            assert stored["steps"][1]["reason"] == expected.reason
        assert ends[failed]["steps"][0]["exit_code"] == 3
        assert events.starts(pending) == {}
    finally:
        agent.stop(signal.SIGTERM)
        server.stop(signal.SIGTERM)
        print(f"--- agent log ---\n{agent.tail()}\n--- server log ---\n{server.tail()}")
