"""What the CLI prints of the text it is given: literally, and harmless to a terminal.

Names, step names, messages, labels and the engine's errors come from templates,
agents and Docker. Each command runs as a user runs it, against a real server (and an
agent with real containers where a step has to run), at 80 and 200 columns:
square brackets are text, never rich markup (``[/]`` used to crash ``list``,
``status`` and ``nodes``, ``[eu]`` and the engine's ``[[gpu]]`` vanished); escape
sequences never reach the terminal, other control characters show as ``\\x07``;
``-o json`` keeps every string exactly as the server holds it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Process, Server, gamepipeline_command, start_agent
from .test_operator_cli import IMAGE, cli

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

NAME = "weird [/] name [bold]x[/bold] \\[y]"
STEPS = [
    "Game [eu] start",
    "esc\x1b[2J\x1b[31mRED",
    "s\x1b]0;title\x07",
    "bell\x07 and\tbidi\u202e",
]


def _document(*commands: str) -> dict[str, Any]:
    return {
        "name": NAME,
        "steps": [
            {"name": name, "container": {"image": IMAGE, "commands": [command]}}
            for name, command in zip(STEPS, commands, strict=True)
        ],
    }


def _assert_harmless(text: str) -> None:
    """No escape sequence, no control character but line breaks and spaces."""
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e]", text), text


def _flat(text: str) -> str:
    """The rendered text with its folding undone (cells fold at 80 columns)."""
    return " ".join(text.split())


@pytest.fixture
def labelled_agent(workdir: Path, server: Server, node_id: str) -> Iterator[Process]:
    proc = start_agent(
        workdir, server, node_id, "--label", "rack=[/]", "--label", "zone=[eu]"
    )
    yield proc
    proc.stop()
    print(f"--- agent log ---\n{proc.tail()}")


def test_bracketed_and_control_text_shows_literally_in_every_command(
    server: Server,
    labelled_agent: Process,
    node_id: str,
    workdir: Path,
    cleanup_containers: list[str],
) -> None:
    failing = "echo 'could not select device driver \"\" with capabilities: [[gpu]]'"
    pipeline_id = server.api.submit(
        _document(
            "echo '[red]not red[/] \\x1b' && printf '\\033]0;owned\\007\\033[31mred\\n'",
            "true",
            "true",
            f"{failing} && exit 3",
        ),
        node=node_id,
    )
    final = server.api.wait(pipeline_id, timeout=120)
    assert final["state"] == "failed", final
    assert "[[gpu]]" in final["steps"][3]["message"], final

    for columns in (80, 200):
        shown = {
            command: cli(server, command, *argv, columns=columns)
            for command, argv in (
                ("status", [pipeline_id]),
                ("list", []),
                ("nodes", []),
                ("logs", [pipeline_id]),
            )
        }
        for command, answer in shown.items():
            assert answer.returncode == 0, (command, answer.stderr)
            _assert_harmless(answer.stdout)
            assert "MarkupError" not in answer.stderr
        status, listed = _flat(shown["status"].stdout), _flat(shown["list"].stdout)
        # The header and the pipeline's message read from the left edge.
        status_lines = shown["status"].stdout.splitlines()
        assert max(len(line) for line in status_lines) <= columns
        assert status_lines[0] == NAME
        assert status_lines[1] == f"{pipeline_id}  failed on {node_id}"
        assert any(line.startswith("step 3 (bell\\x07 and") for line in status_lines), (
            status_lines
        )
        assert _flat(NAME) in status, status
        assert "Game [eu] start" in status and "escRED" in status
        assert "bell\\x07 and\\x09bidi\\u202e" in status, status
        assert "[[gpu]]" in status, status
        assert "could not select device driver" in status
        assert listed.startswith("id name state node created message"), listed
        assert ("weird [/] name [bold]x" if columns == 200 else "weird [/]") in listed
        assert "rack=[/]" in _flat(shown["nodes"].stdout)
        assert "zone=[eu]" in _flat(shown["nodes"].stdout)
        logs = shown["logs"].stdout.splitlines()
        assert logs[0] == "==> step 0 Game [eu] start (completed) <=="
        assert "[red]not red[/] \\x1b" in logs[1:3], logs
        assert "==> step 1 escRED (completed) <==" in logs
        assert "==> step 2 s (completed) <==" in logs
        assert "==> step 3 bell\\x07 and\\x09bidi\\u202e (failed) <==" in logs

    # JSON keeps the strings exact.
    as_json = json.loads(cli(server, "status", pipeline_id, "-o", "json").stdout)
    assert as_json["name"] == NAME
    assert [s["name"] for s in as_json["steps"]] == STEPS
    nodes = json.loads(cli(server, "nodes", "-o", "json").stdout)
    assert nodes[0]["labels"] == {"rack": "[/]", "zone": "[eu]"}


def test_submit_wait_shows_the_live_table_literally_and_ends_its_line(
    server: Server,
    labelled_agent: Process,
    node_id: str,
    workdir: Path,
    cleanup_containers: list[str],
) -> None:
    path = workdir / "weird.json"
    path.write_text(json.dumps(_document("true", "true", "true", "echo [[gpu]]")))

    answer = cli(server, "submit", str(path), "--node", node_id, "--wait", columns=80)

    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.endswith("\n"), repr(answer.stdout[-80:])
    _assert_harmless(answer.stdout)
    assert _flat(NAME) in _flat(answer.stdout)
    assert "Game [eu] start" in answer.stdout
    assert max(len(line) for line in answer.stdout.splitlines()) <= 80


def test_validation_problems_are_listed_each_with_its_path(
    server: Server, workdir: Path
) -> None:
    path = workdir / "bad.yaml"
    path.write_text(
        "name: 5\nsteps:\n  - name: a\n    container: {image: 7, ports: [x]}\n"
        "  - container: {image: busybox}\n"
    )

    answer = cli(server, "submit", str(path))
    template = cli(server, "submit", "--template", "instance-start")

    assert answer.returncode == 6, answer.stderr
    lines = answer.stderr.splitlines()
    assert "(and" not in answer.stderr, answer.stderr
    problems = [line.strip() for line in lines[1:]]
    assert len(problems) >= 3, answer.stderr
    assert any(p.startswith("name: ") for p in problems), problems
    assert any(p.startswith("steps[0].container.image: ") for p in problems)
    assert any(p.startswith("steps[1].name: ") for p in problems), problems
    assert re.search(r"answered HTTP 400: .* \(\d+ problems\):$", lines[0]), lines[0]

    assert template.returncode == 6, template.stderr
    missing = [line.strip() for line in template.stderr.splitlines()[1:]]
    assert len(missing) > 1 and "(and" not in template.stderr, template.stderr
    assert all(re.match(r"\S+: ", line) for line in missing), missing


def test_short_ids_unknown_ids_and_a_missing_token_name_the_cli_fix(
    server: Server, workdir: Path, run_id: str
) -> None:
    path = workdir / "p.json"
    path.write_text(
        json.dumps(
            {"name": "p", "steps": [{"name": "s", "container": {"image": IMAGE}}]}
        )
    )
    ids = [
        json.loads(
            cli(
                server, "submit", str(path), "--node", f"gone-{run_id}", "-o", "json"
            ).stdout
        )["id"]
        for _ in range(3)
    ]
    six = cli(server, "status", ids[0][:6], "-o", "json")
    four = cli(server, "logs", ids[1][:4])
    three = cli(server, "status", ids[0][:3])
    unknown = cli(server, "status", "ffff" if not ids[0].startswith("ffff") else "0000")
    whole = cli(server, "status", "0" * 32)
    no_token = subprocess.run(
        [*gamepipeline_command(), "--server-url", server.api.base_url, "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "GAMEPIPELINE_TOKEN": ""},
    )

    assert six.returncode == 0, six.stderr
    assert json.loads(six.stdout)["id"] == ids[0]
    if not any(i != ids[1] and i.startswith(ids[1][:4]) for i in ids):
        assert four.returncode == 0, four.stderr
    assert three.returncode == 2, three.stderr
    assert "first 4 characters or more" in three.stderr, three.stderr
    assert unknown.returncode == 6
    assert "`gamepipeline list`" in unknown.stderr and "1000 newest" in unknown.stderr
    assert whole.returncode == 6, whole.stderr
    assert "`gamepipeline list`" in whole.stderr and "GET /api" not in whole.stderr
    assert no_token.returncode == 6, no_token.stderr
    assert "answered HTTP 401" in no_token.stderr
    assert "--token" in no_token.stderr and "GAMEPIPELINE_TOKEN" in no_token.stderr
    assert "Authorization: Bearer" not in no_token.stderr
