"""Writing a compiled playbook as YAML that Ansible will not evaluate.

Ansible 2.19 reads ``!unsafe`` in two ways that matter here:

- on a *scalar* it re-resolves the text as if it were unquoted, so ``!unsafe '1920'``
  would reach a module as the number 1920 and ``!unsafe 'false'`` as a boolean;
- on a *mapping or sequence* it marks everything inside as untrusted, while the quoted
  strings inside keep their type.

So every mapping or list of values (module options, ``vars``) is written as one
``!unsafe`` collection whose strings are quoted normally, and a bare string (task and
play names, which always start with fixed text) is written as an ``!unsafe`` scalar.
The compiler's own Jinja sits only in a task's ``when``, ``failed_when``,
``changed_when`` and ``until`` and in the ``msg`` of its ``fail`` tasks (whose
variable parts arrive through ``vars``); those are written plain.
"""

from __future__ import annotations

from typing import Any

import yaml

from .compiler import FAIL

_TASK_CONDITIONALS = frozenset({"when", "failed_when", "changed_when", "until"})
_COMPILER_WORDS = frozenset({"register", "hosts"})


class _UnsafeText(str):
    """A bare string to write as an ``!unsafe`` scalar."""


class _UnsafeMap(dict[Any, Any]):
    """A mapping to write as an ``!unsafe`` collection."""


class _UnsafeList(list[Any]):
    """A list to write as an ``!unsafe`` collection."""


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


_PLAIN = yaml.SafeLoader("")


def _unsafe_text(dumper: yaml.SafeDumper, value: _UnsafeText) -> yaml.Node:
    text = str(value)
    # Ansible re-resolves an !unsafe scalar as plain text; refuse anything that would
    # not come back as a string rather than let it change type silently.
    resolved = _PLAIN.resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
    if resolved != "tag:yaml.org,2002:str":
        raise ValueError(f"{text!r} cannot be written as an unsafe bare string")
    style = "|" if "\n" in text else "'"
    return dumper.represent_scalar("!unsafe", text, style=style)


def _unsafe_map(dumper: yaml.SafeDumper, value: _UnsafeMap) -> yaml.Node:
    node = dumper.represent_dict(dict(value))
    node.tag = "!unsafe"
    return node


def _unsafe_list(dumper: yaml.SafeDumper, value: _UnsafeList) -> yaml.Node:
    node = dumper.represent_list(list(value))
    node.tag = "!unsafe"
    return node


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(_UnsafeText, _unsafe_text)
_Dumper.add_representer(_UnsafeMap, _unsafe_map)
_Dumper.add_representer(_UnsafeList, _unsafe_list)
_Dumper.add_representer(str, _text)


def render_playbook(playbook: list[dict[str, Any]]) -> str:
    """YAML text for ``playbook`` in which no template-derived string is Jinja."""
    plays = [_mark_play(play) for play in playbook]
    return yaml.dump(
        plays, Dumper=_Dumper, allow_unicode=True, sort_keys=False, width=1000
    )


def render_tasks(tasks: list[dict[str, Any]]) -> str:
    """YAML text for a tasks file (``include_tasks``) holding ``tasks``, marked as
    ``render_playbook`` marks a play's tasks."""
    return yaml.dump(
        [_mark_task(task) for task in tasks],
        Dumper=_Dumper,
        allow_unicode=True,
        sort_keys=False,
        width=1000,
    )


def _mark_play(play: dict[str, Any]) -> dict[str, Any]:
    marked: dict[str, Any] = {}
    for key, value in play.items():
        if key == "tasks":
            marked[key] = [_mark_task(task) for task in value]
        elif key in _COMPILER_WORDS:
            marked[key] = value
        else:
            marked[key] = _mark(value)
    return marked


def _mark_task(task: dict[str, Any]) -> dict[str, Any]:
    marked: dict[str, Any] = {}
    for key, value in task.items():
        if key in _TASK_CONDITIONALS or key in _COMPILER_WORDS:
            marked[key] = value
        elif key == FAIL and isinstance(value, dict):
            # the compiler's own message template; its variables come through vars
            marked[key] = dict(value)
        else:
            marked[key] = _mark(value)
    return marked


def _mark(value: Any) -> Any:
    if isinstance(value, str):
        return _UnsafeText(value)
    if isinstance(value, dict):
        return _UnsafeMap(value)
    if isinstance(value, list | tuple):
        return _UnsafeList(value)
    return value
