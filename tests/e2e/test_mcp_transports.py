"""Every downstream transport (Streamable HTTP, legacy SSE, WebSocket) and
server-everything as a stdio and as a Streamable HTTP target."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import mcp.types as types
import pytest
import trio
import trio_websocket
from mcp import Client
from mcp.client.sse import sse_client

from tests.e2e.support import free_port, run_gateway
from tests.e2e.test_mcp_gateway import DEMO, EVERYTHING, mcp_config, stdio


@asynccontextmanager
async def everything_http() -> AsyncIterator[int]:
    """server-everything in its Streamable HTTP mode on a free port."""
    port = await free_port()
    proc = await trio.lowlevel.open_process(
        [EVERYTHING, "streamableHttp"],
        env={**os.environ, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        with trio.fail_after(20):
            while True:
                try:
                    (await trio.open_tcp_stream("127.0.0.1", port)).socket.close()
                    break
                except OSError:
                    await trio.sleep(0.1)
        yield port
    finally:
        os.killpg(proc.pid, 9)
        await proc.wait()


async def _sampling(context: Any, params: types.CreateMessageRequestParams) -> Any:
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text="an answer from the client"),
        model="test-model",
    )


async def _exercise_everything(client: Client, prefix: str = "") -> None:
    tools = {t.name for t in (await client.list_tools()).tools}
    assert f"{prefix}echo" in tools and f"{prefix}trigger-sampling-request" in tools
    echo = await client.call_tool(f"{prefix}echo", {"message": "hello"})
    assert echo.content[0].text == "Echo: hello"
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    await client.call_tool(
        f"{prefix}trigger-long-running-operation",
        {"duration": 1, "steps": 4},
        progress_callback=on_progress,
    )
    assert len(progress) >= 3
    sampled = await client.call_tool(f"{prefix}trigger-sampling-request", {"prompt": "hi"})
    assert "an answer from the client" in json.dumps(sampled.model_dump())
    prompts = (await client.list_prompts()).prompts
    assert prompts
    first = prompts[0]
    args = {a.name: "x" for a in (first.arguments or []) if a.required}
    got = await client.get_prompt(first.name, args)
    assert got.messages
    resources = (await client.list_resources()).resources
    assert resources
    read = await client.read_resource(str(resources[0].uri))
    assert read.contents


async def test_everything_as_stdio_target() -> None:
    async with run_gateway(mcp_config(stdio("everything", [EVERYTHING, "stdio"]))) as (_, port):
        async with Client(f"http://127.0.0.1:{port}/mcp", sampling_callback=_sampling) as c:
            await _exercise_everything(c)


async def test_everything_as_streamable_http_target_federated_with_stdio() -> None:
    async with everything_http() as ev_port:
        config = mcp_config(
            {"name": "everything", "mcp": {"host": f"http://127.0.0.1:{ev_port}/mcp"}},
            stdio("demo", DEMO),
        )
        async with run_gateway(config) as (_, port):
            async with Client(f"http://127.0.0.1:{port}/mcp", sampling_callback=_sampling) as c:
                await _exercise_everything(c, prefix="everything_")
                demo = await c.call_tool("demo_echo", {"message": "routed"})
                assert "routed" in demo.content[0].text


def sse_route_config(*targets: dict[str, Any]) -> dict[str, Any]:
    config = mcp_config(*targets)
    route = config["binds"][0]["listeners"][0]["routes"][0]
    route["matches"] = [{"path": {"pathPrefix": "/mcp"}}, {"path": {"pathPrefix": "/sse"}}]
    return config


async def test_legacy_sse_downstream() -> None:
    async with run_gateway(sse_route_config(stdio("everything", [EVERYTHING, "stdio"]))) as (
        _,
        port,
    ):
        transport = sse_client(f"http://127.0.0.1:{port}/sse")
        async with Client(transport, sampling_callback=_sampling) as client:
            await _exercise_everything(client)


async def _ws_call(
    ws: trio_websocket.WebSocketConnection,
    message: dict[str, Any],
    seen: list[dict[str, Any]] | None = None,
) -> Any:
    """Send a request; answer sampling requests on the way; return the
    response. Everything else that arrives meanwhile goes to ``seen``."""
    await ws.send_message(json.dumps(message))
    while True:
        reply = json.loads(await ws.get_message())
        if reply.get("method") == "sampling/createMessage":
            answer = {
                "jsonrpc": "2.0",
                "id": reply["id"],
                "result": {
                    "role": "assistant",
                    "content": {"type": "text", "text": "sampled over ws"},
                    "model": "test-model",
                },
            }
            await ws.send_message(json.dumps(answer))
        elif reply.get("id") == message["id"] and "method" not in reply:
            return reply
        elif seen is not None:
            seen.append(reply)


@pytest.mark.parametrize("subprotocol", ["mcp"])
async def test_websocket_downstream(subprotocol: str) -> None:
    async with run_gateway(mcp_config(stdio("everything", [EVERYTHING, "stdio"]))) as (_, port):
        async with trio_websocket.open_websocket(
            "127.0.0.1", port, "/mcp", use_ssl=False, subprotocols=[subprotocol]
        ) as ws:
            assert ws.subprotocol == subprotocol
            init = await _ws_call(
                ws,
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-06-18",
                        "capabilities": {"sampling": {}},
                        "clientInfo": {"name": "ws", "version": "1"},
                    },
                },
            )
            assert init["result"]["protocolVersion"]
            await ws.send_message(
                json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
            )
            tools = await _ws_call(ws, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
            assert any(t["name"] == "echo" for t in tools["result"]["tools"])
            echo = await _ws_call(
                ws,
                {
                    "jsonrpc": "2.0",
                    "id": "three",
                    "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"message": "over ws"}},
                },
            )
            assert echo["result"]["content"][0]["text"] == "Echo: over ws"
            seen: list[dict[str, Any]] = []
            await _ws_call(
                ws,
                {
                    "jsonrpc": "2.0",
                    "id": 4,
                    "method": "tools/call",
                    "params": {
                        "name": "trigger-long-running-operation",
                        "arguments": {"duration": 1, "steps": 4},
                        "_meta": {"progressToken": "p1"},
                    },
                },
                seen,
            )
            progress = [m for m in seen if m.get("method") == "notifications/progress"]
            assert len(progress) >= 3 and progress[0]["params"]["progressToken"] == "p1"
            sampled = await _ws_call(
                ws,
                {
                    "jsonrpc": "2.0",
                    "id": 5,
                    "method": "tools/call",
                    "params": {"name": "trigger-sampling-request", "arguments": {"prompt": "hi"}},
                },
            )
            assert "sampled over ws" in json.dumps(sampled)
            prompts = await _ws_call(ws, {"jsonrpc": "2.0", "id": 6, "method": "prompts/list"})
            name = prompts["result"]["prompts"][0]["name"]
            got = await _ws_call(
                ws,
                {"jsonrpc": "2.0", "id": 7, "method": "prompts/get", "params": {"name": name}},
            )
            assert got["result"]["messages"]
            listed = await _ws_call(ws, {"jsonrpc": "2.0", "id": 8, "method": "resources/list"})
            uri = listed["result"]["resources"][0]["uri"]
            read = await _ws_call(
                ws,
                {"jsonrpc": "2.0", "id": 9, "method": "resources/read", "params": {"uri": uri}},
            )
            assert read["result"]["contents"]
