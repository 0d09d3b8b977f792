"""The relay and the server connection, in memory, on a virtual clock.

The gateway's own HTTP server (``server/connection.py``) serves one end of a
``trio.testing.memory_stream_pair``; the test speaks HTTP/1.1 on the other
end through an h11 client. Behind the MCP endpoint (``relay/``), the target
is an in-memory ``McpTransport`` whose behaviour each test scripts. Time is
``autojump_clock``'s: timeouts fire at once, and no test sleeps.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h11
import pytest
import trio
import trio.testing

from agentgw.config.model import HttpLimits, McpTarget, StdioTarget
from agentgw.mcp.federation import McpRoute
from agentgw.mcp.session_token import SessionCodec
from agentgw.policy.pipeline import RequestView, RoutePolicies
from agentgw.relay.context import RequestContext
from agentgw.relay.endpoint import McpEndpoint
from agentgw.relay.manager import SessionManager
from agentgw.relay.sessions import SessionDirectory
from agentgw.server.connection import ClientConnection, ServerRequest
from agentgw.upstream.mcp.base import McpTransport
from agentgw.upstream.pool import ConnectionPool

Message = dict[str, Any]
# What the scripted target does with a request: answer it (a message, or a
# list of messages: notifications first, the response last), or None to
# leave it unanswered.
Script = Callable[[Message], Message | list[Message] | None]


@attrs.define(eq=False)
class MemoryTarget:
    """An MCP target in memory: it answers ``initialize`` and hands every
    other request to ``script``. ``seen`` keeps every message sent to it."""

    script: Script
    seen: list[Message] = attrs.field(factory=list)
    opened: int = 0
    closed: int = 0

    def answer(self, message: Message) -> list[Message]:
        if message.get("method") == "initialize":
            result = {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "memory", "version": "1"},
            }
            return [{"jsonrpc": "2.0", "id": message["id"], "result": result}]
        if "id" not in message or "method" not in message:
            return []
        answered = self.script(message)
        if answered is None:
            return []
        return answered if isinstance(answered, list) else [answered]


@attrs.define(eq=False)
class MemoryTransport:
    target: str
    of: MemoryTarget
    send_channel: trio.MemorySendChannel[Message]
    receive_channel: trio.MemoryReceiveChannel[Message]
    session_id: str | None = None
    keep_upstream_session: bool = False

    async def send(self, message: Message, *, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        self.of.seen.append(message)
        for out in self.of.answer(message):
            await self.send_channel.send(out)

    async def receive(self) -> Message:
        return await self.receive_channel.receive()


def opener_for(target: MemoryTarget) -> Any:
    @asynccontextmanager
    async def open_memory(config: McpTarget, **_: Any) -> AsyncIterator[McpTransport]:
        send, receive = trio.open_memory_channel[Message](16)
        target.opened += 1
        try:
            yield MemoryTransport(config.name, target, send, receive)
        finally:
            target.closed += 1

    return open_memory


ROUTE = McpRoute(
    targets=(McpTarget("mem", stdio=StdioTarget("unused")),),
    prefix=False,
    prefix_uris=False,
    fail_open=False,
    stateful=True,
)


@asynccontextmanager
async def gateway(target: MemoryTarget, response_timeout: float = 5.0) -> AsyncIterator[Client]:
    """The server connection and the MCP endpoint, in memory; yields a
    client connected to them."""
    manager = SessionManager(ConnectionPool())
    directory = SessionDirectory(
        manager, SessionCodec.from_config(None), manager.pool, opener=opener_for(target)
    )
    endpoint = McpEndpoint(directory, response_timeout=response_timeout)

    async def handler(req: ServerRequest) -> None:
        view = RequestView(req.method, req.path, req.headers, req.host, req.client)
        await endpoint.handle(RequestContext(req, view, RoutePolicies()), ROUTE)

    client_end, server_end = trio.testing.memory_stream_pair()
    connection = ClientConnection(server_end, ("memory", 1), "memory", HttpLimits(), handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.serve)
        nursery.start_soon(connection.serve)
        yield Client(client_end)
        nursery.cancel_scope.cancel()


@attrs.define(eq=False)
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    def messages(self) -> list[Message]:
        if self.headers.get(b"content-type", b"").startswith(b"text/event-stream"):
            return [
                json.loads(line[5:])
                for line in self.body.decode().splitlines()
                if line.startswith("data:") and line[5:].strip()
            ]
        return [json.loads(self.body)]


@attrs.define(eq=False)
class Client:
    stream: trio.abc.Stream
    conn: h11.Connection = attrs.field(factory=lambda: h11.Connection(h11.CLIENT))
    session: bytes | None = None
    ids: int = 0

    async def send_request(self, message: Message) -> None:
        body = json.dumps(message).encode()
        headers = [
            (b"host", b"localhost"),
            (b"content-type", b"application/json"),
            (b"accept", b"application/json, text/event-stream"),
            (b"content-length", str(len(body)).encode()),
        ]
        if self.session is not None:
            headers.append((b"mcp-session-id", self.session))
        data = self.conn.send(h11.Request(method="POST", target="/mcp", headers=headers))
        await self.stream.send_all((data or b"") + (self.conn.send(h11.Data(data=body)) or b""))
        await self.stream.send_all(self.conn.send(h11.EndOfMessage()) or b"")

    async def read_head(self) -> h11.Response:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                return event
            else:
                raise AssertionError(f"unexpected {event!r}")

    async def read_rest(self, head: h11.Response) -> Response:
        body = b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self.conn.start_next_cycle()
                return Response(head.status_code, dict(head.headers), body)
            else:
                raise AssertionError(f"unexpected {event!r}")

    async def post(self, message: Message) -> Response:
        await self.send_request(message)
        return await self.read_rest(await self.read_head())

    async def call(self, method: str, params: Message | None = None) -> Response:
        self.ids += 1
        return await self.post(
            {"jsonrpc": "2.0", "id": self.ids, "method": method, "params": params or {}}
        )

    async def initialize(self) -> None:
        params = {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "memory", "version": "1"},
        }
        answer = await self.call("initialize", params)
        assert answer.status == 200, answer
        self.session = answer.headers[b"mcp-session-id"]
        sent = await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert sent.status == 202


def echo(message: Message) -> Message:
    return {"jsonrpc": "2.0", "id": message["id"], "result": {"echo": message["params"]}}


async def test_a_call_goes_through_and_its_answer_comes_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    target = MemoryTarget(echo)
    async with gateway(target) as client:
        await client.initialize()
        answer = await client.call("tools/call", {"name": "x", "arguments": {"a": 1}})
        assert answer.status == 200
        (message,) = answer.messages()
        assert message["id"] == client.ids
        assert message["result"]["echo"] == {"name": "x", "arguments": {"a": 1}}
        # The target saw the call under an id of the gateway's own.
        (sent,) = [m for m in target.seen if m.get("method") == "tools/call"]
        assert sent["params"] == {"name": "x", "arguments": {"a": 1}}


async def test_progress_comes_before_the_answer_on_one_sse_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def with_progress(message: Message) -> list[Message]:
        token = message["params"]["_meta"]["progressToken"]
        progress = {
            "jsonrpc": "2.0",
            "method": "notifications/progress",
            "params": {"progressToken": token, "progress": 1},
        }
        return [progress, echo(message)]

    async with gateway(MemoryTarget(with_progress)) as client:
        await client.initialize()
        params = {"name": "x", "_meta": {"progressToken": "p1"}}
        answer = await client.call("tools/call", params)
        assert answer.headers[b"content-type"].startswith(b"text/event-stream")
        progress, final = answer.messages()
        assert progress["params"]["progressToken"] == "p1"
        assert final["id"] == client.ids and "result" in final


async def test_a_target_that_never_answers_gets_a_timeout_and_a_cancellation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    target = MemoryTarget(lambda message: None)
    async with gateway(target, response_timeout=2.0) as client:
        await client.initialize()
        start = trio.current_time()
        answer = await client.call("tools/call", {"name": "slow"})
        assert trio.current_time() - start == pytest.approx(2.0, abs=0.1)
        (message,) = answer.messages()
        assert message["error"]["message"] == "target mem: upstream timeout"
        # The target is told the call is over, for the id it was given.
        (call,) = [m for m in target.seen if m.get("method") == "tools/call"]
        cancels = [m for m in target.seen if m.get("method") == "notifications/cancelled"]
        assert [c["params"]["requestId"] for c in cancels] == [call["id"]]


async def test_a_client_that_leaves_mid_call_cancels_the_call_upstream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    target = MemoryTarget(lambda message: None)
    async with gateway(target, response_timeout=300.0) as client:
        await client.initialize()
        await client.send_request(
            {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "slow"}}
        )
        await client.read_head()  # the call is on its way: a stream of keep-alives
        with trio.fail_after(1):
            while not any(m.get("method") == "tools/call" for m in target.seen):
                await trio.sleep(0.001)
        left = trio.current_time()
        await client.stream.aclose()
        with trio.fail_after(1):
            while not any(m.get("method") == "notifications/cancelled" for m in target.seen):
                await trio.sleep(0.001)
        assert trio.current_time() - left < 0.1


async def test_an_unknown_session_is_404_and_a_missing_one_400(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with gateway(MemoryTarget(echo)) as client:
        answer = await client.call("tools/list")
        assert answer.status == 400
        client.session = b"not-a-token"
        answer = await client.call("tools/list")
        assert answer.status == 404
        assert answer.messages()[0]["error"]["code"] == -32001


async def test_bad_json_is_a_parse_error_and_the_connection_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with gateway(MemoryTarget(echo)) as client:
        await client.initialize()
        body = b'{"jsonrpc": "2.0", "id": 1, "method": '
        headers = [
            (b"host", b"localhost"),
            (b"content-type", b"application/json"),
            (b"accept", b"application/json, text/event-stream"),
            (b"content-length", str(len(body)).encode()),
            (b"mcp-session-id", client.session or b""),
        ]
        out = client.conn.send(h11.Request(method="POST", target="/mcp", headers=headers)) or b""
        out += client.conn.send(h11.Data(data=body)) or b""
        await client.stream.send_all(out + (client.conn.send(h11.EndOfMessage()) or b""))
        answer = await client.read_rest(await client.read_head())
        assert answer.status == 400
        assert answer.messages()[0]["error"] == {"code": -32700, "message": "parse error"}
        # The same connection serves the next request.
        again = await client.call("tools/call", {"name": "x"})
        assert again.status == 200 and "result" in again.messages()[0]
