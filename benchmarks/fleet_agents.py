"""Simulated agents for the fleet benchmark: many real gRPC streams in one process.

Run as ``python -m benchmarks.fleet_agents --server HOST:PORT --prefix P``; it reads
commands on stdin, one per line, and answers each with one JSON line on stdout:

- ``grow K``: open K more agents (each its own channel, so its own TCP connection) and
  answer once all of them are registered or 60 s have passed;
- ``dump``: answer what happened since the last dump: pipelines received (id and
  ``time.monotonic()``, which is system-wide on Linux and so comparable with the
  driver's), heartbeat round trips, status calls made and refused, streams lost;
- ``quit``: close every stream and exit.

Each agent does what ``gamepipeline.agent`` does on the wire, without running anything:
it registers with the contract's version, sends a heartbeat every interval the server
names, acks each pipeline on the stream and then reports it through the real unary
RPCs: pipeline RUNNING, each step RUNNING and COMPLETED, pipeline COMPLETED, numbered 1,
2, 3... as the contract asks. The process exits by itself after ``--lifetime`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import grpc

from gamepipeline import wire
from gamepipeline.proto import gamepipeline_pb2 as pb
from gamepipeline.proto import gamepipeline_pb2_grpc as pb_grpc

CALL_TIMEOUT = 30.0


class Stats:
    def __init__(self) -> None:
        self.received: list[tuple[str, float]] = []
        self.heartbeat_rtt: list[float] = []
        self.completed: list[str] = []
        self.status_calls = 0
        self.status_errors: list[str] = []
        self.streams_lost: list[str] = []
        self.duplicates = 0

    def dump(self) -> dict[str, Any]:
        out = {
            "received": self.received,
            "heartbeat_rtt": self.heartbeat_rtt,
            "completed": self.completed,
            "status_calls": self.status_calls,
            "status_errors": self.status_errors[:20],
            "status_error_count": len(self.status_errors),
            "streams_lost": self.streams_lost[:20],
            "streams_lost_count": len(self.streams_lost),
            "duplicates": self.duplicates,
        }
        self.__init__()  # type: ignore[misc]
        return out


class SimAgent:
    def __init__(
        self,
        address: str,
        node_id: str,
        stats: Stats,
        *,
        capacity: int = 4,
        report: bool = True,
    ) -> None:
        self.node_id = node_id
        self.capacity = capacity
        self.report = report
        self.stats = stats
        self.channel = grpc.aio.insecure_channel(
            address, options=list(wire.AGENT_CHANNEL_OPTIONS)
        )
        self.stub = pb_grpc.GamePipelineGRPCServiceStub(self.channel)
        self.outbox: asyncio.Queue[pb.PipelineStreamRequest | None] = asyncio.Queue()
        self.registered = asyncio.Event()
        self.interval = float(wire.HEARTBEAT_INTERVAL_SECONDS)
        self.sent_beats: dict[int, float] = {}
        self.seen: set[str] = set()
        self.closing = False
        self.tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _requests(self) -> Any:
        yield pb.PipelineStreamRequest(
            register=pb.AgentRegistration(
                node_id=self.node_id,
                hostname="sim-" + self.node_id,
                capacity=self.capacity,
                agent_version="bench-sim",
                protocol_version=wire.PROTOCOL_VERSION,
            )
        )
        while True:
            item = await self.outbox.get()
            if item is None:
                return
            yield item

    async def run(self) -> None:
        call = self.stub.PipelineStream(self._requests())
        try:
            async for response in call:
                kind = response.WhichOneof("kind")
                if kind == "registered":
                    if response.registered.heartbeat_interval_seconds > 0:
                        self.interval = float(
                            response.registered.heartbeat_interval_seconds
                        )
                    self.registered.set()
                    self._spawn(self._heartbeats())
                elif kind == "pipeline":
                    now = time.monotonic()
                    pipeline = response.pipeline
                    if pipeline.id in self.seen:
                        self.stats.duplicates += 1
                        continue
                    self.seen.add(pipeline.id)
                    self.stats.received.append((pipeline.id, now))
                    self.outbox.put_nowait(
                        pb.PipelineStreamRequest(
                            ack=pb.PipelineAck(pipeline_id=pipeline.id, accepted=True)
                        )
                    )
                    if self.report:
                        self._spawn(self._report(pipeline.id, len(pipeline.steps)))
                elif kind == "heartbeat_ack":
                    sent = self.sent_beats.pop(response.heartbeat_ack.sent_at_ms, None)
                    if sent is not None:
                        self.stats.heartbeat_rtt.append(time.monotonic() - sent)
        except grpc.aio.AioRpcError as err:
            if not self.closing:
                self.stats.streams_lost.append(
                    f"{self.node_id}: {err.code().name} {err.details()}"
                )
            return
        if not self.closing:
            self.stats.streams_lost.append(f"{self.node_id}: stream ended")

    async def _heartbeats(self) -> None:
        while not self.closing:
            await asyncio.sleep(self.interval)
            sent_at = int(time.time() * 1000)
            while sent_at in self.sent_beats:
                sent_at += 1
            self.sent_beats[sent_at] = time.monotonic()
            self.outbox.put_nowait(
                pb.PipelineStreamRequest(
                    heartbeat=pb.Heartbeat(running_pipeline_ids=[], sent_at_ms=sent_at)
                )
            )

    async def _report(self, pipeline_id: str, steps: int) -> None:
        common = {"node_id": self.node_id, "pipeline_id": pipeline_id}
        calls: list[tuple[Any, Any]] = [
            (
                self.stub.UpdatePipelineStatus,
                pb.UpdatePipelineStatusRequest(
                    state=pb.PIPELINE_STATE_RUNNING, **common
                ),
            )
        ]
        for index in range(steps):
            for state in (pb.STEP_STATE_RUNNING, pb.STEP_STATE_COMPLETED):
                calls.append(
                    (
                        self.stub.UpdateStepStatus,
                        pb.UpdateStepStatusRequest(
                            step_index=index, state=state, **common
                        ),
                    )
                )
        calls.append(
            (
                self.stub.UpdatePipelineStatus,
                pb.UpdatePipelineStatusRequest(
                    state=pb.PIPELINE_STATE_COMPLETED, **common
                ),
            )
        )
        for sequence, (method, request) in enumerate(calls, start=1):
            request.sequence = sequence
            request.timestamp_ms = int(time.time() * 1000)
            self.stats.status_calls += 1
            try:
                answer = await method(request, timeout=CALL_TIMEOUT)
            except grpc.aio.AioRpcError as err:
                self.stats.status_errors.append(
                    f"{pipeline_id}#{sequence}: {err.code().name} {err.details()}"
                )
                return
            if not answer.applied:
                self.stats.status_errors.append(
                    f"{pipeline_id}#{sequence}: not applied: {answer.detail}"
                )
                return
        self.stats.completed.append(pipeline_id)

    async def close(self) -> None:
        self.closing = True
        self.outbox.put_nowait(None)
        for task in list(self.tasks):
            task.cancel()
        await self.channel.close()


async def main(args: argparse.Namespace) -> None:
    stats = Stats()
    agents: list[SimAgent] = []
    runners: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )

    def answer(data: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    deadline = time.monotonic() + args.lifetime
    while time.monotonic() < deadline:
        try:
            line = await asyncio.wait_for(
                reader.readline(), timeout=deadline - time.monotonic()
            )
        except TimeoutError:
            break
        if not line:
            break
        command, _, arg = line.decode().strip().partition(" ")
        if command == "grow":
            new = [
                SimAgent(args.server, f"{args.prefix}-{len(agents) + i}", stats)
                for i in range(int(arg))
            ]
            started = time.monotonic()
            for i, agent in enumerate(new):
                runners.append(asyncio.create_task(agent.run()))
                if i % 50 == 49:
                    await asyncio.sleep(0.05)  # open connections in small batches
            agents += new
            waits = [asyncio.create_task(a.registered.wait()) for a in new]
            await asyncio.wait(waits, timeout=60)
            for wait in waits:
                wait.cancel()
            answer(
                {
                    "agents": len(agents),
                    "registered": sum(a.registered.is_set() for a in agents),
                    "seconds": round(time.monotonic() - started, 2),
                }
            )
        elif command == "dump":
            answer(stats.dump())
        elif command == "quit":
            break
    await asyncio.gather(*(a.close() for a in agents), return_exceptions=True)
    for runner in runners:
        runner.cancel()
    answer({"bye": True})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--lifetime", type=float, default=900)
    asyncio.run(main(parser.parse_args()))
