"""The HTTP API for the platform (Flask, served by waitress).

Routes:

- ``POST /api/pipelines``: submit a pipeline (see ``submission`` for the body forms);
  201 with ``{"id": ..., "state": "pending"}`` and ``Location: /api/pipelines/<id>``.
- ``GET /api/pipelines``: ``{"pipelines": [summary, ...]}`` newest first; filters
  ``?state=running``, ``?node=NODE_ID`` and ``?limit=N`` (at most 1000).
- ``GET /api/pipelines/<id>``: the pipeline with its steps. Env values are never shown,
  only which envs were given at submission.
- ``POST /api/pipelines/<id>/cancel``: 200 with the pipeline once canceled (pending) or
  202 while its node stops it (running); 409 when it already ended.
- ``GET /api/nodes``: ``{"nodes": [...]}`` with each node's state and load.
- ``GET /healthz``: 200 ``{"status": "ok"}`` while the database answers.

Every error answers JSON ``{"error": sentence, "problems": [{"path", "message"}]}``, with
the status from ``HTTP_STATUS``, here and nowhere else.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from gamepipeline import __version__
from gamepipeline.pipeline.states import PipelineState
from gamepipeline.server.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    Problem,
    ServerError,
    UnsupportedProtocol,
    WrongNode,
)
from gamepipeline.server.store import NodeRecord, PipelineRecord, StepRecord, Store
from gamepipeline.server.submission import prepare, read_submission

log = logging.getLogger(__name__)

HTTP_STATUS: Final[dict[type[ServerError], int]] = {
    InvalidRequest: 400,
    WrongNode: 403,
    NotFound: 404,
    Conflict: 409,
    UnsupportedProtocol: 400,
}
#: A pipeline document is a few kilobytes; anything near this is a mistake.
MAX_BODY_BYTES: Final = 1024 * 1024
MAX_LIST_LIMIT: Final = 1000


class Dispatch(Protocol):
    """What the API asks of the dispatcher; both calls are safe from any thread."""

    def wake(self) -> None: ...

    def cancel_on_node(self, pipeline_id: str, node_id: str) -> None: ...


def http_status(error: ServerError) -> int:
    for kind in type(error).__mro__:
        if kind in HTTP_STATUS:
            return HTTP_STATUS[kind]
    return 500


def create_app(store: Store, dispatch: Dispatch) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]

    @app.errorhandler(ServerError)
    def _server_error(err: ServerError) -> tuple[Response, int]:
        return _error(err.message, err.problems), http_status(err)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> tuple[Response, int]:
        return _error(err.description or err.name), err.code or 500

    @app.post("/api/pipelines")
    def submit() -> tuple[Response, int, dict[str, str]]:
        submission = read_submission(request.get_data(), request.args.to_dict())
        new = prepare(submission)
        pipeline_id = store.create_pipeline(new)
        dispatch.wake()
        location = f"/api/pipelines/{pipeline_id}"
        body = {"id": pipeline_id, "state": PipelineState.PENDING.value}
        return jsonify(body), 201, {"Location": location}

    @app.get("/api/pipelines")
    def list_pipelines() -> Response:
        state = _state_filter(request.args.get("state"))
        limit = _limit(request.args.get("limit"))
        records = store.list_pipelines(
            state=state, node_id=request.args.get("node") or None, limit=limit
        )
        return jsonify({"pipelines": [_summary(r) for r in records]})

    @app.get("/api/pipelines/<pipeline_id>")
    def show_pipeline(pipeline_id: str) -> Response:
        record = store.get_pipeline(pipeline_id)
        return jsonify(_detail(record, store.get_steps(pipeline_id)))

    @app.post("/api/pipelines/<pipeline_id>/cancel")
    def cancel_pipeline(pipeline_id: str) -> tuple[Response, int]:
        outcome = store.cancel(pipeline_id)
        if outcome.node_id is not None:
            dispatch.cancel_on_node(pipeline_id, outcome.node_id)
        log.info("cancel requested for pipeline %s", pipeline_id)
        record = store.get_pipeline(pipeline_id)
        body = _detail(record, store.get_steps(pipeline_id))
        return jsonify(body), 200 if outcome.ended_now else 202

    @app.get("/api/nodes")
    def list_nodes() -> Response:
        load = store.active_counts()
        return jsonify(
            {"nodes": [_node(n, load.get(n.node_id, 0)) for n in store.list_nodes()]}
        )

    @app.get("/healthz")
    def healthz() -> Response:
        store.ping()
        return jsonify({"status": "ok", "version": __version__})

    return app


def _error(message: str, problems: list[Problem] | None = None) -> Response:
    return jsonify(
        {
            "error": message,
            "problems": [
                {"path": p.path, "message": p.message} for p in problems or []
            ],
        }
    )


def _state_filter(raw: str | None) -> PipelineState | None:
    if not raw:
        return None
    try:
        return PipelineState(raw)
    except ValueError:
        names = ", ".join(s.value for s in PipelineState)
        raise InvalidRequest(
            f"state={raw!r} is not a pipeline state; use one of {names}",
            [Problem("state", f"not one of {names}")],
        ) from None


def _limit(raw: str | None) -> int:
    if raw is None:
        return 100
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST_LIMIT:
        raise InvalidRequest(
            f"limit={raw!r} is not a count; give a number from 1 to {MAX_LIST_LIMIT}",
            [Problem("limit", f"not a number from 1 to {MAX_LIST_LIMIT}")],
        )
    return int(raw)


def _time(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _summary(record: PipelineRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "model": record.model,
        "name": record.name,
        "state": record.state.value,
        "reason": record.reason.value,
        "message": record.message,
        "node": record.node_assigned,
        "node_requested": record.node_requested,
        "created_at": _time(record.created_at_ms),
        "started_at": _time(record.started_at_ms),
        "finished_at": _time(record.finished_at_ms),
    }


def _detail(record: PipelineRecord, steps: list[StepRecord]) -> dict[str, Any]:
    return {
        **_summary(record),
        "description": record.description,
        "current_step": record.current_step,
        "cancel_requested": record.cancel_requested,
        "args": record.arg_values,
        # Env values may be secrets: say which were given, never what they are.
        "envs": {
            "declared": record.declared_envs,
            "given": sorted(record.env_values),
        },
        "timeout_seconds": record.timeout_seconds,
        "steps": [_step(step) for step in steps],
        "document": record.document,
    }


def _step(step: StepRecord) -> dict[str, Any]:
    return {
        "index": step.index,
        "name": step.name,
        "type": step.type,
        "state": step.state.value,
        "reason": step.reason.value,
        "message": step.message,
        "exit_code": step.exit_code,
        "output_tail": step.output_tail,
        "started_at": _time(step.started_at_ms),
        "finished_at": _time(step.finished_at_ms),
    }


def _node(node: NodeRecord, active: int) -> dict[str, Any]:
    return {
        "node_id": node.node_id,
        "hostname": node.hostname,
        "labels": node.labels,
        "capacity": node.capacity,
        "active_pipelines": active,
        "agent_version": node.agent_version,
        "state": "online" if node.online else "offline",
        "connected_at": _time(node.connected_at_ms),
        "last_heartbeat_at": _time(node.last_heartbeat_ms),
        "offline_since": _time(node.offline_since_ms),
    }
