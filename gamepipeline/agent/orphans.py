"""Finding and killing the playbooks a previous agent of this node left running.

ansible-playbook runs in a session of its own, so killing the agent (SIGKILL, an OOM
kill) does not kill it: the orphan runs on, and may even go on to start the next
step's container. Every run's environment therefore carries three markers, which its
ansible-playbook and every process under it inherit:

- ``GAMEPIPELINE_NODE_ID``: the node the run belongs to;
- ``GAMEPIPELINE_PIPELINE_ID``: the pipeline it runs;
- ``GAMEPIPELINE_AGENT``: the agent that started it, as ``<pid>:<start time>`` (the
  start time in clock ticks since boot, from ``/proc/<pid>/stat``), so that a reused
  pid is not taken for the same agent.

A fourth, ``GAMEPIPELINE_RUN``, names the one ansible-playbook run (its data dir's
name). Ansible's workers leave the playbook's session (``setsid``), so killing the
playbook's process group on a cancel does not reach them; a worker waiting on a module
that will never answer (Mitogen's interpreter, killed with the group) would wait for
ever. ``kill_run`` kills every process of a run by this marker.

A process is an orphan of this node when its markers name this node and the agent
they name is gone. A starting agent kills the process group of each orphan with
SIGKILL before it does anything else, whether or not it still has its predecessor's
work dir. A process whose agent still lives (another agent of the same node id on
this machine, or one embedded in the same process) is left alone. Runs an older agent
started carry no markers; they are found by their data dir on the command line
(``recovery``).
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

NODE_ENV = "GAMEPIPELINE_NODE_ID"
PIPELINE_ENV = "GAMEPIPELINE_PIPELINE_ID"
AGENT_ENV = "GAMEPIPELINE_AGENT"
RUN_ENV = "GAMEPIPELINE_RUN"

_PROC = Path("/proc")


@dataclass(frozen=True)
class Orphan:
    """A process some run of this node left behind."""

    pid: int
    group: int
    pipeline_id: str
    why: str


def process_identity(pid: int) -> str:
    """``<pid>:<start time>`` of a live process, or "" if it is gone."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: split after its end.
    fields = stat[stat.rfind(")") + 2 :].split()
    return f"{pid}:{fields[19]}" if len(fields) > 19 else ""


def run_markers(node_id: str, pipeline_id: str) -> dict[str, str]:
    """The environment markers of a run this agent starts."""
    return {
        NODE_ENV: node_id,
        PIPELINE_ENV: pipeline_id,
        AGENT_ENV: process_identity(os.getpid()),
    }


def kill_run(run: str) -> int:
    """Kill with SIGKILL the process group of every process whose ``RUN_ENV`` marker
    is ``run`` (never this process's own group); returns how many groups were killed."""
    own = {os.getpid(), os.getpgid(0)}
    marker = f"{RUN_ENV}={run}".encode()
    killed: set[int] = set()
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) in own:
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            group = os.getpgid(int(entry.name))
        except OSError:
            continue  # gone, or not ours to read
        if group in own or group in killed:
            continue
        try:
            os.killpg(group, signal.SIGKILL)
        except OSError:
            continue
        killed.add(group)
    return len(killed)


def find_orphans(node_id: str, data_dirs: tuple[str, ...] = ()) -> list[Orphan]:
    """The processes that runs of ``node_id`` left behind: those whose markers name
    this node and a gone agent, and those working in one of ``data_dirs``."""
    own = {os.getpid(), os.getpgid(0)}
    found = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) in own:
            continue
        pid = int(entry.name)
        why, pipeline_id = _why_orphaned(entry, node_id, data_dirs)
        if not why:
            continue
        try:
            group = os.getpgid(pid)
        except OSError:
            continue  # gone meanwhile
        if group in own:
            continue
        found.append(Orphan(pid, group, pipeline_id, why))
    return found


def _why_orphaned(
    entry: Path, node_id: str, data_dirs: tuple[str, ...]
) -> tuple[str, str]:
    """Why the process at ``entry`` is an orphan of this node ("" if it is not), and
    the pipeline it ran."""
    try:
        environ = _environment(entry)
    except OSError:
        return "", ""  # gone, or not ours to read
    pipeline_id = environ.get(PIPELINE_ENV, "")
    if environ.get(NODE_ENV) == node_id:
        agent = environ.get(AGENT_ENV, "")
        pid = agent.partition(":")[0]
        if not agent or not pid.isdigit() or process_identity(int(pid)) != agent:
            return f"its agent {agent or '(unnamed)'} is gone", pipeline_id
        return "", ""
    if not data_dirs:
        return "", ""
    try:
        cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return "", ""
    text = cmdline.decode(errors="replace")
    for data_dir in data_dirs:
        if data_dir in text:
            return f"it works in {data_dir}", pipeline_id
    return "", ""


def _environment(entry: Path) -> dict[str, str]:
    raw = (entry / "environ").read_bytes()
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {
        key.decode(errors="replace"): value.decode(errors="replace")
        for key, _, value in pairs
    }


def kill_orphans(node_id: str, data_dirs: tuple[str, ...] = ()) -> list[Orphan]:
    """Kill the process group of every orphan of ``node_id`` with SIGKILL; returns
    the orphans found (each group is killed once)."""
    orphans = find_orphans(node_id, data_dirs)
    killed: set[int] = set()
    for orphan in orphans:
        if orphan.group in killed:
            continue
        try:
            os.killpg(orphan.group, signal.SIGKILL)
        except ProcessLookupError:
            continue
        except OSError as err:
            log.warning(
                "node %s: could not kill leftover process group %d (%s): %s",
                node_id,
                orphan.group,
                _whose(orphan),
                err,
            )
            continue
        killed.add(orphan.group)
        log.warning(
            "node %s: killed leftover process group %d of %s: %s",
            node_id,
            orphan.group,
            _whose(orphan),
            orphan.why,
        )
    return orphans


def _whose(orphan: Orphan) -> str:
    """What the process group was for: a pipeline's run, or a spare ansible-playbook
    started ahead of any pipeline (its GAMEPIPELINE_PIPELINE_ID is empty)."""
    if orphan.pipeline_id:
        return f"pipeline {orphan.pipeline_id}"
    return "a spare ansible-playbook"
