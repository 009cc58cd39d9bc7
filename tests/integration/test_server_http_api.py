"""The server's HTTP API over real HTTP (waitress) with a real SQLite store (issue #2)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from gamepipeline.server.app import RunningServer

from .server_peer import GAME_DOCUMENT, Api, start

pytestmark = pytest.mark.timeout(60)

ORIGINAL = Path(__file__).resolve().parents[1] / "unit" / "pipeline" / "data"
TEST_PIPELINE = """\
name: 测试流水线
description: 用于测试
steps:
  - name: 测试步骤1
    type: container
    container:
      image: alpine:3
      commands:
        - echo one
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start(tmp_path / "server.db")
    yield running
    running.stop()


@pytest.fixture
def api(server: RunningServer) -> Api:
    return Api(server)


def post(
    api: Api, body: bytes | str, query: str = "", **headers: str
) -> requests.Response:
    data = body.encode() if isinstance(body, str) else body
    return requests.post(
        api.url(f"/api/pipelines{query}"), data=data, headers=headers, timeout=5
    )


# --- the forms a submission takes ----------------------------------------------------------


def test_yaml_sent_with_a_json_content_type_is_accepted_as_the_design_document_shows(
    api: Api,
) -> None:
    answer = post(api, TEST_PIPELINE, **{"Content-Type": "application/json"})

    assert answer.status_code == 201, answer.text
    pipeline_id = answer.json()["id"]
    assert answer.headers["Location"] == f"/api/pipelines/{pipeline_id}"
    shown = api.pipeline(pipeline_id)
    assert (shown["name"], shown["state"]) == ("测试流水线", "pending")
    assert [s["name"] for s in shown["steps"]] == ["测试步骤1"]


def test_args_envs_and_node_come_as_query_parameters(api: Api) -> None:
    answer = post(
        api,
        yaml.safe_dump(GAME_DOCUMENT),
        "?arg.PORT=9000&env.TOKEN=t0k&node=node-q",
        **{"Content-Type": "application/x-yaml"},
    )

    assert answer.status_code == 201, answer.text
    shown = api.pipeline(answer.json()["id"])
    assert shown["args"] == {"PORT": "9000"}
    assert shown["envs"]["given"] == ["TOKEN"]
    assert shown["node_requested"] == "node-q"


def test_envelope_takes_the_document_as_yaml_text_and_numbers_as_values(
    api: Api,
) -> None:
    envelope = {"pipeline": yaml.safe_dump(GAME_DOCUMENT), "args": {"PORT": 8080}}

    answer = post(api, json.dumps(envelope), **{"Content-Type": "application/json"})

    assert answer.status_code == 201, answer.text
    assert api.pipeline(answer.json()["id"])["args"] == {"PORT": "8080"}


def test_json_document_body_is_accepted(api: Api) -> None:
    answer = post(api, json.dumps(GAME_DOCUMENT), "?arg.PORT=1")
    assert answer.status_code == 201, answer.text


def test_envs_left_out_are_left_to_the_node(api: Api) -> None:
    answer = post(api, json.dumps(GAME_DOCUMENT), "?arg.PORT=1")

    shown = api.pipeline(answer.json()["id"])
    assert shown["envs"] == {"declared": ["TOKEN"], "given": []}


def test_the_platforms_original_template_is_accepted_with_its_args(api: Api) -> None:
    text = (ORIGINAL / "start-platform.yaml").read_text()
    query = "?" + "&".join(
        f"arg.{name}=x" for name in ("PLATFORM", "INSTANCE", "IMAGE", "HOSTNAME")
    )

    answer = post(api, text, query + "&arg.PORT=8080")

    assert answer.status_code == 201, answer.text


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "query", "path"),
    [
        pytest.param(
            {
                "name": "x",
                "steps": [{"name": "s", "container": {"image": "a", "imgae": "b"}}],
            },
            "",
            "steps[0].container.imgae",
            id="unknown-field",
        ),
        pytest.param(
            {
                "name": "x",
                "steps": [{"name": "s", "container": {"image": "${{ args.T }}"}}],
            },
            "",
            "steps[0].container.image",
            id="undeclared-arg",
        ),
        pytest.param(GAME_DOCUMENT, "", "args.PORT", id="arg-missing"),
        pytest.param(
            GAME_DOCUMENT, "?arg.PORT=1&arg.EXTRA=2", "args.EXTRA", id="arg-extra"
        ),
        pytest.param(
            GAME_DOCUMENT, "?arg.PORT=1&color=red", "color", id="unknown-query"
        ),
        pytest.param(
            {"pipeline": GAME_DOCUMENT, "args": {"PORT": "1"}, "nodes": "n"},
            "",
            "nodes",
            id="unknown-envelope-key",
        ),
        pytest.param(
            {"pipeline": GAME_DOCUMENT, "args": {"PORT": None}},
            "",
            "args.PORT",
            id="null-arg",
        ),
    ],
)
def test_bad_submission_answers_400_naming_the_place_and_stores_nothing(
    api: Api, body: dict[str, Any], query: str, path: str
) -> None:
    answer = post(api, json.dumps(body), query, **{"Content-Type": "application/json"})

    assert answer.status_code == 400, answer.text
    error = answer.json()
    assert error["error"]
    assert any(p["path"] == path for p in error["problems"]), error
    assert api.pipelines() == []


@pytest.mark.parametrize(
    "body",
    [b"", b"name: [unclosed", b"- just\n- a list\n", b"\xff\xfe not text"],
    ids=["empty", "yaml-syntax", "not-a-mapping", "not-utf8"],
)
def test_unreadable_body_answers_400_with_a_problem_list(api: Api, body: bytes) -> None:
    answer = post(api, body)

    assert answer.status_code == 400, answer.text
    assert answer.json()["problems"]
    assert api.pipelines() == []


BROKEN_JSON = """\
{
  "name": "x",
  "steps": [
    {"name": "a" "container": {"image": "busybox"}}
  ]
}
"""


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8"]
)
def test_malformed_json_sent_as_json_is_reported_as_json_at_its_line_and_column(
    api: Api, content_type: str
) -> None:
    answer = post(api, BROKEN_JSON, **{"Content-Type": content_type})

    assert answer.status_code == 400, answer.text
    assert answer.json() == {
        "error": "the pipeline document cannot be read: request body: the document "
        "is not valid JSON at line 4, column 18: Expecting ',' delimiter",
        "problems": [
            {
                "path": "request body",
                "message": "the document is not valid JSON at line 4, column 18: "
                "Expecting ',' delimiter",
            }
        ],
    }
    assert api.pipelines() == []


def test_a_json_envelope_cut_short_is_reported_as_json(api: Api) -> None:
    envelope = json.dumps({"pipeline": GAME_DOCUMENT, "args": {"PORT": "1"}})

    answer = post(api, envelope[:-2], **{"Content-Type": "application/json"})

    assert answer.status_code == 400, answer.text
    [problem] = answer.json()["problems"]
    assert problem["message"].startswith("the document is not valid JSON at line 1, ")


def test_the_same_bytes_sent_as_yaml_keep_their_yaml_error(api: Api) -> None:
    answer = post(api, BROKEN_JSON, **{"Content-Type": "application/yaml"})

    assert answer.status_code == 400, answer.text
    [problem] = answer.json()["problems"]
    assert problem["path"] == "request body"
    assert problem["message"].startswith("the document is not valid YAML at line 4")


# --- reading ----------------------------------------------------------------------------------


def test_list_is_newest_first_and_filters_by_state_and_node(api: Api) -> None:
    older = api.submit(node="node-a")
    newer = api.submit(node="node-b")
    assert api.cancel(older).status_code == 200

    assert [p["id"] for p in api.pipelines()] == [newer, older]
    assert [p["id"] for p in api.pipelines("?state=canceled")] == [older]
    assert [p["id"] for p in api.pipelines("?node=node-b")] == [newer]
    assert [p["id"] for p in api.pipelines("?limit=1")] == [newer]


def test_list_with_an_unknown_state_answers_400_naming_the_states(api: Api) -> None:
    answer = requests.get(api.url("/api/pipelines?state=done"), timeout=5)

    assert answer.status_code == 400
    assert "completed" in answer.json()["error"]


def test_unknown_pipeline_answers_404_in_json(api: Api) -> None:
    answer = requests.get(api.url("/api/pipelines/missing"), timeout=5)

    assert answer.status_code == 404
    assert "missing" in answer.json()["error"]


def test_unknown_route_answers_json(api: Api) -> None:
    answer = requests.get(api.url("/api/nothing"), timeout=5)

    assert answer.status_code == 404
    assert answer.json()["error"]


def test_healthz_answers_ok(api: Api) -> None:
    answer = requests.get(api.url("/healthz"), timeout=5)

    assert answer.status_code == 200 and answer.json()["status"] == "ok"


# --- cancel -----------------------------------------------------------------------------------


def test_cancel_of_a_pending_pipeline_ends_it_at_once_and_skips_its_steps(
    api: Api,
) -> None:
    pipeline_id = api.submit(node="node-away")

    answer = api.cancel(pipeline_id)

    assert answer.status_code == 200, answer.text
    shown = answer.json()
    assert (shown["state"], shown["reason"]) == ("canceled", "canceled")
    assert [s["state"] for s in shown["steps"]] == ["skipped", "skipped"]
    assert shown["finished_at"]


def test_cancel_of_a_finished_pipeline_answers_409(api: Api) -> None:
    pipeline_id = api.submit(node="node-away")
    api.cancel(pipeline_id)

    answer = api.cancel(pipeline_id)

    assert answer.status_code == 409
    assert "already ended canceled" in answer.json()["error"]


def test_cancel_of_an_unknown_pipeline_answers_404(api: Api) -> None:
    assert api.cancel("missing").status_code == 404


# --- inputs found by trying to break it ----------------------------------------------------


def _envelope(document: dict[str, Any], **extra: Any) -> str:
    # json.dumps writes a lone surrogate as the \ud800 escape, as a client would send it.
    return json.dumps({"pipeline": document, **extra})


@pytest.mark.parametrize(
    ("document", "extra", "path"),
    [
        pytest.param(
            {"name": "s\ud800", "steps": [{"name": "a", "container": {"image": "i"}}]},
            {},
            "pipeline.name",
            id="surrogate-in-document",
        ),
        pytest.param(
            {
                "name": "s",
                "envs": ["E"],
                "steps": [{"name": "a", "container": {"image": "i"}}],
            },
            {"envs": {"E": "\ud800abcd"}},
            "envs.E",
            id="surrogate-in-env",
        ),
        pytest.param(
            {
                "name": "s",
                "timeout": 10**30,
                "steps": [{"name": "a", "container": {"image": "i"}}],
            },
            {},
            "timeout",  # refused by the field's own bound, naming it
            id="number-beyond-64-bits",
        ),
        pytest.param(
            {
                "name": "s",
                "steps": [
                    {
                        "name": "a",
                        "container": {"image": "i", "ulimits": {"nofile": 10**30}},
                    }
                ],
            },
            {},
            "pipeline.steps[0].container.ulimits.nofile.soft",
            id="number-beyond-64-bits-kept-as-a-number",
        ),
        pytest.param(
            {
                "name": "s",
                "steps": [
                    {
                        "name": "a",
                        "timeout": "99999999999h",
                        "container": {"image": "i"},
                    }
                ],
            },
            {},
            "steps[0].timeout",
            id="duration-beyond-a-year",
        ),
        pytest.param(
            {
                "name": "s",
                "steps": [
                    {"name": "a", "container": {"image": "i", "commands": ["a\x00b"]}}
                ],
            },
            {},
            "pipeline.steps[0].container.commands[0]",
            id="nul-in-a-command",
        ),
        pytest.param(
            {
                "name": "s",
                "args": ["A"],
                "steps": [{"name": "a", "container": {"image": "i"}}],
            },
            {"args": {"A": "x\x00y"}},
            "args.A",
            id="nul-in-an-arg",
        ),
        pytest.param(
            {
                "name": "s",
                "timeout": float("nan"),
                "steps": [{"name": "a", "container": {"image": "i"}}],
            },
            {},
            "pipeline.timeout",
            id="nan",
        ),
        pytest.param(
            {"name": "s", "steps": [{"name": "a", "container": {"image": "i"}}]},
            {"node": " node-a "},
            "node",
            id="node-id-with-spaces",
        ),
        pytest.param(
            {"name": "s", "steps": [{"name": "a", "container": {"image": "i"}}]},
            {"node": "\u202enode"},
            "node",
            id="node-id-with-a-direction-mark",
        ),
    ],
)
def test_text_or_numbers_that_cannot_be_stored_answer_400_not_500(
    api: Api, document: dict[str, Any], extra: dict[str, Any], path: str
) -> None:
    answer = post(
        api, _envelope(document, **extra), "", **{"Content-Type": "application/json"}
    )

    assert answer.status_code == 400, answer.text
    assert any(p["path"] == path for p in answer.json()["problems"]), answer.json()
    assert api.pipelines() == []


def test_a_rejected_value_never_echoes_an_env_secret(api: Api) -> None:
    """Envs may be the server's own secrets; a grammar error must not show them."""
    secret = "TopSecretSrvKey"
    document = {
        "name": "leak",
        "envs": ["KEY"],
        "steps": [{"name": "a", "container": {"image": "x/${{ envs.KEY }}:1",
                                              "ports": ["${{ envs.KEY }}:80"]}}],
    }  # fmt: skip

    answer = post(
        api,
        _envelope(document, envs={"KEY": secret}),
        "",
        **{"Content-Type": "application/json"},
    )

    assert answer.status_code == 400, answer.text
    assert secret not in answer.text
    assert "***" in answer.text


def test_a_pipeline_for_a_node_that_never_connected_says_so(api: Api) -> None:
    answer = post(api, json.dumps(GAME_DOCUMENT), "?arg.PORT=1&node=gamenode-typo")
    assert answer.status_code == 201, answer.text
    pipeline_id = answer.json()["id"]

    deadline = time.monotonic() + 10
    while "never connected" not in api.pipeline(pipeline_id)["message"]:
        assert time.monotonic() < deadline, api.pipeline(pipeline_id)
        time.sleep(0.05)

    waiting = api.pipeline(pipeline_id)
    assert waiting["state"] == "pending"
    assert "gamenode-typo" in waiting["message"]
    assert "check the node id" in waiting["message"]


def test_a_query_parameter_given_twice_answers_400_naming_it(api: Api) -> None:
    answer = post(api, _envelope(GAME_DOCUMENT), "?arg.PORT=1&arg.PORT=2")

    assert answer.status_code == 400, answer.text
    assert answer.json()["problems"][0]["path"] == "arg.PORT"
    assert api.pipelines() == []


def test_long_and_written_numbers_in_a_yaml_environment_are_accepted_as_text(
    api: Api, tmp_path: Path
) -> None:
    """A 20-digit number in ``environment`` is the text of an env value, not a number
    SQLite must hold; the stored document keeps every number as it was written."""
    document = (
        "name: numbers\nsteps:\n  - name: s\n    container:\n      image: i\n"
        "      environment: {BIG: 12345678901234567890, RATE: 1.50, MASK: 0x10}\n"
    )
    answer = post(api, document, **{"Content-Type": "application/yaml"})
    assert answer.status_code == 201, answer.text

    with sqlite3.connect(tmp_path / "server.db") as conn:
        (stored,) = conn.execute(
            "SELECT document FROM pipelines WHERE id = ?", (answer.json()["id"],)
        ).fetchone()
    environment = json.loads(stored)["steps"][0]["container"]["environment"]
    assert environment == {
        "BIG": "12345678901234567890",
        "RATE": "1.50",
        "MASK": "0x10",
    }


def test_a_long_number_where_a_number_is_meant_is_still_refused(api: Api) -> None:
    document = (
        "name: numbers\nsteps:\n  - name: s\n    container:\n      image: i\n"
        "      ulimits: {nofile: 12345678901234567890}\n"
    )
    answer = post(api, document, **{"Content-Type": "application/yaml"})
    assert answer.status_code == 400, answer.text
    assert "too large a number" in answer.text
    assert api.pipelines() == []


# --- the query and the envelope ----------------------------------------------------------


def test_a_node_named_by_the_query_and_another_by_the_envelope_answers_400(
    api: Api,
) -> None:
    answer = post(
        api,
        _envelope(GAME_DOCUMENT, args={"PORT": "1"}, node="nu-node2"),
        "?node=nu-node1",
        **{"Content-Type": "application/json"},
    )

    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert "'nu-node1'" in error and "'nu-node2'" in error, error
    assert answer.json()["problems"][0]["path"] == "node"
    assert api.pipelines() == []


def test_the_same_node_in_query_and_envelope_is_accepted(api: Api) -> None:
    answer = post(
        api,
        _envelope(GAME_DOCUMENT, args={"PORT": "1"}, node="nu-node1"),
        "?node=nu-node1",
        **{"Content-Type": "application/json"},
    )
    assert answer.status_code == 201, answer.text
    assert api.pipeline(answer.json()["id"])["node_requested"] == "nu-node1"


def test_an_unknown_envelope_key_lists_every_accepted_key(api: Api) -> None:
    answer = post(
        api,
        _envelope(GAME_DOCUMENT, args={"PORT": "1"}, colour="red"),
        **{"Content-Type": "application/json"},
    )

    assert answer.status_code == 400, answer.text
    message = answer.json()["problems"][0]["message"]
    for key in ("pipeline", "template", "args", "envs", "node"):
        assert key in message.split("; use ")[1], message


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ("?foo=1", "foo"),
        ("?state=running&stat=failed", "stat"),
        ("?state=running&state=failed", "state"),
        ("?node=a&node=b", "node"),
    ],
)
def test_list_with_an_unknown_or_repeated_parameter_answers_400_naming_it(
    api: Api, query: str, path: str
) -> None:
    api.submit()

    answer = requests.get(api.url(f"/api/pipelines{query}"), timeout=5)

    assert answer.status_code == 400, answer.text
    assert [p["path"] for p in answer.json()["problems"]] == [path]
    assert (
        repr(path) in answer.json()["error"]
        or "more than once" in answer.json()["error"]
    )


def test_the_openapi_document_says_list_parameters_come_once(api: Api) -> None:
    document = requests.get(api.url("/api/openapi.json"), timeout=5).json()
    listing = document["paths"]["/api/pipelines"]["get"]
    assert "400" in listing["responses"]
    assert "twice" in listing["description"]
    state = next(p for p in listing["parameters"] if p["name"] == "state")
    assert state["schema"]["enum"]  # one state, not an array


def test_numbers_in_a_json_envelope_keep_their_text(api: Api, tmp_path: Path) -> None:
    body = (
        '{"pipeline": {"name": "n", "args": ["RATE"], "steps": [{"name": "s", '
        '"container": {"image": "i", "environment": {"A": 1.50, "B": 1e3, '
        '"C": 12345678901234567890, "R": "${{ args.RATE }}"}}}]}, '
        '"args": {"RATE": 2.50}}'
    )
    answer = post(api, body, **{"Content-Type": "application/json"})
    assert answer.status_code == 201, answer.text
    pipeline_id = answer.json()["id"]

    assert api.pipeline(pipeline_id)["args"] == {"RATE": "2.50"}
    with sqlite3.connect(tmp_path / "server.db") as conn:
        (stored,) = conn.execute(
            "SELECT document FROM pipelines WHERE id = ?", (pipeline_id,)
        ).fetchone()
    environment = json.loads(stored)["steps"][0]["container"]["environment"]
    assert environment["A"] == "1.50"
    assert environment["B"] == "1e3"
    assert environment["C"] == "12345678901234567890"
