"""Who may talk to the server: agent tokens, API tokens and their scopes, TLS files.

The configuration holds only hashes of tokens (``sha256:<64 hex digits>``); the tokens
themselves live with the agents and callers. ``gamepipeline token`` makes a new random
token and prints it with its hash. Tokens are random, so one round of SHA-256 is enough
to keep a stolen configuration file from being a list of working credentials.

- Agents: ``agents`` maps each node id to the hash of that node's token. An agent sends
  its token as the gRPC metadata ``authorization: Bearer <token>``; a token that is
  missing or unknown is UNAUTHENTICATED, a known token used for another node id is
  PERMISSION_DENIED.
- HTTP callers: ``api_tokens`` maps a caller's name to ``{sha256, scopes}``. ``read``
  allows every GET under ``/api/``; ``write`` allows the POSTs (submit, cancel, node
  actions). No token is 401, a token outside its scope 403.
- With no tokens configured a face is open. That is only allowed on a loopback address
  (the demo, the tests); ``check_exposure`` refuses anything else unless the operator
  said ``insecure``.

This module does no I/O but reading the TLS files named in the configuration.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

TOKEN_PREFIX: Final = "gp_"
HASH_PREFIX: Final = "sha256:"
_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
BEARER: Final = "Bearer "


class Scope(enum.StrEnum):
    READ = "read"
    WRITE = "write"


class SecurityConfigError(ValueError):
    """The security settings are malformed; the message names the setting and the fix."""


def new_token() -> str:
    """A fresh random token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The form of a token the server's configuration holds."""
    return HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value, or None."""
    if not header or not header.startswith(BEARER):
        return None
    token = header[len(BEARER) :].strip()
    return token or None


@dataclass(frozen=True)
class ApiCaller:
    name: str
    scopes: frozenset[Scope]


@dataclass(frozen=True)
class TlsFiles:
    """The gRPC port's certificate and key, and the CA that signs agents' certificates
    when mutual TLS is on."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None


@dataclass(frozen=True)
class Security:
    """The server's security settings, read once at start-up."""

    agent_hashes: Mapping[str, str] = field(default_factory=dict)
    api_callers: Mapping[str, ApiCaller] = field(default_factory=dict)
    tls: TlsFiles | None = None
    insecure: bool = False

    @property
    def agents_open(self) -> bool:
        return not self.agent_hashes

    @property
    def api_open(self) -> bool:
        return not self.api_callers

    def agent_for(self, token: str | None) -> str | None:
        """The node id a token belongs to, or None for a missing or unknown token."""
        if not token:
            return None
        digest = hash_token(token)
        found = None
        for node_id, expected in self.agent_hashes.items():
            if hmac.compare_digest(digest, expected):
                found = node_id
        return found

    def api_caller(self, token: str | None) -> ApiCaller | None:
        if not token:
            return None
        return self.api_callers.get(hash_token(token))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(security: Security, grpc_host: str, http_host: str) -> list[str]:
    """Refuse an open face on a non-loopback address; answer warnings to log.

    Raises:
        SecurityConfigError: a face without tokens listens beyond loopback and
            ``insecure`` was not given.
    """
    open_faces = []
    if security.agents_open:
        open_faces.append(("gRPC", grpc_host, "agents"))
    if security.api_open:
        open_faces.append(("HTTP", http_host, "api_tokens"))
    warnings = []
    for face, host, setting in open_faces:
        if is_loopback(host):
            warnings.append(
                f"the {face} API on {host} takes anyone: no {setting} are configured "
                "(allowed on loopback only)"
            )
        elif security.insecure:
            warnings.append(
                f"the {face} API on {host} takes anyone: no {setting} are configured "
                "and --insecure was given"
            )
        else:
            raise SecurityConfigError(
                f"the {face} API would listen on {host} without authentication: "
                f"configure {setting} (see `gamepipeline token`), listen on "
                "127.0.0.1, or pass --insecure to accept an open server"
            )
    return warnings


def load_security(
    settings: Mapping[str, Any], *, base: Path | None = None, insecure: bool = False
) -> Security:
    """Build ``Security`` from the server configuration's ``agents``, ``api_tokens``
    and ``tls`` settings; relative TLS paths are read from ``base``.

    Raises:
        SecurityConfigError: naming the setting that is wrong and how to write it.
    """
    return Security(
        agent_hashes=_agents(settings.get("agents")),
        api_callers=_api_callers(settings.get("api_tokens")),
        tls=_tls(settings.get("tls"), base or Path.cwd()),
        insecure=insecure or _switch(settings.get("insecure", False), "insecure"),
    )


def _switch(value: Any, where: str) -> bool:
    """A true/false setting. Config files are read as YAML 1.2, where ``no`` and
    ``off`` are text: taken as truthy they would open the server, so they are refused."""
    if isinstance(value, bool):
        return value
    raise SecurityConfigError(f"{where}: {value!r} is not true or false; write one")


def _checked_hash(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _HASH.match(value.strip().lower()):
        shown = value if isinstance(value, str) and len(value) < 80 else type(value)
        raise SecurityConfigError(
            f"{where}: {shown!r} is not a token hash; write sha256:<64 hex digits> as "
            "`gamepipeline token` prints it (never the token itself)"
        )
    return value.strip().lower()


def _agents(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SecurityConfigError(
            "agents must map each node id to its token's hash, e.g. "
            "agents: {gamenode-1: 'sha256:…'}"
        )
    return {str(node): _checked_hash(h, f"agents.{node}") for node, h in raw.items()}


def _api_callers(raw: Any) -> dict[str, ApiCaller]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SecurityConfigError(
            "api_tokens must map each caller's name to {sha256: 'sha256:…', "
            "scopes: [read, write]}"
        )
    callers: dict[str, ApiCaller] = {}
    for name, entry in raw.items():
        where = f"api_tokens.{name}"
        if not isinstance(entry, Mapping) or set(entry) - {"sha256", "scopes"}:
            raise SecurityConfigError(
                f"{where} must be {{sha256: 'sha256:…', scopes: [read, write]}}"
            )
        digest = _checked_hash(entry.get("sha256"), f"{where}.sha256")
        callers[digest] = ApiCaller(str(name), _scopes(entry.get("scopes"), where))
    return callers


def _scopes(raw: Any, where: str) -> frozenset[Scope]:
    known = ", ".join(s.value for s in Scope)
    if not isinstance(raw, list) or not raw:
        raise SecurityConfigError(f"{where}.scopes must be a non-empty list of {known}")
    scopes: set[Scope] = set()
    for item in raw:
        try:
            scopes.add(Scope(item))
        except ValueError:
            raise SecurityConfigError(
                f"{where}.scopes: {item!r} is not a scope; use {known}"
            ) from None
    return frozenset(scopes)


def _tls(raw: Any, base: Path) -> TlsFiles | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) - {"cert", "key", "client_ca"}:
        raise SecurityConfigError(
            "tls must be {cert: FILE, key: FILE, client_ca: FILE (optional, turns on "
            "mutual TLS)}"
        )
    if not raw.get("cert") or not raw.get("key"):
        raise SecurityConfigError("tls needs both cert and key (PEM files)")
    ca = raw.get("client_ca")
    return TlsFiles(
        cert=_read(base, raw["cert"], "tls.cert"),
        key=_read(base, raw["key"], "tls.key"),
        client_ca=_read(base, ca, "tls.client_ca") if ca else None,
    )


def _read(base: Path, name: Any, where: str) -> bytes:
    path = base / str(name)
    try:
        return path.read_bytes()
    except OSError as err:
        raise SecurityConfigError(
            f"{where}: cannot read {path}: {err.strerror}; give a readable PEM file"
        ) from None


def scopes_text(scopes: Iterable[Scope]) -> str:
    return ", ".join(sorted(s.value for s in scopes)) or "none"
