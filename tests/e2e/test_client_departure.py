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

import h11
import pytest
import trio

from tests.e2e.support import (
    ScriptedMcpTarget,
    initialize_message,
    request,
    run_gateway,
    serve_raw,
)
from tests.e2e.test_mcp_gateway import ACCEPT, JSON_CT, mcp_config


@pytest.mark.parametrize("how", ["reset", "close"])
async def test_a_departing_client_closes_the_upstream_sse_answer(how: str) -> None:
    answering = trio.Event()

    async def never_ending_answer(
        stream: trio.SocketStream, conn: h11.Connection, _: h11.Request
    ) -> None:
        """Start an SSE answer and say nothing more."""
        head = h11.Response(status_code=200, headers=[(b"content-type", b"text/event-stream")])
        await stream.send_all(conn.send(head) or b"")
        await stream.send_all(conn.send(h11.Data(data=b": started\n\n")) or b"")
        answering.set()

    target = ScriptedMcpTarget(never_ending_answer)
    async with serve_raw(target.serve) as upstream_port:
        config = mcp_config(
            {"name": "silent", "mcp": {"host": f"http://127.0.0.1:{upstream_port}/mcp"}}
        )
        async with run_gateway(config) as (_, port):
            init = json.dumps(initialize_message()).encode()
            answer = await request(port, "POST", "/mcp", headers=[ACCEPT, JSON_CT], body=init)
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
                await answering.wait()
            if how == "reset":  # as a killed process leaves it
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            left = trio.current_time()
            client.close()
            with trio.fail_after(5):
                await target.call_closed.wait()
            assert target.call_closed_at is not None
            assert target.call_closed_at - left < 0.1
