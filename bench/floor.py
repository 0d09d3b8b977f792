"""`floor`: the least a Trio + h11 relay can do, to measure agentgw against.

Per accepted client connection, one kept-alive upstream connection. Read a
whole request (head and body) with h11, forward it, read the whole response,
send it back; then the next request. No routing, policy, logging, limits or
timeouts: what agentgw's design costs at the least. It buffers whole
messages, so it cannot relay a stream that does not end (an SSE GET).

Usage: python -m bench.floor PORT UPSTREAM_PORT  (both on 127.0.0.1)
"""

from __future__ import annotations

import functools
import sys

import h11
import trio

HOST = "127.0.0.1"
READ_SIZE = 65536


async def read_message(stream: trio.SocketStream, conn: h11.Connection) -> list[h11.Event] | None:
    """The events of one message up to its end, or None when the peer closed."""
    events: list[h11.Event] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(READ_SIZE))
        elif isinstance(event, h11.ConnectionClosed) or not isinstance(event, h11.Event):
            return None  # closed, or PAUSED: a peer that sent more than one message
        else:
            events.append(event)
            if isinstance(event, h11.EndOfMessage):
                return events


async def relay(upstream_port: int, client: trio.SocketStream) -> None:
    down, up = h11.Connection(h11.SERVER), h11.Connection(h11.CLIENT)
    try:
        async with client, await trio.open_tcp_stream(HOST, upstream_port) as upstream:
            while True:
                request = await read_message(client, down)
                if request is None:
                    return
                await upstream.send_all(b"".join(up.send(e) or b"" for e in request))
                response = await read_message(upstream, up)
                if response is None:
                    return
                await client.send_all(b"".join(down.send(e) or b"" for e in response))
                if h11.MUST_CLOSE in (down.our_state, up.our_state, up.their_state):
                    return
                down.start_next_cycle()
                up.start_next_cycle()
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return


def main(argv: list[str]) -> None:
    port, upstream_port = int(argv[0]), int(argv[1])
    trio.run(
        functools.partial(trio.serve_tcp, functools.partial(relay, upstream_port), port, host=HOST)
    )


if __name__ == "__main__":
    main(sys.argv[1:])
