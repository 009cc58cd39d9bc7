"""The operator's commands against real server and agent processes (issue #9).

``gamepipeline submit/status/list/cancel/nodes/node/logs`` run as a user runs them, as
subprocesses, against the processes of ``conftest`` running real containers. The exit
codes of ``submit --wait`` are pinned one by one: completed, failed, canceled, timed out
and still running are five different outcomes.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from gamepipeline.cli_api import (
    EXIT_CANCELED,
    EXIT_COMPLETED,
    EXIT_FAILED,
    EXIT_SERVER,
    EXIT_STILL_RUNNING,
    EXIT_TIMED_OUT,
)

from .conftest import Process, Server, gamepipeline_command

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

IMAGE = "gamepipeline/stand-in:busybox"


def template(path: Path, *commands: str, timeout: str | None = None) -> str:
    step: dict[str, Any] = {
        "name": "work",
        "container": {
            "image": IMAGE,
            "environment": {"KEY": "${{ envs.API_KEY }}"},
            "commands": list(commands),
        },
    }
    if timeout:
        step["timeout"] = timeout
    document = {"name": path.stem, "envs": ["API_KEY"], "steps": [step]}
    path.write_text(json.dumps(document))
    return str(path)


def cli(
    server: Server, *argv: str, timeout: float = 180, columns: int = 200
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, GAMEPIPELINE_URL=f"http://127.0.0.1:{server.http_port}")
    env["COLUMNS"] = str(columns)
    return subprocess.run(
        [*gamepipeline_command(), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def test_submit_wait_exit_codes_tell_completed_failed_and_timed_out_apart(
    server: Server, agent: Process, workdir: Path, cleanup_containers: list[str]
) -> None:
    ok = template(workdir / "ok.json", "echo all good")
    bad = template(workdir / "bad.json", "echo broken", "exit 3")
    slow = template(workdir / "slow.json", "sleep 60", timeout="2s")
    key = ["--env", "API_KEY=k-123456"]

    completed = cli(server, "submit", ok, *key, "--wait")
    failed = cli(server, "submit", bad, *key, "--wait")
    timed_out = cli(server, "submit", slow, *key, "--wait", "--output", "json")

    assert completed.returncode == EXIT_COMPLETED, completed.stderr
    assert "completed" in completed.stdout
    assert failed.returncode == EXIT_FAILED, failed.stderr
    assert "exited with code 3" in failed.stdout
    assert timed_out.returncode == EXIT_TIMED_OUT, timed_out.stderr
    final = json.loads(timed_out.stdout)
    assert (final["state"], final["reason"]) == ("failed", "timeout")


def test_cancel_ends_a_waiting_submit_with_the_canceled_code(
    server: Server, agent: Process, workdir: Path, cleanup_containers: list[str]
) -> None:
    sleeper = template(workdir / "sleeper.json", "sleep 60")
    url = f"http://127.0.0.1:{server.http_port}"

    gave_up = cli(
        server, "submit", sleeper, "--env", "API_KEY=x", "--wait", "--wait-timeout", "3"
    )
    assert gave_up.returncode == EXIT_STILL_RUNNING, gave_up.stderr
    assert "still running" in gave_up.stderr
    waiting = subprocess.Popen(
        [*gamepipeline_command(), "submit", sleeper, "--env", "API_KEY=x", "--wait"],
        env=dict(os.environ, GAMEPIPELINE_URL=url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    running = _eventually_running(server, count=2)
    for pipeline_id in running:
        answer = cli(server, "cancel", pipeline_id)
        assert answer.returncode == 0, answer.stderr

    out, err = waiting.communicate(timeout=90)
    assert waiting.returncode == EXIT_CANCELED, out + err
    for pipeline_id in running:
        server.api.wait(pipeline_id, timeout=60)
    listed = json.loads(cli(server, "list", "--state", "canceled", "-o", "json").stdout)
    assert sorted(p["id"] for p in listed) == sorted(running)


def test_read_commands_answer_json_and_logs_show_masked_output(
    server: Server,
    agent: Process,
    node_id: str,
    workdir: Path,
    cleanup_containers: list[str],
) -> None:
    chatty = template(workdir / "chatty.json", "echo one", "echo key=$KEY", "echo two")
    submitted = cli(
        server, "submit", chatty, "--env", "API_KEY=sup3r-s3cret", "-o", "json"
    )
    pipeline_id = json.loads(submitted.stdout)["id"]
    server.api.wait(pipeline_id, timeout=120)

    status = json.loads(cli(server, "status", pipeline_id, "-o", "json").stdout)
    listed = json.loads(cli(server, "list", "--node", node_id, "-o", "json").stdout)
    by_template = json.loads(
        cli(server, "list", "--template", "chatty", "-o", "json").stdout
    )
    nodes = json.loads(cli(server, "nodes", "-o", "json").stdout)
    logs = cli(server, "logs", pipeline_id)
    logs_json = json.loads(cli(server, "logs", pipeline_id, "-o", "json").stdout)

    assert status["state"] == "completed"
    assert [p["id"] for p in listed] == [pipeline_id] == [p["id"] for p in by_template]
    assert [(n["node_id"], n["state"]) for n in nodes] == [(node_id, "online")]
    assert logs.stdout.splitlines() == [
        "==> step 0 work (completed) <==",
        "one",
        "key=***",
        "two",
    ]
    assert logs_json[0]["output_tail"] == "one\nkey=***\ntwo"
    assert "sup3r-s3cret" not in logs.stdout + json.dumps(status)


def _stored_output(server: Server, pipeline_id: str) -> str:
    with sqlite3.connect(server.db_path) as conn:
        rows = conn.execute(
            "SELECT output_tail FROM steps WHERE pipeline_id = ? ORDER BY idx",
            (pipeline_id,),
        ).fetchall()
    return str(rows[0][0] or "")


def test_a_canceled_or_timed_out_step_keeps_the_last_lines_of_its_output(
    server: Server, agent: Process, workdir: Path, cleanup_containers: list[str]
) -> None:
    """The container of a stopped step is removed; its output is read first."""
    lines = ["echo start", "echo key=$KEY", "sleep 60"]
    secret = ["--env", "API_KEY=sup3r-s3cret"]
    canceled_doc = template(workdir / "canceled.json", *lines)
    timed_out_doc = template(workdir / "timed.json", *lines, timeout="4s")

    whole_doc = workdir / "whole.json"
    whole = json.loads(Path(template(whole_doc, *lines)).read_text())
    # The pipeline's own timeout; room for a cold start beside the other two.
    whole_doc.write_text(json.dumps({**whole, "timeout": "15s"}))

    canceled = json.loads(
        cli(server, "submit", canceled_doc, *secret, "-o", "json").stdout
    )["id"]
    pipeline_timed_out = json.loads(
        cli(server, "submit", str(whole_doc), *secret, "-o", "json").stdout
    )["id"]
    timed_out = cli(server, "submit", timed_out_doc, *secret, "--wait", "-o", "json")
    assert timed_out.returncode == EXIT_TIMED_OUT, timed_out.stderr
    timed_out_id = json.loads(timed_out.stdout)["id"]
    # By now the first one has long been sleeping (it runs beside the other).
    assert server.api.pipeline(canceled)["state"] == "running"
    assert cli(server, "cancel", canceled).returncode == 0
    assert server.api.wait(canceled, timeout=60)["state"] == "canceled"

    final_whole = server.api.wait(pipeline_timed_out, timeout=60)
    assert final_whole["reason"] == "timeout"

    for pipeline_id in (canceled, timed_out_id, pipeline_timed_out):
        logs = json.loads(cli(server, "logs", pipeline_id, "-o", "json").stdout)
        assert logs[0]["output_tail"] == "start\nkey=***", (pipeline_id, logs)
        assert _stored_output(server, pipeline_id) == "start\nkey=***"
        shown = cli(server, "logs", pipeline_id).stdout
        assert "start" in shown and "sup3r-s3cret" not in shown


def test_node_command_puts_a_node_in_maintenance_and_back(
    server: Server, agent: Process, node_id: str
) -> None:
    into = cli(server, "node", node_id, "maintenance")
    table = cli(server, "nodes")
    back = cli(server, "node", node_id, "enable", "-o", "json")

    assert into.stdout.strip() == f"node {node_id} is now in maintenance"
    assert "maintenance" in table.stdout
    assert json.loads(back.stdout)["state"] == "online"


def test_an_unreachable_server_is_named_with_the_fix_and_exit_code_6(
    workdir: Path,
) -> None:
    answer = subprocess.run(
        [*gamepipeline_command(), "nodes", "--server-url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert answer.returncode == EXIT_SERVER
    assert "cannot reach the server at http://127.0.0.1:9" in answer.stderr
    assert "--server-url" in answer.stderr


def test_list_reads_at_80_columns_and_shows_whole_ids_at_200(
    server: Server, workdir: Path, run_id: str
) -> None:
    """At 80 columns: short ids (which the id commands take), relative times, the
    message folded whole; at 200: whole ids, names and timestamps."""
    document = template(workdir / "a-rather-long-template-name.json", "echo hi")
    gone = f"gone-{run_id}"
    ids = [
        json.loads(
            cli(server, "submit", document, "--env", "API_KEY=k", "--node", gone,
                "-o", "json").stdout
        )["id"]
        for _ in range(2)
    ]  # fmt: skip
    message = (
        f"waiting for node {gone}, which has never connected to this server; check "
        "the node id (GET /api/nodes lists the known ones) or start its agent"
    )
    eventually_waiting = time.monotonic() + 30
    while server.api.pipeline(ids[0])["message"] != message:
        assert time.monotonic() < eventually_waiting, server.api.pipeline(ids[0])
        time.sleep(0.2)

    narrow = cli(server, "list", columns=80)
    wide = cli(server, "list", columns=200)

    assert narrow.returncode == 0 and wide.returncode == 0, narrow.stderr + wide.stderr
    lines = narrow.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, narrow.stdout
    assert lines[0].split() == ["id", "name", "state", "node", "created", "message"]
    rows = [line for line in lines if line[:8] in {i[:8] for i in ids}]
    assert [row[:8] for row in rows] == [i[:8] for i in reversed(ids)], narrow.stdout
    for row in rows:
        assert row.split()[1].startswith("a-rather-lon") and "…" in row.split()[1]
        assert row.split()[2] == "pending"
        assert re.search(r"\b\d+s ago\b", row), row
    assert all(i not in narrow.stdout for i in ids), "whole ids do not fit at 80"
    # The message, folded over the row's lines, reads whole.
    assert " ".join(message.split()) in " ".join(narrow.stdout.split()), narrow.stdout
    assert "ids shortened" in narrow.stdout

    wide_lines = wide.stdout.splitlines()
    assert max(len(line) for line in wide_lines) <= 200
    for pipeline_id in ids:
        [row] = [line for line in wide_lines if line.startswith(pipeline_id + " ")]
        assert re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", row), row
        assert "a-rather-long-template-name" in row, row
    assert " ".join(message.split()) in " ".join(wide.stdout.split()), wide.stdout
    assert "ids shortened" not in wide.stdout

    # A short id from the narrow table is one the next command takes.
    shown = cli(server, "status", ids[0][:8], "-o", "json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == ids[0]


def test_server_url_and_token_count_before_the_command_after_it_and_from_the_env(
    server: Server,
) -> None:
    """`gamepipeline --server-url URL list` as well as `list --server-url URL`; an
    option given after the command beats one given before it, and both beat the env."""
    url, dead = f"http://127.0.0.1:{server.http_port}", "http://127.0.0.1:9"
    assert server.token is not None
    token = ["--token", server.token]
    bare = {k: v for k, v in os.environ.items() if not k.startswith("GAMEPIPELINE_")}

    def run(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*gamepipeline_command(), *argv],
            capture_output=True,
            text=True,
            env={**bare, "COLUMNS": "200", **env},
            timeout=60,
            check=False,
        )

    before = run("--server-url", url, *token, "list", "-o", "json")
    after = run("list", "--server-url", url, *token, "-o", "json")
    from_env = run(
        "list", "-o", "json", GAMEPIPELINE_URL=url, GAMEPIPELINE_TOKEN=server.token
    )
    over_env = run(
        "--server-url", url, *token, "list", "-o", "json", GAMEPIPELINE_URL=dead
    )
    after_wins = run("--server-url", dead, "list", "--server-url", url, *token)
    no_token = run("--server-url", url, "list")

    for answer in (before, after, from_env, over_env):
        assert answer.returncode == 0, answer.stderr
        assert json.loads(answer.stdout) == []
    assert after_wins.returncode == 0, after_wins.stderr
    assert no_token.returncode == EXIT_SERVER, no_token.stderr
    assert f"the server at {url} answered HTTP 401" in no_token.stderr


def _eventually_running(server: Server, count: int) -> list[str]:
    deadline = time.monotonic() + 60
    while True:
        running = [p["id"] for p in server.api.pipelines() if p["state"] == "running"]
        if len(running) >= count or time.monotonic() > deadline:
            assert len(running) == count, server.api.pipelines()
            return running
        time.sleep(0.2)
