"""A client that leaves takes its upstream exchange with it.

The target answers a ``tools/call`` with an SSE stream that never ends. When
the client closes its connection, the gateway must close the upstream
connection that carries that answer, within 100 ms (issue 10): the answer
is read in the client's request, not in a task of the session's.
"""

from __future__ import annotations

import json
import socket
import struct

import attrs
import h11
import pytest
import trio

from tests.e2e.support import request, run_gateway, serve_raw
from tests.e2e.test_mcp_gateway import ACCEPT, JSON_CT, mcp_config


@attrs.define
class SilentSseTarget:
    """A Streamable HTTP target whose ``tools/call`` answers stay open."""

    call_started: trio.Event = attrs.field(factory=trio.Event)
    call_closed_at: float | None = None
    call_closed: trio.Event = attrs.field(factory=trio.Event)

    async def serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                conn.receive_data(data)
                continue
            if not isinstance(event, h11.Request):
                return
            body = b""
            while not isinstance(ev := conn.next_event(), h11.EndOfMessage):
                if ev is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(ev, h11.Data):
                    body += ev.data
            if event.method != b"POST":
                await stream.send_all(conn.send(h11.Response(status_code=405, headers=[])) or b"")
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                conn.start_next_cycle()
                continue
            message = json.loads(body)
            if message.get("method") == "tools/call":
                await self._never_ending_answer(stream, conn)
                return
            if "id" not in message:
                await stream.send_all(conn.send(h11.Response(status_code=202, headers=[])) or b"")
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            else:
                result = {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": "silent", "version": "1"},
                }
                answer = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result})
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(answer)).encode()),
                ]
                await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
                await stream.send_all(conn.send(h11.Data(data=answer.encode())) or b"")
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            conn.start_next_cycle()

    async def _never_ending_answer(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        head = h11.Response(status_code=200, headers=[(b"content-type", b"text/event-stream")])
        await stream.send_all(conn.send(head) or b"")
        await stream.send_all(conn.send(h11.Data(data=b": started\n\n")) or b"")
        self.call_started.set()
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
        self.call_closed_at = trio.current_time()
        self.call_closed.set()


@pytest.mark.parametrize("how", ["reset", "close"])
async def test_a_departing_client_closes_the_upstream_sse_answer(how: str) -> None:
    target = SilentSseTarget()
    async with serve_raw(target.serve) as upstream_port:
        config = mcp_config(
            {"name": "silent", "mcp": {"host": f"http://127.0.0.1:{upstream_port}/mcp"}}
        )
        async with run_gateway(config) as (_, port):
            init = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"},
                },
            }
            answer = await request(
                port, "POST", "/mcp", headers=[ACCEPT, JSON_CT], body=json.dumps(init).encode()
            )
            assert answer.status == 200
            sid = answer.header(b"mcp-session-id")
            call = json.dumps(
                {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "x"}}
            ).encode()
            client = trio.socket.socket()
            await client.connect(("127.0.0.1", port))
            head = (
                b"POST /mcp HTTP/1.1\r\nhost: localhost\r\naccept: application/json, "
                b"text/event-stream\r\ncontent-type: application/json\r\nmcp-session-id: "
                + sid
                + b"\r\ncontent-length: "
                + str(len(call)).encode()
                + b"\r\n\r\n"
            )
            await client.send(head + call)
            with trio.fail_after(10):
                await target.call_started.wait()
            if how == "reset":  # as a killed process leaves it
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            left = trio.current_time()
            client.close()
            with trio.fail_after(5):
                await target.call_closed.wait()
            assert target.call_closed_at is not None
            assert target.call_closed_at - left < 0.1
