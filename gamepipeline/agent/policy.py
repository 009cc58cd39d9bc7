"""The node policy: what a pipeline's steps may ask of this GameNode.

The agent checks every step of a bound pipeline (its args and envs substituted) against
the policy before anything reaches Docker. A step that breaks it fails the pipeline with
the reason REJECTED and a message naming the step, the value and the rule
(``policy.mount_paths``, ``policy.devices``, ``policy.privileged``,
``policy.capabilities``) with how to change it.

The agent configuration's ``policy`` key, every entry optional::

    policy:
      mount_paths: [/data, /dev/input]      # host paths a volume may bind, with below
      devices: [/dev/dri, /dev/input]       # host devices a step may pass, with below
      privileged: true                      # whether `privileged: true` is allowed
      capabilities: [SYS_RAWIO, SYS_NICE]   # what `cap_add` may add

The defaults let the shipped templates run on a game node laid out as the design
document says (``/data/wind``, ``/data/nvidia``, GPU and input devices, privileged
game containers) and nothing beyond: ``/``, ``/etc``, ``/var/run/docker.sock`` and the
like are refused. Named volumes are the engine's own and always allowed.

Pure code, but for resolving host paths (``os.path.realpath`` unless the caller passes
another resolver), so that a symbolic link cannot carry a mount outside the policy. The
check runs before the playbook starts; a link that an earlier step of the same pipeline
creates is caught by the guard task the compiler puts before each step
(``compile_playbook(..., mount_roots=policy.mount_paths)``).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from gamepipeline.pipeline import grammar
from gamepipeline.pipeline.model import Step

DEFAULT_MOUNT_PATHS: Final = ("/data", "/dev/input")
DEFAULT_DEVICES: Final = ("/dev/dri", "/dev/input", "/dev/snd", "/dev/uinput")
DEFAULT_CAPABILITIES: Final = ("SYS_RAWIO", "SYS_NICE")
POLICY_KEYS: Final = ("mount_paths", "devices", "privileged", "capabilities")


class PolicyViolation(Exception):
    """A step asks for something the node policy does not allow."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        # Every rule broken, not the first: the author fixes them in one go.
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class NodePolicy:
    """What steps may ask of this node; see the module's documentation."""

    mount_paths: tuple[str, ...] = DEFAULT_MOUNT_PATHS
    devices: tuple[str, ...] = DEFAULT_DEVICES
    privileged: bool = True
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES

    def check(
        self, steps: Iterable[Step], resolve: Callable[[str], str] = os.path.realpath
    ) -> None:
        """Raise ``PolicyViolation`` listing every rule the steps break.

        Host paths are judged as written and as ``resolve`` finds them on this node, so
        a symbolic link below an allowed folder cannot lead outside it.
        """
        problems: list[str] = []
        for index, step in enumerate(steps):
            problems += self._step_problems(index, step, resolve)
        if problems:
            raise PolicyViolation(problems)

    def _step_problems(
        self, index: int, step: Step, resolve: Callable[[str], str]
    ) -> list[str]:
        where = f"steps[{index}] ({step.name})"
        container = step.container
        problems = []
        for volume in container.volumes:
            source = _volume_source(volume)
            if source is None:
                continue
            real = resolve(source)
            if not _under(source, self.mount_paths):
                problems.append(
                    f'{where}: volume "{volume}" mounts the host path {source}, which '
                    f"is outside policy.mount_paths ({_listed(self.mount_paths)}); "
                    "mount a folder below one of them or add it to the node's policy"
                )
            elif not _under(real, self.mount_paths):
                problems.append(
                    f'{where}: volume "{volume}" mounts {source}, a symbolic link to '
                    f"{real}, which is outside policy.mount_paths "
                    f"({_listed(self.mount_paths)}); mount the real folder below one "
                    "of them"
                )
        for device in container.devices:
            host = _device_host(device)
            if not _under(host, self.devices):
                problems.append(
                    f'{where}: device "{device}" passes {host}, which is outside '
                    f"policy.devices ({_listed(self.devices)}); drop it or add it to "
                    "the node's policy"
                )
        if container.privileged and not self.privileged:
            problems.append(
                f"{where}: privileged: true is refused by policy.privileged (false) on "
                "this node; drop privileged or run the pipeline on a node that allows it"
            )
        allowed = {_capability(c) for c in self.capabilities}
        for capability in container.cap_add:
            if _capability(capability) not in allowed:
                problems.append(
                    f"{where}: cap_add {capability} is not in policy.capabilities "
                    f"({_listed(self.capabilities)}); drop it or add it to the node's "
                    "policy"
                )
        return problems


def policy_from_settings(raw: Any) -> NodePolicy:
    """The policy of the agent configuration's ``policy`` mapping (None: defaults).

    Raises:
        ValueError: naming the key that is wrong and how to write it.
    """
    if raw is None:
        return NodePolicy()
    if not isinstance(raw, Mapping):
        raise ValueError(
            f"policy must be a mapping with some of {', '.join(POLICY_KEYS)}"
        )
    unknown = sorted(str(key) for key in raw if key not in POLICY_KEYS)
    if unknown:
        raise ValueError(
            f"policy: unknown key(s) {', '.join(unknown)}; known: "
            f"{', '.join(POLICY_KEYS)}"
        )
    values: dict[str, Any] = {}
    for key in ("mount_paths", "devices"):
        if key in raw:
            values[key] = _absolute_paths(raw[key], f"policy.{key}")
    if "privileged" in raw:
        if not isinstance(raw["privileged"], bool):
            raise ValueError(
                f"policy.privileged: {raw['privileged']!r} is not true or false"
            )
        values["privileged"] = raw["privileged"]
    if "capabilities" in raw:
        values["capabilities"] = tuple(
            _capability(c) for c in _texts(raw["capabilities"], "policy.capabilities")
        )
    return NodePolicy(**values)


def _texts(raw: Any, where: str) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(i, str) for i in raw):
        raise ValueError(f"{where} must be a list of strings, got {raw!r}")
    return list(raw)


def _absolute_paths(raw: Any, where: str) -> tuple[str, ...]:
    paths = _texts(raw, where)
    for path in paths:
        if not path.startswith("/"):
            raise ValueError(f"{where}: {path!r} is not an absolute host path")
    return tuple(_normal(path) for path in paths)


def _normal(path: str) -> str:
    # "//x" stays "//x" under POSIX rules; one leading slash is the same directory.
    return "/" + posixpath.normpath(path).lstrip("/")


def _under(path: str, roots: Iterable[str]) -> bool:
    """Whether ``path``, with ``..`` and ``.`` resolved, is a root or below one."""
    target = _normal(path)
    for root in roots:
        root = _normal(root)
        if root == "/" or target == root or target.startswith(root + "/"):
            return True
    return False


def _volume_source(volume: str) -> str | None:
    """The host path a volume binds, or None for an anonymous or named volume."""
    source, _, _ = grammar.parse_volume(volume)
    if source is None or not source.startswith("/"):
        return None
    return source


def _device_host(device: str) -> str:
    host, _, _ = grammar.parse_device(device)
    return host


def _capability(name: str) -> str:
    return name.strip().upper().removeprefix("CAP_")


def _listed(items: Sequence[str]) -> str:
    return ", ".join(items) if items else "none"
