"""json_schema: a JSON Schema that editors can use for template documents."""

from __future__ import annotations

import json

from gamepipeline.pipeline import json_schema


def test_schema_is_json_and_forbids_unknown_top_level_fields() -> None:
    schema = json.loads(json.dumps(json_schema()))
    assert schema["$schema"].endswith("2020-12/schema")
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"name", "steps"}


def test_schema_describes_container_fields() -> None:
    container = json_schema()["$defs"]["Container"]
    assert {"image", "environment", "ports", "deploy", "commands"} <= set(
        container["properties"]
    )
    assert container["required"] == ["image"]
