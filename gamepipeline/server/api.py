"""The HTTP API for the platform (Flask, served by waitress).

Routes:

- ``POST /api/pipelines``: submit a pipeline (see ``submission`` for the body forms);
  201 with ``{"id": ..., "state": "pending"}`` and ``Location: /api/pipelines/<id>``.
- ``GET /api/pipelines``: ``{"pipelines": [summary, ...]}`` newest first; filters
  ``?state=running``, ``?node=NODE_ID``, ``?template=NAME`` (the pipeline's name) and
  ``?limit=N`` (at most 1000).
- ``GET /api/pipelines/<id>``: the pipeline with its steps. Env values are never shown,
  only which envs were given at submission.
- ``POST /api/pipelines/<id>/cancel``: 200 with the pipeline once canceled (pending) or
  202 while its node stops it (running); 409 when it already ended.
- ``GET /api/nodes``: ``{"nodes": [...]}`` with each node's state and load;
  ``GET /api/nodes/<id>``: one of them. A node's ``state`` is ``disabled`` or
  ``maintenance`` when an operator put it there, else ``online`` or ``offline``;
  ``connected`` says whether its agent is there either way. ``refused_registration``
  is the last agent turned away because another held the node (null once it got in,
  or if none was; kept in memory only, so a server restart forgets it).
- ``POST /api/nodes/<id>/maintenance``: the node takes no new pipelines and finishes
  what it runs. ``POST /api/nodes/<id>/disable``: the same, and its pending and running
  pipelines are canceled. ``POST /api/nodes/<id>/enable``: back in service. Each
  answers 200 with the node.
- ``GET /healthz``: 200 ``{"status": "ok"}`` while the database answers.
  ``GET /readyz``: 200 once the agents' gRPC service and the dispatcher run as well,
  503 otherwise.
- ``GET /metrics``: Prometheus metrics (see ``metrics``).
- ``GET /api/templates`` and ``GET /api/templates/<name>``: the shipped templates (see
  ``templates``), which ``POST /api/pipelines`` also takes by name.
- ``GET /``: the dashboard, a static page that uses this same API.
- ``GET /api/openapi.json``: the OpenAPI description of all of the above (``openapi``).

Authentication: when the server has API tokens (``security``), every route under
``/api/`` wants ``Authorization: Bearer <token>``: GET needs the ``read`` scope, POST
the ``write`` scope; no or an unknown token is 401 (with ``WWW-Authenticate``), a
token without the scope 403. ``/healthz``, ``/readyz`` and ``/metrics`` (probes and
the scraper; counts and names, no values), the dashboard's static files and
``/api/openapi.json`` stay open.

Every error answers JSON ``{"error": sentence, "problems": [{"path", "message"}]}``, with
the status from ``HTTP_STATUS``, here and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from flask import Flask, Response, jsonify, request, send_from_directory
from werkzeug.exceptions import HTTPException

from gamepipeline import __version__
from gamepipeline.logs import ids
from gamepipeline.pipeline.states import PipelineState
from gamepipeline.server.dispatcher import RefusedRegistration
from gamepipeline.server.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    Problem,
    ServerError,
    Unauthenticated,
    UnsupportedProtocol,
    WrongNode,
)
from gamepipeline.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gamepipeline.server.metrics import Metrics
from gamepipeline.server.openapi import openapi_document
from gamepipeline.server.security import Scope, Security, bearer_token, scopes_text
from gamepipeline.server.store import (
    NodeMode,
    NodeRecord,
    PipelineRecord,
    StepRecord,
    Store,
    labels_match,
    labels_text,
)
from gamepipeline.server.submission import prepare, read_submission
from gamepipeline.server.templates import TemplateCatalog, add_template_routes

log = logging.getLogger(__name__)

HTTP_STATUS: Final[dict[type[ServerError], int]] = {
    InvalidRequest: 400,
    WrongNode: 403,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    UnsupportedProtocol: 400,
}
#: A pipeline document is a few kilobytes; anything near this is a mistake.
MAX_BODY_BYTES: Final = 1024 * 1024
MAX_LIST_LIMIT: Final = 1000


class Dispatch(Protocol):
    """What the API asks of the dispatcher; every call is safe from any thread."""

    def wake(self) -> None: ...

    def cancel_on_node(self, pipeline_id: str, node_id: str) -> None: ...

    def refused_registration(self, node_id: str) -> RefusedRegistration | None: ...


def http_status(error: ServerError) -> int:
    for kind in type(error).__mro__:
        if kind in HTTP_STATUS:
            return HTTP_STATUS[kind]
    return 500


def create_app(
    store: Store,
    dispatch: Dispatch,
    *,
    metrics: Metrics | None = None,
    ready: Callable[[], bool] | None = None,
    templates: TemplateCatalog | None = None,
    security: Security | None = None,
) -> Flask:
    # templates: served at /api/templates, submitted by name, configured env values
    catalog = templates or TemplateCatalog(None)
    app = Flask(__name__)  # serves the dashboard's files from server/static/
    if metrics is None:
        metrics = Metrics()
        metrics.watch_store(store)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    guard = security or Security()

    @app.before_request
    def _authorize() -> None:
        if guard.api_open or request.endpoint in OPEN_ENDPOINTS:
            return
        if request.endpoint is None:
            return  # no such route: 404 (or 405) for everyone
        _check_caller(guard)

    @app.errorhandler(ServerError)
    def _server_error(err: ServerError) -> tuple[Response, int, dict[str, str]]:
        headers = {}
        if isinstance(err, Unauthenticated):
            headers["WWW-Authenticate"] = 'Bearer realm="gamepipeline"'
        return _error(err.message, err.problems), http_status(err), headers

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> tuple[Response, int]:
        if err.code == 413:
            return _error(
                f"the request body is larger than the {MAX_BODY_BYTES // 1024} KiB a "
                "submission may be; large files belong in a download step, not in "
                "the pipeline or its args and envs"
            ), 413
        return _error(err.description or err.name), err.code or 500

    @app.post("/api/pipelines")
    def submit() -> tuple[Response, int, dict[str, str]]:
        repeated = sorted(k for k, v in request.args.lists() if len(v) > 1)
        if repeated:
            raise InvalidRequest(
                "a query parameter is given more than once",
                [Problem(k, "given more than once; give it once") for k in repeated],
            )
        raw, query = request.get_data(), request.args.to_dict()
        try:
            submission = catalog.read(raw, query) or read_submission(
                raw, query, labelled_json=request.is_json
            )
        except RecursionError:
            raise InvalidRequest(
                "the request body nests too deeply to read; a pipeline document "
                "nests a few levels, send one",
                [Problem("", "nested too deeply")],
            ) from None
        new = prepare(catalog.with_server_envs(submission))
        _check_selector_fits_node(store, new.node_requested, new.document)
        pipeline_id = store.create_pipeline(new)
        dispatch.wake()
        location = f"/api/pipelines/{pipeline_id}"
        body = {"id": pipeline_id, "state": PipelineState.PENDING.value}
        return jsonify(body), 201, {"Location": location}

    @app.get("/api/pipelines")
    def list_pipelines() -> Response:
        _check_query(LIST_PARAMETERS)
        state = _state_filter(request.args.get("state"))
        limit = _limit(request.args.get("limit"))
        records = store.list_pipelines(
            state=state,
            node_id=request.args.get("node") or None,
            template=request.args.get("template") or None,
            limit=limit,
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
        log.info(
            "cancel requested for pipeline %s", pipeline_id, extra=ids(pipeline_id)
        )
        record = store.get_pipeline(pipeline_id)
        body = _detail(record, store.get_steps(pipeline_id))
        return jsonify(body), 200 if outcome.ended_now else 202

    @app.get("/api/nodes")
    def list_nodes() -> Response:
        load = store.active_counts()
        nodes = [
            _node(n, load.get(n.node_id, 0), dispatch.refused_registration(n.node_id))
            for n in store.list_nodes()
        ]
        return jsonify({"nodes": nodes})

    @app.get("/api/nodes/<node_id>")
    def show_node(node_id: str) -> Response:
        node = store.get_node(node_id)
        active = store.active_counts().get(node_id, 0)
        return jsonify(_node(node, active, dispatch.refused_registration(node_id)))

    @app.post("/api/nodes/<node_id>/<action>")
    def change_node(node_id: str, action: str) -> Response:
        mode = NODE_ACTIONS.get(action)
        if mode is None:
            raise NotFound(
                f"POST /api/nodes/{node_id}/{action}: there is no node action "
                f"{action!r}; use one of {', '.join(NODE_ACTIONS)}"
            )
        node = store.set_node_mode(node_id, mode)
        if mode is NodeMode.DISABLED:
            _cancel_all_on(node_id, store, dispatch)
        dispatch.wake()  # a node back in service may take queued pipelines
        active = store.active_counts().get(node_id, 0)
        return jsonify(_node(node, active, dispatch.refused_registration(node_id)))

    @app.get("/healthz")
    def healthz() -> Response:
        store.ping()
        return jsonify({"status": "ok", "version": __version__})

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        store.ping()
        if ready is not None and not ready():
            body = {"status": "starting", "detail": "the gRPC service is not serving"}
            return jsonify(body), 503
        return jsonify({"status": "ready", "version": __version__}), 200

    @app.get("/metrics")
    def metrics_page() -> Response:
        assert metrics is not None
        return Response(metrics.render(), content_type=METRICS_CONTENT_TYPE)

    @app.get("/api/openapi.json")
    def openapi() -> Response:
        return jsonify(openapi_document(__version__))

    @app.get("/")
    def dashboard() -> Response:
        assert app.static_folder is not None
        return send_from_directory(app.static_folder, "index.html")

    add_template_routes(app, catalog)
    return app


#: Endpoints anyone may call: probes, the scraper, the dashboard's static files and the
#: API's description. Every other route wants a token once the server has any.
OPEN_ENDPOINTS: Final = frozenset(
    {"healthz", "readyz", "metrics_page", "dashboard", "static", "openapi"}
)


def _check_caller(security: Security) -> None:
    """Raise ``Unauthenticated`` or ``Forbidden`` unless the request's token allows it."""
    header = request.headers.get("Authorization")
    caller = security.api_caller(bearer_token(header))
    if caller is None:
        why = "has no bearer token" if header is None else "has an unknown token"
        raise Unauthenticated(
            f"{request.method} {request.path} {why}; send "
            "Authorization: Bearer <token> with a token from the server's api_tokens"
        )
    need = Scope.READ if request.method in ("GET", "HEAD", "OPTIONS") else Scope.WRITE
    if need not in caller.scopes:
        raise Forbidden(
            f"{request.method} {request.path} needs the {need.value} scope; the token "
            f"of {caller.name} has {scopes_text(caller.scopes)}; use a token with "
            f"{need.value} in its scopes"
        )


NODE_ACTIONS: Final = {
    "maintenance": NodeMode.MAINTENANCE,
    "disable": NodeMode.DISABLED,
    "enable": NodeMode.ACTIVE,
}


def _cancel_all_on(node_id: str, store: Store, dispatch: Dispatch) -> None:
    """Cancel every pending and running pipeline of a node being disabled, those
    queued for it by name included."""
    for pipeline_id in store.held_or_awaited_by(node_id):
        try:
            outcome = store.cancel(pipeline_id)
        except Conflict:
            continue  # it ended meanwhile
        if outcome.node_id is not None:
            dispatch.cancel_on_node(pipeline_id, outcome.node_id)
        log.info(
            "canceling pipeline %s: node %s was disabled",
            pipeline_id,
            node_id,
            extra=ids(pipeline_id, node_id=node_id),
        )


#: The query parameters ``GET /api/pipelines`` understands.
LIST_PARAMETERS: Final = ("state", "node", "template", "limit")


def _check_query(known: tuple[str, ...]) -> None:
    """Refuse a query parameter the endpoint does not understand, or one given more
    than once (as the submission does): a filter silently dropped or half-applied
    answers the wrong list."""
    problems = [
        Problem(
            key,
            f"query parameter {key!r} is not understood; use {', '.join(known)}",
        )
        for key in request.args
        if key not in known
    ]
    problems += [
        Problem(key, "given more than once; give it once (one state a request)")
        for key, values in request.args.lists()
        if key in known and len(values) > 1
    ]
    if problems:
        first = f"{problems[0].path}: {problems[0].message}"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InvalidRequest(
            f"the query parameters are not valid: {first}{more}", problems
        )


def _check_selector_fits_node(
    store: Store, node_id: str | None, document: dict[str, Any]
) -> None:
    """Refuse a pipeline for a named, known node whose labels its ``node_selector``
    cannot match: it would wait for ever. A node the server has not seen yet is left
    to wait for it (its labels are not known)."""
    selector = document.get("node_selector") or {}
    if node_id is None or not selector:
        return
    try:
        node = store.get_node(node_id)
    except NotFound:
        return
    if labels_match(selector, node.labels):
        return
    message = (
        f"the node_selector {labels_text(selector)} does not match node {node_id}, "
        f"whose labels are {labels_text(node.labels)}; name a node that carries "
        "them, or leave the node out to let any matching node take the pipeline"
    )
    raise Conflict(message, [Problem("node_selector", message)])


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


def _node(
    node: NodeRecord, active: int, refused: RefusedRegistration | None
) -> dict[str, Any]:
    return {
        "node_id": node.node_id,
        "hostname": node.hostname,
        "labels": node.labels,
        "capacity": node.capacity,
        "active_pipelines": active,
        "agent_version": node.agent_version,
        "state": node.mode.value
        if node.mode is not NodeMode.ACTIVE
        else ("online" if node.online else "offline"),
        "mode": node.mode.value,
        "connected": node.online,
        "connected_at": _time(node.connected_at_ms),
        "last_heartbeat_at": _time(node.last_heartbeat_ms),
        "offline_since": _time(node.offline_since_ms),
        "refused_registration": _refused(refused),
    }


def _refused(refused: RefusedRegistration | None) -> dict[str, Any] | None:
    if refused is None:
        return None
    return {
        "instance_id": refused.instance_id or None,
        "hostname": refused.hostname or None,
        "pid": refused.pid or None,
        "peer": refused.peer or None,
        "refused_at": _time(refused.at_ms),
        "count": refused.count,
    }
