"""An MCP target that misbehaves on ``tools/call``: the gateway bounds the
wait, answers the call with a JSON-RPC error for its id, closes the upstream
exchange, and never sends a call twice (issue 12).

The target is a raw HTTP server on 127.0.0.1 that answers ``initialize``
and notifications like any Streamable HTTP server and does what each test
says with a ``tools/call``.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import h11
import pytest
import trio

from tests.e2e.support import (
    Response,
    ScriptedMcpTarget,
    Upstream,
    initialize_message,
    recording_mcp_upstream,
    request,
    run_gateway,
    send_response,
    serve_raw,
    serve_upstream,
)
from tests.e2e.test_mcp_gateway import ACCEPT, JSON_CT, mcp_config


@asynccontextmanager
async def gateway_before(
    target: ScriptedMcpTarget, **settings: Any
) -> AsyncIterator[tuple[int, list[tuple[bytes, bytes]]]]:
    """The gateway with ``target`` as its one target, and an initialized
    session; yields the port and the session's headers."""
    async with serve_raw(target.serve) as up_port:
        config = mcp_config({"name": "hostile", "mcp": {"host": f"http://127.0.0.1:{up_port}/mcp"}})
        config.setdefault("config", {}).update(settings)
        async with run_gateway(config) as (_, port):
            answer = await post(port, initialize_message(), [])
            assert answer.status == 200, answer.body
            yield port, [(b"mcp-session-id", answer.header(b"mcp-session-id"))]


async def post(port: int, message: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> Response:
    return await request(
        port,
        "POST",
        "/mcp",
        headers=[ACCEPT, JSON_CT, *headers],
        body=json.dumps(message).encode(),
    )


def rpc_messages(response: Response) -> list[dict[str, Any]]:
    if response.header(b"content-type").startswith(b"text/event-stream"):
        return [
            json.loads(line[5:])
            for line in response.body.decode().splitlines()
            if line.startswith("data:") and line[5:].strip()
        ]
    return [json.loads(response.body)]


CALL = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "x"}}


async def never_answer(stream: trio.SocketStream, conn: h11.Connection, _: h11.Request) -> None:
    """Take the call and say nothing, not even a response head."""


async def silent_sse(stream: trio.SocketStream, conn: h11.Connection, _: h11.Request) -> None:
    """Start an SSE answer, then say nothing."""
    head = h11.Response(status_code=200, headers=[(b"content-type", b"text/event-stream")])
    await stream.send_all(conn.send(head) or b"")


async def reset(stream: trio.SocketStream, conn: h11.Connection, _: h11.Request) -> None:
    """Drop the connection with a reset once the call is in."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()
    raise trio.BrokenResourceError


@pytest.mark.parametrize(
    "settings",
    [{"http": {"upstreamResponseTimeout": "500ms"}}, {"mcp": {"streamIdleTimeout": "500ms"}}],
    ids=["upstreamResponseTimeout", "streamIdleTimeout"],
)
async def test_a_silent_target_is_bounded_and_its_exchange_closed(
    settings: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentgw.access")
    # Without an answer head the response timeout bounds the wait; with an
    # SSE head and then silence, the stream's idle bound does.
    on_call = never_answer if "http" in settings else silent_sse
    target = ScriptedMcpTarget(on_call)
    async with gateway_before(target, **settings) as (port, session):
        start = trio.current_time()
        with trio.fail_after(10):
            answer = await post(port, CALL, session)
        took = trio.current_time() - start
        with trio.fail_after(5):
            await target.call_closed.wait()
    assert 0.4 < took < 5
    assert answer.status == 200
    (message,) = [m for m in rpc_messages(answer) if "id" in m]
    assert message["id"] == 9
    assert message["error"]["message"] in (
        "target hostile: upstream timeout",
        "target hostile: upstream protocol error",
        "target hostile: upstream unavailable",
    )
    assert "127.0.0.1" not in answer.body.decode()
    assert len(target.calls) == 1


async def test_a_route_timeout_bounds_an_mcp_call() -> None:
    target = ScriptedMcpTarget(never_answer)
    async with serve_raw(target.serve) as up_port:
        config = mcp_config({"name": "hostile", "mcp": {"host": f"http://127.0.0.1:{up_port}/mcp"}})
        route = config["binds"][0]["listeners"][0]["routes"][0]
        route["policies"] = {"timeout": {"backendRequestTimeout": "300ms"}}
        async with run_gateway(config) as (_, port):
            first = await post(port, initialize_message(), [])
            session = [(b"mcp-session-id", first.header(b"mcp-session-id"))]
            with trio.fail_after(10):
                answer = await post(port, CALL, session)
    (message,) = [m for m in rpc_messages(answer) if "id" in m]
    assert message["error"]["message"] == "target hostile: upstream timeout"


@pytest.mark.parametrize("fail_open", [False, True])
async def test_a_route_timeout_bounds_a_list_that_one_target_never_answers(
    fail_open: bool,
) -> None:
    """A fan-out (``tools/list``) waits for each target at most the route's
    first-reply bound: the silent target is a failure (failClosed: an error;
    failOpen: the other target's tools)."""

    async def silent_lists(request: h11.Request, body: bytes, up: Upstream) -> Any:
        if json.loads(body or b"{}").get("method") == "tools/list":
            await trio.sleep_forever()
        return await recording_mcp_upstream(request, body, up)

    async with serve_upstream(silent_lists) as silent, serve_upstream(recording_mcp_upstream) as ok:
        config = mcp_config(
            {"name": "silent", "mcp": {"host": f"http://127.0.0.1:{silent.port}/mcp"}},
            {"name": "ok", "mcp": {"host": f"http://127.0.0.1:{ok.port}/mcp"}},
        )
        route = config["binds"][0]["listeners"][0]["routes"][0]
        route["policies"] = {"timeout": {"backendRequestTimeout": "300ms"}}
        if fail_open:
            route["backends"][0]["mcp"]["failureMode"] = "failOpen"
        async with run_gateway(config) as (_, port):
            first = await post(port, initialize_message(), [])
            session = [(b"mcp-session-id", first.header(b"mcp-session-id"))]
            listing = {"jsonrpc": "2.0", "id": 5, "method": "tools/list"}
            start = trio.current_time()
            with trio.fail_after(10):
                answer = await post(port, listing, session)
            took = trio.current_time() - start
    assert 0.25 < took < 5
    (message,) = [m for m in rpc_messages(answer) if "id" in m]
    if fail_open:
        assert [t["name"] for t in message["result"]["tools"]] == ["ok_who"]
    else:
        assert "error" in message and "127.0.0.1" not in json.dumps(message)


async def test_a_reset_after_the_call_was_sent_is_an_error_and_no_second_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agentgw.access")
    target = ScriptedMcpTarget(reset)
    async with gateway_before(target) as (port, session):
        before = target.connections
        with trio.fail_after(10):
            answer = await post(port, CALL, session)
        await trio.sleep(0.2)  # time for a retry that must not happen
        after = target.connections
    (message,) = [m for m in rpc_messages(answer) if "id" in m]
    assert message["id"] == 9 and "error" in message
    assert "127.0.0.1" not in json.dumps(message)
    assert len(target.calls) == 1  # never sent twice
    assert after - before <= 1  # at most the one connection the call took


async def test_x_forwarded_for_on_mcp_ends_with_the_real_peer() -> None:
    async def answer(stream: trio.SocketStream, conn: h11.Connection, _: h11.Request) -> None:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"content": []}}).encode()
        await send_response(stream, conn, 200, body, [(b"content-type", b"application/json")])

    target = ScriptedMcpTarget(answer)
    async with gateway_before(target) as (port, session):
        spoof = [(b"x-forwarded-for", b"1.2.3.4")]
        with trio.fail_after(10):
            await post(port, CALL, session + spoof)
    (call_head,) = target.call_heads
    forwarded = dict(call_head.headers)[b"x-forwarded-for"]
    assert forwarded == b"1.2.3.4, 127.0.0.1"
