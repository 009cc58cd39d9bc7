"""`make demo`: start a server and one agent, run a shipped template, show the outcome.

The server and agent keep running afterwards (the API stays at http://127.0.0.1:8080) so
the run can be looked at; `make demo-stop` stops them. Their logs are in var/demo/.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
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

# Values the demo submits. Secrets here are demo values only. The S3 envs and the node's
# BEAGLE_WIND_ROOT are not listed: the demo's server and agent configuration provide them.
# The demo's own game server publishes 8081; the GPU templates' game containers get 8082.
GAME = {"IMAGE": "game-server:latest", "PORT": "8082", "HOSTNAME": "gamenode-demo"}
STREAM = {
    "BEAGLE_WIND_PASSWD": "demo-password",
    "BEAGLE_WIND_TURN_HOST": "turn.example.internal",
    "BEAGLE_WIND_TURN_PORT": "3478",
    "BEAGLE_WIND_TURN_PROTOCOL": "udp",
    "BEAGLE_WIND_TURN_USERNAME": "turn-user",
    "BEAGLE_WIND_TURN_PASSWORD": "demo-turn-password",
}
DEMO_VALUES: dict[str, dict[str, dict[str, str]]] = {
    "demo": {
        "args": {"PLATFORM": "steam", "INSTANCE": "demo-1", **GAME, "PORT": "8081"},
        "envs": STREAM,
    },
    "start-platform": {
        "args": {"PLATFORM": "steam", "INSTANCE": "demo-1", **GAME},
        "envs": STREAM,
    },
    "instance-start": {
        "args": {"PLATFORM": "steam", "INSTANCE": "demo-1", **GAME},
        "envs": STREAM,
    },
    "instance-recycle": {"args": {"INSTANCE": "demo-1"}, "envs": {}},
    "platform-admin-maintenance": {
        "args": {"PLATFORM": "steam", **GAME},
        "envs": STREAM,
    },
    "platform-user-maintenance": {
        "args": {"PLATFORM": "steam", "PASSWORD": "user-password", **GAME},
        "envs": {k: v for k, v in STREAM.items() if k != "BEAGLE_WIND_PASSWD"},
    },
    "platform-save-and-remove": {"args": {"PLATFORM": "steam"}, "envs": {}},
}
NODE_ROOT = "/data/gamepipeline-demo"
S3_BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY = "beaglewind", "demo-access", "demo-secret"
S3_PORT = 9000
SAMPLE_PLATFORM = {
    "system/README.txt": "A sample GamePlatform unpacked by the demo.\n",
    "system/.config/platform.ini": "[platform]\nname=steam\n",
}


def executable() -> str:
    found = shutil.which("gamepipeline", path=str(Path(sys.executable).parent))
    if found is None:
        sys.exit("demo: the gamepipeline command is not installed; run `make venv`")
    return found


PROCESSES: dict[str, subprocess.Popen[bytes]] = {}


def start(name: str, argv: list[str]) -> int:
    # Each demo starts its logs afresh, so what a failure shows is this run's.
    log = open(STATE_DIR / f"{name}.log", "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    (STATE_DIR / f"{name}.pid").write_text(str(proc.pid))
    PROCESSES[name] = proc
    return proc.pid


def stop_previous() -> None:
    for name in ("agent", "server", "s3"):
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
    """Poll ``check`` until it answers; stop at once if the process behind ``log``
    exits, showing the end of its log."""
    proc = PROCESSES.get(log.removesuffix(".log"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        if proc is not None and proc.poll() is not None:
            what = f"{what}: it exited with code {proc.returncode}"
            break
        time.sleep(0.2)
    else:
        what = f"{what} within {timeout:.0f} s"
    tail = (STATE_DIR / log).read_text(errors="replace").splitlines()[-20:]
    sys.exit(f"demo: {what}; last lines of {log}:\n" + "\n".join(tail))


def show(pipeline: dict[str, Any]) -> None:
    print(f"\npipeline {pipeline['id']} ({pipeline['name']}): {pipeline['state']}")
    if pipeline.get("message"):
        print(f"  {pipeline['message']}")
    for step in pipeline["steps"]:
        line = f"  step {step['index']} {step['name']}: {step['state']}"
        if step.get("message"):
            line += f" - {step['message']}"
        print(line)


def gpu_runtime() -> bool:
    runtimes = subprocess.run(
        ["docker", "info", "--format", "{{json .Runtimes}}"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    return "nvidia" in runtimes


def bridge_gateway() -> str:
    """This host's address on Docker's default bridge, where step containers reach it."""
    found = subprocess.run(
        ["docker", "network", "inspect", "bridge", "--format",
         "{{range .IPAM.Config}}{{.Gateway}}{{end}}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    return found or "172.17.0.1"


def start_s3(platform: str) -> dict[str, str]:
    """A local S3 endpoint (moto's server) holding a sample platform archive; answers
    the S3 envs the server's configuration gives every pipeline."""
    import boto3  # from the dev extra, with moto

    host = bridge_gateway()
    url = f"http://{host}:{S3_PORT}"
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if moto is None:
        sys.exit("demo: moto_server is not installed; run `make venv`")
    start("s3", [moto, "-H", host, "-p", str(S3_PORT)])
    s3 = boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1",
        aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=S3_SECRET_KEY,
    )  # fmt: skip

    def bucket_made() -> bool:
        try:
            s3.create_bucket(Bucket=S3_BUCKET)
        except Exception:
            return False
        return True

    wait_for("the local S3 endpoint did not answer", bucket_made, 30, "s3.log")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name, text in SAMPLE_PLATFORM.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    s3.put_object(
        Bucket=S3_BUCKET, Key=f"platforms/{platform}.tar.gz", Body=archive.getvalue()
    )
    print(f"demo: local S3 at {url} holds platforms/{platform}.tar.gz")
    return {
        "S3_URL": url,
        "S3_BUCKET": S3_BUCKET,
        "S3_ACCESS_KEY": S3_ACCESS_KEY,
        "S3_SECRET_KEY": S3_SECRET_KEY,
    }


_ARG = re.compile(r"\$\{\{\s*args\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def step_containers(pipeline: dict[str, Any], args: dict[str, str]) -> list[str]:
    """The container name each step of the pipeline names (its ``container_name`` with
    the demo's args put in, or the name GamePipeline gives one without)."""
    names = []
    for index, step in enumerate(pipeline.get("document", {}).get("steps", [])):
        named = (step.get("container") or {}).get("container_name")
        if named:
            names.append(_ARG.sub(lambda m: args.get(m.group(1), m.group(0)), named))
        else:
            names.append(f"gp-{pipeline['id']}-{index}")
    return list(dict.fromkeys(names))


def show_containers(names: list[str], pipeline_id: str) -> None:
    """What the engine holds under those names now, whoever's run made them: a second
    demo leaves the first one's running containers in place (they already match)."""
    label = "io.beaglewind.gamepipeline.pipeline"
    listed = subprocess.run(
        [
            "docker", "ps", "--all", "--no-trunc",
            "--format", f'{{{{.Names}}}}\t{{{{.Image}}}}\t{{{{.Status}}}}\t'
            f'{{{{.Ports}}}}\t{{{{.Label "{label}"}}}}',
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    found = {}
    for line in listed.stdout.splitlines():
        name, image, status, ports, owner = (line.split("\t") + [""] * 5)[:5]
        found[name] = (image, status, ports, owner)
    rows = [("NAME", "IMAGE", "STATUS", "PORTS", "")]
    for name in names:
        if name not in found:
            rows.append(
                (name, "-", "not on the engine (removed, or never created)", "", "")
            )
            continue
        image, status, ports, owner = found[name]
        note = "" if owner == pipeline_id else f"(from pipeline {owner or '?'})"
        rows.append((name, image, status, ports, note))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print(
            "  ".join(
                cell.ljust(w) for cell, w in zip(row, widths, strict=True)
            ).rstrip()
        )


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
    server_config: dict[str, Any] = {
        "db": str(STATE_DIR / "gamepipeline.db"),
        "grpc": GRPC_ADDRESS,
        "http": HTTP_ADDRESS,
        "templates_dir": str(ROOT / "pipelines"),
    }
    if "S3_URL" in template.read_text():
        server_config["envs"] = start_s3(values["args"].get("PLATFORM", "steam"))
    config_file = STATE_DIR / "server.yaml"
    config_file.write_text(json.dumps(server_config, indent=2))
    ports_file = STATE_DIR / "ports.json"
    ports_file.unlink(missing_ok=True)
    start(
        "server",
        [exe, "server", "--config", str(config_file), "--port-file", str(ports_file)],
    )
    wait_for("the server did not listen", ports_file.exists, 30, "server.log")
    ports = json.loads(ports_file.read_text())
    client = ApiClient(f"http://127.0.0.1:{ports['http']}")
    print(f"demo: server up (HTTP {ports['http']}, gRPC {ports['grpc']})")

    Path(NODE_ROOT).mkdir(parents=True, exist_ok=True)
    start(
        "agent",
        [
            exe, "agent",
            "--server", f"127.0.0.1:{ports['grpc']}",
            "--node-id", NODE_ID,
            "--work-dir", str(STATE_DIR / "agent"),
            "--env", f"BEAGLE_WIND_ROOT={NODE_ROOT}",
        ],
    )  # fmt: skip
    wait_for(
        "the agent did not connect",
        lambda: any(
            n["node_id"] == NODE_ID and n["state"] == "online" for n in client.nodes()
        ),
        30,
        "agent.log",
    )
    print(f"demo: agent {NODE_ID} connected (BEAGLE_WIND_ROOT={NODE_ROOT})")
    if "gpu" in template.read_text() and not gpu_runtime():
        print(
            "demo: note: this engine has no GPU runtime, so a step that reserves a GPU "
            "fails at once with the engine's reason; the steps before it still run"
        )

    started = time.monotonic()
    pipeline_id = client.submit(
        template=options.template,
        args=values["args"],
        envs=values["envs"],
        node=NODE_ID,
    )
    print(f"demo: submitted {template.relative_to(ROOT)} as pipeline {pipeline_id}")
    final = client.wait(pipeline_id, timeout=300)
    show(final)
    print(f"\nfinished in {time.monotonic() - started:.1f} s; its containers:")
    show_containers(step_containers(final, values["args"]), pipeline_id)
    print(
        f"\nThe server and agent keep running: curl http://127.0.0.1:{ports['http']}"
        f"/api/pipelines/{pipeline_id}\nStop them with `make demo-stop`; logs in var/demo/."
    )
    if final["state"] != "completed":
        print(
            f"\ndemo: the pipeline ended {final['state']}, so the demo exits 1 and make "
            "reports `Error 1`; without a GPU runtime that is expected of a template "
            "with a GPU step"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
