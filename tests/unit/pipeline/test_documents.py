"""parse_document: YAML and JSON into plain data, with located syntax errors."""

from __future__ import annotations

import pytest

from gamepipeline.pipeline import ValidationError, parse_document


def test_json_is_read_as_yaml() -> None:
    assert parse_document('{"name": "x", "steps": []}') == {"name": "x", "steps": []}


def test_bytes_with_chinese_text_are_read_as_utf8() -> None:
    assert parse_document("name: 测试流水线\n".encode()) == {"name": "测试流水线"}


def test_syntax_error_names_line_and_column() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_document("name: x\nsteps: [a, b\n", source="bad.yaml")
    problem = caught.value.problems[0]
    assert problem.path == "bad.yaml"
    assert "line 3" in problem.message and "column" in problem.message


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("- a\n- b\n", "a list"),
        ('"just text"\n', "text"),
        ("42\n", "a number"),
        ("true\n", "true or false"),
    ],
)
def test_a_top_level_that_is_not_a_mapping_is_named_in_plain_words(
    text: str, kind: str
) -> None:
    with pytest.raises(ValidationError, match=f"top level is {kind};"):
        parse_document(text)


def test_empty_document_is_an_error() -> None:
    with pytest.raises(ValidationError, match="empty"):
        parse_document("")


def test_python_tags_are_refused_like_safe_load() -> None:
    with pytest.raises(ValidationError):
        parse_document("name: !!python/object/apply:os.system ['id']\n")


def test_unquoted_port_pair_stays_text_not_base_60_number() -> None:
    # YAML 1.1 reads 22:22 as 1342; a port mapping must not change silently.
    assert parse_document("ports: [22:22, 8080]\n") == {"ports": ["22:22", 8080]}


def test_ordinary_yaml_types_resolve_as_safe_load() -> None:
    data = parse_document("a: 1920\nb: false\nc: 1.5\nd: null\ne: '1920'\n")
    assert data == {"a": 1920, "b": False, "c": 1.5, "d": None, "e": "1920"}


@pytest.mark.parametrize(
    ("scalar", "value"),
    [
        ("0123", "0123"),  # YAML 1.1: octal 83
        ("00123456", "00123456"),
        ("yes", "yes"),  # YAML 1.1: true
        ("No", "No"),
        ("on", "on"),
        ("off", "off"),
        ("true", True),
        ("False", False),
        ("0", 0),
        ("-7", -7),
    ],
)
def test_yaml_11_surprises_stay_the_text_the_author_wrote(
    scalar: str, value: object
) -> None:
    assert parse_document(f"v: {scalar}\n") == {"v": value}


def test_a_key_written_twice_is_an_error_naming_both_lines() -> None:
    document = "name: x\nsteps:\n  - name: s\n    commands: [a]\n    commands: [b]\n"
    with pytest.raises(ValidationError) as caught:
        parse_document(document)
    message = str(caught.value)
    assert "the key steps[0].commands is written twice (first on line 4)" in message
    assert "line 5" in message


GAME_TEMPLATE = """\
name: game
steps:
  - name: download
    container:
      image: busybox
  - name: game
    container:
      image: game-server
      environment:
        FOO: "1"
        BAR: "2"
        FOO: "3"
"""


def test_a_key_written_twice_deep_in_a_template_names_its_path_file_and_line() -> None:
    """The whole path, not the key alone: FOO could be in any step's environment."""
    with pytest.raises(ValidationError) as caught:
        parse_document(GAME_TEMPLATE, source="game.yaml")
    [problem] = caught.value.problems
    assert str(problem) == (
        "game.yaml: the document is not valid YAML at line 12, column 9: the key "
        "steps[1].container.environment.FOO is written twice (first on line 10); "
        "keep one"
    )


@pytest.mark.parametrize(
    ("text", "path", "line"),
    [
        ('{"steps": [{"name": "a"}, {"name": "b", "name": "c"}]}', "steps[1].name", 1),
        ("a:\n  - [x, {k: 1, k: 2}]\n", "a[0][1].k", 2),
        ("0x10: a\n16: b\n", "16", 2),  # the same number written two ways
        ("base: &b\n  k: 1\nuse: [*b]\nother:\n  k: 1\n  k: 2\n", "other.k", 6),
    ],
)
def test_the_path_of_a_key_written_twice_follows_lists_flow_and_json(
    text: str, path: str, line: int
) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_document(text)
    message = caught.value.problems[0].message
    assert f"at line {line}, " in message and f"the key {path} is written" in message


def test_a_key_written_twice_inside_an_anchor_is_named_where_it_is_written() -> None:
    text = "defaults: &d\n  image: a\n  image: b\nsteps:\n  - container: *d\n"
    with pytest.raises(ValidationError) as caught:
        parse_document(text)
    assert "the key defaults.image is written twice" in str(caught.value)


@pytest.mark.parametrize(
    "written", ["1.50", "0x10", "0o17", "1_000", "1e3", "+5", ".5"]
)
def test_an_environment_number_reaches_the_container_as_written(written: str) -> None:
    from gamepipeline.pipeline import load_template

    text = (
        "name: n\nsteps:\n  - name: s\n    container:\n      image: i\n"
        f"      environment:\n        VALUE: {written}\n        BIG: 12345678901234567890\n"
    )
    environment = load_template(text).to_document()["steps"][0]["container"][
        "environment"
    ]
    assert environment == {"VALUE": written, "BIG": "12345678901234567890"}


def test_numbers_stay_numbers_where_a_number_is_meant() -> None:
    data = parse_document("a: 0x10\nb: 1.50\n")
    assert data == {"a": 16, "b": 1.5}
    assert isinstance(data["a"], int) and isinstance(data["b"], float)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("labels: {country: no, rack: 010, slot: 1:30}\n", {"country": "no", "rack": "010", "slot": "1:30"}),
        ("envs: {FLAG: on, LEVEL: 0777}\n", {"FLAG": "on", "LEVEL": "0777"}),
        ("", None),
    ],
)  # fmt: skip
def test_a_config_file_is_read_with_the_rules_of_documents(
    text: str, expected: dict[str, str] | None
) -> None:
    from gamepipeline.pipeline import parse_config

    data = parse_config(text, source="agent.yaml")
    assert (next(iter(data.values())) if data else None) == expected


def test_a_key_written_twice_deep_in_a_config_file_names_its_path_file_and_line() -> (
    None
):
    from gamepipeline.pipeline import ConfigError, parse_config

    text = (
        "capacity: 2\n"
        "labels:\n  gpu: rtx4090\n  rack: r1\n  gpu: a100\n"
        "policy:\n  mount_paths: [/data]\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="/etc/gamepipeline/agent.yaml")
    assert str(caught.value) == (
        "/etc/gamepipeline/agent.yaml: the file is not valid YAML at line 5, column 3: "
        "the key labels.gpu is written twice (first on line 3); keep one"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 1\na: 2\n", "agent.yaml: the file is not valid YAML at line 2"),
        ("a: !!python/name:os.system x\n", "agent.yaml: the file uses a tag"),
        ("- a\n", "agent.yaml: the file's top level is a list"),
        ("a: [\n", "agent.yaml: the file is not valid YAML"),
    ],
)
def test_a_bad_config_file_is_refused_naming_it(text: str, expected: str) -> None:
    from gamepipeline.pipeline import ConfigError, parse_config

    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="agent.yaml")
    assert str(caught.value).startswith(expected), str(caught.value)
