"""Reading pipeline documents (YAML or JSON) into plain data.

Documents come from whoever can reach the server's API, so reading one is bounded:

- only plain YAML types are built (``yaml.SafeLoader``); a language tag such as
  ``!!python/object`` or a local tag ``!thing`` is refused with its name;
- aliases are counted as what they expand to: a document that grows past
  ``MAX_EXPANDED_NODES`` values through ``&anchor``/``*alias`` (the "billion laughs")
  or refers to itself is refused before anything walks the expanded tree;
- nesting deeper than ``MAX_DEPTH`` is refused rather than exhausting the stack.
"""

from __future__ import annotations

import re
from typing import Any, Final

import yaml

from .errors import Problem, ValidationError, join_path

#: Values a document may hold once its aliases are expanded. A real template holds a
#: few hundred; this leaves room for generated ones and stops a bomb in milliseconds.
MAX_EXPANDED_NODES: Final = 100_000
#: Nesting a document may have; templates nest six or seven levels.
MAX_DEPTH: Final = 64


class _TooLarge(Exception):
    """The composed document breaks one of the bounds; the message says which."""


class WrittenInt(int):
    """An integer that remembers the text it was written as (``0x10``, ``1_000``).

    It is an ``int`` everywhere (a capacity, a retry count); where a value reaches a
    container or a label as text, ``written`` gives what the author wrote.
    """

    written: str

    @classmethod
    def of(cls, value: int, written: str) -> WrittenInt:
        number = cls(value)
        number.written = written
        return number


class WrittenFloat(float):
    """A float that remembers the text it was written as (``1.50``, ``1e3``)."""

    written: str

    @classmethod
    def of(cls, value: float, written: str) -> WrittenFloat:
        number = cls(value)
        number.written = written
        return number


def written_text(value: Any) -> str | None:
    """The text a number read from YAML was written as; None for other values."""
    written = getattr(value, "written", None)
    return written if isinstance(written, str) else None


class _DocumentLoader(yaml.SafeLoader):
    """``yaml.safe_load`` without YAML 1.1's surprises, with the bounds above.

    YAML 1.1 quietly changes what an author wrote, and templates pass values on as text
    (an env value, a port): an unquoted ``22:22`` is the base-60 number 1342, ``0123``
    is the octal 83, and ``yes``/``no``/``on``/``off`` are booleans. Here those scalars
    stay the strings they look like, as YAML 1.2 and Docker Compose read them; only
    ``true``/``false`` are booleans and a number with a leading zero is text. A key
    written twice in one mapping is an error rather than the last one silently winning;
    the error names the key's whole path (``steps[1].container.environment.FOO``).
    """

    #: The document being built, for the path of a key written twice.
    _root: yaml.Node | None = None

    def construct_yaml_int(self, node: Any) -> Any:
        value = super().construct_yaml_int(node)
        return WrittenInt.of(value, node.value)

    def construct_yaml_float(self, node: Any) -> Any:
        value = super().construct_yaml_float(node)
        return WrittenFloat.of(value, node.value)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str | int | float | bool) and key in seen:
                path = join_path(_path_to(self._root, node), _key_text(key_node))
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"the key {path} is written twice (first on line "
                    f"{seen[key].line + 1}); keep one",
                    key_node.start_mark,
                )
            if isinstance(key, str | int | float | bool):
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)

    def compose_node(self, parent: Any, index: Any) -> Any:
        # Counted while composing, so a deep document stops before the stack does.
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooLarge(
                    f"the document nests deeper than {MAX_DEPTH} levels; flatten it"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        self._root = node
        return self.construct_document(node)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a node graph that refers to itself or expands past the bound."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    # Iterative post-order walk: (node, children counted yet?).
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_nodes.discard(key)
            size = 1 + sum(sizes[id(child)] for child in _children(node))
            if size > MAX_EXPANDED_NODES:
                raise _TooLarge(
                    f"the document expands to more than {MAX_EXPANDED_NODES} values "
                    "through its aliases (&anchor / *alias); write the values out or "
                    "use fewer aliases"
                )
            sizes[key] = size
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise _TooLarge(
                "the document refers to itself through an alias (*alias inside its "
                "own &anchor); remove the recursion"
            )
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node))


def _path_to(root: yaml.Node | None, target: yaml.Node) -> str:
    """The path of ``target`` below ``root`` (``steps[1].container``), in the notation
    of ``Problem``; the first one found when aliases put it in several places.

    Walked only when a problem is found, so a good document costs nothing."""
    if root is None:
        return ""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if node is target:
            return path
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            children = [
                (child, join_path(path, index))
                for index, child in enumerate(node.value)
            ]
        elif isinstance(node, yaml.MappingNode):
            children = [
                (value, join_path(path, _key_text(key))) for key, value in node.value
            ]
        else:
            children = []
        stack.extend(reversed(children))  # the first place in the document wins
    return ""


def _key_text(key: yaml.Node) -> str:
    """A mapping key as written; a key that is itself a list or mapping as ``?``."""
    return str(key.value) if isinstance(key, yaml.ScalarNode) else "?"


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


_BASE60 = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")


#: Scalars that stay text: base-60 numbers, numbers with a leading zero (YAML 1.1's
#: octal), and the YAML 1.1 booleans other than true and false.
_STAYS_TEXT = {
    "tag:yaml.org,2002:int": re.compile(
        r"^(?:[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+|[-+]?0[0-9_]+)$"
    ),
    "tag:yaml.org,2002:float": _BASE60,
    "tag:yaml.org,2002:bool": re.compile(r"^(?!(?:true|True|TRUE|false|False|FALSE)$)"),
}


def _narrow_implicit_types() -> None:
    resolvers: dict[Any, Any] = {}
    for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items():
        kept = []
        for tag, regexp in entries:
            if tag in _STAYS_TEXT:
                regexp = _unless(_STAYS_TEXT[tag], regexp)
            kept.append((tag, regexp))
        resolvers[first] = kept
    _DocumentLoader.yaml_implicit_resolvers = resolvers


def _unless(text: re.Pattern[str], regexp: re.Pattern[str]) -> re.Pattern[str]:
    class _Filtered:
        def match(self, value: str) -> re.Match[str] | None:
            if text.match(value):
                return None
            return regexp.match(value)

    return _Filtered()  # type: ignore[return-value]


_narrow_implicit_types()
_DocumentLoader.add_constructor(
    "tag:yaml.org,2002:int",
    _DocumentLoader.construct_yaml_int,
)
_DocumentLoader.add_constructor(
    "tag:yaml.org,2002:float",
    _DocumentLoader.construct_yaml_float,
)


def parse_document(text: str | bytes, *, source: str = "<document>") -> dict[str, Any]:
    """Parse a YAML (or JSON) pipeline document into plain data.

    Only plain YAML types are built (as ``yaml.safe_load`` does). A syntax error, an
    empty document or a top level that is not a mapping raises ``ValidationError``
    whose problem names ``source`` and, for syntax errors, the line and column.
    """
    data = _load(text, source)
    if data is None:
        raise ValidationError([Problem(source, "the document is empty")])
    if not isinstance(data, dict):
        message = (
            f"the document's top level is {_kind(data)}; write a mapping with name, "
            "steps and the other template fields"
        )
        raise ValidationError([Problem(source, message)])
    return data


def _load(text: str | bytes, source: str) -> Any:
    """Any YAML value, read with the rules above; errors as ``ValidationError``."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise ValidationError(
                [Problem(source, f"the document is not UTF-8 text ({err.reason})")]
            ) from None

    try:
        return yaml.load(text, Loader=_DocumentLoader)
    except _TooLarge as err:
        raise ValidationError([Problem(source, str(err))]) from None
    except yaml.constructor.ConstructorError as err:
        if "tag" not in (err.problem or ""):
            raise _invalid_yaml(err, source) from None
        message = (
            f"the document uses a tag YAML cannot build safely ({err.problem}); only "
            "plain YAML values are allowed: remove the !tag"
        )
        raise ValidationError([Problem(source, message)]) from None
    except yaml.MarkedYAMLError as err:
        raise _invalid_yaml(err, source) from None
    except yaml.YAMLError as err:
        message = f"the document is not valid YAML: {err}"
        raise ValidationError([Problem(source, message)]) from None


def _invalid_yaml(err: yaml.MarkedYAMLError, source: str) -> ValidationError:
    mark = err.problem_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else source
    what = err.problem or str(err)
    message = f"the document is not valid YAML at {where}: {what}"
    return ValidationError([Problem(source, message)])


class ConfigError(ValueError):
    """A configuration file that cannot be read; the message names the file."""


def parse_config(text: str | bytes, *, source: str) -> dict[str, Any]:
    """Read a ``--config`` file with the rules of pipeline documents.

    The same YAML 1.2 scalars (``no``, ``on``, ``010`` and ``1:30`` stay text; numbers
    remember how they were written), the same refusal of a key written twice and of
    tags, the same bounds. An empty file is no settings. Raises ``ConfigError`` naming
    ``source`` and where in it the problem is.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise ConfigError(f"{source}: not UTF-8 text ({err.reason})") from None
    try:
        data = _load(text, source)
    except ValidationError as err:
        message = "; ".join(p.message for p in err.problems)
        message = message.replace("the document", "the file")
        raise ConfigError(f"{source}: {message}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the file's top level is {_kind(data)}; write a mapping of "
            "settings"
        )
    return data


def _kind(value: Any) -> str:
    """What a YAML value is, in the words the validation messages use (``loading``)."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    return "not a mapping"
