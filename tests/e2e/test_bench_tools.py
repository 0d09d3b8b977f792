"""bench/'s own network pieces over real loopback sockets: the `floor` relay and
the soak's reading of agentgw's task gauge."""

from __future__ import annotations

from functools import partial
from typing import Any

import h11
import trio

from bench.floor import relay
from bench.scenario_soak import scrape_tasks
from tests.support import Upstream, echo_handler, free_port, open_client, serve_upstream


async def test_floor_relays_each_client_over_one_kept_alive_upstream_connection() -> None:
    async with serve_upstream(echo_handler) as up, trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, partial(relay, up.port), 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        for client_no in range(2):
            async with open_client(port) as client:
                for i in range(3):
                    body = f"call {client_no}.{i}".encode()
                    headers = [(b"mcp-session-id", b"s-1"), (b"content-type", b"application/json")]
                    resp = await client.request("POST", "/mcp", headers=headers, body=body)
                    assert (resp.status, resp.body) == (200, b"echo:" + body)
        assert (up.connections, up.requests) == (2, 6)
        request, _ = up.seen[-1]
        assert (b"mcp-session-id", b"s-1") in list(request.headers)
        nursery.cancel_scope.cancel()


async def metrics_handler(request: h11.Request, body: bytes, up: Upstream) -> Any:
    if request.target != b"/metrics":
        return 404, [], b""
    text = (
        b"# HELP agentgw_tasks Live Trio tasks in the gateway process\n"
        b"# TYPE agentgw_tasks gauge\n"
        b"agentgw_tasks 42.0\n"
        b"agentgw_tasks_other 7.0\n"
    )
    return 200, [(b"content-type", b"text/plain; version=0.0.4")], text


async def test_the_soak_reads_the_task_gauge_or_says_there_is_none() -> None:
    async with serve_upstream(metrics_handler) as up:
        assert await trio.to_thread.run_sync(scrape_tasks, up.port) == 42.0
    async with serve_upstream(echo_handler) as up:
        # An answer without the gauge.
        assert await trio.to_thread.run_sync(scrape_tasks, up.port) is None
    # Nothing listening.
    assert await trio.to_thread.run_sync(scrape_tasks, await free_port()) is None
