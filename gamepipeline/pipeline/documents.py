"""Reading pipeline documents (YAML or JSON) into plain data."""

from __future__ import annotations

import re
from typing import Any

import yaml

from .errors import Problem, ValidationError


class _DocumentLoader(yaml.SafeLoader):
    """``yaml.safe_load`` without YAML 1.1's base-60 numbers.

    Under YAML 1.1 an unquoted ``22:22`` is the number 1342, which silently turns a port
    mapping into a different port. Here such a scalar stays a string; every other
    implicit type (bool, int, float, null, timestamp) resolves as ``safe_load`` does.
    """


_BASE60 = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")


def _drop_base60() -> None:
    resolvers: dict[Any, Any] = {}
    for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items():
        kept = []
        for tag, regexp in entries:
            if tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
                regexp = _without_base60(regexp)
            kept.append((tag, regexp))
        resolvers[first] = kept
    _DocumentLoader.yaml_implicit_resolvers = resolvers


def _without_base60(regexp: re.Pattern[str]) -> re.Pattern[str]:
    class _Filtered:
        def match(self, value: str) -> re.Match[str] | None:
            if _BASE60.match(value):
                return None
            return regexp.match(value)

    return _Filtered()  # type: ignore[return-value]


_drop_base60()


def parse_document(text: str | bytes, *, source: str = "<document>") -> dict[str, Any]:
    """Parse a YAML (or JSON) pipeline document into plain data.

    Only plain YAML types are built (as ``yaml.safe_load`` does). A syntax error, an
    empty document or a top level that is not a mapping raises ``ValidationError``
    whose problem names ``source`` and, for syntax errors, the line and column.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise ValidationError(
                [Problem(source, f"the document is not UTF-8 text ({err.reason})")]
            ) from None

    try:
        data = yaml.load(text, Loader=_DocumentLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else source
        what = err.problem or str(err)
        message = f"the document is not valid YAML at {where}: {what}"
        raise ValidationError([Problem(source, message)]) from None
    except yaml.YAMLError as err:
        message = f"the document is not valid YAML: {err}"
        raise ValidationError([Problem(source, message)]) from None

    if data is None:
        raise ValidationError([Problem(source, "the document is empty")])
    if not isinstance(data, dict):
        kind = type(data).__name__
        message = (
            f"the document's top level is a {kind}; write a mapping with name, "
            "steps and the other template fields"
        )
        raise ValidationError([Problem(source, message)])
    return data
