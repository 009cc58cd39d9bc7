"""The JSON Schema of pipeline documents, for editors and linters."""

from __future__ import annotations

from typing import Any

from .model import Template


def json_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) describing a pipeline template document.

    It checks the shape and types; the grammar of values (ports, volumes, …) and
    ``${{ … }}`` references are checked by ``load_template`` only.
    """
    schema = Template.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "GamePipeline template"
    return schema
