"""``gamepipeline_wait``: holds a started playbook until the agent gives it work.

The agent keeps one ansible-playbook started ahead of time (a spare) whose first task
is this one. It returns once ``file`` (relative to the playbook's folder) exists; the
agent writes it, whole, with a rename.

While it waits, it builds the AnsiballZ payloads of the ``modules`` the pipeline will
run: Ansible keeps them in the playbook process's local temp dir, so the pipeline's
tasks, forked later from the same process, find them built. It fails when the agent whose ``agent_pid`` it
was given is gone or the playbook's folder was removed, so that a spare never outlives
its agent.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ansible.plugins.action import ActionBase

POLL_SECONDS = 0.01


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ActionModule(ActionBase):  # type: ignore[misc]
    _VALID_ARGS = frozenset({"file", "agent_pid", "modules"})
    _supports_check_mode = True

    def run(
        self, tmp: str | None = None, task_vars: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        folder = self._loader.get_basedir()
        path = os.path.join(folder, str(self._task.args["file"]))
        agent = int(self._task.args["agent_pid"])
        for module in self._task.args.get("modules") or []:
            if not os.path.exists(path):
                self._build_payload(str(module), task_vars or {})
        began = time.monotonic()
        while not os.path.exists(path):
            if not _alive(agent) or not os.path.isdir(folder):
                return {**result, "failed": True, "msg": "the agent went away"}
            time.sleep(POLL_SECONDS)
        return {**result, "changed": False, "waited": time.monotonic() - began}

    def _build_payload(self, module: str, task_vars: dict[str, Any]) -> None:
        try:
            self._configure_module(module, {}, task_vars)
        except Exception as err:
            # Only time is lost: the module's task builds it again.
            self._display.warning(f"could not prepare module {module}: {err}")
