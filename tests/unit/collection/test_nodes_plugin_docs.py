"""The plugin's documentation is what Ansible reads its options from: it must parse."""

from __future__ import annotations

from pathlib import Path

import yaml
from ansible_collections.beaglewind.gamepipeline.plugins.inventory import nodes


def test_documentation_declares_every_option_the_plugin_reads() -> None:
    doc = yaml.safe_load(nodes.DOCUMENTATION)

    assert doc["name"] == "nodes"
    options = doc["options"]
    for name in ("plugin", "url", "token", "states", "label_groups", "timeout"):
        assert name in options, name
    assert all(isinstance(line, str) for line in options["token"]["description"])


def test_every_example_is_a_configuration_of_this_plugin() -> None:
    examples = list(yaml.safe_load_all(nodes.EXAMPLES))

    assert len(examples) == 2
    for example in examples:
        assert example["plugin"] == "beaglewind.gamepipeline.nodes"
        assert example["url"].startswith("http")


def test_only_files_named_for_the_plugin_are_claimed(tmp_path: Path) -> None:
    plugin = nodes.InventoryModule()
    names = ["fleet.gamepipeline_nodes.yml", "gamepipeline_nodes.yaml", "hosts.yml"]
    for name in names:
        (tmp_path / name).write_text("plugin: beaglewind.gamepipeline.nodes\n")

    claimed = [name for name in names if plugin.verify_file(str(tmp_path / name))]

    assert claimed == names[:2]
