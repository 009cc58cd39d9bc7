"""The node policy: what a pipeline's steps may ask of this GameNode.

The agent checks every step of a bound pipeline (its args and envs substituted) against
the policy before anything reaches Docker. A step that breaks it fails the pipeline with
the reason REJECTED; each step that breaks it fails with a message naming the field
(``steps[1].container.volumes[0]``), the value and the rule (``policy.mount_paths``, ``policy.devices``, ``policy.privileged``,
``policy.capabilities``, ``policy.security_opt``, ``policy.host_namespaces``,
``policy.other_containers``, ``policy.runtimes``) with how to change it.

The agent configuration's ``policy`` key, every entry optional::

    policy:
      mount_paths: [/data, /dev/input]      # host paths a volume may bind, with below
      devices: [/dev/dri, /dev/input]       # host devices a step may pass, with below
      privileged: true                      # whether `privileged: true` is allowed
      capabilities: [SYS_RAWIO, SYS_NICE]   # what `cap_add` may add
      security_opt: [seccomp=unconfined]    # the `security_opt` entries allowed
      host_namespaces: false                # `network_mode: host`, `ipc: host`
      other_containers: false               # `network_mode`/`ipc: container:NAME` of
                                            # a container not of this pipeline
      runtimes: [runc, nvidia]              # the `runtime` values allowed

The defaults let the shipped templates run on a game node laid out as the design
document says (``/data/wind``, ``/data/nvidia``, GPU and input devices, privileged
game containers, ``seccomp=unconfined``, the runc and NVIDIA runtimes) and nothing
beyond: ``/``, ``/etc``, ``/var/run/docker.sock`` and the like are refused, and so are
the host's network and IPC namespaces and other security options. Named volumes are the
engine's own and always allowed. ``security_opt`` entries are compared with ``:``
read as ``=`` (``seccomp:unconfined`` is ``seccomp=unconfined``), as the engine reads
them.

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
#: Lifting the seccomp filter is what game containers (Wine, anti-cheat) ask for;
#: turning no-new-privileges on only takes away.
DEFAULT_SECURITY_OPT: Final = (
    "seccomp=unconfined",
    "no-new-privileges",
    "no-new-privileges=true",
)
DEFAULT_RUNTIMES: Final = ("runc", "nvidia")
POLICY_KEYS: Final = (
    "mount_paths",
    "devices",
    "privileged",
    "capabilities",
    "security_opt",
    "host_namespaces",
    "other_containers",
    "runtimes",
)


@dataclass(frozen=True)
class StepViolation:
    """What one step asks for that the node policy does not allow."""

    index: int
    name: str
    #: One sentence per rule broken, each starting with the field's path.
    problems: tuple[str, ...]

    def __str__(self) -> str:
        return f"step {self.index} ({self.name}) breaks the node policy: " + "; ".join(
            self.problems
        )


class PolicyViolation(Exception):
    """Steps ask for something the node policy does not allow.

    ``steps`` holds every step that breaks a rule, in order; ``problems`` every rule
    broken, of all of them.
    """

    def __init__(self, steps: Sequence[StepViolation]) -> None:
        self.steps = list(steps)
        self.problems = [problem for step in self.steps for problem in step.problems]
        # Every rule broken, not the first: the author fixes them in one go.
        super().__init__("; ".join(str(step) for step in self.steps))


@dataclass(frozen=True)
class NodePolicy:
    """What steps may ask of this node; see the module's documentation."""

    mount_paths: tuple[str, ...] = DEFAULT_MOUNT_PATHS
    devices: tuple[str, ...] = DEFAULT_DEVICES
    privileged: bool = True
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    security_opt: tuple[str, ...] = DEFAULT_SECURITY_OPT
    host_namespaces: bool = False
    other_containers: bool = False
    runtimes: tuple[str, ...] = DEFAULT_RUNTIMES

    def check(
        self, steps: Iterable[Step], resolve: Callable[[str], str] = os.path.realpath
    ) -> None:
        """Raise ``PolicyViolation`` listing every rule the steps break.

        Host paths are judged as written and as ``resolve`` finds them on this node, so
        a symbolic link below an allowed folder cannot lead outside it.
        """
        steps = list(steps)
        own = {s.container.container_name for s in steps if s.container.container_name}
        broken = []
        for index, step in enumerate(steps):
            problems = self._step_problems(index, step, resolve, own)
            if problems:
                broken.append(StepViolation(index, step.name, tuple(problems)))
        if broken:
            raise PolicyViolation(broken)

    def _step_problems(
        self, index: int, step: Step, resolve: Callable[[str], str], own: set[str]
    ) -> list[str]:
        where = f"steps[{index}].container"
        container = step.container
        problems = []
        for at, volume in enumerate(container.volumes):
            source = _volume_source(volume)
            if source is None:
                continue
            real = resolve(source)
            if not _under(source, self.mount_paths):
                problems.append(
                    f'{where}.volumes[{at}]: "{volume}" mounts the host path {source}, which '
                    f"is outside policy.mount_paths ({_listed(self.mount_paths)}); "
                    "mount a folder below one of them or add it to the node's policy"
                )
            elif not _under(real, self.mount_paths):
                problems.append(
                    f'{where}.volumes[{at}]: "{volume}" mounts {source}, a symbolic link to '
                    f"{real}, which is outside policy.mount_paths "
                    f"({_listed(self.mount_paths)}); mount the real folder below one "
                    "of them"
                )
        for at, device in enumerate(container.devices):
            host = _device_host(device)
            if not _under(host, self.devices):
                problems.append(
                    f'{where}.devices[{at}]: "{device}" passes {host}, which is outside '
                    f"policy.devices ({_listed(self.devices)}); drop it or add it to "
                    "the node's policy"
                )
        if container.privileged and not self.privileged:
            problems.append(
                f"{where}.privileged: true is refused by policy.privileged (false) on "
                "this node; drop privileged or run the pipeline on a node that allows it"
            )
        allowed = {_capability(c) for c in self.capabilities}
        for at, capability in enumerate(container.cap_add):
            if _capability(capability) not in allowed:
                problems.append(
                    f"{where}.cap_add[{at}]: {capability} is not in policy.capabilities "
                    f"({_listed(self.capabilities)}); drop it or add it to the node's "
                    "policy"
                )
        allowed_options = {_security_opt(o) for o in self.security_opt}
        for at, option in enumerate(container.security_opt):
            if _security_opt(option) not in allowed_options:
                problems.append(
                    f"{where}.security_opt[{at}]: {option} is not in policy.security_opt "
                    f"({_listed(self.security_opt)}); drop it or add it to the node's "
                    "policy"
                )
        if not self.host_namespaces:
            for field, value in (
                ("network_mode", container.network_mode),
                ("ipc", container.ipc),
            ):
                if value is not None and value.strip().lower() == "host":
                    problems.append(
                        f"{where}.{field}: host shares the node's own namespace, "
                        "which policy.host_namespaces (false) refuses; publish ports "
                        "or use shm_size instead, or allow it in the node's policy"
                    )
        for field, value in (
            ("network_mode", container.network_mode),
            ("ipc", container.ipc),
        ):
            kind, _, other = (value or "").strip().partition(":")
            if kind.lower() != "container" or self.other_containers or other in own:
                continue
            problems.append(
                f"{where}.{field}: container:{other} joins the namespace of a "
                "container that is not one of this pipeline's, which "
                "policy.other_containers (false) refuses; join a container an "
                "earlier step of the pipeline starts, or allow it in the node's policy"
            )
        if container.runtime is not None and container.runtime not in self.runtimes:
            problems.append(
                f"{where}.runtime: {container.runtime} is not in policy.runtimes "
                f"({_listed(self.runtimes)}); use one of them or add it to the "
                "node's policy"
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
    for key in ("privileged", "host_namespaces", "other_containers"):
        if key in raw:
            if not isinstance(raw[key], bool):
                raise ValueError(f"policy.{key}: {raw[key]!r} is not true or false")
            values[key] = raw[key]
    for key in ("security_opt", "runtimes"):
        if key in raw:
            values[key] = tuple(_texts(raw[key], f"policy.{key}"))
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


def _security_opt(option: str) -> str:
    """An option as the engine reads it: ``key=value``, ``key:value`` being the same."""
    key, sep, value = option.strip().partition("=")
    if not sep:
        key, sep, value = key.partition(":")
    return f"{key.strip().lower()}={value.strip()}" if sep else key.strip().lower()


def _listed(items: Sequence[str]) -> str:
    return ", ".join(items) if items else "none"
