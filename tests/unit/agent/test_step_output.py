"""Step output in reports: kept for commands steps that succeed, secrets masked (#9).

The event shape is community.docker's ``docker_container`` with ``detach: false``: its
result's ``container`` carries the container's output under ``Output`` whether the
container exited 0 or not (and is only ``{"Output": ...}`` once ``cleanup`` removed it).
The end-to-end proof on a real engine is in ``tests/integration/test_cli.py``.
"""

from __future__ import annotations

from typing import Any

from gamepipeline.agent.events import (
    OUTPUT_TAIL_LINES,
    EventTranslator,
    Report,
    RunOutcome,
    StepReport,
    mask_secrets,
    secret_values,
)
from gamepipeline.pipeline import step_index_of_task
from gamepipeline.proto import gamepipeline_pb2 as pb

ACTION = "community.docker.docker_container"


def event(kind: str, task: str, res: dict[str, Any] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"task": task, "task_action": ACTION}
    if res is not None:
        data["res"] = res
    return {"event": kind, "event_data": data}


def run(output: str, *, secrets: tuple[str, ...] = (), status: int = 0) -> list[Report]:
    translator = EventTranslator(["prepare"], step_index_of_task, [1], secrets=secrets)
    reports = translator.start()
    reports += translator.feed(event("playbook_on_task_start", "[step 0] prepare"))
    res = {"changed": True, "status": status, "container": {"Output": output}}
    if status:
        res |= {"failed": True, "msg": output}
        reports += translator.feed(event("runner_on_failed", "[step 0] prepare", res))
        outcome = RunOutcome.FAILED
    else:
        reports += translator.feed(event("runner_on_ok", "[step 0] prepare", res))
        outcome = RunOutcome.SUCCESSFUL
    return reports + translator.finish(outcome)


def ended(reports: list[Report]) -> StepReport:
    (last,) = [
        r
        for r in reports
        if isinstance(r, StepReport) and r.state != pb.STEP_STATE_RUNNING
    ]
    return last


def test_a_commands_step_that_succeeds_reports_its_output_tail() -> None:
    report = ended(run("made /data/wind/volumes\nready\n"))

    assert report.state == pb.STEP_STATE_COMPLETED
    assert report.output_tail == "made /data/wind/volumes\nready"


def test_the_success_output_is_bounded_like_a_failures() -> None:
    lines = "\n".join(f"line {i}" for i in range(500))

    report = ended(run(lines))

    assert report.output_tail.splitlines() == [
        f"line {i}" for i in range(500 - OUTPUT_TAIL_LINES, 500)
    ]


def test_env_values_are_masked_in_output_and_messages() -> None:
    secret = "pa$$ {{ 7 * 7 }} word"

    reports = run(
        f"login with {secret}\nbad password {secret}", secrets=(secret,), status=1
    )

    report = ended(reports)
    assert report.output_tail == "login with ***\nbad password ***"
    assert "***" in report.message and secret not in report.message
    assert all(secret not in r.message for r in reports)


def test_a_secret_holding_another_is_masked_whole() -> None:
    secrets = secret_values(["abcd", "xxabcdyy"])

    assert mask_secrets("xxabcdyy and abcd", secrets) == "*** and ***"


def test_short_values_such_as_ports_are_not_masked() -> None:
    report = ended(run("listening on 3478/udp", secrets=("3478"[:3], "udp")))

    assert report.output_tail == "listening on 3478/udp"
