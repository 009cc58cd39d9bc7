"""The node policy in an agent's configuration file holds end to end (issue #5).

A step that asks for what the node's policy forbids fails before anything reaches Docker,
with a message naming the rule; nothing is created on the engine.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import docker
import pytest
import yaml

from .conftest import Server, start_agent

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
    name = f"gp-policy-{run_id}"
    cleanup_containers.append(name)
    document = {
        "name": "too-much",
        "steps": [
            {
                "name": "game",
                "type": "service",
                "container": {
                    "image": "gamepipeline/stand-in:busybox",
                    "container_name": name,
                    "privileged": True,
                },
            }
        ],
    }
    try:
        pipeline_id = server.api.submit(yaml.safe_dump(document), node=node_id)
        final = server.api.wait(pipeline_id, timeout=60)
    finally:
        agent.stop()

    assert final["state"] == "failed", final
    assert final["reason"] == "rejected", final
    assert "policy.privileged" in final["message"], final
    assert docker_client.containers.list(all=True, filters={"name": name}) == []


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
