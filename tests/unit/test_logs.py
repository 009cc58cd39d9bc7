"""``gamepipeline.logs``: a value from outside cannot forge a log line or reach the
terminal as an escape sequence, in either format; our own tracebacks keep their lines.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from gamepipeline.logs import ids, setup_logging

log = logging.getLogger("gamepipeline.test_logs")

FORGED = "x\n2025-01-01 00:00:00,000 INFO gamepipeline.server: FAKE line"
COLOURED = "\x1b[31mred\x1b[0m\x07"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """``setup_logging`` changes the root logger; put it back after each test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    grpc_level = logging.getLogger("grpc").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("grpc").setLevel(grpc_level)


def test_a_text_line_cannot_be_forged_or_recolour_the_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging("info", "text")

    log.warning("node %s reported: %s", FORGED, COLOURED)

    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    line = err.rstrip("\n")
    assert line.endswith(
        "WARNING gamepipeline.test_logs: node x\\x0a2025-01-01 00:00:00,000 INFO "
        "gamepipeline.server: FAKE line reported: red\\x07"
    ), line
    assert "\x1b" not in line and "\x07" not in line


def test_a_json_line_holds_the_same_printable_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging("info", "json", static={"node_id": "node-a"})

    log.warning("node %s reported: %s", FORGED, COLOURED, extra=ids("p-1", step=0))

    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    line = json.loads(lines[0])
    assert line["message"] == (
        "node x\\x0a2025-01-01 00:00:00,000 INFO gamepipeline.server: FAKE line "
        "reported: red\\x07"
    )
    assert line["level"] == "warning" and line["logger"] == "gamepipeline.test_logs"
    assert (line["node_id"], line["pipeline_id"], line["step"]) == ("node-a", "p-1", 0)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_traceback_keeps_its_lines_without_escape_sequences(
    capsys: pytest.CaptureFixture[str], log_format: str
) -> None:
    setup_logging("info", log_format)

    try:
        raise ValueError("bad \x1b[2Jvalue\x9b")
    except ValueError:
        log.exception("step %s failed", "s\none")

    err = capsys.readouterr().err
    if log_format == "json":
        line = json.loads(err)
        message, traceback = line["message"], line["error"]
    else:
        message, _, traceback = err.partition("\n")
    assert message.endswith("step s\\x0aone failed")
    assert traceback.startswith("Traceback (most recent call last):\n")
    assert traceback.rstrip("\n").endswith("ValueError: bad value\\x9b")
    assert "\x1b" not in err and "\x9b" not in err
