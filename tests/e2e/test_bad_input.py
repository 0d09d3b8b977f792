"""Refusals: each bad request gets its status, the upstream sees nothing, and
the connection is closed."""

from __future__ import annotations

from typing import Any

import h11
import pytest
import trio

from tests.e2e.support import (
    Upstream,
    echo_handler,
    proxy_config,
    raw_exchange,
    run_gateway,
    serve_upstream,
)

BAD_REQUESTS = {
    "cl-then-te": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
        400,
    ),
    "te-then-cl": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
        b"0\r\n\r\n",
        400,
    ),
    "xchunked": (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
    "chunked-identity": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        400,
    ),
    "two-te-lines": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "te-http10": (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "duplicate-cl": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        400,
    ),
    "signed-cl": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", 400),
    "list-cl": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
    "huge-header-block": (
        b"GET / HTTP/1.1\r\nHost: a\r\n"
        + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"v" * 1000) for i in range(60))
        + b"\r\n",
        431,
    ),
    "long-request-line": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    "missing-host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "duplicate-host": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "http2-version": (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    "control-char-in-header": (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", 400),
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
async def test_refusal(name: str) -> None:
    data, status = BAD_REQUESTS[name]
    async with serve_upstream(echo_handler) as up, run_gateway(proxy_config(up.port)) as (_, port):
        reply = await raw_exchange(port, data)  # returns only once the gateway closed
        assert reply.startswith(b"HTTP/1.1 %d " % status), reply[:100]
        assert b"connection: close" in reply.lower()
        assert up.requests == 0 and up.connections == 0


async def test_header_block_sent_in_one_write_is_431_not_parsed() -> None:
    block = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 60_000 + b"\r\n\r\n"
    async with serve_upstream(echo_handler) as up, run_gateway(proxy_config(up.port)) as (_, port):
        reply = await raw_exchange(port, block)
        assert reply.startswith(b"HTTP/1.1 431 ")
        assert up.connections == 0


async def test_pipelined_requests_answered_in_order() -> None:
    async def handler(req: h11.Request, body: bytes, up: Upstream) -> Any:
        if req.target == b"/slow":
            await trio.sleep(0.2)
        return 200, [], req.target

    async with serve_upstream(handler) as up, run_gateway(proxy_config(up.port)) as (_, port):
        data = (
            b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        reply = await raw_exchange(port, data)
        bodies = []
        for _ in range(3):
            client = h11.Connection(h11.CLIENT)
            client.send(h11.Request(method="GET", target="/", headers=[(b"host", b"a")]))
            client.send(h11.EndOfMessage())
            client.receive_data(reply)
            event = client.next_event()
            assert isinstance(event, h11.Response) and event.status_code == 200
            body = b""
            while not isinstance(event := client.next_event(), h11.EndOfMessage):
                body += event.data
            bodies.append(body)
            reply = client.trailing_data[0]
        assert bodies == [b"/slow", b"/two", b"/three"]


async def _read_until_closed(stream: trio.SocketStream) -> bytes:
    reply = b""
    try:
        while chunk := await stream.receive_some(1000):
            reply += chunk
    except trio.BrokenResourceError:
        pass
    return reply


async def test_slow_header_client_is_cut_off() -> None:
    config = proxy_config(1, http={"headerTimeout": "300ms"})
    async with run_gateway(config) as (_, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        start = trio.current_time()
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        with trio.fail_after(3):
            reply = await _read_until_closed(stream)
        assert reply.startswith(b"HTTP/1.1 408 ")
        assert trio.current_time() - start < 1.5
        await stream.aclose()


async def test_dripping_header_bytes_do_not_extend_the_timeout() -> None:
    config = proxy_config(1, http={"headerTimeout": "400ms"})
    async with run_gateway(config) as (_, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        start = trio.current_time()

        async def drip() -> None:
            await stream.send_all(b"GET / HTTP/1.1\r\n")
            try:
                while True:
                    await trio.sleep(0.05)
                    await stream.send_all(b"X: 1\r\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drip)
            with trio.fail_after(3):
                reply = await _read_until_closed(stream)
            nursery.cancel_scope.cancel()
        assert reply.startswith(b"HTTP/1.1 408 ")
        assert trio.current_time() - start < 1.5
        await stream.aclose()


async def test_slow_body_client_gets_408() -> None:
    async with serve_upstream(echo_handler) as up:
        config = proxy_config(up.port, http={"bodyTimeout": "300ms"})
        async with run_gateway(config) as (_, port):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
            reply = b""
            with trio.fail_after(3):
                while chunk := await stream.receive_some(1000):
                    reply += chunk
            assert reply.startswith(b"HTTP/1.1 408 ")
            await stream.aclose()
        assert up.requests == 0  # the upstream never got a complete request


async def test_body_over_limit_is_413() -> None:
    async with serve_upstream(echo_handler) as up:
        config = proxy_config(up.port, http={"maxBodyBytes": 1000})
        async with run_gateway(config) as (_, port):
            reply = await raw_exchange(
                port, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000
            )
            assert reply.startswith(b"HTTP/1.1 413 ")
            chunked = (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"3e8\r\n"
                + b"x" * 1000
                + b"\r\n"
                + b"3e8\r\n"
                + b"x" * 1000
                + b"\r\n0\r\n\r\n"
            )
            reply = await raw_exchange(port, chunked)
            assert reply.startswith(b"HTTP/1.1 413 ")
        assert up.requests == 0
