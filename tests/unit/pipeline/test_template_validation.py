"""load_template: structure, unknown fields, types, references; all problems at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from gamepipeline.pipeline import (
    Problem,
    Template,
    ValidationError,
    load_template,
)

from .pipeline_helpers import container_doc


def problems_of(document: object) -> list[Problem]:
    with pytest.raises(ValidationError) as caught:
        load_template(document)  # type: ignore[arg-type]
    return caught.value.problems


@pytest.mark.parametrize(
    "name",
    ["start-platform.yaml", "test-pipeline.yaml", "design-2.yaml", "design-4.1.yaml"],
)
def test_shipped_and_design_templates_load_unchanged(data_dir: Path, name: str) -> None:
    template = load_template((data_dir / name).read_bytes())
    assert template.steps


@pytest.mark.parametrize(
    "name",
    ["start-platform.yaml", "test-pipeline.yaml", "design-2.yaml", "design-4.1.yaml"],
)
def test_to_document_loads_back_to_the_same_template(data_dir: Path, name: str) -> None:
    template = load_template((data_dir / name).read_bytes())
    again = load_template(template.to_document())
    assert again == template
    assert again.to_document() == template.to_document()


def test_test_pipeline_keeps_id_and_model_metadata(data_dir: Path) -> None:
    template = load_template((data_dir / "test-pipeline.yaml").read_bytes())
    assert template.id == "test-pipeline-1"
    assert template.model == "start-platform"
    assert template.envs == [] and template.args == []
    assert [s.type for s in template.steps] == ["container"] * 3
    assert all(s.runs_to_completion for s in template.steps)


def test_start_platform_last_step_is_a_service(data_dir: Path) -> None:
    template = load_template((data_dir / "start-platform.yaml").read_bytes())
    game = template.steps[2]
    assert game.type == "service"
    assert not game.runs_to_completion
    assert game.container.environment["DISPLAY_SIZEW"] == "1920"


def test_unknown_field_suggests_the_closest_known_key() -> None:
    doc = container_doc(enviroment={"A": "1"})
    assert problems_of(doc) == [
        Problem(
            "steps[0].container.enviroment",
            '"enviroment" is not a known field; did you mean "environment"?',
        )
    ]


def test_unknown_top_level_field_suggests_steps() -> None:
    doc = {
        "name": "t",
        "step": [],
        "steps": [{"name": "s", "container": {"image": "a"}}],
    }
    [problem] = problems_of(doc)
    assert problem.path == "step"
    assert 'did you mean "steps"?' in problem.message


def test_unknown_field_deep_in_gpu_request_is_located() -> None:
    doc = container_doc(
        deploy={"resources": {"reservations": {"devices": [{"capabilites": ["gpu"]}]}}}
    )
    paths = {p.path: p.message for p in problems_of(doc)}
    key = "steps[0].container.deploy.resources.reservations.devices[0].capabilites"
    assert 'did you mean "capabilities"?' in paths[key]


def test_every_problem_is_reported_at_once() -> None:
    doc = {
        "name": "t",
        "steps": [
            {"name": "a", "container": {"image": "a", "ports": ["80:80:80", "x"]}},
            {"name": "b", "type": "job", "container": {}},
        ],
    }
    paths = [p.path for p in problems_of(doc)]
    assert "steps[0].container.ports[0]" in paths
    assert "steps[0].container.ports[1]" in paths
    assert "steps[1].type" in paths
    assert "steps[1].container.image" in paths


def test_port_problem_reads_as_a_sentence_with_path_value_and_fix() -> None:
    [problem] = problems_of(container_doc(ports=["80:80:80"]))
    assert str(problem).startswith(
        'steps[0].container.ports[0]: "80:80:80" is not a port mapping'
    )
    assert "write [IP:][HOST[-END]:]CONTAINER[-END][/tcp|udp|sctp]" in str(problem)


def test_validation_error_text_lists_one_problem_per_line() -> None:
    with pytest.raises(ValidationError) as caught:
        load_template(container_doc(ports=["0"], devices=["dev"]))
    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("steps[0].container.")


def test_wrong_type_names_what_is_expected() -> None:
    [problem] = problems_of(container_doc(privileged="yes please"))
    assert problem.path == "steps[0].container.privileged"
    assert problem.message == "expected true or false, got 'yes please'"


def test_missing_name_and_steps_are_both_reported() -> None:
    paths = {p.path for p in problems_of({"description": "x"})}
    assert paths == {"name", "steps"}


def test_empty_steps_is_an_error() -> None:
    [problem] = problems_of({"name": "t", "steps": []})
    assert problem.path == "steps"


def test_reference_to_undeclared_arg_is_an_error_with_path() -> None:
    doc = container_doc(hostname="${{ args.HOST }}")
    [problem] = problems_of(doc)
    assert problem.path == "steps[0].container.hostname"
    assert "'HOST'" in problem.message and "args" in problem.message


def test_reference_to_undeclared_env_inside_a_longer_value_is_an_error() -> None:
    doc = container_doc(volumes=["${{ envs.ROOT }}/data:/data"])
    doc["envs"] = ["OTHER"]
    [problem] = problems_of(doc)
    assert problem.path == "steps[0].container.volumes[0]"
    assert "declared: OTHER" in problem.message


def test_other_expressions_are_errors() -> None:
    [problem] = problems_of(container_doc(environment={"A": "${{ secrets.X }}"}))
    assert problem.path == "steps[0].container.environment.A"
    assert "${{ args.NAME }}" in problem.message


def test_unclosed_expression_is_an_error() -> None:
    [problem] = problems_of(container_doc(environment={"A": "${{ args.X"}))
    assert "not closed" in problem.message


def test_doubled_dollar_writes_a_literal_expression_opener() -> None:
    template = load_template(container_doc(environment={"A": "$${{ not.an.expr }}"}))
    assert template.steps[0].container.environment["A"] == "$${{ not.an.expr }}"


def test_grammar_of_a_value_with_an_expression_waits_for_bind() -> None:
    doc = container_doc(ports=["${{ args.PORT }}:8080"])
    doc["args"] = ["PORT"]
    assert load_template(doc).steps[0].container.ports == ["${{ args.PORT }}:8080"]


def test_duplicate_declared_name_is_an_error() -> None:
    doc = container_doc()
    doc["args"] = ["A", "A"]
    [problem] = problems_of(doc)
    assert problem.path == "args[1]"


def test_service_step_with_commands_is_an_error() -> None:
    doc = container_doc(commands=["echo"])
    doc["steps"][0]["type"] = "service"
    [problem] = problems_of(doc)
    assert problem.path == "steps[0].container.commands"


def test_commands_with_command_is_an_error() -> None:
    [problem] = problems_of(container_doc(commands=["echo"], command=["x"]))
    assert problem.path == "steps[0].container.command"


def test_template_from_yaml_text_and_from_data_are_equal() -> None:
    text = "name: t\nsteps:\n  - name: s\n    container: {image: 'a:1'}\n"
    assert load_template(text) == load_template(
        {"name": "t", "steps": [{"name": "s", "container": {"image": "a:1"}}]}
    )
    assert isinstance(load_template(text), Template)


def test_template_is_frozen() -> None:
    template = load_template(container_doc())
    with pytest.raises(ValueError):
        template.name = "other"  # type: ignore[misc]
