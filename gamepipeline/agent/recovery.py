"""Settling what a previous agent of this node left unfinished, at start.

A starting agent does three things before it registers, in this order:

1. It kills the playbooks the previous agent left running (``orphans``): every process
   whose run markers name this node and a gone agent, and every process working in a
   marker's data dir (runs of older agents carry no markers). Nothing a dead agent
   started goes on to start another container after this.
2. It settles the runs its own work dir has markers of. While a pipeline runs, a small
   marker file under ``<work_dir>/active/`` says where: its private data dir, its
   steps, the containers each step manages, and the step running now. The marker goes
   once the pipeline's final report is journaled. A marker found at start belongs to a
   run the previous agent never finished (it was killed, or the machine rebooted). Such
   a run is not resumed: the containers of the step that was running, and of the steps
   after it, are stopped and removed; that step fails and the pipeline fails with the
   reason AGENT_RESTARTED ("the agent restarted during step N"), and the steps after it
   are skipped. Containers of steps that had completed stay: they are the pipeline's
   result.
3. It lists the containers on its engine that carry the pipeline label and sends them
   with its first registration (``AgentRegistration.inventory``). The server settles,
   the same way, the pipelines it holds for this node that the agent does not list
   (its work dir was lost or replaced), and answers which of the found containers to
   remove: those of steps that did not complete, in this node's pipelines that are
   failed or canceled. The agent removes them (``Agent.handle_registered``).

The spare the previous agent kept waiting (``spare``) had no pipeline yet: it is
killed and removed, as is any other run dir left behind (a run reports its end as soon
as its play has ended well, and removes its dir a moment later).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from gamepipeline.agent.events import PipelineReport, StepReport
from gamepipeline.agent.markers import ActiveRuns
from gamepipeline.agent.orphans import kill_orphans
from gamepipeline.agent.reporter import Reporter
from gamepipeline.agent.runner import ContainerJanitor
from gamepipeline.agent.spare import clear_temp_dirs
from gamepipeline.proto import gamepipeline_pb2 as pb

log = logging.getLogger(__name__)


def kill_leftover_playbooks(node_id: str, active: ActiveRuns) -> int:
    """Kill the playbooks a previous agent of this node left running; returns how
    many processes were found."""
    data_dirs = tuple(
        str(marker["data_dir"])
        for marker in active.leftovers()
        if marker.get("data_dir")
    )
    return len(kill_orphans(node_id, data_dirs))


def settle_interrupted_runs(
    active: ActiveRuns, reporter: Reporter, janitor: ContainerJanitor
) -> list[str]:
    """Settle every run a previous agent left unfinished; returns their pipeline ids.

    Call ``kill_leftover_playbooks`` first: a playbook still running could start a
    container after its step's were removed.
    """
    settled = []
    for marker in active.leftovers():
        pid = str(marker["pipeline_id"])
        step = int(marker.get("step", -1))
        steps = int(marker.get("steps", 0))
        data_dir = marker.get("data_dir")
        log.warning(
            "pipeline %s: agent restarted during step %d; failing it", pid, step
        )

        if data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
            clear_temp_dirs(Path(data_dir).name)
        _remove_unfinished_containers(pid, step, marker, janitor)

        why = (
            f"the agent restarted during step {step}"
            if step >= 0
            else ("the agent restarted before the first step")
        )
        if step >= 0:
            reporter.submit(
                pid,
                StepReport(
                    step, pb.STEP_STATE_FAILED, pb.END_REASON_AGENT_RESTARTED, why
                ),
            )
        for later in range(step + 1, steps):
            reporter.submit(
                pid,
                StepReport(
                    later,
                    pb.STEP_STATE_SKIPPED,
                    pb.END_REASON_AGENT_RESTARTED,
                    why,
                ),
            )
        reporter.submit(
            pid,
            PipelineReport(
                pb.PIPELINE_STATE_FAILED, pb.END_REASON_AGENT_RESTARTED, why
            ),
        )
        active.remove(pid)
        settled.append(pid)
    return settled


def _remove_unfinished_containers(
    pipeline_id: str, step: int, marker: dict[str, Any], janitor: ContainerJanitor
) -> None:
    """Remove the containers of the step that was running and of every later one (a
    playbook left running may have gone on to them)."""
    by_step = marker.get("containers") or {}
    names = [
        str(name)
        for index, listed in by_step.items()
        if str(index).isdigit() and int(index) >= max(step, 0)
        for name in listed
    ]
    if not names:
        return
    try:
        removed = janitor.remove(pipeline_id, names)
    except Exception:
        log.exception(
            "pipeline %s: could not remove the containers of step %d and later",
            pipeline_id,
            step,
        )
        return
    if removed:
        log.info("pipeline %s: removed leftover containers %s", pipeline_id, removed)


def clear_leftover_dirs(folder: Path, node_id: str) -> None:
    """Remove every data dir in ``folder``, killing the playbooks working in them.

    Called when the agent starts, before any run of its own: what is there is a
    previous agent's (its waiting spare, or a run whose end it had reported and
    whose dir it had not yet removed). Each one's TMPDIR goes with it.
    """
    if not folder.is_dir():
        return
    leftovers = list(folder.iterdir())
    kill_orphans(node_id, tuple(str(path) for path in leftovers))
    for leftover in leftovers:
        shutil.rmtree(leftover, ignore_errors=True)
        clear_temp_dirs(leftover.name)
