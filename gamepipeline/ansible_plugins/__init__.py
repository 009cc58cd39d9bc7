"""Controller-side Ansible action plugins that compiled playbooks and the agent use.

They run inside ansible-playbook's forked worker, not as modules: no interpreter is
started and no AnsiballZ payload is built for them. Ansible finds them when
``ACTION_PLUGINS`` is on ``ANSIBLE_ACTION_PLUGINS`` (``action_plugins_env``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ACTION_PLUGINS = Path(__file__).resolve().parent / "action"
"""The folder holding ``gamepipeline_inspect`` and ``gamepipeline_wait``."""


def action_plugins_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment variable that makes Ansible find these plugins."""
    current = (os.environ if environ is None else environ).get(
        "ANSIBLE_ACTION_PLUGINS", ""
    )
    paths = [str(ACTION_PLUGINS), *filter(None, current.split(os.pathsep))]
    return {"ANSIBLE_ACTION_PLUGINS": os.pathsep.join(paths)}
