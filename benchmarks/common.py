"""What the benchmarks share: processes, statistics, sampling and profiling."""

from __future__ import annotations

import collections
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from gamepipeline.client import ApiClient

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"
PROFILE_DIR = BENCH_DIR / "profiles"
PIPELINE_LABEL = "io.beaglewind.gamepipeline.pipeline"
#: Every container a benchmark starts carries this label, with this run's BENCH_RUN as
#: its value, so cleanup finds them all and never another run's on the same engine.
BENCH_LABEL = "gamepipeline-bench"
BENCH_RUN = uuid.uuid4().hex[:8]


# --- statistics -------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) by linear interpolation; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(seconds: Iterable[float]) -> dict[str, float]:
    """p50/p95/p99/mean/max in milliseconds of durations given in seconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "mean_ms": round(sum(ms) / len(ms), 2) if ms else math.nan,
        "max_ms": round(max(ms), 2) if ms else math.nan,
    }


# --- processes --------------------------------------------------------------------------


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def _raise_fd_limit() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Proc:
    """A child process in a session of its own, logging to a file."""

    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        handle = self.log.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            stdout=handle,
            stderr=handle,
            env=python_env(),
            start_new_session=True,
            preexec_fn=_raise_fd_limit,
        )
        handle.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 15) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)
        except ProcessLookupError:
            pass

    def tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class ServerProc(Proc):
    grpc_port: int = 0
    http_port: int = 0

    @property
    def api(self) -> ApiClient:
        return ApiClient(f"http://127.0.0.1:{self.http_port}", timeout=30)

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def start_server(workdir: Path, name: str = "server") -> ServerProc:
    """A real ``gamepipeline server`` on loopback ports the OS picks."""
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / f"{name}-ports.json"
    port_file.unlink(missing_ok=True)
    argv = [
        sys.executable, "-m", "gamepipeline", "server",
        "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0",
        "--db", str(workdir / f"{name}.db"),
        "--port-file", str(port_file),
        "--log-level", "info",
    ]  # fmt: skip
    server = ServerProc(name, argv, workdir / f"{name}.log")
    server.start()
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if not server.alive() or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"server did not start:\n{server.tail()}")
        time.sleep(0.05)
    ports = json.loads(port_file.read_text())
    server.grpc_port, server.http_port = ports["grpc"], ports["http"]
    return server


def start_agent(
    workdir: Path, server: ServerProc, node_id: str, *extra: str, name: str = "agent"
) -> Proc:
    """A real ``gamepipeline agent``; answers once the server lists it online."""
    argv = [
        sys.executable, "-m", "gamepipeline", "agent",
        "--server", server.grpc_address,
        "--node-id", node_id,
        "--work-dir", str(workdir / f"{name}-work"),
        "--log-level", "info",
        *extra,
    ]  # fmt: skip
    agent = Proc(name, argv, workdir / f"{name}.log").start()
    deadline = time.monotonic() + 30
    while True:
        nodes = server.api.nodes()
        if any(n["node_id"] == node_id and n["state"] == "online" for n in nodes):
            return agent
        if not agent.alive() or time.monotonic() > deadline:
            agent.stop()
            raise RuntimeError(f"agent {node_id} did not connect:\n{agent.tail()}")
        time.sleep(0.1)


def wait_final(
    api: ApiClient, pipeline_id: str, timeout: float, interval: float = 0.02
) -> tuple[dict[str, Any], float]:
    """Poll until the pipeline ends; answer it and the monotonic time it was seen so."""
    deadline = time.monotonic() + timeout
    while True:
        current = api.pipeline(pipeline_id)
        now = time.monotonic()
        if current["state"] in ("completed", "failed", "canceled"):
            return current, now
        if now > deadline:
            raise TimeoutError(f"pipeline {pipeline_id} still {current['state']}")
        time.sleep(interval)


# --- sampling CPU and memory ------------------------------------------------------------


@dataclass
class Usage:
    cpu_percent_mean: float
    cpu_percent_max: float
    rss_mib_mean: float
    rss_mib_max: float
    samples: int
    pss_mib_mean: float = math.nan
    pss_mib_max: float = math.nan

    def as_dict(self) -> dict[str, float]:
        return {
            "cpu_percent_mean": round(self.cpu_percent_mean, 1),
            "cpu_percent_max": round(self.cpu_percent_max, 1),
            "rss_mib_mean": round(self.rss_mib_mean, 1),
            "rss_mib_max": round(self.rss_mib_max, 1),
            "pss_mib_mean": round(self.pss_mib_mean, 1),
            "pss_mib_max": round(self.pss_mib_max, 1),
            "samples": self.samples,
        }


@dataclass
class Sampler:
    """Samples a process's CPU (100 % = one core) and RSS, optionally with its
    children, in a thread, every ``interval`` seconds.

    RSS summed over a tree counts the pages forked processes share once per process;
    ``pss`` (proportional set size) splits each shared page between its sharers, so
    its sum is what the tree really holds. It costs a read of each process's memory
    map, so it is taken only when asked for."""

    pid: int
    interval: float = 0.5
    children: bool = False
    pss: bool = False
    _cpu: list[float] = field(default_factory=list)
    _rss: list[float] = field(default_factory=list)
    _pss: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _tree(self, root: psutil.Process) -> list[psutil.Process]:
        procs = [root]
        if self.children:
            procs += root.children(recursive=True)
        return procs

    def _run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        seen: dict[int, psutil.Process] = {}
        last_times: dict[int, float] = {}
        last = time.monotonic()
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            cpu_seconds = 0.0
            rss = 0
            pss = 0
            try:
                procs = self._tree(root)
            except psutil.Error:
                return
            for proc in procs:
                proc = seen.setdefault(proc.pid, proc)
                try:
                    times = proc.cpu_times()
                    total = times.user + times.system
                    if self.pss:
                        full = proc.memory_full_info()
                        rss += full.rss
                        pss += full.pss
                    else:
                        rss += proc.memory_info().rss
                except psutil.Error:
                    continue
                cpu_seconds += total - last_times.get(proc.pid, total)
                last_times[proc.pid] = total
            self._cpu.append(100 * cpu_seconds / max(now - last, 1e-6))
            self._rss.append(rss / 2**20)
            if self.pss:
                self._pss.append(pss / 2**20)
            last = now

    def usage(self) -> Usage:
        cpu = self._cpu or [math.nan]
        rss = self._rss or [math.nan]
        pss = self._pss or [math.nan]
        return Usage(
            sum(cpu) / len(cpu),
            max(cpu),
            sum(rss) / len(rss),
            max(rss),
            len(self._cpu),
            sum(pss) / len(pss),
            max(pss),
        )


# --- profiling --------------------------------------------------------------------------


class Profiler:
    """``py-spy record`` attached to a process for a bounded time (``--profile``).

    Writes collapsed stacks to benchmarks/profiles/<name>.txt; ``top`` reads them back
    as the functions that hold the most samples, inclusive of what they call.
    """

    def __init__(
        self,
        name: str,
        pid: int,
        seconds: float,
        *,
        subprocesses: bool = False,
        wall: bool = False,
    ) -> None:
        self.name = name
        self.out = PROFILE_DIR / f"{name}.txt"
        self.proc: subprocess.Popen[bytes] | None = None
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
        argv = [
            py_spy, "record", "--pid", str(pid), "--format", "raw",
            "--output", str(self.out), "--duration", str(max(1, int(seconds))),
            "--rate", "200", "--nonblocking",
        ]  # fmt: skip
        if subprocesses:
            argv.append("--subprocesses")
        if wall:
            # Waiting counts too (a commit's fsync blocks the event loop off-CPU), and
            # each stack starts with its thread's name so one thread can be picked out.
            argv += ["--idle", "--threads"]
        self.argv = argv

    def __enter__(self) -> Profiler:
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes what it has
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def top(self, count: int = 12, thread: str | None = None) -> list[dict[str, Any]]:
        return top_frames(self.out, count, thread)


def top_frames(
    path: Path, count: int = 12, thread: str | None = None
) -> list[dict[str, Any]]:
    """The heaviest frames of a collapsed-stack file: inclusive and self shares.

    With ``thread``, only the stacks of threads whose name starts with it (the file
    must come from ``wall=True``), as shares of that thread's wall time.
    """
    if not path.exists():
        return []
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        samples = int(n)
        total += samples
        if thread is not None:
            head = stack.split(";", 1)[0]
            if not head.partition(": ")[2].startswith(thread):
                total -= samples
                continue
        frames = [_short(f) for f in stack.split(";") if f]
        for frame in set(frames):
            inclusive[frame] += samples
        if frames:
            own[frames[-1]] += samples
    if not total:
        return []
    heaviest = [
        {
            "frame": frame,
            "inclusive_pct": round(100 * n / total, 1),
            "self_pct": round(100 * own[frame] / total, 1),
        }
        for frame, n in inclusive.most_common(count * 4)
        if not frame.startswith(("<module>", "process ", "thread ", "_bootstrap"))
    ]
    return [*heaviest[:count], {"frame": "(total samples)", "samples": total}]


def _short(frame: str) -> str:
    """``func (path/to/module.py:123)`` → ``func (module.py)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else file
    return f"{name} ({short})"
