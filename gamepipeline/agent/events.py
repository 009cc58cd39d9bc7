"""Turns ansible-runner events into step and pipeline reports.

This module does no I/O: the runner feeds it the event dicts that ansible-runner hands to
its ``event_handler`` (``runner_on_start``, ``runner_on_ok``, ``runner_on_failed``,
``runner_on_unreachable``, ``playbook_on_stats``, ``verbose``…) and, once the run is
over, how the run ended. It answers with the reports to send, in order.

Rules it keeps:

- a step is running from the start of its first task; it is completed when its tasks are
  done (a later step's task starts, or the play ends well);
- a failed or unreachable task fails its step with the module's own message; for a step
  whose container ran to its end, the exit code (the module's ``status``) and the last
  lines of its output travel with it. A step whose container ran to its end and exited 0
  sends the last lines of its output with its ``completed`` report;
- the values of the pipeline's envs (secrets, some of them) never leave in a report: each
  is replaced by ``***`` in messages and output tails;
- a task that ran out of its ``timeout`` fails with the reason TIMEOUT, never CANCELED;
- steps after a failed, timed-out or canceled one are skipped;
- a pipeline the node refuses before anything runs fails with the reason REJECTED; a
  step that breaks the node policy fails with what it breaks, the others are skipped;
- the pipeline ends in exactly one of completed, failed or canceled, and a run that fails
  before its first task still fails the pipeline with the first error line it printed.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from gamepipeline.proto import gamepipeline_pb2 as pb
from gamepipeline.terminal import strip_ansi

log = logging.getLogger(__name__)

OUTPUT_TAIL_LINES = 20
"""How many of a failed container's last output lines go into a report."""

OUTPUT_TAIL_CHARS = 4096
"""Upper bound on a report's output tail, so a chatty container cannot bloat a report."""

MESSAGE_CHARS = 2048
"""Upper bound on a report's message."""

MIN_SECRET_CHARS: Final = 4
"""Env values shorter than this are not masked: a port or a flag such as ``udp`` would
otherwise turn every number and word like it in an output into ``***``."""

MASK: Final = "***"

_ERROR_LINE = re.compile(r"^(\[ERROR\]:|ERROR!|fatal:)\s*")


class RunOutcome(enum.Enum):
    """How the ansible-runner process ended, as the runner saw it."""

    SUCCESSFUL = "successful"
    FAILED = "failed"
    CANCELED = "canceled"
    TIMEOUT = "timeout"
    #: The agent stopped (or restarted) and ended the run itself.
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class StepReport:
    step_index: int
    state: pb.StepState.ValueType
    reason: pb.EndReason.ValueType = pb.END_REASON_UNSPECIFIED
    message: str = ""
    exit_code: int | None = None
    output_tail: str = ""


@dataclass(frozen=True)
class PipelineReport:
    state: pb.PipelineState.ValueType
    reason: pb.EndReason.ValueType = pb.END_REASON_UNSPECIFIED
    message: str = ""

    @property
    def final(self) -> bool:
        return self.state in _FINAL_PIPELINE_STATES


Report = StepReport | PipelineReport

_FINAL_PIPELINE_STATES = frozenset(
    {
        pb.PIPELINE_STATE_COMPLETED,
        pb.PIPELINE_STATE_FAILED,
        pb.PIPELINE_STATE_CANCELED,
    }
)
_FINAL_STEP_STATES = frozenset(
    {pb.STEP_STATE_COMPLETED, pb.STEP_STATE_FAILED, pb.STEP_STATE_SKIPPED}
)


@dataclass(frozen=True)
class _Failure:
    step_index: int | None
    reason: pb.EndReason.ValueType
    message: str


def tail(
    text: str, lines: int = OUTPUT_TAIL_LINES, chars: int = OUTPUT_TAIL_CHARS
) -> str:
    """The last ``lines`` lines of ``text``, at most ``chars`` characters long."""
    kept = "\n".join(text.rstrip("\n").splitlines()[-lines:])
    return kept[-chars:]


def mask_secrets(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every one of ``secrets`` replaced by ``***``.

    ``secrets`` must be longest first, so that a secret holding another one is masked
    whole; ``secret_values`` prepares them so.
    """
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def secret_values(values: Iterable[str]) -> list[str]:
    """The values worth masking, longest first."""
    kept = {value for value in values if len(value) >= MIN_SECRET_CHARS}
    return sorted(kept, key=lambda value: (-len(value), value))


def first_error_line(lines: Iterable[str]) -> str | None:
    """The first line Ansible marked as an error, else the first non-blank line."""
    first_text: str | None = None
    for raw in lines:
        line = strip_ansi(raw).strip()
        if not line:
            continue
        if _ERROR_LINE.match(line):
            return _ERROR_LINE.sub("", line, count=1) or line
        if first_text is None:
            first_text = line
    return first_text


def _clip(message: str) -> str:
    return (
        message if len(message) <= MESSAGE_CHARS else message[: MESSAGE_CHARS - 1] + "…"
    )


class EventTranslator:
    """Follows one run's events and says which reports they call for.

    Args:
        step_names: the pipeline's steps, in order (their names go into messages).
        step_of_task: maps a compiled task's name to its step index, or None for a task
            that belongs to no step.
        tasks_per_step: how many tasks each step has in the compiled play, when known;
            a step is then completed as soon as its last task is done instead of when
            the next step starts.
        secrets: the pipeline's env values, masked in every report's text.
        container_output: the output so far of a step's container(s), for a step that
            is stopped before its container ends (canceled, timed out): its events
            carry no output then. Read while the container is still there.
    """

    def __init__(
        self,
        step_names: Sequence[str],
        step_of_task: Callable[[str], int | None],
        tasks_per_step: Sequence[int] | None = None,
        secrets: Iterable[str] = (),
        container_output: Callable[[int], str] | None = None,
    ) -> None:
        self._secrets = secret_values(secrets)
        self._container_output = container_output
        self._step_output: dict[int, str] = {}
        self._names = list(step_names)
        self._step_of_task = step_of_task
        self._tasks_per_step = list(tasks_per_step) if tasks_per_step else None
        self._states: list[pb.StepState.ValueType] = [pb.STEP_STATE_PENDING] * len(
            self._names
        )
        self._tasks_done = [0] * len(self._names)
        self._current: int | None = None
        self._failure: _Failure | None = None
        self._output: list[str] = []
        self._started = False
        self._finished = False

    @property
    def current_step(self) -> int | None:
        """The step running now, if any."""
        return self._current

    @property
    def failure_reason(self) -> pb.EndReason.ValueType | None:
        return self._failure.reason if self._failure else None

    @property
    def timed_out_step(self) -> int | None:
        """The step whose own timeout ran out, if one did."""
        failure = self._failure
        if failure is not None and failure.reason == pb.END_REASON_TIMEOUT:
            return failure.step_index
        return None

    @property
    def failed_step(self) -> int | None:
        """The step that failed (not timed out or canceled), if one did."""
        failure = self._failure
        if failure is not None and failure.reason == pb.END_REASON_STEP_FAILED:
            return failure.step_index
        return None

    def unfinished_step(self) -> int | None:
        """The step that started but has not ended: the one whose container a cancel
        or a timeout must clean up."""
        if self._current is None:
            return None
        return (
            self._current
            if self._states[self._current] not in _FINAL_STEP_STATES
            else None
        )

    def capture_output(self, step: int) -> None:
        """Keep the output ``step``'s container printed so far, for the report that
        ends the step; called before a cancel or a timeout removes the container."""
        if step in self._step_output or self._container_output is None:
            return
        try:
            text = self._container_output(step)
        except Exception:
            log.warning("could not read the output of step %d", step, exc_info=True)
            return
        if text.strip():
            self._step_output[step] = tail(strip_ansi(text))

    def start(self) -> list[Report]:
        """The reports for a run that is about to start."""
        if self._started:
            return []
        self._started = True
        return [PipelineReport(pb.PIPELINE_STATE_RUNNING)]

    def feed(self, event: Mapping[str, Any]) -> list[Report]:
        """Reports called for by one ansible-runner event."""
        return self._masked(self._feed(event))

    def _feed(self, event: Mapping[str, Any]) -> list[Report]:
        if self._finished:
            return []
        stdout = event.get("stdout")
        if isinstance(stdout, str) and stdout:
            self._output.extend(stdout.splitlines())
            del self._output[: -OUTPUT_TAIL_LINES * 10]

        kind = event.get("event", "")
        data = event.get("event_data") or {}
        step = self._step_of(data)
        if kind in ("playbook_on_task_start", "runner_on_start"):
            return self._on_task_start(step)
        if kind == "runner_on_ok":
            self._keep_output(step, data)
            return self._on_task_done(step)
        if kind == "runner_on_skipped":
            return self._on_task_done(step)
        if kind == "runner_on_failed":
            if data.get("ignore_errors"):
                return self._on_task_done(step)
            return self._on_task_failed(step, data, unreachable=False)
        if kind == "runner_on_unreachable":
            return self._on_task_failed(step, data, unreachable=True)
        return []

    def finish(
        self, outcome: RunOutcome, *, detail: str = "", output: Sequence[str] = ()
    ) -> list[Report]:
        """The closing reports once the run is over; the pipeline's final state is
        always the last of them, and it comes exactly once.

        Args:
            outcome: how ansible-runner said the run ended.
            detail: why it was canceled or timed out, for the messages.
            output: the runner's stdout lines, for a run that failed without saying
                why in its events.
        """
        return self._masked(self._finish(outcome, detail=detail, output=output))

    def _finish(
        self, outcome: RunOutcome, *, detail: str, output: Sequence[str]
    ) -> list[Report]:
        if self._finished:
            return []
        self._finished = True
        reports: list[Report] = list(self.start())

        if outcome is RunOutcome.CANCELED and self._failure is None:
            why = detail or "the pipeline was canceled"
            reports += self._end_current(
                pb.STEP_STATE_FAILED, pb.END_REASON_CANCELED, why
            )
            reports += self._skip_rest(pb.END_REASON_CANCELED, why)
            reports.append(
                PipelineReport(pb.PIPELINE_STATE_CANCELED, pb.END_REASON_CANCELED, why)
            )
            return reports

        if outcome is RunOutcome.TIMEOUT and self._failure is None:
            why = detail or "the pipeline ran out of time"
            self._failure = _Failure(self._current, pb.END_REASON_TIMEOUT, why)
            reports += self._end_current(
                pb.STEP_STATE_FAILED, pb.END_REASON_TIMEOUT, why
            )

        if outcome is RunOutcome.INTERRUPTED and self._failure is None:
            where = f"during step {self._current}" if self._current is not None else ""
            why = " ".join(filter(None, [detail or "the agent stopped", where]))
            self._failure = _Failure(self._current, pb.END_REASON_AGENT_RESTARTED, why)
            reports += self._end_current(
                pb.STEP_STATE_FAILED, pb.END_REASON_AGENT_RESTARTED, why
            )

        if self._failure is None and outcome is not RunOutcome.SUCCESSFUL:
            reports += self._fail_without_event(output)

        if self._failure is not None:
            reports += self._skip_rest(self._failure.reason, self._skipped_because())
            reports.append(
                PipelineReport(
                    pb.PIPELINE_STATE_FAILED,
                    self._failure.reason,
                    self._failure.message,
                )
            )
            return reports

        reports += self._end_current(pb.STEP_STATE_COMPLETED)
        reports += self._skip_rest(
            pb.END_REASON_UNSPECIFIED, "the step's tasks did not run"
        )
        reports.append(PipelineReport(pb.PIPELINE_STATE_COMPLETED))
        return reports

    def reject(
        self, message: str, broken: Mapping[int, str] | None = None
    ) -> list[Report]:
        """The closing reports for a pipeline that could not be prepared on the node:
        nothing ran and the pipeline fails with the reason REJECTED.

        Args:
            message: the pipeline's message, why it was refused.
            broken: the steps that break the node policy, each with what it breaks.
                Each of them fails with its own message; every other step is skipped,
                naming the first of them. Without it (a document the pipeline language
                refuses, an env missing on the node) every step is skipped.
        """
        return self._masked(self._reject(message, dict(broken or {})))

    def _reject(self, message: str, broken: dict[int, str]) -> list[Report]:
        if self._finished:
            return []
        self._finished = True
        broken = {i: why for i, why in broken.items() if 0 <= i < len(self._names)}
        first = min(broken, default=None)
        self._failure = _Failure(first, pb.END_REASON_REJECTED, _clip(message))
        skipped = "the pipeline was rejected on the node"
        if first is not None:
            skipped = (
                f"not run: step {first} ({self._names[first]}) breaks the node policy"
            )
        reports: list[Report] = list(self.start())
        for index in range(len(self._names)):
            if index in broken:
                state, why = pb.STEP_STATE_FAILED, _clip(broken[index])
            else:
                state, why = pb.STEP_STATE_SKIPPED, skipped
            reports.append(self._set(index, state, pb.END_REASON_REJECTED, why))
        reports.append(
            PipelineReport(
                pb.PIPELINE_STATE_FAILED, pb.END_REASON_REJECTED, _clip(message)
            )
        )
        return reports

    def _masked(self, reports: list[Report]) -> list[Report]:
        if not self._secrets:
            return reports
        masked: list[Report] = []
        for report in reports:
            message = mask_secrets(report.message, self._secrets)
            if isinstance(report, StepReport):
                output = mask_secrets(report.output_tail, self._secrets)
                masked.append(
                    dataclasses.replace(report, message=message, output_tail=output)
                )
            else:
                masked.append(dataclasses.replace(report, message=message))
        return masked

    # -- event handling ----------------------------------------------------------------

    def _keep_output(self, step: int | None, data: Mapping[str, Any]) -> None:
        """Keep the output of a container that ran to its end, for its step's report."""
        if step is None or not str(data.get("task_action") or "").endswith(
            "docker_container"
        ):
            return
        container = (data.get("res") or {}).get("container")
        output = container.get("Output") if isinstance(container, Mapping) else None
        if isinstance(output, str) and output.strip():
            self._step_output[step] = tail(strip_ansi(output))

    def _step_of(self, data: Mapping[str, Any]) -> int | None:
        task = data.get("task")
        if not isinstance(task, str):
            return None
        step = self._step_of_task(task)
        if step is None or not 0 <= step < len(self._names):
            return None
        return step

    def _on_task_start(self, step: int | None) -> list[Report]:
        if step is None or self._failure is not None:
            return []
        if self._states[step] != pb.STEP_STATE_PENDING:
            return []
        reports = []
        if self._current is not None and self._current != step:
            reports += self._end_current(pb.STEP_STATE_COMPLETED)
        # A step between the last one and this one whose tasks never started.
        for index in range(step):
            if self._states[index] == pb.STEP_STATE_PENDING:
                reports.append(
                    self._set(
                        index,
                        pb.STEP_STATE_SKIPPED,
                        message="the step's tasks did not run",
                    )
                )
        self._current = step
        reports.append(self._set(step, pb.STEP_STATE_RUNNING))
        return reports

    def _on_task_done(self, step: int | None) -> list[Report]:
        if step is None or self._states[step] != pb.STEP_STATE_RUNNING:
            return []
        self._tasks_done[step] += 1
        if (
            self._tasks_per_step
            and self._tasks_done[step] >= self._tasks_per_step[step]
        ):
            return self._end_current(pb.STEP_STATE_COMPLETED)
        return []

    def _on_task_failed(
        self, step: int | None, data: Mapping[str, Any], *, unreachable: bool
    ) -> list[Report]:
        res = data.get("res") or {}
        action = str(data.get("task_action") or "")
        if self._failure is not None:
            return []
        if step is None:
            step = self._current
        reason: pb.EndReason.ValueType = (
            pb.END_REASON_TIMEOUT if res.get("timedout") else pb.END_REASON_STEP_FAILED
        )
        message, exit_code, output = _describe_failure(
            res, action=action, unreachable=unreachable
        )
        where = f"step {step} ({self._names[step]})" if step is not None else "the play"
        self._failure = _Failure(step, reason, _clip(f"{where} failed: {message}"))
        if step is None:
            return []
        if self._states[step] == pb.STEP_STATE_PENDING:
            self._current = step
        if not output.strip() and reason == pb.END_REASON_TIMEOUT:
            # The step's own timeout killed its module; its container still runs.
            self.capture_output(step)
            output = self._step_output.get(step, "")
        return [
            self._set(
                step,
                pb.STEP_STATE_FAILED,
                reason,
                _clip(message),
                exit_code=exit_code,
                output_tail=output,
            )
        ]

    def _fail_without_event(self, output: Sequence[str]) -> list[Report]:
        """A failed run whose events named no failed task: a playbook that did not
        parse, a crash of ansible-playbook itself."""
        line = first_error_line(output) or first_error_line(self._output)
        message = line or "ansible-playbook failed before it reported any task"
        step = self._current
        if step is None:
            self._failure = _Failure(None, pb.END_REASON_REJECTED, _clip(message))
            return []
        where = f"step {step} ({self._names[step]})"
        self._failure = _Failure(
            step, pb.END_REASON_STEP_FAILED, _clip(f"{where} failed: {message}")
        )
        return self._end_current(
            pb.STEP_STATE_FAILED, pb.END_REASON_STEP_FAILED, message
        )

    # -- state changes -----------------------------------------------------------------

    def _set(
        self,
        step: int,
        state: pb.StepState.ValueType,
        reason: pb.EndReason.ValueType = pb.END_REASON_UNSPECIFIED,
        message: str = "",
        *,
        exit_code: int | None = None,
        output_tail: str = "",
    ) -> StepReport:
        self._states[step] = state
        return StepReport(step, state, reason, message, exit_code, output_tail)

    def _end_current(
        self,
        state: pb.StepState.ValueType,
        reason: pb.EndReason.ValueType = pb.END_REASON_UNSPECIFIED,
        message: str = "",
    ) -> list[Report]:
        step = self._current
        if step is None or self._states[step] != pb.STEP_STATE_RUNNING:
            return []
        output = self._step_output.get(step, "")
        return [self._set(step, state, reason, message, output_tail=output)]

    def _skip_rest(self, reason: pb.EndReason.ValueType, message: str) -> list[Report]:
        return [
            self._set(index, pb.STEP_STATE_SKIPPED, reason, message)
            for index, state in enumerate(self._states)
            if state in (pb.STEP_STATE_PENDING, pb.STEP_STATE_RUNNING)
        ]

    def _skipped_because(self) -> str:
        failure = self._failure
        assert failure is not None
        if failure.step_index is None:
            return "the run failed before this step"
        if failure.reason == pb.END_REASON_TIMEOUT:
            return f"step {failure.step_index} timed out"
        if failure.reason == pb.END_REASON_AGENT_RESTARTED:
            return f"the agent stopped during step {failure.step_index}"
        return f"step {failure.step_index} failed"


def _describe_failure(
    res: Mapping[str, Any], *, action: str, unreachable: bool
) -> tuple[str, int | None, str]:
    """The message, exit code and output tail of a failed task's result."""
    msg = res.get("msg")
    text = msg if isinstance(msg, str) else ""
    status = res.get("status")
    if (
        action.endswith("docker_container")
        and isinstance(status, int)
        and not isinstance(status, bool)
    ):
        # docker_container with detach=false: ``status`` is the exit code and ``msg``
        # is the container's output.
        last = text.strip().splitlines()[-1:] if text.strip() else []
        message = f"exited with code {status}"
        if last:
            message += f": {last[0]}"
        return message, status, tail(text)
    if not text:
        for key in ("module_stderr", "stderr", "module_stdout", "stdout"):
            value = res.get(key)
            if isinstance(value, str) and value.strip():
                text = value.strip().splitlines()[-1]
                break
    if not text:
        text = "the host was unreachable" if unreachable else "the task failed"
    return strip_ansi(text).strip(), None, ""
