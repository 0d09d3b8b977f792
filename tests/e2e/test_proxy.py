"""The reverse proxy over real loopback sockets: streaming, pooling, faults."""

from __future__ import annotations

import logging
from typing import Any

import h11
import pytest
import trio
import trio.lowlevel
import trio_websocket

from tests.e2e.support import (
    Upstream,
    echo_handler,
    open_client,
    proxy_config,
    raw_exchange,
    request,
    run_gateway,
    serve_raw,
    serve_upstream,
)


async def test_keep_alive_reuse_on_both_sides() -> None:
    async with serve_upstream(echo_handler) as up, run_gateway(proxy_config(up.port)) as (gw, port):
        async with open_client(port) as client:
            for i in range(5):
                resp = await client.request("POST", "/x", body=f"hi{i}".encode())
                assert resp.status == 200
                assert resp.body == f"echo:hi{i}".encode()
        assert up.requests == 5
        assert up.connections == 1
        assert gw.pool.statistics().reused == 4


async def test_hop_by_hop_stripped_authorization_passes() -> None:
    async with serve_upstream(echo_handler) as up, run_gateway(proxy_config(up.port)) as (_, port):
        resp = await request(
            port,
            "GET",
            "/h?q=1",
            headers=[
                (b"authorization", b"Bearer secret-token"),
                (b"x-custom", b"kept"),
                (b"connection", b"keep-alive, x-drop-me"),
                (b"x-drop-me", b"1"),
                (b"keep-alive", b"timeout=5"),
                (b"te", b"trailers"),
                (b"proxy-authorization", b"Basic abc"),
                (b"x-forwarded-for", b"10.0.0.1"),
            ],
        )
        assert resp.status == 200
        seen, _ = up.seen[0]
        headers = dict(seen.headers)
        assert seen.target == b"/h?q=1"
        assert headers[b"authorization"] == b"Bearer secret-token"
        assert headers[b"x-custom"] == b"kept"
        for name in (b"x-drop-me", b"keep-alive", b"te", b"proxy-authorization"):
            assert name not in headers
        assert headers.get(b"connection", b"") != b"keep-alive, x-drop-me"
        assert headers[b"x-forwarded-for"] == b"10.0.0.1, 127.0.0.1"
        assert headers[b"x-forwarded-proto"] == b"http"


async def test_chunked_request_body_streams_through() -> None:
    async with serve_upstream(echo_handler) as up, run_gateway(proxy_config(up.port)) as (_, port):
        async with open_client(port) as client:
            await client.send(
                h11.Request(
                    method="POST",
                    target="/",
                    headers=[(b"host", b"a"), (b"transfer-encoding", b"chunked")],
                )
            )
            for part in (b"one,", b"two,", b"three"):
                await client.send(h11.Data(data=part))
            await client.send(h11.EndOfMessage())
            resp = await client.response()
        assert resp.body == b"echo:one,two,three"
        seen, _ = up.seen[0]
        assert dict(seen.headers)[b"transfer-encoding"] == b"chunked"
        assert b"content-length" not in dict(seen.headers)


async def test_expect_100_continue() -> None:
    async with serve_upstream(echo_handler) as up, run_gateway(proxy_config(up.port)) as (_, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        with trio.fail_after(5):
            first = await stream.receive_some(1000)
        assert first.startswith(b"HTTP/1.1 100 ")
        await stream.send_all(b"hello")
        data = b""
        with trio.fail_after(5):
            while b"echo:hello" not in data:
                data += await stream.receive_some(1000)
        assert b"200 OK" in data or b"HTTP/1.1 200" in data
        await stream.aclose()


async def test_head_request() -> None:
    async def handler(req: h11.Request, body: bytes, up: Upstream) -> Any:
        return 200, [(b"content-length", b"42")], b""

    async with serve_upstream(handler) as up, run_gateway(proxy_config(up.port)) as (_, port):
        async with open_client(port) as client:
            resp = await client.request("HEAD", "/")
            assert resp.status == 200 and resp.body == b""
            assert resp.header(b"content-length") == b"42"
            again = await client.request("HEAD", "/")
            assert again.status == 200


async def test_sse_events_arrive_one_by_one() -> None:
    received = [trio.Event() for _ in range(5)]

    async def events() -> Any:
        for i in range(5):
            yield f"data: event {i}\n\n".encode()
            with trio.fail_after(2):  # the client must have it before the next is sent
                await received[i].wait()
            await trio.sleep(0.1)

    async def handler(req: h11.Request, body: bytes, up: Upstream) -> Any:
        return 200, [(b"content-type", b"text/event-stream")], events()

    async with serve_upstream(handler) as up, run_gateway(proxy_config(up.port)) as (_, port):
        async with open_client(port) as client:
            await client.send(h11.Request(method="GET", target="/sse", headers=[(b"host", b"a")]))
            await client.send(h11.EndOfMessage())
            response = await client.next_event()
            assert response.status_code == 200
            buf = b""
            for i in range(5):
                while f"event {i}".encode() not in buf:
                    ev = await client.next_event()
                    assert isinstance(ev, h11.Data)
                    buf += ev.data
                received[i].set()
            assert isinstance(await client.next_event(), h11.EndOfMessage)


async def test_client_disconnect_closes_upstream_quickly() -> None:
    upstream_closed_at: list[float] = []
    first_event_sent = trio.Event()

    async def upstream(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n7\r\ndata: 1\r\n"
        )
        first_event_sent.set()
        while await stream.receive_some(65536):
            pass
        upstream_closed_at.append(trio.current_time())

    async with serve_raw(upstream) as up_port, run_gateway(proxy_config(up_port)) as (gw, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /sse HTTP/1.1\r\nHost: a\r\n\r\n")
        await first_event_sent.wait()
        await stream.receive_some(65536)
        await trio.sleep(0.2)
        closed_at = trio.current_time()
        await stream.aclose()
        with trio.fail_after(2):
            while not upstream_closed_at:
                await trio.sleep(0.005)
        assert upstream_closed_at[0] - closed_at < 0.1
        assert gw.pool.statistics().idle == 0


async def test_upstream_refused_is_503(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agentgw.access")

    async def nothing(stream: trio.SocketStream) -> None:
        pass

    async with serve_raw(nothing) as closed_port:
        pass  # the port is free again now
    async with run_gateway(proxy_config(closed_port)) as (_, port):
        resp = await request(port, "GET", "/")
        assert resp.status == 503
        assert resp.body == b"upstream unavailable\n"  # no address in the body
    (line,) = [r.getMessage() for r in caplog.records if r.name == "agentgw.access"]
    assert f"127.0.0.1:{closed_port}" in line and "refused" in line


async def test_upstream_garbage_is_502() -> None:
    async def garbage(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"SPDY/9 what\r\n\r\n")

    async with serve_raw(garbage) as up_port, run_gateway(proxy_config(up_port)) as (_, port):
        resp = await request(port, "GET", "/")
        assert resp.status == 502
        assert b"protocol error" in resp.body


async def test_upstream_reset_is_502() -> None:
    async def reset(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        stream.socket.setsockopt(
            trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )

    async with serve_raw(reset) as up_port, run_gateway(proxy_config(up_port)) as (_, port):
        resp = await request(port, "GET", "/")
        assert resp.status == 502


async def test_upstream_timeout_is_504() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await trio.sleep(10)

    config = proxy_config(0, http={"upstreamResponseTimeout": "300ms"})
    async with serve_raw(silent) as up_port:
        config["binds"][0]["listeners"][0]["routes"][0]["backends"][0]["host"] = (
            f"127.0.0.1:{up_port}"
        )
        async with run_gateway(config) as (_, port):
            with trio.fail_after(3):
                resp = await request(port, "GET", "/")
            assert resp.status == 504


async def test_route_timeout_policy_is_504() -> None:
    async def slow(req: h11.Request, body: bytes, up: Upstream) -> Any:
        await trio.sleep(2)
        return 200, [], b"late"

    async with serve_upstream(slow) as up:
        config = proxy_config(up.port)
        route = config["binds"][0]["listeners"][0]["routes"][0]
        route["policies"] = {"timeout": {"requestTimeout": "200ms"}}
        async with run_gateway(config) as (_, port):
            with trio.fail_after(3):
                resp = await request(port, "GET", "/")
            assert resp.status == 504


async def test_upstream_truncated_body_aborts_client() -> None:
    async def truncate(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly ten b")

    async with serve_raw(truncate) as up_port, run_gateway(proxy_config(up_port)) as (gw, port):
        async with open_client(port) as client:
            with pytest.raises(h11.RemoteProtocolError):
                await client.request("GET", "/")
        assert gw.pool.statistics().idle == 0


async def test_pooled_connection_closed_while_idle_is_retried_once() -> None:
    count = {"requests": 0}

    async def close_after_each(stream: trio.SocketStream) -> None:
        # Answers one request with keep-alive framing, then closes anyway.
        data = await stream.receive_some(65536)
        if data:
            count["requests"] += 1
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    async with (
        serve_raw(close_after_each) as up_port,
        run_gateway(proxy_config(up_port)) as (
            gw,
            port,
        ),
    ):
        for _ in range(3):
            resp = await request(port, "POST", "/", body=b"call")
            assert resp.status == 200
            await trio.sleep(0.05)
        assert count["requests"] == 3  # each call ran exactly once
        assert gw.pool.statistics().opened == 3


async def test_websocket_echo_through_proxy() -> None:
    async def ws_echo(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except trio_websocket.ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_websocket.serve_websocket, ws_echo, "127.0.0.1", 0, None)
        up_port = server.port
        async with run_gateway(proxy_config(up_port)) as (_, port):
            async with trio_websocket.open_websocket("127.0.0.1", port, "/ws", use_ssl=False) as ws:
                for text in ("hello", "world" * 1000):
                    await ws.send_message(text)
                    assert await ws.get_message() == text
                await ws.send_message(b"\x00\x01binary")
                assert await ws.get_message() == b"\x00\x01binary"
        nursery.cancel_scope.cancel()


async def test_route_not_found_and_direct_response() -> None:
    config = {
        "binds": [
            {
                "port": 0,
                "address": "127.0.0.1",
                "listeners": [
                    {
                        "routes": [
                            {
                                "name": "hello",
                                "matches": [{"path": {"exact": "/hello"}}],
                                "policies": {
                                    "directResponse": {"status": 201, "body": "hi"},
                                    "responseHeaderModifier": {"set": {"x-gw": "1"}},
                                },
                            }
                        ]
                    }
                ],
            }
        ]
    }
    async with run_gateway(config) as (_, port):
        resp = await request(port, "GET", "/hello")
        assert (resp.status, resp.body, resp.header(b"x-gw")) == (201, b"hi", b"1")
        missing = await request(port, "GET", "/other")
        assert missing.status == 404


async def test_cors_preflight_and_headers() -> None:
    async with serve_upstream(echo_handler) as up:
        config = proxy_config(up.port)
        config["binds"][0]["listeners"][0]["routes"][0]["policies"] = {
            "cors": {
                "allowOrigins": ["https://app.example"],
                "allowHeaders": ["mcp-session-id"],
                "allowMethods": ["POST"],
                "exposeHeaders": ["mcp-session-id"],
                "maxAge": "100s",
            }
        }
        async with run_gateway(config) as (_, port):
            pre = await request(
                port,
                "OPTIONS",
                "/mcp",
                headers=[
                    (b"origin", b"https://app.example"),
                    (b"access-control-request-method", b"POST"),
                ],
            )
            assert pre.status == 200
            assert pre.header(b"access-control-allow-origin") == b"https://app.example"
            assert pre.header(b"access-control-max-age") == b"100"
            assert up.requests == 0
            resp = await request(
                port, "POST", "/mcp", body=b"x", headers=[(b"origin", b"https://app.example")]
            )
            assert resp.header(b"access-control-expose-headers") == b"mcp-session-id"


async def test_log_line_cannot_be_forged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agentgw.access")
    async with serve_upstream(echo_handler) as up, run_gateway(proxy_config(up.port)) as (_, port):
        # A refused request line reaches the log line's error detail, escaped;
        # CR/LF and C0 controls are refused before they can reach any field.
        await raw_exchange(
            port,
            b"GET /a%0d%0a\x9b31m HTTP/1.1\r\nHost: evil\r\nConnection: close\r\n\r\n",
        )
        await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n")
    lines = [r.getMessage() for r in caplog.records if r.name == "agentgw.access"]
    assert len(lines) == 2
    for line in lines:
        assert not any(ch in line for ch in "\n\r\t\x1b\x9b")
    assert "http.status=400" in lines[0] and "%0d%0a\\\\x9b31m" in lines[0]
    assert "http.status=400" in lines[1]
