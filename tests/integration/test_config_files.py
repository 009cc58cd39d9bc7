"""The server's and the agent's ``--config`` files are read as pipeline documents are.

YAML 1.2 scalars, as in documents: ``no``, ``on``, ``010``, ``0777`` and ``1:30`` stay
the text they look like, numbers keep the way they were written, a key written twice or
a tag is refused with the file named. Real server and agent processes, a real container.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import gamepipeline_command, start_agent, start_server

IMAGE = "gamepipeline/stand-in:busybox"

AGENT_CONFIG = """\
labels: {country: no, rack: 010, slot: 1:30, ratio: 1.50}
envs: {LEVEL: 0777, RATE: 1.50, HEX: 0x10}
"""

SERVER_CONFIG = """\
envs: {FLAG: on, MODE: off}
"""


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_config_labels_and_envs_reach_the_server_and_containers_as_written(
    workdir: Path, node_id: str, cleanup_containers: list[str]
) -> None:
    server_config = workdir / "server.yaml"
    server_config.write_text(SERVER_CONFIG)
    server = start_server(workdir, "--config", str(server_config))
    agent = None
    try:
        agent_config = workdir / "agent.yaml"
        agent_config.write_text(AGENT_CONFIG)
        agent = start_agent(workdir, server, node_id, "--config", str(agent_config))

        (node,) = [n for n in server.api.nodes() if n["node_id"] == node_id]
        assert node["labels"] == {
            "country": "no",
            "rack": "010",
            "slot": "1:30",
            "ratio": "1.50",
        }

        checks = [
            'test "${{ envs.LEVEL }}" = 0777',
            'test "${{ envs.RATE }}" = 1.50',
            'test "${{ envs.HEX }}" = 0x10',
            'test "${{ envs.FLAG }}" = on',
            'test "${{ envs.MODE }}" = off',
            "echo all-as-written",
        ]
        document = {
            "name": "config-values",
            "envs": ["LEVEL", "RATE", "HEX", "FLAG", "MODE"],
            "steps": [
                {"name": "check", "container": {"image": IMAGE, "commands": checks}}
            ],
        }
        pipeline_id = server.api.submit(document, node=node_id)
        final = server.api.wait(pipeline_id, timeout=120)
        step = final["steps"][0]
        assert final["state"] == "completed", (step.get("message"), agent.tail())
        assert "all-as-written" in step["output_tail"]
    finally:
        if agent is not None:
            agent.stop()
        server.stop()


def _agent_with(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *gamepipeline_command(),
            "agent",
            "--config",
            str(config),
            "--server",
            "127.0.0.1:1",
            "--node-id",
            "never-connects",
            "--work-dir",
            str(config.parent / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("labels:\n  rack: 1\n  rack: 2\n", "the key labels.rack is written twice"),
        ("envs: !!python/object:os.system {}\n", "tag"),
        ("labels: {rack: [1, 2]}\n", "labels.rack"),
        ("envs: {LEVEL: }\n", "envs.LEVEL has no value"),
        ("- just\n- a list\n", "mapping of settings"),
        ("capacity: four\n", "capacity: 'four' is not a number"),
        ("capacity: 1.5\n", "capacity: 1.5 is not a whole number"),
        ("heartbeat_interval: yes\n", "heartbeat_interval: 'yes' is not a number"),
    ],
)
def test_a_bad_agent_config_is_refused_naming_the_file_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(text)
    result = _agent_with(config)
    assert result.returncode != 0
    assert str(config) in result.stderr
    assert expected in result.stderr


def test_a_server_config_with_a_key_twice_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("envs:\n  FLAG: on\n  FLAG: off\n")
    result = subprocess.run(
        [*gamepipeline_command(), "server", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert str(config) in result.stderr
    assert "line 3, column 3: the key envs.FLAG is written twice" in result.stderr


@pytest.mark.parametrize("written", ["no", "off", "yes", "1"])
def test_a_server_switch_written_as_yaml_1_1_is_refused_not_taken_for_true(
    tmp_path: Path, written: str
) -> None:
    """``insecure: no`` is the text "no" under YAML 1.2: refused, never an open server."""
    config = tmp_path / "server.yaml"
    config.write_text(f"insecure: {written}\n")
    result = subprocess.run(
        [*gamepipeline_command(), "server", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "insecure" in result.stderr and "is not true or false" in result.stderr
