"""Durable records of pipelines, their steps and the nodes, kept in SQLite.

Every state change is committed before the caller acknowledges it, so a server killed at
any point restarts from exactly what it told its clients. The database runs in WAL mode
(readers never block the writer) and each thread has its own connection. A change that
reads a record and writes it back runs in one ``BEGIN IMMEDIATE`` transaction: two
threads never judge a report against the same stale record.

The state rules live in ``gamepipeline.pipeline.states``; this module applies their
verdicts and says nothing about the wire.
"""

from __future__ import annotations

import enum
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from sqlite_utils import Database

from gamepipeline.logs import ids
from gamepipeline.pipeline.states import (
    EndReason,
    PipelineState,
    SequenceVerdict,
    StepState,
    judge_pipeline_move,
    judge_sequence,
    judge_step_move,
    steps_after_end,
)
from gamepipeline.server.errors import Conflict, InvalidRequest, NotFound, WrongNode
from gamepipeline.server.sealing import SecretBox, names_only

log = logging.getLogger(__name__)

#: Bumped when the tables change shape; kept in ``PRAGMA user_version``.
SCHEMA_VERSION: Final = 1
#: A step's output tail is cut to its last this many characters: enough for the lines
#: that explain a failure, small enough to list many pipelines quickly.
OUTPUT_TAIL_LIMIT: Final = 8_000
#: Messages are sentences for people; longer ones are cut.
MESSAGE_LIMIT: Final = 2_000
#: How long a connection waits for another writer's lock before giving up.
BUSY_TIMEOUT_SECONDS: Final = 10.0

_ACTIVE = (PipelineState.PENDING.value, PipelineState.RUNNING.value)


class NodeMode(enum.StrEnum):
    """What an operator allows a node to do; kept apart from whether it is connected.

    ``active`` takes new pipelines; ``maintenance`` finishes what it runs and takes no
    new ones; ``disabled`` takes no new ones and had its running pipelines canceled.
    """

    ACTIVE = "active"
    MAINTENANCE = "maintenance"
    DISABLED = "disabled"


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


# --- records ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StepRecord:
    pipeline_id: str
    index: int
    name: str
    type: str
    state: StepState
    reason: EndReason
    message: str
    exit_code: int | None
    output_tail: str
    started_at_ms: int | None
    finished_at_ms: int | None


@dataclass(frozen=True)
class PipelineRecord:
    id: str
    model: str
    name: str
    description: str
    document: dict[str, Any]
    declared_args: list[str]
    declared_envs: list[str]
    arg_values: dict[str, str]
    env_values: dict[str, str]
    node_requested: str | None
    node_assigned: str | None
    state: PipelineState
    reason: EndReason
    message: str
    current_step: int
    cancel_requested: bool
    acknowledged: bool
    timeout_seconds: int
    created_at_ms: int
    started_at_ms: int | None
    finished_at_ms: int | None
    last_sequence: int


@dataclass(frozen=True)
class NodeRecord:
    node_id: str
    hostname: str
    labels: dict[str, str]
    capacity: int
    agent_version: str
    protocol_version: int
    online: bool
    connected_at_ms: int | None
    last_heartbeat_ms: int | None
    offline_since_ms: int | None
    mode: NodeMode = NodeMode.ACTIVE


@dataclass(frozen=True)
class NewPipeline:
    """A validated submission, ready to be stored."""

    model: str
    name: str
    description: str
    document: dict[str, Any]
    declared_args: list[str]
    declared_envs: list[str]
    arg_values: dict[str, str]
    env_values: dict[str, str]
    node_requested: str | None
    #: ``(name, type)`` of each step, in order.
    steps: list[tuple[str, str]]
    timeout_seconds: int = 0


@dataclass(frozen=True)
class PipelineReport:
    node_id: str
    pipeline_id: str
    state: PipelineState
    reason: EndReason
    message: str
    sequence: int
    timestamp_ms: int = 0


@dataclass(frozen=True)
class StepReport:
    node_id: str
    pipeline_id: str
    step_index: int
    state: StepState
    reason: EndReason
    message: str
    sequence: int
    exit_code: int | None = None
    output_tail: str = ""
    timestamp_ms: int = 0


@dataclass(frozen=True)
class ReportOutcome:
    applied: bool
    duplicate: bool
    detail: str


@dataclass(frozen=True)
class CancelOutcome:
    """What a cancel request did: ended the pipeline at once, or asked its node."""

    state: PipelineState
    node_id: str | None
    ended_now: bool


@dataclass(frozen=True)
class NodeLossOutcome:
    failed: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)


# --- the store --------------------------------------------------------------------------


class Store:
    """Pipelines, steps and nodes in one SQLite file, safe to use from many threads."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], int] = wall_clock_ms,
        box: SecretBox | None = None,
    ):
        self.path = Path(path)
        self._clock = clock
        # Env values are sealed at rest and dropped when a run ends (``sealing``).
        self._box = box or SecretBox.for_database(path)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._create_schema()

    def now_ms(self) -> int:
        """The store's clock, in which every timestamp it keeps is written."""
        return self._clock()

    def _record(self, row: Mapping[str, Any]) -> PipelineRecord:
        """A pipeline row as a record, its env values opened."""
        record = _pipeline(row)
        return replace(record, env_values=self._box.open(record.env_values))

    # connections and transactions

    def _db(self) -> Database:
        db: Database | None = getattr(self._local, "db", None)
        if db is None:
            # isolation_level=None: no implicit transactions; _write() opens its own.
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_SECONDS,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit survives power loss, not only a process crash.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            # Dropped values are overwritten, not left in free pages.
            conn.execute("PRAGMA secure_delete=ON")
            db = Database(conn, execute_plugins=False)
            self._local.db = db
            with self._lock:
                self._connections.append(conn)
        return db

    @contextmanager
    def _write(self) -> Iterator[Database]:
        """One transaction that takes the write lock up front; committed on success."""
        db = self._db()
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.conn.execute("ROLLBACK")
            raise
        db.conn.execute("COMMIT")

    def close(self) -> None:
        """Close every thread's connection; call once no thread uses the store."""
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def _create_schema(self) -> None:
        with self._write() as db:
            db.table("pipelines").create(
                {
                    "id": str,
                    "model": str,
                    "name": str,
                    "description": str,
                    "document": str,
                    "declared_args": str,
                    "declared_envs": str,
                    "arg_values": str,
                    "env_values": str,
                    "node_requested": str,
                    "node_assigned": str,
                    "state": str,
                    "reason": str,
                    "message": str,
                    "current_step": int,
                    "cancel_requested": int,
                    "acknowledged": int,
                    "timeout_seconds": int,
                    "created_at_ms": int,
                    "started_at_ms": int,
                    "finished_at_ms": int,
                    "last_sequence": int,
                },
                pk="id",
                not_null={"name", "state", "document", "created_at_ms"},
                if_not_exists=True,
            )
            db.table("steps").create(
                {
                    "pipeline_id": str,
                    "idx": int,
                    "name": str,
                    "type": str,
                    "state": str,
                    "reason": str,
                    "message": str,
                    "exit_code": int,
                    "output_tail": str,
                    "started_at_ms": int,
                    "finished_at_ms": int,
                },
                pk=("pipeline_id", "idx"),
                foreign_keys=[("pipeline_id", "pipelines", "id")],
                if_not_exists=True,
            )
            db.table("nodes").create(
                {
                    "node_id": str,
                    "hostname": str,
                    "labels": str,
                    "capacity": int,
                    "agent_version": str,
                    "protocol_version": int,
                    "online": int,
                    "connected_at_ms": int,
                    "last_heartbeat_ms": int,
                    "offline_since_ms": int,
                },
                pk="node_id",
                if_not_exists=True,
            )
            # Added after the first release: databases made before it gain the column.
            if "mode" not in db.table("nodes").columns_dict:
                db.table("nodes").add_column(
                    "mode", str, not_null_default=NodeMode.ACTIVE.value
                )
            pipelines = db.table("pipelines")
            pipelines.create_index(["state", "created_at_ms"], if_not_exists=True)
            pipelines.create_index(["node_assigned", "state"], if_not_exists=True)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # pipelines: submission and reading

    def create_pipeline(self, new: NewPipeline) -> str:
        """Store a pipeline and its steps in one transaction; answer its id."""
        pipeline_id = uuid.uuid4().hex
        now = self._clock()
        with self._write() as db:
            db.table("pipelines").insert(
                {
                    "id": pipeline_id,
                    "model": new.model,
                    "name": new.name,
                    "description": new.description,
                    "document": json.dumps(new.document, ensure_ascii=False),
                    "declared_args": json.dumps(new.declared_args),
                    "declared_envs": json.dumps(new.declared_envs),
                    "arg_values": json.dumps(new.arg_values, ensure_ascii=False),
                    "env_values": json.dumps(self._box.seal(new.env_values)),
                    "node_requested": new.node_requested,
                    "node_assigned": None,
                    "state": PipelineState.PENDING.value,
                    "reason": EndReason.NONE.value,
                    "message": "",
                    "current_step": -1,
                    "cancel_requested": 0,
                    "acknowledged": 0,
                    "timeout_seconds": new.timeout_seconds,
                    "created_at_ms": now,
                    "started_at_ms": None,
                    "finished_at_ms": None,
                    "last_sequence": 0,
                }
            )
            db.table("steps").insert_all(
                {
                    "pipeline_id": pipeline_id,
                    "idx": index,
                    "name": name,
                    "type": step_type,
                    "state": StepState.PENDING.value,
                    "reason": EndReason.NONE.value,
                    "message": "",
                    "exit_code": None,
                    "output_tail": "",
                    "started_at_ms": None,
                    "finished_at_ms": None,
                }
                for index, (name, step_type) in enumerate(new.steps)
            )
        log.info(
            "stored pipeline %s (%s, %d steps)",
            pipeline_id,
            new.name,
            len(new.steps),
            extra=ids(pipeline_id),
        )
        return pipeline_id

    def get_pipeline(self, pipeline_id: str) -> PipelineRecord:
        row = _one(self._db(), "SELECT * FROM pipelines WHERE id = ?", [pipeline_id])
        if row is None:
            raise _pipeline_not_found(pipeline_id)
        return self._record(row)

    def get_steps(self, pipeline_id: str) -> list[StepRecord]:
        rows = self._db().query(
            "SELECT * FROM steps WHERE pipeline_id = ? ORDER BY idx", [pipeline_id]
        )
        return [_step(row) for row in rows]

    def list_pipelines(
        self,
        *,
        state: PipelineState | None = None,
        node_id: str | None = None,
        template: str | None = None,
        limit: int = 100,
    ) -> list[PipelineRecord]:
        """Pipelines newest first, optionally only those in a state, on a node or
        made from a template (the pipeline's ``name``)."""
        where, params = ["1 = 1"], []
        if state is not None:
            where.append("state = ?")
            params.append(state.value)
        if node_id is not None:
            where.append("(node_assigned = ? OR node_requested = ?)")
            params += [node_id, node_id]
        if template is not None:
            where.append("name = ?")
            params.append(template)
        sql = (
            f"SELECT * FROM pipelines WHERE {' AND '.join(where)} "
            "ORDER BY created_at_ms DESC, rowid DESC LIMIT ?"
        )
        return [self._record(row) for row in self._db().query(sql, [*params, limit])]

    def pending_pipelines(self) -> list[PipelineRecord]:
        """Pending pipelines, oldest first: the dispatcher's queue."""
        rows = self._db().query(
            "SELECT * FROM pipelines WHERE state = ? ORDER BY created_at_ms, rowid",
            [PipelineState.PENDING.value],
        )
        return [self._record(row) for row in rows]

    def count_by_state_and_template(self) -> dict[tuple[str, str], int]:
        """How many pipelines are in each (state, template name) pair."""
        rows = self._db().query(
            "SELECT state, name, COUNT(*) AS n FROM pipelines GROUP BY state, name"
        )
        return {(row["state"], row["name"]): row["n"] for row in rows}

    def queue_depth(self) -> int:
        """Pending pipelines that no node has been given yet."""
        row = _one(
            self._db(),
            "SELECT COUNT(*) AS n FROM pipelines "
            "WHERE state = ? AND node_assigned IS NULL",
            [PipelineState.PENDING.value],
        )
        return int(row["n"]) if row else 0

    def active_counts(self) -> dict[str, int]:
        """How many pending or running pipelines each node holds."""
        rows = self._db().query(
            "SELECT node_assigned, COUNT(*) AS n FROM pipelines "
            "WHERE node_assigned IS NOT NULL AND state IN (?, ?) GROUP BY node_assigned",
            list(_ACTIVE),
        )
        return {row["node_assigned"]: row["n"] for row in rows}

    def cancels_owed(self, node_id: str) -> list[str]:
        """Running pipelines on a node whose cancel the node has yet to carry out."""
        rows = self._db().query(
            "SELECT id FROM pipelines WHERE node_assigned = ? AND state = ? "
            "AND cancel_requested = 1",
            [node_id, PipelineState.RUNNING.value],
        )
        return [row["id"] for row in rows]

    # pipelines: dispatch

    def assign(self, pipeline_id: str, node_id: str) -> bool:
        """Give a pending, unassigned pipeline to a node; False if it no longer is one."""
        with self._write() as db:
            cursor = db.execute(
                "UPDATE pipelines SET node_assigned = ?, message = '' "
                "WHERE id = ? AND state = ? AND node_assigned IS NULL",
                [node_id, pipeline_id, PipelineState.PENDING.value],
            )
            return cursor.rowcount == 1

    def set_waiting_message(self, pipeline_id: str, message: str) -> None:
        """Say why a pending pipeline has not been dispatched yet."""
        with self._write() as db:
            db.execute(
                "UPDATE pipelines SET message = ? WHERE id = ? AND state = ?",
                [message, pipeline_id, PipelineState.PENDING.value],
            )

    def acknowledge(
        self, pipeline_id: str, node_id: str, *, accepted: bool, message: str
    ) -> bool:
        """Record the node's answer to a dispatch; a refusal fails the pipeline.

        Answers whether the record changed. An answer from a node the pipeline is not
        assigned to, or about a pipeline that already ended, changes nothing.
        """
        with self._write() as db:
            row = _one(db, "SELECT * FROM pipelines WHERE id = ?", [pipeline_id])
            if row is None or row["node_assigned"] != node_id:
                return False
            record = self._record(row)
            if record.state.is_final:
                return False
            if accepted:
                db.table("pipelines").update(pipeline_id, {"acknowledged": 1})
                return True
            text = (
                f"node {node_id} refused the pipeline: {message or 'no reason given'}"
            )
            self._end(db, record, PipelineState.FAILED, EndReason.REJECTED, text)
            return True

    # pipelines: reports from agents

    def apply_pipeline_report(self, report: PipelineReport) -> ReportOutcome:
        """Judge and apply an agent's report on a pipeline's overall state."""
        with self._write() as db:
            record = self._reported_pipeline(db, report.node_id, report.pipeline_id)
            if judge_sequence(record.last_sequence, report.sequence) is (
                SequenceVerdict.DUPLICATE
            ):
                return _duplicate(record, report.sequence)

            judgement = judge_pipeline_move(
                record.state, report.state, what=f"pipeline {record.id}"
            )
            changes: dict[str, Any] = {"last_sequence": report.sequence}
            if judgement.applies:
                at = report.timestamp_ms or self._clock()
                changes |= {
                    "state": report.state.value,
                    "reason": report.reason.value,
                    "message": report.message[:MESSAGE_LIMIT],
                }
                if (
                    report.state is PipelineState.RUNNING
                    or record.started_at_ms is None
                ):
                    changes["started_at_ms"] = at
                if report.state.is_final:
                    changes |= {
                        "finished_at_ms": at,
                        "current_step": -1,
                        "env_values": json.dumps(names_only(record.env_values)),
                    }
            db.table("pipelines").update(record.id, changes)
        _log_outcome(
            report.pipeline_id,
            report.node_id,
            judgement.applies,
            judgement.detail,
            sequence=report.sequence,
        )
        return ReportOutcome(judgement.applies, False, judgement.detail)

    def apply_step_report(self, report: StepReport) -> ReportOutcome:
        """Judge and apply an agent's report on one step."""
        with self._write() as db:
            record = self._reported_pipeline(db, report.node_id, report.pipeline_id)
            steps = [
                _step(r)
                for r in db.query(
                    "SELECT * FROM steps WHERE pipeline_id = ? ORDER BY idx",
                    [record.id],
                )
            ]
            if not 0 <= report.step_index < len(steps):
                raise InvalidRequest(
                    f"step_index {report.step_index} is out of range for pipeline "
                    f"{record.id}, which has {len(steps)} steps (0..{len(steps) - 1})"
                )
            if judge_sequence(record.last_sequence, report.sequence) is (
                SequenceVerdict.DUPLICATE
            ):
                return _duplicate(record, report.sequence)

            step = steps[report.step_index]
            judgement = judge_step_move(
                step.state,
                report.state,
                what=f"step {step.index} of pipeline {record.id}",
            )
            pipeline_changes: dict[str, Any] = {"last_sequence": report.sequence}
            if judgement.applies:
                at = report.timestamp_ms or self._clock()
                self._apply_step_change(db, step, report, at)
                if report.state is StepState.RUNNING and not record.state.is_final:
                    pipeline_changes["current_step"] = step.index
                if report.state is StepState.RUNNING and (
                    record.state is PipelineState.PENDING
                ):
                    # The step's start says the pipeline started, report or no report.
                    pipeline_changes |= {
                        "state": PipelineState.RUNNING.value,
                        "started_at_ms": at,
                    }
            db.table("pipelines").update(record.id, pipeline_changes)
        _log_outcome(
            report.pipeline_id,
            report.node_id,
            judgement.applies,
            judgement.detail,
            step=report.step_index,
            sequence=report.sequence,
        )
        return ReportOutcome(judgement.applies, False, judgement.detail)

    def _apply_step_change(
        self, db: Database, step: StepRecord, report: StepReport, at: int
    ) -> None:
        changes: dict[str, Any] = {
            "state": report.state.value,
            "reason": report.reason.value,
            "message": report.message[:MESSAGE_LIMIT],
        }
        if report.output_tail:
            changes["output_tail"] = report.output_tail[-OUTPUT_TAIL_LIMIT:]
        if report.exit_code is not None:
            changes["exit_code"] = report.exit_code
        if report.state is StepState.RUNNING:
            changes["started_at_ms"] = at
        if report.state.is_final:
            changes["finished_at_ms"] = at
        db.table("steps").update((step.pipeline_id, step.index), changes)

    def _reported_pipeline(
        self, db: Database, node_id: str, pipeline_id: str
    ) -> PipelineRecord:
        row = _one(db, "SELECT * FROM pipelines WHERE id = ?", [pipeline_id])
        if row is None:
            raise _pipeline_not_found(pipeline_id)
        record = self._record(row)
        if record.node_assigned != node_id:
            owner = (
                f"node {record.node_assigned}" if record.node_assigned else "no node"
            )
            raise WrongNode(
                f"pipeline {pipeline_id} is assigned to {owner}, not to node {node_id}; "
                "only the node it was dispatched to may report on it"
            )
        return record

    # pipelines: endings decided by the server

    def cancel(self, pipeline_id: str) -> CancelOutcome:
        """Cancel a pipeline: at once when pending, through its node when running."""
        with self._write() as db:
            row = _one(db, "SELECT * FROM pipelines WHERE id = ?", [pipeline_id])
            if row is None:
                raise _pipeline_not_found(pipeline_id)
            record = self._record(row)
            if record.state.is_final:
                raise Conflict(
                    f"pipeline {pipeline_id} already ended {record.state}; only a "
                    "pending or running pipeline can be canceled"
                )
            db.table("pipelines").update(pipeline_id, {"cancel_requested": 1})
            if record.state is PipelineState.RUNNING:
                return CancelOutcome(
                    record.state, record.node_assigned, ended_now=False
                )
            self._end(
                db,
                record,
                PipelineState.CANCELED,
                EndReason.CANCELED,
                "canceled before it started",
            )
        return CancelOutcome(
            PipelineState.CANCELED, record.node_assigned, ended_now=True
        )

    def settle_lost_node(self, node_id: str) -> NodeLossOutcome:
        """A node stayed away past its grace period: settle what it held.

        Running pipelines, and pending ones the node had acknowledged, fail with the
        reason ``node_lost``. Pending ones it never acknowledged go back to the queue.
        """
        outcome = NodeLossOutcome()
        with self._write() as db:
            rows = db.query(
                "SELECT * FROM pipelines WHERE node_assigned = ? AND state IN (?, ?)",
                [node_id, *_ACTIVE],
            )
            for record in [self._record(row) for row in rows]:
                if record.state is PipelineState.PENDING and not record.acknowledged:
                    db.table("pipelines").update(record.id, {"node_assigned": None})
                    outcome.requeued.append(record.id)
                    continue
                text = f"node {node_id} stopped answering and did not come back in time"
                self._end(db, record, PipelineState.FAILED, EndReason.NODE_LOST, text)
                outcome.failed.append(record.id)
        return outcome

    def fail_forgotten(self, pipeline_id: str, node_id: str, message: str) -> bool:
        """Fail a pipeline its node says it neither runs nor reports on any more (its
        agent restarted without the run's records); False if it ended meanwhile."""
        with self._write() as db:
            row = _one(db, "SELECT * FROM pipelines WHERE id = ?", [pipeline_id])
            if row is None:
                return False
            record = _pipeline(row)
            if record.node_assigned != node_id or record.state.is_final:
                return False
            self._end(
                db, record, PipelineState.FAILED, EndReason.AGENT_RESTARTED, message
            )
        return True

    def _end(
        self,
        db: Database,
        record: PipelineRecord,
        state: PipelineState,
        reason: EndReason,
        message: str,
    ) -> None:
        """End a pipeline no agent will report on, and its unfinished steps with it."""
        now = self._clock()
        db.table("pipelines").update(
            record.id,
            {
                "state": state.value,
                "reason": reason.value,
                "message": message,
                "finished_at_ms": now,
                "current_step": -1,
                "env_values": json.dumps(names_only(record.env_values)),
            },
        )
        states = [
            StepState(row["state"])
            for row in db.query(
                "SELECT state FROM steps WHERE pipeline_id = ? ORDER BY idx",
                [record.id],
            )
        ]
        for index, step_state, step_reason in steps_after_end(states, reason):
            db.table("steps").update(
                (record.id, index),
                {
                    "state": step_state.value,
                    "reason": step_reason.value,
                    "message": message,
                    "finished_at_ms": now,
                },
            )

    # nodes

    def register_node(
        self,
        node_id: str,
        *,
        hostname: str,
        labels: Mapping[str, str],
        capacity: int,
        agent_version: str,
        protocol_version: int,
    ) -> None:
        now = self._clock()
        with self._write() as db:
            db.table("nodes").upsert(
                {
                    "node_id": node_id,
                    "hostname": hostname,
                    "labels": json.dumps(dict(labels), ensure_ascii=False),
                    "capacity": capacity,
                    "agent_version": agent_version,
                    "protocol_version": protocol_version,
                    "online": 1,
                    "connected_at_ms": now,
                    "last_heartbeat_ms": now,
                    "offline_since_ms": None,
                },
                pk="node_id",
            )

    def record_heartbeat(self, node_id: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE nodes SET last_heartbeat_ms = ? WHERE node_id = ?",
                [self._clock(), node_id],
            )

    def set_node_offline(self, node_id: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE nodes SET online = 0, offline_since_ms = ? "
                "WHERE node_id = ? AND online = 1",
                [self._clock(), node_id],
            )

    def mark_all_nodes_offline(self) -> list[str]:
        """At start-up no agent is connected yet: every node is offline until it is."""
        with self._write() as db:
            ids = [
                r["node_id"]
                for r in db.query("SELECT node_id FROM nodes WHERE online = 1")
            ]
            db.execute(
                "UPDATE nodes SET online = 0, offline_since_ms = ? WHERE online = 1",
                [self._clock()],
            )
        return ids

    def get_node(self, node_id: str) -> NodeRecord:
        row = _one(self._db(), "SELECT * FROM nodes WHERE node_id = ?", [node_id])
        if row is None:
            raise NotFound(
                f"node {node_id!r} does not exist; list nodes with GET /api/nodes to "
                "find its id (a node exists once its agent has registered)"
            )
        return _node(row)

    def set_node_mode(self, node_id: str, mode: NodeMode) -> NodeRecord:
        """Put a registered node in ``mode``; answer the node as it is now."""
        self.get_node(node_id)
        with self._write() as db:
            db.execute(
                "UPDATE nodes SET mode = ? WHERE node_id = ?", [mode.value, node_id]
            )
        log.info("node %s is now %s", node_id, mode, extra=ids(node_id=node_id))
        return self.get_node(node_id)

    def closed_nodes(self) -> dict[str, NodeMode]:
        """Nodes that take no new pipelines (in maintenance or disabled), with why."""
        rows = self._db().query(
            "SELECT node_id, mode FROM nodes WHERE mode != ?", [NodeMode.ACTIVE.value]
        )
        return {row["node_id"]: NodeMode(row["mode"]) for row in rows}

    def active_on_node(self, node_id: str) -> list[str]:
        """Ids of the pending and running pipelines assigned to a node."""
        rows = self._db().query(
            "SELECT id FROM pipelines WHERE node_assigned = ? AND state IN (?, ?) "
            "ORDER BY created_at_ms",
            [node_id, *_ACTIVE],
        )
        return [row["id"] for row in rows]

    def list_nodes(self) -> list[NodeRecord]:
        rows = self._db().query("SELECT * FROM nodes ORDER BY node_id")
        return [_node(row) for row in rows]

    def offline_nodes_since(self, before_ms: int) -> list[str]:
        """Nodes offline since before ``before_ms`` that still hold active pipelines."""
        rows = self._db().query(
            "SELECT DISTINCT n.node_id FROM nodes n JOIN pipelines p "
            "ON p.node_assigned = n.node_id "
            "WHERE n.online = 0 AND n.offline_since_ms < ? AND p.state IN (?, ?)",
            [before_ms, *_ACTIVE],
        )
        return [row["node_id"] for row in rows]

    def ping(self) -> None:
        """Raise if the database cannot be read."""
        self._db().execute("SELECT 1").fetchone()


# --- row conversion ---------------------------------------------------------------------


def _one(db: Database, sql: str, params: Sequence[Any]) -> dict[str, Any] | None:
    return next(iter(db.query(sql, params)), None)


def _pipeline(row: Mapping[str, Any]) -> PipelineRecord:
    return PipelineRecord(
        id=row["id"],
        model=row["model"] or "",
        name=row["name"],
        description=row["description"] or "",
        document=json.loads(row["document"]),
        declared_args=json.loads(row["declared_args"]),
        declared_envs=json.loads(row["declared_envs"]),
        arg_values=json.loads(row["arg_values"]),
        env_values=json.loads(row["env_values"]),
        node_requested=row["node_requested"],
        node_assigned=row["node_assigned"],
        state=PipelineState(row["state"]),
        reason=EndReason(row["reason"]),
        message=row["message"] or "",
        current_step=row["current_step"],
        cancel_requested=bool(row["cancel_requested"]),
        acknowledged=bool(row["acknowledged"]),
        timeout_seconds=row["timeout_seconds"] or 0,
        created_at_ms=row["created_at_ms"],
        started_at_ms=row["started_at_ms"],
        finished_at_ms=row["finished_at_ms"],
        last_sequence=row["last_sequence"],
    )


def _step(row: Mapping[str, Any]) -> StepRecord:
    return StepRecord(
        pipeline_id=row["pipeline_id"],
        index=row["idx"],
        name=row["name"],
        type=row["type"] or "",
        state=StepState(row["state"]),
        reason=EndReason(row["reason"]),
        message=row["message"] or "",
        exit_code=row["exit_code"],
        output_tail=row["output_tail"] or "",
        started_at_ms=row["started_at_ms"],
        finished_at_ms=row["finished_at_ms"],
    )


def _node(row: Mapping[str, Any]) -> NodeRecord:
    return NodeRecord(
        node_id=row["node_id"],
        hostname=row["hostname"] or "",
        labels=json.loads(row["labels"] or "{}"),
        capacity=row["capacity"] or 0,
        agent_version=row["agent_version"] or "",
        protocol_version=row["protocol_version"] or 0,
        online=bool(row["online"]),
        connected_at_ms=row["connected_at_ms"],
        last_heartbeat_ms=row["last_heartbeat_ms"],
        offline_since_ms=row["offline_since_ms"],
        mode=NodeMode(row.get("mode") or NodeMode.ACTIVE.value),
    )


def _pipeline_not_found(pipeline_id: str) -> NotFound:
    return NotFound(
        f"pipeline {pipeline_id!r} does not exist; list pipelines with "
        "GET /api/pipelines to find its id"
    )


def _duplicate(record: PipelineRecord, sequence: int) -> ReportOutcome:
    detail = (
        f"report {sequence} on pipeline {record.id} was already seen "
        f"(last applied {record.last_sequence}); ignored"
    )
    log.debug("ignored duplicate report on pipeline %s: %s", record.id, detail)
    return ReportOutcome(applied=False, duplicate=True, detail=detail)


def _log_outcome(
    pipeline_id: str,
    node_id: str,
    applied: bool,
    detail: str,
    *,
    step: int | None = None,
    sequence: int = 0,
) -> None:
    # The sequence number lets a reader of the log check that each report was applied
    # once and in order.
    log.info(
        "%s report %d from node %s on pipeline %s: %s",
        "applied" if applied else "ignored",
        sequence,
        node_id,
        pipeline_id,
        detail,
        extra=ids(pipeline_id, step, node_id),
    )
