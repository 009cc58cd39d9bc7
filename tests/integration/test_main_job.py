"""The main job end to end: HTTP submit → server → agent → containers on a real engine.

Issue #2. Everything here is real: the `gamepipeline` server and agent processes, gRPC over
loopback, ansible-runner running community.docker against the Docker engine, SQLite.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from .conftest import (
    PIPELINE_LABEL,
    ROOT,
    Process,
    Server,
    free_port,
    unique_container_names,
)

pytestmark = pytest.mark.docker

DEMO = ROOT / "pipelines" / "demo.yaml"
DESIGN = ROOT / "tests" / "unit" / "pipeline" / "data" / "design-4.1.yaml"
DEMO_ENVS = {
    "BEAGLE_WIND_ROOT": "/data/wind",
    "BEAGLE_WIND_PASSWD": "pa$$ {{ 7 * 7 }} word",
    "BEAGLE_WIND_TURN_HOST": "turn.test.internal",
    "BEAGLE_WIND_TURN_PORT": "3478",
    "BEAGLE_WIND_TURN_PROTOCOL": "udp",
    "BEAGLE_WIND_TURN_USERNAME": "turn-user",
    "BEAGLE_WIND_TURN_PASSWORD": "turn-secret",
    "S3_ACCESS_KEY": "ak",
    "S3_SECRET_KEY": "sk",
    "S3_BUCKET": "bucket",
    "S3_URL": "http://127.0.0.1:9000",
}


def demo_args(port: int) -> dict[str, str]:
    return {
        "PLATFORM": "steam",
        "INSTANCE": "it-1",
        "IMAGE": "game-server:latest",
        "PORT": str(port),
        "HOSTNAME": "gamenode-it",
    }


def env_of(container: Any) -> dict[str, str]:
    pairs = (item.partition("=") for item in container.attrs["Config"]["Env"])
    return {key: value for key, _, value in pairs}


def step_states(pipeline: dict[str, Any]) -> list[str]:
    return [step["state"] for step in pipeline["steps"]]


def own_copy(path: Path, run_id: str) -> dict[str, Any]:
    """The shipped document at ``path`` as this test runs it: its container names end
    in ``-run_id`` and its fixed host ports are free ones, so that the demo's own
    containers (`make demo` keeps them running), or another test run's, are neither in
    the way nor touched. Everything else is the document as written."""
    document = unique_container_names(yaml.safe_load(path.read_text()), run_id)
    for step in document["steps"]:
        container = step["container"]
        container["ports"] = [
            re.sub(r"^\d+:", f"{free_port()}:", port)
            for port in container.get("ports", [])
        ]
    return document


def container_names(document: dict[str, Any]) -> list[str]:
    return [step["container"]["container_name"] for step in document["steps"]]


def test_demo_pipeline_runs_game_containers_as_configured(
    server: Server,
    agent: Process,
    node_id: str,
    docker_client: docker.DockerClient,
    cleanup_containers: list[str],
    run_id: str,
) -> None:
    port = free_port()
    document = own_copy(DEMO, run_id)
    db_name, game_name = container_names(document)
    cleanup_containers.extend([db_name, game_name])
    [db_port] = document["steps"][0]["container"]["ports"]
    pipeline_id = server.api.submit(
        document, args=demo_args(port), envs=DEMO_ENVS, node=node_id
    )

    final = server.api.wait(pipeline_id, timeout=180)
    assert final["state"] == "completed", final
    assert step_states(final) == ["completed", "completed"]

    game = docker_client.containers.get(game_name)
    assert game.attrs["State"]["Running"] is True
    assert game.attrs["Config"]["Hostname"] == "gamenode-it"
    env = env_of(game)
    assert env["DISPLAY_SIZEW"] == "1920"
    assert env["SELKIES_FRAMERATE"] == "30"
    assert env["SELKIES_ENABLE_RESIZE"] == "false"
    assert env["PASSWD"] == "pa$$ {{ 7 * 7 }} word"
    assert env["SELKIES_TURN_PASSWORD"] == "turn-secret"
    host = game.attrs["HostConfig"]
    assert "/data/game:/app/data:rw" in host["Binds"]
    assert host["Tmpfs"] == {"/dev/shm": "rw"}
    assert host["CapAdd"] == ["SYS_RAWIO"] or "CAP_SYS_RAWIO" in host["CapAdd"]
    assert "seccomp=unconfined" in host["SecurityOpt"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
        assert b"stand-in game server" in resp.read()

    db = docker_client.containers.get(db_name)
    assert db.attrs["State"]["Running"] is True
    [binding] = db.attrs["HostConfig"]["PortBindings"]["3306/tcp"]
    assert binding["HostPort"] == db_port.partition(":")[0]
    assert env_of(db)["MYSQL_ROOT_PASSWORD"] == "secret"
    assert db.labels["io.beaglewind.gamepipeline.pipeline"] == pipeline_id


def test_failing_commands_step_fails_pipeline_and_skips_the_rest(
    server: Server, agent: Process, node_id: str, cleanup_containers: list[str]
) -> None:
    document = {
        "name": "exit-three",
        "steps": [
            {
                "name": "prepare",
                "container": {
                    "image": "gamepipeline/stand-in:busybox",
                    "commands": ["echo preparing"],
                },
            },
            {
                "name": "break",
                "container": {
                    "image": "gamepipeline/stand-in:busybox",
                    "commands": ["echo about to fail", "exit 3", "echo never printed"],
                },
            },
            {
                "name": "never",
                "type": "service",
                "container": {"image": "gamepipeline/stand-in:busybox"},
            },
        ],
    }
    pipeline_id = server.api.submit(yaml.safe_dump(document), node=node_id)

    final = server.api.wait(pipeline_id, timeout=120)

    assert final["state"] == "failed", final
    assert step_states(final) == ["completed", "failed", "skipped"]
    broken = final["steps"][1]
    assert broken["exit_code"] == 3
    assert "about to fail" in broken["output_tail"] + broken["message"]
    assert "never printed" not in broken["output_tail"] + broken["message"]


@pytest.mark.parametrize(
    ("document", "args", "path"),
    [
        pytest.param(
            {
                "name": "x",
                "steps": [{"name": "s", "container": {"image": "a", "imgae": "b"}}],
            },
            {},
            "steps[0].container.imgae",
            id="unknown-field",
        ),
        pytest.param(
            {
                "name": "x",
                "steps": [{"name": "s", "container": {"image": "${{ args.TAG }}"}}],
            },
            {},
            "steps[0].container.image",
            id="undeclared-arg",
        ),
        pytest.param(
            {
                "name": "x",
                "args": ["TAG"],
                "steps": [{"name": "s", "container": {"image": "img:${{ args.TAG }}"}}],
            },
            {},
            "args.TAG",
            id="arg-missing-at-submission",
        ),
    ],
)
def test_bad_document_answers_400_naming_the_place_and_stores_nothing(
    server: Server, document: dict[str, Any], args: dict[str, str], path: str
) -> None:
    before = server.api.request("GET", "/api/pipelines")[2]
    body = json.dumps({"pipeline": document, "args": args}).encode()

    status, _, answer = server.api.request("POST", "/api/pipelines", body)

    assert status == 400, answer
    assert any(p["path"] == path for p in answer["problems"]), answer
    assert server.api.request("GET", "/api/pipelines")[2] == before


def test_design_document_curl_command_submits_a_pipeline(
    server: Server, tmp_path: Path
) -> None:
    """§4.2 posts the file with `curl -d @pipeline.yaml` and a JSON content type."""
    document = {
        "name": "curl",
        "args": ["GREETING"],
        "steps": [
            {
                "name": "hello",
                "container": {
                    "image": "gamepipeline/stand-in:busybox",
                    "command": ["echo", "${{ args.GREETING }}"],
                },
            }
        ],
    }
    as_json = tmp_path / "pipeline.yaml"
    as_json.write_text(json.dumps(document, indent=2))
    url = f"http://127.0.0.1:{server.http_port}/api/pipelines?arg.GREETING=hi"

    done = subprocess.run(
        ["curl", "-sS", "-i", "-X", "POST", url,
         "-H", "Content-Type: application/json", "-d", f"@{as_json}",
         "-H", f"Authorization: Bearer {server.token}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip

    head, _, body = done.stdout.partition("\n\n")  # text mode folds \r\n
    assert head.startswith("HTTP/1.1 201"), done.stdout
    pipeline_id = json.loads(body)["id"]
    assert f"Location: /api/pipelines/{pipeline_id}" in head or (
        f"/api/pipelines/{pipeline_id}" in head
    )
    stored = server.api.pipeline(pipeline_id)
    assert stored["name"] == "curl"
    assert [s["name"] for s in stored["steps"]] == ["hello"]


CURL_YAML = """\
name: curl-yaml
args: [GREETING]
steps:
  - name: hello
    container:
      image: gamepipeline/stand-in:busybox
      command: ["echo", "${{ args.GREETING }}"]
"""


def _curl_post(server: Server, data_option: str, path: Path) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{server.http_port}/api/pipelines?arg.GREETING=hi"
    done = subprocess.run(
        ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-X", "POST", url,
         "-H", "Content-Type: application/json", data_option, f"@{path}",
         "-H", f"Authorization: Bearer {server.token}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    body, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(body)


def test_yaml_sent_with_curl_data_binary_is_accepted(
    server: Server, tmp_path: Path
) -> None:
    document = tmp_path / "pipeline.yaml"
    document.write_text(CURL_YAML)

    status, answer = _curl_post(server, "--data-binary", document)

    assert status == 201, answer
    assert server.api.pipeline(answer["id"])["name"] == "curl-yaml"


def test_yaml_flattened_by_curl_d_is_refused_with_the_way_out(
    server: Server, tmp_path: Path
) -> None:
    """`curl -d @file` strips line breaks; YAML cannot survive that, so say how to send it."""
    document = tmp_path / "pipeline.yaml"
    document.write_text(CURL_YAML)
    before = server.api.request("GET", "/api/pipelines")[2]

    status, answer = _curl_post(server, "-d", document)

    assert status == 400, answer
    assert any("--data-binary" in p["message"] for p in answer["problems"]), answer
    assert server.api.request("GET", "/api/pipelines")[2] == before


def test_design_example_as_written_fails_fast_where_the_engine_lacks_a_gpu(
    server: Server,
    agent: Process,
    node_id: str,
    cleanup_containers: list[str],
    run_id: str,
) -> None:
    """§4.1 reserves a GPU for both steps; this engine has no GPU runtime. The run must
    end at once with a step error that says so, never hang (the containers themselves
    are proven by creating them: test_compiled_playbook.py). Only the names and host
    ports are this test's own (see own_copy)."""
    values = {**demo_args(free_port()), **DEMO_ENVS}
    document = own_copy(DESIGN, run_id)
    cleanup_containers.extend(container_names(document))
    args = {name: values[name] for name in document["args"]}
    envs = {name: values[name] for name in document["envs"]}

    pipeline_id = server.api.submit(document, args=args, envs=envs, node=node_id)
    final = server.api.wait(pipeline_id, timeout=60)

    assert final["state"] == "failed", final
    assert final["reason"] == "step_failed", final
    assert step_states(final) == ["failed", "skipped"]
    assert "could not select device driver" in final["steps"][0]["message"]


def test_service_that_turns_unhealthy_fails_its_step_with_the_probe_output(
    server: Server, agent: Process, node_id: str, docker_client: docker.DockerClient
) -> None:
    """The probe's output is in the step's message, and the unhealthy container does
    not stay running (a failed game must not hold its GPU and ports)."""
    document = {
        "name": "unhealthy",
        "steps": [
            {
                "name": "game",
                "type": "service",
                "container": {
                    "image": "gamepipeline/stand-in:busybox",
                    "healthcheck": {
                        "test": ["CMD", "sh", "-c", "echo no display found; exit 1"],
                        "interval": "1s",
                        "timeout": "1s",
                        "retries": 1,
                    },
                },
            }
        ],
    }
    pipeline_id = server.api.submit(yaml.safe_dump(document), node=node_id)

    final = server.api.wait(pipeline_id, timeout=60)

    assert final["state"] == "failed", final
    message = final["steps"][0]["message"]
    assert "did not become healthy" in message
    assert "no display found" in message
    left = docker_client.containers.list(
        all=True, filters={"label": f"{PIPELINE_LABEL}={pipeline_id}"}
    )
    assert left == [], [(c.name, c.status) for c in left]


def test_a_failing_step_with_a_lot_of_output_keeps_its_exit_code_and_last_lines(
    server: Server, agent: Process, node_id: str
) -> None:
    """ansible-runner drops task results past 700,000 characters by default."""
    document = {
        "name": "chatty",
        "steps": [
            {
                "name": "noisy",
                "container": {
                    "image": "gamepipeline/stand-in:busybox",
                    "commands": [
                        "i=0; while [ $i -lt 24000 ]; do"
                        " echo line $i of a very chatty build log; i=$((i+1)); done",
                        "echo 'the real error: disk full'",
                        "exit 7",
                    ],
                },
            }
        ],
    }
    pipeline_id = server.api.submit(yaml.safe_dump(document), node=node_id)

    final = server.api.wait(pipeline_id, timeout=120)

    step = final["steps"][0]
    assert final["state"] == "failed", final
    assert step["exit_code"] == 7, step
    assert "the real error: disk full" in step["output_tail"] + step["message"]
