"""Compiling a bound pipeline into an Ansible play (plain data).

The play has one host pattern (``all``), no fact gathering and, for each step, a few
tasks whose names start with ``[step N]`` (N counts from 0, as in the gRPC contract):

1. ``inspect``: ``gamepipeline_inspect`` on the step's container name (the same result
   as ``docker_container_info``'s, read by an action plugin in the controller instead
   of a module: no interpreter starts for it);
2. ``ownership``: fails when a container of that name exists without GamePipeline's
   labels, and leaves it untouched;
3. the step itself: ``docker_container``. A ``commands`` step runs its container to the
   end (``detach: false``) and fails with the exit code and output; any other step starts
   its container and leaves it running. A running container whose spec-hash label
   matches is left alone (idempotent re-runs, even under a new pipeline id); one whose
   hash differs is recreated by the same task: ``docker_container`` compares labels
   with ``allow_more_present`` by default, so the new hash label alone forces it;
4. ``running`` (services only): fails when the container the step's own task returned
   is not running. It reads the task's result and runs no module.

A ``type: remove`` step has the same ``inspect`` and ``ownership`` tasks, then stops its
container (waiting ``stop_grace_period``, else the container's own stop timeout) and
removes it with its anonymous volumes. A container that is already gone is fine; one
that GamePipeline did not create is left untouched and fails the step.

The play needs ``gamepipeline.ansible_plugins.ACTION_PLUGINS`` on Ansible's action
plugin path (``action_plugins_env()``).

Values that come from templates, args or envs are never Jinja: ``render_playbook``
marks them ``!unsafe``. Only the conditionals written here are templates.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from typing import Any

from . import grammar
from .binding import BoundPipeline
from .errors import Problem, ValidationError
from .model import Container, Step

LABEL_PREFIX = "io.beaglewind.gamepipeline."
LABEL_PIPELINE = LABEL_PREFIX + "pipeline"
LABEL_STEP = LABEL_PREFIX + "step"
LABEL_TEMPLATE = LABEL_PREFIX + "template"
LABEL_SPEC = LABEL_PREFIX + "spec"

DOCKER_CONTAINER = "community.docker.docker_container"
INSPECT = "gamepipeline_inspect"
FAIL = "ansible.builtin.fail"

_MARKER = re.compile(r"^\[step (\d+)\]")
_PIPELINE_ID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


def task_name(index: int, step_name: str, part: str | None = None) -> str:
    """The name of a step's task: ``[step 2] 启动游戏服务器`` (+ ``: part``)."""
    name = f"[step {index}] {step_name}"
    return name if part is None else f"{name}: {part}"


def step_index_of_task(task_name: str) -> int | None:
    """The step index in a compiled task's name, or None for other tasks."""
    match = _MARKER.match(task_name or "")
    return int(match.group(1)) if match else None


def container_name_of(step: Step, index: int, pipeline_id: str) -> str:
    """The container's name: its ``container_name`` or ``gp-<pipeline_id>-<index>``."""
    return step.container.container_name or f"gp-{pipeline_id}-{index}"


def compile_playbook(
    bound: BoundPipeline,
    *,
    pipeline_id: str,
    mount_roots: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The playbook for one run of ``bound``: a list with one play, as plain data.

    With ``mount_roots`` (a node policy's folders), each step first checks, on the
    node and at the moment it runs, that its host paths resolve below one of them: an
    earlier step may have left a symbolic link that leads elsewhere.
    """
    if not _PIPELINE_ID.match(pipeline_id):
        raise ValidationError(
            [
                Problem(
                    "pipeline_id",
                    f'"{pipeline_id}" cannot be part of a container name; use '
                    "letters, digits, _ . - starting with a letter or digit",
                )
            ]
        )
    template_name = bound.template.model or bound.template.name
    tasks: list[dict[str, Any]] = []
    for index, step in enumerate(bound.steps):
        step_tasks = _step_tasks(step, index, pipeline_id, template_name)
        if mount_roots is not None:
            step_tasks = _mount_guard(step, index, mount_roots) + step_tasks
        tasks.extend(step_tasks)
    return [
        {
            "name": f"GamePipeline {pipeline_id}: {bound.resolved.name}",
            "hosts": "all",
            "gather_facts": False,
            "tasks": tasks,
        }
    ]


def _mount_guard(step: Step, index: int, roots: Sequence[str]) -> list[dict[str, Any]]:
    """A task failing the step when a host path it binds resolves outside ``roots``."""
    sources = []
    for volume in step.container.volumes:
        source, _, _ = grammar.parse_volume(volume)
        if source is not None and source.startswith("/"):
            sources.append(source)
    if not sources or step.removes:
        return []
    pattern = "^(" + "|".join(re.escape(r.rstrip("/") or "/") for r in roots) + ")(/|$)"
    outside = "gp_sources | map('realpath') | reject('match', gp_roots) | list"
    return [
        {
            "name": task_name(index, step.name, "mounts"),
            FAIL: {
                "msg": "a host path of this step resolves outside the node's "
                "policy.mount_paths ({{ gp_allowed }}) through a symbolic link: "
                "{{ " + outside + " | join(', ') }}; mount the real folder instead"
            },
            "vars": {
                "gp_sources": sources,
                "gp_roots": pattern,
                "gp_allowed": ", ".join(roots),
            },
            "when": f"{outside} | length > 0",
        }
    ]


def _foreign(index: int) -> tuple[str, str]:
    """The name of the ``inspect`` result and the condition "not GamePipeline's"."""
    existing = f"gp_step_{index}_existing"
    labels = f"({existing}.container.Config.Labels | default({{}}, true))"
    return existing, f"{existing}.exists and '{LABEL_PIPELINE}' not in {labels}"


def _guard_tasks(step: Step, index: int, name: str) -> list[dict[str, Any]]:
    """``inspect`` the step's container, and fail on one GamePipeline did not create."""
    existing, foreign = _foreign(index)
    return [
        {
            "name": task_name(index, step.name, "inspect"),
            INSPECT: {"name": name},
            "register": existing,
        },
        {
            "name": task_name(index, step.name, "ownership"),
            FAIL: {
                "msg": "a container named {{ gp_container }} already exists and was "
                "not created by GamePipeline; it is left untouched: remove or rename "
                "it, or give this step another container_name"
            },
            "vars": {"gp_container": name},
            "when": foreign,
        },
    ]


def _remove_tasks(step: Step, index: int, name: str) -> list[dict[str, Any]]:
    _, foreign = _foreign(index)
    args: dict[str, Any] = {"name": name, "state": "absent", "keep_volumes": False}
    if step.container.stop_grace_period is not None:
        seconds = grammar.parse_duration(step.container.stop_grace_period)
        args["stop_timeout"] = max(0, math.ceil(seconds))
    main: dict[str, Any] = {
        "name": task_name(index, step.name),
        DOCKER_CONTAINER: args,
        "when": f"not ({foreign})",
    }
    _add_step_controls(main, step, index)
    return [*_guard_tasks(step, index, name), main]


def _step_tasks(
    step: Step, index: int, pipeline_id: str, template_name: str
) -> list[dict[str, Any]]:
    name = container_name_of(step, index, pipeline_id)
    if step.removes:
        tasks = _remove_tasks(step, index, name)
        if step.continue_on_error:
            for task in tasks:
                task["ignore_errors"] = True
        return tasks
    args = container_args(step.container)
    spec = spec_hash(args, step)
    args["name"] = name
    args["labels"] = {
        **step.container.labels,
        LABEL_PIPELINE: pipeline_id,
        LABEL_STEP: str(index),
        LABEL_TEMPLATE: template_name,
        LABEL_SPEC: spec,
    }

    existing, foreign = _foreign(index)
    labels = f"({existing}.container.Config.Labels | default({{}}, true))"
    same = f"({labels}['{LABEL_SPEC}'] | default('')) == '{spec}'"
    running = f"{existing}.container.State.Running"

    tasks = _guard_tasks(step, index, name)

    main: dict[str, Any] = {"name": task_name(index, step.name)}
    if step.runs_to_completion:
        args.update(state="started", detach=False, cleanup=True, recreate=True)
        main["when"] = f"not ({foreign})"
    else:
        # Started, not `state: healthy`: docker_container keeps waiting through
        # "unhealthy" until its own timeout; the health tasks below end at either.
        args.update(state="started", detach=True)
        # A changed spec changes the spec-hash label, and docker_container recreates
        # a container whose labels lack one it is given (its default comparison).
        main["when"] = (
            f"not ({foreign}) and not ({existing}.exists and {same} and {running})"
        )
        main["register"] = _result(index)
    main[DOCKER_CONTAINER] = args
    _add_step_controls(main, step, index)
    tasks.append(main)

    if not step.runs_to_completion:
        tasks.append(_running_task(step, index, name, foreign))
        check = step.container.healthcheck
        if check is not None and not check.disable:
            tasks.extend(_health_tasks(step, index, name, foreign))
    if step.continue_on_error:
        for task in tasks:
            task["ignore_errors"] = True
    return tasks


def _result(index: int) -> str:
    """The name the step's own ``docker_container`` result is registered under."""
    return f"gp_step_{index}_result"


def _running_task(step: Step, index: int, name: str, foreign: str) -> dict[str, Any]:
    """Fails when the container the main task started is not running.

    ``docker_container`` inspects the container right after starting it and returns
    that inspection as ``container``: no second module call is needed. A skipped main
    task means the container was already running with the same spec.
    """
    state = f"{_result(index)}.container.State"
    return {
        "name": task_name(index, step.name, "running"),
        FAIL: {
            "msg": "the container {{ gp_container }} is not running right after "
            "start (status {{ " + state + ".Status | default('gone') "
            "}}, exit code {{ " + state + ".ExitCode | default('none') "
            "}})"
        },
        "vars": {"gp_container": name},
        "when": f"not ({foreign}) and {_result(index)} is not skipped and not "
        f"({state}.Running | default(false))",
    }


# Docker's own healthcheck defaults, used to bound the wait when a template leaves
# them out.
_HEALTH_DEFAULTS: dict[str, float] = {"interval": 30, "timeout": 30, "start_period": 0}
_HEALTH_DEFAULT_RETRIES = 3
_HEALTH_POLL_SECONDS = 1


def _health_tasks(
    step: Step, index: int, name: str, foreign: str
) -> list[dict[str, Any]]:
    """Wait until the container's health is decided, then fail unless it is healthy.

    The wait is bounded by the healthcheck itself: the start period plus one interval
    and timeout per allowed retry, and one more, after which Docker has decided.
    """
    check = step.container.healthcheck
    assert check is not None
    times = {
        key: grammar.parse_duration(getattr(check, key))
        if getattr(check, key) is not None
        else default
        for key, default in _HEALTH_DEFAULTS.items()
    }
    retries = check.retries if check.retries is not None else _HEALTH_DEFAULT_RETRIES
    budget = times["start_period"] + (times["interval"] + times["timeout"]) * (
        retries + 1
    )
    polls = max(1, math.ceil(budget / _HEALTH_POLL_SECONDS))
    health = f"gp_step_{index}_health"
    status = f"({health}.container.State.Health.Status | default('none'))"
    running = f"({health}.container.State.Running | default(false))"
    last = f"({health}.container.State.Health.Log | default([{{}}], true) | last)"
    return [
        {
            "name": task_name(index, step.name, "health"),
            INSPECT: {"name": name},
            "register": health,
            "until": f"{status} in ['healthy', 'unhealthy'] or not {running}",
            "retries": polls,
            "delay": _HEALTH_POLL_SECONDS,
            "when": f"not ({foreign})",
        },
        {
            "name": task_name(index, step.name, "healthy"),
            FAIL: {
                "msg": "the container {{ gp_container }} did not become healthy "
                "(health {{ " + status + " }}, running {{ " + running + " }}); "
                "its last probe said: {{ " + last + ".Output | default('nothing') "
                "| trim }}"
            },
            "vars": {"gp_container": name},
            "when": f"not ({foreign}) and {status} != 'healthy'",
        },
    ]


def _add_step_controls(task: dict[str, Any], step: Step, index: int) -> None:
    if step.timeout_seconds is not None:
        task["timeout"] = max(1, math.ceil(step.timeout_seconds))
    if step.retries:
        result = _result(index)
        task["register"] = result
        task["retries"] = step.retries
        delay = (
            5.0
            if step.retry_delay is None
            else grammar.parse_duration(step.retry_delay)
        )
        task["delay"] = max(0, math.ceil(delay))
        task["until"] = f"{result} is succeeded"


def spec_hash(args: dict[str, Any], step: Step) -> str:
    """A short hash of everything that shapes the container (not its pipeline id)."""
    spec = {"container": args, "type": step.type, "labels": step.container.labels}
    text = json.dumps(spec, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def container_args(container: Container) -> dict[str, Any]:
    """``docker_container`` options for a container spec (without name and labels)."""
    c = container
    args: dict[str, Any] = {
        "image": c.image,
        "pull": "missing",
        "command_handling": "correct",
    }
    optional: dict[str, Any] = {
        "hostname": c.hostname,
        "privileged": c.privileged,
        "security_opts": c.security_opt or None,
        "capabilities": c.cap_add or None,
        "tmpfs": c.tmpfs or None,
        "devices": [":".join(grammar.parse_device(d)) for d in c.devices] or None,
        "volumes": c.volumes or None,
        "published_ports": c.ports or None,
        "env": dict(c.environment) or None,
        "shm_size": c.shm_size,
        "network_mode": c.network_mode,
        "ipc_mode": c.ipc,
        "user": c.user,
        "working_dir": c.working_dir,
        "runtime": c.runtime,
        "dns_servers": c.dns or None,
        "memory": c.mem_limit,
        "cpus": c.cpus,
    }
    args.update({k: v for k, v in optional.items() if v is not None})

    if c.commands is not None:
        args["entrypoint"] = ["/bin/sh", "-c"]
        args["command"] = [grammar.script_of(c.commands)]
    else:
        if c.command is not None:
            args["command"] = grammar.split_command(c.command)
        if c.entrypoint is not None:
            args["entrypoint"] = grammar.split_command(c.entrypoint)

    requests = _device_requests(c)
    if requests:
        args["device_requests"] = requests
    if c.restart is not None:
        policy, _, count = c.restart.partition(":")
        args["restart_policy"] = policy
        if count:
            args["restart_retries"] = int(count)
    if c.ulimits:
        args["ulimits"] = [f"{k}:{v.soft}:{v.hard}" for k, v in c.ulimits.items()]
    if c.extra_hosts:
        hosts = (h.replace("=", ":", 1).partition(":") for h in c.extra_hosts)
        args["etc_hosts"] = {host: address for host, _, address in hosts}
    if c.stop_grace_period is not None:
        seconds = grammar.parse_duration(c.stop_grace_period)
        args["stop_timeout"] = max(0, math.ceil(seconds))
    if c.healthcheck is not None:
        args["healthcheck"] = _healthcheck(c)
    return args


def _device_requests(c: Container) -> list[dict[str, Any]]:
    if c.deploy is None or c.deploy.resources is None:
        return []
    reservations = c.deploy.resources.reservations
    if reservations is None:
        return []
    requests = []
    for device in reservations.devices:
        request: dict[str, Any] = {"capabilities": [list(device.capabilities)]}
        if device.driver is not None:
            request["driver"] = device.driver
        if device.device_ids:
            request["device_ids"] = list(device.device_ids)
        else:
            request["count"] = -1 if device.count in (None, "all") else device.count
        if device.options:
            request["options"] = dict(device.options)
        requests.append(request)
    return requests


def _healthcheck(c: Container) -> dict[str, Any]:
    check = c.healthcheck
    assert check is not None
    if check.disable:
        return {"test": ["NONE"]}
    result: dict[str, Any] = {}
    if check.test is not None:
        result["test"] = check.test
    for key in ("interval", "timeout", "start_period"):
        value = getattr(check, key)
        if value is not None:
            result[key] = value
    if check.retries is not None:
        result["retries"] = check.retries
    return result
