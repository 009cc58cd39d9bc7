"""Runs one pipeline on this node with ansible-runner.

Each run has a private data dir of its own under the agent's work dir (mode 0700): the
playbook, the inventory, ansible's temp dirs and the artifacts live there and nowhere
else, and the dir is removed once the run's events are consumed and ansible-playbook has
exited (for a run whose play ended well, a moment after its end is reported; any other
run's end is reported after its cleanup). That dir is a spare's
(``spare``): an ansible-playbook started ahead of the run, usually before the pipeline
arrived, which waits for the run's tasks and then includes them. The tasks come
from the pipeline language (``load_template`` → ``bind`` → ``compile_playbook`` →
``render_tasks``); every value in them is marked unsafe, so nothing a user wrote is
evaluated as a template, and no value travels as an extra var.

ansible-runner's ``event_handler`` only puts the event on a queue and returns True; the
run's own thread takes events off the queue and turns them into reports
(``events.EventTranslator``). A cancel or the pipeline's timeout makes ansible-runner kill
the playbook's process group; the container of a step that had not finished is then
stopped and removed, since killing Ansible does not stop a container it started. A
step that fails may leave its container created but not started (a device or port it
could not get) or exited: it is removed if it carries this pipeline's label and is not
running.

Every run's environment carries the node's id and the agent's identity
(``orphans.run_markers``, given to the spare ansible-playbook it runs in before its
pipeline is known), so that an agent started after this one died can find and kill a
playbook left running.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gamepipeline import pipeline as language
from gamepipeline.agent.events import (
    OUTPUT_TAIL_LINES,
    EventTranslator,
    PipelineReport,
    Report,
    RunOutcome,
    StepReport,
    mask_secrets,
    secret_values,
)
from gamepipeline.agent.markers import ActiveRuns
from gamepipeline.agent.policy import NodePolicy, PolicyViolation
from gamepipeline.agent.spare import DONE, Spare, SparePool
from gamepipeline.logs import bound, ids
from gamepipeline.proto import gamepipeline_pb2 as pb

log = logging.getLogger(__name__)

PIPELINE_LABEL = language.LABEL_PIPELINE
"""Label the compiler puts on every container of a pipeline, with the pipeline's id."""

STEP_LABEL = language.LABEL_STEP
"""Label the compiler puts on every container of a pipeline, with its step's index."""

CONTAINER_STOP_SECONDS = 3
"""Grace a canceled step's container gets between SIGTERM and SIGKILL."""

_EVENT_POLL_SECONDS = 0.2
"""Bounds how late a pipeline's own timeout is noticed while no event comes."""

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")

_STOPPED = (RunOutcome.CANCELED, RunOutcome.TIMEOUT, RunOutcome.INTERRUPTED)

Emit = Callable[[str, Report], None]


class ContainerJanitor:
    """Stops and removes the containers of a step that will not finish.

    Only containers carrying the pipeline's label are touched, so a container of the
    same name that some other run or person owns is left alone.
    """

    def __init__(self, client_factory: Callable[[], Any] | None = None) -> None:
        self._client_factory = client_factory or _docker_client
        self._client: Any = None
        self._lock = threading.Lock()

    def remove(self, pipeline_id: str, names: list[str]) -> list[str]:
        """Stop and remove the named containers of ``pipeline_id``; returns the names
        of the ones it removed."""
        import docker.errors

        removed = []
        for container in self._list(pipeline_id):
            if container.name not in names:
                continue
            try:
                container.stop(timeout=CONTAINER_STOP_SECONDS)
                container.remove(force=True)
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as err:
                if "removal of container" in str(err) and "in progress" in str(err):
                    continue
                raise
            removed.append(container.name)
        return removed

    def output(self, pipeline_id: str, names: list[str]) -> str:
        """The last lines the named containers of ``pipeline_id`` printed (stdout and
        stderr), read before a cancel or a timeout removes them."""
        import docker.errors

        parts = []
        for container in self._list(pipeline_id):
            if container.name not in names:
                continue
            try:
                raw = container.logs(stdout=True, stderr=True, tail=OUTPUT_TAIL_LINES)
            except docker.errors.NotFound:
                continue
            parts.append(raw.decode("utf-8", errors="replace"))
        return "".join(parts)

    def inventory(self) -> list[pb.FoundContainer]:
        """Every container on the engine that carries the pipeline label, whoever's
        pipeline it belongs to, from one listing."""
        found = []
        for summary in self._engine().api.containers(
            all=True, filters={"label": PIPELINE_LABEL}
        ):
            labels = summary.get("Labels") or {}
            step = str(labels.get(STEP_LABEL, ""))
            names = summary.get("Names") or [""]
            found.append(
                pb.FoundContainer(
                    pipeline_id=str(labels.get(PIPELINE_LABEL, "")),
                    step_index=int(step) if step.isdigit() else -1,
                    name=str(names[0]).lstrip("/"),
                    running=summary.get("State") == "running",
                )
            )
        return found

    def _engine(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._client_factory()
            return self._client

    def _list(self, pipeline_id: str) -> list[Any]:
        found: list[Any] = self._engine().containers.list(
            all=True, filters={"label": f"{PIPELINE_LABEL}={pipeline_id}"}
        )
        return found


def _docker_client() -> Any:
    import docker

    return docker.from_env()


@dataclass
class PlayInfo:
    """What the runner needs to know about a compiled play, step by step."""

    step_count: int
    tasks_per_step: list[int]
    containers: dict[int, list[str]] = field(default_factory=dict)


def _tasks(items: list[Any]) -> Iterator[Mapping[str, Any]]:
    for item in items:
        if not isinstance(item, Mapping):
            continue
        yield item
        for key in ("block", "rescue", "always"):
            nested = item.get(key)
            if isinstance(nested, list):
                yield from _tasks(nested)


def describe_play(playbook: list[dict[str, Any]], step_count: int) -> PlayInfo:
    """Count each step's tasks and find the names of the containers they manage."""
    counts: dict[int, int] = {}
    containers: dict[int, list[str]] = {}
    for play in playbook:
        for task in _tasks(list(play.get("tasks") or [])):
            name = task.get("name")
            step = language.step_index_of_task(str(name)) if name else None
            if step is None or "block" in task:
                continue
            counts[step] = counts.get(step, 0) + 1
            for module, args in task.items():
                if str(module).endswith("docker_container") and isinstance(
                    args, Mapping
                ):
                    container = args.get("name")
                    if container and str(container) not in containers.get(step, []):
                        containers.setdefault(step, []).append(str(container))
    total = max([step_count, *(index + 1 for index in counts)])
    return PlayInfo(total, [counts.get(i, 0) for i in range(total)], containers)


@dataclass
class Prepared:
    """A pipeline made ready to run on this node."""

    playbook: list[dict[str, Any]]
    step_names: list[str]
    timeout_seconds: float | None


def prepare(
    pipeline: pb.GamePipeline,
    node_envs: Mapping[str, str],
    policy: NodePolicy | None = None,
) -> Prepared:
    """Compile ``pipeline`` for this node; node-local envs win over submitted ones.

    Every step, with its args and envs substituted, must keep to the node ``policy``
    (the defaults when None).

    The pipeline's timeout is the shorter of the server's (``timeout_seconds``) and the
    template's own ``timeout``.

    Raises:
        PipelineError (ValidationError): the document, args or envs are not acceptable.
        ValueError: ``document_json`` is not JSON.
        PolicyViolation: a step asks for what the node policy does not allow.
    """
    template = language.load_template(json.loads(pipeline.document_json))
    envs = {**pipeline.env_values, **node_envs}
    bound = language.bind(template, dict(pipeline.arg_values), envs)
    node_policy = policy or NodePolicy()
    node_policy.check(bound.steps)
    playbook = language.compile_playbook(
        bound, pipeline_id=pipeline.id, mount_roots=node_policy.mount_paths
    )
    limits = [
        limit
        for limit in (template.timeout_seconds, float(pipeline.timeout_seconds))
        if limit
    ]
    return Prepared(
        playbook, [step.name for step in template.steps], min(limits, default=None)
    )


def _log_report(pipeline_id: str, report: Report) -> None:
    """One line per step and pipeline state change, with its ids bound."""
    if isinstance(report, StepReport):
        log.info(
            "pipeline %s: step %d %s%s",
            pipeline_id,
            report.step_index,
            pb.StepState.Name(report.state).removeprefix("STEP_STATE_").lower(),
            f": {report.message}" if report.message else "",
            extra=ids(pipeline_id, report.step_index),
        )
    else:
        log.info(
            "pipeline %s: %s%s",
            pipeline_id,
            pb.PipelineState.Name(report.state).removeprefix("PIPELINE_STATE_").lower(),
            f": {report.message}" if report.message else "",
            extra=ids(pipeline_id),
        )


class PipelineRun:
    """One pipeline's run on this node, in a thread of its own.

    Args:
        pipeline: the pipeline as the server handed it over.
        runs_dir: parent of the private data dir.
        node_envs: the node's own env values.
        emit: called with ``(pipeline_id, report)`` for every report, in order, from the
            run's thread; the pipeline's final state comes last and exactly once.
        on_done: called with the run once it has ended and cleaned up.
        janitor: removes the containers of a step that will not finish.
        active: keeps this run's marker on disk while it is in progress.
        policy: what the steps may ask of this node; checked before anything runs.
        node_id: the node's id, put with the pipeline's into the run's environment so
            that a later agent can tell the run's processes apart (``orphans``).
        ready: when given, the run waits for it to be set before it starts (the
            agent is still removing the containers a restart left behind).
        spares: the agent's spare ansible-playbook runs; without it (or when none is
            waiting) the run starts its own in a new dir under ``runs_dir``.
        mitogen: a run that starts its own ansible-playbook runs its modules through
            Mitogen (``spare.mitogen_env``).
    """

    def __init__(
        self,
        pipeline: pb.GamePipeline,
        *,
        runs_dir: Path,
        node_envs: Mapping[str, str],
        emit: Emit,
        on_done: Callable[[PipelineRun], None] | None = None,
        janitor: ContainerJanitor | None = None,
        active: ActiveRuns | None = None,
        policy: NodePolicy | None = None,
        node_id: str = "",
        ready: threading.Event | None = None,
        spares: SparePool | None = None,
        mitogen: bool = True,
    ) -> None:
        self.pipeline = pipeline
        self._mitogen = mitogen
        self._node_id = node_id
        self._ready = ready
        self._spares = spares
        self._policy = policy or NodePolicy()
        self.pipeline_id = pipeline.id
        self._runs_dir = runs_dir
        self._node_envs = dict(node_envs)
        self._emit = emit
        self._on_done = on_done
        self._janitor = janitor or ContainerJanitor()
        self._active = active
        self._stop = threading.Event()
        self._stop_reason: RunOutcome | None = None
        self._stop_detail = ""
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._main, name=f"pipeline-{pipeline.id}", daemon=True
        )
        self.data_dir: Path | None = None
        self._translator: EventTranslator | None = None

    # -- control ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def cancel(self, reason: str = "") -> None:
        """Ask the run to stop; it reports canceled unless it already ended."""
        self._request_stop(RunOutcome.CANCELED, reason or "the pipeline was canceled")

    def interrupt(self, reason: str = "") -> None:
        """Stop the run because the agent is going away: it fails with the reason
        AGENT_RESTARTED, naming the step it was in."""
        self._request_stop(RunOutcome.INTERRUPTED, reason or "the agent stopped")

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def done(self) -> bool:
        return self._thread.ident is not None and not self._thread.is_alive()

    def _request_stop(self, why: RunOutcome, detail: str) -> None:
        with self._lock:
            if self._stop_reason is None:
                self._stop_reason = why
                self._stop_detail = detail
        self._stop.set()

    # -- the run ---------------------------------------------------------------------

    def _main(self) -> None:
        with bound(pipeline_id=self.pipeline_id):
            self._main_bound()

    def _main_bound(self) -> None:
        try:
            if self._ready is not None:
                self._ready.wait()
            self._run()
        except Exception as err:
            log.exception("pipeline %s: run crashed", self.pipeline_id)
            # Whatever broke, the pipeline still ends in exactly one final state.
            translator = self._translator or EventTranslator(
                [step.name for step in self.pipeline.steps],
                language.step_index_of_task,
            )
            self._send(
                translator.finish(
                    RunOutcome.FAILED, output=[f"the agent could not run it: {err}"]
                )
            )
        finally:
            if self._on_done is not None:
                self._on_done(self)

    def _send(self, reports: list[Report]) -> None:
        for report in reports:
            self._emit(self.pipeline_id, report)
            _log_report(self.pipeline_id, report)
            if self._active is None:
                continue
            if isinstance(report, StepReport) and report.state == pb.STEP_STATE_RUNNING:
                self._active.update_step(self.pipeline_id, report.step_index)
            elif isinstance(report, PipelineReport) and report.final:
                self._active.remove(self.pipeline_id)

    def _run(self) -> None:
        pid = self.pipeline_id
        # Masked in every report and log line: env values may be passwords and keys.
        secrets = [*self.pipeline.env_values.values(), *self._node_envs.values()]
        try:
            prepared = prepare(self.pipeline, self._node_envs, self._policy)
        except (language.PipelineError, ValueError, PolicyViolation) as err:
            why = mask_secrets(str(err), secret_values(secrets))
            log.warning("pipeline %s: rejected: %s", pid, why)
            names = [step.name for step in self.pipeline.steps]
            translator = EventTranslator(
                names, language.step_index_of_task, secrets=secrets
            )
            # The translator masks the steps' messages itself.
            broken = (
                {s.index: "; ".join(s.problems) for s in err.steps}
                if isinstance(err, PolicyViolation)
                else {}
            )
            self._send(translator.reject(f"the pipeline was rejected: {why}", broken))
            return

        info = describe_play(prepared.playbook, len(prepared.step_names))
        names = prepared.step_names
        names += [f"step {i}" for i in range(len(names), info.step_count)]
        translator = EventTranslator(
            names,
            language.step_index_of_task,
            info.tasks_per_step,
            secrets=secrets,
            container_output=lambda step: self._janitor.output(
                self.pipeline_id, info.containers.get(step, [])
            ),
        )
        self._translator = translator
        spare = self._take_spare()
        self.data_dir = spare.data_dir
        if self._active is not None:
            # Before the first report, so a restart at any point finds the run.
            self._active.record(
                pid,
                {
                    "data_dir": str(self.data_dir),
                    "steps": info.step_count,
                    "step": -1,
                    "containers": {str(k): v for k, v in info.containers.items()},
                },
            )
        self._send(translator.start())
        if self._stop.is_set():
            spare.discard()
            outcome = self._outcome("canceled")
            self._send(translator.finish(outcome, detail=self._stop_detail))
            return

        try:
            outcome, output = self._execute(prepared, translator, spare)
            if outcome is RunOutcome.SUCCESSFUL:
                # Every task ended well: nothing is left to clean up, so the end is
                # reported now, while ansible-playbook exits (≈ 0.4 s); its dir goes
                # once it has (the agent waits for that when it stops).
                self._send(translator.finish(outcome))
                log.info("pipeline %s: run ended %s", pid, outcome.value)
                return
        except BaseException:
            self._stop.set()  # kills the playbook, if it still runs
            raise
        finally:
            # Every event is consumed once the runner has ended: the dir can go.
            spare.discard(wait=None)

        # Clean up before the final report, so that "canceled" means it is all gone.
        cleanup = translator.unfinished_step() if outcome in _STOPPED else None
        if cleanup is None:
            cleanup = translator.timed_out_step
        if cleanup is not None:
            # Its output goes with the containers: keep its last lines first.
            translator.capture_output(cleanup)
            self._remove_step_containers(cleanup, info, killed=True)
        elif translator.failed_step is not None:
            self._remove_step_containers(translator.failed_step, info, killed=False)
        self._send(translator.finish(outcome, detail=self._stop_detail, output=output))
        log.info("pipeline %s: run ended %s", pid, outcome.value)

    def _take_spare(self) -> Spare:
        """The agent's waiting spare, else a new one of this run's own (cold)."""
        spare = self._spares.take() if self._spares is not None else None
        if spare is None:
            name = _SAFE.sub("_", self.pipeline_id)
            spare = Spare.in_dir(
                self._runs_dir,
                prefix=name,
                node_id=self._node_id,
                mitogen=self._mitogen,
            )
        return spare

    def _execute(
        self, prepared: Prepared, translator: EventTranslator, spare: Spare
    ) -> tuple[RunOutcome, list[str]]:
        """Hand the tasks to ``spare`` and feed its events to ``translator``."""
        [play] = prepared.playbook
        spare.hand_over(language.render_tasks(play["tasks"]), self._stop.is_set)
        limit = prepared.timeout_seconds
        deadline = time.monotonic() + limit if limit else None
        log.info(
            "pipeline %s: starting ansible-runner in %s%s",
            self.pipeline_id,
            spare.data_dir,
            " (started ahead)" if spare.started else "",
        )
        if not spare.started:
            spare.start()
        assert spare.thread is not None
        while spare.thread.is_alive() or not spare.events.empty():
            if deadline is not None and time.monotonic() > deadline:
                self._request_stop(
                    RunOutcome.TIMEOUT,
                    f"the pipeline's timeout of {limit:g}s ran out",
                )
                deadline = None
            try:
                event = spare.events.get(timeout=_EVENT_POLL_SECONDS)
            except queue.Empty:
                continue
            if event is DONE:
                # Every event came before it: no need to wait for the next poll.
                break
            self._send(translator.feed(event))
            if event.get("event") == "playbook_on_stats" and self._ended_well(
                event, translator
            ):
                return RunOutcome.SUCCESSFUL, []
        spare.thread.join()
        return self._outcome(str(spare.runner.status)), self._stdout_lines(spare.runner)

    def _ended_well(self, stats: dict[str, Any], translator: EventTranslator) -> bool:
        """Whether the play's closing stats say every task ended well: no failed or
        unreachable host, no failure seen, no stop asked for. The run's outcome is
        then known before ansible-playbook has exited."""
        data = stats.get("event_data") or {}
        return (
            not data.get("failures")
            and not data.get("dark")
            and translator.failure_reason is None
            and not self._stop.is_set()
        )

    def _outcome(self, status: str) -> RunOutcome:
        if status == "canceled":
            return self._stop_reason or RunOutcome.CANCELED
        if status == "successful":
            return RunOutcome.SUCCESSFUL
        if status == "timeout":
            return RunOutcome.TIMEOUT
        return RunOutcome.FAILED

    def _stdout_lines(self, runner: Any) -> list[str]:
        try:
            with runner.stdout as handle:
                return [line for line, _ in zip(handle, range(200), strict=False)]
        except Exception:
            return []

    def _remove_step_containers(
        self, step: int, info: PlayInfo, *, killed: bool
    ) -> None:
        """Remove the containers ``step`` made for this pipeline, whatever their state.

        A step stopped mid-way (``killed``: a cancel, a timeout) may have a create or
        start in flight that lands a moment after the kill, so it is looked at twice.
        A step that failed may leave its container created but never started (a
        device it could not get, a port in use), exited, or running but unhealthy:
        a failed pipeline holds no GPU and no port, and what its probe said is in the
        step's message already.
        """
        names = info.containers.get(step, [])
        if not names:
            return
        try:
            removed = self._janitor.remove(self.pipeline_id, names)
            if killed:
                time.sleep(1.0)
                removed += self._janitor.remove(self.pipeline_id, names)
        except Exception:
            log.exception(
                "pipeline %s: could not remove the containers of step %d",
                self.pipeline_id,
                step,
            )
            return
        if removed:
            log.info(
                "pipeline %s: removed containers %s of step %d",
                self.pipeline_id,
                removed,
                step,
            )
