"""The template author's commands: validate, compile, schema (issue #3)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from rich.console import Console

from gamepipeline.cli import main
from gamepipeline.cli_api import _ago, pipelines_table, status, steps_view
from gamepipeline.client import ApiClient

ROOT = Path(__file__).resolve().parents[2]
ORIGINALS = ROOT / "tests" / "data" / "original"

BAD = """\
name: broken
steps:
  - name: game
    container:
      image: game-server:latest
      enviroment:
        A: "1"
      ports: ["80:80:80"]
"""


def test_validate_accepts_the_shipped_and_original_templates() -> None:
    files = [str(p) for p in sorted((ROOT / "pipelines").glob("*.yaml"))]
    originals = sorted(ORIGINALS.glob("*.yaml"))
    assert [p.name for p in originals] == ["start-platform.yaml", "test-pipeline.yaml"]
    files += [str(p) for p in originals]

    result = CliRunner().invoke(main, ["validate", *files])

    assert result.exit_code == 0, result.output
    assert result.output == ""


def test_validate_prints_file_path_message_lines_and_exits_non_zero(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)

    done = subprocess.run(
        [sys.executable, "-m", "gamepipeline", "validate", str(bad)],
        capture_output=True,
        text=True,
    )

    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert len(lines) == 2, lines
    assert (
        f'{bad}:steps[0].container.enviroment: "enviroment" is not a known field; '
        'did you mean "environment"?'
    ) in lines
    assert any(
        line.startswith(f'{bad}:steps[0].container.ports[0]: "80:80:80"')
        for line in lines
    )


def test_validate_names_the_file_once_for_a_problem_of_the_whole_document(
    tmp_path: Path,
) -> None:
    twice = tmp_path / "twice.yaml"
    twice.write_text("name: a\nname: b\nsteps: []\n")

    result = CliRunner().invoke(main, ["validate", str(twice)])

    assert result.exit_code == 1
    assert result.output.startswith(
        f"{twice}: the document is not valid YAML at line 2, column 1: the key name "
        "is written twice"
    ), result.output


def test_validate_names_a_file_it_cannot_read(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    result = CliRunner().invoke(main, ["validate", str(missing)])

    assert result.exit_code == 1
    assert f"{missing}: cannot read" in result.output


def test_compile_prints_a_playbook_with_the_values_bound(tmp_path: Path) -> None:
    template = tmp_path / "t.yaml"
    template.write_text(
        "name: t\nargs: [PORT]\nenvs: [PASSWD]\nsteps:\n"
        "  - name: game\n    type: service\n    container:\n"
        "      image: game-server:latest\n"
        '      ports: ["${{ args.PORT }}:8080"]\n'
        "      environment: {PASSWD: '${{ envs.PASSWD }}', W: 1920}\n"
    )

    result = CliRunner().invoke(
        main,
        ["compile", str(template), "--arg", "PORT=8081", "--env", "PASSWD={{ 7 * 7 }}"],
    )

    assert result.exit_code == 0, result.output
    assert "!unsafe" in result.output
    play = yaml.load(result.output, Loader=_UnsafeAsText)
    main_task = next(t for t in play[0]["tasks"] if t["name"] == "[step 0] game")
    module = main_task["community.docker.docker_container"]
    assert module["published_ports"] == ["8081:8080"]
    assert module["env"] == {"PASSWD": "{{ 7 * 7 }}", "W": "1920"}


def test_compile_reports_missing_values_on_stderr(tmp_path: Path) -> None:
    template = tmp_path / "t.yaml"
    template.write_text(
        "name: t\nargs: [PORT]\nsteps:\n  - name: s\n    container:\n"
        '      image: "img:${{ args.PORT }}"\n'
    )

    result = CliRunner().invoke(main, ["compile", str(template)])

    assert result.exit_code == 1
    assert f"{template}:args.PORT: " in result.output


def test_compile_rejects_an_option_that_is_not_key_value(tmp_path: Path) -> None:
    template = tmp_path / "t.yaml"
    template.write_text("name: t\nsteps: [{name: s, container: {image: a}}]\n")

    result = CliRunner().invoke(main, ["compile", str(template), "--arg", "PORT"])

    assert result.exit_code == 2
    assert "'PORT' is not KEY=VALUE" in result.output


def test_schema_is_json_that_names_the_container_fields() -> None:
    result = CliRunner().invoke(main, ["schema"])

    schema = json.loads(result.output)
    container = schema["$defs"]["Container"]["properties"]
    for field in ("image", "environment", "ports", "deploy", "tmpfs", "commands"):
        assert field in container


class _UnsafeAsText(yaml.SafeLoader):
    """Reads Ansible's `!unsafe` tag back as the plain value it marks."""


def _unsafe(loader: yaml.SafeLoader, node: yaml.Node) -> object:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    assert isinstance(node, yaml.ScalarNode)
    return loader.construct_scalar(node)


_UnsafeAsText.add_constructor("!unsafe", _unsafe)


def test_help_shows_server_url_before_and_after_the_command() -> None:
    top = CliRunner().invoke(main, ["--help"], terminal_width=100)
    listing = CliRunner().invoke(main, ["list", "--help"], terminal_width=100)

    assert top.exit_code == 0 and listing.exit_code == 0
    assert "--server-url TEXT" in top.output and "GAMEPIPELINE_URL" in top.output
    assert "--server-url TEXT" in listing.output
    assert "may also come before" in listing.output


def test_list_times_are_relative_in_seven_characters_at_most() -> None:
    now = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)

    def ago(**delta: float) -> str:
        return _ago((now - timedelta(**delta)).isoformat(), now)

    assert ago(seconds=45) == "45s ago"
    assert ago(minutes=12, seconds=59) == "12m ago"
    assert ago(hours=23, minutes=59) == "23h ago"
    assert ago(days=99) == "99d ago"
    assert ago(days=100) == (now - timedelta(days=100)).astimezone().strftime(
        "%Y-%m-%d"
    )
    assert ago(seconds=-3) == "0s ago"  # a server clock a little ahead


def test_list_table_at_80_columns_keeps_every_column_in_the_width() -> None:
    now = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)
    pipelines = [
        {
            "id": f"{n:08x}" + "ab" * 12,
            "name": "platform-start-with-a-long-name",
            "state": "completed",
            "node": "gamenode-eu-west-17",
            "created_at": (now - timedelta(minutes=n)).isoformat(),
            "message": "step 1 (game) failed: exited with code 3: " + "x " * 40,
        }
        for n in range(3)
    ]
    console = Console(width=80, record=True, file=io.StringIO())

    console.print(pipelines_table(pipelines, 80, now))

    lines = console.export_text().splitlines()
    assert max(map(len, lines)) <= 80
    assert lines[2].split()[:5] == [
        "00000000", "platform-star…", "completed", "gamenode-eu…", "0s",
    ]  # fmt: skip


def _pipeline(now: datetime) -> dict[str, Any]:
    step = {"started_at": now.isoformat(), "finished_at": now.isoformat()}
    return {
        "id": "e46fe6" + "0" * 26,
        "name": "Game [eu] start [/]",
        "state": "running",
        "node": "nu-node1",
        "message": "step 1 (game) failed: could not select device driver \"\" with "
        "capabilities: [[gpu]]; the node has no GPU runtime, so the game cannot start",
        "steps": [
            {**step, "index": 0, "name": "pull [x]", "state": "completed",
             "message": ""},
            {**step, "index": 1, "name": "esc\x1b[2J\x1b[31mRED", "state": "failed",
             "message": "exited with code 3: [[gpu]] " + "word " * 20},
        ],
    }  # fmt: skip


@pytest.mark.parametrize("width", [80, 200])
def test_status_reads_left_aligned_and_literal_at_80_and_200_columns(
    width: int,
) -> None:
    now = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)
    pipeline = _pipeline(now)
    console = Console(width=width, record=True, file=io.StringIO())

    console.print(steps_view(pipeline))

    text = console.export_text()
    lines = text.splitlines()
    assert max(map(len, lines)) <= width
    assert lines[0] == "Game [eu] start [/]"
    assert lines[1] == f"{pipeline['id']}  running on nu-node1"
    assert "escRED" in text and "\x1b" not in text
    # The pipeline's message starts at the left edge, under the table, whole.
    message = pipeline["message"]
    start = next(i for i, line in enumerate(lines) if line.startswith("step 1 (game)"))
    assert " ".join(" ".join(lines[start:]).split()) == message
    assert len(lines[start:]) == (2 if width == 80 else 1)
    assert all(not line.startswith(" ") for line in lines[start:])


def test_list_footer_starts_at_the_left_edge_at_80_columns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = datetime.now(UTC)

    def newest(self: ApiClient, **_: Any) -> list[dict[str, Any]]:
        return [{**_pipeline(now), "created_at": now.isoformat()}]

    monkeypatch.setattr(ApiClient, "pipelines", newest)

    narrow = CliRunner(env={"COLUMNS": "80"}).invoke(main, ["list"])
    wide = CliRunner(env={"COLUMNS": "200"}).invoke(main, ["list"])

    assert narrow.exit_code == 0 and wide.exit_code == 0, narrow.output + wide.output
    lines = narrow.output.splitlines()
    assert max(map(len, lines)) <= 80
    assert lines[-2].startswith("ids shortened: status, logs and cancel take them")
    assert lines[-1].startswith("characters or longer); -o json"), lines
    assert "Game [eu] st" in narrow.output
    assert "Game [eu] start [/]" in wide.output and "ids shortened" not in wide.output


def test_a_short_id_is_any_unique_start_of_four_characters_or_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)
    ids = ["e46fe6" + "0" * 26, "e46fa1" + "1" * 26, "e46fa2" + "2" * 26]
    newest = [{**_pipeline(now), "id": i, "created_at": now.isoformat()} for i in ids]
    asked: list[str] = []
    monkeypatch.setattr(ApiClient, "pipelines", lambda self, **_: newest)

    def one(self: ApiClient, pipeline_id: str) -> dict[str, Any]:
        asked.append(pipeline_id)
        return {**_pipeline(now), "id": pipeline_id}

    monkeypatch.setattr(ApiClient, "pipeline", one)
    runner = CliRunner()

    unique = runner.invoke(status, ["e46fe", "-o", "json"])
    ambiguous = runner.invoke(status, ["e46f"])
    too_short = runner.invoke(status, ["e46"])
    none = runner.invoke(status, ["abcd"])

    assert unique.exit_code == 0, unique.output
    assert asked == [ids[0]]
    assert ambiguous.exit_code == 2
    assert "'e46f' is ambiguous: it starts 3 pipeline ids" in ambiguous.output
    assert all(i in ambiguous.output for i in ids), ambiguous.output
    assert too_short.exit_code == 2
    assert "first 4 characters or more" in too_short.output
    assert none.exit_code == 6
    assert "no pipeline id starts with 'abcd' among the 1000 newest" in none.output
    assert "`gamepipeline list`" in none.output


def test_validate_shows_a_template_s_control_characters_as_escapes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "weird.yaml"
    path.write_text(
        "name: x\nsteps:\n  - name: s\n    container:\n      image: busybox\n"
        '      ports: ["x\\a"]\n'
    )

    result = CliRunner().invoke(main, ["validate", str(path)])

    assert result.exit_code == 1
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert '"x\\x07" is not a port mapping' in result.output, result.output
