"""Tools of the reliability scenarios (issue 4): processes restarted on the same ports, a
TCP proxy the test can cut, and the comparison of the server's records with the engine.

After each scenario ``check_against_engine`` holds the server to what really happened:
the pipeline's state in the HTTP API and in the SQLite file agree; every report the
server applied was applied once and in sequence order (its log names each one); no
container of the pipeline was started twice (``docker events``); and the pipeline's
containers that still exist are the ones its completed steps left on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest

from gamepipeline.agent.spare import temp_dir_prefix

from .conftest import PIPELINE_LABEL, Process, Server, gamepipeline_command

IMAGE = "gamepipeline/stand-in:busybox"

#: Short liveness settings for the scenarios: agents beat every second, a silent node
#: is offline after 3 s.
FAST_SERVER = ("--offline-after", "3")


# --- processes --------------------------------------------------------------------------


def launch_server(
    workdir: Path, *extra: str, grpc_port: int = 0, name: str = "server"
) -> Server:
    """``gamepipeline server`` on ``grpc_port`` (0: a free one), its database in
    ``workdir``; a restart passes the old port so agents find it again."""
    port_file = workdir / f"{name}-ports.json"
    port_file.unlink(missing_ok=True)
    db_path = workdir / "gamepipeline.db"
    argv = [
        *gamepipeline_command(), "server",
        "--grpc", f"127.0.0.1:{grpc_port}", "--http", "127.0.0.1:0",
        "--db", str(db_path), "--port-file", str(port_file),
        "--log-level", "debug", *extra,
    ]  # fmt: skip
    server = Server(name=name, argv=argv, log=workdir / f"{name}.log", db_path=db_path)
    server.start()
    wait_until(
        port_file.exists,
        30,
        lambda: f"server did not start:\n{server.tail()}",
        alive=server,
    )
    ports = json.loads(port_file.read_text())
    server.grpc_port, server.http_port = ports["grpc"], ports["http"]
    return server


def launch_agent(
    workdir: Path,
    address: str,
    node_id: str,
    *extra: str,
    name: str = "agent",
    env: dict[str, str] | None = None,
) -> Process:
    """``gamepipeline agent`` with its work dir in ``workdir``; not waited for."""
    argv = [
        *gamepipeline_command(), "agent",
        "--server", address, "--node-id", node_id,
        "--work-dir", str(workdir / f"{name}-work"),
        "--log-level", "debug", *extra,
    ]  # fmt: skip
    agent = Process(name=name, argv=argv, log=workdir / f"{name}.log")
    if env:
        with _environment(env):
            agent.start()
    else:
        agent.start()
    return agent


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def wait_until(
    check: Callable[[], Any],
    timeout: float,
    what: str | Callable[[], str],
    *,
    alive: Process | None = None,
    interval: float = 0.1,
) -> Any:
    """Poll ``check`` until it answers something true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        died = alive is not None and alive.proc is not None and alive.proc.poll()
        if (died is not None and died is not False) or time.monotonic() > deadline:
            pytest.fail(what() if callable(what) else f"timed out waiting for {what}")
        time.sleep(interval)


def node_state(server: Server, node_id: str) -> str:
    for node in server.api.nodes():
        if node["node_id"] == node_id:
            return str(node["state"])
    return "unknown"


# --- the engine's ground truth ----------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """A container as the engine listed it."""

    name: str
    status: str


def labelled(engine: docker.DockerClient, pipeline_id: str) -> list[Seen]:
    """The pipeline's containers, from one listing (no inspection of each, which a
    container removed in between would fail)."""
    found = engine.api.containers(
        all=True, filters={"label": f"{PIPELINE_LABEL}={pipeline_id}"}
    )
    return [Seen(c["Names"][0].lstrip("/"), str(c["State"])) for c in found]


def running_names(engine: docker.DockerClient, pipeline_id: str) -> set[str]:
    return {c.name for c in labelled(engine, pipeline_id) if c.status == "running"}


def remove_named(engine: docker.DockerClient, prefix: str) -> None:
    """Remove every container whose name starts with ``prefix``, gone ones aside."""
    for found in engine.api.containers(all=True, filters={"name": prefix}):
        if found["Names"][0].lstrip("/").startswith(prefix):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                engine.api.remove_container(found["Id"], force=True)


def marked_processes(key: str, value: str) -> list[int]:
    """Live processes whose environment carries the run marker ``key=value``
    (``GAMEPIPELINE_NODE_ID`` or ``GAMEPIPELINE_AGENT``: the ansible-playbook an agent
    started and everything under it)."""
    marker = f"{key}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if "State:\tZ" in (entry / "status").read_text():
                continue  # a zombie: dead, waiting for its parent
        except OSError:
            continue
        found.append(int(entry.name))
    return found


def run_temp_dirs(work_dir: Path) -> list[Path]:
    """The TMPDIRs of the runs and spares whose data dirs are in an agent's work dir."""
    names = [
        entry.name
        for folder in ("runs", "spares")
        if (work_dir / folder).is_dir()
        for entry in (work_dir / folder).iterdir()
    ]
    return [
        path
        for name in names
        for path in Path(tempfile.gettempdir()).glob(f"{temp_dir_prefix(name)}*")
    ]


def process_marker(pid: int, key: str) -> str:
    """The value of run marker ``key`` in a process's environment ("" if none)."""
    with contextlib.suppress(OSError):
        for item in (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0"):
            name, _, value = item.partition(b"=")
            if name.decode(errors="replace") == key:
                return value.decode(errors="replace")
    return ""


class EngineEvents:
    """Container starts as the engine announces them, recorded from the moment this is
    made (the engine keeps only its last few hundred events for later questions)."""

    def __init__(self, engine: docker.DockerClient) -> None:
        self._stream = engine.events(
            filters={"type": "container", "event": "start"}, decode=True
        )
        self._starts: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):
            for event in self._stream:
                attributes = event["Actor"]["Attributes"]
                with self._lock:
                    self._starts.append(
                        (attributes.get(PIPELINE_LABEL, ""), attributes["name"])
                    )

    def starts(self, pipeline_id: str) -> Counter[str]:
        """How often each container of the pipeline was started."""
        with self._lock:
            return Counter(name for pid, name in self._starts if pid == pipeline_id)

    def close(self) -> None:
        self._stream.close()


@contextlib.contextmanager
def engine_events(engine: docker.DockerClient) -> Iterator[EngineEvents]:
    recorder = EngineEvents(engine)
    try:
        yield recorder
    finally:
        recorder.close()


# --- the server's records ---------------------------------------------------------------


_APPLIED = re.compile(r"applied report (\d+) from node (\S+) on pipeline (\w+)")


def applied_sequences(server_logs: list[Path], pipeline_id: str) -> list[int]:
    """Sequence numbers of the reports the server applied, in the order it did."""
    found = []
    for log in server_logs:
        for match in _APPLIED.finditer(log.read_text(errors="replace")):
            if match.group(3) == pipeline_id:
                found.append(int(match.group(1)))
    return found


def database_row(db_path: Path, pipeline_id: str) -> dict[str, Any]:
    """The pipeline and its steps as the SQLite file holds them (read-only)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute(
            "SELECT * FROM pipelines WHERE id = ?", [pipeline_id]
        ).fetchone()
        steps = conn.execute(
            "SELECT idx, state, reason FROM steps WHERE pipeline_id = ? ORDER BY idx",
            [pipeline_id],
        ).fetchall()
    finally:
        conn.close()
    assert row is not None, f"pipeline {pipeline_id} is not in {db_path}"
    return {**dict(row), "steps": [dict(step) for step in steps]}


@dataclass
class Expected:
    """What reality says a pipeline ended as."""

    state: str
    reason: str
    steps: list[str]
    #: Names of the containers that must still exist (and run) afterwards.
    kept: set[str] = field(default_factory=set)


def check_against_engine(
    server: Server,
    engine: docker.DockerClient,
    pipeline_id: str,
    expected: Expected,
    *,
    events: EngineEvents,
    server_logs: list[Path] | None = None,
) -> dict[str, Any]:
    """Hold the server's records of a finished pipeline to the engine's ground truth."""
    shown = server.api.pipeline(pipeline_id)
    assert (shown["state"], shown["reason"]) == (expected.state, expected.reason), shown
    assert [step["state"] for step in shown["steps"]] == expected.steps, shown

    stored = database_row(server.db_path, pipeline_id)
    assert (stored["state"], stored["reason"]) == (expected.state, expected.reason)
    assert [step["state"] for step in stored["steps"]] == expected.steps
    assert stored["finished_at_ms"] is not None

    applied = applied_sequences(server_logs or [server.log], pipeline_id)
    assert applied, "the server applied no report"
    assert applied == sorted(set(applied)), f"applied out of order or twice: {applied}"
    assert applied[-1] <= stored["last_sequence"]

    starts = events.starts(pipeline_id)
    twice = {name: n for name, n in starts.items() if n > 1}
    assert not twice, f"containers started more than once: {twice}"
    left = {c.name: c.status for c in labelled(engine, pipeline_id)}
    assert set(left) == expected.kept, f"containers left: {left}"
    assert all(status == "running" for status in left.values()), left
    return shown


# --- a TCP proxy the test controls ------------------------------------------------------


class Proxy:
    """Forwards loopback TCP connections to ``target_port``; the test can cut it.

    ``cut()`` makes it a black hole, as a dead link or a router that lost its state
    would be: bytes stop flowing both ways without a FIN or RST, and new connections
    are taken in and get nothing. ``restore()`` resets the connections held during the
    cut (their state is gone, as a NAT's would be) and forwards new ones again.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        self._flowing = threading.Event()
        self._flowing.set()
        self._held: set[asyncio.StreamWriter] = set()
        #: Connections caught by a cut: they never carry a byte again.
        self._doomed: set[asyncio.StreamWriter] = set()
        self._cut_after: int | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Proxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop
        ).result(5)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut_after_large_message(self, size: int) -> None:
        """Cut the link right after the server sends a chunk of ``size`` bytes or more
        to the agent (a pipeline handed over; heartbeat answers are far smaller)."""

        def arm() -> None:
            self._cut_after = size

        self._on_loop(arm)

    def cut(self) -> None:
        def hold() -> None:
            self._flowing.clear()
            self._doomed |= self._held

        self._on_loop(hold)

    def restore(self) -> None:
        def reset_held() -> None:
            for writer in self._doomed:
                writer.transport.abort()
            self._doomed.clear()
            self._flowing.set()

        self._on_loop(reset_held)

    def _on_loop(self, action: Callable[[], None]) -> None:
        async def run() -> None:
            action()

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(5)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._held):
                writer.transport.abort()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        self._held.add(writer)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            writer.transport.abort()
            self._held.discard(writer)
            return
        self._held.add(upstream_writer)
        await asyncio.gather(
            self._pipe(reader, upstream_writer),
            self._pipe(upstream_reader, writer, to_agent=True),
            return_exceptions=True,
        )
        for end in (writer, upstream_writer):
            self._held.discard(end)
            end.transport.abort()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        to_agent: bool = False,
    ) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if not self._flowing.is_set():
                self._doomed.add(writer)
            while writer in self._doomed:
                # A black hole: hold the bytes and never deliver them.
                if writer.transport.is_closing():
                    return
                await asyncio.sleep(0.05)
            if writer.transport.is_closing():
                return
            writer.write(data)
            await writer.drain()
            if (
                to_agent
                and self._cut_after is not None
                and len(data) >= self._cut_after
            ):
                self._cut_after = None
                self._flowing.clear()
                self._doomed |= self._held
        writer.transport.abort()
