"""Benchmark 3: status ingestion, persisted against a servicer that stores nothing.

Setup: a real server; one simulated agent (ack only, capacity large) takes ``PIPELINES``
pipelines of ``STEPS`` steps each, so that every report below is one the server applies.
Then ``CLIENTS`` concurrent clients (asyncio tasks over ``CHANNELS`` channels, in this
process) send ``UpdateStepStatus``: each client walks its own pipelines, each step
RUNNING then COMPLETED, numbered as the contract asks, one call at a time, for
``SECONDS``. The same clients then do the same against ``benchmarks.null_server``. The
figure is applied answers per second.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from benchmarks.common import Proc, Profiler, Sampler, start_server, summary_ms
from benchmarks.fleet_agents import SimAgent, Stats
from gamepipeline import wire
from gamepipeline.proto import gamepipeline_pb2 as pb
from gamepipeline.proto import gamepipeline_pb2_grpc as pb_grpc

PIPELINES = 400
STEPS = 40
CLIENTS = 64
CHANNELS = 8
SECONDS = 6.0
NODE = "ingest-node"


def _document() -> dict[str, Any]:
    return {
        "name": "ingest-bench",
        "steps": [
            {
                "name": f"step {i}",
                "container": {
                    "image": "gamepipeline/stand-in:busybox",
                    "commands": ["true"],
                },
            }
            for i in range(STEPS)
        ],
    }


def _reports(pipeline_ids: list[str]) -> Iterator[pb.UpdateStepStatusRequest]:
    """One client's reports, pipeline after pipeline, each in the contract's order."""
    for pipeline_id in pipeline_ids:
        sequence = itertools.count(1)
        for index in range(STEPS):
            for state in (pb.STEP_STATE_RUNNING, pb.STEP_STATE_COMPLETED):
                yield pb.UpdateStepStatusRequest(
                    node_id=NODE,
                    pipeline_id=pipeline_id,
                    step_index=index,
                    state=state,
                    sequence=next(sequence),
                    timestamp_ms=int(time.time() * 1000),
                )


async def _load(address: str, pipeline_ids: list[str]) -> dict[str, Any]:
    channels = [
        grpc.aio.insecure_channel(address, options=list(wire.AGENT_CHANNEL_OPTIONS))
        for _ in range(CHANNELS)
    ]
    stubs = [pb_grpc.GamePipelineGRPCServiceStub(c) for c in channels]
    applied = 0
    refused: list[str] = []
    latencies: list[float] = []
    stop_at = time.monotonic() + SECONDS

    async def client(n: int) -> None:
        nonlocal applied
        stub = stubs[n % CHANNELS]
        for request in _reports(pipeline_ids[n::CLIENTS]):
            if time.monotonic() > stop_at:
                return
            sent = time.monotonic()
            try:
                answer = await stub.UpdateStepStatus(request, timeout=30)
            except grpc.aio.AioRpcError as err:
                refused.append(f"{err.code().name}: {err.details()}")
                continue
            latencies.append(time.monotonic() - sent)
            if answer.applied:
                applied += 1
            else:
                refused.append(answer.detail)

    # Connect before the clock starts.
    await asyncio.gather(*(c.channel_ready() for c in channels))
    started = time.monotonic()
    stop_at = started + SECONDS
    await asyncio.gather(*(client(n) for n in range(CLIENTS)))
    elapsed = time.monotonic() - started
    await asyncio.gather(*(c.close() for c in channels))
    return {
        "applied": applied,
        "seconds": round(elapsed, 2),
        "per_second": round(applied / elapsed, 1),
        "refused": len(refused),
        "refused_examples": refused[:3],
        "call_latency": summary_ms(latencies),
    }


async def _setup(server: Any) -> tuple[list[str], SimAgent, asyncio.Task[None]]:
    """Give PIPELINES pipelines to an ack-only simulated agent; answer their ids and
    the agent, which stays connected so that the pipelines stay assigned to it."""
    stats = Stats()
    channel = grpc.aio.insecure_channel(
        server.grpc_address, options=list(wire.AGENT_CHANNEL_OPTIONS)
    )
    agent = SimAgent(channel, NODE, stats, capacity=PIPELINES * 2, report=False)
    runner = asyncio.create_task(agent.run())
    await asyncio.wait_for(agent.registered.wait(), 30)
    document = _document()
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(8) as pool:
        ids = await asyncio.gather(
            *(
                loop.run_in_executor(
                    pool, lambda: server.api.submit(document, node=NODE)
                )
                for _ in range(PIPELINES)
            )
        )
    deadline = time.monotonic() + 60
    while len(stats.received) < PIPELINES and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # the acks are on their way
    if len(stats.received) < PIPELINES:
        raise RuntimeError(f"only {len(stats.received)} of {PIPELINES} dispatched")
    return list(ids), agent, runner


def run(workdir: Path, *, profile: bool = False) -> dict[str, Any]:
    workdir = workdir / "ingest"
    workdir.mkdir(parents=True, exist_ok=True)
    server = start_server(workdir)
    port_file = workdir / "null-ports.json"
    port_file.unlink(missing_ok=True)
    null = Proc(
        "null-server",
        [sys.executable, "-m", "benchmarks.null_server", "--port-file", str(port_file)],
        workdir / "null-server.log",
    ).start()
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if not null.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"null server did not start:\n{null.tail()}")
            time.sleep(0.05)
        null_address = f"127.0.0.1:{json.loads(port_file.read_text())['grpc']}"
        return asyncio.run(_measure(server, null, null_address, profile))
    finally:
        null.stop()
        server.stop()


async def _measure(
    server: Any, null: Proc, null_address: str, profile: bool
) -> dict[str, Any]:
    ids, agent, runner = await _setup(server)
    try:
        with Sampler(null.pid, interval=0.5) as null_usage:
            baseline = await _load(null_address, ids)
        prof = (
            Profiler("ingest-server", server.pid, SECONDS + 2, wall=True)
            if profile
            else None
        )
        if prof:
            prof.__enter__()
        with Sampler(server.pid, interval=0.5) as server_usage:
            persisted = await _load(server.grpc_address, ids)
        if prof:
            prof.__exit__(None, None, None)
    finally:
        agent.close()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await agent.channel.close()
    result: dict[str, Any] = {
        "clients": CLIENTS,
        "channels": CHANNELS,
        "persisted": {**persisted, "server": server_usage.usage().as_dict()},
        "no_storage": {**baseline, "server": null_usage.usage().as_dict()},
        "ratio": round(persisted["per_second"] / max(baseline["per_second"], 1e-9), 3),
        "targets": {"persisted_per_second": 5000, "ratio": 0.5},
    }
    if prof:
        result["profile"] = prof.top(thread="grpc-loop")
    return result
