"""Compiled playbooks run by the real ansible-runner against the real Docker engine.

Each test renders a playbook with ``render_playbook``, runs it as the agent does and
reads the result back with ``docker inspect``: env values byte for byte (F1, F5),
the GPU request's shape on a created-not-started container (F2), tmpfs (F3),
capabilities, a failing ``commands`` step, and re-runs (F6).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ansible_runner
import docker as docker_sdk
import pytest
import yaml

from gamepipeline.ansible_plugins import action_plugins_env
from gamepipeline.pipeline import (
    LABEL_PIPELINE,
    ValidationError,
    bind,
    compile_playbook,
    load_template,
    render_playbook,
)
from gamepipeline.pipeline.compiler import DOCKER_CONTAINER

from .conftest import unique_container_names

pytestmark = pytest.mark.docker

DATA = Path(__file__).resolve().parents[1] / "unit" / "pipeline" / "data"
STAND_IN = "gamepipeline/stand-in:busybox"
INVENTORY = (
    f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}"
)

Run = Callable[[list[dict[str, Any]]], Any]


def docker(*args: str) -> str:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def inspect(name: str) -> dict[str, Any]:
    [info] = json.loads(docker("inspect", name))
    return dict(info)


def task_results(result: Any) -> dict[str, tuple[str, dict[str, Any]]]:
    """Task name → (event, module result) for every finished task."""
    finished = ("runner_on_ok", "runner_on_failed", "runner_on_skipped")
    return {
        e["event_data"]["task"]: (e["event"], e["event_data"].get("res", {}))
        for e in result.events
        if e["event"] in finished
    }


@pytest.fixture
def names(docker_client: docker_sdk.DockerClient) -> Iterator[list[str]]:
    """Names of the containers the test creates (and ids of the pipelines it runs, whose
    containers go too), made unique to the test: removed when the test ends."""
    created: list[str] = []
    yield created
    api = docker_client.api
    for name in created:
        found = api.containers(all=True, filters={"label": f"{LABEL_PIPELINE}={name}"})
        for ref in [name, *(c["Id"] for c in found)]:
            with contextlib.suppress(docker_sdk.errors.NotFound):
                api.remove_container(ref, force=True)


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    venv_bin = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", venv_bin + os.pathsep + os.environ.get("PATH", ""))

    def run_playbook(playbook: list[dict[str, Any]]) -> Any:
        private = tmp_path / uuid.uuid4().hex[:8]
        (private / "project").mkdir(parents=True)
        (private / "project" / "pipeline.yml").write_text(
            render_playbook(playbook), encoding="utf-8"
        )
        return ansible_runner.run(
            private_data_dir=str(private),
            playbook="pipeline.yml",
            inventory=INVENTORY,
            # The play's inspect tasks are GamePipeline's own action plugin.
            envvars=action_plugins_env(),
            quiet=True,
        )

    return run_playbook


def service_doc(name: str, **container: Any) -> dict[str, Any]:
    container.setdefault("image", STAND_IN)
    return {
        "name": "集成测试",
        "steps": [
            {
                "name": "服务",
                "type": "service",
                "container": {"container_name": name, **container},
            }
        ],
    }


def test_env_values_reach_the_container_byte_for_byte(
    run: Run, names: list[str], tmp_path: Path
) -> None:
    name = f"gp-it-canary-{uuid.uuid4().hex[:6]}"
    names.append(name)
    marker = tmp_path / "pwned"
    pipe = f"hi {{{{ lookup('pipe', 'touch {marker}') }}}}"
    doc = service_doc(
        name,
        environment={
            "DISPLAY_SIZEW": 1920,
            "SELKIES_ENABLE_RESIZE": False,
            "RATIO": 1.5,
            "SELKIES_ENCODER": "nvh264enc",
            "LIT_MATH": "{{ 7 * 7 }}",
            "LIT_PIPE": pipe,
            "ARG_MATH": "${{ args.MATH }}",
            "ARG_PIPE": "${{ args.PIPE }}",
            "ENV_MATH": "${{ envs.MATH }}",
            "ENV_PIPE": "${{ envs.PIPE }}",
            "ZH": "中文",
        },
        labels={"canary": "{{ 7 * 7 }}"},
        command=["sleep", "3600"],
    )
    doc["args"], doc["envs"] = ["MATH", "PIPE"], ["MATH", "PIPE"]
    values = {"MATH": "{{ 7 * 7 }}", "PIPE": pipe}
    bound = bind(load_template(doc), values, values)

    result = run(compile_playbook(bound, pipeline_id=name))

    assert result.status == "successful", task_results(result)
    info = inspect(name)
    env = dict(line.split("=", 1) for line in info["Config"]["Env"])
    assert env["DISPLAY_SIZEW"] == "1920"
    assert env["SELKIES_ENABLE_RESIZE"] == "false"
    assert env["RATIO"] == "1.5"
    assert env["SELKIES_ENCODER"] == "nvh264enc"
    for key in ("LIT_MATH", "ARG_MATH", "ENV_MATH"):
        assert env[key] == "{{ 7 * 7 }}"
    for key in ("LIT_PIPE", "ARG_PIPE", "ENV_PIPE"):
        assert env[key] == pipe
    assert env["ZH"] == "中文"
    assert info["Config"]["Labels"]["canary"] == "{{ 7 * 7 }}"
    assert info["State"]["Running"] is True
    assert not marker.exists()


def test_design_example_creates_gpu_tmpfs_and_capabilities(
    run: Run, names: list[str], run_id: str
) -> None:
    """§4.1 as written, but for the container names, which end in this test's run id:
    containers named game-db and game-server (a demo's, say) are left alone."""
    document = yaml.safe_load((DATA / "design-4.1.yaml").read_text())
    template = load_template(unique_container_names(document, run_id))
    db, game = [f"game-db-{run_id}", f"game-server-{run_id}"]
    names.extend([db, game, f"it-design-{run_id}"])
    values = {n: f"v-{n}" for n in [*template.args, *template.envs]}
    bound = bind(template, {a: values[a] for a in template.args}, values)
    playbook = compile_playbook(bound, pipeline_id=f"it-design-{run_id}")
    # Create without starting: this engine has no GPU runtime and refuses privileged.
    tasks = []
    for task in playbook[0]["tasks"]:
        if task["name"].endswith((": verify", ": running")):
            continue
        options = task.get(DOCKER_CONTAINER)
        if options and options.get("state") == "started":
            options["state"] = "present"
        tasks.append(task)
    playbook[0]["tasks"] = tasks

    result = run(playbook)

    assert result.status == "successful", task_results(result)
    assert inspect(db)["State"]["Status"] == "created"
    host = inspect(game)["HostConfig"]
    [request] = host["DeviceRequests"]
    assert request["Count"] == -1
    assert request["Capabilities"] == [["gpu"]]
    assert host["Privileged"] is True
    assert host["CapAdd"] == ["SYS_RAWIO"]
    assert "seccomp=unconfined" in host["SecurityOpt"]
    assert host["Tmpfs"] == {"/dev/shm": "rw"}
    assert host["Devices"][0]["PathOnHost"] == "/dev/dri"
    env = inspect(game)["Config"]["Env"]
    assert "DISPLAY_SIZEW=1920" in env
    assert "SELKIES_TURN_HOST=v-BEAGLE_WIND_TURN_HOST" in env


def test_gpu_request_with_driver_and_tmpfs_options_keep_their_shape(
    run: Run, names: list[str]
) -> None:
    name = f"gp-it-gpu-{uuid.uuid4().hex[:6]}"
    names.append(name)
    doc = service_doc(
        name,
        deploy={
            "resources": {
                "reservations": {
                    "devices": [
                        {"driver": "nvidia", "capabilities": ["gpu", "utility"]}
                    ]
                }
            }
        },
        tmpfs=["/dev/shm:rw,nosuid,size=1g", "/run/cache:size=512m,mode=1777"],
        cap_add=["SYS_NICE"],
    )
    playbook = compile_playbook(bind(load_template(doc), {}, {}), pipeline_id=name)
    for task in playbook[0]["tasks"]:
        if task.get(DOCKER_CONTAINER, {}).get("state") == "started":
            task[DOCKER_CONTAINER]["state"] = "present"
    playbook[0]["tasks"] = [
        t
        for t in playbook[0]["tasks"]
        if not t["name"].endswith((": verify", ": running"))
    ]

    result = run(playbook)

    assert result.status == "successful", task_results(result)
    host = inspect(name)["HostConfig"]
    [request] = host["DeviceRequests"]
    assert (request["Driver"], request["Count"]) == ("nvidia", -1)
    assert request["Capabilities"] == [["gpu", "utility"]]
    assert host["Tmpfs"] == {
        "/dev/shm": "rw,nosuid,size=1g",
        "/run/cache": "size=512m,mode=1777",
    }
    assert host["CapAdd"] == ["SYS_NICE"]


def test_failing_commands_step_reports_exit_code_and_output(
    run: Run, names: list[str]
) -> None:
    pipeline_id = f"it-exit-{uuid.uuid4().hex[:6]}"
    names.append(pipeline_id)
    doc = {
        "name": "exit",
        "steps": [
            {
                "name": "ok",
                "container": {"image": STAND_IN, "commands": ["echo ready"]},
            },
            {
                "name": "boom",
                "container": {
                    "image": STAND_IN,
                    "commands": ["echo before-failure", "exit 3", "echo never-printed"],
                },
            },
        ],
    }
    result = run(
        compile_playbook(bind(load_template(doc), {}, {}), pipeline_id=pipeline_id)
    )

    assert result.status == "failed"
    results = task_results(result)
    assert results["[step 0] ok"][0] == "runner_on_ok"
    event, res = results["[step 1] boom"]
    assert event == "runner_on_failed"
    assert res["status"] == 3
    assert "before-failure" in res["msg"]
    assert "never-printed" not in res["msg"]
    # the successful step cleaned up after itself
    assert (
        docker("ps", "-aq", "--filter", "name=^gp-" + pipeline_id + "-0$").strip() == ""
    )


def test_rerun_keeps_unchanged_container_and_recreates_changed_one(
    run: Run, names: list[str]
) -> None:
    name = f"session-{uuid.uuid4().hex[:6]}"
    names.append(name)

    def compiled(value: str, pipeline_id: str) -> list[dict[str, Any]]:
        doc = service_doc(name, environment={"LEVEL": value})
        return compile_playbook(
            bind(load_template(doc), {}, {}), pipeline_id=pipeline_id
        )

    assert run(compiled("1", "run-1")).status == "successful"
    first = inspect(name)

    assert run(compiled("1", "run-2")).status == "successful"
    again = inspect(name)
    assert again["Id"] == first["Id"]
    assert again["State"]["StartedAt"] == first["State"]["StartedAt"]

    assert run(compiled("2", "run-3")).status == "successful"
    changed = inspect(name)
    assert changed["Id"] != first["Id"]
    assert "LEVEL=2" in changed["Config"]["Env"]
    assert changed["State"]["Running"] is True


def test_foreign_container_of_the_same_name_fails_the_step_untouched(
    run: Run, names: list[str]
) -> None:
    name = f"gp-it-foreign-{uuid.uuid4().hex[:6]}"
    names.append(name)
    foreign_id = docker("run", "-d", "--name", name, STAND_IN).strip()

    doc = service_doc(name)
    result = run(
        compile_playbook(bind(load_template(doc), {}, {}), pipeline_id="it-foreign")
    )

    assert result.status == "failed"
    event, res = task_results(result)["[step 0] 服务: ownership"]
    assert event == "runner_on_failed"
    assert name in res["msg"] and "not created by GamePipeline" in res["msg"]
    info = inspect(name)
    assert info["Id"] == foreign_id
    assert info["State"]["Running"] is True


def test_local_image_is_used_and_missing_image_fails_naming_it(
    run: Run, names: list[str]
) -> None:
    name = f"gp-it-image-{uuid.uuid4().hex[:6]}"
    names.append(name)
    local = service_doc(name, image="registry.cn-qingdao.aliyuncs.com/wod/alpine:3")
    local["steps"][0]["container"]["command"] = ["sleep", "3600"]
    assert (
        run(
            compile_playbook(bind(load_template(local), {}, {}), pipeline_id="img-1")
        ).status
        == "successful"
    )

    missing_image = "registry.invalid/gamepipeline/nothing:1"
    missing = service_doc(name + "-x", image=missing_image)
    names.append(name + "-x")
    result = run(
        compile_playbook(bind(load_template(missing), {}, {}), pipeline_id="img-2")
    )
    assert result.status == "failed"
    event, res = task_results(result)["[step 0] 服务"]
    assert event == "runner_on_failed"
    assert missing_image.rsplit(":", 1)[0] in res["msg"]


CANARIES = ("{{ 7 * 7 }}", "{% if true %}x{% endif %}", "{{ lookup('pipe', 'id') }}")


@pytest.mark.parametrize("canary", CANARIES)
def test_template_syntax_reaches_every_free_text_field_as_written(
    run: Run, names: list[str], tmp_path: Path, canary: str
) -> None:
    """F5 through the fields that take free text: command, entrypoint, working_dir,
    volumes (both sides), labels, env, and a `commands` script, as literals and as
    args; the created container and the script's output hold exactly those bytes."""
    name = f"gp-it-fields-{uuid.uuid4().hex[:6]}"
    names.append(name)
    host_dir = tmp_path / f"host {canary}"
    host_dir.mkdir()
    doc = service_doc(
        name,
        entrypoint=["/bin/sh", "-c", "sleep 3600", canary],
        command=["${{ args.CANARY }}", canary],
        working_dir=f"/work/{canary}",
        volumes=[f"{host_dir}:/in/{canary}"],
        labels={"literal": canary, "arg": "${{ args.CANARY }}"},
        environment={"CANARY": "${{ args.CANARY }}"},
    )
    doc["args"] = ["CANARY"]
    doc["steps"].append(
        {
            "name": "script",
            "container": {
                "image": STAND_IN,
                "volumes": [f"{host_dir}:/out"],
                "commands": [
                    f'printf "%s" "{canary}" > /out/literal',
                    "printf '%s' \"$CANARY\" > /out/arg",
                ],
                "environment": {"CANARY": "${{ args.CANARY }}"},
            },
        }
    )
    bound = bind(load_template(doc), {"CANARY": canary}, {})

    result = run(compile_playbook(bound, pipeline_id=name))

    assert result.status == "successful", task_results(result)
    info = inspect(name)
    config = info["Config"]
    assert config["Entrypoint"] == ["/bin/sh", "-c", "sleep 3600", canary]
    assert config["Cmd"] == [canary, canary]
    assert config["WorkingDir"] == f"/work/{canary}"
    assert config["Labels"]["literal"] == canary
    assert config["Labels"]["arg"] == canary
    assert f"CANARY={canary}" in config["Env"]
    assert f"{host_dir}:/in/{canary}:rw" in info["HostConfig"]["Binds"]
    assert (host_dir / "literal").read_text() == canary
    assert (host_dir / "arg").read_text() == canary


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("container_name", "game-{{ 7 * 7 }}"),
        ("hostname", "{{ 7 * 7 }}"),
        ("image", "game-server:{{ 7 * 7 }}"),
        ("ports", ["{{ 7 * 7 }}:80"]),
    ],
)
def test_template_syntax_in_a_field_with_a_grammar_is_refused_by_name(
    field: str, value: Any
) -> None:
    """Names, hostnames, images and ports cannot hold braces at all: the document is
    refused naming the field, before any playbook exists."""
    doc = service_doc("gp-it-refused", **{field: value})

    with pytest.raises(ValidationError) as caught:
        load_template(doc)

    paths = [p.path for p in caught.value.problems]
    assert any(path.startswith(f"steps[0].container.{field}") for path in paths), paths


@pytest.mark.parametrize(
    ("probe", "outcome"),
    [("exit 0", "successful"), ("exit 1", "failed")],
    ids=["turns-healthy", "turns-unhealthy"],
)
def test_service_with_a_healthcheck_is_done_when_healthy_and_fails_when_unhealthy(
    run: Run, names: list[str], probe: str, outcome: str
) -> None:
    name = f"gp-it-health-{uuid.uuid4().hex[:6]}"
    names.append(name)
    doc = service_doc(
        name,
        healthcheck={
            "test": ["CMD", "sh", "-c", probe],
            "interval": "1s",
            "timeout": "1s",
            "retries": 1,
            "start_period": "0s",
        },
    )
    bound = bind(load_template(doc), {}, {})

    result = run(compile_playbook(bound, pipeline_id=name))

    assert result.status == outcome, task_results(result)
    health = inspect(name)["State"]["Health"]["Status"]
    assert health == ("healthy" if outcome == "successful" else "unhealthy")


SHELL_PAYLOADS = (
    "a\nb",
    "x; touch /out/pwned",
    "$(touch /out/pwned)",
    "`touch /out/pwned`",
    'it\'s "quoted" \\ $HOME *',
)


@pytest.mark.parametrize("payload", SHELL_PAYLOADS)
def test_an_arg_in_a_commands_line_is_text_never_shell_code(
    run: Run, names: list[str], tmp_path: Path, payload: str
) -> None:
    """Found by a new user: an arg pasted into a `commands` line ran as code. Each
    value, unquoted, in double and in single quotes, arrives as exactly one word."""
    name = f"gp-it-shell-{uuid.uuid4().hex[:6]}"
    names.append(f"gp-{name}-0")
    doc = {
        "name": "shell",
        "args": ["A"],
        "steps": [
            {
                "name": "script",
                "container": {
                    "image": STAND_IN,
                    "volumes": [f"{tmp_path}:/out"],
                    "commands": [
                        "printf '[%s]' ${{ args.A }} > /out/unquoted",
                        'printf "[%s]" "<${{ args.A }}>" > /out/double',
                        "printf '[%s]' '<${{ args.A }}>' > /out/single",
                    ],
                },
            }
        ],
    }
    bound = bind(load_template(doc), {"A": payload}, {})

    result = run(compile_playbook(bound, pipeline_id=name))

    assert result.status == "successful", task_results(result)
    assert (tmp_path / "unquoted").read_text() == f"[{payload}]"
    assert (tmp_path / "double").read_text() == f"[<{payload}>]"
    assert (tmp_path / "single").read_text() == f"[<{payload}>]"
    assert not (tmp_path / "pwned").exists()
