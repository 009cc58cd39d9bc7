"""The agent's scan of /proc for the playbooks a dead agent of its node left running
(issue 4, agent restarts), against real processes: a process is an orphan of this node
when its run markers name this node and an agent that is gone, or when it works in a
data dir of a run left unfinished. Everything else is left alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gamepipeline.agent.orphans import (
    AGENT_ENV,
    NODE_ENV,
    PIPELINE_ENV,
    find_orphans,
    kill_orphans,
    process_identity,
    run_markers,
)

NODE = f"node-orphans-{os.getpid()}"


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


def sleeper(
    procs: list[subprocess.Popen[bytes]], env: dict[str, str], *argv: str
) -> subprocess.Popen[bytes]:
    """A process in a session of its own, as ansible-playbook runs, with ``env``."""
    proc = subprocess.Popen(
        list(argv) or ["sleep", "60"],
        env={**os.environ, **env},
        start_new_session=True,
    )
    procs.append(proc)
    # Popen returns once the child is inside exec, before the kernel has set up the
    # new program's environment: a scan at that moment reads it empty.
    environ = Path("/proc") / str(proc.pid) / "environ"
    deadline = time.monotonic() + 5
    while not environ.read_bytes():
        assert time.monotonic() < deadline, f"{argv} has no environment yet"
        time.sleep(0.001)
    return proc


def gone_agent() -> str:
    """The identity of a process that lived and is gone, as a killed agent's is."""
    agent = subprocess.Popen(["sleep", "60"])
    identity = process_identity(agent.pid)
    agent.kill()
    agent.wait(5)
    assert identity.startswith(f"{agent.pid}:")
    return identity


def markers(node: str, pipeline: str, agent: str) -> dict[str, str]:
    return {NODE_ENV: node, PIPELINE_ENV: pipeline, AGENT_ENV: agent}


def test_run_of_this_node_whose_agent_is_gone_is_an_orphan_and_killed(
    started: list[subprocess.Popen[bytes]],
) -> None:
    orphan = sleeper(started, markers(NODE, "p1", gone_agent()))

    found = [o for o in find_orphans(NODE) if o.pid == orphan.pid]
    assert len(found) == 1
    assert (found[0].group, found[0].pipeline_id) == (orphan.pid, "p1")
    assert "is gone" in found[0].why

    kill_orphans(NODE)
    assert orphan.wait(5) == -9


def test_runs_of_a_live_agent_and_of_other_nodes_are_left_alone(
    started: list[subprocess.Popen[bytes]],
) -> None:
    # This process plays the live agent: its runs carry its identity.
    own = sleeper(started, run_markers(NODE, "p-live"))
    other = sleeper(started, markers(f"other-{NODE}", "p-other", gone_agent()))
    unmarked = sleeper(started, {})

    pids = {o.pid for o in find_orphans(NODE)}
    kill_orphans(NODE)

    assert not pids & {own.pid, other.pid, unmarked.pid}
    assert all(p.poll() is None for p in (own, other, unmarked))


def test_unmarked_process_working_in_a_leftover_data_dir_is_an_orphan(
    started: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """Runs an older agent started carry no markers: a marker file's data dir on
    their command line gives them away."""
    data_dir = str(tmp_path / "runs" / "p-old-1234")
    script = "import time; time.sleep(60)"
    old = sleeper(started, {}, sys.executable, "-c", script, data_dir)
    bystander = sleeper(started, {}, sys.executable, "-c", script, str(tmp_path))

    found = {o.pid: o for o in find_orphans(NODE, (data_dir,))}

    assert old.pid in found and f"works in {data_dir}" in found[old.pid].why
    assert bystander.pid not in found
    kill_orphans(NODE, (data_dir,))
    assert old.wait(5) == -9
    assert bystander.poll() is None


def test_identity_of_a_live_process_names_it_and_of_a_gone_one_is_empty() -> None:
    assert process_identity(os.getpid()).startswith(f"{os.getpid()}:")
    assert process_identity(int(gone_agent().partition(":")[0])) == ""


def test_the_log_names_a_spare_as_such_and_a_run_by_its_pipeline(
    started: list[subprocess.Popen[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    """A spare ansible-playbook waits with an empty pipeline id: the log says what it
    was rather than "pipeline ?"."""
    agent = gone_agent()
    spare = sleeper(started, markers(NODE, "", agent))
    run = sleeper(started, markers(NODE, "p-run", agent))

    with caplog.at_level("WARNING", logger="gamepipeline.agent.orphans"):
        kill_orphans(NODE)

    assert spare.wait(5) == -9 and run.wait(5) == -9
    lines = caplog.messages
    assert any(
        f"group {spare.pid} of a spare ansible-playbook" in line for line in lines
    ), lines
    assert any(f"group {run.pid} of pipeline p-run" in line for line in lines), lines
    assert not any("pipeline ?" in line for line in lines), lines
