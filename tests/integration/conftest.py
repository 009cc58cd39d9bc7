"""Fixtures that run the real thing: server and agent processes, Docker, ansible-runner.

The server and the agent are started as the `gamepipeline` command a user runs, each in
its own process, talking real gRPC over loopback on ports the OS picks.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import pytest
import yaml

from gamepipeline.client import ApiClient

if TYPE_CHECKING:
    from .reliability import EngineEvents
from gamepipeline.server.security import hash_token, new_token

ROOT = Path(__file__).resolve().parents[2]
PIPELINE_LABEL = "io.beaglewind.gamepipeline.pipeline"


def gamepipeline_command() -> list[str]:
    return [sys.executable, "-m", "gamepipeline"]


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Process:
    """A `gamepipeline` subprocess whose output goes to a log file."""

    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        handle = self.log.open("ab")
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        self.proc = subprocess.Popen(
            self.argv, stdout=handle, stderr=handle, env=env, start_new_session=True
        )
        handle.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def tail(self) -> str:
        return _tail(self.log)


@dataclass
class Server(Process):
    grpc_port: int = 0
    http_port: int = 0
    db_path: Path = field(default_factory=Path)
    #: An API token with the read and write scopes, which ``api`` sends.
    token: str | None = None
    #: Each configured node's agent token (``start_agent`` hands it to the agent).
    agent_tokens: dict[str, str] = field(default_factory=dict)

    @property
    def api(self) -> ApiClient:
        return ApiClient(f"http://127.0.0.1:{self.http_port}", token=self.token)

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def security_config(
    path: Path, nodes: Iterable[str] = ()
) -> tuple[str, dict[str, str]]:
    """Write a server configuration with one read-write API token and a token for each
    of ``nodes``; answer the API token and the agents' tokens (the file holds hashes)."""
    token = new_token()
    agent_tokens = {node: new_token() for node in nodes}
    scopes = ["read", "write"]
    config: dict[str, Any] = {
        "api_tokens": {"tests": {"sha256": hash_token(token), "scopes": scopes}}
    }
    if agent_tokens:
        config["agents"] = {node: hash_token(t) for node, t in agent_tokens.items()}
    path.write_text(yaml.safe_dump(config))
    return token, agent_tokens


def start_server(
    workdir: Path, *extra: str, name: str = "server", nodes: Iterable[str] = ()
) -> Server:
    """Start a server with an API token and a token for each of ``nodes``' agents.

    Agents of other nodes are let in without a token only while no node has one. A
    ``--config`` among ``extra`` replaces the security configuration (the server is
    then open on loopback, and the tokens are sent but not needed)."""
    db_path = workdir / "gamepipeline.db"
    port_file = workdir / f"{name}-ports.json"
    port_file.unlink(missing_ok=True)
    security = workdir / f"{name}-security.yaml"
    token, agent_tokens = security_config(security, nodes)
    argv = [
        *gamepipeline_command(),
        "server",
        "--grpc", "127.0.0.1:0",
        "--http", "127.0.0.1:0",
        "--db", str(db_path),
        "--port-file", str(port_file),
        "--log-level", "debug",
        "--config", str(security),
        *extra,
    ]  # fmt: skip
    server = Server(
        name=name,
        argv=argv,
        log=workdir / f"{name}.log",
        db_path=db_path,
        token=token,
        agent_tokens=agent_tokens,
    )
    server.start()
    deadline = time.monotonic() + 30
    while not port_file.exists():
        assert server.proc is not None
        if server.proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            pytest.fail(f"server did not start; its log:\n{server.tail()}")
        time.sleep(0.05)
    ports = json.loads(port_file.read_text())
    server.grpc_port, server.http_port = ports["grpc"], ports["http"]
    return server


def start_agent(
    workdir: Path, server: Server, node_id: str, *extra: str, name: str = "agent"
) -> Process:
    argv = [
        *gamepipeline_command(),
        "agent",
        "--server", server.grpc_address,
        "--node-id", node_id,
        "--work-dir", str(workdir / f"{name}-work"),
        "--log-level", "debug",
        *extra,
    ]  # fmt: skip
    token = server.agent_tokens.get(node_id)
    if token is not None:
        token_file = workdir / f"{name}-token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        argv += ["--token-file", str(token_file)]
    agent = Process(name=name, argv=argv, log=workdir / f"{name}.log")
    agent.start()
    deadline = time.monotonic() + 30
    while True:
        nodes = server.api.nodes()
        if any(n["node_id"] == node_id and n["state"] == "online" for n in nodes):
            return agent
        assert agent.proc is not None
        if agent.proc.poll() is not None or time.monotonic() > deadline:
            agent.stop()
            pytest.fail(f"agent {node_id} did not connect; its log:\n{agent.tail()}")
        time.sleep(0.1)


class ForeignContainerRemoval(AssertionError):
    """A test tried to remove a container it did not create."""


class RemovalGuard:
    """Keeps the containers that were on the engine when the session began out of the
    reach of this test process: a removal of one of them (the demo's, another run's,
    anyone's) is refused and fails the test that tried it.

    Only removals made here, through the Docker SDK, are checked; the agents under test
    remove containers of their own pipelines, and those did not exist at the start."""

    def __init__(self, protected: set[str]) -> None:
        self.protected = protected

    def check(self, api: docker.APIClient, container: Any) -> None:
        ref = container.get("Id") if isinstance(container, dict) else container
        try:
            info = api.inspect_container(ref)
        except docker.errors.NotFound:
            return  # the removal itself says so
        if info["Id"] in self.protected:
            name = str(info.get("Name", "")).lstrip("/")
            raise ForeignContainerRemoval(
                f"refused to remove container {name} ({info['Id'][:12]}): it was on "
                "the engine before the tests began, so no test created it"
            )


@pytest.fixture(scope="session", autouse=True)
def removal_guard() -> Iterator[RemovalGuard | None]:
    """The engine's containers at the start of the session, guarded (see RemovalGuard);
    None without a reachable engine (the tests that need one fail on their own)."""
    try:
        client = docker.from_env()
        existing = {c["Id"] for c in client.api.containers(all=True)}
    except Exception:
        yield None
        return
    guard = RemovalGuard(existing)
    remove = docker.APIClient.remove_container

    def guarded(api: docker.APIClient, container: Any, *args: Any, **kw: Any) -> Any:
        guard.check(api, container)
        return remove(api, container, *args, **kw)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(docker.APIClient, "remove_container", guarded)
        yield guard
    client.close()


def unique_container_names(document: dict[str, Any], run_id: str) -> dict[str, Any]:
    """A copy of a pipeline document whose steps' container names end in ``-run_id``:
    a shipped document run by a test never meets the containers of the same names that
    a demo (or another test run) keeps on the same engine. The rest is unchanged."""
    renamed = copy.deepcopy(document)
    for step in renamed["steps"]:
        container = step.get("container") or {}
        if container.get("container_name"):
            container["container_name"] = f"{container['container_name']}-{run_id}"
    return renamed


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """The real engine. `make test` starts one; without it these tests fail, never skip."""
    client = docker.from_env()
    client.ping()
    yield client
    client.close()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def server(
    workdir: Path, node_id: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Server]:
    """A server that wants tokens: ``api`` and the ``agent`` fixture use theirs, and
    GAMEPIPELINE_TOKEN carries the API token to the CLI commands a test runs."""
    srv = start_server(workdir, nodes=[node_id])
    assert srv.token is not None
    monkeypatch.setenv("GAMEPIPELINE_TOKEN", srv.token)
    yield srv
    srv.stop()
    # Shown by pytest only when the test failed.
    print(f"--- server log ---\n{srv.tail()}")


@pytest.fixture
def node_id() -> str:
    return f"node-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def agent(workdir: Path, server: Server, node_id: str) -> Iterator[Process]:
    proc = start_agent(workdir, server, node_id)
    yield proc
    proc.stop()
    print(f"--- agent log ---\n{proc.tail()}")


@pytest.fixture
def cleanup_containers(
    docker_client: docker.DockerClient, workdir: Path
) -> Iterator[list[str]]:
    """Names of containers a test creates; removed afterwards, with every container
    labelled by the pipelines the test ran (those in the databases under its workdir:
    other runs on the same engine keep theirs)."""
    names: list[str] = []
    yield names
    ran = _pipelines_in(workdir)
    for found in docker_client.api.containers(all=True):
        name = found["Names"][0].lstrip("/")
        pipeline = (found.get("Labels") or {}).get(PIPELINE_LABEL)
        if name in names or pipeline in ran:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                docker_client.api.remove_container(found["Id"], force=True)


def _pipelines_in(workdir: Path) -> set[str]:
    """Ids of the pipelines stored in the server databases under ``workdir``."""
    ids: set[str] = set()
    for db in workdir.rglob("*.db"):
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            ids |= {row[0] for row in conn.execute("SELECT id FROM pipelines")}
        except sqlite3.Error:
            continue
        finally:
            conn.close()
    return ids


@pytest.fixture
def run_id() -> str:
    """A short id that keeps one test's pipelines and containers apart from another's."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def events(docker_client: docker.DockerClient) -> Iterator[EngineEvents]:
    """Container starts and stops on the engine, recorded while the test runs."""
    from .reliability import engine_events  # it imports this module's helpers

    with engine_events(docker_client) as recorder:
        yield recorder


def free_port(host: str = "0.0.0.0") -> int:
    """A port that nothing listens on now, for a container to publish or a server to
    take. Chosen below the kernel's range of ephemeral ports: a port from that range
    (what binding port 0 gives) can become some outgoing connection's own before the
    engine binds it, and the container then fails with "address already in use"."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    candidates = list(range(max(1024, low - 12000), low))
    random.shuffle(candidates)
    for port in candidates[:200]:
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port below {low} on {host}")
