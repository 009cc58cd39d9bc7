"""The agent process: configuration, start and stop.

``run_agent(config)`` is what ``gamepipeline agent`` calls: it blocks until SIGTERM or
SIGINT. ``start_agent(config)`` starts the same agent in background threads and returns a
``RunningAgent`` whose ``stop()`` ends it, for tests and embedding.

An agent holds its work dir locked while it runs (``lock_work_dir``): a second agent
on the same work dir refuses to start. When the agent starts, before it registers, it
kills the playbooks a previous agent of its node left running, settles the runs a
previous agent on the same work dir left unfinished, and lists the labelled
containers on its engine for the server, which settles the pipelines the agent no
longer knows and names the containers to remove (``recovery``). It keeps a spare ansible-playbook started ahead of the next pipeline
(``spare``); a new spare is started each time one is taken. When the agent stops, every
run still going is ended by the agent itself: ansible-runner is stopped, the container
of the step that had not finished is removed, and the pipeline fails with the reason
AGENT_RESTARTED ("the agent stopped during step N"). Its reports are journaled and
delivered if the server is reachable, or by the next agent started on the same work dir.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import IO, Final

from gamepipeline.agent.config import AgentConfig
from gamepipeline.agent.connection import AgentError, Connection, FatalConnectionError
from gamepipeline.agent.events import PipelineReport, Report
from gamepipeline.agent.markers import ActiveRuns
from gamepipeline.agent.recovery import (
    clear_leftover_dirs,
    kill_leftover_playbooks,
    settle_interrupted_runs,
)
from gamepipeline.agent.reporter import Reporter
from gamepipeline.agent.runner import ContainerJanitor, PipelineRun
from gamepipeline.agent.spare import SparePool
from gamepipeline.logs import ids
from gamepipeline.proto import gamepipeline_pb2 as pb
from gamepipeline.stop_signals import StopSignals

__all__ = [
    "AgentConfig",
    "AgentError",
    "FatalConnectionError",
    "RunningAgent",
    "run_agent",
    "start_agent",
]

log = logging.getLogger(__name__)

STOP_RUNS_SECONDS = 30.0
"""How long stopping the agent waits for its runs to wind down and clean up."""

FLUSH_SECONDS = 5.0
"""How long stopping the agent waits for the server to take the last reports."""

REMEMBER_ENDED = 1000
"""How many ended pipelines the agent remembers, so that one handed over again (the
server had not heard of its end yet) is not run a second time."""

LANDING_SECONDS = 1.0
"""How long a start waits after killing leftover playbooks before it lists the engine:
a container create or start a killed module had in flight may land a moment later."""


class Agent:
    """Takes pipelines in hand, runs them, cancels them; the connection's handler."""

    def __init__(
        self,
        config: AgentConfig,
        reporter: Reporter,
        janitor: ContainerJanitor | None = None,
    ) -> None:
        self._config = config
        self._reporter = reporter
        self._janitor = janitor or ContainerJanitor()
        self.active = ActiveRuns(config.active_dir)
        self.spares = SparePool(
            config.spares_dir,
            node_id=config.node_id,
            enabled=config.spare,
            mitogen=config.mitogen,
        )
        self._runs: dict[str, PipelineRun] = {}
        #: Every run whose thread has not ended, including those whose end is already
        #: reported and that are still removing their dir: stopping waits for them.
        self._live: set[PipelineRun] = set()
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._accepting = True
        #: Until a registration carrying the start's inventory is accepted.
        self._reconciled = False
        #: Cleared while the containers the server named at registration are removed;
        #: runs wait for it, so none starts a container of the same name meanwhile.
        self._engine_ready = threading.Event()
        self._engine_ready.set()

    def running_ids(self) -> list[str]:
        """The pipelines this node runs, and those whose end it has yet to get across:
        the server waits for their reports and settles any other it holds for us."""
        with self._lock:
            running = set(self._runs)
        return sorted(running | set(self._reporter.reporting_ids()))

    def handle_pipeline(self, pipeline: pb.GamePipeline) -> pb.PipelineAck:
        node, pid = self._config.node_id, pipeline.id
        with self._lock:
            if pid in self._runs:
                log.info("node %s: pipeline %s is already running here", node, pid)
                return pb.PipelineAck(
                    pipeline_id=pid, accepted=True, message="already running"
                )
            if pid in self._ended or self._reporter.has_reported(pid):
                # It ran here while the server could not hear of it (a cut link, a
                # restart); its journaled reports are on their way. Never run it twice.
                log.warning(
                    "node %s: pipeline %s already ran here; not running it again",
                    node,
                    pid,
                )
                return pb.PipelineAck(
                    pipeline_id=pid,
                    accepted=True,
                    message="already ran on this node; its reports follow",
                )
            refusal = self._refusal()
            if refusal:
                log.warning("node %s: refusing pipeline %s: %s", node, pid, refusal)
                return pb.PipelineAck(pipeline_id=pid, accepted=False, message=refusal)
            run = PipelineRun(
                pipeline,
                runs_dir=self._config.runs_dir,
                node_envs=self._config.envs,
                emit=self._emit,
                on_done=self._forget,
                janitor=self._janitor,
                active=self.active,
                policy=self._config.policy,
                node_id=node,
                ready=self._engine_ready,
                spares=self.spares,
                mitogen=self._config.mitogen,
            )
            self._runs[pid] = run
            self._live.add(run)
        log.info("node %s: starting pipeline %s", node, pid)
        run.start()
        return pb.PipelineAck(pipeline_id=pid, accepted=True)

    def _refusal(self) -> str:
        if not self._accepting:
            return f"node {self._config.node_id} is shutting down"
        if len(self._runs) >= self._config.capacity:
            return (
                f"node {self._config.node_id} is at capacity "
                f"({self._config.capacity} pipelines running)"
            )
        return ""

    def settle_interrupted(self) -> list[str]:
        """Kill the playbooks a previous agent of this node left running, then settle
        the runs a previous agent on this work dir left unfinished."""
        if kill_leftover_playbooks(self._config.node_id, self.active):
            time.sleep(LANDING_SECONDS)
        settled = settle_interrupted_runs(self.active, self._reporter, self._janitor)
        clear_leftover_dirs(self._config.spares_dir, self._config.node_id)
        clear_leftover_dirs(self._config.runs_dir, self._config.node_id)
        with self._lock:
            for pid in settled:
                self._remember_ended(pid)
        return settled

    def inventory(self) -> pb.NodeInventory | None:
        """The labelled containers on the engine, until a registration carrying them
        is accepted; None after that (a reconnect is not a start)."""
        if self._reconciled:
            return None
        try:
            found = self._janitor.inventory()
        except Exception as err:
            # The server still settles what the agent does not list; it only cannot
            # name containers to remove.
            log.warning(
                "node %s: could not list the engine's containers: %s",
                self._config.node_id,
                err,
            )
            found = []
        return pb.NodeInventory(containers=found)

    def handle_registered(self, accepted: pb.RegistrationAccepted) -> None:
        """The server took the registration: remove the containers it names, in the
        background; runs handed over meanwhile wait until that is done."""
        if self._reconciled:
            return
        self._reconciled = True
        keep = set(self.running_ids())
        doomed: dict[str, list[str]] = {}
        for found in accepted.remove_containers:
            if found.pipeline_id in keep:
                log.warning(
                    "node %s: not removing container %s: pipeline %s runs here",
                    self._config.node_id,
                    found.name,
                    found.pipeline_id,
                )
                continue
            doomed.setdefault(found.pipeline_id, []).append(found.name)
        if not doomed:
            return
        self._engine_ready.clear()
        threading.Thread(
            target=self._remove_left_behind,
            args=(doomed,),
            name="agent-start-cleanup",
            daemon=True,
        ).start()

    def _remove_left_behind(self, doomed: dict[str, list[str]]) -> None:
        node = self._config.node_id
        try:
            for pipeline_id, names in sorted(doomed.items()):
                try:
                    removed = self._janitor.remove(pipeline_id, names)
                except Exception:
                    log.exception(
                        "node %s: could not remove containers %s of pipeline %s",
                        node,
                        names,
                        pipeline_id,
                    )
                    continue
                log.warning(
                    "node %s: removed containers %s that pipeline %s left behind",
                    node,
                    removed,
                    pipeline_id,
                    extra=ids(pipeline_id, node_id=node),
                )
        finally:
            self._engine_ready.set()

    def handle_cancel(self, cancel: pb.CancelPipeline) -> None:
        with self._lock:
            run = self._runs.get(cancel.pipeline_id)
        if run is None:
            log.info(
                "node %s: cancel for pipeline %s, which is not running here",
                self._config.node_id,
                cancel.pipeline_id,
            )
            return
        log.info(
            "node %s: canceling pipeline %s: %s",
            self._config.node_id,
            cancel.pipeline_id,
            cancel.reason or "no reason given",
        )
        run.cancel(cancel.reason)

    def shutdown(self, timeout: float) -> None:
        """Refuse new pipelines, end the running ones, wait for them."""
        with self._lock:
            self._accepting = False
            runs = list(self._live)
        self.spares.close()
        for run in runs:
            run.interrupt()
        deadline = time.monotonic() + timeout
        for run in runs:
            run.join(max(0.0, deadline - time.monotonic()))

    def _emit(self, pipeline_id: str, report: Report) -> None:
        if isinstance(report, PipelineReport) and report.final:
            # The slot is free once the run's end is reported: the server may hand
            # over the next pipeline at once, before this run's thread has wound down.
            # ``running_ids`` still lists it meanwhile: the reporter has its earlier
            # reports (a run's first report is never its final one).
            with self._lock:
                self._runs.pop(pipeline_id, None)
                self._remember_ended(pipeline_id)
        self._reporter.submit(pipeline_id, report)

    def _remember_ended(self, pipeline_id: str) -> None:
        self._ended[pipeline_id] = None
        while len(self._ended) > REMEMBER_ENDED:
            self._ended.popitem(last=False)

    def _forget(self, run: PipelineRun) -> None:
        with self._lock:
            self._live.discard(run)
            if self._runs.get(run.pipeline_id) is run:
                del self._runs[run.pipeline_id]
        # Taking the spare started the next one; this covers a run that found none.
        self.spares.replenish()


#: The file in an agent's work dir that names the node whose runs it holds.
NODE_ID_FILE: Final = "node-id"


def claim_work_dir(work_dir: Path, node_id: str) -> None:
    """Make ``work_dir`` this node's, or refuse it if it holds another node's runs.

    The journal and run markers in a work dir are reports and runs of the node that
    wrote them; an agent of another node id could neither deliver them (the server
    takes reports only from the node a pipeline is assigned to) nor settle them.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    marker = work_dir / NODE_ID_FILE
    try:
        owner = marker.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        owner = ""
    if owner and owner != node_id:
        raise AgentError(
            f"work dir {work_dir} holds the runs and reports of node {owner}, not "
            f"{node_id}; start this agent with --node-id {owner}, or give node "
            f"{node_id} a work dir of its own"
        )
    if not owner:
        partial = marker.with_suffix(".partial")
        partial.write_text(node_id + "\n", encoding="utf-8")
        partial.replace(marker)


#: The file in an agent's work dir that the agent using it holds locked.
LOCK_FILE: Final = "agent.lock"


def lock_work_dir(work_dir: Path, node_id: str) -> IO[str]:
    """Hold ``work_dir`` for this agent until the returned file is closed.

    A second agent on the same work dir would take the first one's runs for those of
    a dead agent: fail them, remove their containers and dirs. It refuses to start
    instead, naming the agent that holds the dir. The lock is the kernel's (``flock``
    on ``agent.lock``), so it goes with the process however that ends; the file says
    who holds it.
    """
    path = work_dir / LOCK_FILE
    handle = path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "an agent that has not said who it is"
        handle.close()
        raise AgentError(
            f"work dir {work_dir} is in use by another agent of node {node_id} "
            f"({holder}); stop that agent first, or give this one a work dir of its "
            "own (--work-dir) and a node id of its own (--node-id)"
        ) from None
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    handle.truncate(0)
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {since}\n")
    handle.flush()
    return handle


class RunningAgent:
    """An agent running in background threads; ``stop()`` ends it."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        claim_work_dir(config.work_dir, config.node_id)
        self._work_lock = lock_work_dir(config.work_dir, config.node_id)
        self.reporter = Reporter(config.node_id, config.journal_dir)
        self.agent = Agent(config, self.reporter)
        self.connection = Connection(config, self.agent, self.reporter.set_stub)
        self.error: AgentError | None = None
        self._thread = threading.Thread(
            target=self._connect, name="agent-connection", daemon=True
        )
        self._stopped = False

    def start(self) -> None:
        log.info(
            "node %s: agent starting, server %s",
            self.config.node_id,
            self.config.server_address,
        )
        settled = self.agent.settle_interrupted()
        if settled:
            log.warning(
                "node %s: failed %d pipelines the last agent left unfinished: %s",
                self.config.node_id,
                len(settled),
                ", ".join(settled),
            )
        self.agent.spares.replenish()
        self.reporter.start()
        self._thread.start()

    def _connect(self) -> None:
        try:
            self.connection.run()
        except AgentError as err:
            self.error = err
        except Exception as err:
            log.exception("node %s: agent connection crashed", self.config.node_id)
            self.error = AgentError(f"the agent's connection crashed: {err}")

    @property
    def alive(self) -> bool:
        """False once the connection gave up (see ``error``)."""
        return self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the connection to end; True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self, timeout: float = STOP_RUNS_SECONDS) -> None:
        """End the runs, deliver what can be delivered, disconnect. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        node = self.config.node_id
        log.info("node %s: agent stopping", node)
        self.agent.shutdown(timeout)
        if self.connection.connected.is_set() and not self.reporter.flush(
            FLUSH_SECONDS
        ):
            log.warning(
                "node %s: %d reports left in the journal for the next start",
                node,
                self.reporter.pending(),
            )
        self.connection.stop()
        self._thread.join(timeout)
        self.reporter.stop()
        self._work_lock.close()
        log.info("node %s: agent stopped", node)


def start_agent(config: AgentConfig) -> RunningAgent:
    """Start an agent in background threads and return it; call ``stop()`` to end it."""
    agent = RunningAgent(config)
    agent.start()
    return agent


def run_agent(config: AgentConfig) -> None:
    """Run an agent until SIGTERM or SIGINT. Must be called from the main thread.

    Raises:
        FatalConnectionError: the server refused the agent for good (bad node id or
            credentials, an unsupported protocol version, another agent with this node
            id); retrying would not help.
    """
    with StopSignals() as signals:
        agent = start_agent(config)
        try:
            received = signals.wait(lambda: agent.alive)
            if received:
                log.info("node %s: received signal %s", config.node_id, received)
        finally:
            agent.stop()
    if agent.error is not None:
        raise agent.error
