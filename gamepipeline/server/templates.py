"""The shipped templates: listing them, and submitting a pipeline from one by name.

A template is a ``*.yaml`` file in the server's templates folder (``pipelines/`` of a
checkout unless configured); its name is the file's stem (``instance-start``). The
folder is read on each request, so a template changed on disk is served at once, and a
template that does not load is listed with its problems instead of hiding the others.

- ``GET /api/templates``: ``{"templates": [...]}``, each with its name, title,
  description, args and envs (name and description; for envs also whether the server's
  configuration provides a value, so that a submission may leave it out).
- ``GET /api/templates/<name>``: the same entry with the template's ``document``.
- ``POST /api/pipelines`` with ``{"template": NAME, "args": {...}, "envs": {...},
  "node": "..."}``: the named template is submitted as if its document had been sent.

Env values come from three places; the later wins: the server's configuration
(``envs``), the submission, and the node's own configuration (applied by its agent).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from flask import Flask, Response, jsonify

from gamepipeline.pipeline import (
    Template,
    ValidationError,
    load_template,
    parse_document,
    written_text,
)
from gamepipeline.server.errors import InvalidRequest, NotFound, Problem
from gamepipeline.server.submission import Submission, load_json, read_submission

log = logging.getLogger(__name__)

TEMPLATE_KEY: Final = "template"
SUFFIXES: Final = (".yaml", ".yml")


def default_templates_dir() -> Path | None:
    """``pipelines/`` beside the package in a checkout, or None when there is none."""
    candidate = Path(__file__).resolve().parents[2] / "pipelines"
    return candidate if candidate.is_dir() else None


@dataclass(frozen=True)
class Entry:
    """One template file: its template, or the problems that keep it from loading."""

    name: str
    path: Path
    template: Template | None = None
    problems: list[Problem] = field(default_factory=list)


class TemplateCatalog:
    """The templates of one folder, read afresh on each call.

    Args:
        directory: the folder of ``*.yaml`` templates; None serves no template.
        server_envs: env values from the server's configuration.
    """

    def __init__(
        self, directory: Path | None, server_envs: Mapping[str, str] | None = None
    ) -> None:
        self.directory = directory
        self.server_envs = dict(server_envs or {})

    def entries(self) -> list[Entry]:
        if self.directory is None:
            return []
        files = sorted(
            p for p in self.directory.iterdir() if p.suffix in SUFFIXES and p.is_file()
        )
        return [self._load(path) for path in files]

    def entry(self, name: str) -> Entry:
        """The template called ``name``; raise ``NotFound`` naming the shipped ones."""
        for entry in self.entries():
            if entry.name == name:
                return entry
        known = ", ".join(e.name for e in self.entries()) or "none"
        raise NotFound(
            f"there is no template named {name!r}; shipped templates: {known}",
            [Problem(TEMPLATE_KEY, f"{name!r} is not a shipped template")],
        )

    def describe(self, entry: Entry) -> dict[str, Any]:
        """The API's view of one template."""
        if entry.template is None:
            return {
                "name": entry.name,
                "problems": [
                    {"path": p.path, "message": p.message} for p in entry.problems
                ],
            }
        template = entry.template
        return {
            "name": entry.name,
            "title": template.name,
            "description": template.description,
            "args": [
                {"name": name, "description": text}
                for name, text in template.descriptions("args").items()
            ],
            "envs": [
                {
                    "name": name,
                    "description": text,
                    "provided_by_server": name in self.server_envs,
                }
                for name, text in template.descriptions("envs").items()
            ],
        }

    def with_server_envs(self, submission: Submission) -> Submission:
        """Fill the envs the submission left out from the server's configuration."""
        submission.envs = {**self.server_envs, **submission.envs}
        return submission

    def read(self, body: bytes, query: Mapping[str, str]) -> Submission | None:
        """A submission naming a template, or None when the body is something else."""
        try:
            envelope = load_json(body)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(envelope, dict) or TEMPLATE_KEY not in envelope:
            return None
        name = envelope.pop(TEMPLATE_KEY)
        if "pipeline" in envelope:
            raise InvalidRequest(
                "give either template or pipeline, not both",
                [Problem(TEMPLATE_KEY, "remove template or pipeline")],
            )
        if not isinstance(name, str) or not name:
            raise InvalidRequest(
                f"template {json.dumps(name)} is not a name; give a shipped template's "
                "name such as instance-start (GET /api/templates lists them)",
                [Problem(TEMPLATE_KEY, "not a template name")],
            )
        entry = self.entry(name)
        if entry.template is None:
            first = str(entry.problems[0]) if entry.problems else ""
            raise InvalidRequest(
                f"the template {name!r} ({entry.path}) does not load: {first}",
                entry.problems,
            )
        envelope["pipeline"] = entry.template.to_document()
        for part in ("args", "envs"):
            # Read again from JSON below: a number keeps its text only as text.
            values = envelope.get(part)
            if isinstance(values, dict):
                envelope[part] = {k: written_text(v) or v for k, v in values.items()}
        log.debug("submission from template %s", name)
        return read_submission(json.dumps(envelope).encode(), query)

    def _load(self, path: Path) -> Entry:
        try:
            template = load_template(
                parse_document(path.read_bytes(), source=path.name)
            )
        except OSError as err:
            problem = Problem(path.name, f"cannot be read: {err.strerror}")
            return Entry(path.stem, path, problems=[problem])
        except ValidationError as err:
            return Entry(path.stem, path, problems=err.problems)
        return Entry(path.stem, path, template)


def add_template_routes(app: Flask, catalog: TemplateCatalog) -> None:
    """``GET /api/templates`` and ``GET /api/templates/<name>``."""

    @app.get("/api/templates")
    def list_templates() -> Response:
        return jsonify({"templates": [catalog.describe(e) for e in catalog.entries()]})

    @app.get("/api/templates/<name>")
    def show_template(name: str) -> Response:
        entry = catalog.entry(name)
        body = catalog.describe(entry)
        if entry.template is not None:
            body["document"] = entry.template.to_document()
        return jsonify(body)
