"""MCP upstream transports against real servers: server-everything over
stdio, Streamable HTTP and SSE; a small WebSocket MCP server; and small
misbehaving peers (a child that exits, an upstream that forgot the session).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio_websocket

from agentgw.config.model import HttpTarget, McpTarget, StdioTarget
from agentgw.errors import UpstreamError, UpstreamUnavailable
from agentgw.upstream.mcp import Answer, TransportClosed
from agentgw.upstream.mcp import open_transport as open_real_transport
from agentgw.upstream.mcp._common import UpstreamSessionGone, open_task_nursery
from agentgw.upstream.pool import ConnectionPool
from agentgw.wire.http import MCP_NOT_FORWARDED, forward_headers
from tests.e2e.support import ScriptedMcpTarget, Upstream, serve_raw, serve_upstream

EVERYTHING = Path(__file__).resolve().parents[2] / "node_modules" / ".bin" / "mcp-server-everything"
Message = dict[str, Any]


class McpTransport:
    """A transport as these tests read it: every message the upstream sends
    arrives through ``receive``, whether on the request's own exchange (an
    ``Answer``, read here by a task as the relay would read it) or through
    the transport's own ``receive``; the client's headers go through the
    relay's filter first."""

    def __init__(self, transport: Any, nursery: trio.Nursery) -> None:
        self.inner = transport
        self.nursery = nursery
        self.target = transport.target
        self._send, self._receive = trio.open_memory_channel[Message | BaseException](100)
        nursery.start_soon(self._forward)

    async def _forward(self) -> None:
        try:
            while True:
                await self._send.send(await self.inner.receive())
        except TransportClosed as exc:
            await self._send.send(exc)

    async def _drain(self, answer: Answer) -> None:
        try:
            while (message := await answer.next()) is not None:
                await self._send.send(message)
        finally:
            answer.close()

    async def send(self, message: Message, *, headers: Any = ()) -> None:
        relayed = forward_headers(headers, "127.0.0.1", drop=MCP_NOT_FORWARDED) if headers else ()
        answer = await self.inner.send(message, headers=relayed)
        if answer is not None:
            self.nursery.start_soon(self._drain, answer)

    def __getattr__(self, name: str) -> Any:  # session_id, pid, endpoint...
        return getattr(self.inner, name)

    async def receive(self) -> Message:
        item = await self._receive.receive()
        if isinstance(item, BaseException):
            raise item
        return item


@asynccontextmanager
async def open_transport(target: McpTarget, **kwargs: Any) -> AsyncIterator[McpTransport]:
    async with open_real_transport(target, **kwargs) as transport:
        async with open_task_nursery() as nursery:
            yield McpTransport(transport, nursery)
            nursery.cancel_scope.cancel()


CLIENT_HEADERS = [
    (b"host", b"gateway.example"),
    (b"authorization", b"Bearer T"),
    (b"mcp-session-id", b"the-clients-session"),
    (b"connection", b"keep-alive"),
    (b"content-length", b"12345"),
    (b"x-trace", b"t-1"),
]


def initialize(version: str = "2025-06-18", msg_id: int = 1) -> Message:
    return {
        "jsonrpc": "2.0",
        "id": msg_id,
        "method": "initialize",
        "params": {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "agentgw-test", "version": "0"},
        },
    }


def call(msg_id: int, name: str, arguments: dict[str, Any], token: str | None = None) -> Message:
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    if token is not None:
        params["_meta"] = {"progressToken": token}
    return {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": params}


INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


async def response_to(
    transport: McpTransport, msg_id: int, seen: list[Message] | None = None, timeout: float = 10
) -> Message:
    """Receive until the response to ``msg_id``; what came before goes to
    ``seen``."""
    with trio.fail_after(timeout):
        while True:
            message = await transport.receive()
            if "method" not in message and message.get("id") == msg_id:
                return message
            if seen is not None:
                seen.append(message)


async def exercise(transport: McpTransport, version: str = "2025-06-18") -> Message:
    """initialize, initialized, tools/list, tools/call echo; the initialize
    result."""
    await transport.send(initialize(version), headers=CLIENT_HEADERS)
    init = await response_to(transport, 1)
    assert init["result"]["protocolVersion"] == version, init
    await transport.send(INITIALIZED, headers=CLIENT_HEADERS)
    await transport.send({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    tools = await response_to(transport, 2)
    assert "echo" in {tool["name"] for tool in tools["result"]["tools"]}
    await transport.send(call(3, "echo", {"message": "hi"}), headers=CLIENT_HEADERS)
    echoed = await response_to(transport, 3)
    assert echoed["result"]["content"][0]["text"] == "Echo: hi", echoed
    result: Message = init["result"]
    return result


@pytest.fixture
async def pool() -> AsyncIterator[ConnectionPool]:
    pool = ConnectionPool()
    yield pool
    pool.close_all()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def everything(mode: str) -> AsyncIterator[tuple[int, trio.Process]]:
    """server-everything in ``mode`` on a free port, once it accepts."""
    port = free_port()
    proc = await trio.lowlevel.open_process(
        [str(EVERYTHING), mode],
        env={**os.environ, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with trio.fail_after(15):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    assert proc.poll() is None, "server-everything exited"
                    await trio.sleep(0.05)
                    continue
                await stream.aclose()
                break
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()


def stdio_everything() -> McpTarget:
    return McpTarget(name="everything", stdio=StdioTarget(cmd=str(EVERYTHING), args=("stdio",)))


def python_child(name: str, code: str) -> McpTarget:
    return McpTarget(name=name, stdio=StdioTarget(cmd=sys.executable, args=("-c", code)))


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ---------------------------------------------------------------- stdio


async def test_stdio_against_server_everything(
    caplog: pytest.LogCaptureFixture, pool: ConnectionPool
) -> None:
    caplog.set_level(logging.INFO, logger="agentgw.upstream.stdio")
    async with open_transport(stdio_everything(), pool=pool) as transport:
        assert transport.session_id is None
        await exercise(transport)
        pid = transport.pid  # type: ignore[attr-defined]
    assert not is_running(pid)
    assert "[everything] Starting default (STDIO) server..." in caplog.messages


async def test_stdio_progress_before_the_response(pool: ConnectionPool) -> None:
    async with open_transport(stdio_everything(), pool=pool) as transport:
        await transport.send(initialize())
        await response_to(transport, 1)
        await transport.send(INITIALIZED)
        operation = {"duration": 0.6, "steps": 3}
        await transport.send(call(4, "trigger-long-running-operation", operation, token="tok"))
        seen: list[Message] = []
        result = await response_to(transport, 4, seen)
    assert "Long running operation completed" in result["result"]["content"][0]["text"]
    progress = [m["params"] for m in seen if m.get("method") == "notifications/progress"]
    assert [(p["progressToken"], p["progress"]) for p in progress] == [
        ("tok", 1),
        ("tok", 2),
        ("tok", 3),
    ]


async def test_closing_stdio_during_a_long_call_leaves_no_child(pool: ConnectionPool) -> None:
    async with open_transport(stdio_everything(), pool=pool) as transport:
        pid = transport.pid  # type: ignore[attr-defined]
        await transport.send(initialize())
        await response_to(transport, 1)
        operation = {"duration": 30, "steps": 60}
        await transport.send(call(4, "trigger-long-running-operation", operation, token="tok"))
        with trio.fail_after(5):
            while (await transport.receive()).get("method") != "notifications/progress":
                pass
        closing = trio.current_time()
    # stdin closed, 2 s grace, then SIGTERM
    assert trio.current_time() - closing < 5
    assert not is_running(pid)


async def test_stdio_command_that_does_not_exist(pool: ConnectionPool) -> None:
    target = McpTarget(name="ghost", stdio=StdioTarget(cmd="/nonexistent/mcp-server"))
    with pytest.raises(UpstreamError, match="target ghost: cannot start") as info:
        async with open_transport(target, pool=pool):
            pass  # pragma: no cover
    assert isinstance(info.value, UpstreamUnavailable)


async def test_stdio_child_that_exits(
    caplog: pytest.LogCaptureFixture, pool: ConnectionPool
) -> None:
    caplog.set_level(logging.INFO, logger="agentgw.upstream.stdio")
    code = (
        "import sys\n"
        "sys.stderr.write('bye \\x1b[31mred\\n'); sys.stderr.flush()\n"
        "line = sys.stdin.readline()\n"
        "print('not json')\n"
        'print(\'{"jsonrpc": "2.0", "id": 1, "result": {}}\', flush=True)\n'
        "sys.exit(3)\n"
    )
    async with open_transport(python_child("quitter", code), pool=pool) as transport:
        await transport.send(initialize())
        with trio.fail_after(10):
            assert (await transport.receive())["id"] == 1
            with pytest.raises(TransportClosed, match="stdio target quitter exited with code 3"):
                await transport.receive()
        with pytest.raises(TransportClosed):
            await transport.send(INITIALIZED)
    assert "[quitter] bye \\x1b[31mred" in caplog.messages
    assert any("not JSON-RPC" in m for m in caplog.messages)


async def test_stdio_refuses_lines_over_4_mib(
    caplog: pytest.LogCaptureFixture, pool: ConnectionPool
) -> None:
    code = (
        "import sys\n"
        "sys.stdout.write('x' * (5 * 1024 * 1024) + '\\n')\n"
        'sys.stdout.write(\'{"jsonrpc": "2.0", "method": "after"}\\n\')\n'
        "sys.stdout.flush(); sys.stdin.read()\n"
    )
    async with open_transport(python_child("chatty", code), pool=pool) as transport:
        with trio.fail_after(10):
            assert (await transport.receive())["method"] == "after"
    assert any("longer than 4194304 bytes" in m for m in caplog.messages)


async def test_stdio_backpressure_pauses_the_child(
    caplog: pytest.LogCaptureFixture, pool: ConnectionPool
) -> None:
    caplog.set_level(logging.INFO, logger="agentgw.upstream.stdio")
    code = (
        "import sys\n"
        "for i in range(20000):\n"
        '    sys.stdout.write(\'{"jsonrpc": "2.0", "method": "n", "params": {"i": %d}}\\n\' % i)\n'
        "sys.stdout.flush(); sys.stderr.write('all written\\n'); sys.stderr.flush()\n"
        "sys.stdin.read()\n"
    )
    async with open_transport(python_child("firehose", code), pool=pool) as transport:
        await trio.sleep(0.5)
        assert "[firehose] all written" not in caplog.messages  # blocked on a full pipe
        with trio.fail_after(10):
            for i in range(20000):
                assert (await transport.receive())["params"]["i"] == i
            while "[firehose] all written" not in caplog.messages:
                await trio.sleep(0.01)


async def test_an_error_in_the_body_passes_through_unwrapped(pool: ConnectionPool) -> None:
    target = python_child("quiet", "import sys; sys.stdin.read()")
    with pytest.raises(KeyError):
        async with open_transport(target, pool=pool):
            raise KeyError("mine")


# ---------------------------------------------------------------- Streamable HTTP


def http_target(name: str, port: int, path: str) -> McpTarget:
    return McpTarget(name=name, mcp=HttpTarget(host=f"http://127.0.0.1:{port}{path}"))


async def test_streamable_http_against_server_everything(pool: ConnectionPool) -> None:
    async with everything("streamableHttp") as (port, _):
        target = http_target("everything", port, "/mcp")
        async with open_transport(target, pool=pool) as transport:
            await exercise(transport)
            assert transport.session_id
            assert transport.protocol_version == "2025-06-18"  # type: ignore[attr-defined]

            # Two requests in flight: the quick one is answered first, and the
            # slow one's progress comes before its response.
            operation = {"duration": 1.0, "steps": 2}
            await transport.send(call(10, "trigger-long-running-operation", operation, "p"))
            await transport.send(call(11, "echo", {"message": "quick"}))
            order: list[Message] = []
            with trio.fail_after(10):
                while not any(m.get("id") == 10 for m in order):
                    order.append(await transport.receive())
            ids = [m.get("id") for m in order if "method" not in m]
            assert ids == [11, 10]
            progress = [m for m in order if m.get("method") == "notifications/progress"]
            assert [m["params"]["progress"] for m in progress] == [1, 2]
            assert order.index(progress[-1]) < len(order) - 1
        assert pool.statistics().active == 0


async def test_streamable_http_forwards_headers_and_keeps_the_session(pool: ConnectionPool) -> None:
    async def handler(request: h11.Request, body: bytes, up: Upstream) -> Any:
        if request.method == b"POST":
            message = json.loads(body)
            if message.get("method") == "initialize":
                result = {
                    "jsonrpc": "2.0",
                    "id": message["id"],
                    "result": {"protocolVersion": "2025-06-18", "capabilities": {}},
                }
                headers = [(b"content-type", b"application/json"), (b"mcp-session-id", b"s-1")]
                return 200, headers, json.dumps(result).encode()
            return 202, [], b""
        if request.method == b"GET":
            return 405, [], b""
        return 200, [], b""

    async with serve_upstream(handler) as up:
        async with open_transport(http_target("fake", up.port, "/mcp"), pool=pool) as transport:
            await transport.send(initialize(), headers=CLIENT_HEADERS)
            await response_to(transport, 1)
            await transport.send(INITIALIZED, headers=CLIENT_HEADERS)
            with trio.fail_after(5):
                while len(up.seen) < 3:  # the GET for the standalone stream
                    await trio.sleep(0.01)
        assert pool.statistics().active == 0

    methods = [request.method for request, _ in up.seen]
    assert methods == [b"POST", b"POST", b"GET", b"DELETE"]
    first, second = (dict(request.headers) for request, _ in up.seen[:2])
    assert first[b"authorization"] == b"Bearer T"
    assert first[b"x-trace"] == b"t-1"
    assert first[b"host"] == f"127.0.0.1:{up.port}".encode()
    assert first[b"accept"] == b"application/json, text/event-stream"
    assert b"mcp-session-id" not in first and b"connection" not in first
    assert second[b"mcp-session-id"] == b"s-1"
    assert second[b"mcp-protocol-version"] == b"2025-06-18"
    assert second[b"authorization"] == b"Bearer T"
    for request, _ in up.seen[2:]:
        assert dict(request.headers)[b"mcp-session-id"] == b"s-1"


async def test_streamable_http_resumes_a_stream_that_ends_early(pool: ConnectionPool) -> None:
    answer = {"jsonrpc": "2.0", "id": 1, "result": {"tools": []}}
    event_stream = [(b"content-type", b"text/event-stream")]

    async def handler(request: h11.Request, body: bytes, up: Upstream) -> Any:
        resume = dict(request.headers).get(b"last-event-id")
        if request.method == b"POST":  # a priming event, then the stream ends
            return 200, event_stream, b"id: e1\nretry: 10\ndata:\n\n"
        if request.method == b"GET" and resume == b"e1":
            return 200, event_stream, b"id: e2\ndata: " + json.dumps(answer).encode() + b"\n\n"
        return 405, [], b""

    async with serve_upstream(handler) as up:
        target = http_target("poller", up.port, "/mcp")
        async with open_transport(
            target, pool=pool, session_id="s-1", protocol_version="2025-11-25"
        ) as transport:
            await transport.send({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
            assert await response_to(transport, 1) == answer
    resumed = [r for r, _ in up.seen if dict(r.headers).get(b"last-event-id") == b"e1"]
    assert len(resumed) == 1
    assert dict(resumed[0].headers)[b"mcp-protocol-version"] == b"2025-11-25"


async def test_streamable_http_reads_a_json_lines_answer_as_it_comes(
    pool: ConnectionPool,
) -> None:
    """An ``application/json`` answer of one message per line (as some
    servers stream ``subscriptions/listen``) is read line by line: the
    first line reaches the caller before the rest is written."""
    heard = trio.Event()
    progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}
    answer = {"jsonrpc": "2.0", "id": 1, "result": {"content": []}}

    async def lines(stream: trio.SocketStream, conn: h11.Connection, _: h11.Request) -> None:
        head = h11.Response(status_code=200, headers=[(b"content-type", b"application/json")])
        first = json.dumps(progress).encode() + b"\n"
        await stream.send_all((conn.send(head) or b"") + (conn.send(h11.Data(data=first)) or b""))
        with trio.fail_after(10):
            await heard.wait()
        last = json.dumps(answer).encode()  # the last line has no line end
        await stream.send_all(
            (conn.send(h11.Data(data=last)) or b"") + (conn.send(h11.EndOfMessage()) or b"")
        )

    target = ScriptedMcpTarget(lines, call_closes=False)
    async with serve_raw(target.serve) as port:
        async with open_transport(
            http_target("lines", port, "/mcp"), pool=pool, session_id="s"
        ) as t:
            await t.send(call(1, "x", {}))
            with trio.fail_after(10):
                assert await t.receive() == progress
            heard.set()
            assert await response_to(t, 1) == answer


async def test_streamable_http_reads_a_json_answer_over_many_lines_whole(
    pool: ConnectionPool,
) -> None:
    answer = {"jsonrpc": "2.0", "id": 1, "result": {"tools": []}}

    async def handler(request: h11.Request, body: bytes, up: Upstream) -> Any:
        return 200, [(b"content-type", b"application/json")], json.dumps(answer, indent=2).encode()

    async with serve_upstream(handler) as up:
        async with open_transport(
            http_target("pretty", up.port, "/mcp"), pool=pool, session_id="s"
        ) as t:
            await t.send({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
            assert await response_to(t, 1) == answer


async def test_streamable_http_expired_session(pool: ConnectionPool) -> None:
    async def handler(request: h11.Request, body: bytes, up: Upstream) -> Any:
        return 404, [], b"no such session"

    async with serve_upstream(handler) as up:
        target = http_target("forgetful", up.port, "/mcp")
        async with open_transport(target, pool=pool, session_id="gone") as transport:
            assert transport.session_id == "gone"
            # Nothing of the request was done: the session, not the request,
            # failed (the relay ends the client's session: 404).
            with pytest.raises(UpstreamSessionGone, match="upstream session expired"):
                await transport.send({"jsonrpc": "2.0", "id": 7, "method": "tools/list"})
            with trio.fail_after(5), pytest.raises(UpstreamSessionGone, match="session expired"):
                await transport.receive()
            with pytest.raises(UpstreamSessionGone, match="target forgetful: session expired"):
                await transport.send({"jsonrpc": "2.0", "id": 8, "method": "tools/list"})


async def test_streamable_http_upstream_that_is_down(pool: ConnectionPool) -> None:
    target = http_target("everything", free_port(), "/mcp")
    async with open_transport(target, pool=pool) as transport:
        with pytest.raises(UpstreamUnavailable, match=r"^target everything: ") as caught:
            await transport.send(initialize())
    assert caught.value.detail is not None and "refused" in caught.value.detail


async def test_streamable_http_failure_after_the_post_is_an_error_response(
    pool: ConnectionPool,
) -> None:
    async def handler(request: h11.Request, body: bytes, up: Upstream) -> Any:
        return 500, [(b"content-type", b"text/plain")], b"boom"

    async with serve_upstream(handler) as up:
        async with open_transport(http_target("broken", up.port, "/mcp"), pool=pool) as t:
            await t.send(initialize())
            answer = await response_to(t, 1)
    # Generic for the client: the upstream's body stays in the log.
    assert answer["error"]["message"] == "target broken: upstream protocol error"


# ---------------------------------------------------------------- legacy SSE


async def test_sse_against_server_everything(pool: ConnectionPool) -> None:
    async with everything("sse") as (port, _):
        target = McpTarget(name="everything", sse=HttpTarget(host=f"http://127.0.0.1:{port}/sse"))
        async with open_transport(target, pool=pool) as transport:
            await exercise(transport, version="2024-11-05")
            assert transport.endpoint.target.startswith("/message?sessionId=")  # type: ignore[attr-defined]
        assert pool.statistics().active == 0


async def test_sse_endpoint_on_another_origin_is_refused(pool: ConnectionPool) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        event = b"event: endpoint\ndata: http://elsewhere.example/message\n\n"
        await stream.send_all(b"%x\r\n%s\r\n" % (len(event), event))
        await trio.sleep_forever()

    async with serve_raw(handler) as port:
        target = McpTarget(name="sly", sse=HttpTarget(host=f"http://127.0.0.1:{port}/sse"))
        async with open_transport(target, pool=pool) as transport:
            with pytest.raises(UpstreamError, match=r"target sly: endpoint .* origin"):
                await transport.send(initialize())


async def test_sse_stream_that_ends_closes_the_transport(pool: ConnectionPool) -> None:
    async with everything("sse") as (port, proc):
        target = McpTarget(name="everything", sse=HttpTarget(host=f"http://127.0.0.1:{port}/sse"))
        async with open_transport(target, pool=pool) as transport:
            await transport.send(initialize("2024-11-05"))
            await response_to(transport, 1)
            proc.kill()
            with trio.fail_after(5), pytest.raises(TransportClosed, match=r"^target everything: "):
                await transport.receive()
            with pytest.raises(TransportClosed):
                await transport.send(INITIALIZED)


# ---------------------------------------------------------------- WebSocket


async def serve_mcp_websocket(seen: list[Any], request: trio_websocket.WebSocketRequest) -> None:
    seen.append((request.headers, request.proposed_subprotocols))
    if "mcp" not in request.proposed_subprotocols:
        await request.reject(400)
        return
    ws = await request.accept(subprotocol="mcp")
    while True:
        try:
            message = json.loads(await ws.get_message())
        except trio_websocket.ConnectionClosed:
            return
        if "id" not in message:
            continue
        method, params = message["method"], message.get("params", {})
        answer: Message = {"jsonrpc": "2.0", "id": message["id"]}
        if method == "initialize":
            answer["result"] = {
                "protocolVersion": params["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "ws-echo", "version": "0"},
            }
        elif method == "tools/list":
            answer["result"] = {"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}
        elif method == "tools/call":
            text = "Echo: " + params["arguments"]["message"]
            answer["result"] = {"content": [{"type": "text", "text": text}]}
        else:
            answer["error"] = {"code": -32601, "message": "method not found"}
        await ws.send_message(json.dumps(answer))


async def test_websocket_against_a_small_mcp_server(pool: ConnectionPool) -> None:
    seen: list[Any] = []
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(
                trio_websocket.serve_websocket,
                partial(serve_mcp_websocket, seen),
                "127.0.0.1",
                0,
                ssl_context=None,
            )
        )
        target = McpTarget(name="ws", websocket=HttpTarget(host=f"ws://127.0.0.1:{server.port}/"))
        async with open_transport(target, pool=pool) as transport:
            await exercise(transport)
        nursery.cancel_scope.cancel()
    headers, subprotocols = dict(seen[0][0]), seen[0][1]
    assert headers[b"authorization"] == b"Bearer T"
    assert list(subprotocols) == ["mcp"]
    assert b"mcp-session-id" not in headers


async def test_websocket_upstream_that_is_down(pool: ConnectionPool) -> None:
    target = McpTarget(
        name="ws", websocket=HttpTarget(host="127.0.0.1", port=free_port(), path="/")
    )
    async with open_transport(target, pool=pool) as transport:
        with pytest.raises(UpstreamUnavailable, match=r"^target ws: cannot connect"):
            await transport.send(initialize())
