"""The inventory plugin's logic: the server's answer in, hosts and groups out."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from ansible.module_utils.urls import open_url
from ansible_collections.beaglewind.gamepipeline.plugins.module_utils import (
    nodes_inventory as inv,
)


def record(node_id: str, state: str | None = "online", **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "node_id": node_id,
        "hostname": f"{node_id}.example.net",
        "labels": {},
        "state": state,
        "capacity": 4,
    }
    base.update(extra)
    return base


# --- parse_nodes: what the server's answer must look like -------------------------


def test_a_bare_list_and_an_enveloped_list_read_the_same() -> None:
    nodes = [record("gn-1"), record("gn-2", state="offline")]

    assert inv.parse_nodes(nodes) == inv.parse_nodes({"nodes": nodes})
    assert [n.node_id for n in inv.parse_nodes(nodes)] == ["gn-1", "gn-2"]


def test_a_state_the_plugin_does_not_know_yet_makes_its_own_group() -> None:
    nodes = inv.parse_nodes([record("gn-1", state="draining")])

    assert inv.plan_inventory(nodes).groups["state_draining"] == ["gn-1"]


def test_label_values_become_strings_and_the_whole_record_is_kept() -> None:
    (node,) = inv.parse_nodes([record("gn-1", labels={"gpus": 2}, running=1)])

    assert node.labels == {"gpus": "2"}
    assert node.record["running"] == 1


def test_a_missing_hostname_falls_back_to_the_node_id() -> None:
    (node,) = inv.parse_nodes([record("gn-1", hostname=None)])

    assert node.hostname == "gn-1"


def test_every_bad_field_is_reported_at_once_with_its_path() -> None:
    bad = [
        record("gn-1"),
        record("", state=None, capacity="four", labels=["gpu"]),
        "gn-3",
    ]

    with pytest.raises(inv.NodesInventoryError) as caught:
        inv.parse_nodes(bad)

    message = str(caught.value)
    assert "nodes[1].node_id: '' is not a non-empty string" in message
    assert "nodes[1].state: None is not a non-empty string" in message
    assert "nodes[1].capacity: 'four' is not a whole number" in message
    assert "nodes[1].labels: ['gpu'] is not a mapping" in message
    assert "nodes[2]: 'gn-3' is not an object" in message


def test_a_node_id_listed_twice_is_refused() -> None:
    with pytest.raises(inv.NodesInventoryError, match=r"nodes\[1\].node_id: 'gn-1'"):
        inv.parse_nodes([record("gn-1"), record("gn-1")])


def test_an_answer_that_is_no_list_is_refused() -> None:
    with pytest.raises(inv.NodesInventoryError, match="is a dict, not a list of nodes"):
        inv.parse_nodes({"error": "nope"})


# --- plan_inventory: hosts, variables and groups ----------------------------------


def test_nodes_are_grouped_by_state_and_by_each_label() -> None:
    nodes = inv.parse_nodes(
        [
            record("gn-1", labels={"gpu": "nvidia", "zone": "cn-qd-1"}),
            record("gn-2", state="offline", labels={"gpu": "nvidia"}),
            record("gn-3", state="maintenance"),
        ]
    )

    plan = inv.plan_inventory(nodes)

    assert plan.groups == {
        "gamenodes": ["gn-1", "gn-2", "gn-3"],
        "state_online": ["gn-1"],
        "label_gpu_nvidia": ["gn-1", "gn-2"],
        "label_zone_cn_qd_1": ["gn-1"],
        "state_offline": ["gn-2"],
        "state_maintenance": ["gn-3"],
    }


def test_hosts_carry_the_node_and_reach_it_by_its_hostname() -> None:
    (node,) = inv.parse_nodes(
        [record("gn-1", labels={"gpu": "nvidia"}, connected=True)]
    )

    hostvars = inv.plan_inventory([node]).hosts["gn-1"]

    assert hostvars["ansible_host"] == "gn-1.example.net"
    assert hostvars["gamepipeline_node_id"] == "gn-1"
    assert hostvars["gamepipeline_state"] == "online"
    assert hostvars["gamepipeline_connected"] is True
    assert hostvars["gamepipeline_capacity"] == 4
    assert hostvars["gamepipeline_labels"] == {"gpu": "nvidia"}
    assert hostvars["gamepipeline_node"]["hostname"] == "gn-1.example.net"


def test_ansible_host_can_be_left_to_the_inventory() -> None:
    nodes = inv.parse_nodes([record("gn-1")])

    plan = inv.plan_inventory(nodes, hostname_as_ansible_host=False)

    assert "ansible_host" not in plan.hosts["gn-1"]


def test_a_state_filter_leaves_the_other_nodes_out() -> None:
    nodes = inv.parse_nodes([record("gn-1"), record("gn-2", state="offline")])

    plan = inv.plan_inventory(nodes, states=["online"])

    assert list(plan.hosts) == ["gn-1"]
    assert "state_offline" not in plan.groups


def test_label_groups_can_be_turned_off() -> None:
    nodes = inv.parse_nodes([record("gn-1", labels={"gpu": "nvidia"})])

    plan = inv.plan_inventory(nodes, label_groups=False)

    assert set(plan.groups) == {"gamenodes", "state_online"}


def test_an_unknown_state_in_the_filter_is_refused() -> None:
    with pytest.raises(inv.NodesInventoryError, match=r"states: \['busy'\]"):
        inv.plan_inventory([], states=["online", "busy"])


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (("label", "gpu", "nvidia"), "label_gpu_nvidia"),
        (("label", "zone", "cn-qd.1"), "label_zone_cn_qd_1"),
        (("label", "机房", "a"), "label____a"),
    ],
)
def test_group_names_keep_only_letters_digits_and_underscores(
    parts: tuple[str, ...], expected: str
) -> None:
    assert inv.group_name(*parts) == expected


# --- nodes_url and fetch_nodes: asking the server ----------------------------------


@pytest.mark.parametrize(
    "base",
    [
        "http://gp:8080",
        "http://gp:8080/",
        "http://gp:8080/api/nodes",
        " http://gp:8080 ",
    ],
)
def test_the_node_list_is_under_the_servers_base_url(base: str) -> None:
    assert inv.nodes_url(base) == "http://gp:8080/api/nodes"


def test_a_url_without_a_scheme_is_refused_with_the_fix() -> None:
    with pytest.raises(inv.NodesInventoryError, match="write it as http://HOST:PORT"):
        inv.nodes_url("gp:8080")


class _Answers(BaseHTTPRequestHandler):
    """A real HTTP server whose answer each test sets on the class."""

    status = 200
    body = b"[]"
    seen_headers: dict[str, str] = {}  # noqa: RUF012 - one test at a time

    def do_GET(self) -> None:
        type(self).seen_headers = dict(self.headers.items())
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    _Answers.status, _Answers.body = 200, b"[]"


def test_the_token_is_sent_as_a_bearer_token(http_server: str) -> None:
    _Answers.body = json.dumps([record("gn-1")]).encode()

    payload = inv.fetch_nodes(http_server, "s3cret", open_url, timeout=5)

    assert payload[0]["node_id"] == "gn-1"
    assert _Answers.seen_headers["Authorization"] == "Bearer s3cret"


def test_no_authorization_header_without_a_token(http_server: str) -> None:
    inv.fetch_nodes(http_server, "", open_url, timeout=5)

    assert "Authorization" not in _Answers.seen_headers


def test_a_refused_token_names_the_status_and_the_fix(http_server: str) -> None:
    _Answers.status = 401

    with pytest.raises(
        inv.NodesInventoryError, match=r"answered 401 .*; check the token"
    ):
        inv.fetch_nodes(http_server, "wrong", open_url, timeout=5)


def test_an_answer_that_is_not_json_is_refused(http_server: str) -> None:
    _Answers.body = b"<html>proxy error</html>"

    with pytest.raises(inv.NodesInventoryError, match="did not answer JSON"):
        inv.fetch_nodes(http_server, None, open_url, timeout=5)


def test_a_server_that_is_not_there_is_named() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"

    with pytest.raises(inv.NodesInventoryError, match="is the server running there"):
        inv.fetch_nodes(closed, None, open_url, timeout=5)
