"""The session's guard over the containers that were on the engine before the tests
began (tests/integration/conftest.py RemovalGuard): no test removes one of them."""

from __future__ import annotations

import docker
import pytest

from .conftest import ForeignContainerRemoval, RemovalGuard

pytestmark = pytest.mark.docker

STAND_IN = "gamepipeline/stand-in:busybox"


def test_a_container_there_before_the_session_is_not_removed_by_a_test(
    removal_guard: RemovalGuard | None,
    docker_client: docker.DockerClient,
    run_id: str,
) -> None:
    """A container of this test's own stands in for one that was there at the start
    (a demo's): removing it by object, by name or by id is refused, and it stays."""
    assert removal_guard is not None, "the engine was not reachable at session start"
    name = f"gp-guard-{run_id}"
    container = docker_client.containers.create(STAND_IN, name=name)
    removal_guard.protected.add(container.id)
    try:
        with pytest.raises(ForeignContainerRemoval, match=name):
            container.remove(force=True)
        for ref in (name, container.id, {"Id": container.id}):
            with pytest.raises(ForeignContainerRemoval):
                docker_client.api.remove_container(ref, force=True)
        assert docker_client.containers.get(name).id == container.id
    finally:
        removal_guard.protected.discard(container.id)
        container.remove(force=True)
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(name)
