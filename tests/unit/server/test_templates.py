"""The template catalog and the API routes on it: listing, submitting by name, envs.

Runs the real Flask app on a real SQLite store; the dispatcher is a recorder, since no
agent takes part here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from gamepipeline.server.api import create_app
from gamepipeline.server.store import Store
from gamepipeline.server.templates import TemplateCatalog, default_templates_dir

SHIPPED = {
    "demo",
    "start-platform",
    "platform-admin-maintenance",
    "platform-user-maintenance",
    "platform-save-and-remove",
    "instance-start",
    "instance-recycle",
}
RECYCLE_ARGS = {"INSTANCE": "i-1"}


class Recorder:
    def __init__(self) -> None:
        self.woken = 0

    def wake(self) -> None:
        self.woken += 1

    def cancel_on_node(self, pipeline_id: str, node_id: str) -> None:
        raise AssertionError("no cancel here")

    def refused_registration(self, node_id: str) -> None:
        return None


def client_for(
    tmp_path: Path, folder: Path | None, envs: dict[str, str] | None = None
) -> FlaskClient:
    store = Store(tmp_path / "server.db")
    app = create_app(store, Recorder(), templates=TemplateCatalog(folder, envs))
    return app.test_client()


@pytest.fixture
def shipped() -> Path:
    folder = default_templates_dir()
    assert folder is not None
    return folder


def post(client: FlaskClient, body: dict[str, Any]) -> tuple[int, Any]:
    answer = client.post("/api/pipelines", data=json.dumps(body))
    return answer.status_code, answer.get_json()


def test_every_shipped_template_is_listed_with_its_documentation(
    tmp_path: Path, shipped: Path
) -> None:
    listed = client_for(tmp_path, shipped).get("/api/templates").get_json()

    by_name = {t["name"]: t for t in listed["templates"]}
    assert set(by_name) == SHIPPED
    for name in SHIPPED - {"demo"}:
        template = by_name[name]
        assert template["description"], name
        for entry in template["args"] + template["envs"]:
            assert entry["description"], (name, entry["name"])


def test_envs_the_server_provides_are_marked(tmp_path: Path, shipped: Path) -> None:
    client = client_for(tmp_path, shipped, {"BEAGLE_WIND_ROOT": "/srv/wind"})
    recycle = client.get("/api/templates/instance-recycle").get_json()

    assert recycle["args"] == [
        {
            "name": "INSTANCE",
            "description": "The GameInstance's id, as given to instance-start.",
        }
    ]
    [root] = recycle["envs"]
    assert root["name"] == "BEAGLE_WIND_ROOT" and root["provided_by_server"] is True
    assert recycle["document"]["steps"][0]["type"] == "remove"


def test_submission_by_name_stores_the_template_with_server_envs(
    tmp_path: Path, shipped: Path
) -> None:
    client = client_for(tmp_path, shipped, {"BEAGLE_WIND_ROOT": "/srv/wind"})

    status, created = post(
        client, {"template": "instance-recycle", "args": RECYCLE_ARGS, "node": "n1"}
    )

    assert status == 201, created
    stored = client.get(f"/api/pipelines/{created['id']}").get_json()
    assert stored["model"] == "instance-recycle"
    assert stored["node_requested"] == "n1"
    assert stored["args"] == RECYCLE_ARGS
    assert stored["envs"] == {
        "declared": ["BEAGLE_WIND_ROOT"],
        "given": ["BEAGLE_WIND_ROOT"],
    }
    assert [s["name"] for s in stored["steps"]] == ["remove", "clean"]


def test_submitted_env_wins_over_the_server_s(tmp_path: Path, shipped: Path) -> None:
    store_path = tmp_path / "server.db"
    client = client_for(tmp_path, shipped, {"BEAGLE_WIND_ROOT": "/srv/wind"})
    body = {
        "template": "instance-recycle",
        "args": RECYCLE_ARGS,
        "envs": {"BEAGLE_WIND_ROOT": "/mine"},
    }
    status, created = post(client, body)
    assert status == 201, created
    record = Store(store_path).get_pipeline(created["id"])
    assert record.env_values == {"BEAGLE_WIND_ROOT": "/mine"}


def test_unknown_template_answers_404_naming_the_shipped_ones(
    tmp_path: Path, shipped: Path
) -> None:
    status, answer = post(client_for(tmp_path, shipped), {"template": "instance-stat"})
    assert status == 404
    assert "no template named 'instance-stat'" in answer["error"]
    assert "instance-start" in answer["error"]


def test_missing_arg_of_a_named_template_names_it(
    tmp_path: Path, shipped: Path
) -> None:
    status, answer = post(
        client_for(tmp_path, shipped), {"template": "instance-recycle"}
    )
    assert status == 400
    assert [p["path"] for p in answer["problems"]] == ["args.INSTANCE"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"template": "", "args": {}}, "is not a name"),
        ({"template": "demo", "pipeline": {}}, "either template or pipeline"),
        ({"template": "demo", "colour": "red"}, "unknown envelope key 'colour'"),
    ],
)
def test_bad_template_envelope_answers_400(
    tmp_path: Path, shipped: Path, body: dict[str, Any], words: str
) -> None:
    status, answer = post(client_for(tmp_path, shipped), body)
    assert status == 400
    assert words in answer["error"]


def test_a_broken_template_is_listed_with_its_problems_and_refused(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "broken.yaml").write_text(
        "name: b\nsteps:\n  - name: s\n    container: {}\n"
    )
    client = client_for(tmp_path, folder)

    [entry] = client.get("/api/templates").get_json()["templates"]
    assert entry["name"] == "broken"
    assert entry["problems"][0]["path"] == "steps[0].container.image"
    status, answer = post(client, {"template": "broken"})
    assert status == 400
    assert "does not load" in answer["error"]


def test_without_a_folder_no_template_is_served(tmp_path: Path) -> None:
    client = client_for(tmp_path, None)
    assert client.get("/api/templates").get_json() == {"templates": []}


def test_a_number_given_as_a_template_s_arg_keeps_its_text(
    tmp_path: Path, shipped: Path
) -> None:
    client = client_for(tmp_path, shipped, {"BEAGLE_WIND_ROOT": "/srv/wind"})
    body = '{"template": "instance-recycle", "args": {"INSTANCE": 1.50}}'

    answer = client.post("/api/pipelines", data=body)

    assert answer.status_code == 201, answer.get_json()
    stored = client.get(f"/api/pipelines/{answer.get_json()['id']}").get_json()
    assert stored["args"] == {"INSTANCE": "1.50"}
