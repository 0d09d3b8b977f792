"""Hot reload of ``agentgw -f``: the gateway as a real process, its config file
rewritten under it (valid, invalid, listener-changing) while an MCP session
with a stdio target, a legacy SSE session and a proxied SSE stream stay
open; SIGHUP; ``--workers 2``."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import h11
import trio
import yaml
from mcp import Client as McpClient
from mcp import types

from tests.e2e.support import Client, Upstream, gateway_subprocess, request, serve_upstream
from tests.e2e.test_mcp_gateway import DEMO, PEER, _call, _children, _initialize, stdio
from tests.e2e.test_metrics import scrape, value

KEY = "11" * 32
OTHER_KEY = "22" * 32


async def upstream_handler(req: h11.Request, body: bytes, up: Upstream) -> Any:
    if req.target.startswith(b"/events"):

        async def events() -> AsyncIterator[bytes]:
            n = 0
            while True:
                yield f"data: {n}\n\n".encode()
                n += 1
                await trio.sleep(0.1)

        return 200, [(b"content-type", b"text/event-stream")], events()
    return 200, [], b"upstream " + req.target


def proxy_route(name: str, prefix: str, upstream: int) -> dict[str, Any]:
    return {
        "name": name,
        "matches": [{"path": {"pathPrefix": prefix}}],
        "backends": [{"host": f"127.0.0.1:{upstream}"}],
    }


def proxy_bind(port: int, upstream: int) -> dict[str, Any]:
    routes = [proxy_route("all", "/", upstream)]
    return {"port": port, "address": "127.0.0.1", "listeners": [{"routes": routes}]}


def settings(stats: int, key: str = KEY) -> dict[str, Any]:
    return {
        "session": {"key": key},
        "statsAddr": f"127.0.0.1:{stats}",
        "adminAddr": "off",
        "readinessAddr": "off",
    }


def write(path: Path, doc: dict[str, Any] | str) -> None:
    """Replace the file as editors do: a new file renamed over the old."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, path)


async def free_ports(count: int) -> list[int]:
    """Ports that were free a moment ago, all different."""
    socks = []
    for _ in range(count):
        sock = trio.socket.socket()
        await sock.bind(("127.0.0.1", 0))
        socks.append(sock)
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def stderr(proc: Any) -> str:
    return bytes(proc.stderr_data).decode(errors="replace")


async def wait_for(proc: Any, text: str, count: int = 1, timeout: float = 15) -> None:
    with trio.fail_after(timeout):
        while stderr(proc).count(text) < count:
            await trio.sleep(0.05)


async def status_of(port: int, path: str) -> int | None:
    """The status of a GET, or None if the port refuses connections."""
    try:
        return (await request(port, "GET", path)).status
    except OSError:
        return None


async def wait_for_status(port: int, path: str, status: int | None) -> None:
    with trio.fail_after(15):
        while await status_of(port, path) != status:
            await trio.sleep(0.1)


async def _sampling(context: Any, params: types.CreateMessageRequestParams) -> Any:
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text="x"), model="m"
    )


@asynccontextmanager
async def sse_stream(port: int, path: str) -> AsyncIterator[list[bytes]]:
    """An SSE stream, read in the background: yields its events so far
    (``<closed>`` last once it ends)."""
    client = Client(await trio.open_tcp_stream("127.0.0.1", port))
    headers = [(b"host", b"127.0.0.1"), (b"accept", b"text/event-stream")]
    await client.send(h11.Request(method="GET", target=path, headers=headers))
    await client.send(h11.EndOfMessage())
    head = await client.next_event()
    assert isinstance(head, h11.Response) and head.status_code == 200, head
    events: list[bytes] = []

    async def read() -> None:
        buffer = b""
        while isinstance(ev := await client.next_event(), h11.Data):
            buffer += ev.data
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                events.append(event)
        events.append(b"<closed>")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        yield events
        nursery.cancel_scope.cancel()
    await client.aclose()


@attrs.define
class LegacySession:
    """An MCP client of the legacy HTTP+SSE transport, by hand: answers come
    on the one long SSE stream."""

    port: int
    endpoint: str
    events: list[bytes]
    next_id: int = 1

    async def send(self, message: dict[str, Any]) -> None:
        headers = [(b"content-type", b"application/json")]
        resp = await request(
            self.port, "POST", self.endpoint, headers=headers, body=json.dumps(message).encode()
        )
        assert resp.status == 202, resp.body

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        msg_id = self.next_id
        await self.send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        with trio.fail_after(10):
            while True:
                for event in self.events:
                    assert event != b"<closed>", "the SSE stream ended"
                    data = event.split(b"data: ", 1)[-1]
                    if data.startswith(b"{") and json.loads(data).get("id") == msg_id:
                        answer: dict[str, Any] = json.loads(data)
                        return answer
                await trio.sleep(0.02)


@asynccontextmanager
async def legacy_session(port: int, path: str) -> AsyncIterator[LegacySession]:
    async with sse_stream(port, path) as events:
        with trio.fail_after(10):
            while not events:
                await trio.sleep(0.02)
        assert events[0].startswith(b"event: endpoint\ndata: "), events[0]
        endpoint = events[0].rsplit(b"data: ", 1)[1].decode()
        session = LegacySession(port, endpoint, events)
        init = await session.call(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "legacy", "version": "1"},
            },
        )
        assert "result" in init, init
        await session.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        yield session


async def test_reload_valid_invalid_and_listener_changing_configs_while_sessions_stay_open(
    tmp_path: Path,
) -> None:
    main, removed, added, stats = await free_ports(4)
    path = tmp_path / "config.yaml"
    async with serve_upstream(upstream_handler) as up:
        mcp_route = {
            "name": "mcp",
            "matches": [{"path": {"pathPrefix": "/mcp"}}, {"path": {"pathPrefix": "/sse"}}],
            "backends": [{"mcp": {"targets": [stdio("demo", DEMO)]}}],
        }

        def config(*extra: dict[str, Any], key: str = KEY, last: int = removed) -> dict[str, Any]:
            routes = [mcp_route, proxy_route("events", "/events", up.port), *extra]
            first = {"port": main, "address": "127.0.0.1", "listeners": [{"routes": routes}]}
            return {
                "binds": [first, proxy_bind(last, up.port)],
                "config": settings(stats, key),
            }

        write(path, config())
        async with gateway_subprocess("-f", str(path)) as (proc, _):
            assert await status_of(removed, "/x") == 200
            url = f"http://127.0.0.1:{main}"
            async with (
                McpClient(f"{url}/mcp", sampling_callback=_sampling) as session,
                legacy_session(main, "/sse") as legacy,
                sse_stream(main, "/events") as events,
            ):
                stdio_children = set(_children(proc.pid))
                # One demo server each: the legacy session's, and for the
                # 2026-07-28 client the route's native session's (the demo
                # speaks 2026-07-28: the shared session opens no child for it).
                assert len(stdio_children) == 2

                async def all_alive(tag: str) -> None:
                    seen = len(events)
                    answer = await session.call_tool("echo", {"message": f"s-{tag}"})
                    assert f"s-{tag}" in answer.content[0].text
                    reply = await legacy.call(
                        "tools/call", {"name": "echo", "arguments": {"message": f"l-{tag}"}}
                    )
                    assert f"l-{tag}" in json.dumps(reply["result"])
                    with trio.fail_after(5):
                        while len(events) < seen + 2:
                            await trio.sleep(0.05)
                    assert b"<closed>" not in events

                await all_alive("start")
                assert await status_of(main, "/extra") == 404

                # 1. A valid config: a new route.
                write(path, config(proxy_route("extra", "/extra", up.port)))
                await wait_for_status(main, "/extra", 200)
                await wait_for(proc, "config reloaded")
                await all_alive("valid")

                # 2. Broken YAML: the running config stays.
                write(path, "binds: [\n  {port: 1\n")
                await wait_for(proc, "config reload failed")
                assert f"error agentgw.app: config reload: {path}:3:" in stderr(proc)
                assert await status_of(main, "/extra") == 200
                await all_alive("broken")

                # 3. A semantic error, twice over: each one logged with its path.
                bad = config(proxy_route("extra", "/extra", up.port))
                bad["binds"][0]["listeners"][0]["routes"][2]["bogus"] = 1
                bad["binds"][1]["listeners"][0]["routes"][0]["backends"][0]["host"] = "nowhere"
                write(path, bad)
                await wait_for(proc, "config reload failed", count=2)
                log = stderr(proc)
                assert "config reload: binds[0].listeners[0].routes[2].bogus: unknown key" in log
                assert "config reload: binds[1].listeners[0].routes[0].backends[0].host:" in log
                assert await status_of(main, "/extra") == 200
                await all_alive("semantic")

                # 4. Listeners: one bind goes, one comes; /extra goes; a key
                # read at start-up only changes (a warning, and no effect).
                write(path, config(key=OTHER_KEY, last=added))
                await wait_for_status(added, "/x", 200)
                await wait_for(proc, "config reloaded", count=2)
                assert await status_of(removed, "/x") is None
                assert await status_of(main, "/extra") == 404
                assert "config reload: config.session.key changed" in stderr(proc)
                assert OTHER_KEY not in stderr(proc)
                await all_alive("listeners")  # the old key still opens the session

                assert set(_children(proc.pid)) == stdio_children  # no session restarted
                samples = await scrape(stats)
                assert value(samples, "agentgw_config_reload_total", result="success") == 2
                assert value(samples, "agentgw_config_reload_total", result="failure") == 2
                assert value(samples, "agentgateway_config_synchronized") == 1
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(15):
                assert await proc.wait() == 0


async def test_sighup_reloads_the_file_and_an_inline_config_has_nothing_to_reload(
    tmp_path: Path,
) -> None:
    (stats,) = await free_ports(1)
    path = tmp_path / "config.json"
    async with serve_upstream(upstream_handler) as up:
        config = {"binds": [proxy_bind(0, up.port)], "config": settings(stats)}
        path.write_text(json.dumps(config))
        async with gateway_subprocess("-f", str(path)) as (proc, ports):
            await wait_for(proc, "watching the config file")
            proc.send_signal(signal.SIGHUP)  # the file did not change: only SIGHUP reloads
            await wait_for(proc, "config reloaded")
            proc.send_signal(signal.SIGHUP)
            await wait_for(proc, "config reloaded", count=2)
            assert await status_of(ports[0], "/x") == 200
            samples = await scrape(stats)
            assert value(samples, "agentgw_config_reload_total", result="success") == 2
        inline = json.dumps({"binds": [proxy_bind(0, up.port)], "config": settings(0)})
        async with gateway_subprocess("-c", inline) as (proc, ports):
            proc.send_signal(signal.SIGHUP)
            await wait_for(proc, "reload asked, but the config is not from a file")
            assert await status_of(ports[0], "/x") == 200
            assert proc.returncode is None


async def test_a_configmap_update_is_picked_up(tmp_path: Path) -> None:
    """The kubelet's way: ``config.yaml -> ..data/config.yaml``, and a new
    ``..data`` symlink renamed over the old one."""
    volume = tmp_path / "volume"
    volume.mkdir()
    async with serve_upstream(upstream_handler) as up:
        first = {"binds": [proxy_bind(0, up.port)], "config": settings(0)}
        first["binds"][0]["listeners"][0]["routes"] = [proxy_route("a", "/a", up.port)]
        second = json.loads(json.dumps(first))
        second["binds"][0]["listeners"][0]["routes"].append(proxy_route("b", "/b", up.port))
        for stamp, doc in (("..2024_01", first), ("..2024_02", second)):
            (volume / stamp).mkdir()
            (volume / stamp / "config.yaml").write_text(yaml.safe_dump(doc))
        os.symlink("..2024_01", volume / "..data")
        os.symlink("..data/config.yaml", volume / "config.yaml")
        async with gateway_subprocess("-f", str(volume / "config.yaml")) as (proc, ports):
            await wait_for(proc, "watching the config file")
            assert await status_of(ports[0], "/b") == 404
            os.symlink("..2024_02", volume / "..data_tmp")
            os.replace(volume / "..data_tmp", volume / "..data")
            await wait_for_status(ports[0], "/b", 200)
            assert await status_of(ports[0], "/a") == 200


async def test_every_worker_reloads(tmp_path: Path) -> None:
    main, added, stats = await free_ports(3)
    path = tmp_path / "config.yaml"
    mcp = {
        "name": "mcp",
        "matches": [{"path": {"pathPrefix": "/mcp"}}],
        "backends": [{"mcp": {"targets": [stdio("paged", PEER)]}}],
    }
    async with serve_upstream(upstream_handler) as up:

        def config(*extra: dict[str, Any]) -> dict[str, Any]:
            first = {"port": main, "address": "127.0.0.1", "listeners": [{"routes": [mcp]}]}
            return {"binds": [first, *extra], "config": settings(stats)}

        write(path, config())
        env = {**os.environ, "TMPDIR": str(tmp_path)}
        async with gateway_subprocess("-f", str(path), "--workers", "2", env=env) as (proc, _):
            await wait_for(proc, "watching the config file", count=2)
            token = await _initialize(main)

            # Each worker sees the change and opens the new port.
            write(path, config(proxy_bind(added, up.port)))
            await wait_for(proc, f"bind/{added}: listening on", count=2)
            await wait_for(proc, "config reloaded", count=2)
            for i in range(6):  # new connections: both workers answer
                assert await status_of(added, f"/{i}") == 200
                status, body = await _call(main, token, "echo", {"message": f"m{i}"})
                assert status == 200 and f"paged echo: m{i}".encode() in body

            # SIGHUP to the supervisor reaches every worker.
            proc.send_signal(signal.SIGHUP)
            await wait_for(proc, "config reloaded", count=4)
            assert proc.returncode is None

            # A port 0 bind cannot be shared: every worker refuses the config.
            write(path, config(proxy_bind(added, up.port), proxy_bind(0, up.port)))
            await wait_for(proc, "binds[2].port: --workers needs fixed ports", count=2)
            samples = await scrape(stats)
            assert value(samples, "agentgw_config_reload_total", result="success") == 4
            assert value(samples, "agentgw_config_reload_total", result="failure") == 2
            assert await status_of(added, "/still") == 200
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(15):
                assert await proc.wait() == 0
