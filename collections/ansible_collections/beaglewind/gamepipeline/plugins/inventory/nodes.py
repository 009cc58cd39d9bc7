"""Inventory of the GameNodes a GamePipeline server knows."""

# Ansible's layout: the documentation first, then the imports.
# ruff: noqa: E402

from __future__ import annotations

DOCUMENTATION = r"""
name: nodes
short_description: GameNodes registered with a GamePipeline server
version_added: 0.1.0
description:
  - Asks a running GamePipeline server for its nodes (C(GET /api/nodes)) and adds one
    host per node, named by its node id, with C(ansible_host) set to the host name the
    agent reported.
  - Every node is in the group C(gamenodes), in one C(state_<state>) group
    (C(state_online), C(state_offline), C(state_maintenance), C(state_disabled)), and in
    one C(label_<key>_<value>) group per label; characters other than letters, digits
    and C(_) become C(_) in group names.
  - Each host gets C(gamepipeline_node_id), C(gamepipeline_hostname),
    C(gamepipeline_state), C(gamepipeline_connected), C(gamepipeline_capacity),
    C(gamepipeline_labels) and the
    server's whole record as C(gamepipeline_node). These values come from the network
    and are marked untrusted, so Ansible never evaluates them as templates.
  - The configuration file's name must end in C(gamepipeline_nodes.yml) or
    C(gamepipeline_nodes.yaml).
extends_documentation_fragment:
  - constructed
options:
  plugin:
    description: The name of this plugin; always C(beaglewind.gamepipeline.nodes).
    required: true
    choices: [beaglewind.gamepipeline.nodes]
  url:
    description: The server's HTTP API, for example C(http://gamepipeline.example.net:8080).
    type: str
    required: true
    env:
      - name: GAMEPIPELINE_URL
  token:
    description:
      - "Token sent as C(Authorization: Bearer TOKEN); not sent when empty."
    type: str
    env:
      - name: GAMEPIPELINE_TOKEN
  states:
    description:
      - Only nodes in these states become hosts; every node when not set.
      - C(maintenance) and C(disabled) are nodes an operator put aside; their agents may
        still be connected (see C(gamepipeline_connected)).
    type: list
    elements: str
    choices: [online, offline, maintenance, disabled]
  label_groups:
    description: Put each node in a C(label_<key>_<value>) group per label.
    type: bool
    default: true
  hostname_as_ansible_host:
    description:
      - Set C(ansible_host) to the host name the agent reported. Turn it off when the
        inventory names hosts differently, and use O(compose) instead.
    type: bool
    default: true
  timeout:
    description: Seconds to wait for the server.
    type: float
    default: 10
  validate_certs:
    description: Check the server's TLS certificate when O(url) is C(https).
    type: bool
    default: true
"""

EXAMPLES = r"""
# fleet.gamepipeline_nodes.yml: every node the server knows, online or not
plugin: beaglewind.gamepipeline.nodes
url: http://gamepipeline.example.net:8080

---
# Only the online nodes, with a group per GPU vendor from the "gpu" label
plugin: beaglewind.gamepipeline.nodes
url: http://gamepipeline.example.net:8080
states: [online]
keyed_groups:
  - key: gamepipeline_labels.gpu | default('none')
    prefix: gpu
"""

from typing import Any

from ansible.errors import AnsibleError
from ansible.module_utils.urls import open_url
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable
from ansible_collections.beaglewind.gamepipeline.plugins.module_utils.nodes_inventory import (
    NodesInventoryError,
    fetch_nodes,
    parse_nodes,
    plan_inventory,
)


class InventoryModule(BaseInventoryPlugin, Constructable):  # type: ignore[misc]
    NAME = "beaglewind.gamepipeline.nodes"

    def verify_file(self, path: str) -> bool:
        return bool(super().verify_file(path)) and path.endswith(
            ("gamepipeline_nodes.yml", "gamepipeline_nodes.yaml")
        )

    def parse(self, inventory: Any, loader: Any, path: str, cache: bool = True) -> None:
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)

        try:
            payload = fetch_nodes(
                self.get_option("url"),
                self.get_option("token"),
                open_url,
                timeout=self.get_option("timeout"),
                validate_certs=self.get_option("validate_certs"),
            )
            plan = plan_inventory(
                parse_nodes(payload),
                states=self.get_option("states"),
                label_groups=self.get_option("label_groups"),
                hostname_as_ansible_host=self.get_option("hostname_as_ansible_host"),
            )
        except NodesInventoryError as err:
            raise AnsibleError(f"{path}: {err}") from None

        self._add(plan.hosts, plan.groups)

    def _add(
        self, hosts: dict[str, dict[str, Any]], groups: dict[str, list[str]]
    ) -> None:
        strict = self.get_option("strict")
        for group, members in groups.items():
            self.inventory.add_group(group)
            for host in members:
                self.inventory.add_host(host, group=group)

        for host, variables in hosts.items():
            for name, value in variables.items():
                self.inventory.set_variable(host, name, value)
            self._set_composite_vars(
                self.get_option("compose"), variables, host, strict
            )
            self._add_host_to_composed_groups(
                self.get_option("groups"), variables, host, strict
            )
            self._add_host_to_keyed_groups(
                self.get_option("keyed_groups"), variables, host, strict
            )
