"""Durable records of pipelines, their steps and the nodes, kept in SQLite.

Every state change is committed before the caller acknowledges it, so a server killed at
any point restarts from exactly what it told its clients. The database runs in WAL mode
(readers never block the writer) and each thread has its own connection for reading.
Every change is a job for the one writer thread (``writer``), which commits the jobs
queued together in one transaction and one ``fsync``, and answers each caller only
after that commit. A change that reads a record and writes it back reads it in the
writer's transaction, so no two changes judge a report against the same stale record.
Each change method waits for its commit; the ``*_async`` twins await it from a
coroutine, so the gRPC event loop never waits for the disk.

The state rules live in ``gamepipeline.pipeline.states``; this module applies their
verdicts and says nothing about the wire.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar

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
    steps_after_restart,
)
from gamepipeline.server.errors import Conflict, InvalidRequest, NotFound, WrongNode
from gamepipeline.server.sealing import SecretBox, names_only
from gamepipeline.server.writer import Writer

log = logging.getLogger(__name__)

T = TypeVar("T")

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
    #: A step report that ended a step which had started: the step's type and how
    #: long it ran, in seconds.
    step_type: str = ""
    step_seconds: float | None = None


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


@dataclass(frozen=True)
class LeftContainer:
    """A container labelled with a pipeline and a step, as an agent found it."""

    pipeline_id: str
    step_index: int
    name: str


@dataclass(frozen=True)
class RestartOutcome:
    """What an agent's start settled: the pipelines failed (with the step cut short,
    None when every step had ended), the found containers to remove, and the pipeline
    ids of found containers this server does not know."""

    failed: list[tuple[str, int | None]] = field(default_factory=list)
    remove: list[LeftContainer] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class QueuedPipeline:
    """A pending pipeline as the dispatcher sees it: where it may run, not what."""

    id: str
    node_requested: str | None
    node_assigned: str | None
    message: str
    created_at_ms: int
    #: The labels a node must carry to run it (its document's ``node_selector``).
    selector: dict[str, str]
    #: Whether its node said it took it (it has not reported it running yet).
    acknowledged: bool = False


@dataclass(frozen=True)
class _ReportedPipeline:
    """What judging a report needs of its pipeline."""

    id: str
    state: PipelineState
    last_sequence: int
    started_at_ms: int | None
    env_values: str


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
        # Every change goes through one writer thread, which commits them in groups.
        self._writer = Writer(self._db)
        self._writer.run(self._create_schema)

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
            # isolation_level=None: no implicit transactions; the writer opens its own.
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

    def _commit(self, job: Callable[[Database], T]) -> T:
        """Run ``job`` on the writer and wait until its changes are committed."""
        return self._writer.run(job)

    async def _commit_async(self, job: Callable[[Database], T]) -> T:
        """``_commit`` for a coroutine: the event loop runs on while it waits."""
        return await self._writer.run_async(job)

    def _commit_later(self, job: Callable[[Database], object], what: str) -> None:
        """Queue a change nobody waits for (nothing is acknowledged on it); a
        failure is logged."""

        def check(future: Future[object]) -> None:
            if future.exception() is not None:
                log.error("could not record %s: %s", what, future.exception())

        self._writer.submit(job).add_done_callback(check)

    def close(self) -> None:
        """Commit what is queued and close every thread's connection; call once no
        thread uses the store."""
        self._writer.close()
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def _create_schema(self, db: Database) -> None:
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
        # The dispatcher asks for the few nodes not in service on every pass.
        db.table("nodes").create_index(["mode"], if_not_exists=True)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # pipelines: submission and reading

    def create_pipeline(self, new: NewPipeline) -> str:
        """Store a pipeline and its steps in one transaction; answer its id."""
        pipeline_id = uuid.uuid4().hex
        now = self._clock()
        row = {
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
        steps = [
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
        ]

        def insert(db: Database) -> None:
            # Prepared statements: sqlite-utils' insert looks the table up (its
            # columns, and whether it is a view) and opens a savepoint of its own on
            # every call, several times the cost of the insert itself.
            db.conn.execute(_insert_sql("pipelines", row), row)
            if steps:
                db.conn.executemany(_insert_sql("steps", steps[0]), steps)

        self._commit(insert)
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

    def queued_pipelines(self) -> list[QueuedPipeline]:
        """Pending pipelines, oldest first, with only what dispatch looks at: the
        dispatcher's queue. No document is decoded; its ``node_selector`` is read by
        SQLite."""
        rows = self._db().conn.execute(
            "SELECT id, node_requested, node_assigned, message, created_at_ms, "
            "json_extract(document, '$.node_selector'), acknowledged FROM pipelines "
            "WHERE state = ? ORDER BY created_at_ms, rowid",
            [PipelineState.PENDING.value],
        )
        return [
            QueuedPipeline(
                id=row[0],
                node_requested=row[1],
                node_assigned=row[2],
                message=row[3] or "",
                created_at_ms=row[4],
                selector=_selector(row[5]),
                acknowledged=bool(row[6]),
            )
            for row in rows
        ]

    def assign(self, pipeline_id: str, node_id: str) -> bool:
        """Give a pending, unassigned pipeline to a node; False if it no longer is one."""
        return self._commit(_assign_job([(pipeline_id, node_id)]))[0]

    async def assign_all(
        self, assignments: Sequence[tuple[str, str]]
    ) -> list[tuple[PipelineRecord, list[StepRecord]] | None]:
        """``assign`` for each ``(pipeline_id, node_id)``, committed together.

        Answers, for each, the pipeline and its steps as assigned (read in the same
        transaction, so that the hand-over needs no read of its own), or None if it
        was no longer pending and unassigned."""
        assign = _assign_job(assignments)

        def job(db: Database) -> list[tuple[PipelineRecord, list[StepRecord]] | None]:
            read: list[tuple[PipelineRecord, list[StepRecord]] | None] = []
            for (pipeline_id, _), done in zip(assignments, assign(db), strict=True):
                row = _one(db, "SELECT * FROM pipelines WHERE id = ?", [pipeline_id])
                if not done or row is None:
                    read.append(None)
                    continue
                steps = db.query(
                    "SELECT * FROM steps WHERE pipeline_id = ? ORDER BY idx",
                    [pipeline_id],
                )
                read.append((self._record(row), [_step(step) for step in steps]))
            return read

        return await self._commit_async(job)

    def set_waiting_message(self, pipeline_id: str, message: str) -> None:
        """Say why a pending pipeline has not been dispatched yet."""
        self._commit(_waiting_job([(pipeline_id, message)]))

    def note_waiting(self, messages: Sequence[tuple[str, str]]) -> None:
        """``set_waiting_message`` for each ``(pipeline_id, message)``, without
        waiting: the message only explains a wait, and the next pass writes it again
        if it is lost."""
        self._commit_later(_waiting_job(messages), "why pipelines wait")

    def acknowledge(
        self, pipeline_id: str, node_id: str, *, accepted: bool, message: str
    ) -> bool:
        """Record the node's answer to a dispatch; a refusal fails the pipeline.

        Answers whether the record changed. An answer from a node the pipeline is not
        assigned to, or about a pipeline that already ended, changes nothing.
        """
        return self._commit(
            self._acknowledge_job(pipeline_id, node_id, accepted, message)
        )

    async def acknowledge_async(
        self, pipeline_id: str, node_id: str, *, accepted: bool, message: str
    ) -> bool:
        """``acknowledge`` for a coroutine."""
        job = self._acknowledge_job(pipeline_id, node_id, accepted, message)
        return await self._commit_async(job)

    def _acknowledge_job(
        self, pipeline_id: str, node_id: str, accepted: bool, message: str
    ) -> Callable[[Database], bool]:
        def job(db: Database) -> bool:
            row = db.conn.execute(
                "SELECT node_assigned, state FROM pipelines WHERE id = ?",
                [pipeline_id],
            ).fetchone()
            if row is None or row[0] != node_id or PipelineState(row[1]).is_final:
                return False
            if accepted:
                db.conn.execute(
                    "UPDATE pipelines SET acknowledged = 1 WHERE id = ?", [pipeline_id]
                )
                return True
            text = (
                f"node {node_id} refused the pipeline: {message or 'no reason given'}"
            )
            self._end(db, pipeline_id, PipelineState.FAILED, EndReason.REJECTED, text)
            return True

        return job

    # pipelines: reports from agents

    def apply_pipeline_report(self, report: PipelineReport) -> ReportOutcome:
        """Judge and apply an agent's report on a pipeline's overall state."""
        outcome = self._commit(lambda db: self._pipeline_report_job(db, report))
        _log_report(report, outcome)
        return outcome

    async def apply_pipeline_report_async(
        self, report: PipelineReport
    ) -> ReportOutcome:
        """``apply_pipeline_report`` for a coroutine."""
        job = partial(self._pipeline_report_job, report=report)
        outcome = await self._commit_async(job)
        _log_report(report, outcome)
        return outcome

    def _pipeline_report_job(
        self, db: Database, report: PipelineReport
    ) -> ReportOutcome:
        head = _reported_pipeline(db, report.node_id, report.pipeline_id)
        if judge_sequence(head.last_sequence, report.sequence) is (
            SequenceVerdict.DUPLICATE
        ):
            return _duplicate(head, report.sequence)

        judgement = judge_pipeline_move(
            head.state, report.state, what=f"pipeline {head.id}"
        )
        changes: dict[str, Any] = {"last_sequence": report.sequence}
        if judgement.applies:
            at = report.timestamp_ms or self._clock()
            changes |= {
                "state": report.state.value,
                "reason": report.reason.value,
                "message": report.message[:MESSAGE_LIMIT],
            }
            if report.state is PipelineState.RUNNING or head.started_at_ms is None:
                changes["started_at_ms"] = at
            if report.state.is_final:
                changes |= {
                    "finished_at_ms": at,
                    "current_step": -1,
                    "env_values": self._names_only(head.env_values),
                }
        _update(db, "pipelines", {"id": head.id}, changes)
        return ReportOutcome(judgement.applies, False, judgement.detail)

    def apply_step_report(self, report: StepReport) -> ReportOutcome:
        """Judge and apply an agent's report on one step."""
        outcome = self._commit(lambda db: self._step_report_job(db, report))
        _log_report(report, outcome)
        return outcome

    async def apply_step_report_async(self, report: StepReport) -> ReportOutcome:
        """``apply_step_report`` for a coroutine."""
        outcome = await self._commit_async(
            partial(self._step_report_job, report=report)
        )
        _log_report(report, outcome)
        return outcome

    def _step_report_job(self, db: Database, report: StepReport) -> ReportOutcome:
        head = _reported_pipeline(db, report.node_id, report.pipeline_id)
        # Only the step reported on is read; the count only to explain a bad index.
        row = db.conn.execute(
            "SELECT state, type, started_at_ms FROM steps "
            "WHERE pipeline_id = ? AND idx = ?",
            [head.id, report.step_index],
        ).fetchone()
        if row is None:
            (count,) = db.conn.execute(
                "SELECT COUNT(*) FROM steps WHERE pipeline_id = ?", [head.id]
            ).fetchone()
            raise InvalidRequest(
                f"step_index {report.step_index} is out of range for pipeline "
                f"{head.id}, which has {count} steps (0..{count - 1})"
            )
        if judge_sequence(head.last_sequence, report.sequence) is (
            SequenceVerdict.DUPLICATE
        ):
            return _duplicate(head, report.sequence)

        judgement = judge_step_move(
            StepState(row[0]),
            report.state,
            what=f"step {report.step_index} of pipeline {head.id}",
        )
        pipeline_changes: dict[str, Any] = {"last_sequence": report.sequence}
        ran: float | None = None
        if judgement.applies:
            at = report.timestamp_ms or self._clock()
            _apply_step_change(db, report, at)
            if report.state.is_final and row[2] is not None:
                ran = max(0, at - row[2]) / 1000
            if report.state is StepState.RUNNING and not head.state.is_final:
                pipeline_changes["current_step"] = report.step_index
            if report.state is StepState.RUNNING and (
                head.state is PipelineState.PENDING
            ):
                # The step's start says the pipeline started, report or no report.
                pipeline_changes |= {
                    "state": PipelineState.RUNNING.value,
                    "started_at_ms": at,
                }
        _update(db, "pipelines", {"id": head.id}, pipeline_changes)
        return ReportOutcome(
            judgement.applies, False, judgement.detail, row[1] or "", ran
        )

    # pipelines: endings decided by the server

    def cancel(self, pipeline_id: str) -> CancelOutcome:
        """Cancel a pipeline: at once when pending, through its node when running."""

        def job(db: Database) -> CancelOutcome:
            row = db.conn.execute(
                "SELECT state, node_assigned FROM pipelines WHERE id = ?",
                [pipeline_id],
            ).fetchone()
            if row is None:
                raise _pipeline_not_found(pipeline_id)
            state, node_assigned = PipelineState(row[0]), row[1]
            if state.is_final:
                raise Conflict(
                    f"pipeline {pipeline_id} already ended {state}; only a "
                    "pending or running pipeline can be canceled"
                )
            db.conn.execute(
                "UPDATE pipelines SET cancel_requested = 1 WHERE id = ?", [pipeline_id]
            )
            if state is PipelineState.RUNNING:
                return CancelOutcome(state, node_assigned, ended_now=False)
            self._end(
                db,
                pipeline_id,
                PipelineState.CANCELED,
                EndReason.CANCELED,
                "canceled before it started",
            )
            return CancelOutcome(PipelineState.CANCELED, node_assigned, ended_now=True)

        return self._commit(job)

    def settle_lost_node(self, node_id: str) -> NodeLossOutcome:
        """A node stayed away past its grace period: settle what it held.

        Running pipelines, and pending ones the node had acknowledged, fail with the
        reason ``node_lost``. Pending ones it never acknowledged go back to the queue.
        """
        return self._commit(self._settle_job(node_id))

    async def settle_lost_node_async(self, node_id: str) -> NodeLossOutcome:
        """``settle_lost_node`` for a coroutine."""
        return await self._commit_async(self._settle_job(node_id))

    def _settle_job(self, node_id: str) -> Callable[[Database], NodeLossOutcome]:
        def job(db: Database) -> NodeLossOutcome:
            outcome = NodeLossOutcome()
            rows = db.conn.execute(
                "SELECT id, state, acknowledged FROM pipelines "
                "WHERE node_assigned = ? AND state IN (?, ?)",
                [node_id, *_ACTIVE],
            ).fetchall()
            for pipeline_id, state, acknowledged in rows:
                if state == PipelineState.PENDING.value and not acknowledged:
                    db.conn.execute(
                        "UPDATE pipelines SET node_assigned = NULL WHERE id = ?",
                        [pipeline_id],
                    )
                    outcome.requeued.append(pipeline_id)
                    continue
                text = f"node {node_id} stopped answering and did not come back in time"
                self._end(
                    db, pipeline_id, PipelineState.FAILED, EndReason.NODE_LOST, text
                )
                outcome.failed.append(pipeline_id)
            return outcome

        return job

    async def fail_forgotten(
        self, pipeline_id: str, node_id: str, message: str
    ) -> bool:
        """Fail a pipeline its node says it neither runs nor reports on any more (its
        agent restarted without the run's records); False if it ended meanwhile."""

        def job(db: Database) -> bool:
            row = db.conn.execute(
                "SELECT node_assigned, state FROM pipelines WHERE id = ?",
                [pipeline_id],
            ).fetchone()
            if row is None or row[0] != node_id or PipelineState(row[1]).is_final:
                return False
            self._end(
                db,
                pipeline_id,
                PipelineState.FAILED,
                EndReason.AGENT_RESTARTED,
                message,
            )
            return True

        return await self._commit_async(job)

    async def fail_undeliverable(self, failures: Sequence[tuple[str, str]]) -> None:
        """Fail pending pipelines whose message cannot reach an agent, each with why;
        one that ended meanwhile is left as it is."""

        def job(db: Database) -> None:
            for pipeline_id, message in failures:
                row = db.conn.execute(
                    "SELECT state FROM pipelines WHERE id = ?", [pipeline_id]
                ).fetchone()
                if row is None or PipelineState(row[0]).is_final:
                    continue
                self._end(
                    db, pipeline_id, PipelineState.FAILED, EndReason.REJECTED, message
                )

        await self._commit_async(job)

    async def settle_restart(
        self, node_id: str, listed: Collection[str], found: Sequence[LeftContainer]
    ) -> RestartOutcome:
        """Settle a node whose agent just started, from what it says it knows.

        ``listed`` are the pipelines the agent runs or has yet to report the end of;
        ``found`` the labelled containers on its engine. Every running pipeline of the
        node that it does not list fails with the reason ``agent_restarted``, and so
        does every pending one it does not list but had acknowledged or left
        containers of (it was taken): the step the record shows running (else the
        first that had not ended) fails, the others not ended are skipped. Then each
        found container of a pipeline of this node that is failed or canceled and not
        listed is to be removed, unless its step completed (its container is the
        result). Containers of other nodes' pipelines, of completed ones and of
        pipelines unknown here are left alone. One commit; settling twice changes
        nothing the second time.
        """
        return await self._commit_async(
            lambda db: self._restart_job(db, node_id, set(listed), found)
        )

    def _restart_job(
        self,
        db: Database,
        node_id: str,
        listed: set[str],
        found: Sequence[LeftContainer],
    ) -> RestartOutcome:
        outcome = RestartOutcome()
        with_containers = {container.pipeline_id for container in found}
        rows = db.conn.execute(
            "SELECT id, state, acknowledged FROM pipelines "
            "WHERE node_assigned = ? AND state IN (?, ?) ORDER BY created_at_ms",
            [node_id, *_ACTIVE],
        ).fetchall()
        for pipeline_id, state, acknowledged in rows:
            if pipeline_id in listed:
                continue
            taken = acknowledged or pipeline_id in with_containers
            if state == PipelineState.PENDING.value and not taken:
                continue  # never taken: it is handed over again
            states = self._step_states(db, pipeline_id)
            cut, moves = steps_after_restart(states)
            self._end(
                db,
                pipeline_id,
                PipelineState.FAILED,
                EndReason.AGENT_RESTARTED,
                restart_message(cut),
                moves,
            )
            outcome.failed.append((pipeline_id, cut))

        ended = (PipelineState.FAILED.value, PipelineState.CANCELED.value)
        for container in found:
            if container.pipeline_id in listed:
                continue
            row = db.conn.execute(
                "SELECT node_assigned, state FROM pipelines WHERE id = ?",
                [container.pipeline_id],
            ).fetchone()
            if row is None:
                if container.pipeline_id not in outcome.unknown:
                    outcome.unknown.append(container.pipeline_id)
                continue
            if row[0] != node_id or row[1] not in ended:
                continue
            step = db.conn.execute(
                "SELECT state FROM steps WHERE pipeline_id = ? AND idx = ?",
                [container.pipeline_id, container.step_index],
            ).fetchone()
            if step is not None and step[0] == StepState.COMPLETED.value:
                continue
            outcome.remove.append(container)
        return outcome

    def _step_states(self, db: Database, pipeline_id: str) -> list[StepState]:
        return [
            StepState(row[0])
            for row in db.conn.execute(
                "SELECT state FROM steps WHERE pipeline_id = ? ORDER BY idx",
                [pipeline_id],
            )
        ]

    def _names_only(self, stored: str) -> str:
        """What is kept of stored env values once a run ended: their names."""
        return json.dumps(names_only(self._box.open(json.loads(stored))))

    def _end(
        self,
        db: Database,
        pipeline_id: str,
        state: PipelineState,
        reason: EndReason,
        message: str,
        moves: list[tuple[int, StepState, EndReason]] | None = None,
    ) -> None:
        """End a pipeline no agent will report on, and its unfinished steps with it
        (by ``steps_after_end`` unless ``moves`` says how)."""
        now = self._clock()
        (env_values,) = db.conn.execute(
            "SELECT env_values FROM pipelines WHERE id = ?", [pipeline_id]
        ).fetchone()
        _update(
            db,
            "pipelines",
            {"id": pipeline_id},
            {
                "state": state.value,
                "reason": reason.value,
                "message": message,
                "finished_at_ms": now,
                "current_step": -1,
                "env_values": self._names_only(env_values),
            },
        )
        if moves is None:
            moves = steps_after_end(self._step_states(db, pipeline_id), reason)
        for index, step_state, step_reason in moves:
            _update(
                db,
                "steps",
                {"pipeline_id": pipeline_id, "idx": index},
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
        self._commit(
            self._register_job(
                node_id, hostname, labels, capacity, agent_version, protocol_version
            )
        )

    async def register_node_async(
        self,
        node_id: str,
        *,
        hostname: str,
        labels: Mapping[str, str],
        capacity: int,
        agent_version: str,
        protocol_version: int,
    ) -> None:
        """``register_node`` for a coroutine."""
        await self._commit_async(
            self._register_job(
                node_id, hostname, labels, capacity, agent_version, protocol_version
            )
        )

    def _register_job(
        self,
        node_id: str,
        hostname: str,
        labels: Mapping[str, str],
        capacity: int,
        agent_version: str,
        protocol_version: int,
    ) -> Callable[[Database], None]:
        now = self._clock()
        values = [
            node_id,
            hostname,
            json.dumps(dict(labels), ensure_ascii=False),
            capacity,
            agent_version,
            protocol_version,
            now,
            now,
        ]

        def job(db: Database) -> None:
            # An upsert that keeps what registration does not say (the node's mode).
            db.conn.execute(
                "INSERT INTO nodes (node_id, hostname, labels, capacity, "
                "agent_version, protocol_version, online, connected_at_ms, "
                "last_heartbeat_ms, offline_since_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, NULL) "
                "ON CONFLICT (node_id) DO UPDATE SET hostname = excluded.hostname, "
                "labels = excluded.labels, capacity = excluded.capacity, "
                "agent_version = excluded.agent_version, "
                "protocol_version = excluded.protocol_version, online = 1, "
                "connected_at_ms = excluded.connected_at_ms, "
                "last_heartbeat_ms = excluded.last_heartbeat_ms, "
                "offline_since_ms = NULL",
                values,
            )

        return job

    def record_heartbeats(self, beats: Mapping[str, int]) -> None:
        """Write each node's last heartbeat time (``node_id`` → ms), without waiting.

        A heartbeat's time is not a state change: nothing is acknowledged on it, the
        server judges liveness from its own memory, and after a restart every node is
        offline until it registers again. So these writes are queued and a crash may
        lose the last second of them; the API then shows a slightly older time.
        """
        rows = [(at, node_id) for node_id, at in beats.items()]

        def job(db: Database) -> None:
            db.conn.executemany(
                "UPDATE nodes SET last_heartbeat_ms = ? WHERE node_id = ?", rows
            )

        self._commit_later(job, "heartbeats")

    def record_heartbeat(self, node_id: str) -> None:
        """Write one node's heartbeat time and wait until it is committed."""
        self._commit(
            lambda db: db.conn.execute(
                "UPDATE nodes SET last_heartbeat_ms = ? WHERE node_id = ?",
                [self._clock(), node_id],
            )
        )

    def set_node_offline(self, node_id: str) -> None:
        """Mark a node offline, without waiting: its stream already ended, and
        after a restart every node starts offline anyway."""
        self._commit_later(
            _offline_job([node_id], self._clock()), f"node {node_id} going offline"
        )

    async def set_nodes_offline(self, node_ids: Sequence[str]) -> None:
        """Mark nodes offline and wait until it is committed."""
        await self._commit_async(_offline_job(node_ids, self._clock()))

    def mark_all_nodes_offline(self) -> list[str]:
        """At start-up no agent is connected yet: every node is offline until it is."""

        def job(db: Database) -> list[str]:
            ids = [
                r["node_id"]
                for r in db.query("SELECT node_id FROM nodes WHERE online = 1")
            ]
            db.execute(
                "UPDATE nodes SET online = 0, offline_since_ms = ? WHERE online = 1",
                [self._clock()],
            )
            return ids

        return self._commit(job)

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
        self._commit(
            lambda db: db.execute(
                "UPDATE nodes SET mode = ? WHERE node_id = ?", [mode.value, node_id]
            )
        )
        log.info("node %s is now %s", node_id, mode, extra=ids(node_id=node_id))
        return self.get_node(node_id)

    def node_exists(self, node_id: str) -> bool:
        """Whether a node of this id ever registered with this server."""
        row = (
            self._db()
            .conn.execute("SELECT 1 FROM nodes WHERE node_id = ?", [node_id])
            .fetchone()
        )
        return row is not None

    def closed_nodes(self) -> dict[str, NodeMode]:
        """Nodes that take no new pipelines (in maintenance or disabled), with why."""
        rows = self._db().conn.execute(
            "SELECT node_id, mode FROM nodes WHERE mode IN (?, ?)",
            [NodeMode.MAINTENANCE.value, NodeMode.DISABLED.value],
        )
        return {row[0]: NodeMode(row[1]) for row in rows}

    def active_on_node(self, node_id: str) -> list[str]:
        """Ids of the pending and running pipelines assigned to a node."""
        rows = self._db().conn.execute(
            "SELECT id FROM pipelines WHERE node_assigned = ? AND state IN (?, ?) "
            "ORDER BY created_at_ms",
            [node_id, *_ACTIVE],
        )
        return [row[0] for row in rows]

    def held_or_awaited_by(self, node_id: str) -> list[str]:
        """Ids of the pending and running pipelines assigned to a node, and of the
        pending ones waiting for it by name (not yet assigned), oldest first."""
        rows = self._db().conn.execute(
            "SELECT id FROM pipelines WHERE state IN (?, ?) AND (node_assigned = ? "
            "OR (node_assigned IS NULL AND node_requested = ?)) ORDER BY created_at_ms",
            [*_ACTIVE, node_id, node_id],
        )
        return [row[0] for row in rows]

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


def restart_message(cut: int | None) -> str:
    """The message of a pipeline failed because its agent restarted without its
    records, naming the step that was cut short."""
    if cut is None:
        return (
            "the agent restarted after the last step, before it reported the "
            "pipeline's end, and came back without its records of the run"
        )
    return (
        f"the agent restarted during step {cut} and came back without its records "
        "of the run"
    )


@functools.cache
def _insert_sql_for(table: str, columns: tuple[str, ...]) -> str:
    names = ", ".join(columns)
    values = ", ".join(f":{column}" for column in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({values})"


def _insert_sql(table: str, row: Mapping[str, Any]) -> str:
    """``INSERT`` of ``row``'s columns, by name (the names are this module's own)."""
    return _insert_sql_for(table, tuple(row))


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


def _duplicate(head: _ReportedPipeline, sequence: int) -> ReportOutcome:
    detail = (
        f"report {sequence} on pipeline {head.id} was already seen "
        f"(last applied {head.last_sequence}); ignored"
    )
    log.debug("ignored duplicate report on pipeline %s: %s", head.id, detail)
    return ReportOutcome(applied=False, duplicate=True, detail=detail)


def _reported_pipeline(
    db: Database, node_id: str, pipeline_id: str
) -> _ReportedPipeline:
    row = db.conn.execute(
        "SELECT node_assigned, state, last_sequence, started_at_ms, env_values "
        "FROM pipelines WHERE id = ?",
        [pipeline_id],
    ).fetchone()
    if row is None:
        raise _pipeline_not_found(pipeline_id)
    node_assigned = row[0]
    if node_assigned != node_id:
        owner = f"node {node_assigned}" if node_assigned else "no node"
        raise WrongNode(
            f"pipeline {pipeline_id} is assigned to {owner}, not to node {node_id}; "
            "only the node it was dispatched to may report on it"
        )
    return _ReportedPipeline(
        pipeline_id, PipelineState(row[1]), row[2], row[3], row[4] or "{}"
    )


def _apply_step_change(db: Database, report: StepReport, at: int) -> None:
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
    _update(
        db,
        "steps",
        {"pipeline_id": report.pipeline_id, "idx": report.step_index},
        changes,
    )


def _update(
    db: Database, table: str, key: Mapping[str, Any], changes: Mapping[str, Any]
) -> None:
    """``UPDATE table SET changes WHERE key``. Table and column names come from this
    module only; the statement's text depends on which columns change, so the
    connection's statement cache keeps each shape parsed."""
    sets = ", ".join(f"{column} = ?" for column in changes)
    where = " AND ".join(f"{column} = ?" for column in key)
    db.conn.execute(
        f"UPDATE {table} SET {sets} WHERE {where}",
        [*changes.values(), *key.values()],
    )


def _assign_job(
    assignments: Sequence[tuple[str, str]],
) -> Callable[[Database], list[bool]]:
    def job(db: Database) -> list[bool]:
        done = []
        for pipeline_id, node_id in assignments:
            cursor = db.conn.execute(
                "UPDATE pipelines SET node_assigned = ?, message = '' "
                "WHERE id = ? AND state = ? AND node_assigned IS NULL",
                [node_id, pipeline_id, PipelineState.PENDING.value],
            )
            done.append(cursor.rowcount == 1)
        return done

    return job


def _waiting_job(messages: Sequence[tuple[str, str]]) -> Callable[[Database], None]:
    rows = [
        (message, pipeline_id, PipelineState.PENDING.value)
        for pipeline_id, message in messages
    ]

    def job(db: Database) -> None:
        db.conn.executemany(
            "UPDATE pipelines SET message = ? WHERE id = ? AND state = ?", rows
        )

    return job


def _offline_job(node_ids: Sequence[str], at: int) -> Callable[[Database], None]:
    rows = [(at, node_id) for node_id in node_ids]

    def job(db: Database) -> None:
        db.conn.executemany(
            "UPDATE nodes SET online = 0, offline_since_ms = ? "
            "WHERE node_id = ? AND online = 1",
            rows,
        )

    return job


def _selector(text: str | None) -> dict[str, str]:
    """A ``node_selector`` as SQLite's ``json_extract`` gives it, as labels."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _log_report(report: PipelineReport | StepReport, outcome: ReportOutcome) -> None:
    if outcome.duplicate:
        return  # _duplicate logged it
    _log_outcome(
        report.pipeline_id,
        report.node_id,
        outcome.applied,
        outcome.detail,
        step=report.step_index if isinstance(report, StepReport) else None,
        sequence=report.sequence,
    )


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


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether a node with ``labels`` carries every label of ``selector``."""
    return all(labels.get(key) == value for key, value in selector.items())


def labels_text(labels: Mapping[str, str]) -> str:
    """Labels or a selector as people write them: ``gpu=nvidia, region=eu``."""
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "(none)"


def mode_phrase(mode: NodeMode | str) -> str:
    """A node's mode after "which is": ``in maintenance``, ``disabled``."""
    value = mode.value if isinstance(mode, NodeMode) else str(mode)
    return "in maintenance" if value == NodeMode.MAINTENANCE.value else value
