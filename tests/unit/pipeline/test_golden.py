"""The shipped templates' compiled playbooks, pinned.

A change in the compiler shows up here as a diff to review. To accept it, rerun with
GAMEPIPELINE_UPDATE_GOLDEN=1 and commit the files under golden/.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gamepipeline.pipeline import bind, compile_playbook, load_template, render_playbook

GOLDEN = Path(__file__).parent / "golden"
TEMPLATES = [
    "start-platform.yaml",
    "test-pipeline.yaml",
    "design-2.yaml",
    "design-4.1.yaml",
]


def rendered(data_dir: Path, name: str) -> str:
    template = load_template((data_dir / name).read_bytes())
    args = {arg: f"{arg.lower()}-1" for arg in template.args}
    if "PORT" in args:
        args["PORT"] = "18080"
    if "IMAGE" in args:
        args["IMAGE"] = "game-server:latest"
    envs = {env: f"{env.lower()}-1" for env in template.envs}
    if "BEAGLE_WIND_ROOT" in envs:
        envs["BEAGLE_WIND_ROOT"] = "/data/wind"
    bound = bind(template, args, envs)
    return render_playbook(compile_playbook(bound, pipeline_id="golden-1"))


@pytest.mark.parametrize("name", TEMPLATES)
def test_compiled_playbook_matches_golden_file(data_dir: Path, name: str) -> None:
    golden = GOLDEN / name
    text = rendered(data_dir, name)
    if os.environ.get("GAMEPIPELINE_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")
