"""HTTPS listeners over real sockets: the MCP SDK client over TLS, mTLS and
the client certificate in CEL, SNI, TLS versions, hostile first bytes,
stalled handshakes, the connection cap, workers and drain."""

from __future__ import annotations

import json
import logging
import os
import signal
import ssl
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import h11
import httpx2
import pytest
import trio
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.e2e.support import (
    Upstream,
    free_port,
    proxy_config,
    raw_exchange,
    recording_mcp_upstream,
    run_gateway,
    serve_upstream,
)
from tests.e2e.test_mcp_gateway import ACCEPT, JSON_CT, PEER, mcp_config, stdio
from tests.e2e.test_workers import _two_workers, _wait_for_log
from tests.test_jwt import JWKS
from tests.tls_support import Pki, open_tls_client, tls_request


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def https(config: dict[str, Any], pki: Pki, **tls: Any) -> dict[str, Any]:
    """``config`` with its first bind's listeners HTTPS (a localhost cert)."""
    cert, key = pki.files(pki.issue("localhost", "127.0.0.1"))
    for listener in config["binds"][0]["listeners"]:
        listener["protocol"] = "HTTPS"
        listener["tls"] = {"cert": cert, "key": key, **tls}
    return config


async def recording(req: h11.Request, body: bytes, up: Upstream) -> Any:
    return 200, [(b"content-type", b"text/plain")], b"ok"


def forwarded_proto(up: Upstream) -> list[bytes]:
    return [v for req, _ in up.seen for n, v in req.headers if n == b"x-forwarded-proto"]


# ---------------------------------------------------------------- serving HTTPS


async def test_mcp_sdk_client_over_https(pki: Pki) -> None:
    config = https(mcp_config(stdio("paged", PEER)), pki)
    async with run_gateway(config) as (_, port), AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            httpx2.AsyncClient(verify=pki.client_context(), timeout=30)
        )
        url = f"https://localhost:{port}/mcp"
        client = await stack.enter_async_context(
            Client(streamable_http_client(url, http_client=http))
        )
        page = await client.list_tools()
        assert "echo" in {t.name for t in page.tools}
        result = await client.call_tool("echo", {"message": "over TLS"})
        assert "over TLS" in result.content[0].text  # type: ignore[union-attr]


async def test_https_to_a_host_backend_sets_x_forwarded_proto(pki: Pki) -> None:
    async with serve_upstream(recording) as up:
        config = https(proxy_config(up.port), pki)
        async with run_gateway(config) as (_, port):
            context = pki.client_context()
            context.set_alpn_protocols(["h2", "http/1.1"])
            async with open_tls_client(port, context) as client:
                for _ in range(3):  # keep-alive over one TLS connection
                    resp = await client.request(
                        "GET", "/", headers=[(b"x-forwarded-proto", b"http")], host="localhost"
                    )
                    assert (resp.status, resp.body) == (200, b"ok")
                assert client.stream.selected_alpn_protocol() == "http/1.1"  # type: ignore[attr-defined]
    assert forwarded_proto(up) == [b"https"] * 3
    assert up.requests == 3


async def test_oauth_metadata_names_the_https_origin(pki: Pki) -> None:
    async with serve_upstream(recording_mcp_upstream) as up:
        config = mcp_config({"name": "r", "mcp": {"host": f"http://127.0.0.1:{up.port}/mcp"}})
        route = config["binds"][0]["listeners"][0]["routes"][0]
        route["matches"] = [{"path": {"pathPrefix": "/"}}]
        route["policies"] = {
            "mcpAuthentication": {
                "issuer": "https://idp.example",
                "audiences": ["mcp"],
                "jwks": json.dumps(JWKS),
                "resourceMetadata": {},
            }
        }
        async with run_gateway(https(config, pki)) as (_, port):
            resp = await tls_request(
                port,
                pki.client_context(),
                path="/.well-known/oauth-protected-resource/mcp",
                host=f"localhost:{port}",
            )
            assert resp.status == 200, resp.body
            assert json.loads(resp.body)["resource"] == f"https://localhost:{port}/mcp"


async def test_tls_versions(pki: Pki) -> None:
    async with serve_upstream(recording) as up:
        config = https(proxy_config(up.port), pki, maxTLSVersion="TLS_V1_2")
        async with run_gateway(config) as (_, port):
            async with open_tls_client(port, pki.client_context()) as client:
                assert (await client.request("GET", "/", host="localhost")).status == 200
                assert client.stream.version() == "TLSv1.2"  # type: ignore[attr-defined]
            too_new = pki.client_context()
            too_new.minimum_version = ssl.TLSVersion.TLSv1_3
            with pytest.raises(trio.BrokenResourceError):
                await tls_request(port, too_new)
        config = https(proxy_config(up.port), pki, minTlsVersion="TLS_V1_3")
        async with run_gateway(config) as (_, port):
            too_old = pki.client_context()
            too_old.maximum_version = ssl.TLSVersion.TLSv1_2
            with pytest.raises(trio.BrokenResourceError):
                await tls_request(port, too_old)
            async with open_tls_client(port, pki.client_context()) as client:
                assert (await client.request("GET", "/", host="localhost")).status == 200
                assert client.stream.version() == "TLSv1.3"  # type: ignore[attr-defined]


async def test_listeners_chosen_by_sni(pki: Pki) -> None:
    a_cert, a_key = pki.files(pki.issue("a.example"))
    b_cert, b_key = pki.files(pki.issue("*.b.example"))
    async with serve_upstream(recording) as up:
        config = proxy_config(up.port)
        config["binds"][0]["listeners"] = [
            {
                "name": name,
                "hostname": hostname,
                "protocol": "HTTPS",
                "tls": {"cert": cert, "key": key},
                "routes": [
                    {
                        "name": name,
                        "backends": [{"host": f"127.0.0.1:{up.port}"}],
                        "policies": {"responseHeaderModifier": {"set": {"x-listener": name}}},
                    }
                ],
            }
            for name, hostname, cert, key in (
                ("a", "a.example", a_cert, a_key),
                ("b", "*.b.example", b_cert, b_key),
            )
        ]
        async with run_gateway(config) as (_, port):
            context = pki.client_context()
            for sni, listener in (("a.example", b"a"), ("x.b.example", b"b")):
                resp = await tls_request(port, context, server_hostname=sni)
                assert (resp.status, resp.header(b"x-listener")) == (200, listener)
            # No listener for that name: the handshake is refused.
            with pytest.raises(trio.BrokenResourceError):
                await tls_request(port, context, server_hostname="c.example")
            # The Host names another listener than the certificate did.
            resp = await tls_request(port, context, server_hostname="a.example", host="x.b.example")
            assert resp.status == 421
    assert up.requests == 2


# ---------------------------------------------------------------- mTLS


async def test_mtls_listener_and_the_client_certificate_in_cel(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agentgw.tls")
    clients = Pki(pki.directory)
    alice = clients.issue("alice.example", common_name="alice")
    bob = clients.issue("bob.example", common_name="bob")
    stranger = Pki(pki.directory).issue("alice.example", common_name="alice")
    async with serve_upstream(recording) as up:
        config = https(proxy_config(up.port), pki, root=clients.ca_file)
        route = config["binds"][0]["listeners"][0]["routes"][0]
        route["policies"] = {
            "authorization": {
                "rules": [
                    'source.subjectCn == "alice" && "alice.example" in source.subjectAltNames'
                    ' && source.issuer.contains("O=trustme")'
                    ' && source.certificate.startsWith("-----BEGIN CERTIFICATE-----")'
                ]
            }
        }
        async with run_gateway(config) as (_, port):
            resp = await tls_request(port, pki.client_context(alice))
            assert (resp.status, resp.body) == (200, b"ok")
            resp = await tls_request(port, pki.client_context(bob))
            assert resp.status == 403
            for context in (pki.client_context(), pki.client_context(stranger)):
                # TLS 1.3: the client learns it was refused on its first read.
                with pytest.raises((trio.BrokenResourceError, h11.RemoteProtocolError)):
                    await tls_request(port, context)
            resp = await tls_request(port, pki.client_context(alice))
            assert resp.status == 200
    assert up.requests == 2
    debug = [r.getMessage() for r in caplog.records if r.name == "agentgw.tls"]
    assert any("peer did not return a certificate" in m for m in debug), debug
    assert any("certificate verify failed" in m for m in debug), debug


# ---------------------------------------------------------------- hostile clients


async def test_plaintext_and_garbage_on_the_tls_port(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agentgw.tls")
    async with serve_upstream(recording) as up:
        async with run_gateway(https(proxy_config(up.port), pki)) as (_, port):
            answer = await raw_exchange(port, b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
            assert answer.endswith(b"\r\n\r\nplain HTTP request to an HTTPS port\n")
            for garbage in (b"\x00" * 64, b"\x16\x03\x01\x00\x05hello" + os.urandom(200)):
                answer = await raw_exchange(port, garbage)
                assert b"HTTP" not in answer
            assert (await tls_request(port, pki.client_context())).status == 200
    assert up.requests == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "agentgw.tls"]
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "agentgw.tls")
    assert any("plain HTTP" in m for m in messages), messages
    assert sum("handshake from" in m and "failed" in m for m in messages) == 2, messages


async def test_stalled_handshakes_do_not_block_others(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agentgw.tls")
    async with serve_upstream(recording) as up:
        config = https(proxy_config(up.port), pki)
        config["frontendPolicies"] = {"tls": {"handshakeTimeout": "6s"}}
        async with run_gateway(config) as (_, port), trio.open_nursery() as nursery:
            stalled: list[trio.SocketStream] = []
            for i in range(200):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                if i % 2:  # half of a ClientHello, then nothing
                    await stream.send_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
                stalled.append(stream)
            # A normal client is served at once meanwhile (well before the
            # stalled handshakes time out).
            with trio.fail_after(5):
                for _ in range(3):
                    assert (await tls_request(port, pki.client_context())).status == 200
            closed = 0

            async def wait_closed(stream: trio.SocketStream) -> None:
                nonlocal closed
                try:
                    while await stream.receive_some(4096):
                        pass
                except trio.BrokenResourceError:
                    pass
                closed += 1
                await stream.aclose()

            with trio.fail_after(20):
                async with trio.open_nursery() as waiting:
                    for stream in stalled:
                        waiting.start_soon(wait_closed, stream)
            assert closed == 200
            nursery.cancel_scope.cancel()
    timed_out = [r for r in caplog.records if "timed out" in r.getMessage()]
    assert len(timed_out) == 200
    assert up.requests == 3


async def test_handshakes_count_against_the_connection_cap(pki: Pki) -> None:
    async with serve_upstream(recording) as up:
        config = https(proxy_config(up.port, http={"maxConnections": 3}), pki)
        config["frontendPolicies"] = {"tls": {"handshakeTimeout": "1s"}}
        async with run_gateway(config) as (gw, port):
            stalled = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
            with trio.fail_after(5):
                while gw._slots.value:
                    await trio.sleep(0.01)
            # The cap is full of handshakes; this client waits for them to time out.
            with trio.fail_after(10):
                resp = await tls_request(port, pki.client_context())
            assert resp.status == 200
            for stream in stalled:
                assert await stream.receive_some(10) == b""  # closed at the timeout
                await stream.aclose()


# ---------------------------------------------------------------- workers and drain


async def _mcp_call(port: int, context: ssl.SSLContext, message: dict[str, Any], sid: str) -> Any:
    headers = [ACCEPT, JSON_CT]
    if sid:
        headers.append((b"mcp-session-id", sid.encode()))
    return await tls_request(
        port, context, "POST", "/mcp", headers=headers, body=json.dumps(message).encode()
    )


async def test_workers_relay_the_client_certificate(tmp_path: Path, pki: Pki) -> None:
    clients = Pki(pki.directory)
    alice = pki.client_context(clients.issue("alice.example", common_name="alice"))
    bob = pki.client_context(clients.issue("bob.example", common_name="bob"))
    config = https(mcp_config(stdio("paged", PEER)), pki, root=clients.ca_file)
    config["binds"][0]["port"] = await free_port()
    route = config["binds"][0]["listeners"][0]["routes"][0]
    # HTTP authorization runs in the worker that owns the session, on what
    # the relaying worker says about the client's certificate.
    route["policies"] = {"authorization": {"rules": ['source.subjectCn == "alice"']}}
    port = config["binds"][0]["port"]
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {}},
    }
    async with _two_workers(tmp_path, config) as proc:
        sids = []
        for _ in range(3):
            resp = await _mcp_call(port, alice, initialize, "")
            assert resp.status == 200, resp.body
            sids.append(resp.header(b"mcp-session-id").decode())
        for round_no in range(8):
            for i, sid in enumerate(sids):
                message = {
                    "jsonrpc": "2.0",
                    "id": 7,
                    "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"message": f"m{i}-{round_no}"}},
                }
                resp = await _mcp_call(port, alice, message, sid)
                assert resp.status == 200, resp.body
                assert f"paged echo: m{i}-{round_no}".encode() in resp.body
                assert (await _mcp_call(port, bob, message, sid)).status == 403
        await _wait_for_log(proc, b"worker.owner=")
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            assert await proc.wait() == 0


async def test_drain_finishes_an_https_request(tmp_path: Path, pki: Pki) -> None:
    release = trio.Event()

    async def slow(req: h11.Request, body: bytes, up: Upstream) -> Any:
        await release.wait()
        return 200, [], b"finished"

    async with serve_upstream(slow) as up:
        config = https(proxy_config(up.port), pki)
        config["config"] = {"connectionTerminationDeadline": "10s"}
        async with run_gateway(config) as (gw, port), trio.open_nursery() as nursery:
            answers: list[Any] = []

            async def call() -> None:
                answers.append(await tls_request(port, pki.client_context()))

            nursery.start_soon(call)
            with trio.fail_after(5):
                while not up.requests and not up.open_streams:
                    await trio.sleep(0.01)
            gw.shutdown()
            await trio.sleep(0.2)
            # Listeners are closed: no new TLS connection.
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", port)
            release.set()
    assert [(a.status, a.body) for a in answers] == [(200, b"finished")]


async def test_the_https_example_runs(tmp_path: Path) -> None:
    await trio.run_process([sys.executable, "-m", "trustme", "-d", str(tmp_path), "-q"])
    example = Path(__file__).parents[2] / "examples" / "https-mcp.yaml"
    config = yaml.safe_load(example.read_text().replace("examples/tls", str(tmp_path)))
    config["binds"][0]["port"] = 0
    target = config["binds"][0]["listeners"][0]["routes"][0]["backends"][0]["mcp"]["targets"][0]
    target["stdio"]["cmd"] = sys.executable
    context = ssl.create_default_context(cafile=str(tmp_path / "client.pem"))
    async with run_gateway(config) as (_, port):
        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {}},
        }
        resp = await _mcp_call(port, context, initialize, "")
        assert resp.status == 200, resp.body
        assert b'"serverInfo"' in resp.body
