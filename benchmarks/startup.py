"""Benchmark 1: submit to running, against ``docker run -d`` of the same containers.

A one-step service pipeline and a three-step demo-like pipeline are submitted over HTTP
to a real server with a real agent; a round's time runs from just before the POST to the
first poll (every 20 ms) that finds the pipeline completed. The baseline is ``docker run
-d`` (the CLI, as an operator would type it) of the same containers with the same
options, one after another for the three-step case. Rounds alternate which of the two
goes first; every container is removed between rounds, outside the timed part.

Each timed part (the pipeline, or the ``docker run``s) begins only once the agent's next
spare ansible-playbook is ready (its ``spare … ready`` log line, after its Mitogen
warm-up), up to ``SPARE_WAIT_SECONDS``: the pipeline measured is one that reaches an
agent at rest, as a game start usually does, and the baseline is not slowed by a spare
starting beside it. The untimed waits are reported (``spare_wait_s``); a pipeline that
arrives while the spare is still starting is slower, which ``RESULTS.md`` measures
apart.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import docker

from benchmarks.common import (
    BENCH_LABEL,
    BENCH_RUN,
    PIPELINE_LABEL,
    Profiler,
    percentile,
    start_agent,
    start_server,
    summary_ms,
    wait_final,
)

BUSYBOX = "gamepipeline/stand-in:busybox"
#: A round whose pipeline fails is run again, at most this many times. On a shared
#: machine another test run's cleanup can remove a container mid-round (see RESULTS.md).
RETRIES = 2
BENCH_DATA = Path("/data/gamepipeline-bench")
#: Longest untimed wait for the agent's next spare before a timed part.
SPARE_WAIT_SECONDS = 20.0
SPARE_READY = b"spare ansible-playbook ready"
GAME = "game-server:latest"


class RoundFailed(Exception):
    """The pipeline of a round did not complete."""


class SpareWatch:
    """Waits for the agent's next spare, from the ``ready`` lines of its log."""

    def __init__(self, log: Path) -> None:
        self._log = log
        self._seen = 0
        self.waits: list[float] = []

    def _count(self) -> int:
        try:
            return self._log.read_bytes().count(SPARE_READY)
        except FileNotFoundError:
            return 0

    def taken(self) -> None:
        """A pipeline was submitted: the spare that was ready is gone."""
        self._seen = self._count()

    def wait(self) -> None:
        """Until a spare started after the last submission is ready (or the bound)."""
        began = time.monotonic()
        deadline = began + SPARE_WAIT_SECONDS
        while self._count() <= self._seen and time.monotonic() < deadline:
            time.sleep(0.05)
        self.waits.append(time.monotonic() - began)


def one_step(prefix: str) -> tuple[dict[str, Any], list[list[str]]]:
    """The one-step pipeline and the ``docker run`` argv of its container."""
    name = f"{prefix}-svc"
    document = {
        "name": "bench-one-step",
        "steps": [
            {
                "name": "service",
                "type": "service",
                "container": {
                    "image": BUSYBOX,
                    "container_name": name,
                    "labels": {BENCH_LABEL: BENCH_RUN},
                },
            }
        ],
    }
    runs = [["--name", name, "--label", f"{BENCH_LABEL}={BENCH_RUN}", BUSYBOX]]
    return document, runs


def three_step(prefix: str, workdir: Path) -> tuple[dict[str, Any], list[list[str]]]:
    """A demo-like pipeline (database, game server, sidecar) and its three runs.

    Like pipelines/demo.yaml, but with names, data dirs and no host ports of its own,
    so that it never meets a demo someone else is running.
    """
    # Under /data, like the demo's: the node's default policy mounts nothing else.
    data = BENCH_DATA
    db_env = {"MYSQL_ROOT_PASSWORD": "secret"}
    game_env = {
        "DB_HOST": "localhost",
        "DB_PORT": "3306",
        "TZ": "Asia/Shanghai",
        "DISPLAY_SIZEW": "1920",
        "DISPLAY_SIZEH": "1080",
        "SELKIES_ENCODER": "nvh264enc",
        "SELKIES_FRAMERATE": "30",
        "SELKIES_ENABLE_RESIZE": "false",
        "PASSWD": "pa$$word",
    }
    names = [f"{prefix}-db", f"{prefix}-game", f"{prefix}-sidecar"]
    labels = {BENCH_LABEL: BENCH_RUN}
    document = {
        "name": "bench-three-step",
        "steps": [
            {
                "name": "database",
                "container": {
                    "image": BUSYBOX,
                    "container_name": names[0],
                    "environment": db_env,
                    "volumes": [f"{data}/db:/var/lib/mysql"],
                    "labels": labels,
                },
            },
            {
                "name": "game server",
                "container": {
                    "image": GAME,
                    "container_name": names[1],
                    "hostname": "gamenode-bench",
                    "security_opt": ["seccomp=unconfined"],
                    "cap_add": ["SYS_RAWIO"],
                    "tmpfs": ["/dev/shm:rw"],
                    "volumes": [f"{data}/game:/app/data"],
                    "environment": game_env,
                    "labels": labels,
                },
            },
            {
                "name": "sidecar",
                "type": "service",
                "container": {
                    "image": BUSYBOX,
                    "container_name": names[2],
                    "labels": labels,
                },
            },
        ],
    }
    label = ["--label", f"{BENCH_LABEL}={BENCH_RUN}"]
    runs = [
        ["--name", names[0], *label, "-v", f"{data}/db:/var/lib/mysql"]
        + [a for k, v in db_env.items() for a in ("-e", f"{k}={v}")]
        + [BUSYBOX],
        ["--name", names[1], *label, "--hostname", "gamenode-bench"]
        + ["--security-opt", "seccomp=unconfined", "--cap-add", "SYS_RAWIO"]
        + ["--tmpfs", "/dev/shm:rw", "-v", f"{data}/game:/app/data"]
        + [a for k, v in game_env.items() for a in ("-e", f"{k}={v}")]
        + [GAME],
        ["--name", names[2], *label, BUSYBOX],
    ]
    return document, runs


def _docker_runs(runs: list[list[str]]) -> float:
    started = time.monotonic()
    for argv in runs:
        subprocess.run(
            ["docker", "run", "-d", *argv],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=60,
        )
    return time.monotonic() - started


def remove_bench_containers(client: Any) -> None:
    for container in client.containers.list(
        all=True, filters={"label": f"{BENCH_LABEL}={BENCH_RUN}"}
    ):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            container.remove(force=True)


def run(
    workdir: Path, *, rounds: int = 20, profile: bool = False, budget: float = 540
) -> dict[str, Any]:
    """Both cases, ``rounds`` rounds each, interleaved; a case stops early when its
    share of ``budget`` seconds is spent (the rounds it ran are reported)."""
    client = docker.from_env()
    remove_bench_containers(client)
    server = start_server(workdir / "startup")
    agent = None
    node = f"bench-{uuid.uuid4().hex[:6]}"
    result: dict[str, Any] = {}
    deadline = time.monotonic() + budget
    try:
        agent = start_agent(workdir / "startup", server, node, "--capacity", "4")
        spares = SpareWatch(agent.log)
        # One unmeasured round of each: images and Ansible's modules warm in the cache.
        for case in ("one_step", "three_step"):
            with contextlib.suppress(RoundFailed):
                _round(case, server, node, client, workdir, 0, True, spares)
        for left, case in ((2, "one_step"), (1, "three_step")):
            # Each case gets its share of the time still left.
            case_deadline = time.monotonic() + (deadline - time.monotonic()) / left
            times: dict[str, list[float]] = {"pipeline": [], "docker": []}
            failures: list[str] = []
            for i in range(1, rounds + 1):
                for _ in range(RETRIES + 1):
                    if time.monotonic() > case_deadline:
                        break
                    try:
                        p, d = _round(
                            case, server, node, client, workdir, i, i % 2 == 1, spares
                        )
                    except RoundFailed as err:
                        failures.append(str(err))
                        remove_bench_containers(client)
                        continue
                    times["pipeline"].append(p)
                    times["docker"].append(d)
                    break
            if not times["pipeline"]:
                result[case] = {"rounds": 0, "failures": failures}
                continue
            pipe, dock = summary_ms(times["pipeline"]), summary_ms(times["docker"])
            waits = spares.waits
            spares.waits = []
            result[case] = {
                "rounds": len(times["pipeline"]),
                "spare_wait_s": {
                    "p50": round(percentile(waits, 50), 2),
                    "max": round(max(waits), 2),
                },
                "pipeline": pipe,
                "docker_run": dock,
                "failed_rounds": len(failures),
                "failures": failures[:5],
                "p50_ratio": round(pipe["p50_ms"] / dock["p50_ms"], 2),
                "p95_ratio": round(
                    percentile([t * 1000 for t in times["pipeline"]], 95)
                    / percentile([t * 1000 for t in times["docker"]], 95),
                    2,
                ),
            }
        if profile:
            result["profile"] = _profile(server, agent, node, client, workdir)
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
        remove_bench_containers(client)
        client.close()
    return result


def _round(
    case: str,
    server: Any,
    node: str,
    client: Any,
    workdir: Path,
    index: int,
    pipeline_first: bool,
    spares: SpareWatch,
) -> tuple[float, float]:
    tag = uuid.uuid4().hex[:6]
    make = _one if case == "one_step" else _three
    document, _ = make(f"gpb-p{index}-{tag}", workdir)
    _, runs = make(f"gpb-d{index}-{tag}", workdir)

    def pipeline() -> float:
        spares.wait()
        started = time.monotonic()
        pid = server.api.submit(document, node=node)
        spares.taken()
        final, seen = wait_final(server.api, pid, timeout=120)
        if final["state"] != "completed":
            raise RoundFailed(
                f"pipeline {pid} ended {final['state']}: {final['message']}"
            )
        return seen - started

    if pipeline_first:
        p = pipeline()
        remove_bench_containers(client)
        spares.wait()
        d = _docker_runs(runs)
    else:
        spares.wait()
        d = _docker_runs(runs)
        remove_bench_containers(client)
        p = pipeline()
    remove_bench_containers(client)
    return p, d


def _three(prefix: str, workdir: Path) -> tuple[dict[str, Any], list[list[str]]]:
    return three_step(prefix, workdir)


def _one(prefix: str, workdir: Path) -> tuple[dict[str, Any], list[list[str]]]:
    return one_step(prefix)


def _profile(
    server: Any, agent: Any, node: str, client: Any, workdir: Path
) -> dict[str, Any]:
    """Five one-step rounds under py-spy: the server, and the agent with its children."""
    out: dict[str, Any] = {}
    with (
        Profiler("startup-agent", agent.pid, 60, subprocesses=True) as agent_prof,
        Profiler("startup-server", server.pid, 60, wall=True) as server_prof,
    ):
        for i in range(5):
            document, _ = one_step(f"gpb-prof{i}-{uuid.uuid4().hex[:6]}")
            pid = server.api.submit(document, node=node)
            wait_final(server.api, pid, timeout=120)
            remove_bench_containers(client)
    out["agent"] = agent_prof.top()
    out["server_grpc_loop"] = server_prof.top(thread="grpc-loop")
    # Where a run's time goes, by the PIPELINE_LABEL containers' own clock.
    out["note"] = f"containers labelled {PIPELINE_LABEL} removed after each round"
    return out
