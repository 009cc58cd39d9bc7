"""A servicer that stores nothing: the baseline of the status-ingestion benchmark.

``python -m benchmarks.null_server --port-file FILE`` serves the generated
``GamePipelineGRPCServiceServicer`` on a loopback port the OS picks, with the server's
own channel options, and answers every status report ``applied=true`` without looking at
it. It writes ``{"grpc": PORT}`` to the port file once it listens and exits on SIGTERM or
after ``--lifetime`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import grpc

from gamepipeline import wire
from gamepipeline.proto import gamepipeline_pb2 as pb
from gamepipeline.proto import gamepipeline_pb2_grpc as pb_grpc


class NullServicer(pb_grpc.GamePipelineGRPCServiceServicer):
    async def UpdatePipelineStatus(
        self, request: pb.UpdatePipelineStatusRequest, context: Any
    ) -> pb.UpdatePipelineStatusResponse:
        return pb.UpdatePipelineStatusResponse(applied=True)

    async def UpdateStepStatus(
        self, request: pb.UpdateStepStatusRequest, context: Any
    ) -> pb.UpdateStepStatusResponse:
        return pb.UpdateStepStatusResponse(applied=True)


async def main(port_file: Path, lifetime: float) -> None:
    server = grpc.aio.server(options=list(wire.SERVER_OPTIONS))
    pb_grpc.add_GamePipelineGRPCServiceServicer_to_server(NullServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    partial = port_file.with_name(port_file.name + ".partial")
    partial.write_text(json.dumps({"grpc": port}))
    os.replace(partial, port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=lifetime)
    await server.stop(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--lifetime", type=float, default=600)
    options = parser.parse_args()
    asyncio.run(main(options.port_file, options.lifetime))
