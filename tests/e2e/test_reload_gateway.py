"""``Gateway.reload`` in this process, with real sockets, upstreams and stdio
targets: what a new config changes at once, and what it leaves alone."""

from __future__ import annotations

import gc
import json
import logging
import os
import weakref
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
from mcp import Client as McpClient
from mcp.client.sse import sse_client

from agentgw.config import config_from_dict
from tests.e2e.support import (
    Client,
    Upstream,
    echo_handler,
    free_port,
    open_client,
    proxy_config,
    recording_mcp_upstream,
    request,
    run_gateway,
    serve_upstream,
)
from tests.e2e.test_mcp_gateway import (
    ACCEPT,
    JSON_CT,
    PEER,
    _call,
    _children,
    _initialize,
    _is_running,
    _read,
    mcp_config,
    stdio,
)
from tests.e2e.test_metrics import scrape, value, with_stats
from tests.e2e.test_security import IdentityProvider, fresh, good, jwt_auth, secured
from tests.e2e.test_tls_listener import https
from tests.test_jwt import token
from tests.tls_support import Pki, open_tls_client, tls_request


async def slow_handler(req: h11.Request, body: bytes, up: Upstream) -> Any:
    if req.target.endswith(b"/slow"):
        await trio.sleep(1.0)
        return 200, [], b"slow done"
    return 200, [], b"ok " + req.target


def bind(port: int, *prefixes: str, upstream: int, address: str = "127.0.0.1") -> dict[str, Any]:
    routes = [
        {
            "name": prefix.strip("/"),
            "matches": [{"path": {"pathPrefix": prefix}}],
            "backends": [{"host": f"127.0.0.1:{upstream}"}],
        }
        for prefix in prefixes
    ]
    return {"port": port, "address": address, "listeners": [{"name": "l", "routes": routes}]}


def binds(*items: dict[str, Any]) -> dict[str, Any]:
    return with_stats({"binds": list(items)})


async def _refused(port: int, host: str = "127.0.0.1") -> bool:
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError:
        return True
    await stream.aclose()
    return False


async def test_a_removed_route_stops_at_once_and_its_requests_in_flight_finish() -> None:
    async with serve_upstream(slow_handler) as up:
        config = binds(bind(0, "/keep", "/gone", upstream=up.port))
        async with run_gateway(config) as (gw, port):
            done: list[int] = []

            async def slow() -> None:
                done.append((await request(port, "GET", "/gone/slow")).status)

            async with open_client(port) as kept, trio.open_nursery() as nursery:
                assert (await kept.request("GET", "/gone/x")).status == 200
                nursery.start_soon(slow)
                with trio.fail_after(5):
                    while up.requests < 2:
                        await trio.sleep(0.01)
                new = config_from_dict(binds(bind(0, "/keep", upstream=up.port)))
                # port 0 binds are matched by their order: this one stays.
                assert await gw.reload(new)
                # The same keep-alive connection: its next request sees the new config.
                assert (await kept.request("GET", "/gone/x")).status == 404
                assert (await kept.request("GET", "/keep/x")).status == 200
                assert (await request(port, "GET", "/gone/x")).status == 404
            assert done == [200]  # the request in flight finished on the old route
            admin = gw.management_addresses["admin"][1]
            dump = json.loads((await request(admin, "GET", "/config_dump")).body)
            names = [r["name"] for r in dump["config"]["binds"][0]["listeners"][0]["routes"]]
            assert names == ["keep"]
            stats = gw.management_addresses["stats"][1]
            samples = await scrape(stats)
            assert value(samples, "agentgw_config_reload_total", result="success") == 1
            assert value(samples, "agentgateway_config_synchronized") == 1


async def test_binds_open_and_close_and_a_kept_port_keeps_its_socket() -> None:
    kept_port, gone_port, new_port = await free_port(), await free_port(), await free_port()
    async with serve_upstream(slow_handler) as up:
        first = binds(
            bind(kept_port, "/", upstream=up.port), bind(gone_port, "/", upstream=up.port)
        )
        async with run_gateway(first) as (gw, _):
            socket_before = gw._bind_slots[(kept_port, 0)].listeners[0]
            finished: list[Any] = []

            async def slow_on_the_removed_bind() -> None:
                finished.append(await request(gone_port, "GET", "/slow"))

            async with (
                open_client(kept_port) as on_kept,
                open_client(gone_port) as idle_on_gone,
                trio.open_nursery() as nursery,
            ):
                assert (await on_kept.request("GET", "/a")).status == 200
                assert (await idle_on_gone.request("GET", "/a")).status == 200
                nursery.start_soon(slow_on_the_removed_bind)
                with trio.fail_after(5):
                    while up.requests < 3:
                        await trio.sleep(0.01)
                second = binds(
                    bind(kept_port, "/", upstream=up.port), bind(new_port, "/", upstream=up.port)
                )
                assert await gw.reload(config_from_dict(second))
                assert gw._bind_slots[(kept_port, 0)].listeners[0] is socket_before
                assert await _refused(gone_port)
                assert (await request(new_port, "GET", "/b")).status == 200
                assert (await on_kept.request("GET", "/c")).status == 200  # same connection
                # The removed bind's idle connection is closed; its busy one finishes.
                with trio.fail_after(5):
                    assert await idle_on_gone.stream.receive_some(10) == b""
            assert [r.status for r in finished] == [200]
            assert finished[0].body == b"slow done"


async def test_a_bind_that_cannot_listen_fails_the_reload_and_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    taken = trio.socket.socket()
    await taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    async with serve_upstream(slow_handler) as up:
        config = binds(bind(0, "/keep", "/also", upstream=up.port))
        async with run_gateway(config) as (gw, port):
            new = binds(bind(0, "/keep", upstream=up.port), bind(busy, "/", upstream=up.port))
            with caplog.at_level(logging.ERROR, logger="agentgw.app"):
                assert not await gw.reload(config_from_dict(new))
            messages = [r.getMessage() for r in caplog.records]
            assert any(
                m.startswith("config reload: binds[1]: cannot listen: ") and "in use" in m
                for m in messages
            ), messages
            assert (await request(port, "GET", "/also/x")).status == 200  # unchanged
            samples = await scrape(gw.management_addresses["stats"][1])
            assert value(samples, "agentgw_config_reload_total", result="failure") == 1
            assert value(samples, "agentgateway_config_synchronized") == 0
    taken.close()


async def test_a_bind_moves_to_another_address_or_stays_if_it_cannot() -> None:
    port = await free_port()
    async with serve_upstream(slow_handler) as up:
        async with run_gateway(binds(bind(port, "/", upstream=up.port))) as (gw, _):
            moved = binds(bind(port, "/", upstream=up.port, address="127.0.0.2"))
            assert await gw.reload(config_from_dict(moved))
            assert await _refused(port)
            async with open_client_at("127.0.0.2", port) as client:
                assert (await client.request("GET", "/x")).status == 200
            # TEST-NET-3 is on no interface: the bind goes back where it was.
            nowhere = binds(bind(port, "/", upstream=up.port, address="203.0.113.7"))
            assert not await gw.reload(config_from_dict(nowhere))
            async with open_client_at("127.0.0.2", port) as client:
                assert (await client.request("GET", "/x")).status == 200


@asynccontextmanager
async def open_client_at(host: str, port: int) -> AsyncIterator[Client]:
    client = Client(await trio.open_tcp_stream(host, port))
    try:
        yield client
    finally:
        await client.aclose()


# ---------------------------------------------------------------- MCP sessions


def _starts(log: Path) -> list[str]:
    return [line for line in _read(log).splitlines() if line.startswith("pid ")]


async def test_sessions_keep_their_targets_and_unchanged_routes_keep_their_sessions(
    tmp_path: Path,
) -> None:
    log_a, log_b, log_b2 = tmp_path / "a.log", tmp_path / "b.log", tmp_path / "b2.log"
    config = mcp_config(stdio("paged", PEER, env={"PEER_LOG": str(log_a)}))
    routes = config["binds"][0]["listeners"][0]["routes"]
    other = json.loads(json.dumps(routes[0]))
    other["name"] = "b"
    other["matches"] = [{"path": {"pathPrefix": "/b"}}]
    other["backends"][0]["mcp"]["targets"][0]["stdio"]["env"] = {"PEER_LOG": str(log_b)}
    routes.append(other)
    async with run_gateway(config) as (gw, port):
        token_a = await _initialize(port)
        token_b = await _initialize_at(port, "/b")
        assert len(_starts(log_a)) == 1 and len(_starts(log_b)) == 1

        # /b gets a second target; /a is the same as before.
        changed = json.loads(json.dumps(config))
        targets = changed["binds"][0]["listeners"][0]["routes"][1]["backends"][0]["mcp"]["targets"]
        targets.append(stdio("second", PEER, env={"PEER_LOG": str(log_b2)}))
        assert await gw.reload(config_from_dict(changed))

        status, body = await _call(port, token_a, "echo", {"message": "a"})
        assert status == 200 and b"paged echo: a" in body
        # The old /b session keeps its one target: its tools are not prefixed.
        status, body = await _call_at(port, "/b", token_b, "echo", {"message": "b"})
        assert status == 200 and b"paged echo: b" in body, body
        # A new /b session has both targets, prefixed.
        token_new = await _initialize_at(port, "/b")
        status, body = await _call_at(port, "/b", token_new, "second_echo", {"message": "n"})
        assert status == 200 and b"paged echo: n" in body, body
        assert len(_starts(log_a)) == 1  # untouched
        assert len(_starts(log_b)) == 2 and len(_starts(log_b2)) == 1

        # A config equal to the running one changes nothing at all.
        children = set(_children(os.getpid()))
        assert await gw.reload(config_from_dict(changed))
        status, _ = await _call_at(port, "/b", token_new, "second_echo", {"message": "m"})
        assert status == 200
        assert set(_children(os.getpid())) == children

        # The old session drains on its own: a DELETE ends it and its child.
        old_child = _pid_in(log_b, 0)
        resp = await request(port, "DELETE", "/b", headers=[(b"mcp-session-id", token_b.encode())])
        assert resp.status == 200
        with trio.fail_after(10):
            while _is_running(old_child):
                await trio.sleep(0.05)


async def test_the_shared_session_of_an_unchanged_route_survives_a_reload(
    tmp_path: Path,
) -> None:
    log = tmp_path / "peer.log"
    config = mcp_config(stdio("paged", PEER, env={"PEER_LOG": str(log)}))
    async with run_gateway(config) as (gw, port):
        assert (await _modern_call(port, "echo")).status == 200
        # The shared session's child, and the one that asked whether the
        # target speaks 2026-07-28 (relay/tasks.py; it does not: closed).
        assert len(_starts(log)) == 2
        assert await gw.reload(config_from_dict(config))
        assert (await _modern_call(port, "echo")).status == 200
        assert len(_starts(log)) == 2  # the same shared upstream session, no new probe
        changed = json.loads(json.dumps(config))
        changed["binds"][0]["listeners"][0]["routes"][0]["backends"][0]["mcp"]["prefixMode"] = (
            "always"
        )
        assert await gw.reload(config_from_dict(changed))
        resp = await _modern_call(port, "paged_echo")
        assert resp.status == 200 and b"paged echo" in resp.body, resp.body
        assert len(_starts(log)) == 4  # a changed route gets a new one (and a new probe)


@pytest.mark.parametrize("transport", ["streamable", "sse"])
async def test_an_old_session_gives_the_token_only_to_the_targets_it_was_made_with(
    transport: str,
) -> None:
    tok = good()
    passthrough: dict[str, Any] = {"backendAuth": {"passthrough": {}}}
    async with (
        serve_upstream(recording_mcp_upstream) as a,
        serve_upstream(recording_mcp_upstream) as b,
        serve_upstream(recording_mcp_upstream) as c,
    ):
        config = mcp_config(
            {
                "name": "a",
                "mcp": {"host": f"http://127.0.0.1:{a.port}/mcp"},
                "policies": passthrough,
            },
            {"name": "b", "mcp": {"host": f"http://127.0.0.1:{b.port}/mcp"}},
        )
        route = config["binds"][0]["listeners"][0]["routes"][0]
        route["policies"] = {"jwtAuth": jwt_auth()}
        route["matches"] = [{"path": {"pathPrefix": "/mcp"}}, {"path": {"pathPrefix": "/sse"}}]
        # Target b moves to another server, which is to get the caller's token.
        changed = json.loads(json.dumps(config))
        targets = changed["binds"][0]["listeners"][0]["routes"][0]["backends"][0]["mcp"]["targets"]
        targets[1] = {
            "name": "b",
            "mcp": {"host": f"http://127.0.0.1:{c.port}/mcp"},
            "policies": passthrough,
        }
        bearer = f"Bearer {tok}".encode()
        auth = ((b"authorization", bearer),)
        async with run_gateway(config) as (gw, port), AsyncExitStack() as stack:
            if transport == "sse":
                # The SDK speaks the 2024-11-05 protocol over a legacy SSE stream.
                opened = sse_client(
                    f"http://127.0.0.1:{port}/sse", headers={"Authorization": f"Bearer {tok}"}
                )
                old = await stack.enter_async_context(McpClient(opened))

                async def call_old(name: str) -> None:
                    await old.call_tool(name, {})
            else:
                sid = await _initialize_at(port, "/mcp", auth)

                async def call_old(name: str) -> None:
                    status, body = await _call_at(port, "/mcp", sid, name, {}, auth)
                    assert status == 200 and b"ok" in body, body

            await call_old("b_who")
            assert await gw.reload(config_from_dict(changed))
            seen = len(b.seen)
            await call_old("b_who")  # still target b as the session knew it: no token
            await call_old("a_who")
            assert len(b.seen) == seen + 1 and not c.seen
            new = await _initialize_at(port, "/mcp", auth)
            status, _ = await _call_at(port, "/mcp", new, "b_who", {}, auth)
            assert status == 200
        assert all(b"authorization" not in dict(r.headers) for r, _ in b.seen)
        assert len(c.seen) >= 2
        assert all(dict(r.headers).get(b"authorization") == bearer for r, _ in c.seen)
        assert all(dict(r.headers).get(b"authorization") == bearer for r, _ in a.seen)


def _pid_in(log: Path, index: int) -> int:
    return int(_starts(log)[index].split()[1])


Extra = tuple[tuple[bytes, bytes], ...]


async def _initialize_at(port: int, path: str, extra: Extra = ()) -> str:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"},
        },
    }
    headers = [ACCEPT, JSON_CT, *extra]
    resp = await request(port, "POST", path, headers=headers, body=json.dumps(body).encode())
    assert resp.status == 200, resp.body
    token = resp.header(b"mcp-session-id")
    assert token
    return token.decode()


async def _call_at(
    port: int, path: str, token: str, name: str, args: dict[str, Any], extra: Extra = ()
) -> tuple[int, bytes]:
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": name, "arguments": args},
    }
    headers = [ACCEPT, JSON_CT, (b"mcp-session-id", token.encode()), *extra]
    resp = await request(port, "POST", path, headers=headers, body=json.dumps(body).encode())
    return resp.status, resp.body


async def _modern_call(port: int, name: str) -> Any:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": name,
            "arguments": {"message": "x"},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    headers = [
        ACCEPT,
        JSON_CT,
        (b"mcp-protocol-version", b"2026-07-28"),
        (b"mcp-method", b"tools/call"),
        (b"mcp-name", name.encode()),
    ]
    return await request(port, "POST", "/mcp", headers=headers, body=json.dumps(body).encode())


# ---------------------------------------------------------------- JWKS


async def test_a_remote_jwks_keeps_its_keys_and_its_task_across_reloads() -> None:
    idp = IdentityProvider()
    async with serve_upstream(idp.handle) as idp_server, serve_upstream(echo_handler) as up:
        jwks = {"url": f"http://127.0.0.1:{idp_server.port}/certs"}
        config = secured(up.port, jwtAuth=jwt_auth("strict", jwks))
        bearer = [(b"authorization", b"Bearer " + token(fresh(), kid="k1").encode())]
        async with run_gateway(config) as (gw, port):
            with trio.fail_after(5):
                while (await request(port, "GET", "/", headers=bearer)).status != 200:
                    await trio.sleep(0.05)
            hits = idp.hits
            # Another route: the JWT policy compiles anew and gets the keys at once.
            changed = json.loads(json.dumps(config))
            routes = changed["binds"][0]["listeners"][0]["routes"]
            routes.insert(
                0, {**routes[0], "name": "other", "matches": [{"path": {"pathPrefix": "/o"}}]}
            )
            assert await gw.reload(config_from_dict(changed))
            assert (await request(port, "GET", "/", headers=bearer)).status == 200
            assert (await request(port, "GET", "/o", headers=bearer)).status == 200
            assert (await request(port, "GET", "/")).status == 401
            assert idp.hits == hits  # one task per URL: no fetch for the reload
            assert list(gw._jwks_running) == [jwks["url"]]
            # Without the policy the URL's task stops.
            assert await gw.reload(config_from_dict(proxy_config(up.port)))
            assert gw._jwks_running == {}
            assert (await request(port, "GET", "/")).status == 200


# ---------------------------------------------------------------- HTTPS


async def test_https_connections_across_reloads(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    async with serve_upstream(slow_handler) as up:
        config = https(binds(bind(0, "/", upstream=up.port)), pki)
        async with run_gateway(config) as (gw, port):
            context = pki.client_context()
            async with open_tls_client(port, context) as client:
                assert (await client.request("GET", "/a", host="localhost")).status == 200
                # New routes, the same HTTPS listeners: the connection carries on.
                changed = json.loads(json.dumps(config))
                listener = changed["binds"][0]["listeners"][0]
                listener["routes"].append({**listener["routes"][0], "name": "more"})
                assert await gw.reload(config_from_dict(changed))
                assert (await client.request("GET", "/b", host="localhost")).status == 200
                # Another HTTPS listener: what the handshake chose among changed.
                cert, key = pki.files(pki.issue("other.example"))
                other = {**listener, "name": "other", "hostname": "other.example"}
                other["tls"] = {"cert": cert, "key": key}
                changed["binds"][0]["listeners"].append(other)
                assert await gw.reload(config_from_dict(changed))
                resp = await client.request("GET", "/c", host="localhost")
                assert resp.status == 421
                assert resp.header(b"connection") == b"close"
            resp = await tls_request(port, context, "GET", "/d")  # a new connection
            assert resp.status == 200
            other_resp = await tls_request(port, context, "GET", "/e", "other.example")
            assert other_resp.status == 200


async def test_a_replaced_config_is_not_kept_alive() -> None:
    async with serve_upstream(slow_handler) as up:
        config = binds(bind(0, "/", upstream=up.port))
        async with run_gateway(config) as (gw, port):
            first = weakref.ref(gw._compiled)
            security = weakref.ref(gw._compiled.security)
            for _ in range(3):
                assert await gw.reload(config_from_dict(config))
            assert (await request(port, "GET", "/x")).status == 200
            gc.collect()
            assert first() is None and security() is None
