"""The agent running pipelines for real: ansible-runner against the Docker engine, with a
real gRPC peer handing pipelines over and recording what the agent reports.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from gamepipeline.agent.app import AgentConfig, RunningAgent, start_agent
from gamepipeline.agent.spare import temp_dir_prefix
from gamepipeline.proto import gamepipeline_pb2 as pb
from tests.integration.agent_peer import Peer, RecordingServicer
from tests.integration.reliability import marked_processes

pytestmark = pytest.mark.docker

IMAGE = "gamepipeline/stand-in:busybox"
LABEL = "io.beaglewind.gamepipeline.pipeline"


@pytest.fixture
def engine() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    client.ping()
    yield client
    client.close()


@pytest.fixture
def peer() -> Iterator[Peer]:
    p = Peer()
    yield p
    p.stop()


@pytest.fixture
def agent(
    peer: Peer, tmp_path: Path, engine: docker.DockerClient, run_id: str
) -> Iterator[RunningAgent]:
    config = AgentConfig(
        server_address=peer.address,
        node_id=f"node-{run_id}",
        capacity=2,
        work_dir=tmp_path / "work",
        envs={"NODE_SECRET": "from-the-node"},
    )
    running = start_agent(config)
    peer.servicer.wait_for(lambda: peer.servicer.streams, 15, "registration")
    yield running
    running.stop(timeout=20)
    for container in engine.containers.list(all=True):
        if (container.labels or {}).get(LABEL, "").endswith(run_id):
            container.remove(force=True)


def dispatch(
    servicer: RecordingServicer,
    pid: str,
    document: dict[str, Any],
    *,
    args: dict[str, str] | None = None,
    envs: dict[str, str] | None = None,
    timeout_seconds: int = 0,
) -> None:
    servicer.send(
        pb.PipelineStreamResponse(
            pipeline=pb.GamePipeline(
                id=pid,
                name=document["name"],
                document_json=json.dumps(document),
                args=document.get("args", []),
                envs=document.get("envs", []),
                arg_values=args or {},
                env_values=envs or {},
                timeout_seconds=timeout_seconds,
                steps=[
                    pb.PipelineStep(
                        index=i, name=s["name"], type=s.get("type", "container")
                    )
                    for i, s in enumerate(document["steps"])
                ],
            )
        )
    )


def wait_final(servicer: RecordingServicer, pid: str, timeout: float = 90) -> Any:
    return servicer.wait_for(lambda: servicer.final(pid), timeout, f"{pid} to end")


def step_states(servicer: RecordingServicer, pid: str, index: int) -> list[int]:
    return [u.state for u in servicer.step_updates(pid, index)]


def labelled(engine: docker.DockerClient, pid: str) -> list[Any]:
    """The pipeline's containers. Listing inspects each one found; a container removed
    in between (the agent replaces and removes them as it goes) means listing again."""
    for _ in range(5):
        try:
            found: list[Any] = engine.containers.list(
                all=True, filters={"label": f"{LABEL}={pid}"}
            )
        except docker.errors.NotFound:
            continue
        return found
    raise AssertionError(f"containers of {pid} kept vanishing while being listed")


def test_commands_step_exiting_3_fails_with_its_code_and_output_next_is_skipped(
    peer: Peer, agent: RunningAgent, engine: docker.DockerClient, run_id: str
) -> None:
    servicer = peer.servicer
    pid = f"fail-{run_id}"
    document = {
        "name": "exit three",
        "steps": [
            {"name": "db", "type": "service",
             "container": {"image": IMAGE, "container_name": f"gp-db-{run_id}"}},
            {"name": "migrate", "container": {
                "image": IMAGE, "commands": ["echo migrating", "echo almost", "exit 3"]}},
            {"name": "game", "type": "service", "container": {"image": IMAGE}},
        ],
    }  # fmt: skip
    dispatch(servicer, pid, document)
    final = wait_final(servicer, pid)

    assert servicer.acks()[-1] == pb.PipelineAck(pipeline_id=pid, accepted=True)
    assert (final.state, final.reason) == (
        pb.PIPELINE_STATE_FAILED,
        pb.END_REASON_STEP_FAILED,
    )
    assert step_states(servicer, pid, 0) == [
        pb.STEP_STATE_RUNNING,
        pb.STEP_STATE_COMPLETED,
    ]
    running, failed = servicer.step_updates(pid, 1)
    assert running.state == pb.STEP_STATE_RUNNING
    assert failed.state == pb.STEP_STATE_FAILED
    assert failed.HasField("exit_code") and failed.exit_code == 3
    assert failed.output_tail.splitlines()[-2:] == ["migrating", "almost"]
    (skipped,) = servicer.step_updates(pid, 2)
    assert skipped.state == pb.STEP_STATE_SKIPPED

    # One sequence for the pipeline across both RPCs: 1, 2, 3, ... with no gaps.
    sequences = [u.sequence for u in servicer.updates if u.pipeline_id == pid]
    assert sequences == list(range(1, len(sequences) + 1))
    assert servicer.pipeline_updates(pid)[0].state == pb.PIPELINE_STATE_RUNNING


def test_service_pipeline_completes_with_its_container_running(
    peer: Peer, agent: RunningAgent, engine: docker.DockerClient, run_id: str
) -> None:
    servicer = peer.servicer
    pid = f"ok-{run_id}"
    document = {
        "name": "game",
        "envs": ["NODE_SECRET", "GREETING"],
        "args": ["INSTANCE"],
        "steps": [
            {"name": "prepare", "container": {"image": IMAGE, "commands": ["echo ready"]}},
            {"name": "game", "type": "service", "container": {
                "image": IMAGE, "container_name": f"gp-game-{run_id}",
                "environment": {
                    "SECRET": "${{ envs.NODE_SECRET }}",
                    "GREETING": "${{ envs.GREETING }}",
                    "INSTANCE": "${{ args.INSTANCE }}",
                }}},
        ],
    }  # fmt: skip
    dispatch(
        servicer,
        pid,
        document,
        args={"INSTANCE": "{{ 7 * 7 }}"},
        envs={"NODE_SECRET": "from-the-server", "GREETING": "hi"},
    )
    final = wait_final(servicer, pid)

    assert final.state == pb.PIPELINE_STATE_COMPLETED, final
    for index in (0, 1):
        assert step_states(servicer, pid, index) == [
            pb.STEP_STATE_RUNNING,
            pb.STEP_STATE_COMPLETED,
        ]
    container = engine.containers.get(f"gp-game-{run_id}")
    assert container.status == "running"
    env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
    # The node's own env value wins over the submitted one; nothing is templated.
    assert env["SECRET"] == "from-the-node"
    assert env["GREETING"] == "hi"
    assert env["INSTANCE"] == "{{ 7 * 7 }}"
    # The private data dir goes once ansible-playbook has exited, a moment after the
    # end is reported (F9).
    servicer.wait_for(lambda: leftover_run_dirs(agent) == [], 10, "run dirs to go")


def leftover_run_dirs(agent: RunningAgent) -> list[Path]:
    """Private data dirs still on disk, but for the spare waiting for the next
    pipeline (started once a run has ended, its dir holds nothing of any run)."""
    dirs = [agent.config.runs_dir, agent.config.spares_dir]
    found = [path for d in dirs if d.exists() for path in d.iterdir()]
    return [path for path in found if path != agent.agent.spares.waiting_dir]


def _playbook_pids(data_dir: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "ansible-playbook" in cmdline and str(data_dir) in cmdline:
            pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


def test_service_that_cannot_start_fails_and_leaves_no_created_container(
    peer: Peer, agent: RunningAgent, engine: docker.DockerClient, run_id: str
) -> None:
    """Issue 4: a failed run leaves no container behind. This engine has no GPU
    runtime, so the container is created and its start refused ("could not select
    device driver"); the agent removes it, since it is this pipeline's and stopped."""
    servicer = peer.servicer
    pid = f"gpu-{run_id}"
    name = f"gp-gpu-{run_id}"
    gpu = {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    document = {
        "name": "needs a gpu",
        "steps": [
            {"name": "game", "type": "service", "container": {
                "image": IMAGE, "container_name": name,
                "deploy": {"resources": {"reservations": {"devices": [gpu]}}}}},
        ],
    }  # fmt: skip
    dispatch(servicer, pid, document)
    final = wait_final(servicer, pid)

    assert (final.state, final.reason) == (
        pb.PIPELINE_STATE_FAILED,
        pb.END_REASON_STEP_FAILED,
    )
    _, failed = servicer.step_updates(pid, 0)
    assert failed.state == pb.STEP_STATE_FAILED
    assert "device driver" in failed.message, failed.message
    assert labelled(engine, pid) == []
    assert engine.containers.list(all=True, filters={"name": f"^{name}$"}) == []


def test_foreign_stopped_container_is_kept_when_its_step_fails(
    peer: Peer, agent: RunningAgent, engine: docker.DockerClient, run_id: str
) -> None:
    """The clean-up after a failed step touches only this pipeline's containers: a
    stopped container of the same name that GamePipeline did not create stays."""
    servicer = peer.servicer
    pid = f"foreign-{run_id}"
    name = f"gp-foreign-{run_id}"
    foreign = engine.containers.create(IMAGE, name=name)
    try:
        document = {
            "name": "name taken",
            "steps": [
                {"name": "game", "type": "service",
                 "container": {"image": IMAGE, "container_name": name}},
            ],
        }  # fmt: skip
        dispatch(servicer, pid, document)
        final = wait_final(servicer, pid)

        assert (final.state, final.reason) == (
            pb.PIPELINE_STATE_FAILED,
            pb.END_REASON_STEP_FAILED,
        )
        kept = engine.containers.get(name)
        assert kept.id == foreign.id
        assert kept.status == "created"
    finally:
        foreign.remove(force=True)


def test_cancel_during_a_long_step_stops_the_playbook_and_removes_the_container(
    peer: Peer, agent: RunningAgent, engine: docker.DockerClient, run_id: str
) -> None:
    """F8: within seconds the process group is gone, the container stopped and
    removed, the rest skipped, and the pipeline canceled (once)."""
    servicer = peer.servicer
    pid = f"cancel-{run_id}"
    document = {
        "name": "long",
        "steps": [
            {"name": "sleep", "container": {
                "image": IMAGE, "container_name": f"gp-sleep-{run_id}",
                "commands": ["sleep 60"]}},
            {"name": "game", "type": "service", "container": {"image": IMAGE}},
        ],
    }  # fmt: skip
    dispatch(servicer, pid, document)
    deadline = time.monotonic() + 60
    while not [c for c in labelled(engine, pid) if c.status == "running"]:
        assert time.monotonic() < deadline, "the step's container never started"
        time.sleep(0.2)
    run = agent.agent._runs[pid]
    assert run.data_dir is not None
    playbook_pids = _playbook_pids(run.data_dir)
    assert playbook_pids
    assert marked_processes("GAMEPIPELINE_RUN", run.data_dir.name)
    # Its TMPDIR holds Mitogen's socket, which the kill leaves behind.
    temp_dirs = list(
        Path(tempfile.gettempdir()).glob(f"{temp_dir_prefix(run.data_dir.name)}*")
    )
    assert len(temp_dirs) == 1
    assert list(temp_dirs[0].glob("mitogen_unix_*.sock"))

    started = time.monotonic()
    servicer.send(
        pb.PipelineStreamResponse(
            cancel=pb.CancelPipeline(pipeline_id=pid, reason="player left")
        )
    )
    final = wait_final(servicer, pid, timeout=30)
    elapsed = time.monotonic() - started

    assert (final.state, final.reason) == (
        pb.PIPELINE_STATE_CANCELED,
        pb.END_REASON_CANCELED,
    )
    assert "player left" in final.message
    assert elapsed < 20, f"cancel took {elapsed:.1f}s"
    assert not any(_alive(p) for p in playbook_pids)
    assert marked_processes("GAMEPIPELINE_RUN", run.data_dir.name) == []
    assert labelled(engine, pid) == []
    deadline = time.monotonic() + 10
    while temp_dirs[0].exists() or run.data_dir.exists():
        assert time.monotonic() < deadline, "the run's dirs were not removed"
        time.sleep(0.1)
    assert step_states(servicer, pid, 0) == [
        pb.STEP_STATE_RUNNING,
        pb.STEP_STATE_FAILED,
    ]
    assert servicer.step_updates(pid, 0)[-1].reason == pb.END_REASON_CANCELED
    assert step_states(servicer, pid, 1) == [pb.STEP_STATE_SKIPPED]


def test_step_timeout_is_a_timeout_failure_and_its_container_is_removed(
    peer: Peer, agent: RunningAgent, engine: docker.DockerClient, run_id: str
) -> None:
    servicer = peer.servicer
    pid = f"slow-{run_id}"
    document = {
        "name": "slow",
        "steps": [
            {"name": "sleep", "timeout": "3s", "container": {
                "image": IMAGE, "container_name": f"gp-slow-{run_id}",
                "commands": ["sleep 60"]}},
            {"name": "game", "type": "service", "container": {"image": IMAGE}},
        ],
    }  # fmt: skip
    dispatch(servicer, pid, document)
    final = wait_final(servicer, pid, timeout=60)

    assert (final.state, final.reason) == (
        pb.PIPELINE_STATE_FAILED,
        pb.END_REASON_TIMEOUT,
    )
    assert servicer.step_updates(pid, 0)[-1].reason == pb.END_REASON_TIMEOUT
    assert step_states(servicer, pid, 1) == [pb.STEP_STATE_SKIPPED]
    assert labelled(engine, pid) == []


def test_pipeline_timeout_fails_with_reason_timeout_not_canceled(
    peer: Peer, agent: RunningAgent, engine: docker.DockerClient, run_id: str
) -> None:
    servicer = peer.servicer
    pid = f"deadline-{run_id}"
    document = {
        "name": "deadline",
        "steps": [
            {"name": "sleep", "container": {
                "image": IMAGE, "container_name": f"gp-deadline-{run_id}",
                "commands": ["sleep 60"]}},
        ],
    }  # fmt: skip
    dispatch(servicer, pid, document, timeout_seconds=4)
    final = wait_final(servicer, pid, timeout=60)

    assert (final.state, final.reason) == (
        pb.PIPELINE_STATE_FAILED,
        pb.END_REASON_TIMEOUT,
    )
    assert servicer.step_updates(pid, 0)[-1].reason == pb.END_REASON_TIMEOUT
    assert labelled(engine, pid) == []


def test_two_pipelines_at_once_run_in_private_dirs_and_keep_their_values(
    peer: Peer, agent: RunningAgent, engine: docker.DockerClient, run_id: str
) -> None:
    """F9: two pipelines 5 ms apart; neither sees the other's values."""
    servicer = peer.servicer
    document = {
        "name": "twins",
        "args": ["WHO"],
        "steps": [
            {"name": "game", "type": "service", "container": {
                "image": IMAGE, "environment": {"WHO": "${{ args.WHO }}"}}},
        ],
    }  # fmt: skip
    first, second = f"twin1-{run_id}", f"twin2-{run_id}"
    dispatch(servicer, first, document, args={"WHO": "first"})
    time.sleep(0.005)
    dispatch(servicer, second, document, args={"WHO": "second"})

    for pid, who in ((first, "first"), (second, "second")):
        final = wait_final(servicer, pid)
        assert final.state == pb.PIPELINE_STATE_COMPLETED, final
        (container,) = labelled(engine, pid)
        assert f"WHO={who}" in container.attrs["Config"]["Env"]
    servicer.wait_for(lambda: leftover_run_dirs(agent) == [], 10, "run dirs to go")


def test_bad_document_is_rejected_with_its_message(
    peer: Peer, agent: RunningAgent, run_id: str
) -> None:
    servicer = peer.servicer
    pid = f"bad-{run_id}"
    document = {
        "name": "bad",
        "steps": [{"name": "x", "container": {"image": IMAGE, "bogus": 1}}],
    }
    dispatch(servicer, pid, document)
    final = wait_final(servicer, pid, timeout=20)

    assert (final.state, final.reason) == (
        pb.PIPELINE_STATE_FAILED,
        pb.END_REASON_REJECTED,
    )
    assert "bogus" in final.message
    assert step_states(servicer, pid, 0) == [pb.STEP_STATE_SKIPPED]


def test_pipeline_beyond_capacity_is_refused(
    peer: Peer, agent: RunningAgent, run_id: str
) -> None:
    servicer = peer.servicer
    document = {
        "name": "long",
        "steps": [
            {"name": "sleep", "container": {"image": IMAGE, "commands": ["sleep 30"]}}
        ],
    }
    pids = [f"cap{i}-{run_id}" for i in range(3)]
    for pid in pids:
        dispatch(servicer, pid, document)
    servicer.wait_for(lambda: len(servicer.acks()) == 3, 15, "three acks")
    accepted = {a.pipeline_id: a.accepted for a in servicer.acks()}
    assert accepted == {pids[0]: True, pids[1]: True, pids[2]: False}
    assert "capacity" in servicer.acks()[-1].message
    for pid in pids[:2]:
        servicer.send(
            pb.PipelineStreamResponse(cancel=pb.CancelPipeline(pipeline_id=pid))
        )
    for pid in pids[:2]:
        assert wait_final(servicer, pid, 30).state == pb.PIPELINE_STATE_CANCELED
