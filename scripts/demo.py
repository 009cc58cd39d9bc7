"""`make demo`: start a server and one agent, run a shipped template, show the outcome.

The server and agent keep running afterwards (the API stays at http://127.0.0.1:8080) so
the run can be looked at; `make demo-stop` stops them. Their logs are in var/demo/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gamepipeline.client import ApiClient  # noqa: E402

STATE_DIR = ROOT / "var" / "demo"
GRPC_ADDRESS = "127.0.0.1:50051"
HTTP_ADDRESS = "127.0.0.1:8080"
NODE_ID = "demo-node"

# Values the demo submits with each shipped template. Secrets here are demo values only.
DEMO_VALUES: dict[str, dict[str, dict[str, str]]] = {
    "demo": {
        "args": {
            "PLATFORM": "steam",
            "INSTANCE": "demo-1",
            "IMAGE": "game-server:latest",
            "PORT": "8081",
            "HOSTNAME": "gamenode-demo",
        },
        "envs": {
            "BEAGLE_WIND_ROOT": "/data/wind",
            "BEAGLE_WIND_PASSWD": "demo-password",
            "BEAGLE_WIND_TURN_HOST": "turn.example.internal",
            "BEAGLE_WIND_TURN_PORT": "3478",
            "BEAGLE_WIND_TURN_PROTOCOL": "udp",
            "BEAGLE_WIND_TURN_USERNAME": "demo",
            "BEAGLE_WIND_TURN_PASSWORD": "demo-turn-password",
            "S3_ACCESS_KEY": "demo-access-key",
            "S3_SECRET_KEY": "demo-secret-key",
            "S3_BUCKET": "beaglewind",
            "S3_URL": "http://127.0.0.1:9000",
        },
    },
}


def executable() -> str:
    found = shutil.which("gamepipeline", path=str(Path(sys.executable).parent))
    if found is None:
        sys.exit("demo: the gamepipeline command is not installed; run `make venv`")
    return found


def start(name: str, argv: list[str]) -> int:
    log = open(STATE_DIR / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    (STATE_DIR / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def stop_previous() -> None:
    for name in ("agent", "server"):
        pid_file = STATE_DIR / f"{name}.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)
            print(f"demo: stopped the previous {name} (pid {pid})")
        except ProcessLookupError:
            pass
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        pid_file.unlink()


def wait_for(what: str, check: Any, timeout: float, log: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.2)
    tail = (STATE_DIR / log).read_text(errors="replace").splitlines()[-20:]
    sys.exit(
        f"demo: {what} within {timeout:.0f} s; last lines of {log}:\n" + "\n".join(tail)
    )


def show(pipeline: dict[str, Any]) -> None:
    print(f"\npipeline {pipeline['id']} ({pipeline['name']}): {pipeline['state']}")
    if pipeline.get("message"):
        print(f"  {pipeline['message']}")
    for step in pipeline["steps"]:
        line = f"  step {step['index']} {step['name']}: {step['state']}"
        if step.get("message"):
            line += f" - {step['message']}"
        print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--template", default="demo")
    parser.add_argument("--stop", action="store_true", help="stop the demo's processes")
    options = parser.parse_args()

    STATE_DIR.mkdir(parents=True, exist_ok=True)
    stop_previous()
    if options.stop:
        return 0

    template = ROOT / "pipelines" / f"{options.template}.yaml"
    if not template.exists():
        known = ", ".join(sorted(p.stem for p in (ROOT / "pipelines").glob("*.yaml")))
        sys.exit(f"demo: no template {options.template!r}; shipped: {known}")
    values = DEMO_VALUES.get(options.template, {"args": {}, "envs": {}})

    exe = executable()
    ports_file = STATE_DIR / "ports.json"
    ports_file.unlink(missing_ok=True)
    start(
        "server",
        [
            exe,
            "server",
            "--grpc",
            GRPC_ADDRESS,
            "--http",
            HTTP_ADDRESS,
            "--db",
            str(STATE_DIR / "gamepipeline.db"),
            "--port-file",
            str(ports_file),
        ],
    )
    wait_for("the server did not listen", ports_file.exists, 30, "server.log")
    ports = json.loads(ports_file.read_text())
    client = ApiClient(f"http://127.0.0.1:{ports['http']}")
    print(f"demo: server up (HTTP {ports['http']}, gRPC {ports['grpc']})")

    start(
        "agent",
        [
            exe,
            "agent",
            "--server",
            f"127.0.0.1:{ports['grpc']}",
            "--node-id",
            NODE_ID,
            "--work-dir",
            str(STATE_DIR / "agent"),
        ],
    )
    wait_for(
        "the agent did not connect",
        lambda: any(
            n["node_id"] == NODE_ID and n["state"] == "online" for n in client.nodes()
        ),
        30,
        "agent.log",
    )
    print(f"demo: agent {NODE_ID} connected")

    started = time.monotonic()
    pipeline_id = client.submit(
        template.read_text(), args=values["args"], envs=values["envs"], node=NODE_ID
    )
    print(f"demo: submitted {template.relative_to(ROOT)} as pipeline {pipeline_id}")
    final = client.wait(pipeline_id, timeout=300)
    show(final)
    print(f"\nfinished in {time.monotonic() - started:.1f} s; its containers:")
    subprocess.run(
        [
            "docker",
            "ps",
            "--filter",
            f"label=io.beaglewind.gamepipeline.pipeline={pipeline_id}",
            "--format",
            "table {{.Names}}\t{{.Image}}\t{{.Status}}\t{{.Ports}}",
        ],
        check=False,
    )
    print(
        f"\nThe server and agent keep running: curl http://127.0.0.1:{ports['http']}"
        f"/api/pipelines/{pipeline_id}\nStop them with `make demo-stop`; logs in var/demo/."
    )
    return 0 if final["state"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
