"""The shipped templates and the platform team's originals, run for real (issue #6).

Everything is real: the `gamepipeline` server and agent processes, templates submitted by
name through the HTTP API, ansible-runner and community.docker on the Docker engine, and
an S3 endpoint (moto's server) that the containers reach. The stand-in
devops-minio image's `mc` speaks S3 to it, so downloads and uploads move real bytes.

Where the endpoint lives: the containers of a step run on Docker's default bridge, as
the templates leave them, so moto listens on the bridge's gateway address (this host's
own docker0 address) on a free port, and S3_URL points there.

This engine has no GPU runtime and refuses privileged containers: a step that starts the
GPU game container must fail fast with the engine's reason. Each such container is also
created (not started) from the compiled template and inspected, and the flows that need
it running (save-and-remove, recycle) start it from the same template with the GPU
options taken out.
"""

from __future__ import annotations

import contextlib
import copy
import io
import ipaddress
import json
import os
import shutil
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import ansible_runner
import boto3
import docker
import pytest
import yaml

from gamepipeline.ansible_plugins import action_plugins_env
from gamepipeline.pipeline import bind, compile_playbook, load_template, render_playbook
from gamepipeline.pipeline.compiler import DOCKER_CONTAINER

from .conftest import ROOT, Process, Server, free_port, start_agent, start_server

pytestmark = pytest.mark.docker

PIPELINES = ROOT / "pipelines"
ORIGINALS = ROOT / "tests" / "data" / "original"
BUCKET = "beaglewind"
ACCESS_KEY, SECRET_KEY = "test-access", "test-secret"
NODE_ROOT_ENV = "BEAGLE_WIND_ROOT"
GPU_TEMPLATES = {
    "start-platform": "game",
    "instance-start": "game",
    "platform-admin-maintenance": "platform",
    "platform-user-maintenance": "platform",
}
STREAM_ENVS = {
    "BEAGLE_WIND_PASSWD": "node-pass",
    "BEAGLE_WIND_TURN_HOST": "turn.test.internal",
    "BEAGLE_WIND_TURN_PORT": "3478",
    "BEAGLE_WIND_TURN_PROTOCOL": "udp",
    "BEAGLE_WIND_TURN_USERNAME": "turn-user",
    "BEAGLE_WIND_TURN_PASSWORD": "turn-secret",
}
INVENTORY = (
    f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}"
)


# -- the local S3 endpoint -------------------------------------------------------------


def bridge_gateway(client: docker.DockerClient) -> str:
    """This host's address on Docker's default bridge, where containers reach it."""
    [config] = client.networks.get("bridge").attrs["IPAM"]["Config"]
    if config.get("Gateway"):
        return str(config["Gateway"])
    return str(next(ipaddress.ip_network(config["Subnet"]).hosts()))


class S3:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client = boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=BUCKET, Key=key, Body=data)

    def get(self, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        return body


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    client = docker.from_env()
    host = bridge_gateway(client)
    client.close()
    port = free_port(host)
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    moto = Process(
        "moto",
        [str(Path(sys.executable).parent / "moto_server"), "-H", host, "-p", str(port)],
        log,
    )
    moto.start()
    endpoint = S3(f"http://{host}:{port}")
    deadline = time.monotonic() + 30
    while True:
        try:
            endpoint.client.create_bucket(Bucket=BUCKET)
            break
        except Exception:
            if time.monotonic() > deadline:
                moto.stop()
                pytest.fail(f"moto did not start; its log:\n{moto.tail()}")
            time.sleep(0.3)
    yield endpoint
    moto.stop()


# -- server and agent --------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_root() -> Iterator[Path]:
    """BEAGLE_WIND_ROOT as the node's agent sets it: below /data, where a GameNode
    keeps it (and where a node's policy lets steps mount host folders)."""
    root = Path("/data/gamepipeline-tests") / uuid.uuid4().hex[:8]
    root.mkdir(parents=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, s3: S3, node_root: Path
) -> Iterator[tuple[Server, str]]:
    """A server whose configuration gives the S3 envs, and one agent that sets the
    node's own BEAGLE_WIND_ROOT."""
    workdir = tmp_path_factory.mktemp("templates")
    config = workdir / "server.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "templates_dir": str(PIPELINES),
                "envs": {
                    "S3_URL": s3.url,
                    "S3_ACCESS_KEY": ACCESS_KEY,
                    "S3_SECRET_KEY": SECRET_KEY,
                    "S3_BUCKET": BUCKET,
                },
            }
        )
    )
    server = start_server(workdir, "--config", str(config))
    node_id = f"node-{uuid.uuid4().hex[:8]}"
    agent = start_agent(
        workdir, server, node_id, "--env", f"{NODE_ROOT_ENV}={node_root}"
    )
    yield server, node_id
    agent.stop()
    server.stop()
    print(f"--- server log ---\n{server.tail()}\n--- agent log ---\n{agent.tail()}")


@pytest.fixture
def containers(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Names of containers to remove when the test ends."""
    names: list[str] = []
    yield names
    for name in names:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.containers.get(name).remove(force=True)


def run_template(
    node: tuple[Server, str],
    template: str,
    args: dict[str, str],
    envs: dict[str, str] | None = None,
) -> dict[str, Any]:
    server, node_id = node
    body: dict[str, Any] = {"template": template, "args": args, "node": node_id}
    # A wrong root on purpose: the node's own BEAGLE_WIND_ROOT must win.
    body["envs"] = {NODE_ROOT_ENV: "/nonexistent/submitted-root", **(envs or {})}
    status, _, answer = server.api.request(
        "POST", "/api/pipelines", json.dumps(body).encode()
    )
    assert status == 201, answer
    return server.api.wait(answer["id"], timeout=240)


def run_document(
    node: tuple[Server, str], document: str | dict[str, Any], args: dict[str, str],
    envs: dict[str, str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    server, node_id = node
    pipeline_id = server.api.submit(document, args=args, envs=envs, node=node_id)
    return server.api.wait(pipeline_id, timeout=240)


def states(pipeline: dict[str, Any]) -> list[str]:
    return [step["state"] for step in pipeline["steps"]]


def seconds(step: dict[str, Any]) -> float:
    started = datetime.fromisoformat(step["started_at"])
    return (datetime.fromisoformat(step["finished_at"]) - started).total_seconds()


def platform_archive(marker: bytes) -> bytes:
    """A platform archive as the platform keeps it: the desktop user's home in system/."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in (
            ("system/.steam/marker.bin", marker),
            ("system/README", b"GamePlatform home\n"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def seed_platform(s3: S3) -> tuple[str, bytes, bytes]:
    platform = f"steam-{uuid.uuid4().hex[:6]}"
    marker = os.urandom(256 * 1024)
    archive = platform_archive(marker)
    s3.put(f"platforms/{platform}.tar.gz", archive)
    return platform, marker, archive


def assert_gpu_step_failed_fast(pipeline: dict[str, Any], index: int) -> None:
    step = pipeline["steps"][index]
    assert pipeline["state"] == "failed", pipeline
    assert step["state"] == "failed", step
    # The engine's own reason, not a timeout: no GPU runtime (or no privileged).
    message = step["message"].lower()
    assert "gpu" in message or "privileged" in message, step
    assert seconds(step) < 60, step


def without_gpu(template: str, step_name: str) -> dict[str, Any]:
    """The shipped template with the GPU, privileged and device options of one step
    taken out, so its container can run on this engine."""
    document = copy.deepcopy(
        load_template((PIPELINES / f"{template}.yaml").read_bytes()).to_document()
    )
    [step] = [s for s in document["steps"] if s["name"] == step_name]
    container = step["container"]
    for key in ("privileged", "deploy", "devices"):
        container.pop(key, None)
    container["volumes"] = [
        v for v in container["volumes"] if not v.startswith("/dev/")
    ]
    return document


# -- the templates -----------------------------------------------------------------------


def test_api_lists_the_six_templates_with_documented_args_and_envs(
    node: tuple[Server, str],
) -> None:
    server, _ = node
    _, _, answer = server.api.request("GET", "/api/templates")
    listed = {t["name"]: t for t in answer["templates"]}
    assert set(GPU_TEMPLATES) | {"platform-save-and-remove", "instance-recycle"} <= set(
        listed
    )
    start = listed["instance-start"]
    assert "GameInstance" in start["description"]
    assert [a["name"] for a in start["args"]] == [
        "PLATFORM", "INSTANCE", "IMAGE", "PORT", "HOSTNAME",
    ]  # fmt: skip
    provided = {e["name"] for e in start["envs"] if e["provided_by_server"]}
    assert provided == {"S3_URL", "S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_BUCKET"}


@pytest.mark.parametrize(
    ("template", "folder"),
    [
        ("start-platform", "volumes/{instance}"),
        ("instance-start", "volumes/{instance}"),
        ("platform-admin-maintenance", "platforms/{platform}"),
        ("platform-user-maintenance", "platforms/{platform}"),
    ],
)
def test_gpu_template_downloads_and_unpacks_then_its_gpu_step_fails_fast(
    node: tuple[Server, str],
    s3: S3,
    node_root: Path,
    containers: list[str],
    template: str,
    folder: str,
) -> None:
    platform, marker, archive = seed_platform(s3)
    instance = f"it-{uuid.uuid4().hex[:6]}"
    args = {
        "PLATFORM": platform,
        "IMAGE": "game-server:latest",
        "PORT": str(free_port()),
        "HOSTNAME": "gamenode-it",
    }
    if "INSTANCE" in [a["name"] for a in template_args(node, template)]:
        args["INSTANCE"] = instance
    if template == "platform-user-maintenance":
        args["PASSWORD"] = "user-session-pass"
    containers.append(
        f"game-{instance}" if "INSTANCE" in args else f"platform-{platform}"
    )

    final = run_template(node, template, args, STREAM_ENVS)

    assert states(final) == ["completed", "completed", "failed"], final
    assert_gpu_step_failed_fast(final, 2)
    downloaded = node_root / "platforms" / f"{platform}.tar.gz"
    assert downloaded.read_bytes() == archive
    unpacked = node_root / folder.format(instance=instance, platform=platform)
    assert (unpacked / "system" / ".steam" / "marker.bin").read_bytes() == marker
    assert not Path("/nonexistent/submitted-root").exists()


def template_args(node: tuple[Server, str], name: str) -> list[dict[str, str]]:
    server, _ = node
    _, _, answer = server.api.request("GET", f"/api/templates/{name}")
    args: list[dict[str, str]] = answer["args"]
    return args


@pytest.mark.parametrize("template", sorted(GPU_TEMPLATES))
def test_gpu_container_of_each_template_is_created_as_written(
    template: str,
    tmp_path: Path,
    containers: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Created, not started: this engine has no GPU runtime and refuses privileged. The
    platform and the instance are this test's own, and so are the containers they name."""
    loaded = load_template((PIPELINES / f"{template}.yaml").read_bytes())
    values = {
        "PLATFORM": f"steam-{uuid.uuid4().hex[:6]}",
        "INSTANCE": f"gpu-{uuid.uuid4().hex[:6]}",
        "IMAGE": "game-server:latest", "PORT": "18080", "HOSTNAME": "gamenode-gpu",
        "PASSWORD": "user-session-pass",
        NODE_ROOT_ENV: "/data/wind", "S3_URL": "http://s3.invalid", "S3_BUCKET": BUCKET,
        "S3_ACCESS_KEY": ACCESS_KEY, "S3_SECRET_KEY": SECRET_KEY, **STREAM_ENVS,
    }  # fmt: skip
    bound = bind(
        loaded,
        {a: values[a] for a in loaded.args},
        {e: values[e] for e in loaded.envs},
    )
    index = [s.name for s in bound.steps].index(GPU_TEMPLATES[template])
    name = bound.steps[index].container.container_name
    assert name is not None
    containers.append(name)
    playbook = compile_playbook(bound, pipeline_id=f"gpu-{uuid.uuid4().hex[:6]}")
    tasks = []
    for task in playbook[0]["tasks"]:
        if not task["name"].startswith(f"[step {index}]") or task["name"].endswith(
            (": verify", ": running")
        ):
            continue
        options = task.get(DOCKER_CONTAINER)
        if options and options.get("state") == "started":
            options["state"] = "present"
        tasks.append(task)
    playbook[0]["tasks"] = tasks
    monkeypatch.setenv(
        "PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "pipeline.yml").write_text(render_playbook(playbook))

    result = ansible_runner.run(
        private_data_dir=str(tmp_path),
        playbook="pipeline.yml",
        inventory=INVENTORY,
        envvars=action_plugins_env(),
        quiet=True,
    )

    assert result.status == "successful"
    info = docker.from_env().containers.get(name).attrs
    host = info["HostConfig"]
    assert host["Privileged"] is True
    [request] = host["DeviceRequests"]
    assert request["Capabilities"] == [["gpu"]] and request["Count"] == -1
    assert host["Devices"][0]["PathOnHost"] == "/dev/dri"
    assert host["Tmpfs"] == {"/dev/shm": "rw"}
    assert "seccomp=unconfined" in host["SecurityOpt"]
    assert "/dev/input:/dev/input:rw" in host["Binds"]
    home = [b for b in host["Binds"] if b.endswith(":/home/ubuntu:rw")]
    folder = (
        f"platforms/{values['PLATFORM']}"
        if template.startswith("platform-")
        else f"volumes/{values['INSTANCE']}"
    )
    assert home == [f"/data/wind/{folder}/system:/home/ubuntu:rw"]
    assert host["PortBindings"]["8080/tcp"][0]["HostPort"] == "18080"
    env = dict(item.split("=", 1) for item in info["Config"]["Env"])
    password = (
        "user-session-pass" if template == "platform-user-maintenance" else "node-pass"
    )
    assert env["PASSWD"] == env["SELKIES_BASIC_AUTH_PASSWORD"] == password
    assert env["SELKIES_TURN_PASSWORD"] == "turn-secret"
    assert env["BEAGLE_ENABLE_DEBUG"] == (
        "true"
        if template in ("start-platform", "platform-admin-maintenance")
        else "false"
    )
    assert info["Config"]["Hostname"] == "gamenode-gpu"


def test_maintenance_then_save_and_remove_uploads_the_working_copy(
    node: tuple[Server, str], s3: S3, node_root: Path, containers: list[str],
    docker_client: docker.DockerClient,
) -> None:  # fmt: skip
    platform, marker, _ = seed_platform(s3)
    containers.append(f"platform-{platform}")
    args = {
        "PLATFORM": platform,
        "IMAGE": "game-server:latest",
        "PORT": str(free_port()),
        "HOSTNAME": "gamenode-it",
    }
    document = without_gpu("platform-admin-maintenance", "platform")
    started = run_document(node, document, args, STREAM_ENVS)
    assert started["state"] == "completed", started
    assert docker_client.containers.get(f"platform-{platform}").status == "running"
    # The maintainer's work: a file written in the platform's home.
    work = node_root / "platforms" / platform / "system"
    (work / "maintained.txt").write_bytes(b"updated by maintenance\n")

    final = run_template(node, "platform-save-and-remove", {"PLATFORM": platform})

    assert final["state"] == "completed", final
    assert states(final) == ["completed"] * 4
    with tarfile.open(
        fileobj=io.BytesIO(s3.get(f"platforms/{platform}.tar.gz"))
    ) as tar:
        uploaded = {
            m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()
        }  # type: ignore[union-attr]
    assert uploaded["./system/maintained.txt"] == b"updated by maintenance\n"
    assert uploaded["./system/.steam/marker.bin"] == marker
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(f"platform-{platform}")
    assert not (node_root / "platforms" / platform).exists()


def test_save_and_remove_without_maintenance_fails_saying_so(
    node: tuple[Server, str],
) -> None:
    platform = f"never-maintained-{uuid.uuid4().hex[:6]}"
    final = run_template(node, "platform-save-and-remove", {"PLATFORM": platform})
    assert states(final) == ["failed", "skipped", "skipped", "skipped"]
    assert f"has no maintenance of {platform} to save" in final["steps"][0]["message"]


def test_instance_recycle_removes_the_container_and_the_folder(
    node: tuple[Server, str], s3: S3, node_root: Path, containers: list[str],
    docker_client: docker.DockerClient,
) -> None:  # fmt: skip
    platform, marker, _ = seed_platform(s3)
    instance = f"it-{uuid.uuid4().hex[:6]}"
    containers.append(f"game-{instance}")
    args = {
        "PLATFORM": platform,
        "INSTANCE": instance,
        "IMAGE": "game-server:latest",
        "PORT": str(free_port()),
        "HOSTNAME": "gamenode-it",
    }
    started = run_document(
        node, without_gpu("instance-start", "game"), args, STREAM_ENVS
    )
    assert started["state"] == "completed", started
    folder = node_root / "volumes" / instance
    assert (folder / "system" / ".steam" / "marker.bin").read_bytes() == marker

    final = run_template(node, "instance-recycle", {"INSTANCE": instance})

    assert final["state"] == "completed", final
    assert states(final) == ["completed", "completed"]
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(f"game-{instance}")
    assert not folder.exists()
    assert (node_root / "platforms" / f"{platform}.tar.gz").exists()


def test_instance_recycle_leaves_a_foreign_container_untouched(
    node: tuple[Server, str], node_root: Path, containers: list[str],
    docker_client: docker.DockerClient,
) -> None:  # fmt: skip
    instance = f"it-{uuid.uuid4().hex[:6]}"
    containers.append(f"game-{instance}")
    docker_client.containers.run(
        "gamepipeline/stand-in:busybox", name=f"game-{instance}", detach=True
    )
    (node_root / "volumes" / instance).mkdir(parents=True)

    final = run_template(node, "instance-recycle", {"INSTANCE": instance})

    assert states(final) == ["failed", "skipped"], final
    assert "not created by GamePipeline" in final["steps"][0]["message"]
    assert docker_client.containers.get(f"game-{instance}").status == "running"
    assert (node_root / "volumes" / instance).exists()


# -- the originals, unchanged ---------------------------------------------------------------


def test_original_start_platform_downloads_then_fails_at_tar_into_a_missing_folder(
    node: tuple[Server, str], s3: S3, node_root: Path
) -> None:
    platform, _, archive = seed_platform(s3)
    instance = f"orig-{uuid.uuid4().hex[:6]}"
    args = {
        "PLATFORM": platform,
        "INSTANCE": instance,
        "IMAGE": "game-server:latest",
        "PORT": str(free_port()),
        "HOSTNAME": "gamenode-it",
    }
    envs = {
        **STREAM_ENVS,
        "S3_URL": s3.url,
        "S3_ACCESS_KEY": ACCESS_KEY,
        "S3_SECRET_KEY": SECRET_KEY,
        "S3_BUCKET": BUCKET,
    }

    final = run_document(
        node, (ORIGINALS / "start-platform.yaml").read_text(), args, envs
    )

    assert final["state"] == "failed", final
    assert states(final) == ["completed", "failed", "skipped"]
    assert (node_root / "platforms" / f"{platform}.tar.gz").read_bytes() == archive
    tgz = final["steps"][1]
    # The defect, as its author needs to see it: tar -C into a folder nobody created.
    assert tgz["exit_code"] == 1
    assert f"/data/wind/volumes/{instance}" in tgz["message"]
    assert "No such file or directory" in tgz["message"]


def test_original_test_pipeline_fails_at_its_first_apk_add(
    node: tuple[Server, str],
) -> None:
    final = run_document(node, (ORIGINALS / "test-pipeline.yaml").read_text(), {})

    assert final["state"] == "failed", final
    assert states(final) == ["failed", "skipped", "skipped"]
    first = final["steps"][0]
    assert first["exit_code"] != 0
    assert "apk" in first["message"] + first["output_tail"]
