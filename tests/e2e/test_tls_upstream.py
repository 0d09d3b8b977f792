"""TLS to upstreams over real sockets, against TLS servers written here:
host backends, Streamable HTTP, legacy SSE and WebSocket MCP targets, a
remote JWKS; trust from backendTLS.root and from SSL_CERT_FILE; every
verification failure fails closed before a request byte is sent."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio_websocket

from tests.e2e.support import (
    Upstream,
    echo_handler,
    gateway_subprocess,
    proxy_config,
    recording_mcp_upstream,
    request,
    run_gateway,
    serve_upstream,
)
from tests.e2e.test_mcp_gateway import ACCEPT, JSON_CT
from tests.e2e.test_security import (
    IdentityProvider,
    OAuthServer,
    fresh,
    jwt_auth,
    mcp_auth_config,
    secured,
)
from tests.e2e.test_upstream_mcp import serve_mcp_websocket
from tests.test_jwt import AUDIENCE, token
from tests.tls_support import Pki

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
TOOLS_LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
def stranger(tmp_path: Path) -> Pki:
    """A CA nobody trusts."""
    return Pki(tmp_path)


def mcp_route_config(target: dict[str, Any], **route_policies: Any) -> dict[str, Any]:
    route: dict[str, Any] = {
        "name": "mcp",
        "matches": [{"path": {"pathPrefix": "/mcp"}}],
        "backends": [{"mcp": {"targets": [target]}}],
    }
    if route_policies:
        route["policies"] = route_policies
    return {
        "binds": [
            {
                "port": 0,
                "address": "127.0.0.1",
                "listeners": [{"name": "mcp", "routes": [route]}],
            }
        ]
    }


async def mcp_post(port: int, message: dict[str, Any], sid: bytes | None = None) -> Any:
    headers = [ACCEPT, JSON_CT]
    if sid is not None:
        headers.append((b"mcp-session-id", sid))
    return await request(port, "POST", "/mcp", headers=headers, body=json.dumps(message).encode())


async def initialize_and_list(port: int) -> list[str]:
    """The tool names the gateway lists after an initialize."""
    init = await mcp_post(port, INITIALIZE)
    assert init.status == 200, init.body
    assert "result" in json.loads(init.body), init.body
    sid = init.header(b"mcp-session-id")
    listed = await mcp_post(port, TOOLS_LIST, sid)
    assert listed.status == 200, listed.body
    return [t["name"] for t in json.loads(listed.body)["result"]["tools"]]


def tls_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "TLS handshake failed" in r.getMessage()]


# ---------------------------------------------------------------- MCP targets


async def test_https_streamable_target_trusted_through_backend_tls_root(pki: Pki) -> None:
    context = pki.server_context(pki.issue("localhost"))
    async with serve_upstream(recording_mcp_upstream, context) as up:
        target = {
            "name": "secure",
            "mcp": {"host": f"https://localhost:{up.port}/mcp"},
            "policies": {"backendTLS": {"root": pki.ca_file}},
        }
        async with run_gateway(mcp_route_config(target)) as (_, port):
            assert await initialize_and_list(port) == ["who"]
    assert up.requests >= 2
    assert all(req.target == b"/mcp" for req, _ in up.seen)


async def test_https_streamable_target_trusted_through_ssl_cert_file(
    pki: Pki, tmp_path: Path
) -> None:
    """The gateway as a process with SSL_CERT_FILE naming the test CA and
    no backendTLS: the system trust store is OpenSSL's, env included."""
    context = pki.server_context(pki.issue("localhost"))
    async with serve_upstream(recording_mcp_upstream, context) as up:
        target = {"name": "secure", "mcp": {"host": f"https://localhost:{up.port}/mcp"}}
        config = tmp_path / "gw.json"
        config.write_text(json.dumps(mcp_route_config(target)))
        env = {**os.environ, "SSL_CERT_FILE": pki.ca_file}
        async with gateway_subprocess("-f", str(config), env=env) as (_, ports):
            assert await initialize_and_list(ports[0]) == ["who"]
    assert up.requests >= 2


async def test_https_target_without_the_ca_fails_closed(pki: Pki, tmp_path: Path) -> None:
    """The same process without SSL_CERT_FILE: the test CA is not trusted."""
    context = pki.server_context(pki.issue("localhost"))
    async with serve_upstream(recording_mcp_upstream, context) as up:
        target = {"name": "secure", "mcp": {"host": f"https://localhost:{up.port}/mcp"}}
        config = tmp_path / "gw.json"
        config.write_text(json.dumps(mcp_route_config(target)))
        env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
        async with gateway_subprocess("-f", str(config), env=env) as (proc, ports):
            init = await mcp_post(ports[0], INITIALIZE)
            error = json.loads(init.body)["error"]
            assert "secure" in error["message"]
            assert "certificate" not in error["message"]  # the reason is for the log
            await trio.sleep(0.2)
            log = bytes(proc.stderr_data).decode()  # type: ignore[attr-defined]
            assert "certificate verify failed: unable to get local issuer certificate" in log
    assert up.requests == 0 and up.bytes_received == 0


class LegacySseServer:
    """The 2024-11-05 transport: a GET event stream that names the POST
    endpoint, and every answer on that stream."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[bytes](100)

    async def handle(self, req: h11.Request, body: bytes, up: Upstream) -> Any:
        if req.method == b"GET":
            return 200, [(b"content-type", b"text/event-stream")], self.stream()
        message = json.loads(body)
        if "id" in message:
            answer = json.loads(
                (await recording_mcp_upstream(req, body, up))[2]
            )  # the same answers as the Streamable one
            self.send.send_nowait(b"event: message\ndata: " + json.dumps(answer).encode() + b"\n\n")
        return 202, [], b""

    async def stream(self) -> AsyncIterator[bytes]:
        yield b"event: endpoint\ndata: /messages?session=1\n\n"
        async for event in self.receive:
            yield event


async def test_https_legacy_sse_target(pki: Pki) -> None:
    server = LegacySseServer()
    context = pki.server_context(pki.issue("localhost"))
    async with serve_upstream(server.handle, context) as up:
        target = {"name": "legacy", "sse": {"host": f"https://localhost:{up.port}/sse"}}
        # On the route: the route's backendTLS applies to its MCP targets.
        config = mcp_route_config(target, backendTLS={"root": pki.ca_file})
        async with run_gateway(config) as (_, port):
            assert await initialize_and_list(port) == ["who"]
    posts = [req.target for req, _ in up.seen if req.method == b"POST"]
    assert posts and all(t == b"/messages?session=1" for t in posts)


async def test_wss_target_with_backend_tls_root(pki: Pki) -> None:
    seen: list[Any] = []
    context = pki.server_context(pki.issue("localhost"))
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            trio_websocket.serve_websocket,
            lambda r: serve_mcp_websocket(seen, r),
            "127.0.0.1",
            0,
            context,
        )
        ws_port = server.port
        target = {
            "name": "ws",
            "websocket": {"host": f"wss://localhost:{ws_port}/"},
            "policies": {"backendTLS": {"root": pki.ca_file}},
        }
        async with run_gateway(mcp_route_config(target)) as (_, port):
            init = await mcp_post(port, INITIALIZE)
            assert "result" in json.loads(init.body), init.body
        nursery.cancel_scope.cancel()
    assert seen


# ---------------------------------------------------------------- fail closed


def _failing_server(kind: str, pki: Pki, stranger: Pki) -> tuple[Any, str]:
    """A server context that the gateway must refuse, and why (in words)."""
    if kind == "untrusted":
        return stranger.server_context(stranger.issue("localhost")), (
            "certificate verify failed: unable to get local issuer certificate"
        )
    if kind == "wrong-host":
        return pki.server_context(pki.issue("other.example")), (
            "certificate verify failed: Hostname mismatch"
        )
    return pki.server_context(pki.issue("localhost", expired=True)), (
        "certificate verify failed: certificate has expired"
    )


@pytest.mark.parametrize("kind", ["untrusted", "wrong-host", "expired"])
async def test_host_backend_fails_closed(
    kind: str, pki: Pki, stranger: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    context, why = _failing_server(kind, pki, stranger)
    async with (
        serve_upstream(echo_handler, context) as bad,
        serve_upstream(echo_handler) as healthy,
    ):
        config = proxy_config(healthy.port)
        routes = config["binds"][0]["listeners"][0]["routes"]
        routes.insert(
            0,
            {
                "name": "secure",
                "matches": [{"path": {"pathPrefix": "/secure"}}],
                "backends": [{"host": f"localhost:{bad.port}"}],
                "policies": {"backendTLS": {"root": pki.ca_file}},
            },
        )
        async with run_gateway(config) as (_, port):
            resp = await request(port, "POST", "/secure", body=b"secret")
            assert resp.status == 503
            assert resp.body == b"upstream unavailable\n"
            # The gateway goes on serving.
            assert (await request(port, "POST", "/", body=b"hi")).body == b"echo:hi"
    assert bad.requests == 0 and bad.bytes_received == 0
    failures = tls_failures(caplog)
    assert failures and why in failures[0], failures
    assert f"localhost:{bad.port}" in failures[0]


@pytest.mark.parametrize("kind", ["untrusted", "wrong-host", "expired"])
async def test_mcp_target_fails_closed(
    kind: str, pki: Pki, stranger: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    context, why = _failing_server(kind, pki, stranger)
    async with (
        serve_upstream(recording_mcp_upstream, context) as bad,
        serve_upstream(recording_mcp_upstream) as healthy,
    ):
        targets = [
            {
                "name": "secure",
                "mcp": {"host": f"https://localhost:{bad.port}/mcp"},
                "policies": {"backendTLS": {"root": pki.ca_file}},
            },
            {"name": "plain", "mcp": {"host": f"http://127.0.0.1:{healthy.port}/mcp"}},
        ]
        config = mcp_route_config(targets[0])
        backend = config["binds"][0]["listeners"][0]["routes"][0]["backends"][0]
        backend["mcp"]["targets"] = targets
        backend["mcp"]["failureMode"] = "failOpen"
        async with run_gateway(config) as (_, port):
            # failOpen: the session starts without the target that failed.
            tools = await initialize_and_list(port)
            assert tools == ["plain_who"]
            backend["mcp"]["failureMode"] = "failClosed"
        async with run_gateway(config) as (_, port):
            init = await mcp_post(port, INITIALIZE)
            error = json.loads(init.body)["error"]
            assert "target secure" in error["message"]
            assert "certificate" not in error["message"]
    assert bad.requests == 0 and bad.bytes_received == 0
    assert healthy.requests >= 2
    failures = tls_failures(caplog)
    assert failures and all(why in f for f in failures), failures


async def test_no_fallback_to_plaintext(pki: Pki) -> None:
    """A plain HTTP server behind a backendTLS: the handshake fails, and
    nothing is sent in the clear."""
    async with serve_upstream(echo_handler) as plain:
        config = proxy_config(plain.port)
        route = config["binds"][0]["listeners"][0]["routes"][0]
        route["policies"] = {"backendTLS": {"root": pki.ca_file}}
        async with run_gateway(config) as (_, port):
            resp = await request(port, "POST", "/", body=b"secret")
            assert resp.status == 503
    assert plain.requests == 0
    assert all(b"secret" not in body for _, body in plain.seen)


async def test_stalled_upstream_handshake_times_out() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, silent, 0)
        up_port = listeners[0].socket.getsockname()[1]
        config = proxy_config(up_port, backend={"connectTimeout": "0.5s"})
        route = config["binds"][0]["listeners"][0]["routes"][0]
        route["policies"] = {"backendTLS": {}}
        async with run_gateway(config) as (_, port):
            with trio.fail_after(10):
                resp = await request(port, "GET", "/")
            assert resp.status == 504
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- backendTLS fields


async def test_mtls_to_a_backend_that_requires_a_client_certificate(pki: Pki) -> None:
    client_ca = Pki(pki.directory)
    context = pki.server_context(pki.issue("localhost"), client_ca=client_ca)

    async def who(req: h11.Request, body: bytes, up: Upstream) -> Any:
        return 200, [], b"hello"

    cert, key = client_ca.files(client_ca.issue("gateway.example", common_name="gateway"))
    async with serve_upstream(who, context) as up:
        for with_cert in (True, False):
            tls: dict[str, Any] = {"root": pki.ca_file}
            if with_cert:
                tls |= {"cert": cert, "key": key}
            config = proxy_config(up.port)
            backend = config["binds"][0]["listeners"][0]["routes"][0]["backends"][0]
            backend["host"] = f"localhost:{up.port}"
            backend["policies"] = {"backendTLS": tls}
            async with run_gateway(config) as (_, port):
                resp = await request(port, "GET", "/")
                if with_cert:
                    assert (resp.status, resp.body) == (200, b"hello")
                else:
                    assert resp.status in (502, 503)
    # Only the request with a client certificate was read by the upstream.
    assert up.requests == 1


async def test_hostname_subject_alt_names_and_insecure(pki: Pki, stranger: Pki) -> None:
    named = pki.server_context(pki.issue("backend.internal"))
    untrusted = stranger.server_context(stranger.issue("localhost"))
    async with (
        serve_upstream(echo_handler, named) as up,
        serve_upstream(echo_handler, untrusted) as other,
    ):
        cases = [
            (up.port, {"root": pki.ca_file, "hostname": "backend.internal"}, 200),
            (up.port, {"root": pki.ca_file, "subjectAltNames": ["backend.internal"]}, 200),
            (up.port, {"root": pki.ca_file, "subjectAltNames": ["elsewhere"]}, 503),
            (up.port, {"root": pki.ca_file, "insecureHost": True}, 200),
            (up.port, {"root": pki.ca_file}, 503),  # localhost is not backend.internal
            (other.port, {"root": pki.ca_file, "insecureHost": True}, 503),  # still untrusted
            (other.port, {"insecure": True}, 200),
        ]
        for upstream_port, tls, status in cases:
            config = proxy_config(upstream_port)
            route = config["binds"][0]["listeners"][0]["routes"][0]
            route["backends"] = [{"host": f"localhost:{upstream_port}"}]
            route["policies"] = {"backendTLS": tls}
            async with run_gateway(config) as (_, port):
                resp = await request(port, "POST", "/", body=b"x")
                assert resp.status == status, (tls, resp.body)


async def test_tls_connections_are_pooled_per_tls_settings(pki: Pki) -> None:
    context = pki.server_context(pki.issue("localhost", "backend.internal"))
    async with serve_upstream(echo_handler, context) as up:
        config = proxy_config(up.port)
        listener = config["binds"][0]["listeners"][0]
        listener["routes"] = [
            {
                "name": name,
                "matches": [{"path": {"pathPrefix": f"/{name}"}}],
                "backends": [{"host": f"localhost:{up.port}"}],
                "policies": {"backendTLS": tls},
            }
            for name, tls in (
                ("a", {"root": pki.ca_file}),
                ("b", {"root": pki.ca_file, "hostname": "backend.internal"}),
            )
        ]
        async with run_gateway(config) as (gw, port):
            for _ in range(5):
                assert (await request(port, "GET", "/a")).status == 200
            assert up.connections == 1  # reused
            for _ in range(5):
                assert (await request(port, "GET", "/b")).status == 200
            assert up.connections == 2  # same host:port, other TLS settings
            assert gw.pool.statistics().reused == 8


async def test_pooled_tls_connection_closed_by_the_upstream_is_not_reused(pki: Pki) -> None:
    """The upstream answers with keep-alive, then closes (close_notify and
    FIN) while the connection is idle: the next request takes a new one."""
    context = pki.server_context(pki.issue("localhost"))
    connections = 0

    async def one_answer(stream: trio.SSLStream[trio.SocketStream]) -> None:
        nonlocal connections
        connections += 1
        conn = h11.Connection(h11.SERVER)
        while (event := conn.next_event()) is h11.NEED_DATA or isinstance(event, h11.Request):
            if isinstance(event, h11.Request):
                continue
            conn.receive_data(await stream.receive_some(65536))
        body = b"ok"
        response = h11.Response(status_code=200, headers=[(b"content-length", b"2")])
        await stream.send_all(conn.send(response) + conn.send(h11.Data(data=body)))
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        await trio.sleep(0.1)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        serve = partial(trio.serve_ssl_over_tcp, one_answer, 0, context, host="127.0.0.1")
        listeners = await nursery.start(serve)
        up_port = listeners[0].transport_listener.socket.getsockname()[1]
        config = proxy_config(up_port)
        route = config["binds"][0]["listeners"][0]["routes"][0]
        route["backends"] = [{"host": f"localhost:{up_port}"}]
        route["policies"] = {"backendTLS": {"root": pki.ca_file}}
        async with run_gateway(config) as (_, port):
            for _ in range(3):
                resp = await request(port, "GET", "/")
                assert (resp.status, resp.body) == (200, b"ok")
                await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert connections == 3


# ---------------------------------------------------------------- remote JWKS


async def test_remote_jwks_over_https(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", pki.ca_file)
    idp = IdentityProvider()
    context = pki.server_context(pki.issue("localhost"))
    async with (
        serve_upstream(idp.handle, context) as idp_server,
        serve_upstream(echo_handler) as up,
    ):
        jwks = {"url": f"https://localhost:{idp_server.port}/certs"}
        async with run_gateway(secured(up.port, jwtAuth=jwt_auth("strict", jwks))) as (_, port):
            valid = [(b"authorization", b"Bearer " + token(fresh(), kid="k1").encode())]
            with trio.fail_after(10):
                while (await request(port, "GET", "/", headers=valid)).status != 200:
                    await trio.sleep(0.1)
            forged = [(b"authorization", b"Bearer " + token(fresh(), kid="nope").encode())]
            assert (await request(port, "GET", "/", headers=forged)).status == 401
    assert idp.hits >= 1


async def test_remote_jwks_failing_tls_fails_closed_and_keeps_retrying(
    pki: Pki, stranger: Pki, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", pki.ca_file)
    monkeypatch.setattr("agentgw.upstream.jwks.RETRY_FIRST", 0.3)
    idp = IdentityProvider()
    # Served first with a certificate nobody trusts; later with a good one.
    context = stranger.server_context(stranger.issue("localhost"))
    async with (
        serve_upstream(idp.handle, context) as idp_server,
        serve_upstream(echo_handler) as up,
    ):
        jwks = {"url": f"https://localhost:{idp_server.port}/certs"}
        async with run_gateway(secured(up.port, jwtAuth=jwt_auth("strict", jwks))) as (_, port):
            valid = [(b"authorization", b"Bearer " + token(fresh(), kid="k1").encode())]
            await trio.sleep(0.5)
            assert (await request(port, "GET", "/", headers=valid)).status == 401
            assert idp.hits == 0
            assert any(
                "JWKS" in r.getMessage()
                and "unable to get local issuer certificate" in r.getMessage()
                for r in caplog.records
            ), [r.getMessage() for r in caplog.records]
            good = pki.issue("localhost")
            good.configure_cert(context)  # new handshakes get the trusted certificate
            with trio.fail_after(15):
                while (await request(port, "GET", "/", headers=valid)).status != 200:
                    await trio.sleep(0.2)
    assert idp.hits >= 1
    assert up.requests >= 1


# ---------------------------------------------------------------- the identity provider


async def test_mcp_authentication_with_an_https_identity_provider(
    pki: Pki, stranger: Pki, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Keycloak behind https: its metadata, the registration proxy and the
    JWKS derived from the issuer all go over TLS; an IdP whose certificate
    fails is "metadata unavailable" and its tokens are refused."""
    monkeypatch.setenv("SSL_CERT_FILE", pki.ca_file)
    for trusted in (True, False):
        idp = OAuthServer()
        context = (pki if trusted else stranger).server_context(
            (pki if trusted else stranger).issue("localhost")
        )
        async with serve_upstream(idp.handle, context) as idp_server:
            idp.base = f"https://localhost:{idp_server.port}"
            config = mcp_auth_config(idp.base, provider={"keycloak": {}})
            async with run_gateway(config) as (_, port):
                meta = await request(port, "GET", "/.well-known/oauth-authorization-server/mcp")
                registration = await request(
                    port,
                    "POST",
                    "/.well-known/oauth-authorization-server/mcp/client-registration",
                    headers=[JSON_CT],
                    body=b'{"client_name":"browser"}',
                )
                now = time.time()
                claims = {"iss": idp.base, "aud": AUDIENCE, "sub": "a", "iat": now, "exp": now + 60}
                bearer = (b"authorization", b"Bearer " + token(claims, kid="idp").encode())
                with trio.fail_after(10):
                    while True:
                        call = await mcp_post_with(port, INITIALIZE, [bearer])
                        if call.status != 401 or not trusted:
                            break
                        await trio.sleep(0.1)
            if trusted:
                assert meta.status == 200
                assert json.loads(meta.body)["token_endpoint"] == f"{idp.base}/token"
                assert registration.status == 201 and idp.registrations == 1
                assert call.status == 200, call.body
            else:
                assert meta.status == 502
                assert meta.body == b"authorization server metadata unavailable\n"
                assert registration.status == 502 and idp.registrations == 0
                assert call.status == 401
                assert tls_failures(caplog)
                assert idp_server.requests == 0 and idp_server.bytes_received == 0


async def mcp_post_with(port: int, message: dict[str, Any], headers: list[Any]) -> Any:
    return await request(
        port, "POST", "/mcp", headers=[ACCEPT, JSON_CT, *headers], body=json.dumps(message).encode()
    )
