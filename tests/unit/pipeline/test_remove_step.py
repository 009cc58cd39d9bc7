"""``type: remove``: the step that stops and removes a container GamePipeline made."""

from __future__ import annotations

from typing import Any

import pytest

from gamepipeline.pipeline import (
    LABEL_PIPELINE,
    ValidationError,
    bind,
    compile_playbook,
    load_template,
)
from gamepipeline.pipeline.compiler import DOCKER_CONTAINER, FAIL, INSPECT


def remove_doc(**container: Any) -> dict[str, Any]:
    return {
        "name": "recycle",
        "args": ["INSTANCE"],
        "steps": [{"name": "remove game", "type": "remove", "container": container}],
    }


def problems_of(document: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        load_template(document)
    return {p.path: p.message for p in caught.value.problems}


def compiled(document: dict[str, Any]) -> list[dict[str, Any]]:
    bound = bind(load_template(document), {"INSTANCE": "i-1"}, {})
    tasks: list[dict[str, Any]] = compile_playbook(bound, pipeline_id="p9")[0]["tasks"]
    return tasks


def test_remove_step_needs_only_the_container_name() -> None:
    template = load_template(remove_doc(container_name="game-${{ args.INSTANCE }}"))
    [step] = template.steps
    assert step.removes and not step.runs_to_completion
    assert step.container.image is None


def test_remove_step_compiles_to_inspect_ownership_and_absent() -> None:
    inspect, ownership, main = compiled(
        remove_doc(container_name="game-${{ args.INSTANCE }}", stop_grace_period="1m")
    )

    assert inspect[INSPECT] == {"name": "game-i-1"}
    assert FAIL in ownership and LABEL_PIPELINE in ownership["when"]
    assert main["name"] == "[step 0] remove game"
    assert main[DOCKER_CONTAINER] == {
        "name": "game-i-1",
        "state": "absent",
        "keep_volumes": False,
        "stop_timeout": 60,
    }
    # A container someone else made is never removed: the main task waits on ownership.
    assert main["when"] == f"not ({ownership['when']})"


def test_remove_step_keeps_step_controls() -> None:
    doc = remove_doc(container_name="game-x")
    doc["steps"][0].update(timeout="30s", retries=2, continue_on_error=True)
    tasks = compiled(doc)
    assert tasks[-1]["timeout"] == 30 and tasks[-1]["retries"] == 2
    assert all(task["ignore_errors"] is True for task in tasks)


def test_remove_step_without_container_name_says_what_to_add() -> None:
    problems = problems_of(remove_doc(stop_grace_period="5s"))
    assert (
        "add it, such as container_name:"
        in problems["steps[0].container.container_name"]
    )


def test_remove_step_refuses_every_other_container_field() -> None:
    problems = problems_of(
        remove_doc(container_name="game-x", image="busybox", ports=["80:80"])
    )
    assert set(problems) == {"steps[0].container.image", "steps[0].container.ports"}
    assert problems["steps[0].container.image"].startswith(
        "a remove step only names the container to remove; drop image"
    )


def test_remove_step_checks_names_and_durations_like_any_step() -> None:
    problems = problems_of(remove_doc(container_name="-bad", stop_grace_period="soon"))
    assert (
        "is not a Docker container name"
        in problems["steps[0].container.container_name"]
    )
    assert "is not a duration" in problems["steps[0].container.stop_grace_period"]


def test_bound_container_name_is_checked_after_substitution() -> None:
    template = load_template(remove_doc(container_name="game-${{ args.INSTANCE }}"))
    with pytest.raises(ValidationError) as caught:
        bind(template, {"INSTANCE": "a b"}, {})
    [problem] = caught.value.problems
    assert problem.path == "steps[0].container.container_name"


@pytest.mark.parametrize("kind", ["container", "service"])
def test_other_steps_still_need_an_image(kind: str) -> None:
    doc = {"name": "t", "steps": [{"name": "s", "type": kind, "container": {}}]}
    assert problems_of(doc) == {
        "steps[0].container.image": 'the required field "image" is missing; add it'
    }


def test_missing_image_is_reported_with_the_step_s_other_problems() -> None:
    doc = {"name": "t", "steps": [{"name": "s", "container": {"ports": ["x"]}}]}
    assert set(problems_of(doc)) == {
        "steps[0].container.image",
        "steps[0].container.ports[0]",
    }
