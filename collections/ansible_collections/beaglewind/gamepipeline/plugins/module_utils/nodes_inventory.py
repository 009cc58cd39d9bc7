"""What the ``beaglewind.gamepipeline.nodes`` inventory plugin does, kept apart from it.

The plugin runs on the control node only, so this file may use the controller's Python.
Everything but :func:`fetch_nodes` is free of I/O: the server's answer goes in, the hosts
and groups to add to the inventory come out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.error import HTTPError, URLError

NODES_PATH = "/api/nodes"
STATES = ("online", "offline", "maintenance", "disabled")
"""The states the server gives a node: connected or not, or put aside by an operator."""
ALL_NODES_GROUP = "gamenodes"

_GROUP_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


class NodesInventoryError(Exception):
    """The server could not be asked, or its answer is not a list of nodes."""


@dataclass(frozen=True)
class Node:
    """One node as the server's ``GET /api/nodes`` describes it."""

    node_id: str
    hostname: str
    state: str
    capacity: int
    labels: dict[str, str] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class InventoryPlan:
    """Hosts with their variables, and the groups each belongs to, in a stable order."""

    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)

    def add_to_group(self, group: str, host: str) -> None:
        members = self.groups.setdefault(group, [])
        if host not in members:
            members.append(host)


def nodes_url(base_url: str) -> str:
    """The node list's address under the server's base URL (``http://host:8080``)."""
    base = base_url.strip().rstrip("/")
    if not re.match(r"^https?://[^/]+", base):
        raise NodesInventoryError(
            f"url: {base_url!r} is not an HTTP address; write it as "
            "http://HOST:PORT, the server's HTTP API"
        )
    if base.endswith(NODES_PATH):
        return base
    return base + NODES_PATH


def group_name(*parts: str) -> str:
    """An Ansible group name made of ``parts``: unsafe characters become ``_``."""
    return _GROUP_UNSAFE.sub("_", "_".join(parts))


def parse_nodes(payload: Any) -> list[Node]:
    """Check the server's answer: a list of nodes, or ``{"nodes": [...]}``.

    Every problem is reported at once, each with the path of the bad value.
    """
    if isinstance(payload, Mapping) and "nodes" in payload:
        payload = payload["nodes"]
    if not isinstance(payload, list):
        raise NodesInventoryError(
            f"the server's answer is a {type(payload).__name__}, not a list of nodes"
        )

    nodes: list[Node] = []
    problems: list[str] = []
    seen: set[str] = set()
    for index, record in enumerate(payload):
        node = _parse_node(record, f"nodes[{index}]", problems)
        if node is None:
            continue
        if node.node_id in seen:
            problems.append(f"nodes[{index}].node_id: {node.node_id!r} appears twice")
            continue
        seen.add(node.node_id)
        nodes.append(node)

    if problems:
        raise NodesInventoryError("; ".join(problems))
    return nodes


def _parse_node(record: Any, path: str, problems: list[str]) -> Node | None:
    if not isinstance(record, Mapping):
        problems.append(f"{path}: {record!r} is not an object")
        return None
    before = len(problems)

    node_id = record.get("node_id")
    if not isinstance(node_id, str) or not node_id:
        problems.append(f"{path}.node_id: {node_id!r} is not a non-empty string")
    hostname = record.get("hostname") or node_id
    if not isinstance(hostname, str):
        problems.append(f"{path}.hostname: {hostname!r} is not a string")
    # A state this plugin does not know yet still makes a group of its own.
    state = record.get("state")
    if not isinstance(state, str) or not state:
        problems.append(f"{path}.state: {state!r} is not a non-empty string")
    capacity = record.get("capacity", 0)
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        problems.append(f"{path}.capacity: {capacity!r} is not a whole number")
    labels = record.get("labels") or {}
    if not isinstance(labels, Mapping):
        problems.append(f"{path}.labels: {labels!r} is not a mapping")

    if len(problems) > before:
        return None
    return Node(
        node_id=str(node_id),
        hostname=str(hostname),
        state=str(state),
        capacity=int(capacity),
        labels={str(key): str(value) for key, value in labels.items()},
        record=dict(record),
    )


def plan_inventory(
    nodes: Iterable[Node],
    states: Iterable[str] | None = None,
    label_groups: bool = True,
    hostname_as_ansible_host: bool = True,
) -> InventoryPlan:
    """Hosts named by node id, in ``gamenodes``, ``state_<state>`` and label groups.

    A label ``gpu: nvidia`` puts its node in ``label_gpu_nvidia``. When ``states`` is
    given, nodes in other states are left out.
    """
    wanted = None if states is None else set(states)
    unknown = (wanted or set()) - set(STATES)
    if unknown:
        raise NodesInventoryError(
            f"states: {sorted(unknown)} are not node states; choose from "
            f"{', '.join(STATES)}"
        )

    plan = InventoryPlan()
    for node in nodes:
        if wanted is not None and node.state not in wanted:
            continue
        plan.hosts[node.node_id] = host_vars(node, hostname_as_ansible_host)
        plan.add_to_group(ALL_NODES_GROUP, node.node_id)
        plan.add_to_group(group_name("state", node.state), node.node_id)
        if label_groups:
            for key, value in sorted(node.labels.items()):
                plan.add_to_group(group_name("label", key, value), node.node_id)
    return plan


def host_vars(node: Node, hostname_as_ansible_host: bool = True) -> dict[str, Any]:
    """The variables a node's host gets; ``gamepipeline_node`` is the whole record."""
    variables: dict[str, Any] = {
        "gamepipeline_node_id": node.node_id,
        "gamepipeline_hostname": node.hostname,
        "gamepipeline_state": node.state,
        "gamepipeline_connected": bool(node.record.get("connected", False)),
        "gamepipeline_capacity": node.capacity,
        "gamepipeline_labels": dict(node.labels),
        "gamepipeline_node": dict(node.record),
    }
    if hostname_as_ansible_host:
        variables["ansible_host"] = node.hostname
    return variables


Opener = Callable[..., Any]


def fetch_nodes(
    url: str,
    token: str | None,
    opener: Opener,
    timeout: float = 10,
    validate_certs: bool = True,
) -> Any:
    """``GET /api/nodes`` with ``opener`` (Ansible's ``open_url``) and decode its JSON."""
    address = nodes_url(url)
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"

    try:
        response = opener(
            address,
            method="GET",
            headers=headers,
            timeout=timeout,
            validate_certs=validate_certs,
        )
        body = response.read()
    except HTTPError as err:
        hint = "; check the token" if err.code in (401, 403) else ""
        raise NodesInventoryError(
            f"GET {address} answered {err.code} {err.reason}{hint}"
        ) from None
    except (URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise NodesInventoryError(
            f"GET {address} failed: {reason}; is the server running there?"
        ) from None

    try:
        return json.loads(body)
    except ValueError as err:
        raise NodesInventoryError(f"GET {address} did not answer JSON: {err}") from None
