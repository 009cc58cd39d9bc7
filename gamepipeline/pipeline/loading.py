"""Turning plain data into a ``Template``, with every problem reported at once."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any

import pydantic
from pydantic import BaseModel

from .documents import parse_document
from .errors import GrammarError, Problem, ValidationError, join_path
from .expressions import check_references
from .model import Template

_EXPECTED = {
    "string_type": "text",
    "bool_type": "true or false",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def load_template(data: Mapping[str, Any] | str | bytes) -> Template:
    """Validate a template document (plain data, YAML or JSON text).

    Raises ``ValidationError`` listing every problem: unknown fields (with the closest
    known one), wrong types, values that break a field's grammar, and ``${{ … }}``
    expressions that are malformed or name an undeclared arg or env.
    """
    if isinstance(data, str | bytes):
        data = parse_document(data)
    if not isinstance(data, Mapping):
        raise ValidationError(
            [Problem("", f"a template is a mapping, not a {type(data).__name__}")]
        )
    return validate_model(Template, dict(data), bound=False, declared=_declared(data))


def validate_model(
    model: type[Template],
    data: dict[str, Any],
    *,
    bound: bool,
    declared: dict[str, set[str]] | None = None,
) -> Template:
    """Validate ``data`` as ``model``, turning every failure into a ``Problem``."""
    problems: list[Problem] = []
    if declared is not None:
        checked = {k: v for k, v in data.items() if k not in ("envs", "args")}
        problems.extend(check_references(checked, "", declared))
    try:
        result = model.model_validate(data, context={"bound": bound})
    except pydantic.ValidationError as err:
        problems = problems_of(err, model) + problems
        raise ValidationError(_unique(problems)) from None
    if problems:
        raise ValidationError(_unique(problems))
    return result


def _declared(data: Mapping[str, Any]) -> dict[str, set[str]]:
    def names(value: Any) -> set[str]:
        if not isinstance(value, list):
            return set()
        entries = (v.get("name") if isinstance(v, Mapping) else v for v in value)
        return {name for name in entries if isinstance(name, str)}

    return {"args": names(data.get("args")), "envs": names(data.get("envs"))}


def _unique(problems: list[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))


def problems_of(err: pydantic.ValidationError, model: type[BaseModel]) -> list[Problem]:
    """One or more ``Problem`` for each pydantic error, in the document's words."""
    problems: list[Problem] = []
    for error in err.errors(include_url=False):
        loc = tuple(error["loc"])
        path = path_of(loc)
        kind = error["type"]
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, GrammarError):
            for suffix, message in cause.problems:
                where = (
                    path + suffix if path or not suffix.startswith(".") else suffix[1:]
                )
                problems.append(Problem(where, message))
        elif isinstance(cause, ValueError):
            problems.append(Problem(path, str(cause)))
        elif kind == "extra_forbidden":
            problems.append(Problem(path, _unknown(loc, model)))
        elif kind == "missing":
            problems.append(
                Problem(path, f'the required field "{loc[-1]}" is missing; add it')
            )
        elif kind == "literal_error":
            expected = (error.get("ctx") or {}).get("expected", "")
            problems.append(
                Problem(path, f"{_show(error['input'])} is not allowed; use {expected}")
            )
        elif kind in _EXPECTED:
            problems.append(
                Problem(
                    path, f"expected {_EXPECTED[kind]}, got {_show(error['input'])}"
                )
            )
        else:
            problems.append(Problem(path, f"{_show(error['input'])}: {error['msg']}"))
    return problems


def path_of(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path = join_path(path, part)
    return path


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unknown(loc: tuple[Any, ...], model: type[BaseModel]) -> str:
    key = str(loc[-1])
    known = _known_keys(loc[:-1], model)
    message = f'"{key}" is not a known field'
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f'{message}; did you mean "{close[0]}"?'
    if known:
        return f"{message}; known fields here: {', '.join(sorted(known))}"
    return message


def _known_keys(loc: tuple[Any, ...], model: type[BaseModel]) -> list[str]:
    """The field names of the model found at ``loc`` below ``model``."""
    annotation: Any = model
    for part in loc:
        annotation = _step_into(annotation, part)
        if annotation is None:
            return []
    target = _model_in(annotation)
    return list(target.model_fields) if target else []


def _step_into(annotation: Any, part: Any) -> Any:
    for candidate in _members(annotation):
        if isinstance(part, str) and _is_model(candidate):
            field = candidate.model_fields.get(part)
            if field is not None:
                return field.annotation
        origin = typing.get_origin(candidate)
        if isinstance(part, int) and origin is list:
            return typing.get_args(candidate)[0]
        if isinstance(part, str) and origin is dict:
            return typing.get_args(candidate)[1]
    return None


def _members(annotation: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return typing.get_args(annotation)
    return (annotation,)


def _is_model(candidate: Any) -> bool:
    return isinstance(candidate, type) and issubclass(candidate, BaseModel)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    for candidate in _members(annotation):
        if _is_model(candidate):
            return typing.cast(type[BaseModel], candidate)
    return None
