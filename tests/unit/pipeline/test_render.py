"""render_playbook: read back by Ansible's own loader, no template value is trusted."""

from __future__ import annotations

from typing import Any

from ansible.parsing.utils.yaml import from_yaml
from ansible.template import is_trusted_as_template, trust_as_template

from gamepipeline.pipeline import bind, compile_playbook, load_template, render_playbook
from gamepipeline.pipeline.compiler import DOCKER_CONTAINER
from gamepipeline.pipeline.expressions import walk_strings

from .pipeline_helpers import container_doc

CANARIES = {
    "MATH": "{{ 7 * 7 }}",
    "PIPE": "hi {{ lookup('pipe', 'id') }}",
    "BLOCK": "{% for x in [1] %}{{ x }}{% endfor %}",
}


def load_as_ansible_does(text: str) -> Any:
    """Parse playbook text the way ansible-playbook reads a playbook file."""
    return from_yaml(trust_as_template(text))


def canary_playbook() -> str:
    doc = container_doc(
        container_name="canary-box",
        hostname="canary",
        environment={
            **CANARIES,
            "N": 1920,
            "F": False,
            "ARG": "${{ args.A }}",
            "ENV": "${{ envs.E }}",
            "ZH": "中文 {{ 1 }}",
        },
        command=["echo", "{{ 7 * 7 }}", "true", "1920", "null"],
        labels={"{{ key }}": "{{ value }}"},
        volumes=["/tmp/{{ x }}:/data"],
    )
    doc["name"] = "{{ name }}"
    doc["steps"][0]["name"] = "步骤 {{ 7 * 7 }}"
    doc["args"], doc["envs"] = ["A"], ["E"]
    bound = bind(load_template(doc), {"A": CANARIES["PIPE"]}, {"E": CANARIES["MATH"]})
    return render_playbook(compile_playbook(bound, pipeline_id="canary"))


def container_task(play: Any) -> dict[str, Any]:
    [task] = [
        t
        for t in play["tasks"]
        if DOCKER_CONTAINER in t and t[DOCKER_CONTAINER].get("state") == "started"
    ]
    return task


def test_no_value_from_template_args_or_envs_is_trusted_as_jinja() -> None:
    [play] = load_as_ansible_does(canary_playbook())
    task = container_task(play)
    untrusted = [
        path
        for path, text in walk_strings(task[DOCKER_CONTAINER], DOCKER_CONTAINER)
        if is_trusted_as_template(text)
    ]
    assert untrusted == []
    assert not is_trusted_as_template(task["name"])
    assert not is_trusted_as_template(play["name"])
    labels = task[DOCKER_CONTAINER]["labels"]
    assert not any(is_trusted_as_template(k) for k in labels)


def test_canaries_survive_character_for_character() -> None:
    [play] = load_as_ansible_does(canary_playbook())
    options = container_task(play)[DOCKER_CONTAINER]
    env = options["env"]
    assert env["MATH"] == "{{ 7 * 7 }}"
    assert env["PIPE"] == "hi {{ lookup('pipe', 'id') }}"
    assert env["ARG"] == "hi {{ lookup('pipe', 'id') }}"
    assert env["ENV"] == "{{ 7 * 7 }}"
    assert env["ZH"] == "中文 {{ 1 }}"
    assert options["command"] == ["echo", "{{ 7 * 7 }}", "true", "1920", "null"]
    assert container_task(play)["name"] == "[step 0] 步骤 {{ 7 * 7 }}"


def test_values_that_look_like_numbers_or_booleans_stay_strings() -> None:
    [play] = load_as_ansible_does(canary_playbook())
    options = container_task(play)[DOCKER_CONTAINER]
    assert options["env"]["N"] == "1920" and isinstance(options["env"]["N"], str)
    assert options["env"]["F"] == "false" and isinstance(options["env"]["F"], str)
    assert [type(w) for w in options["command"]] == [type(options["command"][0])] * 5
    assert all(isinstance(w, str) for w in options["command"])


def test_only_the_compilers_conditionals_are_trusted() -> None:
    [play] = load_as_ansible_does(canary_playbook())
    trusted = {
        key
        for task in play["tasks"]
        for key, value in task.items()
        if isinstance(value, str) and is_trusted_as_template(value)
    }
    assert trusted <= {"when", "failed_when", "until", "changed_when", "register"}


def test_chinese_text_is_written_as_text_not_escapes() -> None:
    text = canary_playbook()
    assert "步骤" in text and "中文" in text
    assert "\\u" not in text
