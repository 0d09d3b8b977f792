"""Authentication answers as the RFCs say: every 401 has a Bearer challenge
(RFC 9110 section 11.6.1), with ``error="invalid_token"`` only when a token
was presented (RFC 6750 section 3.1); a JWKS without a usable key never
replaces good keys."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
import trio

from tests.e2e.support import echo_handler, request, run_gateway, serve_upstream
from tests.e2e.test_security import (
    IdentityProvider,
    OAuthServer,
    fresh,
    good,
    jwt_auth,
    mcp_auth_config,
    secured,
)
from tests.test_jwt import RSA_KEY, b64, token

CHALLENGES: dict[str, tuple[list[tuple[bytes, bytes]], bytes, str]] = {
    "no-token": ([], b"Bearer", "no bearer token found"),
    "basic-scheme": (
        [(b"authorization", b"Basic YWxpY2U6cHc=")],
        b"Bearer",
        "no bearer token found",
    ),
    "expired": (
        [(b"authorization", b"Bearer " + token(fresh(exp=time.time() - 600)).encode())],
        b'Bearer error="invalid_token"',
        "token expired",
    ),
    "garbage": ([(b"authorization", b"Bearer abc")], b'Bearer error="invalid_token"', ""),
    "two-headers": (
        [(b"authorization", b"Bearer " + good().encode())] * 2,
        b'Bearer error="invalid_request"',
        "multiple authorization headers",
    ),
}


@pytest.mark.parametrize("case", sorted(CHALLENGES))
async def test_jwt_auth_401_has_a_bearer_challenge(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentgw.access")
    headers, challenge, reason = CHALLENGES[case]
    async with serve_upstream(echo_handler) as up:
        async with run_gateway(secured(up.port, jwtAuth=jwt_auth())) as (_, port):
            resp = await request(port, "GET", "/", headers=headers)
    assert resp.status == 401
    assert [v for n, v in resp.headers if n == b"www-authenticate"] == [challenge]
    assert resp.body.startswith(b"authentication failure: ")
    assert up.requests == 0
    (line,) = [r.getMessage() for r in caplog.records if r.name == "agentgw.access"]
    assert "policy=jwtAuth" in line and (not reason or reason in line)


async def test_optional_mode_challenges_a_bad_token_only() -> None:
    bad = [(b"authorization", b"Bearer " + token(fresh(), kid="nope").encode())]
    async with serve_upstream(echo_handler) as up:
        async with run_gateway(secured(up.port, jwtAuth=jwt_auth("optional"))) as (_, port):
            anonymous = await request(port, "GET", "/")
            refused = await request(port, "GET", "/", headers=bad)
    assert anonymous.status == 200 and anonymous.header(b"www-authenticate") is None
    assert refused.status == 401
    assert refused.header(b"www-authenticate") == b'Bearer error="invalid_token"'
    assert up.requests == 1


async def test_mcp_authentication_says_invalid_token_for_a_bad_token() -> None:
    idp = OAuthServer()
    async with serve_upstream(idp.handle) as idp_server:
        idp.base = f"http://127.0.0.1:{idp_server.port}"
        async with run_gateway(mcp_auth_config(idp.base)) as (_, port):
            headers = [
                (b"accept", b"application/json, text/event-stream"),
                (b"content-type", b"application/json"),
            ]
            metadata = (
                b'resource_metadata="http://127.0.0.1/.well-known/oauth-protected-resource/mcp"'
            )
            none = await request(port, "POST", "/mcp", headers=headers, body=b"{}")
            bad_token = [(b"authorization", b"Bearer " + good(iss=idp.base).encode())]  # kid rsa
            bad = await request(port, "POST", "/mcp", headers=headers + bad_token, body=b"{}")
    assert none.status == bad.status == 401
    assert none.header(b"www-authenticate") == b"Bearer " + metadata
    assert bad.header(b"www-authenticate") == b'Bearer error="invalid_token", ' + metadata
    assert json.loads(bad.body) == {
        "error": "unauthorized",
        "error_description": "JWT token required",
    }


async def test_jwks_with_only_symmetric_keys_keeps_the_last_good_keys(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A JWKS answer with only ``oct`` keys is a failed refresh: the keys
    loaded before stay in force and valid tokens keep passing."""
    caplog.set_level(logging.WARNING, logger="agentgw.upstream.jwks")
    idp = IdentityProvider()

    def auth(kid: str) -> list[tuple[bytes, bytes]]:
        return [(b"authorization", b"Bearer " + token(fresh(), kid=kid, key=RSA_KEY).encode())]

    async with serve_upstream(idp.handle) as idp_server, serve_upstream(echo_handler) as up:
        jwks = {"url": f"http://127.0.0.1:{idp_server.port}/certs"}
        async with run_gateway(secured(up.port, jwtAuth=jwt_auth("strict", jwks))) as (_, port):
            with trio.fail_after(10):
                while (await request(port, "GET", "/", headers=auth("k1"))).status != 200:
                    await trio.sleep(0.05)
            fetched = idp.hits
            secret = b64(b"0123456789abcdef0123456789abcdef")
            idp.keys = [{"kty": "oct", "kid": "k1", "k": secret, "alg": "HS256"}]
            # An unknown key id asks for an early refresh, which gets only oct keys.
            assert (await request(port, "GET", "/", headers=auth("rotated"))).status == 401
            with trio.fail_after(10):
                while idp.hits == fetched:
                    await trio.sleep(0.05)
            await trio.sleep(0.1)
            after: Any = await request(port, "GET", "/", headers=auth("k1"))
    assert after.status == 200
    warnings = [r.getMessage() for r in caplog.records if r.name == "agentgw.upstream.jwks"]
    assert any("no usable key" in w and "keeping the last good keys" in w for w in warnings)
