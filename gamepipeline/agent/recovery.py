"""Settling runs that an agent restart cut short.

While a pipeline runs, a small marker file under ``<work_dir>/active/`` says where: its
private data dir, its steps, the containers each step manages, and the step running now.
The marker goes once the pipeline's final report is journaled. A marker found when the
agent starts belongs to a run the previous agent never finished (it was killed, or the
machine rebooted). The rule for such a run: it is not resumed. Its leftover
ansible-playbook processes are killed, the container of the step that was running is
stopped and removed, that step fails and the pipeline fails with the reason
AGENT_RESTARTED ("the agent restarted during step N"), and the steps after it are skipped.
Containers of steps that had completed stay: they are the pipeline's result.

The spare the previous agent kept waiting (``spare``) had no pipeline yet: it is
killed and removed, as is any other run dir left behind (a run reports its end as soon
as its play has ended well, and removes its dir a moment later).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
from pathlib import Path

from gamepipeline.agent.events import PipelineReport, StepReport
from gamepipeline.agent.markers import ActiveRuns
from gamepipeline.agent.reporter import Reporter
from gamepipeline.agent.runner import ContainerJanitor
from gamepipeline.proto import gamepipeline_pb2 as pb

log = logging.getLogger(__name__)


def settle_interrupted_runs(
    active: ActiveRuns, reporter: Reporter, janitor: ContainerJanitor
) -> list[str]:
    """Settle every run a previous agent left unfinished; returns their pipeline ids."""
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
            _kill_processes_using(str(data_dir))
            shutil.rmtree(data_dir, ignore_errors=True)
        containers = (marker.get("containers") or {}).get(str(step), [])
        if step >= 0 and containers:
            try:
                janitor.remove(pid, [str(name) for name in containers])
            except Exception:
                log.exception(
                    "pipeline %s: could not remove step %d's containers", pid, step
                )

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


def clear_leftover_dirs(folder: Path) -> None:
    """Remove every data dir in ``folder``, killing the playbooks working in them.

    Called when the agent starts, before any run of its own: what is there is a
    previous agent's (its waiting spare, or a run whose end it had reported and
    whose dir it had not yet removed).
    """
    if not folder.is_dir():
        return
    for leftover in folder.iterdir():
        _kill_processes_using(str(leftover))
        shutil.rmtree(leftover, ignore_errors=True)


def _kill_processes_using(data_dir: str) -> None:
    """Kill the process groups of ansible-playbook runs working in ``data_dir``."""
    own = {os.getpid(), os.getpgid(0)}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in own:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if data_dir not in cmdline:
                continue
            group = os.getpgid(int(entry.name))
            if group in own:
                continue
            os.killpg(group, signal.SIGKILL)
            log.info("killed leftover process group %d working in %s", group, data_dir)
        except (OSError, UnicodeDecodeError):
            continue
