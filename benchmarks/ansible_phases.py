"""Where a one-step pipeline's time goes inside Ansible (part of ``--profile``).

Runs the agent's own tasks for the one-step service pipeline of benchmark 1 through
ansible-runner in a spare with the agent's own options (``Spare.runner_options``), and
splits the wall time by the events' timestamps: ansible-runner and ansible-playbook
starting up, each task, and the end of the run. ``started_ahead`` is a spare started
before the pipeline and timed from the hand-over of its tasks (what the agent does when
its spare is waiting); ``cold`` starts it with the tasks already there (a run that
found no spare). Both also run without Mitogen (every module in an interpreter of its
own), and one with only the task that starts the container shows what the checks
around it cost. Interpreter start-ups of the pieces are timed too.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import ansible_runner
import docker

from benchmarks.startup import one_step, remove_bench_containers
from gamepipeline import pipeline as language
from gamepipeline.agent.runner import prepare
from gamepipeline.agent.spare import WAIT_TASK, Spare
from gamepipeline.proto import gamepipeline_pb2 as pb


def _stamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["created"]).timestamp()


def _run(
    workdir: Path,
    playbook: list[dict[str, Any]],
    extra_env: dict[str, str],
    *,
    ahead: bool = False,
    mitogen: bool = True,
) -> dict[str, Any]:
    """One run of ``playbook`` in a spare, as the agent runs it; ``ahead`` starts the
    spare first (with its Mitogen warm-up) and times from the hand-over of the tasks,
    as for a spare the agent kept waiting."""
    spare = Spare.in_dir(workdir, mitogen=mitogen, warm_up=ahead)
    options = spare.runner_options()
    options["envvars"].update(extra_env)
    events: list[dict[str, Any]] = []
    options["event_handler"] = lambda e: events.append(e) or True
    options.pop("cancel_callback")
    tasks = language.render_tasks(playbook[0]["tasks"])
    if ahead:
        thread, result = ansible_runner.run_async(**options)
        while not any(
            e.get("event") == "runner_on_start"
            and e.get("event_data", {}).get("task") == WAIT_TASK
            for e in events
        ):
            time.sleep(0.05)
        time.sleep(1.0)  # the payloads are built while it waits
        began = time.time()
        spare.hand_over(tasks, lambda: False)
        thread.join()
    else:
        spare.hand_over(tasks, lambda: False)
        began = time.time()
        result = ansible_runner.run(**options)
    ended = time.time()
    spare.discard()
    events = [e for e in events if "created" not in e or _stamp(e) >= began - 0.05]
    tasks_out: list[dict[str, Any]] = []
    starts: dict[str, float] = {}
    play_start = None
    last = began
    for event in events:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        if kind == "playbook_on_start":
            play_start = _stamp(event)
        elif kind == "playbook_on_task_start":
            starts[data.get("task_uuid", "")] = _stamp(event)
        elif kind.startswith("runner_on_") and kind != "runner_on_start":
            start = starts.get(data.get("task_uuid", ""), last)
            tasks_out.append(
                {
                    "task": data.get("task", "?"),
                    "status": kind.removeprefix("runner_on_"),
                    "seconds": round(_stamp(event) - start, 3),
                }
            )
        if "created" in event:
            last = _stamp(event)
    return {
        "status": result.status,
        "total_s": round(ended - began, 3),
        "until_playbook_start_s": round((play_start or began) - began, 3),
        "after_last_event_s": round(ended - last, 3),
        "tasks": tasks_out,
    }


def _time_command(argv: list[str]) -> float:
    best = float("inf")
    for _ in range(3):
        began = time.monotonic()
        subprocess.run(argv, check=True, capture_output=True, timeout=120)
        best = min(best, time.monotonic() - began)
    return round(best, 3)


def run(workdir: Path) -> dict[str, Any]:
    workdir = workdir / "ansible-phases"
    workdir.mkdir(parents=True, exist_ok=True)
    client = docker.from_env()
    out: dict[str, Any] = {}
    try:
        for label, env, main_only, ahead, mitogen in (
            ("started_ahead", {}, False, True, True),
            ("started_ahead_without_mitogen", {}, False, True, False),
            ("cold", {}, False, False, True),
            ("cold_without_mitogen", {}, False, False, False),
            ("main_task_only", {}, True, False, True),
        ):
            document, _ = one_step(f"gpb-phase-{uuid.uuid4().hex[:6]}")
            pipeline = pb.GamePipeline(
                id=uuid.uuid4().hex, document_json=json.dumps(document)
            )
            playbook = prepare(pipeline, {}).playbook
            if main_only:
                for play in playbook:
                    play["tasks"] = [
                        t
                        for t in play["tasks"]
                        if "community.docker.docker_container" in t
                    ]
                    for t in play["tasks"]:
                        t.pop("when", None)
            # The first run warms the page cache.
            _run(workdir, playbook, env, ahead=ahead, mitogen=mitogen)
            remove_bench_containers(client)
            out[label] = _run(workdir, playbook, env, ahead=ahead, mitogen=mitogen)
            remove_bench_containers(client)
        py = sys.executable
        out["startup_seconds"] = {
            "python": _time_command([py, "-c", "pass"]),
            "import_ansible_runner": _time_command([py, "-c", "import ansible_runner"]),
            "ansible_playbook_version": _time_command(
                [str(Path(py).parent / "ansible-playbook"), "--version"]
            ),
            "import_docker_sdk": _time_command([py, "-c", "import docker"]),
            "docker_cli_version": _time_command(["docker", "version"]),
        }
    finally:
        with contextlib.suppress(Exception):
            remove_bench_containers(client)
        client.close()
    return out
