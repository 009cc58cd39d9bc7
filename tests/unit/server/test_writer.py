"""The store's writer: changes committed in groups, each answered after its commit."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlite_utils import Database

from gamepipeline.server.writer import Writer, WriterClosed


def _writer(path: Path) -> Writer:
    def connect() -> Database:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER UNIQUE)")
        return Database(conn)

    return Writer(connect)


def _rows(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT x FROM t ORDER BY x")]


def test_a_failing_job_undoes_only_its_own_changes(tmp_path: Path) -> None:
    """Jobs of one batch share a transaction; a job that raises must not take the
    others' changes with it, nor leave half of its own."""
    path = tmp_path / "w.db"
    writer = _writer(path)
    gate = threading.Event()
    # Hold the writer so that the next three jobs land in one batch.
    held = writer.submit(lambda db: gate.wait(10))

    def half_then_fail(db: Database) -> None:
        db.execute("INSERT INTO t VALUES (2)")
        db.execute("INSERT INTO t VALUES (1)")  # breaks the UNIQUE constraint

    first = writer.submit(lambda db: db.execute("INSERT INTO t VALUES (1)"))
    broken = writer.submit(half_then_fail)
    last = writer.submit(lambda db: db.execute("INSERT INTO t VALUES (3)"))
    gate.set()

    held.result(10)
    first.result(10)
    last.result(10)
    with pytest.raises(sqlite3.IntegrityError):
        broken.result(10)
    writer.close()
    assert _rows(path) == [1, 3]


def test_a_coroutine_gets_its_answer_only_once_the_change_is_committed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "w.db"
    writer = _writer(path)

    def insert(n: int) -> Callable[[Database], int]:
        def job(db: Database) -> int:
            db.execute("INSERT INTO t VALUES (?)", [n])
            return n

        return job

    async def main() -> list[int]:
        answers = await asyncio.gather(
            *(writer.run_async(insert(n)) for n in range(50))
        )
        # Read on another connection: every answered change is already on disk.
        assert _rows(path) == list(range(50))
        return list(answers)

    assert asyncio.run(main()) == list(range(50))
    writer.close()
    with pytest.raises(WriterClosed):
        writer.submit(lambda db: None)
