"""Hostile and broken upstreams, scripted byte for byte: every bad answer is a
502 (or a JSON-RPC error on an MCP route) with a generic body, the log line
says what and where, the connection is discarded, and nothing is relayed."""

from __future__ import annotations

import json
import logging
import select
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h11
import pytest
import trio

from agentgw.errors import UpstreamError
from agentgw.upstream.pool import ConnectionPool, Origin
from tests.e2e.support import (
    ScriptedMcpTarget,
    initialize_message,
    open_client,
    proxy_config,
    request,
    run_gateway,
    serve_raw,
)

LINGER_RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close sends RST


def reset_on_close(stream: trio.SocketStream) -> None:
    stream.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, LINGER_RESET)


@attrs.define
class Script:
    """What a scripted upstream saw."""

    connections: int = 0
    requests: list[bytes] = attrs.field(factory=list)


async def read_head(stream: trio.SocketStream) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        data += chunk
    return data


@asynccontextmanager
async def scripted(
    reply: bytes, *, first: bool = False, keep_open: bool = True
) -> AsyncIterator[tuple[int, Script]]:
    """An upstream that reads one request head and sends exactly ``reply``
    (with ``first``, as soon as the connection opens, like an SSH server)."""
    script = Script()

    async def handle(stream: trio.SocketStream) -> None:
        script.connections += 1
        if first:
            await stream.send_all(reply)
        head = await read_head(stream)
        if head is None:
            return
        script.requests.append(head)
        if not first:
            await stream.send_all(reply)
        if keep_open:
            with trio.move_on_after(10):
                while await stream.receive_some(65536):
                    pass

    async with serve_raw(handle) as port:
        yield port, script


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "agentgw.access"]


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


BIG = b"v" * 60_000
BAD_ANSWERS: dict[str, tuple[bytes, str]] = {
    "cl-and-te": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n",
        "both Content-Length and Transfer-Encoding",
    ),
    "te-and-cl": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 500\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n",
        "both Content-Length and Transfer-Encoding",
    ),
    "60k-header": (
        b"HTTP/1.1 200 OK\r\nX-Big: " + BIG + b"\r\nContent-Length: 0\r\n\r\n",
        "larger than 32768 bytes",
    ),
    "9k-header-line": (
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"v" * 9216 + b"\r\nContent-Length: 0\r\n\r\n",
        "longer than 8192 bytes",
    ),
    "150-header-fields": (
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"X-F%d: v\r\n" % i for i in range(150))
        + b"Content-Length: 0\r\n\r\n",
        "more than 100 header fields",
    ),
    "head-over-max-header-bytes": (
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 4000) for i in range(9))
        + b"Content-Length: 0\r\n\r\n",
        "larger than 32768 bytes",
    ),
    "bad-status-line": (b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n", "malformed status line"),
    "http2-status-line": (b"HTTP/2 200\r\ncontent-length: 0\r\n\r\n", "not an HTTP/1.x response"),
    "binary-garbage": (b"\x00\x01\x02\xff\xfe garbage\r\n\r\n", "not an HTTP/1.x response"),
    "invalid-content-length": (
        b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nabc",
        "malformed Content-Length",
    ),
    "negative-content-length": (
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nabc",
        "malformed Content-Length",
    ),
    "disagreeing-content-lengths": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "Content-Length values that disagree",
    ),
    "gzip-chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "unsupported Transfer-Encoding",
    ),
    "bare-lf": (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", "bare LF"),
    "obs-fold": (
        b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 2\r\n\r\nok",
        "obsolete line folding",
    ),
    "nul-in-header": (
        b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
        "control character",
    ),
    "101-without-upgrade": (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nraw",
        "upstream protocol error",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_ANSWERS))
async def test_bad_answer_is_502_with_a_generic_body(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answer, detail = BAD_ANSWERS[name]
    async with scripted(answer) as (up_port, script):
        async with run_gateway(proxy_config(up_port)) as (gw, port):
            with trio.fail_after(10):
                async with open_client(port) as client:
                    resp = await client.request("GET", "/x")
            assert resp.status == 502, resp
            assert resp.body == b"upstream protocol error\n"
            assert gw.pool.statistics().idle == 0  # the connection was discarded
    assert script.connections == 1 and len(script.requests) == 1
    (line,) = access_lines(caplog)
    assert "http.status=502" in line
    assert f"127.0.0.1:{up_port}" in line and detail in line, line
    assert_no_traceback(caplog)


async def test_body_error_after_the_head_cuts_the_client(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agentgw.access")
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n"
    async with scripted(answer) as (up_port, _), run_gateway(proxy_config(up_port)) as (gw, port):
        async with open_client(port) as client:
            with trio.fail_after(10), pytest.raises(h11.RemoteProtocolError):
                await client.request("GET", "/x")
        assert gw.pool.statistics().idle == 0
    (line,) = access_lines(caplog)
    assert "upstream protocol error" in line and f"127.0.0.1:{up_port}" in line
    assert_no_traceback(caplog)


async def test_ssh_banner_is_refused_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """An SSH server speaks first and waits: its banner alone is refused,
    long before any timeout, and never echoed."""
    caplog.set_level(logging.INFO, logger="agentgw.access")
    banner = b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n"
    async with scripted(banner, first=True) as (up_port, _):
        async with run_gateway(proxy_config(up_port)) as (_, port):
            start = trio.current_time()
            with trio.fail_after(5):
                resp = await request(port, "GET", "/")
            assert trio.current_time() - start < 2
    assert resp.status == 502 and resp.body == b"upstream protocol error\n"
    assert b"SSH" not in resp.body
    (line,) = access_lines(caplog)
    assert "not an HTTP/1.x response" in line and "SSH-2." in line


async def test_extra_bytes_after_a_response_keep_it_out_of_the_pool() -> None:
    """Bytes after the end of an answer would be read as the next answer:
    the answer is relayed, the connection is not reused."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n"
    async with scripted(answer) as (up_port, script):
        async with run_gateway(proxy_config(up_port)) as (gw, port):
            first = await request(port, "GET", "/")
            second = await request(port, "GET", "/")
            assert gw.pool.statistics().idle == 0
    assert first.status == second.status == 200 and first.body == second.body == b"ok"
    assert script.connections == 2


async def test_response_head_timeout_is_for_the_whole_head(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An upstream that drips its head a byte at a time does not extend the
    wait: upstreamResponseTimeout bounds the whole head."""
    caplog.set_level(logging.INFO, logger="agentgw.access")

    async def drip(stream: trio.SocketStream) -> None:
        await read_head(stream)
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
            await stream.send_all(bytes([byte]))
            await trio.sleep(0.05)

    async with serve_raw(drip) as up_port:
        config = proxy_config(up_port, http={"upstreamResponseTimeout": "500ms"})
        async with run_gateway(config) as (_, port):
            start = trio.current_time()
            with trio.fail_after(5):
                resp = await request(port, "GET", "/")
            assert trio.current_time() - start < 2.5
    assert resp.status == 504 and resp.body == b"upstream timeout\n"
    (line,) = access_lines(caplog)
    assert f"127.0.0.1:{up_port}: no whole response head in 0.5s" in line


async def test_upstream_reset_after_the_request_is_not_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reset after the request was written: one 502, and the request went
    out once, also on a reused keep-alive connection."""
    caplog.set_level(logging.INFO, logger="agentgw.access")
    script = Script()

    async def serve_then_reset(stream: trio.SocketStream) -> None:
        script.connections += 1
        while (head := await read_head(stream)) is not None:
            script.requests.append(head)
            if b"/reset" in head:
                reset_on_close(stream)
                return
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async with serve_raw(serve_then_reset) as up_port:
        async with run_gateway(proxy_config(up_port)) as (gw, port):
            ok = await request(port, "GET", "/ok")
            assert ok.status == 200
            with trio.fail_after(5):
                while gw.pool.statistics().idle != 1:
                    await trio.sleep(0.01)
            resp = await request(port, "POST", "/reset", body=b'{"method": "tools/call"}')
    assert resp.status == 502 and resp.body == b"upstream unavailable\n"
    assert script.connections == 1  # no second connection for a retry
    assert [h.split(b" ")[1] for h in script.requests] == [b"/ok", b"/reset"]
    line = access_lines(caplog)[-1]
    assert f"127.0.0.1:{up_port}" in line and "reset" in line


# ---------------------------------------------------------------- the pool's retry rule


@asynccontextmanager
async def keep_alive_upstream(
    on_connection: Callable[[trio.SocketStream, int], Awaitable[None]],
) -> AsyncIterator[tuple[int, Script]]:
    script = Script()

    async def handle(stream: trio.SocketStream) -> None:
        script.connections += 1
        await on_connection(stream, script.connections)

    async with serve_raw(handle) as port:
        yield port, script


async def answer_all(stream: trio.SocketStream, script: Script) -> None:
    while (head := await read_head(stream)) is not None:
        script.requests.append(head)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


async def one_exchange(pool: ConnectionPool, port: int, body: bytes = b"") -> bytes:
    exchange = pool.open_exchange(Origin("127.0.0.1", port))
    try:
        headers = [(b"host", b"up"), (b"content-length", str(len(body)).encode())]
        await exchange.send_head(b"POST", b"/", headers, body)
        response = await exchange.receive_response(5)
        assert response.status == 200
        return b"".join([chunk async for chunk in exchange.body(5)])
    finally:
        exchange.release()


def wait_readable(sock: trio.socket.SocketType) -> None:
    readable, _, _ = select.select([sock.fileno()], [], [], 5)
    assert readable


async def test_first_write_failing_on_a_reused_connection_is_retried_once() -> None:
    """The pooled connection was reset after it was taken: the first write
    fails, no byte left the gateway, so the request goes out once on a new
    connection."""
    reset = trio.Event()
    script_ref: list[Script] = []

    async def on_connection(stream: trio.SocketStream, n: int) -> None:
        if n == 1:
            head = await read_head(stream)
            assert head is not None
            script_ref[0].requests.append(head)
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await reset.wait()
            reset_on_close(stream)
            return
        await answer_all(stream, script_ref[0])

    pool = ConnectionPool()
    async with keep_alive_upstream(on_connection) as (port, script):
        script_ref.append(script)
        assert await one_exchange(pool, port) == b"ok"
        exchange = pool.open_exchange(Origin("127.0.0.1", port))
        try:
            await exchange.connect()  # takes the idle connection, still healthy
            assert exchange.conn is not None
            reset.set()
            await trio.sleep(0.05)
            wait_readable(exchange.conn.stream.socket)  # the RST arrived
            await exchange.send_head(b"POST", b"/", [(b"host", b"up"), (b"content-length", b"0")])
            response = await exchange.receive_response(5)
            assert response.status == 200
        finally:
            exchange.release()
        pool.close_all()
    assert script.connections == 2 and len(script.requests) == 2
    assert pool.statistics().opened == 2


async def test_failure_after_some_bytes_were_written_is_not_retried() -> None:
    """A reused connection reset while a large request is being written:
    part of it reached the upstream, so it is never sent again."""
    script_ref: list[Script] = []

    async def on_connection(stream: trio.SocketStream, n: int) -> None:
        head = await read_head(stream)
        assert head is not None
        script_ref[0].requests.append(head)
        if n == 1:
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            head = await read_head(stream)  # the big request's head, then reset
            assert head is not None
            script_ref[0].requests.append(head)
        reset_on_close(stream)

    pool = ConnectionPool()
    async with keep_alive_upstream(on_connection) as (port, script):
        script_ref.append(script)
        assert await one_exchange(pool, port) == b"ok"
        with pytest.raises(UpstreamError) as info:
            await one_exchange(pool, port, b"x" * (32 << 20))
        pool.close_all()
    assert info.value.reason == "upstream unavailable"
    assert f"127.0.0.1:{port}" in (info.value.detail or "")
    assert script.connections == 1 and len(script.requests) == 2


# ---------------------------------------------------------------- the MCP route


def mcp_route_config(target_url: str) -> dict[str, Any]:
    route = {
        "name": "mcp",
        "matches": [{"path": {"pathPrefix": "/mcp"}}],
        "backends": [{"mcp": {"targets": [{"name": "bad", "mcp": {"host": target_url}}]}}],
    }
    return {
        "binds": [{"port": 0, "address": "127.0.0.1", "listeners": [{"routes": [route]}]}],
        "config": {"session": {"key": "11" * 32}},
    }


async def test_cl_and_te_on_an_mcp_route_is_an_error_not_a_result() -> None:
    """The MCP upstream transport gets the same refusal from the pool: the
    call is answered with a JSON-RPC error, never with the smuggled result."""

    async def smuggle(stream: trio.SocketStream, conn: h11.Connection, _: h11.Request) -> None:
        result = {"jsonrpc": "2.0", "id": target.calls[0]["id"], "result": {"smuggled": True}}
        data = json.dumps(result).encode()
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
            % (len(data) + 7, len(data), data)
        )

    target = ScriptedMcpTarget(smuggle)
    accept = (b"accept", b"application/json, text/event-stream")
    json_ct = (b"content-type", b"application/json")
    async with serve_raw(target.serve) as up_port:
        config = mcp_route_config(f"http://127.0.0.1:{up_port}/mcp")
        async with run_gateway(config) as (_, port):
            init = json.dumps(initialize_message()).encode()
            resp = await request(port, "POST", "/mcp", headers=[accept, json_ct], body=init)
            assert resp.status == 200, resp
            session = resp.header(b"mcp-session-id")
            assert session is not None
            headers = [accept, json_ct, (b"mcp-session-id", session)]
            call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "x"}}
            with trio.fail_after(10):
                resp = await request(
                    port, "POST", "/mcp", headers=headers, body=json.dumps(call).encode()
                )
    assert len(target.calls) == 1
    text = resp.body.decode()
    payload = json.loads(text[text.index("{") :].splitlines()[0]) if resp.status == 200 else None
    assert payload is not None and "error" in payload, text
    assert "smuggled" not in text and "127.0.0.1" not in text
