"""Property tests of the pipeline loader (issue 5): whatever arrives over the API,
``parse_document``, ``load_template`` and ``bind`` answer with a value or a
``ValidationError``, never another exception."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gamepipeline.pipeline import bind, load_template, parse_document
from gamepipeline.pipeline.errors import ValidationError

ROOT = Path(__file__).resolve().parents[3]
DEMO = parse_document((ROOT / "pipelines" / "demo.yaml").read_bytes())

#: Examples per property; with four properties about 1,600 inputs a run.
EXAMPLES = 400
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

FIELDS = [
    "name", "description", "envs", "args", "steps", "timeout", "container", "type",
    "image", "commands", "volumes", "devices", "ports", "environment", "privileged",
    "cap_add", "deploy", "resources", "reservations", "capabilities", "tmpfs",
    "restart", "healthcheck", "test", "ulimits", "container_name", "retries",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(
        ["${{ envs.X }}", "${{ args.Y }}", "$${{ z }}", "22:22", "/dev/dri"]
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(
            st.sampled_from(FIELDS) | st.text(max_size=8), children, max_size=6
        ),
    ),
    max_leaves=40,
)
YAML_PIECES = st.sampled_from(
    ["&a ", "*a", "!!python/object:os.system ", "!tag ", "<<: ", "- ", ": ", "{", "}",
     "[", "]", "\n", "  ", "'", '"', "#", "%YAML 1.1\n", "---\n", "\t", "\x00", "\ufeff"]
)  # fmt: skip


def _only_validation_errors(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except ValidationError as err:
        assert err.problems, "a ValidationError names at least one problem"
        return None


@SETTINGS
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_parse_document_takes_any_bytes_or_text(raw: bytes | str) -> None:
    _only_validation_errors(parse_document, raw)


@SETTINGS
@given(st.lists(st.one_of(YAML_PIECES, st.text(max_size=6)), max_size=40))
def test_parse_document_takes_yaml_shaped_noise(pieces: list[str]) -> None:
    _only_validation_errors(parse_document, "".join(pieces))


def test_a_step_that_is_not_a_mapping_is_a_validation_error() -> None:
    # Found by the property below: `steps: [null]` crashed the Step validator.
    for step in (None, 1, "s", []):
        _only_validation_errors(load_template, {"name": "n", "steps": [step]})


@SETTINGS
@given(
    st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=6),
    st.dictionaries(st.sampled_from(FIELDS[:6]), VALUES, max_size=3),
)
def test_load_template_takes_any_structure(top: dict[str, Any], step: Any) -> None:
    document = {"name": "fuzz", "steps": [{"name": "s", "container": step}], **top}
    # What the loader takes as data it must also take as YAML text.
    text = yaml.safe_dump(document, allow_unicode=True)
    for data in (document, _only_validation_errors(parse_document, text)):
        if isinstance(data, dict):
            _only_validation_errors(load_template, data)


@SETTINGS
@given(
    st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=8),
    st.dictionaries(st.text(max_size=25), st.text(max_size=20), max_size=12),
)
def test_bind_takes_any_args_and_envs(
    args: dict[str, str], envs: dict[str, str]
) -> None:
    template = load_template(DEMO)
    _only_validation_errors(bind, template, args, envs)
