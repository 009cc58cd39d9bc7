"""The server as the `gamepipeline server` process a user runs (issue #4: restarts)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.timeout(90)

DOCUMENT = {"name": "p", "steps": [{"name": "s", "container": {"image": "busybox"}}]}


def launch(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port_file = workdir / "ports.json"
    port_file.unlink(missing_ok=True)
    argv = [
        sys.executable, "-m", "gamepipeline", "server",
        "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0",
        "--db", str(workdir / "server.db"), "--port-file", str(port_file),
    ]  # fmt: skip
    log = (workdir / "server.log").open("ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail((workdir / "server.log").read_text())
        time.sleep(0.05)
    ports = json.loads(port_file.read_text())
    assert set(ports) == {"grpc", "http"} and all(
        isinstance(p, int) for p in ports.values()
    )
    return proc, f"http://127.0.0.1:{ports['http']}"


def test_server_process_writes_its_ports_and_stops_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    proc, base = launch(tmp_path)

    assert requests.get(f"{base}/healthz", timeout=5).json()["status"] == "ok"
    proc.send_signal(signal.SIGTERM)

    assert proc.wait(timeout=20) == 0


def test_pipeline_stored_before_a_sigkill_is_there_after_the_restart(
    tmp_path: Path,
) -> None:
    proc, base = launch(tmp_path)
    answer = requests.post(f"{base}/api/pipelines", json=DOCUMENT, timeout=5)
    assert answer.status_code == 201, answer.text
    proc.kill()
    proc.wait(timeout=10)

    proc, base = launch(tmp_path)
    try:
        shown = requests.get(base + answer.headers["Location"], timeout=5).json()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert (shown["id"], shown["state"]) == (answer.json()["id"], "pending")
