"""The SQLite store: atomic submissions, reports judged once, records that survive."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gamepipeline.pipeline.states import EndReason, PipelineState, StepState
from gamepipeline.server.errors import Conflict, InvalidRequest, NotFound, WrongNode
from gamepipeline.server.store import (
    OUTPUT_TAIL_LIMIT,
    LeftContainer,
    NewPipeline,
    PipelineReport,
    StepReport,
    Store,
)


def new_pipeline(node: str | None = None, steps: int = 2) -> NewPipeline:
    return NewPipeline(
        model="demo",
        name="game",
        description="",
        document={"name": "game"},
        declared_args=["PORT"],
        declared_envs=["TOKEN"],
        arg_values={"PORT": "1"},
        env_values={"TOKEN": "secret"},
        node_requested=node,
        steps=[(f"s{i}", "container") for i in range(steps)],
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store.db")


@pytest.fixture
def assigned(store: Store) -> str:
    pipeline_id = store.create_pipeline(new_pipeline())
    assert store.assign(pipeline_id, "n1")
    return pipeline_id


def pipeline_report(
    pid: str, state: PipelineState, seq: int, node: str = "n1"
) -> PipelineReport:
    return PipelineReport(node, pid, state, EndReason.NONE, "", seq)


def step_report(pid: str, index: int, state: StepState, seq: int) -> StepReport:
    return StepReport("n1", pid, index, state, EndReason.NONE, "", seq)


def test_database_runs_in_wal_mode(store: Store) -> None:
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_pipeline_and_steps_are_stored_together_or_not_at_all(store: Store) -> None:
    # The steps' insert fails for real, after the pipeline's went in: a trigger
    # refuses it, as a full disk or a broken constraint would.
    other = sqlite3.connect(store.path)
    other.execute(
        "CREATE TRIGGER refuse_steps BEFORE INSERT ON steps "
        "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    other.close()
    with pytest.raises(sqlite3.DatabaseError, match="disk full"):
        store.create_pipeline(new_pipeline())

    assert store.list_pipelines() == []


def test_records_survive_reopening_the_database(tmp_path: Path) -> None:
    first = Store(tmp_path / "store.db")
    pipeline_id = first.create_pipeline(new_pipeline())
    first.assign(pipeline_id, "n1")
    first.apply_pipeline_report(pipeline_report(pipeline_id, PipelineState.RUNNING, 1))
    first.close()

    again = Store(tmp_path / "store.db")
    record = again.get_pipeline(pipeline_id)

    assert (record.state, record.node_assigned, record.last_sequence) == (
        PipelineState.RUNNING,
        "n1",
        1,
    )
    assert [s.name for s in again.get_steps(pipeline_id)] == ["s0", "s1"]


def test_a_pipeline_is_assigned_once(store: Store) -> None:
    pipeline_id = store.create_pipeline(new_pipeline())

    assert store.assign(pipeline_id, "n1")
    assert not store.assign(pipeline_id, "n2")
    assert store.get_pipeline(pipeline_id).node_assigned == "n1"


def test_report_is_applied_once(store: Store, assigned: str) -> None:
    first = store.apply_pipeline_report(
        pipeline_report(assigned, PipelineState.RUNNING, 1)
    )
    again = store.apply_pipeline_report(
        pipeline_report(assigned, PipelineState.RUNNING, 1)
    )

    assert (first.applied, first.duplicate) == (True, False)
    assert (again.applied, again.duplicate) == (False, True)


def test_ignored_report_still_uses_up_its_sequence_number(
    store: Store, assigned: str
) -> None:
    store.apply_pipeline_report(pipeline_report(assigned, PipelineState.COMPLETED, 1))
    ignored = store.apply_pipeline_report(
        pipeline_report(assigned, PipelineState.RUNNING, 2)
    )
    retried = store.apply_pipeline_report(
        pipeline_report(assigned, PipelineState.RUNNING, 2)
    )

    assert (ignored.applied, ignored.duplicate) == (False, False)
    assert retried.duplicate
    assert store.get_pipeline(assigned).state is PipelineState.COMPLETED


def test_step_start_starts_a_pending_pipeline(store: Store, assigned: str) -> None:
    store.apply_step_report(step_report(assigned, 1, StepState.RUNNING, 1))

    record = store.get_pipeline(assigned)
    assert (record.state, record.current_step) == (PipelineState.RUNNING, 1)
    assert record.started_at_ms is not None


def test_output_tail_keeps_the_end_of_long_output(store: Store, assigned: str) -> None:
    long_output = "x" * OUTPUT_TAIL_LIMIT + "the last line"
    report = StepReport(
        "n1",
        assigned,
        0,
        StepState.FAILED,
        EndReason.STEP_FAILED,
        "exit 3",
        1,
        3,
        long_output,
    )

    store.apply_step_report(report)

    step = store.get_steps(assigned)[0]
    assert step.output_tail.endswith("the last line")
    assert len(step.output_tail) == OUTPUT_TAIL_LIMIT
    assert (step.exit_code, step.reason) == (3, EndReason.STEP_FAILED)


def test_report_errors_name_the_kind(store: Store, assigned: str) -> None:
    with pytest.raises(NotFound):
        store.apply_pipeline_report(pipeline_report("nope", PipelineState.RUNNING, 1))
    with pytest.raises(WrongNode, match="assigned to node n1, not to node n2"):
        store.apply_pipeline_report(
            pipeline_report(assigned, PipelineState.RUNNING, 1, node="n2")
        )
    with pytest.raises(InvalidRequest, match="step_index 5 is out of range"):
        store.apply_step_report(step_report(assigned, 5, StepState.RUNNING, 1))


def test_report_on_an_unassigned_pipeline_is_refused(store: Store) -> None:
    pipeline_id = store.create_pipeline(new_pipeline())

    with pytest.raises(WrongNode, match="no node"):
        store.apply_pipeline_report(
            pipeline_report(pipeline_id, PipelineState.RUNNING, 1)
        )


def test_cancel_ends_a_pending_pipeline_at_once(store: Store) -> None:
    pipeline_id = store.create_pipeline(new_pipeline())

    outcome = store.cancel(pipeline_id)

    assert outcome.ended_now and outcome.state is PipelineState.CANCELED
    assert [s.state for s in store.get_steps(pipeline_id)] == [StepState.SKIPPED] * 2
    with pytest.raises(Conflict, match="already ended canceled"):
        store.cancel(pipeline_id)


def test_cancel_of_a_running_pipeline_is_owed_to_its_node(
    store: Store, assigned: str
) -> None:
    store.apply_pipeline_report(pipeline_report(assigned, PipelineState.RUNNING, 1))

    outcome = store.cancel(assigned)

    assert not outcome.ended_now and outcome.node_id == "n1"
    assert store.get_pipeline(assigned).state is PipelineState.RUNNING
    assert store.cancels_owed("n1") == [assigned]


def test_lost_node_fails_what_it_ran_and_requeues_what_it_never_took(
    store: Store,
) -> None:
    running = store.create_pipeline(new_pipeline())
    unacknowledged = store.create_pipeline(new_pipeline())
    for pipeline_id in (running, unacknowledged):
        store.assign(pipeline_id, "n1")
    store.apply_step_report(step_report(running, 0, StepState.RUNNING, 1))

    outcome = store.settle_lost_node("n1")

    assert (outcome.failed, outcome.requeued) == ([running], [unacknowledged])
    record = store.get_pipeline(running)
    assert (record.state, record.reason) == (PipelineState.FAILED, EndReason.NODE_LOST)
    assert [s.state for s in store.get_steps(running)] == [
        StepState.FAILED,
        StepState.SKIPPED,
    ]
    assert store.get_pipeline(unacknowledged).node_assigned is None


def test_refused_dispatch_fails_the_pipeline_as_rejected(
    store: Store, assigned: str
) -> None:
    assert store.acknowledge(assigned, "n1", accepted=False, message="policy")

    record = store.get_pipeline(assigned)
    assert (record.state, record.reason) == (PipelineState.FAILED, EndReason.REJECTED)
    assert "policy" in record.message


def test_nodes_are_offline_after_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "store.db")
    store.register_node(
        "n1", hostname="h", labels={}, capacity=1, agent_version="v", protocol_version=1
    )

    assert store.mark_all_nodes_offline() == ["n1"]
    assert not store.list_nodes()[0].online


def test_agent_start_fails_what_it_no_longer_knows_and_names_containers_to_remove(
    store: Store,
) -> None:
    """Issue 4: what a just-started agent does not list is settled once, and only its
    node's failed or canceled pipelines' unfinished steps lose their containers."""
    cut = store.create_pipeline(new_pipeline(steps=3))
    listed = store.create_pipeline(new_pipeline())
    untaken = store.create_pipeline(new_pipeline())
    foreign = store.create_pipeline(new_pipeline())
    for pid in (cut, listed, untaken):
        assert store.assign(pid, "n1")
    assert store.assign(foreign, "n2")
    store.apply_pipeline_report(pipeline_report(cut, PipelineState.RUNNING, 1))
    store.apply_step_report(step_report(cut, 0, StepState.COMPLETED, 2))
    store.apply_step_report(step_report(cut, 1, StepState.RUNNING, 3))
    store.apply_pipeline_report(pipeline_report(listed, PipelineState.RUNNING, 1))
    store.apply_pipeline_report(
        pipeline_report(foreign, PipelineState.FAILED, 1, node="n2")
    )
    found = [
        LeftContainer(cut, 0, "db"),
        LeftContainer(cut, 1, "slow"),
        LeftContainer(cut, 2, "game"),
        LeftContainer(listed, 0, "listed"),
        LeftContainer(foreign, 0, "foreign"),
        LeftContainer("never-seen", 0, "stranger"),
    ]

    outcome = asyncio.run(store.settle_restart("n1", [listed], found))

    assert outcome.failed == [(cut, 1)]
    assert [c.name for c in outcome.remove] == ["slow", "game"]
    assert outcome.unknown == ["never-seen"]
    record = store.get_pipeline(cut)
    assert (record.state, record.reason) == (
        PipelineState.FAILED,
        EndReason.AGENT_RESTARTED,
    )
    assert record.message.startswith("the agent restarted during step 1 ")
    assert [(s.state, s.reason) for s in store.get_steps(cut)] == [
        (StepState.COMPLETED, EndReason.NONE),
        (StepState.FAILED, EndReason.AGENT_RESTARTED),
        (StepState.SKIPPED, EndReason.AGENT_RESTARTED),
    ]
    assert store.get_pipeline(listed).state is PipelineState.RUNNING
    assert store.get_pipeline(untaken).state is PipelineState.PENDING

    again = asyncio.run(store.settle_restart("n1", [listed], found))
    assert again.failed == []
    assert [c.name for c in again.remove] == ["slow", "game"]
    assert store.get_pipeline(cut) == record
