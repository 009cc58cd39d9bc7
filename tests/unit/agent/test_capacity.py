"""A node's slot is free by the time the server can hear that its run ended.

The server hands over the next pipeline as soon as it applies a final report; an agent
that still counted the ended run would refuse it "at capacity" (found by the F9 test
of many runs in a row, tests/integration/test_reliability_many_runs.py).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from gamepipeline.agent.app import Agent
from gamepipeline.agent.config import AgentConfig
from gamepipeline.agent.events import PipelineReport, Report
from gamepipeline.agent.reporter import Reporter
from gamepipeline.proto import gamepipeline_pb2 as pb


class WatchingReporter(Reporter):
    """The real reporter (journal on disk), noting at each final report it is given
    whether the agent would refuse another pipeline for want of a slot."""

    def __init__(self, journal: Path) -> None:
        super().__init__("node-a", journal)
        self.agent: Agent | None = None
        self.refusals_at_final: list[str] = []
        self.ended = threading.Event()

    def submit(self, pipeline_id: str, report: Report) -> int:
        if isinstance(report, PipelineReport) and report.final:
            assert self.agent is not None
            self.refusals_at_final.append(self.agent._refusal())
            self.ended.set()
        return super().submit(pipeline_id, report)


def test_ended_run_no_longer_counts_when_its_final_report_is_journaled(
    tmp_path: Path,
) -> None:
    config = AgentConfig(
        server_address="127.0.0.1:1", node_id="node-a", capacity=1, work_dir=tmp_path
    )
    reporter = WatchingReporter(config.journal_dir)
    agent = Agent(config, reporter)
    reporter.agent = agent
    # A document the node cannot compile: the run ends at once, rejected.
    pipeline = pb.GamePipeline(
        id="p1",
        name="broken",
        document_json=json.dumps({"name": "broken", "steps": []}),
        steps=[pb.PipelineStep(index=0, name="s", type="container")],
    )

    assert agent.handle_pipeline(pipeline).accepted
    assert reporter.ended.wait(10)

    assert reporter.refusals_at_final == [""]
    second = pipeline.__class__()
    second.CopyFrom(pipeline)
    second.id = "p2"
    assert agent.handle_pipeline(second).accepted  # not "at capacity"


def test_pipeline_handed_over_again_after_it_ran_here_is_not_run_twice(
    tmp_path: Path,
) -> None:
    config = AgentConfig(
        server_address="127.0.0.1:1", node_id="node-a", capacity=2, work_dir=tmp_path
    )
    reporter = WatchingReporter(config.journal_dir)
    agent = Agent(config, reporter)
    reporter.agent = agent
    pipeline = pb.GamePipeline(
        id="p1",
        name="broken",
        document_json=json.dumps({"name": "broken", "steps": []}),
        steps=[pb.PipelineStep(index=0, name="s", type="container")],
    )
    assert agent.handle_pipeline(pipeline).accepted
    assert reporter.ended.wait(10)
    reporter.ended.clear()

    again = agent.handle_pipeline(pipeline)  # the server had not heard of its end

    assert again.accepted and "already ran" in again.message
    # Listed until the server has its end: the server waits for those reports.
    assert agent.running_ids() == ["p1"]
    assert not reporter.ended.wait(0.5)  # no second run, no second final report
    # A new agent on the same work dir knows it from the journal alone.
    fresh = Agent(config, Reporter("node-a", config.journal_dir))
    assert "already ran" in fresh.handle_pipeline(pipeline).message
