"""The gateway as an MCP server: the official MCP SDK as the client, real
upstreams (the demo server, server-everything, a paginated test peer)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import h11
import mcp.types as types
import pytest
import trio
from mcp import Client

from tests.e2e.support import (
    free_port,
    gateway_subprocess,
    open_client,
    recording_mcp_upstream,
    request,
    run_gateway,
    serve_upstream,
)

ROOT = Path(__file__).parents[2]
EVERYTHING = str(ROOT / "node_modules" / ".bin" / "mcp-server-everything")
PEER = [sys.executable, str(ROOT / "tests" / "peers" / "paged_server.py")]
DEMO = [sys.executable, "-m", "agentgw.demo"]
ACCEPT = (b"accept", b"application/json, text/event-stream")
JSON_CT = (b"content-type", b"application/json")
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


def stdio(name: str, argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    return {"name": name, "stdio": {"cmd": argv[0], "args": argv[1:], "env": env or {}}}


def mcp_config(*targets: dict[str, Any], **backend: Any) -> dict[str, Any]:
    return {
        "binds": [
            {
                "port": 0,
                "address": "127.0.0.1",
                "listeners": [
                    {
                        "name": "mcp",
                        "routes": [
                            {
                                "name": "mcp",
                                "matches": [{"path": {"pathPrefix": "/mcp"}}],
                                "backends": [{"mcp": {"targets": list(targets), **backend}}],
                            }
                        ],
                    }
                ],
            }
        ],
        "config": {"session": {"key": "11" * 32}},
    }


async def test_demo_stdio_through_gateway_with_the_sdk() -> None:
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async def sampling(context: Any, params: types.CreateMessageRequestParams) -> Any:
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="sampled by the test"),
            model="test-model",
        )

    async with run_gateway(mcp_config(stdio("demo", DEMO))) as (gw, port):
        url = f"http://127.0.0.1:{port}/mcp"
        async with Client(url, sampling_callback=sampling) as client:
            # Sampling reaches a 2026-07-28 client as input_required rounds.
            assert client.protocol_version == "2026-07-28"
            tools = {t.name for t in (await client.list_tools()).tools}
            assert {"echo", "add", "slow", "test_sampling"} <= tools  # one target: no prefix
            result = await client.call_tool("echo", {"message": "hi"})
            assert "hi" in result.content[0].text
            await client.call_tool(
                "slow", {"seconds": 0.3, "steps": 3}, progress_callback=on_progress
            )
            assert len(progress) >= 2
            sampled = await client.call_tool("test_sampling", {"prompt": "say something"})
            assert "sampled by the test" in json.dumps(sampled.model_dump())
            prompts = {p.name for p in (await client.list_prompts()).prompts}
            assert "greeting" in prompts
            resources = {str(r.uri) for r in (await client.list_resources()).resources}
            assert "demo://readme" in resources
            read = await client.read_resource("demo://readme")
            assert read.contents
        # the shared upstream session, and the 2026-07-28 one (tasks) to the demo
        assert gw.sessions.statistics()["sessions"] <= 2


async def test_federation_prefixes_and_routes() -> None:
    config = mcp_config(stdio("demo", DEMO), stdio("everything", [EVERYTHING, "stdio"]))
    async with run_gateway(config) as (_, port):
        async with Client(f"http://127.0.0.1:{port}/mcp") as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            assert "demo_echo" in tools and "everything_echo" in tools
            assert not any(t == "echo" for t in tools)
            a = await client.call_tool("demo_echo", {"message": "one"})
            b = await client.call_tool("everything_echo", {"message": "two"})
            assert "one" in a.content[0].text
            assert b.content[0].text == "Echo: two"
            resources = [str(r.uri) for r in (await client.list_resources()).resources]
            assert any(u.startswith("demo+") for u in resources)


async def test_pagination_keeps_every_tool() -> None:
    config = mcp_config(stdio("paged", PEER))
    async with run_gateway(config) as (_, port):
        async with Client(f"http://127.0.0.1:{port}/mcp") as client:
            names: list[str] = []
            cursor = None
            pages = 0
            while True:
                page = await client.list_tools(cursor=cursor)
                names.extend(t.name for t in page.tools)
                pages += 1
                cursor = page.next_cursor
                if cursor is None:
                    break
            assert pages == 3
            assert len(names) == 250 and len(set(names)) == 250


async def test_pagination_across_federated_targets() -> None:
    config = mcp_config(stdio("paged", PEER), stdio("demo", DEMO))
    async with run_gateway(config) as (_, port):
        async with Client(f"http://127.0.0.1:{port}/mcp") as client:
            names: list[str] = []
            cursor = None
            while True:
                page = await client.list_tools(cursor=cursor)
                names.extend(t.name for t in page.tools)
                cursor = page.next_cursor
                if cursor is None:
                    break
            paged = [n for n in names if n.startswith("paged_")]
            assert len(paged) == 250 and len(set(names)) == len(names)
            assert "demo_echo" in names


async def _initialize(port: int) -> str:
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
    resp = await request(
        port, "POST", "/mcp", headers=[ACCEPT, JSON_CT], body=json.dumps(body).encode()
    )
    assert resp.status == 200, resp.body
    token = resp.header(b"mcp-session-id")
    assert token
    return token.decode()


async def _call(port: int, token: str, name: str, args: dict[str, Any]) -> tuple[int, bytes]:
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": name, "arguments": args},
    }
    resp = await request(
        port,
        "POST",
        "/mcp",
        headers=[ACCEPT, JSON_CT, (b"mcp-session-id", token.encode())],
        body=json.dumps(body).encode(),
    )
    return resp.status, resp.body


async def test_forged_and_tampered_session_ids_are_404() -> None:
    async with run_gateway(mcp_config(stdio("paged", PEER))) as (_, port):
        token = await _initialize(port)
        status, body = await _call(port, token, "echo", {"message": "x"})
        assert status == 200 and b"paged echo: x" in body
        tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
        for bad in (tampered, "forged", token[:20], token + "x"):
            status, _ = await _call(port, bad, "echo", {"message": "x"})
            assert status == 404
        missing = await request(
            port,
            "POST",
            "/mcp",
            headers=[ACCEPT, JSON_CT],
            body=b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}',
        )
        assert missing.status == 400


async def test_wrong_accept_and_content_type() -> None:
    async with run_gateway(mcp_config(stdio("paged", PEER))) as (_, port):
        body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
        resp = await request(port, "POST", "/mcp", headers=[JSON_CT], body=body)
        assert resp.status == 406
        resp = await request(
            port, "POST", "/mcp", headers=[ACCEPT, (b"content-type", b"text/plain")], body=body
        )
        assert resp.status == 415
        resp = await request(port, "PUT", "/mcp", body=body)
        assert resp.status == 405


async def test_session_resumes_on_a_second_gateway_with_the_same_key() -> None:
    demo_port = await free_port()
    demo = await trio.lowlevel.open_process(
        [*DEMO, "--http", str(demo_port)], stdout=subprocess.DEVNULL
    )
    try:
        with trio.fail_after(15):
            while True:
                try:
                    (await trio.open_tcp_stream("127.0.0.1", demo_port)).socket.close()
                    break
                except OSError:
                    await trio.sleep(0.1)
        target = {"name": "demo", "mcp": {"host": f"http://127.0.0.1:{demo_port}/mcp"}}
        # Two replicas with the same session key, as behind a load balancer.
        async with (
            run_gateway(mcp_config(target)) as (_, port1),
            run_gateway(mcp_config(target)) as (gw2, port2),
        ):
            token = await _initialize(port1)
            status, body = await _call(port1, token, "echo", {"message": "first"})
            assert status == 200 and b"first" in body
            assert not gw2.sessions.sessions
            status, body = await _call(port2, token, "echo", {"message": "second"})
            assert status == 200 and b"second" in body
            assert len(gw2.sessions.sessions) == 1  # resumed, not re-initialized
        # Both replicas are gone (a rolling restart): a new one resumes.
        async with run_gateway(mcp_config(target)) as (_, port4):
            status, body = await _call(port4, token, "echo", {"message": "after restart"})
            assert status == 200 and b"after restart" in body
        # A replica with another key cannot read the token.
        other = mcp_config(target)
        other["config"]["session"]["key"] = "22" * 32
        async with run_gateway(other) as (_, port3):
            status, _ = await _call(port3, token, "echo", {"message": "third"})
            assert status == 404
    finally:
        demo.kill()
        await demo.wait()


def _read(path: Path) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


async def test_client_disconnect_cancels_the_upstream_call(tmp_path: Path) -> None:
    log = tmp_path / "peer.log"
    config = mcp_config(stdio("paged", PEER, env={"PEER_LOG": str(log)}))
    async with run_gateway(config) as (_, port):
        token = await _initialize(port)
        async with open_client(port) as client:
            body = b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"slow"}}'
            await client.stream.send_all(
                b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Accept: application/json, text/event-stream\r\n"
                b"Content-Type: application/json\r\nMcp-Session-Id: "
                + token.encode()
                + b"\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
            with trio.fail_after(5):
                while "slow started" not in _read(log):
                    await trio.sleep(0.02)
        with trio.fail_after(5):
            while "cancelled" not in _read(log):
                await trio.sleep(0.02)


def _is_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


async def test_stopping_the_gateway_leaves_no_child_process(tmp_path: Path) -> None:
    log = tmp_path / "peer.log"
    config = mcp_config(stdio("paged", PEER, env={"PEER_LOG": str(log)}))
    async with gateway_subprocess("-c", json.dumps(config)) as (proc, ports):
        await _initialize(ports[0])
        children = _children(proc.pid)
        assert children, "the stdio target did not start"
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await proc.wait() == 0
    for child in children:
        assert not _is_running(child)


@pytest.mark.parametrize("mode", ["stateless"])
async def test_stateless_mode(mode: str) -> None:
    async with run_gateway(mcp_config(stdio("paged", PEER), statefulMode=mode)) as (_, port):
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 3,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"message": "s"}},
            }
        ).encode()
        resp = await request(port, "POST", "/mcp", headers=[ACCEPT, JSON_CT], body=body)
        assert resp.status == 200 and b"paged echo: s" in resp.body


async def test_2026_client_in_front_of_older_upstreams() -> None:
    """The SDK 2.3 client speaks 2026-07-28 (``server/discover``, no session)
    when the gateway offers it; the targets speak only older revisions."""
    config = mcp_config(stdio("demo", DEMO), stdio("paged", PEER))
    async with run_gateway(config) as (gw, port):
        url = f"http://127.0.0.1:{port}/mcp"
        progress: list[float] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append(value)

        async with Client(url) as client:
            assert client.protocol_version == "2026-07-28"
            tools: set[str] = set()
            cursor = None
            while True:
                page = await client.list_tools(cursor=cursor)
                tools.update(t.name for t in page.tools)
                if (cursor := page.next_cursor) is None:
                    break
            assert "demo_echo" in tools and "paged_tool249" in tools
            echo = await client.call_tool("demo_echo", {"message": "modern"})
            assert "modern" in echo.content[0].text
            await client.call_tool(
                "demo_slow", {"seconds": 0.3, "steps": 3}, progress_callback=on_progress
            )
            assert len(progress) >= 2
            prompt = await client.get_prompt("demo_greeting", {"name": "x"})
            assert prompt.messages
        # two clients share one upstream session per route; no per-client ones
        # (and one 2026-07-28 session, for tasks, to the demo, which speaks it)
        async with Client(url) as other:
            assert (await other.call_tool("paged_echo", {"message": "b"})).content
        assert len(gw.sessions.sessions) == 2

        # The headers must match the body.
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {
                    "name": "demo_echo",
                    "arguments": {"message": "x"},
                    "_meta": MODERN_META,
                },
            }
        ).encode()
        modern = [ACCEPT, JSON_CT, (b"mcp-protocol-version", b"2026-07-28")]
        named = [*modern, (b"mcp-name", b"demo_echo")]
        resp = await request(
            port, "POST", "/mcp", headers=[*named, (b"mcp-method", b"tools/list")], body=body
        )
        assert resp.status == 400 and b"-32020" in resp.body
        resp = await request(
            port, "POST", "/mcp", headers=[*named, (b"mcp-method", b"tools/call")], body=body
        )
        assert resp.status == 200 and json.loads(resp.body)["result"]["resultType"] == "complete"


async def test_client_headers_reach_http_targets() -> None:
    """Authorization and custom headers reach a Streamable HTTP target
    unchanged; hop-by-hop headers and the client's session id do not."""
    async with serve_upstream(recording_mcp_upstream) as up:
        target = {"name": "rec", "mcp": {"host": f"http://127.0.0.1:{up.port}/mcp"}}
        async with run_gateway(mcp_config(target)) as (_, port):
            token = await _initialize(port)
            extra = [
                (b"authorization", b"Bearer client-token"),
                (b"x-tenant", b"blue"),
                (b"connection", b"keep-alive, x-hop"),
                (b"x-hop", b"1"),
            ]
            body = json.dumps(
                {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "x"}}
            ).encode()
            resp = await request(
                port,
                "POST",
                "/mcp",
                headers=[ACCEPT, JSON_CT, (b"mcp-session-id", token.encode()), *extra],
                body=body,
            )
            assert resp.status == 200 and b"ok" in resp.body
    call = dict(up.seen[-1][0].headers)
    assert call[b"authorization"] == b"Bearer client-token"
    assert call[b"x-tenant"] == b"blue"
    assert b"x-hop" not in call
    assert call[b"mcp-session-id"] == b"s1"  # the upstream's own session id


async def _negotiating_upstream(req: h11.Request, body: bytes, up: Any) -> Any:
    """A JSON-mode Streamable HTTP server that agrees to the version asked."""
    message = json.loads(body) if body else {}
    if "id" not in message:
        return 202, [], b""
    if req.method != b"POST":
        return 405, [], b""
    result: dict[str, Any] = {"tools": []}
    if message.get("method") == "initialize":
        result = {
            "protocolVersion": message["params"]["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "negotiating", "version": "1"},
        }
    answer = {"jsonrpc": "2.0", "id": message["id"], "result": result}
    headers = [(b"content-type", b"application/json"), (b"mcp-session-id", b"up-1")]
    return 200, headers, json.dumps(answer).encode()


def _versions_seen(up: Any) -> list[list[bytes]]:
    return [[v for n, v in r.headers if n == b"mcp-protocol-version"] for r, _ in up.seen]


async def test_initialize_forwards_the_clients_protocol_version_header() -> None:
    async with serve_upstream(_negotiating_upstream) as up:
        target = {"name": "neg", "mcp": {"host": f"http://127.0.0.1:{up.port}/mcp"}}
        async with run_gateway(mcp_config(target)) as (_, port), open_client(port) as client:
            old = (b"mcp-protocol-version", b"2024-11-05")
            init = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2024-11-05",
                    "capabilities": {},
                    "clientInfo": {"name": "old", "version": "1"},
                },
            }
            resp = await client.request(
                "POST", "/mcp", [ACCEPT, JSON_CT, old], json.dumps(init).encode()
            )
            assert resp.status == 200 and b'"2024-11-05"' in resp.body
            token = resp.header(b"mcp-session-id")
            assert token is not None
            session = (b"mcp-session-id", token)
            for message in (
                {"jsonrpc": "2.0", "method": "notifications/initialized"},
                {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            ):
                resp = await client.request(
                    "POST", "/mcp", [ACCEPT, JSON_CT, old, session], json.dumps(message).encode()
                )
                assert resp.status in (200, 202)
        initialize, *later = up.seen
        assert json.loads(initialize[1])["method"] == "initialize"
        # as the client sent it, and once; every later request: the negotiated one
        assert _versions_seen(up) == [[b"2024-11-05"]] * len(up.seen)
        assert len(later) >= 2

        # No header from the client: none on the upstream's initialize.
        up.seen.clear()
        async with run_gateway(mcp_config(target)) as (_, port):
            await _initialize(port)
        assert _versions_seen(up)[0] == []


async def test_2026_client_version_is_not_sent_on_the_gateways_own_initialize() -> None:
    # The 2026-07-28 revision has no initialize: the gateway initializes its
    # shared upstream session itself, with an older revision.
    async with serve_upstream(_negotiating_upstream) as up:
        target = {"name": "neg", "mcp": {"host": f"http://127.0.0.1:{up.port}/mcp"}}
        async with run_gateway(mcp_config(target)) as (_, port):
            body = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/list",
                "params": {"_meta": MODERN_META},
            }
            modern = [ACCEPT, JSON_CT, (b"mcp-protocol-version", b"2026-07-28")]
            resp = await request(
                port,
                "POST",
                "/mcp",
                headers=[*modern, (b"mcp-method", b"tools/list")],
                body=json.dumps(body).encode(),
            )
            assert resp.status == 200, resp.body
    # The gateway first asks whether the target speaks 2026-07-28 itself
    # (server/discover, relay/tasks.py); it does not: its session follows.
    (probe, *rest) = up.seen
    assert json.loads(probe[1])["method"] == "server/discover"
    up.seen[:] = rest
    sent = json.loads(rest[0][1])
    assert sent["method"] == "initialize" and sent["params"]["protocolVersion"] < "2026-07-28"
    assert _versions_seen(up)[0] == []
    assert _versions_seen(up)[-1] == [sent["params"]["protocolVersion"].encode()]


async def test_dead_stdio_target_is_an_error_and_the_next_session_restarts_it(
    tmp_path: Path,
) -> None:
    log = tmp_path / "peer.log"
    config = mcp_config(stdio("paged", PEER, env={"PEER_LOG": str(log)}))
    async with run_gateway(config) as (_, port):
        token = await _initialize(port)
        first_pid = _read(log).split()[1]
        status, body = await _call(port, token, "crash", {})
        assert status == 200
        error = json.loads(body.split(b"data: ")[-1] if body.startswith(b"event") else body)
        assert "target paged" in error["error"]["message"]
        with trio.fail_after(5):
            while _is_running(int(first_pid)):
                await trio.sleep(0.02)  # reaped, not a zombie
        fresh = await _initialize(port)
        status, body = await _call(port, fresh, "echo", {"message": "again"})
        assert status == 200 and b"paged echo: again" in body
        pids = [line.split()[1] for line in _read(log).splitlines() if line.startswith("pid")]
        assert len(pids) == 2 and pids[0] != pids[1]


async def test_sigterm_ends_idle_get_streams_at_once() -> None:
    config = mcp_config(stdio("paged", PEER))
    config["config"]["connectionTerminationDeadline"] = "20s"
    async with gateway_subprocess("-c", json.dumps(config)) as (proc, ports):
        token = await _initialize(ports[0])
        async with open_client(ports[0]) as client:
            headers = [(b"accept", b"text/event-stream"), (b"mcp-session-id", token.encode())]
            await client.send(
                h11.Request(
                    method="GET", target="/mcp", headers=[(b"host", b"127.0.0.1"), *headers]
                )
            )
            await client.send(h11.EndOfMessage())
            head = await client.next_event()
            assert head.status_code == 200
            start = trio.current_time()
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(5):  # far sooner than the 20 s deadline
                while not isinstance(await client.next_event(), h11.EndOfMessage):
                    pass
            assert trio.current_time() - start < 2
        with trio.fail_after(10):
            assert await proc.wait() == 0
