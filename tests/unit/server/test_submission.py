"""Reading a submission: the document's forms, args, envs and the node."""

from __future__ import annotations

import json

import pytest
import yaml

from gamepipeline.server.errors import InvalidRequest
from gamepipeline.server.submission import prepare, read_submission

DOCUMENT = {
    "name": "game",
    "envs": ["TOKEN"],
    "args": ["PORT"],
    "steps": [
        {"name": "s", "container": {"image": "img", "ports": ["${{ args.PORT }}:80"]}}
    ],
}


def test_bare_yaml_document_with_query_values() -> None:
    submission = read_submission(
        yaml.safe_dump(DOCUMENT).encode(),
        {"arg.PORT": "8080", "env.TOKEN": "t", "node": "n1"},
    )

    assert submission.document == DOCUMENT
    assert (submission.args, submission.envs, submission.node) == (
        {"PORT": "8080"},
        {"TOKEN": "t"},
        "n1",
    )


def test_envelope_values_become_text_and_query_values_win() -> None:
    body = {"pipeline": DOCUMENT, "args": {"PORT": 80}, "envs": {"FLAG": False}}

    submission = read_submission(json.dumps(body).encode(), {"arg.PORT": "81"})

    assert submission.args == {"PORT": "81"}
    assert submission.envs == {"FLAG": "false"}


def test_prepare_keeps_only_declared_env_values() -> None:
    submission = read_submission(
        json.dumps({"pipeline": DOCUMENT, "args": {"PORT": "1"}}).encode(),
        {"env.TOKEN": "t", "env.OTHER": "x"},
    )

    new = prepare(submission)

    assert new.env_values == {"TOKEN": "t"}
    assert new.steps == [("s", "container")]
    assert (new.declared_args, new.declared_envs) == (["PORT"], ["TOKEN"])


def test_missing_arg_is_a_problem_but_a_missing_env_is_left_to_the_node() -> None:
    without_arg = read_submission(json.dumps(DOCUMENT).encode(), {})
    without_env = read_submission(json.dumps(DOCUMENT).encode(), {"arg.PORT": "1"})

    with pytest.raises(InvalidRequest) as caught:
        prepare(without_arg)
    assert [p.path for p in caught.value.problems] == ["args.PORT"]
    assert prepare(without_env).env_values == {}


@pytest.mark.parametrize(
    ("body", "query", "path"),
    [
        (b"  ", {}, ""),
        (json.dumps({"pipeline": 5}).encode(), {}, "pipeline"),
        (json.dumps({"pipeline": DOCUMENT, "args": ["PORT"]}).encode(), {}, "args"),
        (json.dumps({"pipeline": DOCUMENT, "node": ""}).encode(), {}, "node"),
        (json.dumps(DOCUMENT).encode(), {"node": ""}, "node"),
        (json.dumps(DOCUMENT).encode(), {"args.PORT": "1"}, "args.PORT"),
    ],
    ids=[
        "blank",
        "pipeline-number",
        "args-list",
        "empty-node",
        "empty-node-query",
        "typo",
    ],
)
def test_malformed_submission_names_the_place(
    body: bytes, query: dict[str, str], path: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        read_submission(body, query)

    assert path in [p.path for p in caught.value.problems]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (
            b'{"pipeline": {"name": "g", "steps": []}, "node": "n1", "node": "n2"}',
            "the key node is written twice (first on line 1)",
        ),
        (
            b'{"pipeline": {"name": "g", "steps": [{"name": "s", "container": {\n'
            b'  "image": "img",\n'
            b'  "environment": {"FOO": "1",\n'
            b'                  "FOO": "2"}}}]}}',
            "the key pipeline.steps[0].container.environment.FOO is written twice "
            "(first on line 3)",
        ),
    ],
    ids=["envelope", "document-in-envelope"],
)
def test_a_key_written_twice_in_a_json_body_is_refused_by_its_path(
    body: bytes, named: str
) -> None:
    """As in YAML: the last one does not silently win (the node, an env value)."""
    with pytest.raises(InvalidRequest) as caught:
        read_submission(body, {})

    assert named in str(caught.value), caught.value
