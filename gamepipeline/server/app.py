"""Starting and stopping the server: grpc.aio and the HTTP API in one process.

The gRPC server and the dispatcher run on an asyncio loop in a thread of their own; the
HTTP API runs under waitress in another. ``start_server`` binds both (port 0 picks a free
port, handy in tests) and answers a ``RunningServer`` once both listen; ``serve`` does the
same and blocks until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from waitress import wasyncore
from waitress.server import create_server

from gamepipeline.proto import gamepipeline_pb2_grpc as pb_grpc
from gamepipeline.server.api import create_app
from gamepipeline.server.dispatcher import (
    ACK_WAIT_SECONDS,
    NODE_LOST_AFTER_SECONDS,
    Dispatcher,
)
from gamepipeline.server.grpc_service import PipelineService
from gamepipeline.server.metrics import Metrics
from gamepipeline.server.security import Security, SecurityConfigError, check_exposure
from gamepipeline.server.store import Store
from gamepipeline.server.templates import TemplateCatalog, default_templates_dir
from gamepipeline.stop_signals import StopSignals
from gamepipeline.wire import NODE_OFFLINE_AFTER_SECONDS, SERVER_OPTIONS

log = logging.getLogger(__name__)

#: Streams and calls in flight get this long to finish when the server stops.
STOP_GRACE_SECONDS: Final = 2.0
#: Worker threads of the HTTP API; each holds its own database connection.
HTTP_THREADS: Final = 8
STARTUP_TIMEOUT_SECONDS: Final = 30.0
#: How often the HTTP thread looks up from its sockets to see whether to stop.
HTTP_POLL_SECONDS: Final = 0.2
#: The agents' service, as the gRPC health service names it.
GRPC_SERVICE_NAME: Final = "beaglewind.gamepipeline.v1.GamePipelineGRPCService"


class StartupError(RuntimeError):
    """The server could not bind its ports or open its database."""


@dataclass
class RunningServer:
    """A started server. ``stop()`` ends both faces and closes the database."""

    grpc_port: int
    http_port: int
    store: Store
    _loop_thread: threading.Thread
    _loop: asyncio.AbstractEventLoop
    _stopping: asyncio.Event
    _http_stopping: threading.Event
    _http_thread: threading.Thread

    def stop(self) -> None:
        log.info("server stopping")
        self._http_stopping.set()
        self._http_thread.join(timeout=STOP_GRACE_SECONDS + 10)
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._loop_thread.join(timeout=STOP_GRACE_SECONDS + 10)
        self.store.close()
        log.info("server stopped")


def start_server(
    *,
    db_path: str | Path,
    grpc_host: str = "127.0.0.1",
    grpc_port: int = 0,
    http_host: str = "127.0.0.1",
    http_port: int = 0,
    offline_after_seconds: float = NODE_OFFLINE_AFTER_SECONDS,
    node_lost_after_seconds: float = NODE_LOST_AFTER_SECONDS,
    ack_wait_seconds: float = ACK_WAIT_SECONDS,
    templates_dir: str | Path | None = None,
    envs: dict[str, str] | None = None,
    security: Security | None = None,
) -> RunningServer:
    """Open the database, bind both ports and start serving; answer once both listen.

    ``templates_dir`` holds the templates served by name (default: ``pipelines/`` of a
    checkout); ``envs`` are env values that submissions may leave out. ``security``
    holds the agents' and callers' token hashes and the gRPC port's TLS files; without
    tokens a face is open, which is refused beyond loopback unless it says insecure.
    """
    security = security or Security()
    try:
        for warning in check_exposure(security, grpc_host, http_host):
            log.warning("%s", warning)
    except SecurityConfigError as err:
        raise StartupError(str(err)) from None
    store = Store(db_path)
    was_online = store.mark_all_nodes_offline()
    if was_online:
        log.info("nodes %s are offline until their agents reconnect", was_online)

    metrics = Metrics()
    metrics.watch_store(store)
    dispatcher_box: list[Dispatcher] = []
    started = threading.Event()
    serving = threading.Event()
    outcome: dict[str, Any] = {}

    async def main() -> None:
        dispatcher = Dispatcher(
            store,
            offline_after=offline_after_seconds,
            node_lost_after=node_lost_after_seconds,
            ack_wait=ack_wait_seconds,
            metrics=metrics,
        )
        dispatcher_box.append(dispatcher)
        server = grpc.aio.server(options=list(SERVER_OPTIONS))
        pb_grpc.add_GamePipelineGRPCServiceServicer_to_server(
            PipelineService(store, dispatcher, metrics, security), server
        )
        health_service = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_service, server)
        try:
            port = _add_port(server, f"{grpc_host}:{grpc_port}", security)
            await server.start()
        except Exception as err:
            outcome["error"] = err
            started.set()
            return
        stopping = asyncio.Event()
        outcome.update(port=port, loop=asyncio.get_running_loop(), stopping=stopping)
        dispatch_task = asyncio.create_task(dispatcher.run())
        for service in ("", GRPC_SERVICE_NAME):
            await health_service.set(service, health_pb2.HealthCheckResponse.SERVING)
        serving.set()
        started.set()

        await stopping.wait()
        serving.clear()
        await health_service.enter_graceful_shutdown()
        dispatch_task.cancel()
        await server.stop(STOP_GRACE_SECONDS)

    loop_thread = threading.Thread(
        target=asyncio.run, args=(main(),), name="grpc-loop", daemon=True
    )
    loop_thread.start()
    if not started.wait(STARTUP_TIMEOUT_SECONDS) or "error" in outcome:
        store.close()
        raise StartupError(
            f"cannot serve gRPC on {grpc_host}:{grpc_port}: "
            f"{outcome.get('error', 'timed out')}; pick a free port or stop what holds it"
        )

    folder = Path(templates_dir) if templates_dir else default_templates_dir()
    app = create_app(
        store,
        dispatcher_box[0],
        metrics=metrics,
        ready=serving.is_set,
        templates=TemplateCatalog(folder, envs),
        security=security,
    )
    try:
        # poll(), not waitress's default select(): every agent's connection is a file
        # descriptor of this process, and select() refuses any numbered past 1,023,
        # which ended the HTTP thread as soon as a fleet of about a thousand was
        # connected.
        http = create_server(
            app,
            host=http_host,
            port=http_port,
            threads=HTTP_THREADS,
            asyncore_use_poll=True,
        )
    except OSError as err:
        outcome["loop"].call_soon_threadsafe(outcome["stopping"].set)
        loop_thread.join()
        store.close()
        raise StartupError(
            f"cannot serve HTTP on {http_host}:{http_port}: {err}; "
            "pick a free port or stop what holds it"
        ) from err
    http_stopping = threading.Event()
    http_thread = threading.Thread(
        target=_run_http, args=(http, http_stopping), name="http", daemon=True
    )
    http_thread.start()

    running = RunningServer(
        grpc_port=outcome["port"],
        http_port=int(http.effective_port),
        store=store,
        _loop_thread=loop_thread,
        _loop=outcome["loop"],
        _stopping=outcome["stopping"],
        _http_stopping=http_stopping,
        _http_thread=http_thread,
    )
    log.info(
        "server listening: grpc %s:%d, http %s:%d, db %s",
        grpc_host,
        running.grpc_port,
        http_host,
        running.http_port,
        db_path,
    )
    return running


def serve(
    *,
    db_path: str | Path,
    grpc_address: str = "0.0.0.0:50051",
    http_address: str = "0.0.0.0:8080",
    port_file: str | Path | None = None,
    offline_after_seconds: float = NODE_OFFLINE_AFTER_SECONDS,
    node_lost_after_seconds: float = NODE_LOST_AFTER_SECONDS,
    templates_dir: str | Path | None = None,
    envs: dict[str, str] | None = None,
    security: Security | None = None,
) -> None:
    """Run the server until SIGTERM or SIGINT.

    Addresses are ``HOST:PORT`` (``[::1]:50051`` for IPv6; port 0 picks a free one).
    ``port_file``, when given, receives ``{"grpc": PORT, "http": PORT}`` once both
    listen, written whole (a reader never sees half of it).
    """
    grpc_host, grpc_port = parse_address(grpc_address, "grpc_address")
    http_host, http_port = parse_address(http_address, "http_address")
    with StopSignals() as signals:
        server = start_server(
            db_path=db_path,
            grpc_host=grpc_host,
            grpc_port=grpc_port,
            http_host=http_host,
            http_port=http_port,
            offline_after_seconds=offline_after_seconds,
            node_lost_after_seconds=node_lost_after_seconds,
            templates_dir=templates_dir,
            envs=envs,
            security=security,
        )
        try:
            if port_file is not None:
                _write_port_file(Path(port_file), server.grpc_port, server.http_port)
            log.info("signal received: %s", signals.wait())
        finally:
            server.stop()


def _add_port(server: Any, address: str, security: Security) -> int:
    """Bind the gRPC port: TLS when the server has a certificate, mutual TLS when it
    also has a CA for the agents' certificates."""
    tls = security.tls
    if tls is None:
        return int(server.add_insecure_port(address))
    credentials = grpc.ssl_server_credentials(
        [(tls.key, tls.cert)],
        root_certificates=tls.client_ca,
        require_client_auth=tls.client_ca is not None,
    )
    return int(server.add_secure_port(address, credentials))


def _run_http(http: Any, stopping: threading.Event) -> None:
    """Waitress's loop, polled in short turns so that a stop needs no other thread.

    Closing waitress's sockets from another thread races its loop; here the loop's own
    thread finishes the requests in flight and then closes everything.
    """
    while not stopping.is_set():
        wasyncore.loop(
            timeout=HTTP_POLL_SECONDS,
            map=http._map,
            use_poll=http.adj.asyncore_use_poll,
            count=1,
        )
    http.task_dispatcher.shutdown(timeout=STOP_GRACE_SECONDS)
    for channel in list(http._map.values()):
        channel.close()


def parse_address(address: str, what: str) -> tuple[str, int]:
    """Split ``HOST:PORT``; an empty host means every interface."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(
            f"{what} {address!r} is not HOST:PORT; write for example 0.0.0.0:50051"
        )
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _write_port_file(path: Path, grpc_port: int, http_port: int) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"grpc": grpc_port, "http": http_port}))
    os.replace(partial, path)
