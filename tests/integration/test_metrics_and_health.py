"""What monitoring sees (issue #9): /metrics, /readyz, the gRPC health service and JSON
logs. The server runs in-process, or as the real command for its logs; a real gRPC peer
plays the agent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from gamepipeline.proto import gamepipeline_pb2 as pb
from gamepipeline.server.app import GRPC_SERVICE_NAME, RunningServer

from .conftest import Process, gamepipeline_command
from .server_peer import AgentPeer, Api, start

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start(tmp_path / "server.db")
    yield running
    running.stop()


def samples(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = requests.get(api.url("/metrics"), timeout=5)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_follow_a_pipeline_from_queue_to_completion(
    server: RunningServer,
) -> None:
    api = Api(server)
    queued = api.submit(node="node-a")
    before = samples(api)
    peer = AgentPeer(server.grpc_port, "node-a")
    try:
        peer.register()
        assert peer.expect("pipeline").id == queued
        peer.ack(queued)
        peer.report(queued, pb.PIPELINE_STATE_RUNNING)
        peer.report_step(queued, 0, pb.STEP_STATE_RUNNING)
        time.sleep(0.3)
        peer.report_step(queued, 0, pb.STEP_STATE_COMPLETED)
        peer.report_step(queued, 0, pb.STEP_STATE_COMPLETED)  # changes nothing
        peer.report_step(queued, 1, pb.STEP_STATE_SKIPPED)
        peer.report(queued, pb.PIPELINE_STATE_COMPLETED)
        with pytest.raises(grpc.RpcError):
            peer.report_step("no-such-pipeline", 0, pb.STEP_STATE_RUNNING)
        after = samples(api)
    finally:
        peer.close()

    assert before[("gamepipeline_queue_depth", ())] == 1
    assert (
        before[("gamepipeline_pipelines", (("state", "pending"), ("template", "game")))]
        == 1
    )
    assert before[("gamepipeline_connected_agents", ())] == 0
    assert after[("gamepipeline_queue_depth", ())] == 0
    assert after[("gamepipeline_connected_agents", ())] == 1
    assert (
        after[
            ("gamepipeline_pipelines", (("state", "completed"), ("template", "game")))
        ]
        == 1
    )
    assert after[("gamepipeline_dispatch_latency_seconds_count", ())] == 1
    step_count = after[
        (
            "gamepipeline_step_duration_seconds_count",
            (("state", "completed"), ("type", "container")),
        )
    ]
    step_sum = after[
        (
            "gamepipeline_step_duration_seconds_sum",
            (("state", "completed"), ("type", "container")),
        )
    ]
    assert step_count == 1 and step_sum >= 0.3
    updates = "gamepipeline_status_updates_total"
    assert after[(updates, (("kind", "step"), ("outcome", "applied")))] == 3
    assert after[(updates, (("kind", "step"), ("outcome", "unchanged")))] == 1
    assert after[(updates, (("kind", "step"), ("outcome", "rejected")))] == 1
    assert after[(updates, (("kind", "pipeline"), ("outcome", "applied")))] == 2


def test_grpc_health_and_readyz_say_serving(server: RunningServer) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        overall = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        agents = stub.Check(
            health_pb2.HealthCheckRequest(service=GRPC_SERVICE_NAME), timeout=5
        )
    finally:
        channel.close()
    ready = requests.get(f"http://127.0.0.1:{server.http_port}/readyz", timeout=5)
    healthy = requests.get(f"http://127.0.0.1:{server.http_port}/healthz", timeout=5)

    assert overall.status == health_pb2.HealthCheckResponse.SERVING
    assert agents.status == health_pb2.HealthCheckResponse.SERVING
    assert (ready.status_code, ready.json()["status"]) == (200, "ready")
    assert healthy.status_code == 200


def test_json_logs_carry_the_pipeline_and_node_ids(tmp_path: Path) -> None:
    port_file = tmp_path / "ports.json"
    argv = [
        *gamepipeline_command(),
        "server",
        "--grpc", "127.0.0.1:0",
        "--http", "127.0.0.1:0",
        "--db", str(tmp_path / "db.sqlite"),
        "--port-file", str(port_file),
        "--log-format", "json",
    ]  # fmt: skip
    server = Process(name="server", argv=argv, log=tmp_path / "server.log")
    server.start()
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert time.monotonic() < deadline, server.tail()
            time.sleep(0.05)
        ports = json.loads(port_file.read_text())
        peer = AgentPeer(ports["grpc"], "node-j")
        peer.register()
        body = {
            "pipeline": {
                "name": "j",
                "steps": [{"name": "s", "container": {"image": "x"}}],
            }
        }
        answer = requests.post(
            f"http://127.0.0.1:{ports['http']}/api/pipelines?node=node-j",
            json=body,
            timeout=5,
        )
        pipeline_id = answer.json()["id"]
        peer.expect("pipeline")
        peer.report_step(pipeline_id, 0, pb.STEP_STATE_RUNNING)
        peer.close()
    finally:
        server.stop()

    lines = [json.loads(line) for line in server.log.read_text().splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    dispatched = [line for line in lines if line["message"].startswith("dispatched")]
    assert dispatched[0]["pipeline_id"] == pipeline_id
    assert dispatched[0]["node_id"] == "node-j"
    step = [line for line in lines if line.get("step") == 0]
    assert step and step[0]["pipeline_id"] == pipeline_id
