"""The node policy in an agent's configuration file holds end to end (issue #5).

A step that asks for what the node's policy forbids fails before anything reaches Docker,
with a message naming the rule; nothing is created on the engine.
"""

from __future__ import annotations

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
    name = f"gp-policy-{workdir.name[-8:]}"
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
