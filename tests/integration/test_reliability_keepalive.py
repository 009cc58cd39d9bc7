"""Issue 4 / F10: keepalive settings that the two ends can live with.

An hour of idle stream does not fit in ``make test``; ``make soak`` runs the second check
below for an hour (``GAMEPIPELINE_SOAK_IDLE_SECONDS=3600``). Two checks:

- the settings themselves (``gamepipeline.wire``): the agent never pings more often than
  half the interval the server tolerates, both ends allow pings on a quiet stream, and
  the server finds a vanished agent well within a minute;
- a real server and agent with the shipped settings (default heartbeat, keepalive as
  shipped), left idle for a bounded stretch with gRPC's ping tracing on: pings flow both
  ways, no GOAWAY and no ``too_many_pings`` appear, and the agent never reconnects.

With the heartbeat flowing, gRPC resets its keepalive timer on every frame, so the pings
seen on a healthy stream are gRPC's own bandwidth probes, sent as heartbeats arrive;
the server's ping policy judges those the same way, which is what this run exercises.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from pathlib import Path

import pytest

from gamepipeline import wire

from .reliability import launch_agent, launch_server, node_state, wait_until

IDLE_SECONDS = int(os.environ.get("GAMEPIPELINE_SOAK_IDLE_SECONDS", "25"))
pytestmark = pytest.mark.timeout(65 + IDLE_SECONDS)
TRACE = {"GRPC_TRACE": "http_keepalive,http2_ping", "GRPC_VERBOSITY": "debug"}


def test_agent_pings_at_most_half_as_often_as_the_server_tolerates() -> None:
    agent = dict(wire.AGENT_CHANNEL_OPTIONS)
    server = dict(wire.SERVER_OPTIONS)

    min_interval = server["grpc.http2.min_ping_interval_without_data_ms"]
    assert agent["grpc.keepalive_time_ms"] >= 2 * min_interval
    assert agent["grpc.keepalive_permit_without_calls"] == 1
    assert server["grpc.keepalive_permit_without_calls"] == 1
    # No cap on pings between data frames on either end: the stream may stay quiet.
    assert agent["grpc.http2.max_pings_without_data"] == 0
    assert server["grpc.http2.max_pings_without_data"] == 0
    # A vanished agent: found dead by keepalive, or offline by heartbeats, in < 60 s.
    found_dead_ms = (
        server["grpc.keepalive_time_ms"] + server["grpc.keepalive_timeout_ms"]
    )
    assert found_dead_ms < 60_000
    assert wire.NODE_OFFLINE_AFTER_SECONDS < 60
    assert wire.HEARTBEAT_INTERVAL_SECONDS * 3 <= wire.NODE_OFFLINE_AFTER_SECONDS


def test_idle_stream_with_the_shipped_settings_draws_no_goaway(tmp_path: Path) -> None:
    node_id = f"node-{uuid.uuid4().hex[:8]}"
    server = launch_server(tmp_path)  # the shipped liveness settings
    agent = launch_agent(tmp_path, server.grpc_address, node_id, env=TRACE)
    try:
        wait_until(lambda: node_state(server, node_id) == "online", 30, "agent online")
        time.sleep(IDLE_SECONDS)
        assert node_state(server, node_id) == "online"
    finally:
        agent.stop(signal.SIGTERM)
        server.stop(signal.SIGTERM)
    # What the agent saw while it was up (its own stop closes the channel).
    log = agent.log.read_text(errors="replace").split("agent stopping")[0]

    pings = re.findall(r"CLIENT\[\w+\]: Ping \d+ sent", log)
    acks = re.findall(r"CLIENT\[\w+\]: received ping ack", log)
    assert len(pings) >= 2 and len(acks) >= 2, "the trace shows no pings"
    assert "too_many_pings" not in log
    assert "goaway" not in log.lower()
    assert "too_many_pings" not in server.log.read_text(errors="replace")
    assert len(re.findall("agent registered with server", log)) == 1
    assert "reconnecting" not in log
