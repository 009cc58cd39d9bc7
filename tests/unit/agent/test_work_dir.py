"""An agent's work dir holds one node's runs and reports (found by a new user: an agent
started under another node id on an old work dir could deliver none of them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gamepipeline.agent.app import NODE_ID_FILE, claim_work_dir
from gamepipeline.agent.connection import AgentError


def test_a_new_work_dir_is_claimed_and_the_same_node_may_come_back(
    tmp_path: Path,
) -> None:
    work = tmp_path / "deep" / "work"
    claim_work_dir(work, "node-a")
    claim_work_dir(work, "node-a")

    assert (work / NODE_ID_FILE).read_text() == "node-a\n"


def test_another_node_is_refused_naming_both_and_the_way_out(tmp_path: Path) -> None:
    claim_work_dir(tmp_path, "node-a")

    with pytest.raises(AgentError) as caught:
        claim_work_dir(tmp_path, "node-b")

    assert str(caught.value) == (
        f"work dir {tmp_path} holds the runs and reports of node node-a, not node-b; "
        "start this agent with --node-id node-a, or give node node-b a work dir of "
        "its own"
    )
    assert (tmp_path / NODE_ID_FILE).read_text() == "node-a\n"


def test_the_agent_command_exits_1_with_the_reason(tmp_path: Path) -> None:
    claim_work_dir(tmp_path, "node-a")
    done = subprocess.run(
        [sys.executable, "-m", "gamepipeline", "agent", "--server", "127.0.0.1:9",
         "--node-id", "node-b", "--work-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert done.returncode == 1, done.stderr
    assert "holds the runs and reports of node node-a, not node-b" in done.stderr
