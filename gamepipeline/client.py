"""A small client of the server's HTTP API, used by the demo, the CLI and the tests.

With a ``token`` every request carries ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

FINAL_STATES = frozenset({"completed", "failed", "canceled"})


class ApiError(Exception):
    """The server answered with an error status."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        detail = body.get("error") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {detail}")


class ApiClient:
    def __init__(
        self, base_url: str, *, timeout: float = 10.0, token: str | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.token = token

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, str], Any]:
        """Send one request; answer (status, headers, decoded JSON body)."""
        req = urllib.request.Request(self.base_url + path, data=body, method=method)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        if body is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                status, headers, raw = resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            status, headers, raw = err.code, dict(err.headers), err.read()
        decoded: Any = json.loads(raw) if raw else None
        return status, headers, decoded

    def _checked(self, method: str, path: str, body: bytes | None = None) -> Any:
        status, _, decoded = self.request(method, path, body)
        if status >= 400:
            raise ApiError(status, decoded)
        return decoded

    def submit(
        self,
        pipeline: str | Mapping[str, Any] | None = None,
        *,
        args: Mapping[str, str] | None = None,
        envs: Mapping[str, str] | None = None,
        node: str | None = None,
        template: str | None = None,
    ) -> str:
        """Submit a pipeline document (YAML text or data), or a shipped template by
        name; answer the new pipeline's id."""
        if (pipeline is None) == (template is None):
            raise ValueError("give either a pipeline document or a template name")
        envelope: dict[str, Any] = (
            {"template": template} if template else {"pipeline": pipeline}
        )
        envelope["args"] = dict(args or {})
        envelope["envs"] = dict(envs or {})
        if node:
            envelope["node"] = node
        body = json.dumps(envelope).encode()
        return str(self._checked("POST", "/api/pipelines", body)["id"])

    def pipeline(self, pipeline_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._checked("GET", f"/api/pipelines/{pipeline_id}")
        return result

    def cancel(self, pipeline_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._checked(
            "POST", f"/api/pipelines/{pipeline_id}/cancel", b"{}"
        )
        return result

    def pipelines(
        self,
        *,
        state: str | None = None,
        node: str | None = None,
        template: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Pipelines newest first, filtered as ``GET /api/pipelines`` allows."""
        given = {"state": state, "node": node, "template": template, "limit": limit}
        query = urllib.parse.urlencode({k: v for k, v in given.items() if v})
        result = self._checked("GET", "/api/pipelines" + (f"?{query}" if query else ""))
        pipelines: list[dict[str, Any]] = result["pipelines"]
        return pipelines

    def templates(self) -> list[dict[str, Any]]:
        """The templates the server ships: ``[{name, description, args, envs}]``."""
        result = self._checked("GET", "/api/templates")
        templates: list[dict[str, Any]] = (
            result["templates"] if isinstance(result, dict) else result
        )
        return templates

    def set_node(self, node_id: str, action: str) -> dict[str, Any]:
        """``maintenance``, ``disable`` or ``enable`` a node; answer the node."""
        quoted = urllib.parse.quote(node_id, safe="")
        result: dict[str, Any] = self._checked(
            "POST", f"/api/nodes/{quoted}/{action}", b"{}"
        )
        return result

    def nodes(self) -> list[dict[str, Any]]:
        result = self._checked("GET", "/api/nodes")
        nodes: list[dict[str, Any]] = (
            result["nodes"] if isinstance(result, dict) else result
        )
        return nodes

    def wait(
        self, pipeline_id: str, *, timeout: float = 120.0, interval: float = 0.2
    ) -> dict[str, Any]:
        """Poll until the pipeline reaches a final state; answer it."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.pipeline(pipeline_id)
            if current["state"] in FINAL_STATES:
                return current
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"pipeline {pipeline_id} still {current['state']} after {timeout:.0f} s"
                )
            time.sleep(interval)
