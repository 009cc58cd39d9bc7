"""Benchmark 4: the agent's footprint, idle and with 20 pipelines running at once.

A real ``gamepipeline agent`` (capacity 20) connected to a real server. Idle: its CPU and
RSS over ``IDLE_SECONDS`` once connected and its spare ansible-playbook is ready (started,
warmed up and waiting for a pipeline). Busy: 20 one-step ``commands`` pipelines that
each run ``sleep SLEEP`` in a container, submitted together; sampled from the moment all
20 are submitted until all have ended. Figures are given for the agent's own process and
for its whole process tree (the agent plus the ansible-playbook processes it starts),
whose memory is also given as PSS, which counts the pages its forked processes share
once.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker

from benchmarks.common import (
    BENCH_LABEL,
    BENCH_RUN,
    Profiler,
    Sampler,
    start_agent,
    start_server,
    wait_final,
)
from benchmarks.startup import SpareWatch, remove_bench_containers

IDLE_SECONDS = 10.0
PIPELINES = 20
SLEEP = 10


def _document(index: int) -> dict[str, Any]:
    return {
        "name": f"footprint-{index}",
        "steps": [
            {
                "name": "sleep",
                "container": {
                    "image": "gamepipeline/stand-in:busybox",
                    "labels": {BENCH_LABEL: BENCH_RUN},
                    "commands": [f"sleep {SLEEP}"],
                },
            }
        ],
    }


def run(workdir: Path, *, profile: bool = False) -> dict[str, Any]:
    workdir = workdir / "footprint"
    client = docker.from_env()
    server = start_server(workdir)
    agent = None
    try:
        node = f"footprint-{uuid.uuid4().hex[:6]}"
        agent = start_agent(workdir, server, node, "--capacity", str(PIPELINES))
        spare = SpareWatch(agent.log)
        spare.wait()
        time.sleep(1.0)  # start-up is over
        with (
            Sampler(agent.pid, interval=1.0) as idle_own,
            Sampler(agent.pid, interval=1.0, children=True, pss=True) as idle_tree,
        ):
            time.sleep(IDLE_SECONDS)
        prof = (
            Profiler("footprint-agent", agent.pid, 120, subprocesses=False)
            if profile
            else None
        )
        if prof:
            prof.__enter__()
        started = time.monotonic()
        with (
            Sampler(agent.pid, interval=0.5) as busy_own,
            Sampler(agent.pid, interval=0.5, children=True, pss=True) as busy_tree,
            ThreadPoolExecutor(PIPELINES) as pool,
        ):
            ids = list(
                pool.map(
                    lambda i: server.api.submit(_document(i), node=node),
                    range(PIPELINES),
                )
            )
            finals = list(pool.map(lambda p: wait_final(server.api, p, 240, 0.2), ids))
        if prof:
            prof.__exit__(None, None, None)
        elapsed = time.monotonic() - started
        states = [final["state"] for final, _ in finals]
        ended = [seen - started for _, seen in finals]
        result: dict[str, Any] = {
            "idle": {
                "spare_ready_s": round(spare.waits[0], 1),
                "agent": idle_own.usage().as_dict(),
                "tree": idle_tree.usage().as_dict(),
            },
            "busy": {
                "pipelines": PIPELINES,
                "sleep_seconds": SLEEP,
                "agent": busy_own.usage().as_dict(),
                "tree": busy_tree.usage().as_dict(),
                "completed": states.count("completed"),
                "states": sorted(set(states)),
                "first_done_s": round(min(ended), 1),
                "last_done_s": round(max(ended), 1),
                "seconds": round(elapsed, 1),
            },
        }
        if prof:
            result["profile"] = prof.top()
        return result
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
        remove_bench_containers(client)
        client.close()
