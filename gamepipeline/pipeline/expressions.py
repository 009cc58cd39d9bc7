"""``${{ args.NAME }}`` and ``${{ envs.NAME }}`` inside string values.

An expression names one declared arg or env; any other expression is an error. To write
the characters ``${{`` literally, double the dollar sign: ``$${{`` stands for ``${{``
and is never substituted.

In a ``commands`` line (shell script) an expression is not pasted in as text, where a
value like ``x; rm -rf /data`` would run as code: ``substitute_in_script`` turns it into
the expansion of a shell variable that holds the value (``"${GAMEPIPELINE_ARG_NAME}"``),
quoted for where it stands, so the value is always one literal piece of text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .errors import Problem, join_path

_TOKEN = re.compile(r"\$\$\{\{|\$\{\{(.*?)\}\}", re.S)
_REFERENCE = re.compile(r"^\s*(args|envs)\.([A-Za-z_][A-Za-z0-9_]*)\s*$")
OPEN = "${{"
ESCAPED_OPEN = "$${{"


@dataclass(frozen=True)
class Reference:
    """One ``${{ kind.name }}`` found in a string."""

    kind: str  # "args" or "envs"
    name: str


class ExpressionError(ValueError):
    """A ``${{ … }}`` that is not ``args.NAME`` or ``envs.NAME``."""


def _scan(text: str) -> Iterator[tuple[int, int, str | Reference]]:
    """Yield (start, end, replacement) for each escape and each expression."""
    pos = 0
    for match in _TOKEN.finditer(text):
        if match.group(0) == ESCAPED_OPEN:
            yield match.start(), match.end(), OPEN
        else:
            inner = match.group(1)
            ref = _REFERENCE.match(inner)
            if ref is None:
                raise ExpressionError(
                    f'"${{{{{inner}}}}}" is not an expression this language knows; '
                    f'write ${{{{ args.NAME }}}} or ${{{{ envs.NAME }}}}, or "$${{{{" '
                    "for a literal ${{"
                )
            yield match.start(), match.end(), Reference(ref.group(1), ref.group(2))
        pos = match.end()
    rest = text[pos:]
    if OPEN in rest.replace(ESCAPED_OPEN, ""):
        raise ExpressionError(
            '"${{" is not closed by "}}"; close the expression, or write "$${{" for a '
            "literal ${{"
        )


def references(text: str) -> list[Reference]:
    """The references in a string, in order. Raises ``ExpressionError``."""
    return [r for _, _, r in _scan(text) if isinstance(r, Reference)]


def has_expression(text: str) -> bool:
    """Whether the string contains ``${{`` in any form (expression or escape)."""
    return OPEN in text


def substitute(text: str, resolve: Callable[[Reference], str]) -> str:
    """Replace every expression by ``resolve(ref)`` and every ``$${{`` by ``${{``."""
    parts: list[str] = []
    pos = 0
    for start, end, replacement in _scan(text):
        parts.append(text[pos:start])
        if isinstance(replacement, Reference):
            parts.append(resolve(replacement))
        else:
            parts.append(replacement)
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


def walk_strings(data: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Yield (path, value) for every string value inside plain data."""
    if isinstance(data, str):
        yield path, data
    elif isinstance(data, Mapping):
        for key, value in data.items():
            yield from walk_strings(value, join_path(path, str(key)))
    elif isinstance(data, list | tuple):
        for index, value in enumerate(data):
            yield from walk_strings(value, join_path(path, index))


def map_strings(data: Any, change: Callable[[str], str]) -> Any:
    """A copy of plain data with ``change`` applied to every string value."""
    if isinstance(data, str):
        return change(data)
    if isinstance(data, Mapping):
        return {key: map_strings(value, change) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [map_strings(value, change) for value in data]
    return data


def check_references(
    data: Any, path: str, declared: Mapping[str, set[str]]
) -> list[Problem]:
    """Problems for malformed expressions and references to undeclared names."""
    problems: list[Problem] = []
    for where, text in walk_strings(data, path):
        if OPEN not in text:
            continue
        try:
            found = references(text)
        except ExpressionError as err:
            problems.append(Problem(where, str(err)))
            continue
        for ref in found:
            if ref.name not in declared[ref.kind]:
                problems.append(Problem(where, _undeclared(ref, declared[ref.kind])))
    return problems


def _undeclared(ref: Reference, names: set[str]) -> str:
    listed = ", ".join(sorted(names)) if names else "none"
    return (
        f"${{{{ {ref.kind}.{ref.name} }}}} names {ref.name!r}, which the template "
        f"does not declare in {ref.kind} (declared: {listed}); add it to {ref.kind}"
    )


#: The shell variable that carries a value into a ``commands`` script, by kind.
SCRIPT_VARIABLE_PREFIX: Final = {
    "args": "GAMEPIPELINE_ARG_",
    "envs": "GAMEPIPELINE_ENV_",
}

_UNQUOTED, _SINGLE, _DOUBLE = "unquoted", "single", "double"


def script_variable(ref: Reference) -> str:
    """The name of the shell variable that holds ``ref``'s value in a script."""
    return SCRIPT_VARIABLE_PREFIX[ref.kind] + ref.name


def substitute_in_script(text: str) -> tuple[str, list[Reference]]:
    """A shell line with each expression replaced by its variable's expansion.

    The expansion is written for the quoting it stands in: ``"${V}"`` outside quotes
    (no word splitting, no globbing), ``${V}`` inside double quotes, and
    ``'"${V}"'`` inside single quotes (closing and reopening them). The shell never
    reads an expanded value as code, whatever it holds. ``$${{`` becomes ``${{``.
    Returns the line and the references it used, in order.

    Raises:
        ExpressionError: a bad expression, or a backslash right before one.
    """
    parts: list[str] = []
    used: list[Reference] = []
    state, escaped = _UNQUOTED, False
    pos = 0
    for start, end, replacement in _scan(text):
        literal = text[pos:start]
        state, escaped = _shell_state(literal, state, escaped)
        parts.append(literal)
        if isinstance(replacement, Reference):
            if escaped:
                raise ExpressionError(
                    "a backslash stands right before ${{ "
                    f"{replacement.kind}.{replacement.name} }}}}; remove it (the "
                    "value is inserted as literal text already)"
                )
            variable = "${" + script_variable(replacement) + "}"
            parts.append(
                {
                    _UNQUOTED: f'"{variable}"',
                    _DOUBLE: variable,
                    _SINGLE: f"'\"{variable}\"'",
                }[state]
            )
            used.append(replacement)
        else:
            parts.append(replacement)
            state, escaped = _shell_state(replacement, state, escaped)
        pos = end
    parts.append(text[pos:])
    return "".join(parts), used


def _shell_state(text: str, state: str, escaped: bool) -> tuple[str, bool]:
    """The quoting in force after ``text``: POSIX shell's quote and backslash rules,
    enough to know where an expansion stands."""
    for char in text:
        if escaped:
            escaped = False
        elif state == _SINGLE:
            if char == "'":
                state = _UNQUOTED
        elif char == "\\":
            escaped = True
        elif state == _DOUBLE:
            if char == '"':
                state = _UNQUOTED
        elif char == "'":
            state = _SINGLE
        elif char == '"':
            state = _DOUBLE
    return state, escaped
