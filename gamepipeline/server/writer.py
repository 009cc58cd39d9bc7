"""One thread that makes every change to the database, committing changes in groups.

A commit in WAL mode with ``synchronous=FULL`` costs one ``fsync`` (about a millisecond
on a virtual disk), whatever it holds. Callers hand the writer a *job*, a function that
reads and writes through the writer's connection; the writer runs every job queued so
far in one transaction, each inside a savepoint of its own (a job that raises undoes
only its own changes), commits once, and only then resolves each job's future. So a
caller that waits for its future, and answers its client afterwards, still never
acknowledges a change that is not on disk, while a burst of changes shares one
``fsync``.

Jobs run one at a time, in the order they were submitted: a job always sees every
change submitted before it, and a job that reads a record and writes it back needs no
lock of its own.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from sqlite_utils import Database

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Jobs committed together at most. Bounds the time the first caller of a burst waits
#: for the last; a few hundred small jobs take a few milliseconds of Python.
MAX_BATCH: Final = 512


@dataclass(frozen=True)
class _Job(Generic[T]):
    run: Callable[[Database], T]
    #: Where the outcome goes: a thread's future, or a coroutine's future on its loop.
    future: Future[T] | None = None
    waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[T]] | None = None

    def start(self) -> bool:
        """False if the caller gave up already (a thread's future was canceled)."""
        return self.future is None or self.future.set_running_or_notify_cancel()


#: A finished job: the job, its value and the error it raised (None if it did not).
_Done = tuple[_Job[Any], Any, BaseException | None]


class WriterClosed(RuntimeError):
    """A job was submitted after the writer stopped."""


class Writer:
    """The database's only writer: a thread, a queue of jobs, one commit per batch."""

    def __init__(self, connect: Callable[[], Database], name: str = "store-writer"):
        self._connect = connect
        self._queue: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[Database], T]) -> Future[T]:
        """Queue a job; its future resolves once its changes are committed."""
        if self._closed:
            raise WriterClosed("the store is closed; no change can be made")
        future: Future[T] = Future()
        self._queue.put(_Job(job, future))
        return future

    def run(self, job: Callable[[Database], T]) -> T:
        """Run a job and wait until it is committed; answer what it answered."""
        return self.submit(job).result()

    async def run_async(self, job: Callable[[Database], T]) -> T:
        """Like ``run``, for a coroutine: the event loop goes on while it waits.

        The writer wakes each loop once per batch, not once per job."""
        if self._closed:
            raise WriterClosed("the store is closed; no change can be made")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(job, waiter=(loop, future)))
        return await future

    def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()

    def _serve(self) -> None:
        db = self._connect()
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch: list[_Job[Any]] = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                batch.append(job)
            self._commit(db, batch)
            if stop:
                return

    def _commit(self, db: Database, batch: list[_Job[Any]]) -> None:
        conn = db.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except Exception as err:
            _settle([(job, None, err) for job in batch if job.start()])
            return

        done: list[_Done] = []
        for job in batch:
            if not job.start():
                continue
            conn.execute("SAVEPOINT job")
            try:
                value = job.run(db)
            except BaseException as err:  # handed to the caller, who raises it
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                done.append((job, None, err))
            else:
                conn.execute("RELEASE job")
                done.append((job, value, None))

        try:
            conn.execute("COMMIT")
        except Exception as err:
            log.exception("commit of %d changes failed", len(done))
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            done = [(job, None, err) for job, _, _ in done]
        _settle(done)


def _settle(done: list[_Done]) -> None:
    """Hand each finished job's outcome to its caller: threads at once, each event
    loop in one call made on that loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Done]] = {}
    for item in done:
        job, value, error = item
        if job.waiter is not None:
            by_loop.setdefault(job.waiter[0], []).append(item)
        elif job.future is not None:
            if error is None:
                job.future.set_result(value)
            else:
                job.future.set_exception(error)
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_on_loop, items)
        except RuntimeError:
            log.debug("event loop closed; %d answers dropped", len(items))


def _settle_on_loop(done: list[_Done]) -> None:
    for job, value, error in done:
        assert job.waiter is not None
        future = job.waiter[1]
        if future.done():
            continue  # the coroutine was canceled; the change stands
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)
