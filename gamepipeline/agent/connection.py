"""The agent's long-lived ``PipelineStream`` to the server, and its reconnect loop.

One stream at a time. On each new stream the agent registers first (node id, hostname,
labels, capacity, versions, and the pipelines it is still running; until a registration
has been accepted since the agent started, also the labelled containers on its engine),
then sends a heartbeat at a steady interval (the server's, once it names one) and answers
each message:

- ``registered``: the stream is up; status reports start flowing through this channel;
  the containers the server names are removed (``Agent.handle_registered``);
- ``pipeline``: the agent takes the pipeline in hand and acks it (or refuses, with why);
- ``cancel``: the named run is stopped;
- ``heartbeat_ack``: proof that the server still reads the stream.

A stream on which the server has said nothing for ``SILENCE_LIMIT_HEARTBEATS`` heartbeat
intervals is dead even if TCP has not noticed, and is dropped. After any transient end
(UNAVAILABLE, UNKNOWN "Stream removed", a silent stream, the server closing it) the agent
reconnects with capped, jittered exponential backoff; a final status (``backoff.FINAL_CODES``)
stops it with ``FatalConnectionError``. ALREADY_EXISTS (another live agent holds the node
id) is not final: the agent logs the server's reason and keeps trying with its backoff,
and gets in once the other agent's stream ends or goes silent. Every registration
carries the agent's ``AgentInstance`` (a random id made at start, its pid and start
time), so that the server takes the agent's own reconnect for what it is.

Every call on the channel (the stream and the reporter's status reports) carries the
node's token as ``authorization: Bearer <token>`` metadata when the agent has one. With
``tls`` on, the channel is TLS and the server's certificate is verified against
``tls_ca`` (or the system's roots); the agent's own certificate goes along when the
server asks for mutual TLS. There is no way to turn verification off.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import grpc

from gamepipeline import __version__, wire
from gamepipeline.agent.backoff import HEALTHY_AFTER_SECONDS, Backoff, is_transient
from gamepipeline.agent.config import AgentConfig
from gamepipeline.proto import gamepipeline_pb2 as pb
from gamepipeline.proto import gamepipeline_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SILENCE_LIMIT_HEARTBEATS = 3
"""Heartbeat intervals without a word from the server after which the stream is dead."""

_OUTBOX_POLL_SECONDS = 0.5
_TICK_SECONDS = 0.1


class AgentError(Exception):
    """Base of the agent's errors."""


class FatalConnectionError(AgentError):
    """The server refused the agent in a way retrying cannot fix."""

    def __init__(self, code: Any, details: str) -> None:
        super().__init__(f"the server refused the agent: {code}: {details}")
        self.code = code
        self.details = details


class Handler(Protocol):
    """What the connection asks of the rest of the agent."""

    def running_ids(self) -> list[str]: ...

    def inventory(self) -> pb.NodeInventory | None: ...

    def handle_registered(self, accepted: pb.RegistrationAccepted) -> None: ...

    def handle_pipeline(self, pipeline: pb.GamePipeline) -> pb.PipelineAck: ...

    def handle_cancel(self, cancel: pb.CancelPipeline) -> None: ...


class _TokenInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds the node's token to the metadata of every call."""

    def __init__(self, token: str) -> None:
        self._metadata = (wire.AUTH_METADATA_KEY, f"Bearer {token}")

    def _with_token(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._metadata]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._with_token(client_call_details), request)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._with_token(client_call_details), request_iterator)


def open_channel(config: AgentConfig) -> grpc.Channel:
    """The channel to the server: TLS when configured, the token on every call."""
    options: list[tuple[str, Any]] = list(wire.AGENT_CHANNEL_OPTIONS)
    if config.tls:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=config.tls_ca,
            private_key=config.tls_key,
            certificate_chain=config.tls_cert,
        )
        if config.tls_server_name:
            options.append(("grpc.ssl_target_name_override", config.tls_server_name))
        channel = grpc.secure_channel(config.server_address, credentials, options)
    else:
        channel = grpc.insecure_channel(config.server_address, options=options)
    if config.token:
        return grpc.intercept_channel(channel, _TokenInterceptor(config.token))
    return channel


class _Session:
    """One stream: its outgoing queue, its heartbeats and its liveness."""

    def __init__(self, interval: float) -> None:
        self.outbox: queue.Queue[pb.PipelineStreamRequest] = queue.Queue()
        self.closed = threading.Event()
        self.interval = interval
        self.last_heard = time.monotonic()
        self.registered = False
        self.call: Any = None

    def requests(self, first: pb.PipelineStreamRequest) -> Iterator[Any]:
        yield first
        while not self.closed.is_set():
            try:
                yield self.outbox.get(timeout=_OUTBOX_POLL_SECONDS)
            except queue.Empty:
                continue

    def close(self) -> None:
        self.closed.set()
        if self.call is not None:
            self.call.cancel()


class Connection:
    """Keeps the agent connected until ``stop()`` or a final refusal.

    Args:
        config: the agent's configuration.
        handler: runs and cancels pipelines.
        on_connected: called with a stub once the server accepted the registration, and
            with None when that stream ends (the reporter delivers through it).
        backoff: the reconnect policy.
    """

    def __init__(
        self,
        config: AgentConfig,
        handler: Handler,
        on_connected: Callable[[Any], None],
        *,
        backoff: Backoff | None = None,
    ) -> None:
        #: Who this agent is, the same on every registration of its life: the server
        #: tells its reconnects from a second agent of the same node id by it.
        self.instance = pb.AgentInstance(
            instance_id=uuid.uuid4().hex,
            pid=os.getpid(),
            started_at_ms=int(time.time() * 1000),
        )
        self._config = config
        self._handler = handler
        self._on_connected = on_connected
        self._backoff = backoff or Backoff()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._session: _Session | None = None
        self.connected = threading.Event()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            session = self._session
        if session is not None:
            session.close()

    def run(self) -> None:
        """Connect, serve, reconnect; returns after ``stop()``.

        Raises:
            FatalConnectionError: the server refused the agent for good.
        """
        node = self._config.node_id
        while not self._stopping.is_set():
            started = time.monotonic()
            session = _Session(self._config.heartbeat_interval)
            try:
                self._serve(session)
                log.warning("node %s: server closed the stream", node)
            except grpc.RpcError as err:
                code = err.code() if hasattr(err, "code") else None
                details = err.details() if hasattr(err, "details") else str(err)
                if self._stopping.is_set():
                    break
                if not is_transient(code):
                    log.error(
                        "node %s: server refused the agent: %s %s", node, code, details
                    )
                    raise FatalConnectionError(code, details) from None
                if code == grpc.StatusCode.ALREADY_EXISTS:
                    # Another agent holds the node; it may be gone with its stream
                    # half-open, so keep trying until the server lets this one in.
                    log.warning(
                        "node %s: server refused the registration: %s", node, details
                    )
                else:
                    log.warning("node %s: stream ended: %s %s", node, code, details)
            finally:
                self.connected.clear()
                self._on_connected(None)

            if (
                session.registered
                and time.monotonic() - started >= HEALTHY_AFTER_SECONDS
            ):
                self._backoff.reset()
            delay = self._backoff.next_delay()
            log.info("node %s: reconnecting in %.1fs", node, delay)
            self._stopping.wait(delay)
        log.info("node %s: agent disconnected", node)

    # -- one stream --------------------------------------------------------------------

    def _serve(self, session: _Session) -> None:
        channel = open_channel(self._config)
        try:
            stub = pb_grpc.GamePipelineGRPCServiceStub(channel)
            with self._lock:
                if self._stopping.is_set():
                    return
                self._session = session
                session.call = stub.PipelineStream(
                    session.requests(self._registration())
                )
            heartbeats = threading.Thread(
                target=self._heartbeat,
                args=(session,),
                name="agent-heartbeat",
                daemon=True,
            )
            heartbeats.start()
            for response in session.call:
                session.last_heard = time.monotonic()
                self._dispatch(session, stub, response)
        finally:
            session.closed.set()
            with self._lock:
                self._session = None
            channel.close()

    def _registration(self) -> pb.PipelineStreamRequest:
        config = self._config
        return pb.PipelineStreamRequest(
            register=pb.AgentRegistration(
                node_id=config.node_id,
                hostname=config.hostname,
                labels=config.labels,
                capacity=config.capacity,
                agent_version=__version__,
                protocol_version=wire.PROTOCOL_VERSION,
                running_pipeline_ids=self._handler.running_ids(),
                inventory=self._handler.inventory(),
                instance=self.instance,
            )
        )

    def _dispatch(
        self, session: _Session, stub: Any, response: pb.PipelineStreamResponse
    ) -> None:
        node = self._config.node_id
        kind = response.WhichOneof("kind")
        if kind == "registered":
            accepted = response.registered
            if accepted.heartbeat_interval_seconds > 0:
                session.interval = float(accepted.heartbeat_interval_seconds)
            session.registered = True
            log.info(
                "node %s: agent registered with server %s (heartbeat every %ss)",
                node,
                accepted.server_version or "?",
                session.interval,
            )
            self._handler.handle_registered(accepted)
            self.connected.set()
            self._on_connected(stub)
        elif kind == "pipeline":
            ack = self._handler.handle_pipeline(response.pipeline)
            session.outbox.put(pb.PipelineStreamRequest(ack=ack))
        elif kind == "cancel":
            self._handler.handle_cancel(response.cancel)
        elif kind == "heartbeat_ack":
            log.debug("node %s: heartbeat acknowledged", node)
        else:
            log.warning("node %s: ignoring a stream message of kind %s", node, kind)

    def _heartbeat(self, session: _Session) -> None:
        """Send heartbeats once registered; drop the stream when the server has gone
        silent (before registration too)."""
        next_beat: float | None = None
        while not session.closed.wait(_TICK_SECONDS):
            now = time.monotonic()
            silent = now - session.last_heard
            if silent > SILENCE_LIMIT_HEARTBEATS * session.interval:
                log.warning(
                    "node %s: no word from the server for %.0fs; dropping the stream",
                    self._config.node_id,
                    silent,
                )
                session.close()
                return
            if not session.registered:
                continue
            if next_beat is None:
                next_beat = now + session.interval
            if now < next_beat:
                continue
            next_beat = now + session.interval
            session.outbox.put(
                pb.PipelineStreamRequest(
                    heartbeat=pb.Heartbeat(
                        running_pipeline_ids=self._handler.running_ids(),
                        sent_at_ms=int(time.time() * 1000),
                    )
                )
            )
