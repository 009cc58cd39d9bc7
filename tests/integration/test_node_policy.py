"""The node policy in an agent's configuration file holds end to end (issue #5).

A step that asks for what the node's policy forbids fails before anything reaches Docker,
with a message naming the field and the rule; the steps it stops are skipped, and
nothing is created on the engine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import docker
import pytest
import yaml

from .conftest import Server, gamepipeline_command, start_agent

pytestmark = pytest.mark.docker


def test_step_outside_the_configured_policy_is_rejected_before_docker(
    server: Server,
    node_id: str,
    workdir: Path,
    docker_client: docker.DockerClient,
    cleanup_containers: list[str],
    run_id: str,
) -> None:
    config = workdir / "agent.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "policy": {
                    "privileged": False,
                    "mount_paths": ["/data"],
                    "capabilities": [],
                }
            }
        )
    )
    agent = start_agent(workdir, server, node_id, "--config", str(config))
    names = [f"gp-policy-{step}-{run_id}" for step in ("fetch", "game", "stream")]
    cleanup_containers.extend(names)
    document = {
        "name": "too-much",
        "steps": [
            {
                "name": "fetch",
                "container": {
                    "image": "gamepipeline/stand-in:busybox",
                    "container_name": names[0],
                    "commands": ["true"],
                },
            },
            {
                "name": "game",
                "type": "service",
                "container": {
                    "image": "gamepipeline/stand-in:busybox",
                    "container_name": names[1],
                    "privileged": True,
                },
            },
            {
                "name": "stream",
                "type": "service",
                "container": {
                    "image": "gamepipeline/stand-in:busybox",
                    "container_name": names[2],
                },
            },
        ],
    }
    try:
        pipeline_id = server.api.submit(yaml.safe_dump(document), node=node_id)
        final = server.api.wait(pipeline_id, timeout=60)
    finally:
        agent.stop()

    assert final["state"] == "failed", final
    assert final["reason"] == "rejected", final
    assert "step 1 (game) breaks the node policy" in final["message"], final
    assert "policy.privileged" in final["message"], final
    steps = final["steps"]
    assert [(s["state"], s["reason"]) for s in steps] == [
        ("skipped", "rejected"),
        ("failed", "rejected"),
        ("skipped", "rejected"),
    ], steps
    # The step that broke the rule says which field and which rule.
    assert steps[1]["message"].startswith(
        "steps[1].container.privileged: true is refused by policy.privileged (false)"
    ), steps[1]
    assert steps[2]["message"] == "not run: step 1 (game) breaks the node policy"
    for name in names:
        assert docker_client.containers.list(all=True, filters={"name": name}) == []

    # The operator's view: the failed step's row carries the rule.
    env = dict(os.environ, GAMEPIPELINE_URL=f"http://127.0.0.1:{server.http_port}")
    env["COLUMNS"] = "200"
    shown = subprocess.run(
        [*gamepipeline_command(), "status", pipeline_id],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    rows = {line.split()[0]: line for line in _table_rows(shown.stdout)}
    assert "failed" in rows["1"] and "policy.privileged" in rows["1"], shown.stdout
    assert "skipped" in rows["2"] and "breaks the node policy" in rows["2"]


def _table_rows(text: str) -> list[str]:
    """The body rows of the status table (no edges, cells apart by spaces): lines
    whose first cell is a step's index."""
    return [
        line for line in text.splitlines() if line.split() and line.split()[0].isdigit()
    ]


def test_a_link_an_earlier_step_leaves_cannot_carry_a_later_mount_outside(
    server: Server,
    node_id: str,
    workdir: Path,
    cleanup_containers: list[str],
    run_id: str,
) -> None:
    """Step 1 plants a link to / in a folder it may write; step 2 mounts through it.
    The check before the run cannot see the link yet: the step's own guard must."""
    agent = start_agent(workdir, server, node_id)
    escape = Path("/data") / f"gp-policy-{run_id}"
    document = {
        "name": "escape",
        "steps": [
            {
                "name": "plant",
                "container": {
                    "image": "gamepipeline/stand-in:busybox",
                    "volumes": [f"{escape}:/w"],
                    "commands": ["ln -sfn / /w/hostroot"],
                },
            },
            {
                "name": "read",
                "container": {
                    "image": "gamepipeline/stand-in:busybox",
                    "volumes": [f"{escape}/hostroot/etc:/host:ro"],
                    "commands": ["cat /host/hostname"],
                },
            },
        ],
    }
    try:
        pipeline_id = server.api.submit(yaml.safe_dump(document), node=node_id)
        final = server.api.wait(pipeline_id, timeout=90)
    finally:
        agent.stop()
        shutil.rmtree(escape, ignore_errors=True)

    assert final["state"] == "failed", final
    assert [s["state"] for s in final["steps"]] == ["completed", "failed"]
    message = final["steps"][1]["message"]
    assert "policy.mount_paths" in message, message
    assert f"{escape}/hostroot/etc" in message or "/etc" in message, message
    assert final["steps"][1]["output_tail"] == ""
