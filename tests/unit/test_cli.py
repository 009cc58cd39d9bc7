"""The template author's commands: validate, compile, schema (issue #3)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from click.testing import CliRunner
from rich.console import Console

from gamepipeline.cli import main
from gamepipeline.cli_api import _ago, pipelines_table

ROOT = Path(__file__).resolve().parents[2]
ORIGINALS = ROOT.parent / "shared" / "testdata" / "original"

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
    files += [str(p) for p in sorted(ORIGINALS.glob("*.yaml"))]

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
