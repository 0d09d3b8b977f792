"""Security policies over real sockets: jwtAuth, what the upstream sees,
authorization (HTTP) and mcpAuthorization (MCP, with the SDK), remote JWKS."""

from __future__ import annotations

import base64
import json
import logging
import time
from contextlib import AsyncExitStack
from typing import Any

import h11
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from tests.e2e.support import (
    Upstream,
    echo_handler,
    proxy_config,
    recording_mcp_upstream,
    request,
    run_gateway,
    serve_upstream,
)
from tests.e2e.test_mcp_gateway import DEMO, PEER, _call, _initialize, mcp_config, stdio
from tests.test_jwt import (
    AUDIENCE,
    ISSUER,
    JWKS,
    OTHER_RSA_KEY,
    RSA_KEY,
    b64,
    claims,
    raw_token,
    rsa_jwk,
    token,
)


def fresh(**overrides: Any) -> dict[str, Any]:
    now = time.time()
    return claims(**{"iat": now, "exp": now + 300, **overrides})


def good(**overrides: Any) -> str:
    return token(fresh(**overrides))


def secured(upstream_port: int, **policies: Any) -> dict[str, Any]:
    config = proxy_config(upstream_port)
    route = config["binds"][0]["listeners"][0]["routes"][0]
    route["policies"] = policies
    return config


# The keys the gateway trusts, plus an encryption key that must never verify.
TRUSTED = {"keys": [*JWKS["keys"], rsa_jwk("enc", OTHER_RSA_KEY, use="enc")]}


def jwt_auth(mode: str = "strict", jwks: Any = None) -> dict[str, Any]:
    return {
        "mode": mode,
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "jwks": json.dumps(TRUSTED) if jwks is None else jwks,
    }


def _nested(depth: int) -> str:
    header = b64(("[" * depth + "]" * depth).encode())
    return f"{header}.{b64(json.dumps(fresh()).encode())}.{b64(b'x')}"


def _hs256_with_public_key() -> str:
    import hashlib
    import hmac

    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa"}).encode())
    body = b64(json.dumps(fresh()).encode())
    sig = hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(sig)}"


def _tampered() -> str:
    header, _, sig = good().split(".")
    body = b64(json.dumps(fresh(sub="mallory")).encode())
    return f"{header}.{body}.{sig}"


BAD: dict[str, tuple[list[tuple[bytes, bytes]], str]] = {
    "missing": ([], "no bearer token found"),
    "wrong-scheme": ([(b"authorization", b"Basic YWxpY2U6cHc=")], "no bearer token found"),
    "expired": (
        [(b"authorization", b"Bearer " + token(fresh(exp=time.time() - 600)).encode())],
        "token expired",
    ),
    "not-yet-valid": (
        [(b"authorization", b"Bearer " + good(nbf=time.time() + 600).encode())],
        "token not yet valid",
    ),
    "wrong-issuer": ([(b"authorization", b"Bearer " + good(iss="https://evil").encode())], ""),
    "wrong-audience": (
        [(b"authorization", b"Bearer " + good(aud="other").encode())],
        "invalid audience",
    ),
    "unknown-kid": (
        [(b"authorization", b"Bearer " + token(fresh(), kid="nope").encode())],
        "unknown key id",
    ),
    "kid-path": (
        [(b"authorization", b"Bearer " + token(fresh(), kid="../../etc/passwd").encode())],
        "unknown key id",
    ),
    "alg-none": (
        [
            (
                b"authorization",
                b"Bearer "
                + raw_token('{"alg":"none","kid":"rsa"}', json.dumps(fresh()), b"").encode(),
            )
        ],
        "",
    ),
    "hs256-public-key": ([(b"authorization", b"Bearer " + _hs256_with_public_key().encode())], ""),
    "tampered": ([(b"authorization", b"Bearer " + _tampered().encode())], "invalid signature"),
    "two-headers": (
        [(b"authorization", b"Bearer " + good().encode())] * 2,
        "multiple authorization headers",
    ),
    "crit": (
        [(b"authorization", b"Bearer " + token(fresh(), crit=["x"]).encode())],
        "unsupported crit header",
    ),
    "jku": ([(b"authorization", b"Bearer " + token(fresh(), jku="http://evil/jwks").encode())], ""),
    "exp-string": (
        [(b"authorization", b"Bearer " + good(exp=str(int(time.time()) + 300)).encode())],
        "",
    ),
    "nested-1100": ([(b"authorization", b"Bearer " + _nested(1100).encode())], ""),
    "jwe": ([(b"authorization", b"Bearer a.b.c.d.e")], ""),
    "rs512-vs-rs256-key": (
        [(b"authorization", b"Bearer " + token(fresh(), alg="RS512").encode())],
        "algorithm not allowed",
    ),
    "key-use-enc": (
        [(b"authorization", b"Bearer " + token(fresh(), kid="enc", key=OTHER_RSA_KEY).encode())],
        "unknown key id",
    ),
    "other-key": (
        [(b"authorization", b"Bearer " + token(fresh(), key=OTHER_RSA_KEY).encode())],
        "invalid signature",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
async def test_jwt_strict_refuses(case: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agentgw.access")
    headers, reason = BAD[case]
    async with (
        serve_upstream(echo_handler) as up,
        run_gateway(secured(up.port, jwtAuth=jwt_auth())) as (
            _,
            port,
        ),
    ):
        resp = await request(port, "GET", "/", headers=headers)
    assert resp.status == 401
    assert resp.header(b"content-type") == b"text/plain; charset=utf-8"
    assert resp.body.startswith(b"authentication failure: ")
    if reason:
        assert resp.body.decode().strip() == f"authentication failure: {reason}"
    assert up.requests == 0  # the upstream never saw it
    lines = [r.getMessage() for r in caplog.records if r.name == "agentgw.access"]
    for _, value in headers:
        secret = value.split(b" ", 1)[-1].decode()
        assert all(secret not in line for line in lines)  # never log a token


async def test_what_the_upstream_sees() -> None:
    tok = good()
    header = [(b"authorization", f"Bearer {tok}".encode())]
    async with serve_upstream(echo_handler) as up:
        async with run_gateway(secured(up.port)) as (_, port):
            await request(port, "GET", "/none", headers=header)
        async with run_gateway(secured(up.port, jwtAuth=jwt_auth())) as (_, port):
            await request(port, "GET", "/validated", headers=header)
        passthrough = {"jwtAuth": jwt_auth(), "backendAuth": {"passthrough": {}}}
        async with run_gateway(secured(up.port, **passthrough)) as (_, port):
            await request(
                port, "GET", "/passthrough", headers=[(b"authorization", f"bearer {tok}".encode())]
            )
    seen = {req.target: dict(req.headers) for req, _ in up.seen}
    assert seen[b"/none"][b"authorization"] == f"Bearer {tok}".encode()  # untouched
    assert b"authorization" not in seen[b"/validated"]  # stripped once validated
    assert seen[b"/passthrough"][b"authorization"] == f"Bearer {tok}".encode()  # restored


async def test_modes() -> None:
    bad = [(b"authorization", b"Bearer " + good(iss="https://evil").encode())]
    async with serve_upstream(echo_handler) as up:
        async with run_gateway(secured(up.port, jwtAuth=jwt_auth("optional"))) as (_, port):
            assert (await request(port, "GET", "/")).status == 200  # no token passes
            assert (await request(port, "GET", "/", headers=bad)).status == 401
        async with run_gateway(secured(up.port, jwtAuth=jwt_auth("permissive"))) as (_, port):
            assert (await request(port, "GET", "/", headers=bad)).status == 200
            assert (await request(port, "GET", "/")).status == 200


async def test_http_authorization_rules() -> None:
    policies = {
        "jwtAuth": jwt_auth("optional"),
        "authorization": {"rules": ['jwt.sub == "alice"', {"deny": 'request.path == "/admin"'}]},
    }
    async with (
        serve_upstream(echo_handler) as up,
        run_gateway(secured(up.port, **policies)) as (
            _,
            port,
        ),
    ):
        alice = [(b"authorization", b"Bearer " + good(sub="alice").encode())]
        bob = [(b"authorization", b"Bearer " + good(sub="bob").encode())]
        assert (await request(port, "GET", "/x", headers=alice)).status == 200
        denied = await request(port, "GET", "/x", headers=bob)
        assert (denied.status, denied.body) == (403, b"authorization failed")
        assert (await request(port, "GET", "/x")).status == 403  # no claims
        assert (await request(port, "GET", "/admin", headers=alice)).status == 403
    assert [r.target for r, _ in up.seen] == [b"/x"]


async def test_mcp_authorization_filters_and_denies_with_the_sdk() -> None:
    config = mcp_config(stdio("paged", PEER), stdio("demo", DEMO))
    route = config["binds"][0]["listeners"][0]["routes"][0]
    route["policies"] = {
        "jwtAuth": jwt_auth("strict"),
        "authorization": {"rules": ['jwt.sub == "alice" || jwt.sub == "root"']},
        "mcpAuthorization": {
            "rules": [
                'mcp.tool.target == "paged" && mcp.tool.name == "echo"',
                '"admins" in jwt.groups',
                {"deny": 'mcp.tool.name == "crash"'},
            ]
        },
    }
    async with run_gateway(config) as (_, port):
        url = f"http://127.0.0.1:{port}/mcp"

        async def connect(stack: AsyncExitStack, **claim: Any) -> Client:
            headers = {"Authorization": f"Bearer {good(**claim)}"}
            http = await stack.enter_async_context(create_mcp_http_client(headers=headers))
            transport = streamable_http_client(url, http_client=http)
            return await stack.enter_async_context(Client(transport))

        async def all_tools(client: Client) -> set[str]:
            names: set[str] = set()
            cursor = None
            while True:
                page = await client.list_tools(cursor=cursor)
                names.update(t.name for t in page.tools)
                if (cursor := page.next_cursor) is None:
                    return names

        async with AsyncExitStack() as stack:
            user = await connect(stack, sub="alice", groups=["users"])
            assert await all_tools(user) == {"paged_echo"}
            ok = await user.call_tool("paged_echo", {"message": "allowed"})
            assert "allowed" in ok.content[0].text
            # Denied exactly like a tool that does not exist.
            with pytest.raises(MCPError, match=r"^Unknown tool: demo_echo$"):
                await user.call_tool("demo_echo", {"message": "no"})

            # HTTP-level rule: bob is refused before MCP starts.
            bob = f"Bearer {good(sub='bob', groups=['admins'])}".encode()
            refused = await request(
                port,
                "POST",
                "/mcp",
                headers=[
                    (b"authorization", bob),
                    (b"accept", b"application/json, text/event-stream"),
                    (b"content-type", b"application/json"),
                ],
                body=b"{}",
            )
            assert (refused.status, refused.body) == (403, b"authorization failed")

            admin = await connect(stack, sub="root", groups=["admins"])
            tools = await all_tools(admin)
            assert "demo_echo" in tools and "paged_tool200" in tools
            assert "paged_crash" not in tools  # the deny rule holds for admins too
            allowed = await admin.call_tool("demo_echo", {"message": "yes"})
            assert "yes" in allowed.content[0].text


async def test_mcp_denied_call_looks_like_a_missing_tool() -> None:
    config = mcp_config(stdio("paged", PEER))
    route = config["binds"][0]["listeners"][0]["routes"][0]
    route["policies"] = {"mcpAuthorization": {"rules": ['mcp.tool.name == "echo"']}}
    async with run_gateway(config) as (_, port):
        token = await _initialize(port)
        _, body = await _call(port, token, "slow", {})
        error = json.loads(body)["error"]
        assert error == {"code": -32602, "message": "Unknown tool: slow"}


# ---------------------------------------------------------------- remote JWKS


class IdentityProvider:
    """A small identity provider: JWKS with Cache-Control, hit counting,
    rotation, and an outage switch."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = [rsa_jwk("k1", alg="RS256")]
        self.hits = 0
        self.down = False
        self.max_age = 3600

    async def handle(self, req: h11.Request, body: bytes, up: Upstream) -> Any:
        self.hits += 1
        if self.down:
            return 503, [], b"down"
        doc = json.dumps({"keys": self.keys}).encode()
        return (
            200,
            [
                (b"content-type", b"application/json"),
                (b"cache-control", f"max-age={self.max_age}".encode()),
            ],
            doc,
        )


async def test_remote_jwks_cache_rotation_and_outage() -> None:
    idp = IdentityProvider()
    idp.down = True
    async with serve_upstream(idp.handle) as idp_server, serve_upstream(echo_handler) as up:
        jwks = {"url": f"http://127.0.0.1:{idp_server.port}/certs"}
        async with run_gateway(secured(up.port, jwtAuth=jwt_auth("strict", jwks))) as (_, port):

            def auth(kid: str, key: Any = RSA_KEY) -> list[tuple[bytes, bytes]]:
                return [(b"authorization", b"Bearer " + token(fresh(), kid=kid, key=key).encode())]

            # The provider is down at start-up: fail closed, keep serving.
            await trio.sleep(0.2)
            assert (await request(port, "GET", "/", headers=auth("k1"))).status == 401
            # It recovers: the retry picks the keys up (first retry after 10 s).
            idp.down = False
            with trio.fail_after(15):
                while (await request(port, "GET", "/", headers=auth("k1"))).status != 200:
                    await trio.sleep(0.25)
            hits = idp.hits
            for _ in range(20):
                assert (await request(port, "GET", "/", headers=auth("k1"))).status == 200
            assert idp.hits == hits  # cached (max-age), not fetched per request

            # Rotation: a token with a new kid triggers one early refresh.
            idp.keys.append(rsa_jwk("k2", key=OTHER_RSA_KEY, alg="RS256"))
            with trio.fail_after(5):
                while (
                    await request(port, "GET", "/", headers=auth("k2", OTHER_RSA_KEY))
                ).status != 200:
                    await trio.sleep(0.1)
            rotated = idp.hits
            for _ in range(5):  # more unknown kids within a minute: no more fetches
                await request(port, "GET", "/", headers=auth("k3"))
            assert idp.hits == rotated


# ---------------------------------------------------------------- mcpAuthentication


class OAuthServer:
    """An identity provider for the MCP authorization flow: RFC 8414
    metadata, OpenID discovery, JWKS, a client-credentials token endpoint
    and a registration endpoint."""

    def __init__(self) -> None:
        self.base = ""
        self.clients = {"agent": "s3cret"}
        self.registrations = 0

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.base,
            "authorization_endpoint": f"{self.base}/authorize",
            "token_endpoint": f"{self.base}/token",
            "jwks_uri": f"{self.base}/.well-known/jwks.json",
            "registration_endpoint": f"{self.base}/register",
            "grant_types_supported": ["client_credentials", "authorization_code"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
        }

    async def handle(self, req: h11.Request, body: bytes, up: Upstream) -> Any:
        path = req.target.decode().split("?")[0]
        as_json = [(b"content-type", b"application/json")]
        if path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
            return 200, as_json, json.dumps(self.metadata()).encode()
        if path in ("/.well-known/jwks.json", "/protocol/openid-connect/certs"):
            return 200, as_json, json.dumps({"keys": [rsa_jwk("idp", alg="RS256")]}).encode()
        if path == "/clients-registrations/openid-connect":
            self.registrations += 1
            return 201, as_json, json.dumps({"client_id": "new", "echo": json.loads(body)}).encode()
        if path == "/token":
            import urllib.parse

            form = dict(urllib.parse.parse_qsl(body.decode()))
            auth = dict(req.headers).get(b"authorization", b"").decode()
            if auth.lower().startswith("basic "):
                cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
                cid, secret = urllib.parse.unquote(cid), urllib.parse.unquote(secret)
            else:
                cid, secret = form.get("client_id", ""), form.get("client_secret", "")
            if form.get("grant_type") != "client_credentials" or self.clients.get(cid) != secret:
                return 401, as_json, b'{"error":"invalid_client"}'
            now = time.time()
            payload = {"iss": self.base, "aud": AUDIENCE, "sub": cid, "iat": now, "exp": now + 600}
            tok = token(payload, kid="idp")
            answer = {"access_token": tok, "token_type": "Bearer", "expires_in": 600}
            return 200, as_json, json.dumps(answer).encode()
        return 404, [], b""


class MemoryTokens:
    def __init__(self) -> None:
        self.tokens: Any = None
        self.client: Any = None

    async def get_tokens(self) -> Any:
        return self.tokens

    async def set_tokens(self, tokens: Any) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> Any:
        return self.client

    async def set_client_info(self, info: Any) -> None:
        self.client = info


def mcp_auth_config(idp: str, **extra: Any) -> dict[str, Any]:
    config = mcp_config(stdio("demo", DEMO))
    route = config["binds"][0]["listeners"][0]["routes"][0]
    route["matches"] = [{"path": {"pathPrefix": "/mcp"}}, {"path": {"pathPrefix": "/.well-known"}}]
    route["policies"] = {
        "mcpAuthentication": {
            "issuer": idp,
            "audiences": [AUDIENCE],
            "resourceMetadata": {"scopesSupported": ["mcp"], "bearerMethodsSupported": ["header"]},
            **extra,
        }
    }
    return config


async def test_mcp_authentication_challenge_and_metadata() -> None:
    idp = OAuthServer()
    async with serve_upstream(idp.handle) as idp_server:
        idp.base = f"http://127.0.0.1:{idp_server.port}"
        async with run_gateway(mcp_auth_config(idp.base)) as (_, port):
            accept = (b"accept", b"application/json, text/event-stream")
            resp = await request(
                port,
                "POST",
                "/mcp",
                headers=[accept, (b"content-type", b"application/json")],
                body=b"{}",
            )
            assert resp.status == 401
            assert resp.header(b"content-type") == b"application/json"
            assert json.loads(resp.body) == {
                "error": "unauthorized",
                "error_description": "JWT token required",
            }
            assert resp.header(b"www-authenticate") == (
                b'Bearer resource_metadata="http://127.0.0.1/.well-known/oauth-protected-resource/mcp"'
            )
            forwarded = await request(
                port,
                "POST",
                "/mcp",
                headers=[(b"x-forwarded-proto", b"https"), (b"x-forwarded-host", b"gw.example")],
                body=b"{}",
            )
            assert forwarded.header(b"www-authenticate") == (
                b'Bearer resource_metadata="https://gw.example/.well-known/oauth-protected-resource/mcp"'
            )
            doc_resp = await request(
                port, "GET", "/.well-known/oauth-protected-resource/mcp", host="gw.example"
            )
            assert (
                doc_resp.status == 200 and doc_resp.header(b"access-control-allow-origin") == b"*"
            )
            doc = json.loads(doc_resp.body)
            assert doc == {
                "resource": "http://gw.example/mcp",
                "authorization_servers": [idp.base],
                "mcp_protocol_version": "2025-06-18",
                "resource_type": "mcp-server",
                "scopes_supported": ["mcp"],
                "bearer_methods_supported": ["header"],
            }
            meta = await request(port, "GET", "/.well-known/oauth-authorization-server/mcp")
            assert json.loads(meta.body)["token_endpoint"] == f"{idp.base}/token"


async def test_mcp_authentication_keycloak_adaptation() -> None:
    idp = OAuthServer()
    async with serve_upstream(idp.handle) as idp_server:
        idp.base = f"http://127.0.0.1:{idp_server.port}"
        config = mcp_auth_config(idp.base, provider={"keycloak": {}})
        async with run_gateway(config) as (_, port):
            meta = json.loads(
                (
                    await request(
                        port, "GET", "/.well-known/oauth-authorization-server/mcp", host="gw"
                    )
                ).body
            )
            assert (
                meta["registration_endpoint"]
                == "http://gw/.well-known/oauth-authorization-server/mcp/client-registration"
            )
            assert meta["issuer"] == "http://gw/mcp"
            reg = await request(
                port,
                "POST",
                "/.well-known/oauth-authorization-server/mcp/client-registration",
                headers=[(b"content-type", b"application/json")],
                body=b'{"client_name":"browser"}',
            )
            assert reg.status == 201 and reg.header(b"access-control-allow-origin") == b"*"
            assert idp.registrations == 1
            prm = json.loads(
                (
                    await request(
                        port, "GET", "/.well-known/oauth-protected-resource/mcp", host="gw"
                    )
                ).body
            )
            assert prm["authorization_servers"] == ["http://gw/mcp"]


async def test_mcp_authentication_sdk_from_nothing_to_a_tool_call() -> None:
    from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider

    idp = OAuthServer()
    async with serve_upstream(idp.handle) as idp_server:
        idp.base = f"http://127.0.0.1:{idp_server.port}"
        async with run_gateway(mcp_auth_config(idp.base)) as (_, port):
            url = f"http://127.0.0.1:{port}/mcp"
            oauth = ClientCredentialsOAuthProvider(
                server_url=url,
                storage=MemoryTokens(),
                client_id="agent",
                client_secret="s3cret",
                issuer=idp.base,
            )
            async with AsyncExitStack() as stack:
                http = await stack.enter_async_context(create_mcp_http_client(auth=oauth))
                client = await stack.enter_async_context(
                    Client(streamable_http_client(url, http_client=http))
                )
                tools = {t.name for t in (await client.list_tools()).tools}
                assert "echo" in tools
                result = await client.call_tool("echo", {"message": "authorized"})
                assert "authorized" in result.content[0].text


async def test_backend_auth_on_one_backend_and_on_one_target() -> None:
    tok = good()
    auth = [(b"authorization", f"Bearer {tok}".encode())]
    async with serve_upstream(echo_handler) as up:
        config = secured(up.port, jwtAuth=jwt_auth())
        backend = config["binds"][0]["listeners"][0]["routes"][0]["backends"][0]
        backend["policies"] = {"backendAuth": {"passthrough": {}}}
        async with run_gateway(config) as (_, port):
            assert (await request(port, "GET", "/", headers=auth)).status == 200
        assert dict(up.seen[0][0].headers)[b"authorization"] == f"Bearer {tok}".encode()

    async with (
        serve_upstream(recording_mcp_upstream) as a,
        serve_upstream(recording_mcp_upstream) as b,
    ):
        config = mcp_config(
            {
                "name": "a",
                "mcp": {"host": f"http://127.0.0.1:{a.port}/mcp"},
                "policies": {"backendAuth": {"passthrough": {}}},
            },
            {"name": "b", "mcp": {"host": f"http://127.0.0.1:{b.port}/mcp"}},
        )
        config["binds"][0]["listeners"][0]["routes"][0]["policies"] = {"jwtAuth": jwt_auth()}
        async with run_gateway(config) as (_, port), AsyncExitStack() as stack:
            http = await stack.enter_async_context(
                create_mcp_http_client(headers={"Authorization": f"Bearer {tok}"})
            )
            url = f"http://127.0.0.1:{port}/mcp"
            client = await stack.enter_async_context(
                Client(streamable_http_client(url, http_client=http))
            )
            await client.call_tool("a_who", {})
            await client.call_tool("b_who", {})
        assert all(
            dict(r.headers).get(b"authorization") == f"Bearer {tok}".encode() for r, _ in a.seen
        )
        assert all(b"authorization" not in dict(r.headers) for r, _ in b.seen)
        assert len(a.seen) >= 3 and len(b.seen) >= 3
