"""Token hashes, scopes and the open-server rule (issue 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gamepipeline.server.security import (
    Scope,
    SecurityConfigError,
    bearer_token,
    check_exposure,
    hash_token,
    load_security,
    new_token,
)


def test_the_configuration_holds_hashes_and_finds_the_token_owner() -> None:
    token = new_token()
    security = load_security({"agents": {"gamenode-1": hash_token(token)}})
    assert security.agent_for(token) == "gamenode-1"
    assert security.agent_for(token + "x") is None
    assert security.agent_for(None) is None
    assert token not in repr(security)


def test_a_plain_token_in_the_configuration_is_refused_with_the_fix() -> None:
    with pytest.raises(SecurityConfigError, match="gamepipeline token"):
        load_security({"agents": {"gamenode-1": "gp_plain-token"}})


def test_api_tokens_carry_their_scopes() -> None:
    reader, writer = new_token(), new_token()
    security = load_security(
        {
            "api_tokens": {
                "grafana": {"sha256": hash_token(reader), "scopes": ["read"]},
                "platform": {"sha256": hash_token(writer), "scopes": ["read", "write"]},
            }
        }
    )
    grafana = security.api_caller(reader)
    assert grafana is not None and grafana.scopes == {Scope.READ}
    platform = security.api_caller(writer)
    assert platform is not None and Scope.WRITE in platform.scopes
    with pytest.raises(SecurityConfigError, match="not a scope"):
        load_security(
            {"api_tokens": {"x": {"sha256": hash_token(reader), "scopes": ["admin"]}}}
        )


def test_bearer_header_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None


def test_an_open_server_is_refused_beyond_loopback_unless_insecure() -> None:
    open_server = load_security({})
    assert len(check_exposure(open_server, "127.0.0.1", "::1")) == 2
    with pytest.raises(SecurityConfigError, match="--insecure"):
        check_exposure(open_server, "0.0.0.0", "127.0.0.1")
    assert check_exposure(load_security({}, insecure=True), "0.0.0.0", "0.0.0.0")
    token = hash_token(new_token())
    closed = load_security(
        {
            "agents": {"n": token},
            "api_tokens": {"p": {"sha256": token, "scopes": ["read"]}},
        }
    )
    assert check_exposure(closed, "0.0.0.0", "0.0.0.0") == []


def test_tls_files_are_read_relative_to_the_configuration(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_bytes(b"CERT")
    (tmp_path / "k.pem").write_bytes(b"KEY")
    security = load_security({"tls": {"cert": "c.pem", "key": "k.pem"}}, base=tmp_path)
    assert security.tls is not None and security.tls.client_ca is None
    with pytest.raises(SecurityConfigError, match=r"tls\.client_ca: cannot read"):
        load_security(
            {"tls": {"cert": "c.pem", "key": "k.pem", "client_ca": "no.pem"}},
            base=tmp_path,
        )
