"""Issue 5 end to end: only known agents and callers get in, and secrets stay secret.

Real `gamepipeline` server and agent processes, real gRPC (with TLS made here by the
`cryptography` package), the real HTTP API, ansible-runner and the Docker engine.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gamepipeline import wire
from gamepipeline.client import ApiClient
from gamepipeline.proto import gamepipeline_pb2 as pb
from gamepipeline.proto import gamepipeline_pb2_grpc as pb_grpc
from gamepipeline.server.security import hash_token, new_token

from .conftest import Process, Server, gamepipeline_command, start_agent, start_server

pytestmark = pytest.mark.docker


def wait_exit(proc: Process, timeout: float = 30) -> int:
    assert proc.proc is not None
    return proc.proc.wait(timeout)


# -- agents -----------------------------------------------------------------------------


def test_an_agent_with_an_unknown_token_is_refused_for_good(
    server: Server, node_id: str, workdir: Path
) -> None:
    argv = [
        *gamepipeline_command(), "agent",
        "--server", server.grpc_address, "--node-id", node_id,
        "--work-dir", str(workdir / "intruder-work"), "--token", new_token(),
    ]  # fmt: skip
    intruder = Process("intruder", argv, workdir / "intruder.log")
    intruder.start()

    assert wait_exit(intruder) == 1
    assert "UNAUTHENTICATED" in intruder.tail()
    assert "unknown token" in intruder.tail()
    assert server.api.nodes() == []


def stream_first_answer(
    channel: grpc.Channel, token: str | None, node_id: str
) -> grpc.RpcError:
    stub = pb_grpc.GamePipelineGRPCServiceStub(channel)
    register = pb.PipelineStreamRequest(
        register=pb.AgentRegistration(
            node_id=node_id, capacity=1, protocol_version=wire.PROTOCOL_VERSION
        )
    )
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with pytest.raises(grpc.RpcError) as caught:
        next(iter(stub.PipelineStream(iter([register]), metadata=metadata, timeout=10)))
    return caught.value


def test_a_token_works_only_for_its_own_node(
    server: Server, agent: Process, node_id: str
) -> None:
    token = server.agent_tokens[node_id]
    pipeline_id = server.api.submit(
        {"name": "idle", "steps": [{"name": "nap", "container": {
            "image": "gamepipeline/stand-in:busybox", "commands": ["sleep 30"]}}]},
        node=node_id,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while server.api.pipeline(pipeline_id)["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    before = server.api.pipeline(pipeline_id)

    with grpc.insecure_channel(server.grpc_address) as channel:
        # Without a token, and with this node's token for another node.
        assert stream_first_answer(channel, None, node_id).code() is (
            grpc.StatusCode.UNAUTHENTICATED
        )
        refused = stream_first_answer(channel, token, "someone-else")
        assert refused.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "cannot register node someone-else" in str(refused.details())

        # Another node's report on this node's pipeline changes nothing.
        stub = pb_grpc.GamePipelineGRPCServiceStub(channel)
        report = pb.UpdatePipelineStatusRequest(
            node_id="someone-else",
            pipeline_id=pipeline_id,
            state=pb.PIPELINE_STATE_COMPLETED,
            sequence=99,
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.UpdatePipelineStatus(
                report, metadata=[("authorization", f"Bearer {token}")], timeout=10
            )
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED

    after = server.api.pipeline(pipeline_id)
    assert after["state"] == before["state"] == "running"
    server.api.cancel(pipeline_id)
    assert server.api.wait(pipeline_id, timeout=60)["state"] == "canceled"


# -- TLS --------------------------------------------------------------------------------


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def write_pki(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and an agent certificate, as PEM."""
    files: dict[str, Path] = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("gamepipeline test CA", ca_key, None, ca=True)
    issuer = ("gamepipeline test CA", ca_key)
    files["ca"] = folder / "ca.pem"
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who in ("server", "agent"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(f"gamepipeline {who}", key, issuer)
        files[f"{who}_cert"] = folder / f"{who}.pem"
        files[f"{who}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{who}_key"] = folder / f"{who}.key"
        files[f"{who}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return files


def test_agents_reach_a_tls_server_only_with_a_trusted_certificate(
    workdir: Path, node_id: str
) -> None:
    pki = write_pki(workdir)
    token = new_token()
    config = workdir / "tls-server.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "agents": {node_id: hash_token(token)},
                "tls": {
                    "cert": str(pki["server_cert"]),
                    "key": str(pki["server_key"]),
                    "client_ca": str(pki["ca"]),
                },
            }
        )
    )
    server = start_server(workdir, "--config", str(config), name="tls-server")
    agent_config = workdir / "tls-agent.yaml"
    agent_config.write_text(
        yaml.safe_dump(
            {
                "token": token,
                "tls": {
                    "ca": str(pki["ca"]),
                    "cert": str(pki["agent_cert"]),
                    "key": str(pki["agent_key"]),
                },
            }
        )
    )
    try:
        agent = start_agent(
            workdir, server, node_id, "--config", str(agent_config), name="tls-agent"
        )
        agent.stop()

        # Plain text, or TLS without the agent's certificate, never gets an answer.
        for channel in (
            grpc.insecure_channel(server.grpc_address),
            grpc.secure_channel(
                server.grpc_address,
                grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes()),
            ),
        ):
            with channel:
                error = stream_first_answer(channel, token, node_id)
                assert error.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


# -- HTTP API ---------------------------------------------------------------------------


def test_api_tokens_are_checked_for_presence_and_scope(workdir: Path) -> None:
    reader, writer = new_token(), new_token()
    config = workdir / "api.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "api_tokens": {
                    "grafana": {"sha256": hash_token(reader), "scopes": ["read"]},
                    "platform": {
                        "sha256": hash_token(writer),
                        "scopes": ["read", "write"],
                    },
                }
            }
        )
    )
    server = start_server(workdir, "--config", str(config), name="api-server")
    base = f"http://127.0.0.1:{server.http_port}"
    document = b'{"pipeline": {"name": "x", "steps": [{"name": "s", "container": {"image": "busybox"}}]}}'
    try:
        status, headers, body = ApiClient(base).request("GET", "/api/pipelines")
        assert status == 401 and "Authorization: Bearer" in body["error"]
        lowered = {key.lower(): value for key, value in headers.items()}
        assert lowered["www-authenticate"].startswith("Bearer")
        assert ApiClient(base, token="gp_wrong").request("GET", "/api/nodes")[0] == 401

        read_only = ApiClient(base, token=reader)
        assert read_only.request("GET", "/api/pipelines")[0] == 200
        status, _, body = read_only.request("POST", "/api/pipelines", document)
        assert status == 403
        assert "needs the write scope" in body["error"] and "grafana" in body["error"]
        assert read_only.pipelines() == []

        assert (
            ApiClient(base, token=writer).request("POST", "/api/pipelines", document)[0]
            == 201
        )
        for open_path in ("/healthz", "/readyz", "/metrics", "/api/openapi.json", "/"):
            with urllib.request.urlopen(base + open_path, timeout=10) as answer:
                assert answer.status == 200, open_path
    finally:
        server.stop()


def test_an_open_server_refuses_to_listen_beyond_loopback(workdir: Path) -> None:
    argv = [
        *gamepipeline_command(), "server", "--grpc", "0.0.0.0:0",
        "--http", "127.0.0.1:0", "--db", str(workdir / "open.db"),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "without authentication" in done.stderr and "--insecure" in done.stderr


# -- limits -----------------------------------------------------------------------------


def test_bodies_and_documents_past_the_limits_are_clear_4xx(server: Server) -> None:
    api = server.api
    big = b"name: x\n" + b"#" * (1024 * 1024 + 10)
    status, _, body = api.request("POST", "/api/pipelines", big, "application/yaml")
    assert status == 413, body
    assert "larger than the 1024 KiB" in body["error"]

    step = {"name": "s", "container": {"image": "gamepipeline/stand-in:busybox"}}
    long = yaml.safe_dump({"name": "long", "steps": [step] * 101}).encode()
    status, _, body = api.request("POST", "/api/pipelines", long, "application/yaml")
    assert status == 400 and "101 steps" in body["problems"][0]["message"]

    tagged = b"name: !!python/object/apply:os.system ['touch /tmp/pwned']\nsteps: []\n"
    status, _, body = api.request("POST", "/api/pipelines", tagged, "application/yaml")
    assert status == 400 and "remove the !tag" in body["error"]

    lines = ["a0: &a0 [" + ", ".join(["lol"] * 10) + "]"]
    lines += [
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)
    ]
    bomb = ("\n".join(lines) + "\nname: bomb\nsteps: *a8\n").encode()
    started = time.monotonic()
    status, _, body = api.request("POST", "/api/pipelines", bomb, "application/yaml")
    assert status == 400 and "aliases" in body["error"]
    assert time.monotonic() - started < 2

    deep = b"[" * 100_000 + b"]" * 100_000
    status, _, body = api.request("POST", "/api/pipelines", deep, "application/json")
    assert status == 400, body


# -- secrets ----------------------------------------------------------------------------

SECRET_DOCUMENT = """\
name: secretive
envs: [GAME_PASSWORD]
steps:
  - name: use it
    container:
      image: gamepipeline/stand-in:busybox
      environment:
        PASSWORD: ${{ envs.GAME_PASSWORD }}
      commands:
        - echo "password is $PASSWORD"
        - echo "again ${{ envs.GAME_PASSWORD }}"
  - name: fail with it
    container:
      image: gamepipeline/stand-in:busybox
      environment:
        PASSWORD: ${{ envs.GAME_PASSWORD }}
      commands:
        - echo "failing with $PASSWORD" >&2
        - exit 3
"""


def files_holding(root: Path, needle: bytes) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and needle in path.read_bytes():
            found.append(str(path))
    return found


def test_a_secret_env_value_is_never_written_anywhere(
    server: Server,
    agent: Process,
    node_id: str,
    workdir: Path,
    cleanup_containers: list[str],
) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    pipeline_id = server.api.submit(
        SECRET_DOCUMENT, envs={"GAME_PASSWORD": secret}, node=node_id
    )
    final = server.api.wait(pipeline_id, timeout=120)

    # It ran with the value: the step saw it and the masked output says so.
    assert final["state"] == "failed", final
    first, second = final["steps"]
    assert first["state"] == "completed"
    assert "password is ***" in first["output_tail"]
    assert second["exit_code"] == 3 and "failing with ***" in second["output_tail"]
    assert final["envs"]["given"] == ["GAME_PASSWORD"]

    answers: list[Any] = [
        server.api.request("GET", path)[2]
        for path in (f"/api/pipelines/{pipeline_id}", "/api/pipelines", "/api/nodes")
    ]
    assert secret not in repr(answers)

    agent.stop()
    server.stop()
    needle = secret.encode()
    leaks = files_holding(workdir, needle)  # logs, database, WAL, agent work dir
    assert leaks == [], leaks
    # No run's dir is left, nor (the agent stopped) the spare it kept waiting.
    for kept in ("runs", "spares"):
        folder = workdir / "agent-work" / kept
        assert not folder.exists() or list(folder.iterdir()) == [], kept
