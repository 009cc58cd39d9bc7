"""The server's exceptions: one base, one subclass per kind of failure.

Each kind is turned into an HTTP status in ``api.py`` and into a gRPC status code in
``grpc_service.py``, each mapping written once there; nothing else in the package decides
what a failure looks like on the wire.
"""

from __future__ import annotations

from gamepipeline.pipeline.errors import Problem

__all__ = [
    "Conflict",
    "Forbidden",
    "InvalidRequest",
    "NodeTaken",
    "NotFound",
    "Problem",
    "ServerError",
    "Unauthenticated",
    "UnsupportedProtocol",
    "WrongNode",
]


class ServerError(Exception):
    """Base of every failure the server reports to a client or an agent."""

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems: list[Problem] = problems or []


class InvalidRequest(ServerError):
    """The request or report is malformed; sending it again will not help."""


class NotFound(ServerError):
    """The named pipeline or node does not exist."""


class Conflict(ServerError):
    """The request is well formed but the record's state does not allow it."""


class NodeTaken(Conflict):
    """Another live agent holds the node id an agent registered with."""


class WrongNode(ServerError):
    """A node reported about a pipeline that is assigned to another node."""


class Unauthenticated(ServerError):
    """The caller or agent gave no credentials, or ones the server does not know."""


class Forbidden(ServerError):
    """The caller or agent is known but not allowed to do this."""


class UnsupportedProtocol(ServerError):
    """The agent speaks a contract version this server does not."""
