"""`gamepipeline server`: the liveness limits from the command line or the config file."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gamepipeline.cli import main


def server_help() -> str:
    return CliRunner().invoke(main, ["server", "--help"]).output


def test_help_names_both_limits_with_their_defaults() -> None:
    text = " ".join(server_help().split())
    assert "--offline-after" in text and "[default: 30]" in text
    assert "--node-lost-after" in text and "[default: 300]" in text


@pytest.mark.parametrize(
    ("option", "value"), [("--offline-after", "0.5"), ("--node-lost-after", "-1")]
)
def test_a_limit_below_its_least_value_is_a_usage_error(
    tmp_path: Path, option: str, value: str
) -> None:
    result = CliRunner().invoke(
        main, ["server", "--db", str(tmp_path / "db"), option, value]
    )
    assert result.exit_code == 2
    assert option in result.output


@pytest.mark.parametrize("value", ["soon", True, 0])
def test_offline_after_in_the_config_file_must_be_seconds(
    tmp_path: Path, value: object
) -> None:
    config = tmp_path / "server.yaml"
    config.write_text(f"offline_after: {value!r}\n".replace("'", '"'))

    result = CliRunner().invoke(
        main, ["server", "--config", str(config), "--db", str(tmp_path / "db")]
    )

    assert result.exit_code == 2
    assert "offline_after must be a number of seconds, at least 1" in result.output
