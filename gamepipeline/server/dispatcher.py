"""Which node runs which pipeline, and which nodes are alive.

The dispatcher lives on the gRPC event loop. It keeps one ``AgentSession`` per connected
node and runs a pass whenever something changes (a submission, a node connecting, a
pipeline ending) and once a second in any case:

- every pending pipeline goes to a node: the one it names, queued while that node is
  offline, full, in maintenance or disabled, or else the connected active node with the
  most free slots among those whose labels match the pipeline's ``node_selector``. A node never
  holds more pending and running pipelines than the capacity it declared. The pipeline is
  marked assigned in the store before its message is queued, so a crash in between can
  only leave it assigned and unsent, and it is sent again when the node reconnects. A
  pipeline handed over on a live stream and not acknowledged within
  ``ACK_WAIT_SECONDS`` is sent again on that stream (the agent runs a pipeline id at
  most once and acknowledges a repeat as such); one whose message cannot be built, or
  would not fit the agent's message limit, fails at once with the reason instead of
  being handed over;
- a node whose heartbeats stop for ``offline_after`` seconds is marked offline and its
  stream ended; once it has been offline for ``node_lost_after`` seconds, its running
  pipelines fail with the reason ``node_lost`` and pending ones it never acknowledged go
  back to the queue;
- a node has one agent: while its stream is live (not ended, a heartbeat within
  ``offline_after``), a registration of its node id by another agent (another
  ``AgentInstance.instance_id``) is refused with ``NodeTaken``, naming the holder, and
  changes nothing; the holder's own reconnect replaces its stream. The last refusal of
  each node is kept in memory for the operator (``refused_registration``) until the
  refused agent gets in;
- an agent that just started says so (its registration carries the labelled containers
  on its engine): each pipeline the node holds and the agent does not list fails at
  once with the reason ``agent_restarted``, naming the step cut short, and the answer
  names the found containers to remove (``Store.settle_restart``). An older agent's
  registration carries none; what its heartbeats keep leaving out fails after
  ``FORGOTTEN_AFTER_HEARTBEATS`` of them (``_settle_forgotten``).

Other threads (the HTTP API) reach the dispatcher only through ``wake``,
``cancel_on_node``, ``connected_count`` and ``refused_registration``, which are safe to
call from any thread.

Nothing here waits for the disk on the event loop: the store's writer thread commits,
in groups, and the coroutines here await it. What the dispatcher tells a node follows
the commit of the change behind it (a registration is accepted, a pipeline handed over,
only once recorded). Heartbeat times are the exception: they are kept in memory and
written once per tick, since nothing is acknowledged on them (``Store.record_heartbeats``).

Choosing a node takes O(log N): the connected nodes sit in a heap by free slots
(``_FreeSlots``), which pipelines with a ``node_selector`` search by a scan instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import grpc

from gamepipeline import __version__
from gamepipeline.logs import ids
from gamepipeline.pipeline.states import PipelineState
from gamepipeline.proto import gamepipeline_pb2 as pb
from gamepipeline.server.errors import NodeTaken, NotFound
from gamepipeline.server.messages import pipeline_message
from gamepipeline.server.metrics import Metrics
from gamepipeline.server.store import (
    LeftContainer,
    NodeMode,
    PipelineRecord,
    QueuedPipeline,
    StepRecord,
    Store,
    labels_match,
    labels_text,
    mode_phrase,
)
from gamepipeline.wire import (
    HEARTBEAT_INTERVAL_SECONDS,
    MAX_PIPELINE_MESSAGE_BYTES,
    NODE_OFFLINE_AFTER_SECONDS,
    PROTOCOL_VERSION,
)

log = logging.getLogger(__name__)

#: How long an offline node keeps its pipelines before they fail with ``node_lost``.
#: Long enough for a GameNode to reboot and its agent to reconnect and carry on.
NODE_LOST_AFTER_SECONDS: Final = 300.0
#: The dispatcher looks at the queue and the heartbeats at least this often.
TICK_SECONDS: Final = 1.0
#: Heartbeats in a row that leave out a pipeline the node holds (running, or taken and
#: not started) before the server takes it that the node lost it. The agent lists the
#: runs it has and those whose reports it has yet to deliver, so a pipeline missing
#: from several of them is one it knows nothing of any more.
FORGOTTEN_AFTER_HEARTBEATS: Final = 3
#: How long a pipeline handed over on a live stream may go unacknowledged before it is
#: sent on that stream again. The agent answers at once, so this only matters when the
#: message or its answer went missing without the stream ending.
ACK_WAIT_SECONDS: Final = 15.0

#: How many unknown pipelines' ids the warning about a node's found containers names.
UNKNOWN_SHOWN: Final = 10

_session_ids = itertools.count(1)


@dataclass(frozen=True)
class StreamEnd:
    """Tells a stream's handler to end it; ``code`` None ends it with OK."""

    code: grpc.StatusCode | None
    detail: str


@dataclass(frozen=True)
class RefusedRegistration:
    """The last registration of a node refused because another agent held it.

    ``count`` is how many were refused since the node's record began, whichever agent
    sent them; the other fields are the last one's. ``peer`` is the address gRPC saw
    (``ipv4:10.0.0.7:52344``), ``at_ms`` the time of the refusal (the store's clock).
    """

    instance_id: str
    hostname: str
    pid: int
    peer: str
    at_ms: int
    count: int


class AgentSession:
    """One registered stream: the queue of messages for it and what it told us."""

    def __init__(self, registration: pb.AgentRegistration, at_ms: int = 0) -> None:
        self.id = next(_session_ids)
        self.node_id = registration.node_id
        self.hostname = registration.hostname
        #: The agent process behind the stream (empty for an agent that sends none).
        self.instance = pb.AgentInstance()
        self.instance.CopyFrom(registration.instance)
        #: When the registration was accepted, ms since the epoch (the store's clock).
        self.registered_at_ms = at_ms
        self.capacity = registration.capacity
        self.labels = dict(registration.labels)
        self.outbox: asyncio.Queue[pb.PipelineStreamResponse | StreamEnd] = (
            asyncio.Queue()
        )
        self.last_heartbeat = time.monotonic()
        self.running: set[str] = set(registration.running_pipeline_ids)
        #: Pipelines handed over on this stream, and when (monotonic seconds); sent
        #: again on it only if unacknowledged after ``ACK_WAIT_SECONDS``.
        self.sent: dict[str, float] = {}
        #: Heartbeats in a row that left out a pipeline the node holds.
        self.missing: dict[str, int] = {}
        self.ended = False

    def send(self, message: pb.PipelineStreamResponse) -> None:
        if not self.ended:
            self.outbox.put_nowait(message)

    def end(self, code: grpc.StatusCode | None, detail: str) -> None:
        if not self.ended:
            self.ended = True
            self.outbox.put_nowait(StreamEnd(code, detail))


class Dispatcher:
    def __init__(
        self,
        store: Store,
        *,
        offline_after: float = NODE_OFFLINE_AFTER_SECONDS,
        node_lost_after: float = NODE_LOST_AFTER_SECONDS,
        ack_wait: float = ACK_WAIT_SECONDS,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics or Metrics()
        self._metrics.count_agents_with(self.connected_count)
        self.offline_after = offline_after
        self.node_lost_after = node_lost_after
        self.ack_wait = ack_wait
        # A third of the offline limit, so that two lost heartbeats never flap a node.
        self.heartbeat_interval = max(
            1, min(HEARTBEAT_INTERVAL_SECONDS, int(offline_after / 3))
        )
        self._sessions: dict[str, AgentSession] = {}
        #: One lock per node id, held while a registration of that node is attached.
        self._attaching: dict[str, asyncio.Lock] = {}
        #: The last refused registration of each node, until the refused agent gets in.
        self._refused: dict[str, RefusedRegistration] = {}
        self._free = _FreeSlots(self._sessions)
        #: Heartbeat times (ms) not yet written, by node.
        self._beats: dict[str, int] = {}
        self._last_tick = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()

    # called from any thread

    def wake(self) -> None:
        """Ask for a dispatch pass soon."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def cancel_on_node(self, pipeline_id: str, node_id: str) -> None:
        """Ask ``node_id`` to stop ``pipeline_id``; delivered on its next stream if away."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._send_cancel, pipeline_id, node_id)

    def connected_count(self) -> int:
        """How many agents have an open stream now."""
        return len(self._sessions)

    def refused_registration(self, node_id: str) -> RefusedRegistration | None:
        """The last registration of ``node_id`` refused while another agent held it;
        None once the refused agent got in, or if none was."""
        return self._refused.get(node_id)

    # the loop

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        log.info(
            "dispatcher started (offline after %.0f s, node lost after %.0f s)",
            self.offline_after,
            self.node_lost_after,
        )
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=TICK_SECONDS)
            self._wake.clear()
            try:
                # The checks that look at every node run once a tick, not on each wake:
                # at thousands of nodes and hundreds of submissions a second, the
                # passes that wakes bring would spend the loop on them.
                now = time.monotonic()
                if now - self._last_tick >= TICK_SECONDS:
                    self._last_tick = now
                    await self._check_liveness()
                    self._write_heartbeats()
                    await self._settle_lost_nodes()
                await self._dispatch_pending()
            except Exception:
                log.exception("dispatch pass failed; trying again on the next tick")

    # sessions

    async def attach(
        self, registration: pb.AgentRegistration, peer: str = ""
    ) -> AgentSession:
        """Register a node's new stream, ending the one it replaces.

        A node has one agent: while its stream is live, another agent's registration
        is refused (``_check_holder``) before anything is recorded in the store; the
        refusal is noted for the operator (``refused_registration``), with ``peer``,
        the address the stream came from. A registration with an inventory comes from
        an agent that just started: what it does not list is settled before the
        answer, which names the found containers to remove (``_settle_restart``).

        Raises:
            NodeTaken: another agent's stream holds the node and is live.
        """
        node_id = registration.node_id
        # One registration of a node at a time, so that two agents that register at
        # once cannot both pass the check below.
        lock = self._attaching.setdefault(node_id, asyncio.Lock())
        async with lock:
            try:
                self._check_holder(registration)
            except NodeTaken:
                self._note_refusal(registration, peer)
                raise
            return await self._attach(registration)

    def _note_refusal(self, registration: pb.AgentRegistration, peer: str) -> None:
        node_id = registration.node_id
        before = self._refused.get(node_id)
        self._refused[node_id] = RefusedRegistration(
            instance_id=registration.instance.instance_id,
            hostname=registration.hostname,
            pid=registration.instance.pid,
            peer=peer,
            at_ms=self._store.now_ms(),
            count=(before.count if before else 0) + 1,
        )

    def _check_holder(self, registration: pb.AgentRegistration) -> None:
        """Refuse a registration while another agent's stream holds the node.

        The holder's own reconnect (the same instance id) passes, and so does anyone
        once the holder's stream has ended or sent no heartbeat for ``offline_after``
        (a half-open connection of an agent that is gone): it is replaced.
        """
        node_id = registration.node_id
        holder = self._sessions.get(node_id)
        if holder is None or holder.ended:
            return
        if holder.instance.instance_id == registration.instance.instance_id:
            return
        silent = time.monotonic() - holder.last_heartbeat
        newcomer = _agent_of(registration.hostname, registration.instance)
        if silent > self.offline_after:
            log.warning(
                "node %s: its agent (%s) sent no heartbeat for %.0f s; the agent "
                "(%s) takes the node over",
                node_id,
                _agent_of(holder.hostname, holder.instance),
                silent,
                newcomer,
                extra=ids(node_id=node_id),
            )
            return
        raise NodeTaken(
            f"node {node_id} is held by another agent ("
            f"{_agent_of(holder.hostname, holder.instance)}, registered since "
            f"{_stamp(holder.registered_at_ms)}, last heartbeat {silent:.0f} s ago); "
            f"this agent ({newcomer}) is refused. Stop one of the two agents, or give "
            "this one its own node id (--node-id); it is let in once the holder's "
            f"stream ends or sends no heartbeat for {self.offline_after:.0f} s"
        )

    async def _attach(self, registration: pb.AgentRegistration) -> AgentSession:
        node_id = registration.node_id
        remove: list[pb.FoundContainer] = []
        try:
            await self._store.register_node_async(
                node_id,
                hostname=registration.hostname,
                labels=dict(registration.labels),
                capacity=registration.capacity,
                agent_version=registration.agent_version,
                protocol_version=registration.protocol_version,
            )
            if registration.HasField("inventory"):
                remove = await self._settle_restart(registration)
        except asyncio.CancelledError:
            # The stream went away while its registration was being committed: the
            # node must not stay online with no stream (unless another one took over).
            if node_id not in self._sessions:
                self._store.set_node_offline(node_id)
            raise
        old = self._sessions.get(node_id)
        if old is not None:
            log.warning(
                "node %s: its agent (%s) opened a new stream; ending the old one",
                node_id,
                _agent_of(registration.hostname, registration.instance),
            )
            old.end(
                grpc.StatusCode.ABORTED, f"replaced by a newer stream from {node_id}"
            )
        session = AgentSession(registration, self._store.now_ms())
        self._sessions[node_id] = session
        self._free.changed(node_id)
        refused = self._refused.get(node_id)
        if refused and refused.instance_id == registration.instance.instance_id:
            del self._refused[node_id]  # the refused agent got in: nothing to show
        log.info(
            "node %s registered (host %s, capacity %d, agent %s, running %s)",
            node_id,
            registration.hostname,
            registration.capacity,
            registration.agent_version,
            sorted(session.running) or "nothing",
            extra=ids(node_id=node_id),
        )
        session.send(
            pb.PipelineStreamResponse(
                registered=pb.RegistrationAccepted(
                    node_id=node_id,
                    heartbeat_interval_seconds=self.heartbeat_interval,
                    protocol_version=PROTOCOL_VERSION,
                    server_version=__version__,
                    remove_containers=remove,
                )
            )
        )
        self._reconcile(session)
        self._wake.set()
        return session

    async def _settle_restart(
        self, registration: pb.AgentRegistration
    ) -> list[pb.FoundContainer]:
        """Settle what a just-started agent no longer knows (``Store.settle_restart``)
        and answer the found containers it is to remove."""
        node_id = registration.node_id
        found = registration.inventory.containers
        outcome = await self._store.settle_restart(
            node_id,
            registration.running_pipeline_ids,
            [LeftContainer(c.pipeline_id, c.step_index, c.name) for c in found],
        )
        for pipeline_id, step in outcome.failed:
            log.warning(
                "node %s restarted without pipeline %s; failed it (step %s cut short)",
                node_id,
                pipeline_id,
                "none" if step is None else step,
                extra=ids(pipeline_id, step, node_id=node_id),
            )
        self._log_unknown(node_id, outcome.unknown)
        doomed = {(c.pipeline_id, c.name) for c in outcome.remove}
        remove = [c for c in found if (c.pipeline_id, c.name) in doomed]
        if remove:
            log.info(
                "node %s: telling its agent to remove containers %s",
                node_id,
                ", ".join(f"{c.name} ({c.pipeline_id})" for c in remove),
                extra=ids(node_id=node_id),
            )
        if outcome.failed:
            self._wake.set()
        return remove

    def _log_unknown(self, node_id: str, unknown: list[str]) -> None:
        """Say which found containers belong to pipelines this server never saw (an
        engine shared with another server, a database replaced): left alone."""
        if not unknown:
            return
        for pipeline_id in unknown:
            log.debug(
                "node %s has containers of pipeline %s, which this server does not "
                "know; leaving them alone",
                node_id,
                pipeline_id,
                extra=ids(pipeline_id, node_id=node_id),
            )
        shown = ", ".join(sorted(unknown)[:UNKNOWN_SHOWN])
        more = len(unknown) - UNKNOWN_SHOWN
        log.warning(
            "node %s has containers of %d pipelines this server does not know; "
            "leaving them alone: %s%s",
            node_id,
            len(unknown),
            shown,
            f" and {more} more" if more > 0 else "",
            extra=ids(node_id=node_id),
        )

    def detach(self, session: AgentSession) -> None:
        """A stream ended; the node goes offline unless a newer stream replaced it."""
        session.end(None, "stream closed")
        if self._sessions.get(session.node_id) is not session:
            return
        del self._sessions[session.node_id]
        self._beats.pop(session.node_id, None)
        self._store.set_node_offline(session.node_id)
        log.info(
            "node %s went offline", session.node_id, extra=ids(node_id=session.node_id)
        )

    async def heartbeat(self, session: AgentSession, heartbeat: pb.Heartbeat) -> None:
        session.last_heartbeat = time.monotonic()
        session.running = set(heartbeat.running_pipeline_ids)
        self._beats[session.node_id] = self._store.now_ms()
        session.send(
            pb.PipelineStreamResponse(
                heartbeat_ack=pb.HeartbeatAck(sent_at_ms=heartbeat.sent_at_ms)
            )
        )
        await self._settle_forgotten(session)

    def _write_heartbeats(self) -> None:
        """Write the heartbeat times gathered since the last tick, in one change."""
        if self._beats:
            self._store.record_heartbeats(self._beats)
            self._beats = {}

    async def _settle_forgotten(self, session: AgentSession) -> None:
        """Fail what the node holds but has stopped listing, heartbeat after heartbeat:
        its agent restarted without the run's records and no report will come.

        The fallback for agents that do not send an inventory when they start; one
        that does has had this settled at registration (``_settle_restart``)."""
        if not self._free.holds(session.node_id):
            # Nothing pending or running there (as of the last pass, and nothing has
            # been assigned to it since): nothing to miss, and no query per heartbeat.
            session.missing = {}
            return
        missing: dict[str, int] = {}
        for pipeline_id in self._store.active_on_node(session.node_id):
            if pipeline_id in session.running or pipeline_id in session.sent:
                continue
            record = self._store.get_pipeline(pipeline_id)
            if record.state is PipelineState.PENDING and not record.acknowledged:
                continue  # never taken: handed over again, not lost
            missing[pipeline_id] = session.missing.get(pipeline_id, 0) + 1
        session.missing = missing
        for pipeline_id, count in missing.items():
            if count < FORGOTTEN_AFTER_HEARTBEATS:
                continue
            text = (
                f"the agent on node {session.node_id} restarted and no longer knows "
                "this run; its end was never reported"
            )
            if await self._store.fail_forgotten(pipeline_id, session.node_id, text):
                log.warning(
                    "node %s no longer lists pipeline %s; failed it",
                    session.node_id,
                    pipeline_id,
                    extra=ids(pipeline_id, node_id=session.node_id),
                )
                self._wake.set()

    async def acknowledge(self, session: AgentSession, ack: pb.PipelineAck) -> None:
        changed = await self._store.acknowledge_async(
            ack.pipeline_id, session.node_id, accepted=ack.accepted, message=ack.message
        )
        if ack.accepted:
            log.info(
                "node %s took pipeline %s",
                session.node_id,
                ack.pipeline_id,
                extra=ids(ack.pipeline_id, node_id=session.node_id),
            )
        else:
            log.warning(
                "node %s refused pipeline %s: %s",
                session.node_id,
                ack.pipeline_id,
                ack.message,
                extra=ids(ack.pipeline_id, node_id=session.node_id),
            )
            if changed:
                self._wake.set()

    def _reconcile(self, session: AgentSession) -> None:
        """Stop what the node runs but should not, and repeat cancels it missed."""
        owed = set(self._store.cancels_owed(session.node_id))
        for pipeline_id in sorted(session.running - owed):
            reason = self._why_not_run(pipeline_id, session.node_id)
            if reason:
                log.warning(
                    "node %s runs pipeline %s, which %s; canceling it",
                    session.node_id,
                    pipeline_id,
                    reason,
                )
                owed.add(pipeline_id)
        for pipeline_id in sorted(owed):
            self._send_cancel(pipeline_id, session.node_id)

    def _why_not_run(self, pipeline_id: str, node_id: str) -> str:
        try:
            record = self._store.get_pipeline(pipeline_id)
        except NotFound:
            return "this server does not know"
        if record.node_assigned != node_id:
            return f"is assigned to {record.node_assigned or 'no node'}"
        if record.state.is_final:
            return f"already ended {record.state}"
        return ""

    def _send_cancel(self, pipeline_id: str, node_id: str) -> None:
        session = self._sessions.get(node_id)
        if session is None:
            log.info(
                "node %s is offline; cancel of pipeline %s waits for it",
                node_id,
                pipeline_id,
            )
            return
        log.info(
            "sending cancel of pipeline %s to node %s",
            pipeline_id,
            node_id,
            extra=ids(pipeline_id, node_id=node_id),
        )
        session.send(
            pb.PipelineStreamResponse(
                cancel=pb.CancelPipeline(pipeline_id=pipeline_id, reason="canceled")
            )
        )

    # passes

    async def _check_liveness(self) -> None:
        """End the streams of nodes whose heartbeats stopped, once their being
        offline is committed (the stream's end tells the agent so)."""
        now = time.monotonic()
        silent = [
            session
            for session in self._sessions.values()
            if now - session.last_heartbeat > self.offline_after
        ]
        if not silent:
            return
        for session in silent:
            log.warning(
                "node %s sent no heartbeat for %.0f s; marking it offline",
                session.node_id,
                now - session.last_heartbeat,
            )
            # Out of the table first, so that nothing is dispatched to it meanwhile.
            del self._sessions[session.node_id]
            self._beats.pop(session.node_id, None)
        await self._store.set_nodes_offline([s.node_id for s in silent])
        for session in silent:
            session.end(
                grpc.StatusCode.UNAVAILABLE,
                f"no heartbeat from {session.node_id} for "
                f"{now - session.last_heartbeat:.0f} s",
            )
            log.info(
                "node %s went offline",
                session.node_id,
                extra=ids(node_id=session.node_id),
            )

    async def _settle_lost_nodes(self) -> None:
        cutoff = self._store.now_ms() - int(self.node_lost_after * 1000)
        for node_id in self._store.offline_nodes_since(cutoff):
            outcome = await self._store.settle_lost_node_async(node_id)
            log.warning(
                "node %s is lost: failed pipelines %s, requeued %s",
                node_id,
                outcome.failed,
                outcome.requeued,
                extra=ids(node_id=node_id),
            )

    async def _dispatch_pending(self) -> None:
        """One pass over the queue: choose a node for each pipeline, commit every
        choice of the pass at once, then hand the pipelines over."""
        self._free.reload(self._store.active_counts())
        closed = self._store.closed_nodes()
        chosen: list[tuple[QueuedPipeline, AgentSession]] = []
        waiting: list[tuple[str, str]] = []
        failed: list[tuple[str, str]] = []
        for queued in self._store.queued_pipelines():
            if queued.node_assigned is not None:
                why = self._resend(queued)
                if why:
                    failed.append((queued.id, why))
                continue
            session, why = self._choose(queued, closed)
            if session is None:
                if queued.message != why:
                    waiting.append((queued.id, why))
                continue
            self._free.take(session.node_id)
            chosen.append((queued, session))
        self._free.put_back()
        if waiting:
            self._store.note_waiting(waiting)
        if chosen:
            assigned = await self._store.assign_all(
                [(queued.id, session.node_id) for queued, session in chosen]
            )
            now = self._store.now_ms()
            for (queued, session), done in zip(chosen, assigned, strict=True):
                if done is None:
                    self._free.give_back(session.node_id)
                    continue
                why = self._hand_over(session, queued.id, *done)
                if why:
                    failed.append((queued.id, why))
                    continue
                waited = max(0, now - queued.created_at_ms) / 1000
                self._metrics.dispatch_latency.observe(waited)
        if failed:
            await self._store.fail_undeliverable(failed)
            self._wake.set()  # their slots are free again

    def _choose(
        self, queued: QueuedPipeline, closed: dict[str, NodeMode]
    ) -> tuple[AgentSession | None, str]:
        """The session to run a pipeline on, or None and why it waits."""
        selector = queued.selector
        if queued.node_requested is not None:
            mode = closed.get(queued.node_requested)
            if mode is not None:
                return None, (
                    f"waiting for node {queued.node_requested}, which is "
                    f"{mode_phrase(mode)}, "
                    "to be put back in service"
                )
            session = self._sessions.get(queued.node_requested)
            if session is None:
                if not self._store.node_exists(queued.node_requested):
                    return None, (
                        f"waiting for node {queued.node_requested}, which has never "
                        "connected to this server; check the node id (GET /api/nodes "
                        "lists the known ones) or start its agent"
                    )
                return None, f"waiting for node {queued.node_requested} to connect"
            if not _matches(selector, session.labels):
                return None, (
                    f"waiting for node {session.node_id}, whose labels do not match "
                    f"the node_selector {labels_text(selector)} (its labels: "
                    f"{labels_text(session.labels)})"
                )
            if self._free.free(session.node_id) <= 0:
                return None, (
                    f"waiting for a free slot on node {session.node_id} "
                    f"(all {session.capacity} in use)"
                )
            return session, ""
        session = self._free.most_free(selector, closed)
        if session is not None:
            return session, ""
        wanted = " labelled " + labels_text(selector) if selector else ""
        return None, f"waiting for a connected node{wanted} in service with a free slot"

    def _resend(self, queued: QueuedPipeline) -> str | None:
        """Hand over an assigned pipeline again on a stream that has not seen it, or
        that has not acknowledged it in time."""
        assert queued.node_assigned is not None
        session = self._sessions.get(queued.node_assigned)
        if session is None or queued.id in session.running:
            return None
        sent_at = session.sent.get(queued.id)
        if sent_at is not None:
            if queued.acknowledged or time.monotonic() - sent_at < self.ack_wait:
                return None
            log.warning(
                "node %s has not acknowledged pipeline %s after %.0f s; sending it again",
                session.node_id,
                queued.id,
                self.ack_wait,
                extra=ids(queued.id, node_id=session.node_id),
            )
        return self._hand_over(session, queued.id)

    def _hand_over(
        self,
        session: AgentSession,
        pipeline_id: str,
        record: PipelineRecord | None = None,
        steps: list[StepRecord] | None = None,
    ) -> str | None:
        """Queue a pipeline's message on a stream; if it cannot go, why (the pipeline
        then fails: it would fail the same way on any node). The pipeline and its
        steps are read here unless the caller read them already."""
        if record is None or steps is None:
            record = self._store.get_pipeline(pipeline_id)
            steps = self._store.get_steps(pipeline_id)
        try:
            message = pb.PipelineStreamResponse(
                pipeline=pipeline_message(record, steps)
            )
            size = message.ByteSize()
        except (ValueError, TypeError) as err:
            return self._undeliverable(session, pipeline_id, f"cannot be built: {err}")
        if size > MAX_PIPELINE_MESSAGE_BYTES:
            return self._undeliverable(
                session,
                pipeline_id,
                f"is {size:,} bytes, more than the {MAX_PIPELINE_MESSAGE_BYTES:,} an "
                "agent takes; pass less data in args and envs (large files belong in "
                "a download step)",
            )
        session.sent[pipeline_id] = time.monotonic()
        session.send(message)
        log.info(
            "dispatched pipeline %s to node %s",
            pipeline_id,
            session.node_id,
            extra=ids(pipeline_id, node_id=session.node_id),
        )
        return None

    def _undeliverable(self, session: AgentSession, pipeline_id: str, why: str) -> str:
        text = f"its message to node {session.node_id} {why}"
        log.error(
            "pipeline %s: %s",
            pipeline_id,
            text,
            extra=ids(pipeline_id, node_id=session.node_id),
        )
        return text


def _agent_of(hostname: str, instance: pb.AgentInstance) -> str:
    """An agent as people know it: its host and pid."""
    pid = str(instance.pid) if instance.pid else "unknown"
    return f"host {hostname or 'unknown'}, pid {pid}"


def _stamp(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether a node with ``labels`` carries every label of ``selector``."""
    return labels_match(selector, labels)


class _FreeSlots:
    """Free slots per connected node, and a heap that finds the node with the most.

    The heap holds ``(-free, node_id)`` entries and is never searched: an entry that no
    longer tells a session's current free slots is dropped when it reaches the top, and
    every change pushes a fresh one. Ties go to the lowest node id.
    """

    def __init__(self, sessions: dict[str, AgentSession]) -> None:
        self._sessions = sessions
        #: Pending and running pipelines per node, as of the last pass plus its choices.
        self._load: dict[str, int] = {}
        self._loaded = False
        self._heap: list[tuple[int, str]] = []
        #: Entries taken off the heap in this pass that are still true.
        self._aside: list[tuple[int, str]] = []

    def free(self, node_id: str) -> int:
        session = self._sessions.get(node_id)
        if session is None:
            return 0
        return session.capacity - self._load.get(node_id, 0)

    def changed(self, node_id: str) -> None:
        heapq.heappush(self._heap, (-self.free(node_id), node_id))

    def holds(self, node_id: str) -> bool:
        """Whether the node may hold a pending or running pipeline: always True
        before the first pass has counted them. Only a pass assigns a pipeline to a
        node, and it counts it here first (``take``), so a node counted at 0 holds
        none."""
        return not self._loaded or self._load.get(node_id, 0) > 0

    def reload(self, load: dict[str, int]) -> None:
        """Take the store's count of active pipelines per node, at a pass's start."""
        self._loaded = True
        old, self._load = self._load, load
        for node_id in old.keys() | load.keys():
            if old.get(node_id) != load.get(node_id):
                self.changed(node_id)
        if len(self._heap) > 4 * len(self._sessions) + 64:
            self._heap = [(-self.free(n), n) for n in self._sessions]
            heapq.heapify(self._heap)

    def take(self, node_id: str) -> None:
        self._load[node_id] = self._load.get(node_id, 0) + 1
        self.changed(node_id)

    def give_back(self, node_id: str) -> None:
        self._load[node_id] = max(0, self._load.get(node_id, 0) - 1)
        self.changed(node_id)

    def put_back(self) -> None:
        """Return the entries set aside in this pass (closed or unmatched nodes)."""
        for entry in self._aside:
            heapq.heappush(self._heap, entry)
        self._aside.clear()

    def most_free(
        self, selector: dict[str, str], closed: dict[str, NodeMode]
    ) -> AgentSession | None:
        """The open node with the most free slots whose labels match ``selector``."""
        if selector:
            return self._scan(selector, closed)
        while self._heap:
            negative, node_id = self._heap[0]
            free = self.free(node_id)
            if -negative != free or node_id not in self._sessions:
                heapq.heappop(self._heap)  # out of date; a fresh entry exists
                continue
            if free <= 0:
                return None
            if node_id in closed:
                self._aside.append(heapq.heappop(self._heap))
                continue
            return self._sessions[node_id]
        return None

    def _scan(
        self, selector: dict[str, str], closed: dict[str, NodeMode]
    ) -> AgentSession | None:
        best: tuple[int, str] | None = None
        for node_id, session in self._sessions.items():
            free = self.free(node_id)
            if (
                free > 0
                and node_id not in closed
                and _matches(selector, session.labels)
                and (best is None or (-free, node_id) < best)
            ):
                best = (-free, node_id)
        return None if best is None else self._sessions[best[1]]
