"""The inventory plugin against a real server: `ansible-inventory` lists what it knows.

A server and agents run as the `gamepipeline` commands an operator starts; the plugin is
loaded by Ansible itself from the collection in this checkout.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, Server, start_agent, start_server

COLLECTIONS = ROOT / "collections"


def write_source(workdir: Path, url: str, **options: Any) -> Path:
    source = workdir / "fleet.gamepipeline_nodes.yml"
    config = {"plugin": "beaglewind.gamepipeline.nodes", "url": url, **options}
    source.write_text(json.dumps(config))
    return source


def ansible_inventory(
    source: Path, token: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GAMEPIPELINE_TOKEN"}
    if token:
        env["GAMEPIPELINE_TOKEN"] = token
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
        ANSIBLE_INVENTORY_ENABLED="beaglewind.gamepipeline.nodes",
        ANSIBLE_INVENTORY_UNPARSED_FAILED="true",
        ANSIBLE_NOCOLOR="1",
    )
    command = Path(sys.executable).parent / "ansible-inventory"
    return subprocess.run(
        [str(command), "-i", str(source), "--list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def listed(source: Path, token: str = "") -> dict[str, Any]:
    result = ansible_inventory(source, token)
    assert result.returncode == 0, result.stderr
    inventory: dict[str, Any] = json.loads(result.stdout, object_hook=_trusted)
    return inventory


def _trusted(value: dict[str, Any]) -> Any:
    """Unwrap what Ansible marks as untrusted: every value that came from the server.

    That marking is wanted (a label is never evaluated as a template); the tests only
    compare the values.
    """
    if set(value) == {"__ansible_unsafe"}:
        return value["__ansible_unsafe"]
    return value


def members(inventory: dict[str, Any], group: str) -> list[str]:
    hosts: list[str] = inventory.get(group, {}).get("hosts", [])
    return sorted(hosts)


def wait_offline(server: Server, node_id: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = {n["node_id"]: n["state"] for n in server.api.nodes()}
        if states.get(node_id) == "offline":
            return
        time.sleep(0.2)
    pytest.fail(f"node {node_id} is still not offline; server log:\n{server.tail()}")


@pytest.fixture
def fleet(workdir: Path) -> Any:
    """A server that wants tokens, and two agents with labels; the second is stopped,
    so its node is offline."""
    server = start_server(workdir, nodes=["gn-gpu", "gn-idle"])
    gpu = start_agent(
        workdir, server, "gn-gpu", "--label", "gpu=nvidia", "--label", "zone=qd-1",
        "--capacity", "3", name="agent-gpu",
    )  # fmt: skip
    idle = start_agent(
        workdir, server, "gn-idle", "--label", "zone=qd-2", name="agent-idle"
    )
    idle.stop()
    wait_offline(server, "gn-idle")
    yield server
    gpu.stop()
    server.stop()
    print(f"--- server log ---\n{server.tail()}")


def test_every_node_is_a_host_grouped_by_state_and_labels(
    workdir: Path, fleet: Server
) -> None:
    source = write_source(
        workdir, f"http://127.0.0.1:{fleet.http_port}", token=fleet.token
    )

    inventory = listed(source)

    assert members(inventory, "gamenodes") == ["gn-gpu", "gn-idle"]
    assert members(inventory, "state_online") == ["gn-gpu"]
    assert members(inventory, "state_offline") == ["gn-idle"]
    assert members(inventory, "label_gpu_nvidia") == ["gn-gpu"]
    assert members(inventory, "label_zone_qd_1") == ["gn-gpu"]
    assert members(inventory, "label_zone_qd_2") == ["gn-idle"]


def test_hosts_carry_what_the_server_knows_of_their_node(
    workdir: Path, fleet: Server
) -> None:
    assert fleet.token is not None
    source = write_source(workdir, f"http://127.0.0.1:{fleet.http_port}")

    hostvars = listed(source, token=fleet.token)["_meta"]["hostvars"]["gn-gpu"]

    assert hostvars["gamepipeline_node_id"] == "gn-gpu"
    assert hostvars["gamepipeline_state"] == "online"
    assert hostvars["gamepipeline_capacity"] == 3
    assert hostvars["gamepipeline_labels"] == {"gpu": "nvidia", "zone": "qd-1"}
    assert hostvars["ansible_host"] == socket.gethostname()
    assert hostvars["gamepipeline_node"]["node_id"] == "gn-gpu"


def test_a_state_filter_and_keyed_groups_shape_the_inventory(
    workdir: Path, fleet: Server
) -> None:
    source = write_source(
        workdir,
        f"http://127.0.0.1:{fleet.http_port}",
        states=["online"],
        label_groups=False,
        keyed_groups=[{"key": "gamepipeline_labels.zone", "prefix": "zone"}],
        token=fleet.token,
    )

    inventory = listed(source)

    assert members(inventory, "gamenodes") == ["gn-gpu"]
    assert members(inventory, "zone_qd_1") == ["gn-gpu"]
    assert "label_gpu_nvidia" not in inventory
    assert "gn-idle" not in inventory["_meta"]["hostvars"]


def test_a_refused_token_fails_the_inventory_with_the_fix(
    workdir: Path, fleet: Server
) -> None:
    source = write_source(
        workdir, f"http://127.0.0.1:{fleet.http_port}", token="gp_not-a-known-token"
    )

    result = ansible_inventory(source)

    assert result.returncode != 0
    assert "answered 401" in result.stderr
    assert "check the token" in " ".join(result.stderr.split())


def test_a_server_that_is_not_there_fails_the_inventory_with_its_address(
    workdir: Path,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    source = write_source(workdir, url)

    result = ansible_inventory(source)

    assert result.returncode != 0
    assert f"GET {url}/api/nodes failed" in " ".join(result.stderr.split())
