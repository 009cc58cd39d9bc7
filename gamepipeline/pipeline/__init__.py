"""The pipeline language: template model, validation, ``${{ }}`` expressions, compiler.

Nothing in this package does I/O; it can be tested alone. The public API:

- ``parse_document(text, source=...)`` reads YAML or JSON safely into plain data.
- ``load_template(data)`` validates a template document into a ``Template``.
- ``bind(template, args, envs)`` checks and substitutes ``${{ args.X }}``/``${{ envs.X }}``
  and returns a ``BoundPipeline`` whose values are final.
- ``compile_playbook(bound, pipeline_id=...)`` builds the Ansible play (plain data) and
  ``render_playbook(play)`` writes it as YAML with every string marked ``!unsafe``
  (``render_tasks(tasks)`` writes a play's tasks alone, for ``include_tasks``).
- ``step_index_of_task(task_name)`` maps a compiled task's name back to its step index.
- ``json_schema()`` describes template documents for editors.

Every user mistake raises ``ValidationError`` (a ``PipelineError``) listing each problem
with its path. Write ``$${{`` for a literal ``${{`` in any value.
"""

from .binding import BoundPipeline, bind
from .compiler import (
    LABEL_PIPELINE,
    LABEL_SPEC,
    LABEL_STEP,
    LABEL_TEMPLATE,
    compile_playbook,
    container_name_of,
    step_index_of_task,
)
from .documents import ConfigError, parse_config, parse_document, written_text
from .errors import PipelineError, Problem, ValidationError
from .loading import load_template
from .model import Container, DeviceRequest, Healthcheck, Step, Template
from .render import render_playbook, render_tasks
from .schema import json_schema

__all__ = [
    "LABEL_PIPELINE",
    "LABEL_SPEC",
    "LABEL_STEP",
    "LABEL_TEMPLATE",
    "BoundPipeline",
    "ConfigError",
    "Container",
    "DeviceRequest",
    "Healthcheck",
    "PipelineError",
    "Problem",
    "Step",
    "Template",
    "ValidationError",
    "bind",
    "compile_playbook",
    "container_name_of",
    "json_schema",
    "load_template",
    "parse_config",
    "parse_document",
    "render_playbook",
    "render_tasks",
    "step_index_of_task",
    "written_text",
]
