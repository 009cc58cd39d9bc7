"""The event translator, replaying events recorded from real ansible-runner runs.

The recordings in ``recorded/`` come from ``record_events.py`` (real compiler, real
ansible-runner, real Docker engine); they pin the shapes the agent must understand (F7).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gamepipeline.agent.events import (
    EventTranslator,
    PipelineReport,
    Report,
    RunOutcome,
    StepReport,
    first_error_line,
    tail,
)
from gamepipeline.pipeline import step_index_of_task
from gamepipeline.proto import gamepipeline_pb2 as pb

RECORDED = Path(__file__).parent / "recorded"
OUTCOMES = {"successful": RunOutcome.SUCCESSFUL, "failed": RunOutcome.FAILED}


def recording(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RECORDED / f"{name}.json").read_text())
    return data


def tasks_per_step(events: list[dict[str, Any]], steps: int) -> list[int]:
    counts = [0] * steps
    for event in events:
        if event["event"] == "playbook_on_task_start":
            index = step_index_of_task(event["event_data"]["task"])
            if index is not None:
                counts[index] += 1
    return counts


def replay(
    name: str,
    steps: list[str],
    *,
    outcome: RunOutcome | None = None,
    counts: bool = True,
    detail: str = "",
) -> list[Report]:
    data = recording(name)
    translator = EventTranslator(
        steps,
        step_index_of_task,
        tasks_per_step(data["events"], len(steps)) if counts else None,
    )
    reports = translator.start()
    for event in data["events"]:
        reports += translator.feed(event)
    reports += translator.finish(outcome or OUTCOMES[data["status"]], detail=detail)
    return reports


def step_reports(reports: list[Report], index: int) -> list[StepReport]:
    return [r for r in reports if isinstance(r, StepReport) and r.step_index == index]


def pipeline_reports(reports: list[Report]) -> list[PipelineReport]:
    return [r for r in reports if isinstance(r, PipelineReport)]


def states(reports: list[StepReport]) -> list[int]:
    return [r.state for r in reports]


@pytest.mark.parametrize("counts", [True, False])
def test_successful_run_reports_each_step_running_then_completed(counts: bool) -> None:
    reports = replay("services_ok", ["db", "prepare", "game"], counts=counts)

    assert pipeline_reports(reports) == [
        PipelineReport(pb.PIPELINE_STATE_RUNNING),
        PipelineReport(pb.PIPELINE_STATE_COMPLETED),
    ]
    for index in range(3):
        assert states(step_reports(reports, index)) == [
            pb.STEP_STATE_RUNNING,
            pb.STEP_STATE_COMPLETED,
        ]
    # The pipeline's final state comes last, after every step ended.
    assert reports[-1] == PipelineReport(pb.PIPELINE_STATE_COMPLETED)


def test_step_completes_when_its_last_task_is_done_not_later() -> None:
    data = recording("services_ok")
    translator = EventTranslator(
        ["db", "prepare", "game"],
        step_index_of_task,
        tasks_per_step(data["events"], 3),
    )
    seen: list[tuple[str, Report]] = []
    for event in data["events"]:
        seen += [
            (event["event_data"].get("task", ""), r) for r in translator.feed(event)
        ]

    completed = [
        (task, r)
        for task, r in seen
        if isinstance(r, StepReport) and r.state == pb.STEP_STATE_COMPLETED
    ]
    assert [r.step_index for _, r in completed] == [0, 1, 2]
    # Step 2 (the last) is completed by its own last task, before playbook_on_stats.
    assert completed[-1][0].startswith("[step 2]")


def test_commands_step_exiting_3_fails_with_exit_code_and_output() -> None:
    reports = replay("commands_exit3", ["db", "migrate", "game"])

    assert states(step_reports(reports, 0)) == [
        pb.STEP_STATE_RUNNING,
        pb.STEP_STATE_COMPLETED,
    ]
    running, failed = step_reports(reports, 1)
    assert running.state == pb.STEP_STATE_RUNNING
    assert failed.state == pb.STEP_STATE_FAILED
    assert failed.reason == pb.END_REASON_STEP_FAILED
    assert failed.exit_code == 3
    assert failed.output_tail == "migrating\nhalf way"
    assert "exited with code 3" in failed.message


def test_steps_after_a_failed_one_are_skipped_and_pipeline_fails_once() -> None:
    reports = replay("commands_exit3", ["db", "migrate", "game"])

    (skipped,) = step_reports(reports, 2)
    assert skipped.state == pb.STEP_STATE_SKIPPED
    assert skipped.reason == pb.END_REASON_STEP_FAILED
    assert "step 1 failed" in skipped.message
    final = [r for r in pipeline_reports(reports) if r.final]
    assert len(final) == 1
    assert final[0].state == pb.PIPELINE_STATE_FAILED
    assert final[0].reason == pb.END_REASON_STEP_FAILED
    assert "step 1 (migrate) failed" in final[0].message


def test_step_timeout_is_a_timeout_failure_not_a_cancel() -> None:
    reports = replay("step_timeout", ["slow", "after"])

    failed = step_reports(reports, 0)[-1]
    assert failed.state == pb.STEP_STATE_FAILED
    assert failed.reason == pb.END_REASON_TIMEOUT
    assert "Timed out after 3 second" in failed.message
    assert step_reports(reports, 1)[0].reason == pb.END_REASON_TIMEOUT
    final = pipeline_reports(reports)[-1]
    assert (final.state, final.reason) == (
        pb.PIPELINE_STATE_FAILED,
        pb.END_REASON_TIMEOUT,
    )


def test_timed_out_step_is_named_for_cleanup() -> None:
    data = recording("step_timeout")
    translator = EventTranslator(["slow", "after"], step_index_of_task)
    for event in data["events"]:
        translator.feed(event)
    assert translator.timed_out_step == 0


@pytest.mark.parametrize(
    ("name", "steps", "failed"),
    [
        ("commands_exit3", ["db", "migrate", "game"], 1),
        ("step_timeout", ["slow", "after"], None),
    ],
)
def test_failed_step_is_named_for_cleanup_but_a_timed_out_one_is_not(
    name: str, steps: list[str], failed: int | None
) -> None:
    """The runner removes a failed step's stopped containers; a timed-out step's
    are stopped and removed by the timeout's own clean-up instead."""
    translator = EventTranslator(steps, step_index_of_task)
    for event in recording(name)["events"]:
        translator.feed(event)
    assert translator.failed_step == failed


def test_missing_image_fails_with_the_modules_message() -> None:
    reports = replay("missing_image", ["pull"])

    failed = step_reports(reports, 0)[-1]
    assert failed.state == pb.STEP_STATE_FAILED
    assert failed.exit_code is None
    assert "nosuch/image:1" in failed.message


def test_unreachable_host_fails_the_step() -> None:
    reports = replay("unreachable", ["far"])

    failed = step_reports(reports, 0)[-1]
    assert failed.state == pb.STEP_STATE_FAILED
    assert failed.reason == pb.END_REASON_STEP_FAILED
    assert "Failed to connect" in failed.message
    assert pipeline_reports(reports)[-1].state == pb.PIPELINE_STATE_FAILED


def test_run_failing_before_its_first_task_fails_with_first_error_line() -> None:
    reports = replay("syntax_error", ["x", "y"], counts=False)

    final = pipeline_reports(reports)[-1]
    assert final.state == pb.PIPELINE_STATE_FAILED
    assert final.message.startswith("couldn't resolve module/action")
    assert [r.state for r in reports if isinstance(r, StepReport)] == [
        pb.STEP_STATE_SKIPPED,
        pb.STEP_STATE_SKIPPED,
    ]


def test_cancel_during_a_step_fails_it_as_canceled_and_skips_the_rest() -> None:
    data = recording("commands_exit3")
    translator = EventTranslator(["db", "migrate", "game"], step_index_of_task)
    reports = translator.start()
    # Cut the run off as step 1 starts its container.
    for event in data["events"]:
        reports += translator.feed(event)
        if event["event"] == "runner_on_start" and event["event_data"]["task"] == (
            "[step 1] migrate"
        ):
            break
    assert translator.unfinished_step() == 1
    reports += translator.finish(RunOutcome.CANCELED, detail="asked by the operator")

    assert step_reports(reports, 1)[-1] == StepReport(
        1, pb.STEP_STATE_FAILED, pb.END_REASON_CANCELED, "asked by the operator"
    )
    assert step_reports(reports, 2)[-1].state == pb.STEP_STATE_SKIPPED
    assert step_reports(reports, 2)[-1].reason == pb.END_REASON_CANCELED
    assert pipeline_reports(reports)[-1] == PipelineReport(
        pb.PIPELINE_STATE_CANCELED, pb.END_REASON_CANCELED, "asked by the operator"
    )


def test_pipeline_timeout_is_a_failure_with_reason_timeout() -> None:
    reports = replay(
        "services_ok", ["db", "prepare", "game"], outcome=RunOutcome.TIMEOUT
    )
    final = pipeline_reports(reports)[-1]
    assert (final.state, final.reason) == (
        pb.PIPELINE_STATE_FAILED,
        pb.END_REASON_TIMEOUT,
    )


def test_agent_stop_fails_the_run_naming_the_step() -> None:
    translator = EventTranslator(["a", "b"], step_index_of_task)
    reports = translator.start()
    reports += translator.feed(
        {"event": "runner_on_start", "event_data": {"task": "[step 1] b"}}
    )
    reports += translator.finish(RunOutcome.INTERRUPTED)
    final = pipeline_reports(reports)[-1]
    assert final.reason == pb.END_REASON_AGENT_RESTARTED
    assert final.message == "the agent stopped during step 1"
    assert step_reports(reports, 0)[-1].state == pb.STEP_STATE_SKIPPED


def test_cancel_after_a_step_failed_keeps_the_failure() -> None:
    reports = replay(
        "commands_exit3", ["db", "migrate", "game"], outcome=RunOutcome.CANCELED
    )
    assert pipeline_reports(reports)[-1].state == pb.PIPELINE_STATE_FAILED


def test_final_state_is_reported_exactly_once() -> None:
    translator = EventTranslator(["a"], step_index_of_task)
    first = translator.finish(RunOutcome.SUCCESSFUL)
    assert translator.finish(RunOutcome.FAILED) == []
    assert translator.reject("late") == []
    assert (
        translator.feed(
            {"event": "runner_on_start", "event_data": {"task": "[step 0] a"}}
        )
        == []
    )
    assert sum(isinstance(r, PipelineReport) and r.final for r in first) == 1


def test_rejected_pipeline_skips_every_step() -> None:
    reports = EventTranslator(["a", "b"], step_index_of_task).reject("bad document")
    assert [r.state for r in reports if isinstance(r, StepReport)] == [
        pb.STEP_STATE_SKIPPED,
        pb.STEP_STATE_SKIPPED,
    ]
    assert reports[-1] == PipelineReport(
        pb.PIPELINE_STATE_FAILED, pb.END_REASON_REJECTED, "bad document"
    )


def test_a_step_that_breaks_the_node_policy_fails_and_the_others_are_skipped() -> None:
    translator = EventTranslator(["fetch", "game", "stream"], step_index_of_task)

    reports = translator.reject(
        "the pipeline was rejected: step 1 (game) breaks the node policy: …",
        {1: "steps[1].container.privileged: true is refused by policy.privileged"},
    )

    steps = [r for r in reports if isinstance(r, StepReport)]
    assert [(r.step_index, r.state, r.reason) for r in steps] == [
        (0, pb.STEP_STATE_SKIPPED, pb.END_REASON_REJECTED),
        (1, pb.STEP_STATE_FAILED, pb.END_REASON_REJECTED),
        (2, pb.STEP_STATE_SKIPPED, pb.END_REASON_REJECTED),
    ]
    assert steps[1].message == (
        "steps[1].container.privileged: true is refused by policy.privileged"
    )
    assert steps[2].message == "not run: step 1 (game) breaks the node policy"
    assert reports[-1].state == pb.PIPELINE_STATE_FAILED
    assert reports[-1].reason == pb.END_REASON_REJECTED


def test_a_policy_message_is_masked_like_any_other() -> None:
    translator = EventTranslator(["game"], step_index_of_task, secrets=["s3cr3t-key"])

    [step, pipeline] = translator.reject(
        "rejected: /data/s3cr3t-key", {0: 'volumes[0]: "/s3cr3t-key:/x" is outside'}
    )[-2:]

    assert isinstance(step, StepReport) and "s3cr3t-key" not in step.message
    assert "***" in step.message and "s3cr3t-key" not in pipeline.message


def test_ignored_failure_does_not_fail_the_step() -> None:
    translator = EventTranslator(["a"], step_index_of_task)
    translator.feed({"event": "runner_on_start", "event_data": {"task": "[step 0] a"}})
    ignored = {
        "event": "runner_on_failed",
        "event_data": {
            "task": "[step 0] a",
            "ignore_errors": True,
            "res": {"msg": "x"},
        },
    }
    assert translator.feed(ignored) == []
    assert translator.finish(RunOutcome.SUCCESSFUL)[-1].state == (
        pb.PIPELINE_STATE_COMPLETED
    )


def test_first_error_line_prefers_ansibles_error_marker() -> None:
    lines = ["", "\x1b[0;31m[ERROR]: the playbook is broken\x1b[0m", "more"]
    assert first_error_line(lines) == "the playbook is broken"
    assert first_error_line(["plain words", "[ERROR]: x"]) == "x"
    assert first_error_line(["", "only words"]) == "only words"
    assert first_error_line([]) is None


def test_output_tail_is_bounded_in_lines_and_characters() -> None:
    text = "\n".join(f"line {i}" for i in range(100)) + "\n"
    assert tail(text).splitlines() == [f"line {i}" for i in range(80, 100)]
    assert len(tail("x" * 10_000)) == 4096


def _spare_events() -> list[dict[str, Any]]:
    """The events of a spare's own tasks (``agent/spare.py``): the Mitogen warm-up,
    here failed and ignored (an engine not up yet), the wait, and the include of the
    pipeline's tasks, as ansible-runner reports them."""
    warm_up = "gamepipeline warms up community.docker.docker_container"
    events: list[dict[str, Any]] = []
    for task, action, end in (
        (warm_up, "community.docker.docker_container", "runner_on_failed"),
        ("gamepipeline waits for its pipeline", "gamepipeline_wait", "runner_on_ok"),
        (
            "gamepipeline runs its pipeline",
            "ansible.builtin.include_tasks",
            "runner_on_ok",
        ),
    ):
        data: dict[str, Any] = {"task": task, "task_action": action}
        if end == "runner_on_failed":
            data |= {"ignore_errors": True, "res": {"failed": True, "msg": "no engine"}}
        else:
            data["res"] = {"changed": False}
        for kind in ("playbook_on_task_start", "runner_on_start", end):
            events.append({"event": kind, "event_data": data})
    events.append(
        {
            "event": "playbook_on_include",
            "event_data": {"task": events[-1]["event_data"]["task"]},
        }
    )
    return events


def test_a_spares_own_wait_and_include_tasks_report_nothing() -> None:
    """A run in a spare sees the spare's wait and include before the pipeline's first
    task: they belong to no step and change no report."""
    data = recording("services_ok")
    events = data["events"]
    first_task = next(
        i for i, e in enumerate(events) if e["event"] == "playbook_on_task_start"
    )
    names = ["db", "prepare", "game"]
    counts = tasks_per_step(events, 3)

    def translate(stream: list[dict[str, Any]]) -> list[Report]:
        translator = EventTranslator(names, step_index_of_task, counts)
        reports = translator.start()
        for event in stream:
            reports += translator.feed(event)
        return reports + translator.finish(RunOutcome.SUCCESSFUL)

    in_spare = [*events[:first_task], *_spare_events(), *events[first_task:]]
    assert translate(in_spare) == translate(events)
    assert translate(_spare_events()) == translate([])
