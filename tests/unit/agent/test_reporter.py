"""Sequence numbering and the report journal, without a network."""

from __future__ import annotations

from pathlib import Path

from gamepipeline.agent.events import PipelineReport, StepReport
from gamepipeline.agent.reporter import Reporter, to_request
from gamepipeline.proto import gamepipeline_pb2 as pb


def test_sequence_grows_by_one_per_pipeline_across_both_rpcs(tmp_path: Path) -> None:
    reporter = Reporter("node-a", tmp_path)
    numbers = [
        reporter.submit("p1", PipelineReport(pb.PIPELINE_STATE_RUNNING)),
        reporter.submit("p1", StepReport(0, pb.STEP_STATE_RUNNING)),
        reporter.submit("p2", PipelineReport(pb.PIPELINE_STATE_RUNNING)),
        reporter.submit("p1", StepReport(0, pb.STEP_STATE_COMPLETED)),
        reporter.submit("p2", PipelineReport(pb.PIPELINE_STATE_COMPLETED)),
    ]
    assert numbers == [1, 2, 1, 3, 2]


def test_sequence_carries_on_after_a_restart(tmp_path: Path) -> None:
    Reporter("node-a", tmp_path).submit("p1", PipelineReport(pb.PIPELINE_STATE_RUNNING))
    again = Reporter("node-a", tmp_path)
    assert again.submit("p1", StepReport(0, pb.STEP_STATE_RUNNING)) == 2


def test_journal_keeps_reports_in_order_until_answered(tmp_path: Path) -> None:
    first = Reporter("node-a", tmp_path)
    for index in range(12):
        first.submit("p1", StepReport(index, pb.STEP_STATE_RUNNING))
    again = Reporter("node-a", tmp_path)
    assert again.pending() == 12
    steps = [entry.request.step_index for entry in again._queue]  # type: ignore[union-attr]
    assert steps == list(range(12))


def test_pipeline_ids_cannot_escape_the_journal(tmp_path: Path) -> None:
    reporter = Reporter("node-a", tmp_path / "journal")
    reporter.submit("../../etc/x", PipelineReport(pb.PIPELINE_STATE_RUNNING))
    assert not (tmp_path / "etc").exists()
    assert [p.name for p in (tmp_path / "journal" / "sequences").iterdir()] == [
        ".._.._etc_x"
    ]


def test_step_report_wire_form_carries_exit_code_only_when_known() -> None:
    failed = to_request(
        "n", "p", 7, StepReport(1, pb.STEP_STATE_FAILED, pb.END_REASON_STEP_FAILED,
                                "exited with code 3", 3, "boom")
    )  # fmt: skip
    assert isinstance(failed, pb.UpdateStepStatusRequest)
    assert (failed.step_index, failed.sequence, failed.exit_code) == (1, 7, 3)
    assert failed.output_tail == "boom"
    assert failed.timestamp_ms > 0
    running = to_request("n", "p", 8, StepReport(1, pb.STEP_STATE_RUNNING))
    assert isinstance(running, pb.UpdateStepStatusRequest)
    assert not running.HasField("exit_code")
