"""Connection settings the server and the agent must agree on.

Both ends import this module; neither imports the other. It holds the contract's version
and the keepalive and heartbeat timings, each with the reason for its value.

Two layers keep the agent's long-lived ``PipelineStream`` honest:

- HTTP/2 keepalive pings (gRPC channel options) find a dead TCP connection, for example
  when a GameNode loses power and never sends a FIN. Each end must ping no more often
  than the other end permits, or the server answers with GOAWAY ``too_many_pings`` and
  the agent loops on reconnects.
- The application heartbeat (``Heartbeat`` / ``HeartbeatAck`` on the stream) tells the
  server that the agent's process, not just its kernel, is alive, and carries the ids of
  the pipelines it runs.

The agent passes ``AGENT_CHANNEL_OPTIONS`` to ``grpc.aio.insecure_channel`` (or the secure
variant); the server passes ``SERVER_OPTIONS`` to ``grpc.aio.server``. Their values are
chosen together: the agent pings every 20 s, the server accepts pings down to every 10 s,
so the agent stays a factor of two inside the server's limit.
"""

from __future__ import annotations

import re
from typing import Final

from gamepipeline.proto import gamepipeline_pb2 as pb

#: The contract version both ends send and compare (``ProtocolVersion`` in the proto).
PROTOCOL_VERSION: Final[int] = pb.PROTOCOL_VERSION_CURRENT

#: The metadata key that carries an agent's token, ``Bearer <token>``, on every call.
#: Lower case, as gRPC requires of metadata keys.
AUTH_METADATA_KEY: Final[str] = "authorization"

# --- agent side -------------------------------------------------------------------------

#: The agent pings every 20 s while the stream is idle at the HTTP/2 level. Shorter than
#: any NAT or load-balancer idle timeout we expect (usually 60 s or more), and twice the
#: server's minimum ping interval so jitter never makes it a "strike".
AGENT_KEEPALIVE_TIME_MS: Final[int] = 20_000
#: How long the agent waits for a ping's answer before it declares the connection dead.
AGENT_KEEPALIVE_TIMEOUT_MS: Final[int] = 10_000

#: The largest message the agent takes off its stream: gRPC's default, stated so that the
#: server can check a pipeline fits before it hands it over (``Dispatcher._hand_over``).
MAX_PIPELINE_MESSAGE_BYTES: Final[int] = 4 * 1024 * 1024

AGENT_CHANNEL_OPTIONS: Final[tuple[tuple[str, int], ...]] = (
    ("grpc.max_receive_message_length", MAX_PIPELINE_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", AGENT_KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", AGENT_KEEPALIVE_TIMEOUT_MS),
    # The stream is open even when no pipeline runs; keep pinging through quiet spells.
    ("grpc.keepalive_permit_without_calls", 1),
    # 0 lifts gRPC's default cap of two pings without data: the stream may stay
    # quiet for long stretches and the pings must go on regardless.
    ("grpc.http2.max_pings_without_data", 0),
)

# --- server side ------------------------------------------------------------------------

#: The server pings an idle connection every 30 s so that an agent whose machine vanished
#: is found dead within about 40 s (30 s + timeout), well inside a minute.
SERVER_KEEPALIVE_TIME_MS: Final[int] = 30_000
#: How long the server waits for the agent's answer to a ping.
SERVER_KEEPALIVE_TIMEOUT_MS: Final[int] = 10_000
#: The shortest ping interval the server tolerates from an agent. Half the agent's
#: interval: the agent never trips it, a misconfigured client pinging every second does.
SERVER_MIN_PING_INTERVAL_MS: Final[int] = 10_000

#: Calls the server holds while its event loop catches up (see ``SERVER_OPTIONS``):
#: twice the largest fleet the server is sized for (10,000 agents), so a whole fleet's
#: reconnect, plus its first status reports, fits.
SERVER_MAX_PENDING_CALLS: Final[int] = 20_000

SERVER_OPTIONS: Final[tuple[tuple[str, int], ...]] = (
    ("grpc.keepalive_time_ms", SERVER_KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", SERVER_KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.min_ping_interval_without_data_ms", SERVER_MIN_PING_INTERVAL_MS),
    # Agents ping between RPCs too (their stream is the only call); allow it.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Calls that reached the server before its event loop took them up wait in a
    # backlog; past gRPC's default of 1,000 waiting (3,000 at most) it cancels new ones
    # at random, and the agent sees CANCELLED or "Internal error from Core" before it
    # could register. Every agent of a large fleet reconnects within a second or two of
    # a server restart, so the backlog must hold a whole fleet's streams.
    ("grpc.server.max_pending_requests", SERVER_MAX_PENDING_CALLS),
    ("grpc.server.max_pending_requests_hard_limit", 2 * SERVER_MAX_PENDING_CALLS),
)

# --- application heartbeat --------------------------------------------------------------

#: How often the agent sends ``Heartbeat`` on its stream. The server tells the agent this
#: value in ``RegistrationAccepted.heartbeat_interval_seconds``; the agent should use the
#: value it is told and fall back on this one.
HEARTBEAT_INTERVAL_SECONDS: Final[int] = 10
#: The server marks a node offline when no heartbeat arrived for this long: three missed
#: heartbeats, so one slow or lost message does not flap the node.
NODE_OFFLINE_AFTER_SECONDS: Final[int] = 30


# --- node ids ---------------------------------------------------------------------------

#: A node id: what an agent registers as and a submission's ``node`` names. Host-name
#: like, so that it can be typed, logged and put in a URL as it is.
NODE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def node_id_problem(node_id: str) -> str | None:
    """Why ``node_id`` is not a node id, or None if it is one."""
    if NODE_ID_PATTERN.fullmatch(node_id):
        return None
    shown = node_id if len(node_id) <= 40 else node_id[:40] + "..."
    return (
        f"{shown!r} is not a node id: use 1 to 128 letters, digits, '.', '_', ':' or "
        "'-', starting with a letter or digit"
    )
