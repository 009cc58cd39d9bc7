"""Turning an HTTP submission into a validated pipeline ready to store.

A submission is one of:

- the pipeline document itself, as YAML or JSON, whatever the Content-Type says (the
  design document's ``curl -H "Content-Type: application/json" -d @pipeline.yaml`` sends
  YAML labelled as JSON); args, envs and the node come as query parameters
  ``arg.NAME=VALUE``, ``env.NAME=VALUE`` and ``node=NODE_ID``. A body labelled JSON
  that starts as JSON does (``{`` or ``[``) and that neither JSON nor YAML reads is
  answered with the JSON error, at its line and column: that is what the client meant
  to send;
- a JSON envelope ``{"pipeline": <document object or YAML text>, "args": {...},
  "envs": {...}, "node": "..."}``. Query parameters, if any, add to it and win.

The document must load as a template and bind to the args given: every declared arg needs
a value and no undeclared arg may be given. Envs may be left out: the node running the
pipeline fills them from its own configuration (and its values win over submitted ones),
so only the envs given are checked here.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from gamepipeline.pipeline import bind, load_template, parse_document, written_text
from gamepipeline.pipeline.documents import WrittenFloat, WrittenInt
from gamepipeline.pipeline.errors import PipelineError, Problem, ValidationError
from gamepipeline.server.errors import InvalidRequest
from gamepipeline.server.store import NewPipeline
from gamepipeline.wire import node_id_problem

log = logging.getLogger(__name__)

ENVELOPE_KEYS: Final = ("pipeline", "template", "args", "envs", "node")
ARG_PREFIX: Final = "arg."
#: Env values this long or longer are masked in error messages, as the agent masks them
#: in step output (shorter ones, like a port, would blank out ordinary text).
MASK_MIN_LENGTH: Final = 4
ENV_PREFIX: Final = "env."
#: Steps one pipeline may have. The longest shipped template has four; a node runs the
#: steps one after another, so hundreds would be a mistake or an attack.
MAX_STEPS: Final = 100


@dataclass
class Submission:
    document: dict[str, Any]
    args: dict[str, str] = field(default_factory=dict)
    envs: dict[str, str] = field(default_factory=dict)
    node: str | None = None


def read_submission(
    body: bytes, query: Mapping[str, str], *, labelled_json: bool = False
) -> Submission:
    """Read the document, args, envs and node from a request's body and query.

    ``labelled_json``: the request's Content-Type says JSON (``application/json`` or
    ``application/…+json``); a body that looks like JSON and is not is then reported
    as invalid JSON rather than invalid YAML.
    """
    if not body.strip():
        raise InvalidRequest(
            "the request body is empty; send the pipeline document (YAML or JSON) or "
            'a JSON envelope {"pipeline": ..., "args": {...}, "envs": {...}}',
            [Problem("", "empty request body")],
        )
    envelope = _envelope(body)
    if envelope is None:
        json_error = _json_error(body) if labelled_json else None
        try:
            submission = Submission(document=_parse(body, "request body"))
        except InvalidRequest:
            if json_error is None:
                raise
            raise _invalid(
                "the pipeline document cannot be read", [json_error]
            ) from None
    else:
        submission = _from_envelope(envelope)
    _apply_query(submission, query)
    return submission


def prepare(submission: Submission) -> NewPipeline:
    """Validate a submission against the pipeline language; raise ``InvalidRequest``."""
    steps = submission.document.get("steps")
    if isinstance(steps, list) and len(steps) > MAX_STEPS:
        raise _invalid(
            "the pipeline is too long",
            [
                Problem(
                    "steps",
                    f"{len(steps)} steps is more than the {MAX_STEPS} a pipeline may "
                    "have; split it into several pipelines",
                )
            ],
        )
    unstorable = _unstorable(
        {
            "pipeline": submission.document,
            "args": submission.args,
            "envs": submission.envs,
        }
    )
    if submission.node is not None:
        problem = node_id_problem(submission.node)
        if problem:
            unstorable.append(Problem("node", problem))
    if unstorable:
        raise _invalid("the submission holds text that cannot be stored", unstorable)
    try:
        template = load_template(submission.document)
    except ValidationError as err:
        raise _invalid("the pipeline document is not valid", err.problems) from None
    # A long number written in YAML passes the check above, as it may become the text
    # of an env value; one the template keeps as a number must still fit SQLite.
    unstorable = _unstorable({"pipeline": template.to_document()})
    if unstorable:
        raise _invalid("the submission holds text that cannot be stored", unstorable)

    left_to_node = [name for name in template.envs if name not in submission.envs]
    try:
        bind(template, submission.args, submission.envs)
    except ValidationError as err:
        problems = [
            _masked(p, submission.envs)
            for p in err.problems
            if p.path not in {f"envs.{n}" for n in left_to_node}
        ]
        if problems:
            raise _invalid(
                "the args or envs do not fit the template", problems
            ) from None
    except PipelineError as err:
        raise _invalid(
            "the pipeline cannot be bound",
            [_masked(Problem("", str(err)), submission.envs)],
        ) from None
    if left_to_node:
        log.debug("envs %s of %s are left to the node", left_to_node, template.name)

    timeout = template.timeout_seconds
    return NewPipeline(
        model=template.model or "",
        name=template.name,
        description=template.description,
        document=template.to_document(),
        declared_args=list(template.args),
        declared_envs=list(template.envs),
        arg_values=dict(submission.args),
        env_values={k: v for k, v in submission.envs.items() if k in template.envs},
        node_requested=submission.node,
        steps=[(step.name, step.type) for step in template.steps],
        timeout_seconds=int(timeout) if timeout else 0,
    )


#: SQLite stores integers of at most 64 bits.
_LARGEST_INTEGER: Final = 2**63 - 1


def _unstorable(data: Any, path: str = "") -> list[Problem]:
    """Text that is not valid Unicode (lone surrogates from JSON's \\ud800 escapes)
    and integers beyond 64 bits: both would fail deep in storage or on the wire."""
    if isinstance(data, str):
        try:
            data.encode("utf-8")
        except UnicodeEncodeError:
            return [
                Problem(
                    path or "(body)",
                    "holds a lone UTF-16 surrogate (such as \\ud800), which is not "
                    "text; send valid Unicode",
                )
            ]
        if "\x00" in data:
            return [
                Problem(
                    path or "(body)",
                    "holds a NUL character (\\u0000), which no command, name or "
                    "environment variable can carry; remove it",
                )
            ]
        return []
    if isinstance(data, float) and not math.isfinite(data):
        return [Problem(path, f"{data} is not a number a pipeline can use")]
    if isinstance(data, bool):
        return []
    if (
        isinstance(data, int)
        and abs(data) > _LARGEST_INTEGER
        and written_text(data) is None
    ):
        return [
            Problem(
                path, f"{data} is too large a number; use at most {_LARGEST_INTEGER}"
            )
        ]
    if isinstance(data, dict):
        found = []
        for key, value in data.items():
            where = f"{path}.{key}" if path else str(key)
            found += _unstorable(str(key), where) + _unstorable(value, where)
        return found
    if isinstance(data, list):
        return [
            p for i, item in enumerate(data) for p in _unstorable(item, f"{path}[{i}]")
        ]
    return []


def _masked(problem: Problem, envs: Mapping[str, str]) -> Problem:
    """A problem whose message shows no env value: envs may be the server's secrets."""
    message = problem.message
    for value in sorted(envs.values(), key=len, reverse=True):
        if len(value) >= MASK_MIN_LENGTH:
            message = message.replace(value, "***")
    return Problem(problem.path, message)


def load_json(body: bytes | str) -> Any:
    """JSON whose numbers remember how they were written, as YAML's do: ``1.50`` in an
    envelope's document or args reaches the container as ``1.50``, not ``1.5``.

    A key written twice in one object raises ``ValueError``, as it is an error in a
    YAML document: the caller then reads the body as a document, whose reading names
    the key's path and line (``node is written twice``), rather than the last one
    silently winning."""
    return json.loads(
        body,
        parse_int=lambda text: WrittenInt.of(int(text), text),
        parse_float=lambda text: WrittenFloat.of(float(text), text),
        object_pairs_hook=_unique_keys,
    )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) < len(pairs):
        raise ValueError("a key is written twice in one object")
    return found


def _envelope(body: bytes) -> dict[str, Any] | None:
    """The body as an envelope, or None when it is a bare document."""
    try:
        data = load_json(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if isinstance(data, dict) and "pipeline" in data:
        return data
    return None


def _json_error(body: bytes) -> Problem | None:
    """Where and why a body that starts as JSON does is not JSON; None for a body that
    is JSON, or that does not start like JSON (YAML sent with a JSON label)."""
    start = body.lstrip().removeprefix(b"\xef\xbb\xbf").lstrip()
    if not start.startswith((b"{", b"[")):
        return None
    try:
        json.loads(body.decode("utf-8-sig"))
    except UnicodeDecodeError:
        return None  # YAML's reading says it is not UTF-8
    except RecursionError:
        return None
    except json.JSONDecodeError as err:
        return Problem(
            "request body",
            f"the document is not valid JSON at line {err.lineno}, column "
            f"{err.colno}: {err.msg}",
        )
    return None


def _from_envelope(envelope: dict[str, Any]) -> Submission:
    problems = [
        Problem(
            key,
            f"unknown envelope key {key!r}; use {', '.join(ENVELOPE_KEYS)} "
            "(pipeline or template, not both)",
        )
        for key in envelope
        if key not in ENVELOPE_KEYS
    ]
    pipeline = envelope["pipeline"]
    document: dict[str, Any] = {}
    if isinstance(pipeline, str):
        document = _parse(pipeline.encode(), "pipeline")
    elif isinstance(pipeline, dict):
        document = pipeline
    else:
        problems.append(
            Problem("pipeline", "give the document as an object or as YAML text")
        )
    args, arg_problems = _values(envelope.get("args"), "args")
    envs, env_problems = _values(envelope.get("envs"), "envs")
    problems += arg_problems + env_problems
    node = envelope.get("node")
    if node is not None and (not isinstance(node, str) or not node):
        problems.append(
            Problem("node", f"{node!r} is not a node id; give a non-empty string")
        )
    if problems:
        raise _invalid("the request envelope is not valid", problems)
    return Submission(document, args, envs, node or None)


def _values(raw: Any, where: str) -> tuple[dict[str, str], list[Problem]]:
    """Args or envs as text: numbers and booleans are written as YAML writes them."""
    if raw is None:
        return {}, []
    if not isinstance(raw, dict):
        return {}, [Problem(where, f"{where} must be an object of NAME: value")]
    values: dict[str, str] = {}
    problems: list[Problem] = []
    for name, value in raw.items():
        if isinstance(value, bool):
            values[name] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            values[name] = written_text(value) or str(value)
        else:
            problems.append(
                Problem(
                    f"{where}.{name}",
                    f"{json.dumps(value)} is not a value; give text or a number",
                )
            )
    return values, problems


def _apply_query(submission: Submission, query: Mapping[str, str]) -> None:
    """Add the query's args, envs and node to what the body gave. An arg or env in
    both is the query's (an override); a node in both must be the same node."""
    problems: list[Problem] = []
    for key, value in query.items():
        if key.startswith(ARG_PREFIX) and len(key) > len(ARG_PREFIX):
            submission.args[key.removeprefix(ARG_PREFIX)] = value
        elif key.startswith(ENV_PREFIX) and len(key) > len(ENV_PREFIX):
            submission.envs[key.removeprefix(ENV_PREFIX)] = value
        elif key == "node":
            if not value:
                problems.append(Problem("node", "node= is empty; give a node id"))
            elif submission.node is not None and submission.node != value:
                problems.append(
                    Problem(
                        "node",
                        f"the query names node {value!r} and the body names node "
                        f"{submission.node!r}; name the node in one place",
                    )
                )
            submission.node = value or None
        else:
            problems.append(
                Problem(
                    key,
                    f"query parameter {key!r} is not understood; use "
                    "arg.NAME=VALUE, env.NAME=VALUE or node=NODE_ID",
                )
            )
    if problems:
        raise _invalid("the query parameters are not valid", problems)


def _parse(text: bytes, source: str) -> dict[str, Any]:
    try:
        return parse_document(text, source=source)
    except ValidationError as err:
        problems = err.problems
        if _lost_its_line_breaks(text):
            problems = [*problems, Problem("", LINE_BREAKS_LOST)]
        raise _invalid("the pipeline document cannot be read", problems) from None


LINE_BREAKS_LOST: Final = (
    "the document arrived on a single line, as `curl -d @file` sends it (curl -d "
    "removes line breaks, which YAML needs); send the file with `--data-binary @file`, "
    "or write the document as JSON"
)


def _lost_its_line_breaks(text: bytes) -> bool:
    """A YAML block document whose newlines a client stripped: one line, many keys."""
    stripped = text.strip()
    return (
        b"\n" not in stripped
        and stripped.count(b": ") > 1
        and not (stripped.startswith((b"{", b"[")))
    )


def _invalid(summary: str, problems: list[Problem]) -> InvalidRequest:
    first = str(problems[0]) if problems else ""
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return InvalidRequest(f"{summary}: {first}{more}", problems)
