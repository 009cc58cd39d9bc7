"""args and envs: plain names, or ``{name, description}`` to document each one."""

from __future__ import annotations

from typing import Any

import pytest

from gamepipeline.pipeline import Problem, ValidationError, bind, load_template

from .pipeline_helpers import container_doc


def problems_of(document: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        load_template(document)
    return {p.path: p.message for p in caught.value.problems}


def described(**declared: Any) -> dict[str, Any]:
    doc = container_doc(image="game:${{ args.TAG }}", hostname="${{ envs.HOST }}")
    doc.update(declared)
    return doc


def test_plain_and_described_entries_mix_and_name_the_same_values() -> None:
    template = load_template(
        described(
            args=[{"name": "TAG", "description": "image tag to start"}],
            envs=["HOST", {"name": "ROOT"}],
        )
    )

    assert template.args == ["TAG"]
    assert template.envs == ["HOST", "ROOT"]
    assert template.descriptions("args") == {"TAG": "image tag to start"}
    assert template.descriptions("envs") == {"HOST": "", "ROOT": ""}


def test_descriptions_survive_to_document_and_bind() -> None:
    """The server stores ``to_document()``; the agent binds what it stored."""
    template = load_template(
        described(args=[{"name": "TAG", "description": "tag"}], envs=["HOST"])
    )
    document = template.to_document()
    assert document["args"] == [{"name": "TAG", "description": "tag"}]
    assert document["envs"] == ["HOST"]

    again = load_template(document)
    assert again.to_document() == document
    bound = bind(again, {"TAG": "1.0"}, {"HOST": "node-1"})
    assert bound.resolved.descriptions("args") == {"TAG": "tag"}
    assert bound.steps[0].container.image == "game:1.0"


def test_described_names_are_declared_for_expressions() -> None:
    doc = described(args=[{"name": "TAG", "description": "x"}], envs=[])
    assert problems_of(doc) == {
        "steps[0].container.hostname": (
            "${{ envs.HOST }} names 'HOST', which the template does not declare in "
            "envs (declared: none); add it to envs"
        )
    }


@pytest.mark.parametrize(
    ("entry", "path", "words"),
    [
        ({"nam": "TAG"}, "args[0].nam", '"nam" is not a known field'),
        ({"description": "x"}, "args[0]", 'has no "name"; add name: NAME'),
        ({"name": "TAG", "description": 7}, "args[0].description", "got 7; quote it"),
        ({"name": "9TAG"}, "args[0]", '"9TAG" is not a usable name'),
        ({"name": 5}, "args[0]", "expected names, got 5"),
    ],
)
def test_a_bad_declaration_names_its_place(
    entry: dict[str, Any], path: str, words: str
) -> None:
    problems = problems_of(described(args=[entry], envs=["HOST"]))
    assert words in problems[path], problems


def test_a_name_declared_twice_in_either_form_is_refused() -> None:
    problems = problems_of(
        described(args=["TAG", {"name": "TAG", "description": "again"}], envs=["HOST"])
    )
    assert problems["args[1]"] == '"TAG" is declared twice; keep one'


def test_problem_type_is_shared_with_the_rest_of_the_language() -> None:
    with pytest.raises(ValidationError) as caught:
        load_template(described(args=[{"nam": "TAG"}], envs=["HOST"]))
    assert all(isinstance(p, Problem) for p in caught.value.problems)
