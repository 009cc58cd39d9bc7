"""node_selector: the labels a node must carry to run a pipeline no node was named for."""

from __future__ import annotations

from typing import Any

import pytest

from gamepipeline.pipeline import (
    Problem,
    ValidationError,
    bind,
    compile_playbook,
    json_schema,
    load_template,
)


def document(selector: Any) -> dict[str, Any]:
    return {
        "name": "selected",
        "args": ["TAG"],
        "node_selector": selector,
        "steps": [{"name": "s", "container": {"image": "game:${{ args.TAG }}"}}],
    }


def problems_of(data: dict[str, Any]) -> list[Problem]:
    with pytest.raises(ValidationError) as caught:
        load_template(data)
    return caught.value.problems


def test_selector_values_are_kept_as_text_and_survive_to_document() -> None:
    template = load_template(document({"gpu": "nvidia", "slots": 4, "spot": True}))

    assert template.node_selector == {"gpu": "nvidia", "slots": "4", "spot": "true"}
    again = load_template(template.to_document())
    assert again.node_selector == template.node_selector


def test_no_selector_is_an_empty_one_and_stays_out_of_the_document() -> None:
    data = document(None)
    del data["node_selector"]
    template = load_template(data)

    assert template.node_selector == {}
    assert "node_selector" not in template.to_document()


def test_selector_does_not_change_the_compiled_playbook() -> None:
    plain = document(None)
    del plain["node_selector"]
    with_selector = document({"gpu": "nvidia"})

    def compiled(data: dict[str, Any]) -> Any:
        bound = bind(load_template(data), {"TAG": "1"}, {})
        return compile_playbook(bound, pipeline_id="p")

    assert compiled(with_selector) == compiled(plain)


@pytest.mark.parametrize(
    ("selector", "path", "words"),
    [
        pytest.param(["gpu=nvidia"], "node_selector", "mapping", id="list"),
        pytest.param("gpu", "node_selector", "mapping", id="text"),
        pytest.param({"gpu": None}, "node_selector.gpu", "no value", id="null"),
        pytest.param({"gpu": ["a"]}, "node_selector.gpu", "", id="nested"),
        pytest.param(
            {"gpu": "${{ args.TAG }}"},
            "node_selector.gpu",
            "expressions are not allowed",
            id="expression",
        ),
    ],
)
def test_bad_selector_is_refused_at_its_path(
    selector: Any, path: str, words: str
) -> None:
    problems = problems_of(document(selector))

    assert [p.path for p in problems] == [path], problems
    assert words in problems[0].message


def test_schema_describes_the_selector_as_a_map_of_text() -> None:
    selector = json_schema()["properties"]["node_selector"]

    assert selector["type"] == "object"
    assert selector["additionalProperties"] == {"type": "string"}
