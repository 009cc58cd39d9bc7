"""Delivers status reports to the server: numbered, in order, once, across disconnects.

Every report about a pipeline gets the next number of that pipeline's sequence (starting at
1, shared by ``UpdatePipelineStatus`` and ``UpdateStepStatus``) and is written to the
journal on disk before anyone else sees it. A single sender thread delivers the journal in
the order it was written; a report leaves the journal only when the server has answered it
(applied, duplicate, or refused for good). While the agent is disconnected, or the server
answers UNAVAILABLE, the sender waits with backoff and tries the same report again, so the
server sees every report in order; a retry of a report it already applied comes back as a
duplicate and changes nothing. Reports still in the journal when the agent stops are
delivered by the next agent started on the same work dir.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from gamepipeline.agent.backoff import Backoff, is_transient
from gamepipeline.agent.events import PipelineReport, Report, StepReport
from gamepipeline.proto import gamepipeline_pb2 as pb

log = logging.getLogger(__name__)

CALL_TIMEOUT_SECONDS = 10.0
"""Deadline of one report call; a server that takes longer is treated as unavailable."""

_PIPELINE_KIND = b"P"
_STEP_KIND = b"S"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")

Request = pb.UpdatePipelineStatusRequest | pb.UpdateStepStatusRequest


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Entry:
    path: Path
    request: Request

    @property
    def final(self) -> bool:
        return isinstance(
            self.request, pb.UpdatePipelineStatusRequest
        ) and self.request.state in (
            pb.PIPELINE_STATE_COMPLETED,
            pb.PIPELINE_STATE_FAILED,
            pb.PIPELINE_STATE_CANCELED,
        )


def to_request(
    node_id: str, pipeline_id: str, sequence: int, report: Report
) -> Request:
    """The wire form of one report."""
    if isinstance(report, PipelineReport):
        return pb.UpdatePipelineStatusRequest(
            node_id=node_id,
            pipeline_id=pipeline_id,
            state=report.state,
            reason=report.reason,
            message=report.message,
            sequence=sequence,
            timestamp_ms=now_ms(),
        )
    step: StepReport = report
    request = pb.UpdateStepStatusRequest(
        node_id=node_id,
        pipeline_id=pipeline_id,
        step_index=step.step_index,
        state=step.state,
        reason=step.reason,
        message=step.message,
        output_tail=step.output_tail,
        sequence=sequence,
        timestamp_ms=now_ms(),
    )
    if step.exit_code is not None:
        request.exit_code = step.exit_code
    return request


class Reporter:
    """Numbers, journals and delivers status reports.

    Args:
        node_id: goes into every report.
        journal_dir: where reports wait until the server has answered them.
        backoff: retry policy of the sender (a fresh ``Backoff()`` by default).
    """

    def __init__(
        self, node_id: str, journal_dir: Path, *, backoff: Backoff | None = None
    ) -> None:
        self._node_id = node_id
        self._outbox = journal_dir / "outbox"
        self._sequences = journal_dir / "sequences"
        self._outbox.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._sequences.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._backoff = backoff or Backoff()

        self._cond = threading.Condition()
        self._queue: deque[_Entry] = deque(self._load_outbox())
        self._next_file = self._next_file_number()
        self._last_sequence: dict[str, int] = {}
        self._stub: Any = None
        self._stopping = False
        self._thread = threading.Thread(
            target=self._deliver_forever, name="gamepipeline-reporter", daemon=True
        )
        if self._queue:
            log.info("journal holds %d undelivered reports", len(self._queue))

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop delivering; undelivered reports stay in the journal."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def set_stub(self, stub: Any) -> None:
        """Deliver through ``stub`` from now on; None while disconnected."""
        with self._cond:
            self._stub = stub
            self._backoff.reset()
            self._cond.notify_all()

    def submit(self, pipeline_id: str, report: Report) -> int:
        """Number and journal one report; returns its sequence number."""
        with self._cond:
            sequence = self._next_sequence(pipeline_id)
            request = to_request(self._node_id, pipeline_id, sequence, report)
            entry = _Entry(self._write_entry(request), request)
            self._queue.append(entry)
            self._cond.notify_all()
        log.debug(
            "report queued for pipeline %s: sequence %d, %s",
            pipeline_id,
            sequence,
            type(report).__name__,
        )
        return sequence

    def has_reported(self, pipeline_id: str) -> bool:
        """Whether a report on the pipeline was made here and its final one has not
        been answered yet (its sequence is still kept, in memory or on disk)."""
        with self._cond:
            return (
                pipeline_id in self._last_sequence
                or self._sequence_path(pipeline_id).exists()
            )

    def reporting_ids(self) -> list[str]:
        """Pipelines reported on here whose final report the server has not answered."""
        with self._cond:
            on_disk = {path.name for path in self._sequences.iterdir()}
            return sorted(
                (set(self._last_sequence) | on_disk)
                - {name for name in on_disk if name.endswith(".tmp")}
            )

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def flush(self, timeout: float) -> bool:
        """Wait until every report so far was answered; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    # -- sequence numbers ------------------------------------------------------------

    def _sequence_path(self, pipeline_id: str) -> Path:
        return self._sequences / _UNSAFE.sub("_", pipeline_id)

    def _next_sequence(self, pipeline_id: str) -> int:
        last = self._last_sequence.get(pipeline_id)
        if last is None:
            try:
                last = int(self._sequence_path(pipeline_id).read_text())
            except (OSError, ValueError):
                last = 0
        sequence = last + 1
        self._last_sequence[pipeline_id] = sequence
        _write_atomically(self._sequence_path(pipeline_id), str(sequence).encode())
        return sequence

    def _forget(self, pipeline_id: str) -> None:
        """After the final report was answered no later report matters."""
        self._last_sequence.pop(pipeline_id, None)
        self._sequence_path(pipeline_id).unlink(missing_ok=True)

    # -- journal -----------------------------------------------------------------------

    def _load_outbox(self) -> list[_Entry]:
        entries = []
        for path in sorted(self._outbox.glob("*.pb")):
            data = path.read_bytes()
            request: Request
            if data[:1] == _PIPELINE_KIND:
                request = pb.UpdatePipelineStatusRequest.FromString(data[1:])
            elif data[:1] == _STEP_KIND:
                request = pb.UpdateStepStatusRequest.FromString(data[1:])
            else:
                log.warning("journal entry %s is unreadable; dropping it", path)
                path.unlink()
                continue
            entries.append(_Entry(path, request))
        return entries

    def _next_file_number(self) -> int:
        if not self._queue:
            return 0
        return int(self._queue[-1].path.stem) + 1

    def _write_entry(self, request: Request) -> Path:
        kind = (
            _PIPELINE_KIND
            if isinstance(request, pb.UpdatePipelineStatusRequest)
            else _STEP_KIND
        )
        path = self._outbox / f"{self._next_file:016d}.pb"
        self._next_file += 1
        _write_atomically(path, kind + request.SerializeToString())
        return path

    # -- delivery ----------------------------------------------------------------------

    def _deliver_forever(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (not self._queue or self._stub is None):
                    self._cond.wait()
                if self._stopping:
                    return
                entry, stub = self._queue[0], self._stub

            if self._deliver(stub, entry):
                with self._cond:
                    self._queue.popleft()
                    entry.path.unlink(missing_ok=True)
                    if entry.final:
                        self._forget(entry.request.pipeline_id)
                    self._backoff.reset()
                    self._cond.notify_all()
                continue

            delay = self._backoff.next_delay()
            with self._cond:
                self._cond.wait(delay)

    def _deliver(self, stub: Any, entry: _Entry) -> bool:
        """Send one report; True once the server answered it for good."""
        request = entry.request
        try:
            if isinstance(request, pb.UpdatePipelineStatusRequest):
                reply = stub.UpdatePipelineStatus(request, timeout=CALL_TIMEOUT_SECONDS)
            else:
                reply = stub.UpdateStepStatus(request, timeout=CALL_TIMEOUT_SECONDS)
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else None
            if is_transient(code, report=True):
                log.warning(
                    "report for pipeline %s (sequence %d) not delivered, will retry: %s",
                    request.pipeline_id,
                    request.sequence,
                    code,
                )
                return False
            log.error(
                "server refused report for pipeline %s (sequence %d): %s %s",
                request.pipeline_id,
                request.sequence,
                code,
                err.details() if hasattr(err, "details") else err,
            )
            return True

        if not reply.applied:
            log.debug(
                "report for pipeline %s (sequence %d) not applied: %s",
                request.pipeline_id,
                request.sequence,
                reply.detail or ("duplicate" if reply.duplicate else "no detail"),
            )
        return True


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
