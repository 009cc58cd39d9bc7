"""Simulated agents for the fleet benchmark: many real gRPC streams in one process.

Run as ``python -m benchmarks.fleet_agents --server HOST:PORT --prefix P``; it reads
commands on stdin, one per line, and answers each with one JSON line on stdout:

- ``grow K RATE``: open K more agents, RATE new streams per second (the registration
  ramp), and answer once all of them are registered or ``--grow-timeout`` seconds have
  passed, with how many registered, how long that took and every failed attempt by
  status;
- ``dump``: answer what happened since the last dump: pipelines received (id and
  ``time.monotonic()``, which is system-wide on Linux and so comparable with the
  driver's), heartbeat round trips, status calls made and refused, streams lost;
- ``quit``: close every stream and exit.

Each agent does what ``gamepipeline.agent`` does on the wire, without running anything:
it registers with the contract's version, sends a heartbeat every interval the server
names, acks each pipeline on the stream and then reports it through the real unary
RPCs: pipeline RUNNING, each step RUNNING and COMPLETED, pipeline COMPLETED, numbered 1,
2, 3... as the contract asks. Like the agent (``gamepipeline.agent.connection``), an agent
whose stream fails or ends retries with the agent's own capped, jittered backoff
(``gamepipeline.agent.backoff``), and stops only on a final status. A stream that ends
after it registered counts as lost, even though the agent then reconnects.

The agents share ``--connections`` channels (HTTP/2 connections) per process, taken in
turn; 0 gives each agent a connection of its own, as a real fleet has. The process exits
by itself after ``--lifetime`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from typing import Any

import grpc

from gamepipeline import wire
from gamepipeline.agent.backoff import HEALTHY_AFTER_SECONDS, Backoff, is_transient
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
        #: Attempts to open a stream and register that failed, by status.
        self.attempts_failed: collections.Counter[str] = collections.Counter()

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
            "attempts_failed": dict(self.attempts_failed),
        }
        self.__init__()  # type: ignore[misc]
        return out


class Channels:
    """The process's channels: ``count`` of them shared in turn, or one per agent."""

    def __init__(self, address: str, count: int) -> None:
        self.address = address
        self.count = count
        self._shared: list[grpc.aio.Channel] = []
        self._own: list[grpc.aio.Channel] = []
        self._next = 0

    def _open(self, index: int) -> grpc.aio.Channel:
        # A channel argument of its own keeps gRPC from sharing one connection among
        # channels to the same address (its subchannel pool is keyed by the arguments).
        options = [
            *wire.AGENT_CHANNEL_OPTIONS,
            ("gamepipeline.bench.connection", index),
        ]
        return grpc.aio.insecure_channel(self.address, options=options)

    def take(self) -> grpc.aio.Channel:
        if self.count <= 0:
            channel = self._open(len(self._own))
            self._own.append(channel)
            return channel
        if len(self._shared) < self.count:
            self._shared.append(self._open(len(self._shared)))
        channel = self._shared[self._next % self.count]
        self._next += 1
        return channel

    async def close(self) -> None:
        await asyncio.gather(
            *(c.close() for c in self._shared + self._own), return_exceptions=True
        )


class SimAgent:
    def __init__(
        self,
        channel: grpc.aio.Channel,
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
        self.channel = channel
        self.stub = pb_grpc.GamePipelineGRPCServiceStub(channel)
        self.registered = asyncio.Event()
        self.registered_at: float | None = None
        self.interval = float(wire.HEARTBEAT_INTERVAL_SECONDS)
        self.sent_beats: dict[int, float] = {}
        self.seen: set[str] = set()
        self.closing = False
        self.fatal: str | None = None
        self.backoff = Backoff()
        self.outbox: asyncio.Queue[pb.PipelineStreamRequest | None] = asyncio.Queue()
        self.tasks: set[asyncio.Task[None]] = set()
        self.heartbeats: asyncio.Task[None] | None = None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _requests(
        self, outbox: asyncio.Queue[pb.PipelineStreamRequest | None]
    ) -> Any:
        yield pb.PipelineStreamRequest(
            register=pb.AgentRegistration(
                node_id=self.node_id,
                hostname="sim-" + self.node_id,
                capacity=self.capacity,
                agent_version="bench-sim",
                protocol_version=wire.PROTOCOL_VERSION,
                running_pipeline_ids=sorted(self.seen - set(self.stats.completed)),
            )
        )
        while True:
            item = await outbox.get()
            if item is None:
                return
            yield item

    async def run(self) -> None:
        """Keep a registered stream open, as the agent's connection loop does."""
        while not self.closing:
            started = time.monotonic()
            was_registered = False
            # Each stream has its own outbox: what a dead stream had queued stays there.
            self.outbox = asyncio.Queue()
            why = "stream ended"
            code: grpc.StatusCode | None = None
            try:
                was_registered = await self._serve()
            except grpc.aio.AioRpcError as err:
                code = err.code()
                why = f"{code.name} {err.details()}"
            finally:
                if self.heartbeats is not None:
                    self.heartbeats.cancel()
                    self.heartbeats = None
            if self.closing:
                return
            if was_registered:
                self.stats.streams_lost.append(f"{self.node_id}: {why}")
            else:
                self.stats.attempts_failed[why] += 1
            if code is not None and not is_transient(code):
                self.fatal = why
                return
            if was_registered and time.monotonic() - started >= HEALTHY_AFTER_SECONDS:
                self.backoff.reset()
            await asyncio.sleep(self.backoff.next_delay())

    async def _serve(self) -> bool:
        """One stream; answers whether it registered before it ended."""
        registered = False
        call = self.stub.PipelineStream(self._requests(self.outbox))
        async for response in call:
            kind = response.WhichOneof("kind")
            if kind == "registered":
                if response.registered.heartbeat_interval_seconds > 0:
                    self.interval = float(
                        response.registered.heartbeat_interval_seconds
                    )
                registered = True
                if self.registered_at is None:
                    self.registered_at = time.monotonic()
                self.registered.set()
                self.heartbeats = asyncio.create_task(self._heartbeats(self.outbox))
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
        return registered

    async def _heartbeats(
        self, outbox: asyncio.Queue[pb.PipelineStreamRequest | None]
    ) -> None:
        while not self.closing:
            await asyncio.sleep(self.interval)
            sent_at = int(time.time() * 1000)
            while sent_at in self.sent_beats:
                sent_at += 1
            self.sent_beats[sent_at] = time.monotonic()
            outbox.put_nowait(
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

    def close(self) -> None:
        self.closing = True
        self.outbox.put_nowait(None)
        for task in list(self.tasks):
            task.cancel()


async def _grow(
    args: argparse.Namespace,
    count: int,
    rate: float,
    agents: list[SimAgent],
    runners: list[asyncio.Task[None]],
    channels: Channels,
    stats: Stats,
) -> dict[str, Any]:
    """Open ``count`` agents at ``rate`` per second; answer once they registered."""
    new: list[SimAgent] = []
    started = time.monotonic()
    for i in range(count):
        due = started + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        agent = SimAgent(
            channels.take(), f"{args.prefix}-{len(agents) + len(new)}", stats
        )
        new.append(agent)
        runners.append(asyncio.create_task(agent.run()))
    agents += new
    opened = time.monotonic() - started
    deadline = started + args.grow_timeout
    while time.monotonic() < deadline:
        if all(a.registered.is_set() or a.fatal for a in new):
            break
        await asyncio.sleep(0.1)
    times = sorted(a.registered_at - started for a in new if a.registered_at)
    return {
        "agents": len(agents),
        "registered": sum(a.registered.is_set() for a in agents),
        "seconds": round(time.monotonic() - started, 2),
        "opened_seconds": round(opened, 2),
        "last_registered_s": round(times[-1], 2) if times else None,
        "attempts_failed": dict(stats.attempts_failed),
        "fatal": [f"{a.node_id}: {a.fatal}" for a in new if a.fatal][:5],
    }


async def main(args: argparse.Namespace) -> None:
    stats = Stats()
    agents: list[SimAgent] = []
    runners: list[asyncio.Task[None]] = []
    channels = Channels(args.server, args.connections)
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
        command, *rest = line.decode().split()
        if command == "grow":
            count, rate = int(rest[0]), float(rest[1]) if len(rest) > 1 else 1000.0
            answer(await _grow(args, count, rate, agents, runners, channels, stats))
        elif command == "dump":
            answer(stats.dump())
        elif command == "quit":
            break
    for agent in agents:
        agent.close()
    for runner in runners:
        runner.cancel()
    await asyncio.gather(*runners, return_exceptions=True)
    await channels.close()
    answer({"bye": True})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--lifetime", type=float, default=900)
    parser.add_argument(
        "--connections",
        type=int,
        default=0,
        help="channels (HTTP/2 connections) the agents share; 0: one per agent",
    )
    parser.add_argument("--grow-timeout", type=float, default=90)
    asyncio.run(main(parser.parse_args()))
