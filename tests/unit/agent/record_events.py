"""Records the ansible-runner events that the event translator's tests replay.

Run it against a real Docker engine (with the stand-in images) whenever the compiler's
task layout or ansible-runner changes:

    python tests/unit/agent/record_events.py

Each scenario compiles a small pipeline with the real pipeline language, runs it with
ansible-runner exactly as the agent does, and writes the events to ``recorded/NAME.json``
with the bulky parts of results (container inspection, module invocation) trimmed.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import ansible_runner
import docker

from gamepipeline import pipeline as language
from gamepipeline.ansible_plugins import action_plugins_env

HERE = Path(__file__).parent / "recorded"
IMAGE = "gamepipeline/stand-in:busybox"
LABEL = "io.beaglewind.gamepipeline.pipeline"
LOCAL = (
    f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}"
)

SCENARIOS: dict[str, dict[str, Any]] = {
    # service, commands exiting 3, service that never runs
    "commands_exit3": {
        "steps": [
            {"name": "db", "type": "service",
             "container": {"image": IMAGE, "container_name": "rec-db"}},
            {"name": "migrate", "container": {
                "image": IMAGE, "container_name": "rec-migrate",
                "commands": ["echo migrating", "echo half way", "exit 3"]}},
            {"name": "game", "type": "service",
             "container": {"image": IMAGE, "container_name": "rec-game"}},
        ],
    },
    "services_ok": {
        "steps": [
            {"name": "db", "type": "service",
             "container": {"image": IMAGE, "container_name": "rec-db"}},
            {"name": "prepare", "container": {
                "image": IMAGE, "container_name": "rec-prepare",
                "commands": ["echo ready"]}},
            {"name": "game", "type": "service",
             "container": {"image": IMAGE, "container_name": "rec-game"}},
        ],
    },
    "step_timeout": {
        "steps": [
            {"name": "slow", "timeout": "3s", "container": {
                "image": IMAGE, "container_name": "rec-slow",
                "commands": ["sleep 60"]}},
            {"name": "after", "type": "service",
             "container": {"image": IMAGE, "container_name": "rec-after"}},
        ],
    },
    "missing_image": {
        "steps": [
            {"name": "pull", "type": "service",
             "container": {"image": "nosuch/image:1", "container_name": "rec-pull"}},
        ],
    },
    "unreachable": {
        "inventory": "localhost ansible_connection=ssh ansible_host=127.0.0.1 ansible_port=1",
        "steps": [
            {"name": "far", "type": "service",
             "container": {"image": IMAGE, "container_name": "rec-far"}},
        ],
    },
    "syntax_error": {"playbook_text": "- hosts: all\n  tasks:\n    - name: '[step 0] x'\n      no_such_module_here: {a: 1}\n"},
}  # fmt: skip


def _trim_res(res: dict[str, Any]) -> dict[str, Any]:
    trimmed = {k: v for k, v in res.items() if k not in ("invocation", "container")}
    container = res.get("container")
    if isinstance(container, dict) and container:
        trimmed["container"] = {
            "Name": container.get("Name"),
            "State": container.get("State"),
        }
    elif "container" in res:
        trimmed["container"] = container
    return trimmed


def _trim(event: dict[str, Any]) -> dict[str, Any]:
    data = event.get("event_data") or {}
    kept = {
        k: data[k]
        for k in ("task", "task_action", "host", "ignore_errors")
        if k in data
    }
    if "res" in data:
        kept["res"] = _trim_res(data["res"])
    return {"event": event["event"], "counter": event.get("counter"),
            "stdout": event.get("stdout", ""), "event_data": kept}  # fmt: skip


def pipeline_id(name: str) -> str:
    return f"rec-{name.replace('_', '-')}"


def record(name: str, scenario: dict[str, Any]) -> None:
    pid = pipeline_id(name)
    work = Path(tempfile.mkdtemp(prefix="gp-record-"))
    (work / "project").mkdir()
    if "playbook_text" in scenario:
        text = scenario["playbook_text"]
    else:
        document = {"name": name, "steps": scenario["steps"]}
        bound = language.bind(language.load_template(document), {}, {})
        text = language.render_playbook(
            language.compile_playbook(bound, pipeline_id=pid)
        )
    (work / "project" / "main.yml").write_text(text)
    events: list[dict[str, Any]] = []

    def keep(event: dict[str, Any]) -> bool:
        events.append(_trim(event))
        return True

    runner = ansible_runner.run(
        private_data_dir=str(work),
        playbook="main.yml",
        inventory=scenario.get("inventory", LOCAL),
        envvars={
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "ANSIBLE_NOCOLOR": "1",
            **action_plugins_env(),
        },
        quiet=True,
        event_handler=keep,
    )
    shutil.rmtree(work)
    out = {"status": runner.status, "rc": runner.rc, "events": events}
    (HERE / f"{name}.json").write_text(
        json.dumps(out, indent=1, ensure_ascii=False) + "\n"
    )
    print(f"{name}: {runner.status} rc={runner.rc}, {len(events)} events")


def main() -> None:
    client = docker.from_env()
    HERE.mkdir(exist_ok=True)
    try:
        for name, scenario in SCENARIOS.items():
            record(name, scenario)
    finally:
        # Only the scenarios' own containers, by their pipelines' label: a name filter
        # is a substring match and would take anyone's container with "rec-" in it.
        ours = {pipeline_id(name) for name in SCENARIOS}
        for container in client.containers.list(all=True, filters={"label": LABEL}):
            if container.labels.get(LABEL) in ours:
                container.remove(force=True)


if __name__ == "__main__":
    main()
