"""Issue 4, agent restarts: an agent killed with SIGKILL in the middle of a step leaves a
run behind; the next agent on the same work dir settles it (fails it with the reason
AGENT_RESTARTED naming the step, removes that step's container, kills the orphaned
playbook) and its reports carry on the pipeline's sequence."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from gamepipeline.proto import gamepipeline_pb2 as pb
from tests.integration.agent_peer import Peer
from tests.integration.test_agent_runs import (
    IMAGE,
    _alive,
    _playbook_pids,
    dispatch,
    labelled,
    wait_final,
)

pytestmark = pytest.mark.docker


def agent_process(
    peer: Peer, work: Path, log: Path, node_id: str
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    with log.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "gamepipeline", "agent",
             "--server", peer.address, "--node-id", node_id,
             "--work-dir", str(work), "--log-level", "debug"],
            stdout=handle, stderr=handle, env=env, start_new_session=True,
        )  # fmt: skip


@pytest.fixture
def engine() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    yield client
    client.close()


def test_run_cut_short_by_an_agent_restart_fails_naming_the_step(
    tmp_path: Path, engine: docker.DockerClient, run_id: str
) -> None:
    peer = Peer()
    servicer = peer.servicer
    work, log = tmp_path / "work", tmp_path / "agent.log"
    pid = f"restart-{run_id}"
    first = agent_process(peer, work, log, f"node-r-{run_id}")
    second: subprocess.Popen[bytes] | None = None
    try:
        servicer.wait_for(lambda: servicer.streams, 30, "registration")
        document = {
            "name": "cut short",
            "steps": [
                {"name": "sleep", "container": {
                    "image": IMAGE, "container_name": f"gp-cut-{run_id}",
                    "commands": ["sleep 60"]}},
                {"name": "game", "type": "service", "container": {"image": IMAGE}},
            ],
        }  # fmt: skip
        dispatch(servicer, pid, document)
        deadline = time.monotonic() + 60
        while not [c for c in labelled(engine, pid) if c.status == "running"]:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        servicer.wait_for(lambda: servicer.step_updates(pid, 0), 10, "step 0 running")
        orphans = _playbook_pids(work)
        assert orphans

        first.send_signal(signal.SIGKILL)  # the agent only, as a crash would
        first.wait(10)
        before = len(servicer.updates)

        second = agent_process(peer, work, log, f"node-r-{run_id}")
        final = wait_final(servicer, pid, timeout=40)

        assert (final.state, final.reason) == (
            pb.PIPELINE_STATE_FAILED,
            pb.END_REASON_AGENT_RESTARTED,
        )
        assert "during step 0" in final.message
        assert servicer.step_updates(pid, 0)[-1].state == pb.STEP_STATE_FAILED
        assert servicer.step_updates(pid, 1)[-1].state == pb.STEP_STATE_SKIPPED
        assert labelled(engine, pid) == []
        assert not any(_alive(p) for p in orphans)
        # The new agent's reports carry on the sequence: nothing was a duplicate.
        assert len(servicer.updates) > before
        assert servicer.duplicates == []
        sequences = [u.sequence for u in servicer.updates if u.pipeline_id == pid]
        assert sequences == list(range(1, len(sequences) + 1))
        assert list((work / "active").iterdir()) == []
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
        peer.stop()
        for container in labelled(engine, pid):
            container.remove(force=True)
