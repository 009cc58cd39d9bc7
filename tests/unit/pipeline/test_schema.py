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
    assert "required" not in container  # a remove step has no image


def test_schema_requires_an_image_except_in_remove_steps() -> None:
    step = json_schema()["$defs"]["Step"]
    assert step["properties"]["type"]["enum"] == ["container", "service", "remove"]
    assert step["if"]["properties"]["type"] == {"const": "remove"}
    assert step["then"]["properties"]["container"]["required"] == ["container_name"]
    assert step["else"]["properties"]["container"]["required"] == ["image"]


def test_schema_accepts_described_args_and_envs() -> None:
    properties = json_schema()["properties"]
    for kind in ("args", "envs"):
        plain, described = properties[kind]["items"]["anyOf"]
        assert plain == {"type": "string"}
        assert described["required"] == ["name"]
        assert set(described["properties"]) == {"name", "description"}
