"""The OpenAPI 3.1 description of the HTTP API, served at ``/api/openapi.json``.

Written by hand beside ``api.py`` and kept true by tests: every Flask route must appear
here, every answer of a real server must validate against its schema, and schemathesis
fuzzes the API from this description (``tests/integration/test_api_contract.py``).
"""

from __future__ import annotations

from typing import Any, Final

JSON: Final = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _answer(description: str, schema: str | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description}
    if schema is not None:
        answer["content"] = {JSON: {"schema": _ref(schema)}}
    return answer


def _errors(*codes: int) -> dict[str, Any]:
    texts = {
        400: "The request is malformed; `problems` names each bad part.",
        401: "No token, or one the server does not know.",
        403: "The token lacks the scope this call needs.",
        404: "No such pipeline, node or template.",
        409: "The record's state does not allow this.",
        413: "The body is larger than the server accepts.",
    }
    return {str(code): _answer(texts[code], "Error") for code in codes}


_TIME: Final = {"type": ["string", "null"], "format": "date-time"}
_TEXT_OR_NULL: Final = {"type": ["string", "null"]}
_PIPELINE_STATES: Final = [
    "not_started",
    "pending",
    "running",
    "completed",
    "failed",
    "canceled",
]
_ID_PARAM: Final = {
    "name": "pipeline_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}
_NODE_PARAM: Final = {
    "name": "node_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}

SCHEMAS: Final[dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error", "problems"],
        "properties": {
            "error": {"type": "string"},
            "problems": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["path", "message"],
                    "properties": {
                        "path": {"type": "string"},
                        "message": {"type": "string"},
                    },
                },
            },
        },
    },
    "Submitted": {
        "type": "object",
        "required": ["id", "state"],
        "properties": {"id": {"type": "string"}, "state": {"const": "pending"}},
    },
    "PipelineSummary": {
        "type": "object",
        "required": ["id", "name", "state", "reason", "node", "created_at"],
        "properties": {
            "id": {"type": "string"},
            "model": {"type": "string"},
            "name": {"type": "string"},
            "state": {"enum": _PIPELINE_STATES},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "node": _TEXT_OR_NULL,
            "node_requested": _TEXT_OR_NULL,
            "created_at": _TIME,
            "started_at": _TIME,
            "finished_at": _TIME,
        },
    },
    "Step": {
        "type": "object",
        "required": ["index", "name", "type", "state", "reason", "message"],
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "name": {"type": "string"},
            "type": {"type": "string"},
            "state": {"type": "string"},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "exit_code": {"type": ["integer", "null"]},
            "output_tail": {"type": "string"},
            "started_at": _TIME,
            "finished_at": _TIME,
        },
    },
    "Pipeline": {
        "allOf": [_ref("PipelineSummary")],
        "type": "object",
        "required": ["steps", "envs", "args", "document"],
        "properties": {
            "description": {"type": "string"},
            "current_step": {"type": ["integer", "null"]},
            "cancel_requested": {"type": "boolean"},
            "args": {"type": "object", "additionalProperties": {"type": "string"}},
            "envs": {
                "description": "Which envs were given; their values are never shown.",
                "type": "object",
                "required": ["declared", "given"],
                "additionalProperties": False,
                "properties": {
                    "declared": {"type": "array", "items": {"type": "string"}},
                    "given": {"type": "array", "items": {"type": "string"}},
                },
            },
            "timeout_seconds": {"type": ["integer", "null"]},
            "steps": {"type": "array", "items": _ref("Step")},
            "document": {"type": "object"},
        },
    },
    "PipelineList": {
        "type": "object",
        "required": ["pipelines"],
        "properties": {
            "pipelines": {"type": "array", "items": _ref("PipelineSummary")}
        },
    },
    "Node": {
        "type": "object",
        "required": ["node_id", "state", "mode", "connected", "capacity"],
        "properties": {
            "node_id": {"type": "string"},
            "hostname": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "capacity": {"type": "integer"},
            "active_pipelines": {"type": "integer"},
            "agent_version": {"type": "string"},
            "state": {"enum": ["online", "offline", "maintenance", "disabled"]},
            "mode": {"type": "string"},
            "connected": {"type": "boolean"},
            "connected_at": _TIME,
            "last_heartbeat_at": _TIME,
            "offline_since": _TIME,
            "refused_registration": {
                "description": "The last agent refused because another held the "
                "node; null once it got in, or if none was. Kept in memory only.",
                "type": ["object", "null"],
                "required": ["refused_at", "count"],
                "properties": {
                    "instance_id": _TEXT_OR_NULL,
                    "hostname": _TEXT_OR_NULL,
                    "pid": {"type": ["integer", "null"]},
                    "peer": _TEXT_OR_NULL,
                    "refused_at": _TIME,
                    "count": {"type": "integer"},
                },
            },
        },
    },
    "NodeList": {
        "type": "object",
        "required": ["nodes"],
        "properties": {"nodes": {"type": "array", "items": _ref("Node")}},
    },
    "Template": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "title": {"type": "string"},
            "description": {"type": "string"},
            "args": {"type": "array", "items": {"type": "object"}},
            "envs": {"type": "array", "items": {"type": "object"}},
            "problems": {"type": "array", "items": {"type": "object"}},
            "document": {"type": "object"},
        },
    },
    "TemplateList": {
        "type": "object",
        "required": ["templates"],
        "properties": {"templates": {"type": "array", "items": _ref("Template")}},
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}, "version": {"type": "string"}},
    },
    "Submission": {
        "description": "The pipeline document itself (YAML or JSON), or an envelope "
        "naming a document or a shipped template with its args, envs and node.",
        "type": "object",
        "properties": {
            "pipeline": {"type": ["object", "string"]},
            "template": {"type": "string"},
            "args": {"type": "object", "additionalProperties": {"type": "string"}},
            "envs": {"type": "object", "additionalProperties": {"type": "string"}},
            "node": {"type": "string"},
        },
    },
}

_READ: Final[list[dict[str, list[str]]]] = [{"bearer": []}]
_WRITE: Final[list[dict[str, list[str]]]] = [{"bearer": []}]


def _paths() -> dict[str, Any]:
    return {
        "/api/pipelines": {
            "post": {
                "summary": "Submit a pipeline",
                "description": "Args, envs and the node may also come as query "
                "parameters arg.NAME=VALUE, env.NAME=VALUE and node=NODE_ID; an "
                "arg or env there wins over the envelope's, a node there that "
                "differs from the envelope's is answered 400. "
                "The body is read as YAML or JSON whatever its Content-Type; one "
                "sent as application/json that starts with { or [ and is not valid "
                "JSON is answered 400 with the JSON error's line and column. "
                "A pipeline for a named node the server knows whose labels its "
                "node_selector cannot match is answered 409 naming both. "
                "Needs the write scope.",
                "security": _WRITE,
                "parameters": [
                    {"name": "node", "in": "query", "schema": {"type": "string"}}
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {"schema": _ref("Submission")},
                        "application/yaml": {"schema": {"type": "string"}},
                    },
                },
                "responses": {
                    "201": _answer(
                        "Stored; the pipeline waits for a node.", "Submitted"
                    ),
                    **_errors(400, 401, 403, 404, 409, 413),
                },
            },
            "get": {
                "summary": "List pipelines, newest first",
                "description": "Each filter is given at most once (one state a "
                "request); a parameter given twice, or one not listed here, is "
                "answered 400 naming it.",
                "security": _READ,
                "parameters": [
                    {
                        "name": "state",
                        "in": "query",
                        "schema": {"enum": _PIPELINE_STATES},
                    },
                    {"name": "node", "in": "query", "schema": {"type": "string"}},
                    {"name": "template", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                ],
                "responses": {
                    "200": _answer("The pipelines.", "PipelineList"),
                    **_errors(400, 401, 403),
                },
            },
        },
        "/api/pipelines/{pipeline_id}": {
            "get": {
                "summary": "One pipeline with its steps",
                "security": _READ,
                "parameters": [_ID_PARAM],
                "responses": {
                    "200": _answer("The pipeline.", "Pipeline"),
                    **_errors(401, 403, 404),
                },
            }
        },
        "/api/pipelines/{pipeline_id}/cancel": {
            "post": {
                "summary": "Cancel a pipeline",
                "security": _WRITE,
                "parameters": [_ID_PARAM],
                "responses": {
                    "200": _answer("Canceled (it was pending).", "Pipeline"),
                    "202": _answer("Its node is stopping it.", "Pipeline"),
                    **_errors(401, 403, 404, 409),
                },
            }
        },
        "/api/nodes": {
            "get": {
                "summary": "The nodes with their state and load",
                "security": _READ,
                "responses": {
                    "200": _answer("The nodes.", "NodeList"),
                    **_errors(401, 403),
                },
            }
        },
        "/api/nodes/{node_id}": {
            "get": {
                "summary": "One node",
                "security": _READ,
                "parameters": [_NODE_PARAM],
                "responses": {
                    "200": _answer("The node.", "Node"),
                    **_errors(401, 403, 404),
                },
            }
        },
        "/api/nodes/{node_id}/{action}": {
            "post": {
                "summary": "Put a node in maintenance, disable or enable it",
                "security": _WRITE,
                "parameters": [
                    _NODE_PARAM,
                    {
                        "name": "action",
                        "in": "path",
                        "required": True,
                        "schema": {"enum": ["maintenance", "disable", "enable"]},
                    },
                ],
                "responses": {
                    "200": _answer("The node.", "Node"),
                    **_errors(401, 403, 404),
                },
            }
        },
        "/api/templates": {
            "get": {
                "summary": "The shipped templates",
                "security": _READ,
                "responses": {
                    "200": _answer("The templates.", "TemplateList"),
                    **_errors(401, 403),
                },
            }
        },
        "/api/templates/{name}": {
            "get": {
                "summary": "One shipped template with its document",
                "security": _READ,
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _answer("The template.", "Template"),
                    **_errors(401, 403, 404),
                },
            }
        },
        "/api/openapi.json": {
            "get": {
                "summary": "This description",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1 document."}},
            }
        },
        "/healthz": {
            "get": {
                "summary": "Alive while the database answers",
                "security": [],
                "responses": {"200": _answer("Alive.", "Health")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Ready once the agents' service and the dispatcher run",
                "security": [],
                "responses": {
                    "200": _answer("Ready.", "Health"),
                    "503": _answer("Still starting.", "Health"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Metrics in the text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/": {
            "get": {
                "summary": "The dashboard (static HTML)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }


def openapi_document(version: str) -> dict[str, Any]:
    """The whole description, ready to serve as JSON."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "GamePipeline",
            "version": version,
            "description": "Submit pipelines, follow them and their nodes. Every "
            "error answers {error, problems}.",
        },
        "security": _READ,
        "paths": _paths(),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from the server's api_tokens; GET needs "
                    "the read scope, POST the write scope. Without api_tokens the "
                    "server is open (loopback only, or --insecure).",
                }
            },
        },
    }
