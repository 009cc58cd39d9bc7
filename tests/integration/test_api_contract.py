"""The OpenAPI description stays true (issue 5): every route is in it, real answers fit
it, and schemathesis fuzzing from it finds no 5xx and no answer outside it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate

from gamepipeline.server.api import create_app
from gamepipeline.server.store import Store

from .conftest import Process, Server

pytestmark = pytest.mark.docker

#: Examples schemathesis generates per operation; bounded to keep `make test` short.
FUZZ_EXAMPLES = 25


def fetch_description(server: Server) -> dict[str, Any]:
    url = f"http://127.0.0.1:{server.http_port}/api/openapi.json"
    with urllib.request.urlopen(url, timeout=10) as answer:
        document: dict[str, Any] = json.load(answer)
    return document


def openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def test_every_flask_route_is_described(server: Server, tmp_path: Path) -> None:
    document = fetch_description(server)
    validate(document)  # a valid OpenAPI 3.1 document

    app = create_app(Store(tmp_path / "routes.db"), dispatch=None)  # type: ignore[arg-type]
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = openapi_path(rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            if method.lower() not in document["paths"].get(path, {}):
                missing.append(f"{method} {path}")
    assert missing == [], f"routes missing from the OpenAPI description: {missing}"


def check_answer(
    document: dict[str, Any], path: str, method: str, status: int, body: Any
) -> None:
    answers = document["paths"][path][method]["responses"]
    assert str(status) in answers, f"{method} {path} answered {status}, not described"
    content = answers[str(status)].get("content", {}).get("application/json")
    if content is None:
        return
    schema = {**content["schema"], "components": document["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)


def test_real_answers_fit_the_description(
    server: Server, agent: Process, node_id: str
) -> None:
    document = fetch_description(server)
    api = server.api
    document_yaml = (
        "name: contract\nsteps:\n  - name: s\n    container:\n"
        "      image: gamepipeline/stand-in:busybox\n      commands: [sleep 30]\n"
    )
    body = json.dumps({"pipeline": document_yaml, "node": node_id}).encode()
    status, _, submitted = api.request("POST", "/api/pipelines", body)
    check_answer(document, "/api/pipelines", "post", status, submitted)
    pipeline_id = submitted["id"]

    calls = [
        ("get", "/api/pipelines", "/api/pipelines", None),
        ("get", f"/api/pipelines/{pipeline_id}", "/api/pipelines/{pipeline_id}", None),
        ("get", "/api/pipelines/nope", "/api/pipelines/{pipeline_id}", None),
        ("get", "/api/pipelines?state=bogus", "/api/pipelines", None),
        ("post", "/api/pipelines", "/api/pipelines", b"steps: [1"),
        ("get", "/api/nodes", "/api/nodes", None),
        ("get", f"/api/nodes/{node_id}", "/api/nodes/{node_id}", None),
        ("get", "/api/templates", "/api/templates", None),
        ("get", "/api/templates/demo", "/api/templates/{name}", None),
        ("get", "/healthz", "/healthz", None),
        ("get", "/readyz", "/readyz", None),
        (
            "post",
            f"/api/pipelines/{pipeline_id}/cancel",
            "/api/pipelines/{pipeline_id}/cancel",
            b"{}",
        ),
        (
            "post",
            f"/api/pipelines/{pipeline_id}/cancel",
            "/api/pipelines/{pipeline_id}/cancel",
            b"{}",
        ),
    ]
    for method, url, path, payload in calls:
        status, _, answer = api.request(method.upper(), url, payload)
        check_answer(document, path, method, status, answer)
    # And without a token: 401 as described.
    status, _, answer = type(api)(api.base_url).request("GET", "/api/nodes")
    check_answer(document, "/api/nodes", "get", status, answer)


def test_schemathesis_finds_no_server_error_nor_undescribed_answer(
    server: Server, agent: Process, workdir: Path
) -> None:
    """Fuzz every operation from the description. Each input must get a described
    status (no 5xx, every rejection a 4xx the description lists) with a body that
    fits its schema."""
    url = f"http://127.0.0.1:{server.http_port}/api/openapi.json"
    report = workdir / "schemathesis.ndjson"
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"), "run", url,
            "--max-examples", str(FUZZ_EXAMPLES),
            "--checks", "not_a_server_error,status_code_conformance,"
            "content_type_conformance,response_schema_conformance",
            "--header", f"Authorization: Bearer {server.token}",
            "--seed", "5",
            "--phases", "examples,coverage,fuzzing",
            "--request-timeout", "20",
            "--report", "ndjson", "--report-ndjson-path", str(report),
            "--no-color",
        ],
        capture_output=True, text=True, timeout=420,
    )  # fmt: skip
    summary = done.stdout[-6000:]
    print(summary)
    assert done.returncode == 0, summary
