"""bind: args and envs substituted anywhere, missing and extra names reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from gamepipeline.pipeline import ValidationError, bind, load_template
from gamepipeline.pipeline.model import Template

from .pipeline_helpers import container_doc


def platform(data_dir: Path):  # type: ignore[no-untyped-def]
    return load_template((data_dir / "start-platform.yaml").read_bytes())


PLATFORM_ARGS = {
    "PLATFORM": "steam",
    "INSTANCE": "i-42",
    "IMAGE": "game-server:latest",
    "PORT": "18080",
    "HOSTNAME": "game-42",
}


def platform_envs(root: str = "/data/wind") -> dict[str, str]:
    names = [
        "BEAGLE_WIND_PASSWD",
        "BEAGLE_WIND_TURN_HOST",
        "BEAGLE_WIND_TURN_PORT",
        "BEAGLE_WIND_TURN_PROTOCOL",
        "BEAGLE_WIND_TURN_USERNAME",
        "BEAGLE_WIND_TURN_PASSWORD",
        "S3_ACCESS_KEY",
        "S3_SECRET_KEY",
        "S3_BUCKET",
        "S3_URL",
    ]
    return {"BEAGLE_WIND_ROOT": root, **{n: n.lower() for n in names}}


def test_values_are_substituted_inside_longer_strings(data_dir: Path) -> None:
    bound = bind(platform(data_dir), PLATFORM_ARGS, platform_envs())
    game = bound.steps[2].container
    assert game.image == "game-server:latest"
    assert game.hostname == "game-42"
    assert game.ports == ["18080:8080"]
    assert game.volumes[2] == "/data/wind/volumes/i-42/system:/home/ubuntu"
    assert game.environment["PASSWD"] == "beagle_wind_passwd"
    tgz = bound.steps[1].container
    # In shell lines a value travels in a variable, never as script text.
    assert tgz.commands == [
        "mkdir -p /data/wind/volumes",
        'tar -xvzf /data/wind/platforms/"${GAMEPIPELINE_ARG_PLATFORM}".tar.gz '
        '-C /data/wind/volumes/"${GAMEPIPELINE_ARG_INSTANCE}"',
    ]
    assert tgz.environment["GAMEPIPELINE_ARG_PLATFORM"] == "steam"
    assert tgz.environment["GAMEPIPELINE_ARG_INSTANCE"] == "i-42"


@pytest.mark.parametrize(
    ("line", "script"),
    [
        ("echo ${{ args.A }}", 'echo "${GAMEPIPELINE_ARG_A}"'),
        ('echo "hi ${{ args.A }}!"', 'echo "hi ${GAMEPIPELINE_ARG_A}!"'),
        ("echo 'a ${{ envs.E }} b'", "echo 'a '\"${GAMEPIPELINE_ENV_E}\"' b'"),
        ("echo \\' ${{ args.A }}", 'echo \\\' "${GAMEPIPELINE_ARG_A}"'),
        ("echo '$${{ args.A }}'", "echo '${{ args.A }}'"),
    ],
)
def test_a_commands_value_becomes_a_shell_variable_quoted_where_it_stands(
    line: str, script: str
) -> None:
    bound = bind(one_script_template(line), {"A": "x"}, {"E": "y"})

    assert bound.steps[0].container.commands == [script]


def test_a_backslash_before_an_expression_in_commands_is_refused_by_path() -> None:
    with pytest.raises(ValidationError) as caught:
        bind(one_script_template("echo \\${{ args.A }}"), {"A": "x"}, {"E": "y"})

    assert caught.value.problems[0].path == "steps[0].container.commands[0]"
    assert "a backslash stands right before" in caught.value.problems[0].message


def test_the_script_variables_are_reserved_names_in_environment() -> None:
    template = load_template(
        {
            "name": "t",
            "args": ["A"],
            "steps": [
                {
                    "name": "s",
                    "container": {
                        "image": "i",
                        "environment": {"GAMEPIPELINE_ARG_A": "mine"},
                        "commands": ["echo ${{ args.A }}"],
                    },
                }
            ],
        }
    )
    with pytest.raises(ValidationError) as caught:
        bind(template, {"A": "x"}, {})

    assert caught.value.problems[0].path == (
        "steps[0].container.environment.GAMEPIPELINE_ARG_A"
    )


def one_script_template(line: str) -> Template:
    return load_template(
        {
            "name": "t",
            "args": ["A"],
            "envs": ["E"],
            "steps": [{"name": "s", "container": {"image": "i", "commands": [line]}}],
        }
    )


def test_template_keeps_its_expressions_after_bind(data_dir: Path) -> None:
    template = platform(data_dir)
    bound = bind(template, PLATFORM_ARGS, platform_envs())
    assert bound.template is template
    assert template.steps[2].container.image == "${{ args.IMAGE }}"


def test_every_missing_arg_and_env_is_listed_at_once(data_dir: Path) -> None:
    envs = platform_envs()
    del envs["S3_URL"], envs["BEAGLE_WIND_ROOT"]
    with pytest.raises(ValidationError) as caught:
        bind(platform(data_dir), {"PLATFORM": "steam"}, envs)
    assert sorted(p.path for p in caught.value.problems) == [
        "args.HOSTNAME",
        "args.IMAGE",
        "args.INSTANCE",
        "args.PORT",
        "envs.BEAGLE_WIND_ROOT",
        "envs.S3_URL",
    ]


def test_undeclared_arg_is_an_error(data_dir: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        bind(platform(data_dir), {**PLATFORM_ARGS, "EXTRA": "1"}, platform_envs())
    [problem] = caught.value.problems
    assert problem.path == "args.EXTRA"


def test_undeclared_envs_are_ignored(data_dir: Path) -> None:
    envs = {**platform_envs(), "NODE_ONLY": "x", "PATH": "/bin"}
    bound = bind(platform(data_dir), PLATFORM_ARGS, envs)
    assert "NODE_ONLY" not in bound.envs


def test_substituted_values_are_checked_against_the_grammar(data_dir: Path) -> None:
    args = {**PLATFORM_ARGS, "PORT": "80:80", "HOSTNAME": "bad_host"}
    envs = platform_envs(root="relative/root")
    with pytest.raises(ValidationError) as caught:
        bind(platform(data_dir), args, envs)
    paths = {p.path for p in caught.value.problems}
    assert {
        "steps[2].container.ports[0]",
        "steps[2].container.hostname",
        "steps[0].container.volumes[0]",
    } <= paths


def test_escaped_opener_becomes_literal_and_is_not_substituted() -> None:
    doc = container_doc(environment={"A": "$${{ args.X }}", "B": "${{ args.X }}"})
    doc["args"] = ["X"]
    bound = bind(load_template(doc), {"X": "v"}, {})
    assert bound.steps[0].container.environment == {"A": "${{ args.X }}", "B": "v"}


def test_arg_value_containing_an_expression_is_not_substituted_again() -> None:
    doc = container_doc(environment={"A": "${{ args.X }}"})
    doc["args"] = ["X", "Y"]
    bound = bind(load_template(doc), {"X": "${{ args.Y }}", "Y": "no"}, {})
    assert bound.steps[0].container.environment == {"A": "${{ args.Y }}"}


def test_template_syntax_in_values_is_kept_verbatim() -> None:
    doc = container_doc(environment={"A": "${{ args.X }}", "B": "{{ 7 * 7 }}"})
    doc["args"] = ["X"]
    bound = bind(load_template(doc), {"X": "{% raw %}{{ lookup('pipe','id') }}"}, {})
    assert bound.steps[0].container.environment == {
        "A": "{% raw %}{{ lookup('pipe','id') }}",
        "B": "{{ 7 * 7 }}",
    }


def test_pipeline_timeout_is_given_in_seconds() -> None:
    doc = container_doc()
    doc["timeout"] = "1h30m"
    assert bind(load_template(doc), {}, {}).timeout_seconds == 5400.0
