"""``gamepipeline_inspect``: a container's inspection, read in the controller.

Options: ``name``, the container's name. The result has the shape of
``community.docker.docker_container_info``'s: ``exists`` and ``container`` (the
engine's inspection, or None when there is no such container).

Unlike that module it starts no interpreter: it asks the engine directly over its
Unix socket (``DOCKER_HOST``, else ``/var/run/docker.sock``); any other
``DOCKER_HOST`` goes through the Docker SDK.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from typing import Any

from ansible.plugins.action import ActionBase

DEFAULT_SOCKET = "/var/run/docker.sock"
TIMEOUT_SECONDS = 60


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT_SECONDS)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT_SECONDS)
        sock.connect(self._path)
        self.sock = sock


def inspect_container(name: str) -> dict[str, Any] | None:
    """The engine's inspection of container ``name``, or None if there is none.

    Raises:
        RuntimeError: the engine answered with an error.
        OSError: the engine could not be reached.
    """
    host = os.environ.get("DOCKER_HOST") or f"unix://{DEFAULT_SOCKET}"
    if not host.startswith("unix://"):
        return _inspect_with_sdk(name)
    connection = _UnixConnection(host.removeprefix("unix://"))
    try:
        connection.request(
            "GET", f"/containers/{urllib.parse.quote(name, safe='')}/json"
        )
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status == 404:
        return None
    if response.status != 200:
        detail = body.decode(errors="replace").strip()
        raise RuntimeError(f"the engine answered {response.status}: {detail}")
    found: dict[str, Any] = json.loads(body)
    return found


def _inspect_with_sdk(name: str) -> dict[str, Any] | None:
    import docker
    import docker.errors

    client = docker.from_env()
    try:
        found: dict[str, Any] = client.api.inspect_container(name)
    except docker.errors.NotFound:
        return None
    finally:
        client.close()
    return found


class ActionModule(ActionBase):  # type: ignore[misc]
    _VALID_ARGS = frozenset({"name"})
    _supports_check_mode = True

    def run(
        self, tmp: str | None = None, task_vars: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        name = self._task.args.get("name")
        if not isinstance(name, str) or not name:
            return {**result, "failed": True, "msg": "name is required"}
        try:
            container = inspect_container(name)
        except (OSError, RuntimeError, ValueError) as err:
            return {
                **result,
                "failed": True,
                "msg": f"could not inspect container {name}: {err}",
            }
        return {
            **result,
            "changed": False,
            "exists": container is not None,
            "container": container,
        }
