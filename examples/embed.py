"""Embed agentgw in a Trio program: start, call, shut down gracefully.

Run: python examples/embed.py
"""

from __future__ import annotations

import trio

import agentgw

CONFIG = """
binds:
- port: 0              # any free port; serve() reports the one it bound
  address: 127.0.0.1
  listeners:
  - name: embedded
    routes:
    - name: hello
      policies:
        directResponse: {status: 200, body: "hello from agentgw"}
"""


async def main() -> None:
    gw = agentgw.Gateway(agentgw.parse_config(CONFIG))
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(gw.serve)
        port = addresses[0].port
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := await stream.receive_some(4096):
            reply += chunk
        await stream.aclose()
        status = reply.split(b" ", 2)[1].decode()
        print(status, reply.split(b"\r\n\r\n", 1)[1].decode())
        gw.shutdown()  # graceful: serve() returns once in-flight requests finish


if __name__ == "__main__":
    trio.run(main)
