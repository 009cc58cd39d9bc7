"""The template model: what a pipeline document may say, checked field by field.

Validation runs in one of two modes, chosen by the validation context:

- a *template* (``context={"bound": False}``, the default): values that still hold a
  ``${{ … }}`` expression are only type-checked, since their final text is not known;
- a *bound* pipeline (``context={"bound": True}``): every value is final and every
  grammar rule applies.

Field validators raise ``GrammarError`` so that one field can report several problems,
each with its own path (``ports[1]``, ``environment.KEY``).
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from . import grammar
from .errors import GrammarError
from .expressions import has_expression

RESERVED_LABEL_PREFIX = "io.beaglewind.gamepipeline."
_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"

#: A step that failed this many times will not pass on the next try either.
MAX_RETRIES = 100


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _bound(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("bound"))


def _final(value: str, info: ValidationInfo) -> bool:
    """Whether a string's grammar can be checked now."""
    return _bound(info) or not has_expression(value)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text_list(
    value: Any,
    info: ValidationInfo,
    check: Any = None,
    *,
    numbers: bool = False,
    what: str = "text",
) -> list[str]:
    """A list of strings, each checked by ``check`` when its text is final."""
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, list):
        raise GrammarError.one(f"expected a list of {what}, got {_describe(value)}")
    problems: list[tuple[str, str]] = []
    items: list[str] = []
    for index, item in enumerate(value):
        if numbers and isinstance(item, int) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(item, str):
            problems.append((f"[{index}]", f"expected {what}, got {_describe(item)}"))
            continue
        if check is not None and _final(item, info):
            try:
                check(item)
            except ValueError as err:
                problems.append((f"[{index}]", str(err)))
        items.append(item)
    if problems:
        raise GrammarError(problems)
    return items


def _text_map(value: Any, field: str, *, nulls: str) -> dict[str, str]:
    """A map or ``KEY=VALUE`` list of scalars → ``dict[str, str]``."""
    if value is None:
        return {}
    problems: list[tuple[str, str]] = []
    result: dict[str, str] = {}
    if isinstance(value, list):
        for index, item in enumerate(value):
            if not isinstance(item, str) or "=" not in item:
                problems.append(
                    (
                        f"[{index}]",
                        f"{_describe(item)} is not KEY=VALUE; write each {field} "
                        "entry as KEY=VALUE, or use a mapping",
                    )
                )
                continue
            key, _, text = item.partition("=")
            if not key:
                problems.append((f"[{index}]", f'"{item}" has no name before "="'))
            elif key in result:
                problems.append((f"[{index}]", f'"{key}" is given twice; keep one'))
            result[key] = text
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not key or "=" in key:
                problems.append(
                    ("", f"{_describe(key)} is not a {field} name; use text without =")
                )
                continue
            if item is None:
                problems.append((f".{key}", nulls.format(key=key)))
                continue
            try:
                result[key] = grammar.scalar_text(item)
            except ValueError as err:
                problems.append((f".{key}", str(err)))
    else:
        raise GrammarError.one(
            f"expected a mapping or a list of KEY=VALUE, got {_describe(value)}"
        )
    if problems:
        raise GrammarError(problems)
    return result


class DeviceRequest(_Strict):
    """One entry of ``deploy.resources.reservations.devices`` (a GPU request)."""

    driver: str | None = None
    count: int | Literal["all"] | None = None
    device_ids: list[str] | None = None
    capabilities: list[str]
    options: dict[str, str] | None = None

    @field_validator("count", mode="before")
    @classmethod
    def _count(cls, value: Any) -> Any:
        if value is None or value == "all":
            return value
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        raise GrammarError.one(
            f'{_describe(value)} is not a device count; write a number from 1 or "all"'
        )

    @field_validator("capabilities", mode="before")
    @classmethod
    def _capabilities(cls, value: Any, info: ValidationInfo) -> list[str]:
        if (
            isinstance(value, list)
            and value
            and all(isinstance(v, list) for v in value)
        ):
            raise GrammarError.one(
                "capabilities is one list of capabilities that must all be present; "
                "write [gpu, utility], not a list of lists"
            )
        items = _text_list(value, info, what="capability names")
        if not items:
            raise GrammarError.one("name at least one capability, such as [gpu]")
        return items

    @model_validator(mode="after")
    def _count_or_ids(self) -> DeviceRequest:
        if self.count is not None and self.device_ids:
            raise GrammarError.one(
                "count and device_ids are both given, and the engine refuses both at "
                "once; keep device_ids to pick GPUs, or count to take any",
                ".count",
            )
        return self


class Reservations(_Strict):
    devices: list[DeviceRequest] = Field(default_factory=list)


class Resources(_Strict):
    reservations: Reservations | None = None


class Deploy(_Strict):
    resources: Resources | None = None


class Ulimit(_Strict):
    soft: int
    hard: int


class Healthcheck(_Strict):
    """Compose's healthcheck: ``test`` plus timing."""

    test: str | list[str] | None = None
    interval: str | None = None
    timeout: str | None = None
    start_period: str | None = None
    retries: int | None = None
    disable: bool = False

    @field_validator("test", mode="before")
    @classmethod
    def _test(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or isinstance(value, str):
            return value
        return _text_list(value, info, what="command words")

    @field_validator("interval", "timeout", "start_period", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if value is None:
            return None
        grammar.parse_duration(value)
        return value if isinstance(value, str) else f"{value}s"


_RESTART = ("no", "always", "unless-stopped", "on-failure")


class Container(_Strict):
    """A step's container, in Docker Compose's words.

    ``image`` is required by every step type but ``remove``, which only names the
    container to remove (``Step`` checks this).
    """

    image: str | None = None
    container_name: str | None = None
    hostname: str | None = None
    privileged: bool | None = None
    deploy: Deploy | None = None
    security_opt: list[str] = Field(default_factory=list)
    cap_add: list[str] = Field(default_factory=list)
    tmpfs: list[str] = Field(default_factory=list)
    devices: list[str] = Field(default_factory=list)
    volumes: list[str] = Field(default_factory=list)
    ports: list[str] = Field(default_factory=list)
    environment: dict[str, str] = Field(default_factory=dict)
    command: str | list[str] | None = None
    entrypoint: str | list[str] | None = None
    commands: list[str] | None = None
    shm_size: str | None = None
    restart: str | None = None
    network_mode: str | None = None
    ipc: str | None = None
    user: str | None = None
    working_dir: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    ulimits: dict[str, Ulimit] = Field(default_factory=dict)
    runtime: str | None = None
    extra_hosts: list[str] = Field(default_factory=list)
    dns: list[str] = Field(default_factory=list)
    mem_limit: str | None = None
    cpus: float | None = None
    stop_grace_period: str | None = None
    healthcheck: Healthcheck | None = None

    @field_validator("image", mode="before")
    @classmethod
    def _image(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and _final(value, info):
            grammar.check_image(value)
        return value

    @field_validator("container_name", mode="before")
    @classmethod
    def _name(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and _final(value, info):
            grammar.check_container_name(value)
        return value

    @field_validator("hostname", mode="before")
    @classmethod
    def _hostname(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and _final(value, info):
            grammar.check_hostname(value)
        return value

    @field_validator("security_opt", "cap_add", "dns", mode="before")
    @classmethod
    def _plain_list(cls, value: Any, info: ValidationInfo) -> list[str]:
        if isinstance(value, str) and info.field_name == "dns":
            value = [value]
        return _text_list(value, info)

    @field_validator("tmpfs", mode="before")
    @classmethod
    def _tmpfs(cls, value: Any, info: ValidationInfo) -> list[str]:
        if isinstance(value, str):
            value = [value]
        return _text_list(value, info, grammar.parse_tmpfs, what="tmpfs mounts")

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, value: Any, info: ValidationInfo) -> list[str]:
        return _text_list(value, info, grammar.parse_device, what="device mappings")

    @field_validator("volumes", mode="before")
    @classmethod
    def _volumes(cls, value: Any, info: ValidationInfo) -> list[str]:
        return _text_list(value, info, grammar.parse_volume, what="volumes")

    @field_validator("ports", mode="before")
    @classmethod
    def _ports(cls, value: Any, info: ValidationInfo) -> list[str]:
        return _text_list(
            value, info, grammar.parse_port, numbers=True, what="port mappings"
        )

    @field_validator("environment", mode="before")
    @classmethod
    def _environment(cls, value: Any) -> dict[str, str]:
        return _text_map(
            value,
            "environment",
            nulls='{key} has no value; write {key}: "" for an empty value, or remove '
            "the key",
        )

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> dict[str, str]:
        labels = _text_map(
            value, "label", nulls='label {key} has no value; write {key}: ""'
        )
        reserved = [k for k in labels if k.startswith(RESERVED_LABEL_PREFIX)]
        if reserved:
            raise GrammarError(
                [
                    (
                        f".{k}",
                        f"labels starting with {RESERVED_LABEL_PREFIX} are set "
                        "by GamePipeline itself; choose another name",
                    )
                    for k in reserved
                ]
            )
        return labels

    @field_validator("command", "entrypoint", mode="before")
    @classmethod
    def _command(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            if _final(value, info):
                grammar.split_command(value)
            return value
        words = _text_list(value, info, numbers=True, what="command words")
        if not words:
            raise GrammarError.one(
                "the list is empty; leave the field out to keep the image's own"
            )
        return words

    @field_validator("commands", mode="before")
    @classmethod
    def _commands(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return None
        lines = _text_list(value, info, what="shell lines")
        if not lines:
            raise GrammarError.one("commands is empty; give at least one shell line")
        return lines

    @field_validator("shm_size", "mem_limit", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        if value is None:
            return None
        return grammar.parse_size(value)

    @field_validator("stop_grace_period", mode="before")
    @classmethod
    def _grace(cls, value: Any) -> Any:
        if value is None:
            return None
        grammar.parse_duration(value)
        return value if isinstance(value, str) else f"{value}s"

    @field_validator("cpus", mode="before")
    @classmethod
    def _cpus(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
        raise GrammarError.one(f"{_describe(value)} is not a CPU count; write 1.5")

    @field_validator("user", mode="before")
    @classmethod
    def _user(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("working_dir", mode="before")
    @classmethod
    def _working_dir(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and _final(value, info) and not value.startswith("/"):
            raise GrammarError.one(f'"{value}" is relative; write an absolute path')
        return value

    @field_validator("restart", mode="before")
    @classmethod
    def _restart(cls, value: Any) -> Any:
        if value is None or value is False:
            return None if value is None else "no"
        if isinstance(value, str):
            policy, _, count = value.partition(":")
            if policy in _RESTART and (
                not count or (policy == "on-failure" and count.isdigit())
            ):
                return value
        raise GrammarError.one(
            f"{_describe(value)} is not a restart policy; write no, always, "
            "unless-stopped, on-failure or on-failure:N"
        )

    @field_validator("ulimits", mode="before")
    @classmethod
    def _ulimits(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise GrammarError.one(
                f"expected a mapping of limits, got {_describe(value)}; write "
                "nofile: {soft: 1024, hard: 4096} or nproc: 65535"
            )
        result: dict[str, Any] = {}
        for name, limit in value.items():
            if isinstance(limit, int) and not isinstance(limit, bool):
                result[name] = {"soft": limit, "hard": limit}
            else:
                result[name] = limit
        return result

    @field_validator("extra_hosts", mode="before")
    @classmethod
    def _extra_hosts(cls, value: Any, info: ValidationInfo) -> list[str]:
        if isinstance(value, dict):
            value = [f"{k}:{v}" for k, v in value.items()]
        return _text_list(value, info, _check_extra_host, what="HOST:IP entries")

    @model_validator(mode="after")
    def _combinations(self) -> Container:
        problems: list[tuple[str, str]] = []
        if self.shm_size is not None:
            for index, entry in enumerate(self.tmpfs):
                if entry.partition(":")[0].rstrip("/") == "/dev/shm":
                    problems.append(
                        (
                            f".tmpfs[{index}]",
                            f'"{entry}" mounts a tmpfs on /dev/shm while shm_size '
                            f"({self.shm_size}) also sizes /dev/shm; keep one of them",
                        )
                    )
        if self.commands is not None:
            for other in ("command", "entrypoint"):
                if getattr(self, other) is not None:
                    problems.append(
                        (
                            f".{other}",
                            f"{other} is given together with commands, which runs its "
                            f"lines with /bin/sh; drop {other} or commands",
                        )
                    )
        if problems:
            raise GrammarError(problems)
        return self


def _init_errors(err: ValidationError) -> list[Any]:
    """``err``'s errors in the form ``ValidationError.from_exception_data`` takes."""
    return [
        {key: error[key] for key in ("type", "loc", "input", "ctx") if key in error}
        for error in err.errors(include_url=False)
    ]


def _check_extra_host(entry: str) -> None:
    host, sep, address = entry.replace("=", ":", 1).partition(":")
    if not sep or not host:
        raise ValueError(f'"{entry}" is not HOST:IP; write game.local:10.0.0.5')
    if address == "host-gateway":
        return
    try:
        import ipaddress

        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(
            f'"{entry}" maps {host} to "{address}", which is not an IP address; '
            "write HOST:IP or HOST:host-gateway"
        ) from None


def _duration_text(value: Any) -> Any:
    if value is None:
        return None
    grammar.parse_duration(value)
    return value if isinstance(value, str) else f"{value}s"


#: The container fields a ``type: remove`` step may set.
REMOVE_FIELDS = ("container_name", "stop_grace_period")


class Step(_Strict):
    """One step: a container run to completion (``commands``), left running, or
    (``type: remove``) stopped and removed."""

    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"type": {"const": "remove"}}, "required": ["type"]},
            "then": {"properties": {"container": {"required": ["container_name"]}}},
            "else": {"properties": {"container": {"required": ["image"]}}},
        }
    )

    name: str
    type: Literal["container", "service", "remove"] = "container"
    container: Container
    timeout: str | None = None
    retries: int = 0
    retry_delay: str | None = None
    continue_on_error: bool = False

    @field_validator("timeout", "retry_delay", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return _duration_text(value)

    @field_validator("retries", mode="before")
    @classmethod
    def _retries(cls, value: Any) -> Any:
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and 0 <= value <= MAX_RETRIES
        ):
            return value
        raise GrammarError.one(
            f"{_describe(value)} is not a number of retries; write 0 to {MAX_RETRIES}"
        )

    @model_validator(mode="after")
    def _service_has_no_script(self) -> Step:
        if self.type == "service" and self.container.commands is not None:
            raise GrammarError.one(
                "a service step keeps its container running, but commands runs a "
                "script to its end; use type: container for commands, or command for "
                "the service's process",
                ".container.commands",
            )
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _image_required(
        cls, data: Any, handler: ModelWrapValidatorHandler[Step]
    ) -> Step:
        """Every step but ``type: remove`` needs an image, reported with the step's
        other problems even when its type is wrong."""
        container = data.get("container") if isinstance(data, dict) else None
        missing = (
            isinstance(container, dict)
            and data.get("type") != "remove"
            and container.get("image") is None
        )
        try:
            step = handler(data)
        except ValidationError as err:
            if not missing:
                raise
            raise ValidationError.from_exception_data(
                err.title,
                [
                    *_init_errors(err),
                    {
                        "type": "missing",
                        "loc": ("container", "image"),
                        "input": container,
                    },
                ],
            ) from None
        if missing:
            raise GrammarError.one(
                'the required field "image" is missing; add it', ".container.image"
            )
        return step

    @model_validator(mode="after")
    def _removal(self) -> Step:
        if self.type != "remove":
            return self
        problems = [
            (
                f".container.{name}",
                f"a remove step only names the container to remove; drop {name} "
                f"(a remove step takes {' and '.join(REMOVE_FIELDS)})",
            )
            for name in self.container.model_fields_set
            if name not in REMOVE_FIELDS
        ]
        if self.container.container_name is None:
            problems.append(
                (
                    ".container.container_name",
                    "a remove step removes the container named by container_name; "
                    "add it, such as container_name: game-${{ args.INSTANCE }}",
                )
            )
        if problems:
            raise GrammarError(sorted(problems))
        return self

    @property
    def removes(self) -> bool:
        """True for a ``type: remove`` step."""
        return self.type == "remove"

    @property
    def runs_to_completion(self) -> bool:
        """True for a ``commands`` step; False for a step that leaves a service up."""
        return self.container.commands is not None

    @property
    def timeout_seconds(self) -> float | None:
        return None if self.timeout is None else grammar.parse_duration(self.timeout)


_DECLARATION_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {
        "anyOf": [
            {"type": "string"},
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "description": {"type": "string"},
                },
                "required": ["name"],
                "additionalProperties": False,
            },
        ]
    },
}
#: ``args`` and ``envs``: names, each written plain or as ``{name, description}``.
Declarations = Annotated[list[str], WithJsonSchema(_DECLARATION_SCHEMA)]
_DECLARATION_KEYS = ("name", "description")


class Template(_Strict):
    """A pipeline template as the design document defines it.

    ``args`` and ``envs`` hold the declared names. In the document each entry is a
    name or a mapping ``{name: X, description: ...}``; the descriptions are kept
    apart (``descriptions``) so that every user of ``args`` and ``envs`` sees names.
    """

    id: str | None = None
    model: str | None = None
    name: str
    description: str = ""
    envs: Declarations = Field(default_factory=list)
    args: Declarations = Field(default_factory=list)
    steps: list[Step]
    timeout: str | None = None
    #: Labels a node must carry (every one, with the same value) to run the pipeline
    #: when no node is named at submission.
    node_selector: dict[str, str] = Field(default_factory=dict)

    _descriptions: dict[str, dict[str, str]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_descriptions(
        cls, data: Any, handler: ModelWrapValidatorHandler[Template]
    ) -> Template:
        template = handler(data)
        if isinstance(data, dict):
            template._descriptions = {
                kind: _descriptions_of(data.get(kind)) for kind in ("args", "envs")
            }
        return template

    @field_validator("envs", "args", mode="before")
    @classmethod
    def _names(cls, value: Any, info: ValidationInfo) -> list[str]:
        value = _declared_names(value)
        names = _text_list(value, info, _check_identifier, what="names")
        problems = [
            (f"[{i}]", f'"{n}" is declared twice; keep one')
            for i, n in enumerate(names)
            if n in names[:i]
        ]
        if problems:
            raise GrammarError(problems)
        return names

    @field_validator("steps", mode="before")
    @classmethod
    def _steps(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise GrammarError.one("the pipeline has no steps; add at least one")
        return value

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return _duration_text(value)

    @field_validator("node_selector", mode="before")
    @classmethod
    def _node_selector(cls, value: Any) -> dict[str, str]:
        if value is not None and not isinstance(value, dict):
            raise GrammarError.one(
                f"expected a mapping of node label: value, got {_describe(value)}; "
                "write for example {gpu: nvidia}"
            )
        selector = _text_map(
            value,
            "node label",
            nulls='label {key} has no value; write {key}: "" to match an empty value',
        )
        # The server matches the selector before any arg is bound: it must be final.
        problems = [
            (
                f".{key}",
                "node_selector is matched as written; ${{ }} expressions are not "
                "allowed here",
            )
            for key, text in selector.items()
            if has_expression(key) or has_expression(text)
        ]
        if problems:
            raise GrammarError(problems)
        return selector

    @field_validator("description", mode="before")
    @classmethod
    def _description(cls, value: Any) -> Any:
        return "" if value is None else value

    @property
    def timeout_seconds(self) -> float | None:
        return None if self.timeout is None else grammar.parse_duration(self.timeout)

    def descriptions(self, kind: Literal["args", "envs"]) -> dict[str, str]:
        """Each declared arg (or env) name with its description, "" when it has none."""
        written = self._descriptions.get(kind, {})
        return {name: written.get(name, "") for name in getattr(self, kind)}

    def to_document(self) -> dict[str, Any]:
        """Canonical JSON-able data that ``load_template`` accepts back unchanged."""
        document = self.model_dump(mode="json", exclude_defaults=True)
        for kind in ("args", "envs"):
            written = self._descriptions.get(kind)
            if written and kind in document:
                document[kind] = [
                    {"name": name, "description": written[name]}
                    if name in written
                    else name
                    for name in document[kind]
                ]
        return document


def _declared_names(value: Any) -> Any:
    """``args``/``envs`` entries as names; a mapping entry must be ``{name, description}``.

    Raises ``GrammarError`` for a mapping with other keys or a description that is not
    text; anything else is left for the name checks.
    """
    if not isinstance(value, list):
        return value
    problems: list[tuple[str, str]] = []
    names: list[Any] = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            names.append(item)
            continue
        for key in item:
            if key not in _DECLARATION_KEYS:
                problems.append(
                    (
                        f"[{index}].{key}",
                        f'"{key}" is not a known field of a declaration; write '
                        "{name: NAME, description: TEXT}",
                    )
                )
        if "name" not in item:
            problems.append(
                (f"[{index}]", 'the declaration has no "name"; add name: NAME')
            )
        description = item.get("description")
        if description is not None and not isinstance(description, str):
            problems.append(
                (
                    f"[{index}].description",
                    f"expected text, got {_describe(description)}; quote it",
                )
            )
        names.append(item.get("name"))
    if problems:
        raise GrammarError(problems)
    return names


def _descriptions_of(value: Any) -> dict[str, str]:
    """The descriptions written in a valid ``args``/``envs`` list, by name."""
    if not isinstance(value, list):
        return {}
    return {
        item["name"]: item["description"]
        for item in value
        if isinstance(item, dict) and isinstance(item.get("description"), str)
    }


def _check_identifier(name: str) -> None:
    import re

    if not re.match(_IDENTIFIER, name):
        raise ValueError(
            f'"{name}" is not a usable name; use letters, digits and _ , not starting '
            "with a digit"
        )
