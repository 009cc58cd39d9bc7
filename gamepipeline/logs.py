"""Log set-up shared by the server and the agent: plain text or one JSON object a line.

Lifecycle lines carry the ids they are about as attributes of the log record, spelled the
same everywhere: ``pipeline_id``, ``step`` (the step's index) and ``node_id``. A caller
passes them with ``extra=ids(...)``, or binds them for a whole thread of work with
``bound(...)`` (the agent binds each run's pipeline id in that run's thread). A process
that works for one node (the agent) gives its id once to ``setup_logging``.

In JSON each line is ``{"time", "level", "logger", "message", ...ids, "error"?}``; plain
text keeps the ids inside the sentence, as the messages already name them.

Messages carry text from outside (a template's names, a node's labels, what an agent
reported, a step's output), so every message is made ``printable`` in both formats: a
line break in a value cannot start a forged log line, and an escape sequence cannot
recolour the terminal that shows the log. A traceback keeps its lines (it is ours), its
control characters shown the same way.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final

from gamepipeline.terminal import printable

FORMATS: Final = ("text", "json")
ID_FIELDS: Final = ("pipeline_id", "step", "node_id")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_bound: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "gamepipeline_log_ids", default=None
)


def ids(
    pipeline_id: str | None = None,
    step: int | None = None,
    node_id: str | None = None,
) -> dict[str, Any]:
    """The ``extra`` of a log call about this pipeline, step and node."""
    given = {"pipeline_id": pipeline_id, "step": step, "node_id": node_id}
    return {key: value for key, value in given.items() if value is not None}


@contextmanager
def bound(**values: Any) -> Iterator[None]:
    """Attach ids to every log line written in this context (thread or task)."""
    token = _bound.set({**(_bound.get() or {}), **values})
    try:
        yield
    finally:
        _bound.reset(token)


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT`` lines; the message on one line, tracebacks on their own."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        # ``format`` has just set ``record.message`` for this line; others set it anew.
        record.message = printable(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return printable(super().formatException(ei), lines=True)

    def formatStack(self, stack_info: str) -> str:
        return printable(super().formatStack(stack_info), lines=True)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the ids the record carries or the context bound."""

    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": printable(record.getMessage()),
            **self._static,
            **(_bound.get() or {}),
        }
        for field in ID_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["error"] = printable(self.formatException(record.exc_info), lines=True)
        return json.dumps(line, ensure_ascii=False, default=str)


def setup_logging(
    level: str, log_format: str = "text", *, static: Mapping[str, Any] | None = None
) -> None:
    """Log to stderr at ``level`` in ``log_format`` (``text`` or ``json``)."""
    if log_format not in FORMATS:
        raise ValueError(
            f"log format {log_format!r} is not one of {', '.join(FORMATS)}; "
            "pick text for people or json for a log collector"
        )
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(static))
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # gRPC's own debug lines (one per call) drown ours; keep them for warnings.
    logging.getLogger("grpc").setLevel(max(logging.INFO, root.level))
