"""Resumable SSE streams (2025-11-25, SEP-1699) over real sockets: a client
that drops a call's stream, or that the gateway hangs up on, resumes it with
GET and Last-Event-ID and gets the rest once."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import h11
import pytest
import trio

from agentgw.wire.sse import SSEDecoder, SSEEvent
from tests.e2e.support import Client, ScriptedMcpTarget, open_client, run_gateway, serve_raw
from tests.e2e.test_demo_conformance import demo_process
from tests.e2e.test_mcp_gateway import mcp_config, stdio

DEMO = [sys.executable, "-m", "agentgw.demo", "--log-level", "warning"]
ACCEPT_BOTH = (b"accept", b"application/json, text/event-stream")
JSON_CT = (b"content-type", b"application/json")


def _config(**mcp: Any) -> dict[str, Any]:
    config = mcp_config(stdio("demo", DEMO))
    config["config"]["mcp"] = {"sseRetry": "250ms", **mcp}
    return config


async def _post(port: int, message: dict[str, Any], token: str | None = None) -> Any:
    headers = [ACCEPT_BOTH, JSON_CT]
    if token is not None:
        headers.append((b"mcp-session-id", token.encode()))
    async with open_client(port) as client:
        return await client.request("POST", "/mcp", headers, json.dumps(message).encode())


async def _session(port: int) -> str:
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"},
        },
    }
    resp = await _post(port, init)
    assert resp.status == 200, resp.body
    token = resp.header(b"mcp-session-id").decode()
    done = await _post(port, {"jsonrpc": "2.0", "method": "notifications/initialized"}, token)
    assert done.status == 202
    return str(token)


def _slow_call(steps: int, seconds: float) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 9,
        "method": "tools/call",
        "params": {
            "name": "slow",
            "arguments": {"seconds": seconds, "steps": steps},
            "_meta": {"progressToken": "p"},
        },
    }


@asynccontextmanager
async def _stream(
    port: int, method: str, token: str, *, body: dict[str, Any] | None = None, last: str = ""
) -> AsyncIterator[tuple[h11.Response, AsyncGenerator[SSEEvent, None]]]:
    """A request answered with SSE, on a connection of its own; yields the
    response head and its events as they come."""
    headers = [(b"host", b"127.0.0.1"), (b"mcp-session-id", token.encode())]
    headers.append(ACCEPT_BOTH if body is not None else (b"accept", b"text/event-stream"))
    if last:
        headers.append((b"last-event-id", last.encode()))
    data = json.dumps(body).encode() if body is not None else b""
    if body is not None:
        headers += [JSON_CT, (b"content-length", str(len(data)).encode())]
    async with open_client(port) as client:
        await client.send(h11.Request(method=method, target="/mcp", headers=headers))
        if data:
            await client.send(h11.Data(data=data))
        await client.send(h11.EndOfMessage())
        head = await client.next_event()
        assert isinstance(head, h11.Response), head
        async with aclosing(_events(client)) as events:
            yield head, events


async def _events(client: Client) -> AsyncGenerator[SSEEvent, None]:
    decoder = SSEDecoder()
    while True:
        event = await client.next_event()
        if isinstance(event, h11.EndOfMessage):
            return
        if isinstance(event, h11.Data):
            for sse in decoder.feed(bytes(event.data)):
                yield sse


def _message(event: SSEEvent) -> dict[str, Any]:
    message = json.loads(event.data)
    assert isinstance(message, dict)
    return message


def _steps(events: list[SSEEvent]) -> list[Any]:
    return [
        _message(e)["params"]["progress"] if "method" in _message(e) else "result"
        for e in events
        if e.data
    ]


async def test_a_dropped_call_stream_resumes_with_the_rest_exactly_once() -> None:
    async with run_gateway(_config()) as (_, port):
        token = await _session(port)
        first: list[SSEEvent] = []
        with trio.fail_after(20):
            async with _stream(port, "POST", token, body=_slow_call(6, 1.2)) as (head, events):
                assert head.status_code == 200
                assert dict(head.headers)[b"content-type"] == b"text/event-stream"
                async for event in events:
                    first.append(event)
                    if len(first) == 3:  # the priming event, then two messages
                        break
            # The connection is gone mid-call; the call goes on.
            priming = first[0]
            assert priming.data == "" and priming.id is not None and priming.id.endswith(":0")
            assert priming.retry == 250
            assert _steps(first) == [1, 2]
            await trio.sleep(0.3)  # events come while nobody reads
            rest: list[SSEEvent] = []
            async with _stream(port, "GET", token, last=str(first[-1].id)) as (head, events):
                assert head.status_code == 200
                rest = [event async for event in events]
        assert _steps(rest) == [3, 4, 5, 6, "result"]
        assert _message(rest[-1])["id"] == 9
        key = priming.id.rpartition(":")[0]
        assert [e.id for e in first + rest] == [f"{key}:{n}" for n in range(8)]


async def test_a_completed_stream_can_be_resumed_and_a_stale_id_is_refused() -> None:
    async with run_gateway(_config()) as (_, port):
        token = await _session(port)
        with trio.fail_after(20):
            async with _stream(port, "POST", token, body=_slow_call(2, 0.2)) as (_, events):
                got = [event async for event in events]
            assert _steps(got) == [1, 2, "result"]
            async with _stream(port, "GET", token, last=str(got[1].id)) as (head, events):
                again = [event async for event in events]
            assert _steps(again) == [2, "result"]
            for bad in ("nosuch:1", "garbage", f"{str(got[0].id)[:-2]}:99"):
                async with _stream(port, "GET", token, last=bad) as (head, _):
                    assert head.status_code == 400, bad


async def test_the_buffer_bound_is_logged_and_a_resume_past_it_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agentgw.relay.resume")
    async with run_gateway(_config(sseBufferEvents=2)) as (_, port):
        token = await _session(port)
        with trio.fail_after(20):
            async with _stream(port, "POST", token, body=_slow_call(5, 0.5)) as (_, events):
                priming = await events.__anext__()
            while "can no longer be resumed" not in caplog.text:
                await trio.sleep(0.05)
            # Events 1 to 4 of 6 fell out: from the start there would be a gap.
            async with _stream(port, "GET", token, last=str(priming.id)) as (head, _):
                assert head.status_code == 400
            key = str(priming.id).rpartition(":")[0]
            while "(4 in all)" not in caplog.text:  # the response is in: 5 and 6 kept
                await trio.sleep(0.05)
            async with _stream(port, "GET", token, last=f"{key}:4") as (head, events):
                assert head.status_code == 200
                rest = [event async for event in events]
            assert _steps(rest) == [5, "result"]


async def test_the_gateway_hangs_up_to_make_the_client_poll() -> None:
    async with run_gateway(_config(ssePollAfter="0s")) as (_, port):
        token = await _session(port)
        with trio.fail_after(20):
            async with _stream(port, "POST", token, body=_slow_call(2, 0.2)) as (head, events):
                got = [event async for event in events]
            # The priming event only: the stream ends without the response.
            assert [e.data for e in got] == [""]
            assert dict(head.headers).get(b"connection") == b"close"
            polled: list[SSEEvent] = []
            last = str(got[0].id)
            while not polled or "result" not in _steps(polled):
                async with _stream(port, "GET", token, last=last) as (head, events):
                    assert head.status_code == 200
                    polled += [event async for event in events]
                last = str(polled[-1].id) if polled else last
        assert _steps(polled) == [1, 2, "result"]


async def test_the_get_stream_is_primed_and_resumable() -> None:
    async with run_gateway(_config()) as (_, port):
        token = await _session(port)
        with trio.fail_after(20):
            async with _stream(port, "GET", token) as (head, events):
                assert head.status_code == 200
                priming = await events.__anext__()
            assert priming.data == "" and priming.retry == 250
            assert priming.id is not None and priming.id.endswith(":0")
            async with _stream(port, "GET", token, last=priming.id) as (head, events):
                assert head.status_code == 200
                seen: list[SSEEvent] = []
                with trio.move_on_after(0.3):
                    async for event in events:
                        seen.append(event)
            assert seen == []  # resumed: no second priming event, nothing missed


async def test_a_targets_hang_up_is_relayed_to_the_client() -> None:
    # The demo over Streamable HTTP hangs up test_reconnection's stream after
    # its priming event; the gateway, with its defaults, does the same to
    # its client, and the result comes once, on the resumed stream.
    async with demo_process() as url:
        config = mcp_config({"name": "demo", "mcp": {"host": url}})
        async with run_gateway(config) as (_, port):
            token = await _session(port)
            call = {
                "jsonrpc": "2.0",
                "id": 5,
                "method": "tools/call",
                "params": {"name": "test_reconnection", "arguments": {}},
            }
            with trio.fail_after(20):
                async with _stream(port, "POST", token, body=call) as (head, events):
                    assert head.status_code == 200
                    got = [event async for event in events]
                assert [e.data for e in got] == [""]  # primed, then hung up
                async with _stream(port, "GET", token, last=str(got[0].id)) as (head, events):
                    rest = [event async for event in events]
    assert _steps(rest) == ["result"]
    assert _message(rest[0])["id"] == 5


async def test_a_target_that_hangs_up_before_any_message_is_resumed_at_once() -> None:
    """As the conformance suite's own server does: the call's stream is
    primed (with a 5 s retry) and hung up at once, and what comes meanwhile
    is kept only for a client back within a second. The gateway hangs up on
    its client without waiting for a keep-alive, and resumes the target at
    once, so the result reaches the client's resumed stream."""
    hung_up_at: list[float] = []
    sse = [(b"content-type", b"text/event-stream"), (b"mcp-session-id", b"up-1")]

    async def on_call(stream: trio.SocketStream, conn: h11.Connection, _: h11.Request) -> None:
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=sse)))
        await stream.send_all(conn.send(h11.Data(data=b"id: s1:0\nretry: 5000\ndata:\n\n")))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        hung_up_at.append(trio.current_time())

    async def on_get(stream: trio.SocketStream, conn: h11.Connection, req: h11.Request) -> None:
        last = dict(req.headers).get(b"last-event-id")
        if last is None:  # no standalone stream here
            await stream.send_all(conn.send(h11.Response(status_code=405, headers=[])))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            return
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=sse)))
        if last == b"s1:0" and trio.current_time() - hung_up_at[0] < 1.0:
            call_id = target.calls[0]["id"]
            result = {"jsonrpc": "2.0", "id": call_id, "result": {"content": []}}
            event_text = f"id: s1:1\ndata: {json.dumps(result)}\n\n".encode()
            await stream.send_all(conn.send(h11.Data(data=event_text)))
        await stream.send_all(conn.send(h11.EndOfMessage()))

    target = ScriptedMcpTarget(on_call, on_get, call_closes=False, session_id=b"up-1")

    async with serve_raw(target.serve) as up_port:
        config = mcp_config({"name": "p", "mcp": {"host": f"http://127.0.0.1:{up_port}/mcp"}})
        async with run_gateway(config) as (_, port):
            token = await _session(port)
            call = {
                "jsonrpc": "2.0",
                "id": 5,
                "method": "tools/call",
                "params": {"name": "x", "arguments": {}},
            }
            start = trio.current_time()
            with trio.fail_after(20):
                async with _stream(port, "POST", token, body=call) as (head, events):
                    assert head.status_code == 200
                    got = [event async for event in events]
                assert [e.data for e in got] == [""]  # primed, then hung up
                assert trio.current_time() - start < 2  # not after a keep-alive
                async with _stream(port, "GET", token, last=str(got[0].id)) as (head, events):
                    rest = [event async for event in events]
    assert _steps(rest) == ["result"]
    assert _message(rest[0]) == {"jsonrpc": "2.0", "id": 5, "result": {"content": []}}


async def test_a_call_nobody_resumes_is_cancelled_after_the_resume_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A call whose client left runs on into its stream's buffer for a
    client that resumes, but only for ``config.mcp.sseResumeWindow``: then
    it is cancelled upstream, and its access line says why."""
    caplog.set_level(logging.INFO, logger="agentgw.access")
    async with run_gateway(_config(sseResumeWindow="500ms")) as (gw, port):
        token = await _session(port)
        with trio.fail_after(20):
            async with _stream(port, "POST", token, body=_slow_call(40, 20)) as (_, events):
                async for _ in events:
                    break  # the priming event: then the client leaves
            (session,) = gw.sessions.sessions.values()
            left = trio.current_time()
            while "nobody resumed" not in caplog.text:
                await trio.sleep(0.05)
            took = trio.current_time() - left
            # the upstream call is over: nothing of it is in flight
            while session.statistics().pending:
                await trio.sleep(0.05)
    assert 0.4 < took < 5, took
    assert "nobody resumed the stream in 0.5s" in caplog.text
