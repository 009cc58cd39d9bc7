"""A server with a large fleet connected (issue 8, benchmark 2): what breaks first when
thousands of agents hold connections, found by the fleet benchmark and kept fixed here.

- Every agent's connection is a file descriptor of the server's process; the HTTP API
  must go on answering once they are numbered past 1,023 (``select()``'s limit).
- Every agent of a fleet reconnects within a second or two of a server restart; all
  their streams must be taken, none cancelled by gRPC's backlog of calls waiting for
  the event loop.

Real server in-process, real sockets; the agents' streams come from another process
(real gRPC, real registrations), so they arrive as fast as the network takes them.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gamepipeline.server.app import RunningServer

from .server_peer import start

pytestmark = pytest.mark.timeout(120)

#: File descriptors the test holds open so that the server's next ones are numbered
#: past select()'s limit of 1,023.
HELD_FDS = 1_100
#: Streams opened at once: past gRPC's default backlog (1,000 waiting calls, random
#: cancels up to 3,000).
STREAMS = 3_000
CONNECTIONS = 6


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start(tmp_path / "server.db")
    yield running
    running.stop()


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def test_http_api_answers_once_descriptors_pass_select_limit(
    server: RunningServer,
) -> None:
    _raise_fd_limit(HELD_FDS + 512)
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(HELD_FDS)]
    try:
        assert max(held) > 1_023
        base = f"http://127.0.0.1:{server.http_port}"
        for _ in range(3):  # each request is a new connection, a new descriptor
            answer = requests.get(f"{base}/api/nodes", timeout=5)
            assert answer.status_code == 200, answer.text
    finally:
        for fd in held:
            os.close(fd)


# Runs in its own process: opens STREAMS registrations over CONNECTIONS HTTP/2
# connections at once and prints how many were accepted and how the others ended.
_CLIENT = textwrap.dedent(
    """
    import asyncio, collections, json, sys
    import grpc
    from gamepipeline import wire
    from gamepipeline.proto import gamepipeline_pb2 as pb
    from gamepipeline.proto import gamepipeline_pb2_grpc as pb_grpc

    async def register(stub, node_id, outcomes, done):
        async def requests():
            yield pb.PipelineStreamRequest(register=pb.AgentRegistration(
                node_id=node_id, hostname=node_id, capacity=1,
                agent_version="test", protocol_version=wire.PROTOCOL_VERSION))
            await done.wait()
        try:
            async for response in stub.PipelineStream(requests()):
                if response.WhichOneof("kind") == "registered":
                    outcomes["registered"] += 1
                    break
        except grpc.aio.AioRpcError as err:
            outcomes[f"{err.code().name} {err.details()}"] += 1

    async def main(address, streams, connections):
        channels = [
            grpc.aio.insecure_channel(
                address, options=[*wire.AGENT_CHANNEL_OPTIONS, ("test.conn", i)])
            for i in range(connections)
        ]
        stubs = [pb_grpc.GamePipelineGRPCServiceStub(c) for c in channels]
        outcomes = collections.Counter()
        done = asyncio.Event()
        calls = [
            register(stubs[i % connections], f"scale-{i}", outcomes, done)
            for i in range(streams)
        ]
        await asyncio.wait_for(asyncio.gather(*calls), timeout=90)
        done.set()
        print(json.dumps(outcomes))
        for channel in channels:
            await channel.close()

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
    """
)


def test_a_whole_fleet_registering_at_once_is_taken_in(
    server: RunningServer, tmp_path: Path
) -> None:
    _raise_fd_limit(STREAMS + 1_024)
    script = tmp_path / "fleet_client.py"
    script.write_text(_CLIENT)
    address = f"127.0.0.1:{server.grpc_port}"
    done = subprocess.run(
        [sys.executable, str(script), address, str(STREAMS), str(CONNECTIONS)],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcomes = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcomes == {"registered": STREAMS}
