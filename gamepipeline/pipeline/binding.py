"""Binding a template to the args and envs of one run."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import Problem, ValidationError
from .expressions import (
    SCRIPT_VARIABLE_PREFIX,
    ExpressionError,
    Reference,
    map_strings,
    script_variable,
    substitute,
    substitute_in_script,
)
from .loading import validate_model
from .model import Step, Template


@dataclass(frozen=True)
class BoundPipeline:
    """A template with its args and envs substituted: every value is final.

    ``template`` is the template as written; ``resolved`` is the same template with
    every ``${{ … }}`` replaced and every ``$${{`` unescaped, validated with all grammar
    rules. ``args`` and ``envs`` hold the values used (declared names only).
    """

    template: Template
    resolved: Template
    args: Mapping[str, str] = field(default_factory=dict)
    envs: Mapping[str, str] = field(default_factory=dict)

    @property
    def steps(self) -> list[Step]:
        return self.resolved.steps

    @property
    def timeout_seconds(self) -> float | None:
        """The pipeline's own timeout in seconds, or None for no limit."""
        return self.resolved.timeout_seconds


def bind(
    template: Template, args: Mapping[str, str], envs: Mapping[str, str]
) -> BoundPipeline:
    """Substitute ``args`` and ``envs`` into ``template`` and check the result.

    Every declared arg and env needs a value (all missing names are listed at once);
    an arg that the template does not declare is an error; envs that it does not
    declare are ignored, since servers and nodes provide many. After substitution every
    field's grammar is checked again, and problems name the field's path.
    """
    problems = _check_values(template, args, envs)
    if problems:
        raise ValidationError(problems)

    used_args = {name: args[name] for name in template.args}
    used_envs = {name: envs[name] for name in template.envs}

    def resolve(ref: Reference) -> str:
        return (used_args if ref.kind == "args" else used_envs)[ref.name]

    document = template.to_document()
    scripts = _take_scripts(document)
    resolved_doc: dict[str, Any] = {
        key: value
        if key in ("envs", "args")
        else map_strings(value, lambda text: substitute(text, resolve))
        for key, value in document.items()
    }
    problems = _put_scripts_back(resolved_doc, scripts, resolve)
    if problems:
        raise ValidationError(problems)
    resolved = validate_model(Template, resolved_doc, bound=True)
    return BoundPipeline(template, resolved, used_args, used_envs)


def _check_values(
    template: Template, args: Mapping[str, str], envs: Mapping[str, str]
) -> list[Problem]:
    problems: list[Problem] = []
    declared = ", ".join(template.args) or "none"
    for name in args:
        if name not in template.args:
            problems.append(
                Problem(
                    f"args.{name}",
                    f"the template does not declare the arg {name!r} (declared: "
                    f"{declared}); remove it or declare it in args",
                )
            )
    for kind, given, names in (
        ("args", args, template.args),
        ("envs", envs, template.envs),
    ):
        for name in names:
            if name not in given:
                problems.append(
                    Problem(
                        f"{kind}.{name}",
                        f"{name} is declared in {kind} but no value was given; "
                        f"give {name}=VALUE",
                    )
                )
            elif not isinstance(given[name], str):
                problems.append(
                    Problem(
                        f"{kind}.{name}",
                        f"the value {given[name]!r} is not text; pass it as a string",
                    )
                )
    return problems


def _take_scripts(document: dict[str, Any]) -> dict[int, list[Any]]:
    """Take each step's ``commands`` out of ``document``, by step index: they are
    substituted as shell (``substitute_in_script``), not as text."""
    scripts: dict[int, list[Any]] = {}
    for index, step in enumerate(document.get("steps") or []):
        container = step.get("container") if isinstance(step, dict) else None
        if isinstance(container, dict) and isinstance(container.get("commands"), list):
            scripts[index] = container.pop("commands")
    return scripts


def _put_scripts_back(
    document: dict[str, Any],
    scripts: Mapping[int, list[Any]],
    resolve: Callable[[Reference], str],
) -> list[Problem]:
    """Give each step its ``commands`` back with every expression turned into a shell
    variable, and the variables with their values to the container's environment."""
    problems: list[Problem] = []
    for index, lines in scripts.items():
        container = document["steps"][index]["container"]
        environment = container.get("environment")
        if not isinstance(environment, dict):
            environment = {}
        where = f"steps[{index}].container"
        for name in environment:
            if str(name).startswith(tuple(SCRIPT_VARIABLE_PREFIX.values())):
                problems.append(
                    Problem(
                        f"{where}.environment.{name}",
                        f"{name} is reserved: a commands step passes its "
                        "${{ args.NAME }} and ${{ envs.NAME }} values in "
                        "GAMEPIPELINE_ARG_* and GAMEPIPELINE_ENV_* variables; rename it",
                    )
                )
        substituted = []
        for number, line in enumerate(lines):
            if not isinstance(line, str):
                substituted.append(line)
                continue
            try:
                text, used = substitute_in_script(line)
            except ExpressionError as err:
                problems.append(Problem(f"{where}.commands[{number}]", str(err)))
                continue
            substituted.append(text)
            for ref in used:
                environment[script_variable(ref)] = resolve(ref)
        container["commands"] = substituted
        if environment:
            container["environment"] = environment
    return problems
