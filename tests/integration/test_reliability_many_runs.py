"""Issue 4 / F9: many runs on one node.

- two pipelines arrive 5 ms apart on the same node: each runs in a private data dir of
  its own and its containers get its own args and envs, not the other's;
- then a bounded series of short runs (``RUNS``, not F9's thousand: each run starts an
  ansible-playbook, a few seconds of CPU on a shared machine) goes through the node:
  every one completes, and the agent's work dir is as large at the end as after the
  first few (run dirs, markers, journal entries and sequence files all go away).

``make soak`` runs the same test with F9's thousand runs
(``GAMEPIPELINE_SOAK_RUNS=1000``).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from gamepipeline.agent.app import LOCK_FILE, NODE_ID_FILE

from .conftest import Process, Server
from .reliability import (
    FAST_SERVER,
    IMAGE,
    EngineEvents,
    launch_agent,
    launch_server,
    marked_processes,
    node_state,
    remove_named,
    wait_until,
)

RUNS = int(os.environ.get("GAMEPIPELINE_SOAK_RUNS", "12"))
pytestmark = [pytest.mark.docker, pytest.mark.timeout(240 + 10 * RUNS)]

WARM_UP = 3
#: Growth allowed between the warm-up and the end: a log-free work dir should not grow
#: at all; this leaves room for a directory entry or two.
SLACK_BYTES = 16 * 1024


@pytest.fixture
def node(tmp_path: Path, run_id: str) -> Iterator[tuple[Server, Process, str]]:
    node_id = f"node-{run_id}"
    server = launch_server(tmp_path, *FAST_SERVER)
    agent = launch_agent(
        tmp_path, server.grpc_address, node_id, "--capacity", "2", "--env", "NODE=n1"
    )
    try:
        wait_until(lambda: node_state(server, node_id) == "online", 30, "agent online")
        yield server, agent, node_id
    finally:
        agent.stop(signal.SIGTERM)
        server.stop(signal.SIGTERM)
        print(f"--- agent log ---\n{agent.tail()}\n--- server log ---\n{server.tail()}")


@pytest.fixture(autouse=True)
def no_leftovers(docker_client: docker.DockerClient, run_id: str) -> Iterator[None]:
    yield
    remove_named(docker_client, f"gp-{run_id}")


def env_of(container: Any) -> dict[str, str]:
    pairs = (item.partition("=") for item in container.attrs["Config"]["Env"])
    return {key: value for key, _, value in pairs}


def no_run_dirs(work: Path) -> bool:
    """No run dir is left: none in runs/ (a run that found no spare waiting makes
    one there), and in spares/ at most the one spare waiting for the next pipeline
    (a run's dir goes a moment after its end is reported)."""
    runs, spares = work / "runs", work / "spares"
    return (not runs.exists() or not list(runs.iterdir())) and (
        not spares.exists() or len(list(spares.iterdir())) <= 1
    )


def work_dir_size(work: Path) -> tuple[int, list[str]]:
    """Bytes in the work dir's files, and the files other than fixed bookkeeping (the
    node id the dir belongs to, the lock the agent holds it by).

    The one spare ansible-playbook the agent keeps waiting for the next pipeline
    (``spares/``, started after the last run ended, holding no run's values) is not
    counted; more than one there would be a leak.
    """
    spares = list((work / "spares").glob("*"))
    assert len(spares) <= 1, spares
    size, files = 0, []
    for path in work.rglob("*"):
        if (
            path.is_file()
            and path.name not in (NODE_ID_FILE, LOCK_FILE)
            and not path.is_relative_to(work / "spares")
        ):
            size += path.stat().st_size
            files.append(str(path.relative_to(work)))
    return size, files


def test_two_pipelines_5_ms_apart_keep_their_own_dirs_args_and_envs(
    node: tuple[Server, Process, str],
    docker_client: docker.DockerClient,
    run_id: str,
) -> None:
    server, agent, node_id = node
    template = {
        "name": "isolated",
        "args": ["WHO"],
        "envs": ["SECRET"],
        "steps": [
            {"name": "game", "type": "service", "container": {
                "image": IMAGE, "container_name": f"gp-{run_id}-${{{{ args.WHO }}}}",
                "environment": {"WHO": "${{ args.WHO }}",
                                "SECRET": "${{ envs.SECRET }}"}}},
        ],
    }  # fmt: skip
    ids: dict[str, str] = {}

    def submit(who: str) -> None:
        ids[who] = server.api.submit(
            yaml.safe_dump(template),
            args={"WHO": who},
            envs={"SECRET": f"secret-of-{who}"},
            node=node_id,
        )

    first = threading.Thread(target=submit, args=("alpha",))
    second = threading.Thread(target=submit, args=("beta",))
    first.start()
    time.sleep(0.005)
    second.start()
    first.join(10)
    second.join(10)

    for who, pipeline_id in ids.items():
        assert server.api.wait(pipeline_id, timeout=90)["state"] == "completed"
        env = env_of(docker_client.containers.get(f"gp-{run_id}-{who}"))
        assert (env["WHO"], env["SECRET"]) == (who, f"secret-of-{who}")
    log = agent.log.read_text()
    dirs = {
        pipeline_id: re.findall(
            rf"pipeline {pipeline_id}: starting ansible-runner in (\S+)", log
        )
        for pipeline_id in ids.values()
    }
    assert all(len(found) == 1 for found in dirs.values()), dirs
    alpha, beta = (Path(found[0]) for found in dirs.values())
    # One took the agent's waiting spare (spares/), the other started its own (runs/).
    assert alpha != beta
    assert {alpha.parent.name, beta.parent.name} <= {"runs", "spares"}
    # Each goes once its ansible-playbook has exited, a moment after the end.
    wait_until(lambda: not alpha.exists() and not beta.exists(), 10, "dirs to go")


def test_many_runs_in_a_row_leave_the_work_dir_as_it_was(
    node: tuple[Server, Process, str],
    docker_client: docker.DockerClient,
    events: EngineEvents,
    tmp_path: Path,
) -> None:
    server, _, node_id = node
    work = tmp_path / "agent-work"
    short = yaml.safe_dump(
        {"name": "short", "steps": [
            {"name": "tick", "container": {"image": IMAGE, "commands": ["true"]}}]}
    )  # fmt: skip

    def run(count: int) -> list[str]:
        ids = [server.api.submit(short, node=node_id) for _ in range(count)]
        for pipeline_id in ids:
            assert server.api.wait(pipeline_id, timeout=120)["state"] == "completed"
        return ids

    started = time.monotonic()
    ids = run(WARM_UP)
    wait_until(lambda: no_run_dirs(work), 10, "run dirs to go")
    size_after_warm_up, _ = work_dir_size(work)
    ids += run(RUNS - WARM_UP)
    elapsed = time.monotonic() - started

    wait_until(lambda: no_run_dirs(work), 10, "run dirs to go")
    size, files = work_dir_size(work)
    assert files == [], f"files left in the work dir: {files}"
    assert size <= size_after_warm_up + SLACK_BYTES, (size_after_warm_up, size)
    for pipeline_id in ids:
        starts = events.starts(pipeline_id)
        assert sum(starts.values()) == 1, (pipeline_id, starts)
    print(f"{RUNS} runs in {elapsed:.0f} s ({elapsed / RUNS:.1f} s a run, 2 at once)")


def test_an_agent_configured_without_a_spare_keeps_none_and_still_runs(
    tmp_path: Path, run_id: str
) -> None:
    """`spare: false` in the agent's config file: no ansible-playbook waits ahead,
    and a pipeline runs all the same, in a dir of its own started cold."""
    node_id = f"node-{run_id}"
    config = tmp_path / "agent.yaml"
    config.write_text("spare: false\n", encoding="utf-8")
    server = launch_server(tmp_path, *FAST_SERVER)
    agent = launch_agent(
        tmp_path, server.grpc_address, node_id, "--config", str(config)
    )
    try:
        wait_until(lambda: node_state(server, node_id) == "online", 30, "agent online")
        _run_a_short_pipeline(server, node_id)
        spares = tmp_path / "agent-work" / "spares"
        assert not spares.exists() or list(spares.iterdir()) == []
        assert "started a spare" not in agent.log.read_text()
    finally:
        agent.stop(signal.SIGTERM)
        server.stop(signal.SIGTERM)


def _mitogen_processes(node_id: str) -> list[int]:
    """Mitogen's interpreters started for ``node_id``'s playbooks (by the markers in
    their environment, as ``agent/orphans.py`` finds them)."""
    found = []
    for pid in marked_processes("GAMEPIPELINE_NODE_ID", node_id):
        with contextlib.suppress(OSError):
            if b"(mitogen:" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def _run_a_short_pipeline(server: Server, node_id: str) -> None:
    short = yaml.safe_dump(
        {"name": "short", "steps": [
            {"name": "tick", "container": {"image": IMAGE, "commands": ["true"]}}]}
    )  # fmt: skip
    pipeline_id = server.api.submit(short, node=node_id)
    assert server.api.wait(pipeline_id, timeout=120)["state"] == "completed"


@pytest.mark.parametrize("mitogen", [True, False], ids=["mitogen", "no-mitogen"])
def test_the_spare_warms_mitogen_up_unless_configured_off(
    tmp_path: Path, run_id: str, mitogen: bool
) -> None:
    """By default the spare runs its modules through Mitogen and has imported
    ``docker_container`` before a pipeline arrives; ``mitogen: false`` in the agent's
    config file starts no Mitogen interpreter. A pipeline completes either way."""
    node_id = f"node-{run_id}"
    config = tmp_path / "agent.yaml"
    config.write_text(f"mitogen: {str(mitogen).lower()}\n", encoding="utf-8")
    server = launch_server(tmp_path, *FAST_SERVER)
    agent = launch_agent(
        tmp_path, server.grpc_address, node_id, "--config", str(config)
    )
    try:
        wait_until(lambda: node_state(server, node_id) == "online", 30, "agent online")
        wait_until(
            lambda: "spare ansible-playbook ready" in agent.log.read_text(),
            60,
            "the spare to be ready",
        )
        assert bool(_mitogen_processes(node_id)) is mitogen
        spare_dir = next((tmp_path / "agent-work" / "spares").iterdir())
        playbook = (spare_dir / "project" / "main.yml").read_text()
        assert ("gamepipeline warms up" in playbook) is mitogen
        _run_a_short_pipeline(server, node_id)
    finally:
        agent.stop(signal.SIGTERM)
        server.stop(signal.SIGTERM)
    # Stopping the agent ends its spare, Mitogen's interpreters with it.
    wait_until(lambda: not _mitogen_processes(node_id), 15, "mitogen to end")
