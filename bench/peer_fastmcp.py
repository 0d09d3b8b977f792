"""Serve a FastMCP proxy of an MCP server over Streamable HTTP: a peer for bench/.

Run with the python of bench/.peers/fastmcp (bench/peers.py installs it),
never with agentgw's: that venv has FastMCP and its MCP SDK, agentgw's has not.

    python bench/peer_fastmcp.py --upstream http://127.0.0.1:8001/mcp --port 8002 \
        [--session reuse|per-request] [--json-response]

`--session per-request` is FastMCP's default: `create_proxy(url, mode="legacy")`
builds a fresh upstream client, and so a fresh upstream session, for every
request. `--session reuse` (the default here, the fastest setting FastMCP
offers) connects one `fastmcp.Client(url, mode="legacy")` first and passes the
connected client to `create_proxy`, which then sends every request on that one
session. `mode="legacy"` pins the 2025 `initialize` handshake: the bench
upstream speaks no 2026 `server/discover`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from fastmcp import Client
from fastmcp.server import create_proxy


async def serve(upstream: str, port: int, session: str, json_response: bool) -> None:
    if session == "per-request":
        proxy = create_proxy(upstream, mode="legacy")
        await _run(proxy, port, json_response)
        return
    async with Client(upstream, mode="legacy") as client:
        proxy = create_proxy(client)
        await _run(proxy, port, json_response)


async def _run(proxy: Any, port: int, json_response: bool) -> None:
    await proxy.run_http_async(
        show_banner=False,
        transport="http",
        host="127.0.0.1",
        port=port,
        path="/mcp",
        log_level="warning",  # no access log line per request
        json_response=json_response,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--upstream", required=True, help="the proxied server's MCP URL")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--session", choices=("reuse", "per-request"), default="reuse")
    parser.add_argument(
        "--json-response", action="store_true", help="answer application/json, not SSE"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args.upstream, args.port, args.session, args.json_response))


if __name__ == "__main__":
    main()
