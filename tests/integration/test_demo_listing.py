"""`make demo`'s closing listing names the containers the pipeline's steps name, as the
engine holds them now: a second demo finds the first one's containers still running
(they already match, so they are kept) and shows them rather than an empty list."""

from __future__ import annotations

import contextlib
import importlib.util
import uuid
from types import ModuleType

import docker
import pytest

from .conftest import ROOT

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]

IMAGE = "gamepipeline/stand-in:busybox"
LABEL = "io.beaglewind.gamepipeline.pipeline"


def demo_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "demo_script", ROOT / "scripts" / "demo.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_listing_shows_kept_containers_of_an_earlier_run_by_name(
    docker_client: docker.DockerClient, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = demo_script()
    run = uuid.uuid4().hex[:8]
    earlier, current = f"earlier-{run}", f"current-{run}"
    pipeline = {
        "id": current,
        "document": {
            "steps": [
                {"name": "db", "container": {"container_name": f"game-db-{run}"}},
                {
                    "name": "game",
                    "container": {"container_name": "game-${{ args.INSTANCE }}"},
                },
                {"name": "prepare", "container": {"image": IMAGE}},
            ]
        },
    }
    names = demo.step_containers(pipeline, {"INSTANCE": f"i-{run}"})
    assert names == [f"game-db-{run}", f"game-i-{run}", f"gp-{current}-2"]

    kept = docker_client.containers.create(
        IMAGE, ["sleep", "60"], name=f"game-db-{run}", labels={LABEL: earlier}
    )
    made = docker_client.containers.create(
        IMAGE, ["sleep", "60"], name=f"game-i-{run}", labels={LABEL: current}
    )
    try:
        demo.show_containers(names, current)
    finally:
        for container in (kept, made):
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)

    lines = capsys.readouterr().out.splitlines()
    row = {line.split()[0]: line for line in lines[1:]}
    assert f"(from pipeline {earlier})" in row[f"game-db-{run}"]
    assert IMAGE in row[f"game-i-{run}"]
    assert "from pipeline" not in row[f"game-i-{run}"]
    assert "not on the engine" in row[f"gp-{current}-2"]
