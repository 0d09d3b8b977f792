"""The tasks extension through the gateway: 2026-07-28 requests about tasks
reach the targets that speak 2026-07-28 on that revision, and task ids are
federated like names."""

from __future__ import annotations

import json
from typing import Any

import trio

from tests.e2e.support import request, run_gateway
from tests.e2e.test_mcp_gateway import ACCEPT, DEMO, JSON_CT, PEER, mcp_config, stdio

MODERN = [ACCEPT, JSON_CT, (b"mcp-protocol-version", b"2026-07-28")]
TASKS = {"extensions": {"io.modelcontextprotocol/tasks": {}}}


async def _rpc(
    port: int,
    method: str,
    params: dict[str, Any],
    *,
    name: str | None = None,
    capabilities: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": TASKS
        if capabilities is None
        else capabilities,
    }
    body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": {**params, "_meta": meta}}
    headers = [*MODERN, (b"mcp-method", method.encode())]
    if name is not None:
        headers.append((b"mcp-name", name.encode()))
    resp = await request(port, "POST", "/mcp", headers=headers, body=json.dumps(body).encode())
    return resp.status, json.loads(resp.body)


async def test_tasks_are_relayed_with_federated_ids() -> None:
    config = mcp_config(stdio("demo", DEMO), stdio("paged", PEER))
    async with run_gateway(config) as (gw, port):
        status, discover = await _rpc(port, "server/discover", {})
        assert status == 200
        extensions = discover["result"]["capabilities"]["extensions"]
        assert "io.modelcontextprotocol/tasks" in extensions

        call = {"name": "demo_slow_compute", "arguments": {"seconds": 0.2}}
        status, created = await _rpc(port, "tools/call", call, name="demo_slow_compute")
        result = created["result"]
        assert result["resultType"] == "task" and result["status"] == "working"
        task_id = result["taskId"]
        assert task_id.startswith("demo_")  # federated: the target is in the id

        with trio.fail_after(10):
            while True:
                status, got = await _rpc(port, "tasks/get", {"taskId": task_id}, name=task_id)
                assert status == 200 and got["result"]["taskId"] == task_id
                if got["result"]["status"] == "completed":
                    break
                await trio.sleep(0.1)
        assert "computed in 0.2 s" in json.dumps(got["result"]["result"])

        # A task-only tool from a client that did not declare the extension:
        # the target refuses it (-32021), as it would directly.
        failing = {"name": "demo_failing_job", "arguments": {}}
        _, refused = await _rpc(
            port, "tools/call", failing, name="demo_failing_job", capabilities={}
        )
        assert refused["error"]["code"] == -32021
        # An ordinary call of that client goes the usual way.
        echo = {"name": "paged_echo", "arguments": {"message": "hi"}}
        _, echoed = await _rpc(port, "tools/call", echo, name="paged_echo", capabilities={})
        assert "hi" in json.dumps(echoed["result"])

        # Ids that name no target, or headers that do not match, are refused.
        _, unknown = await _rpc(port, "tasks/get", {"taskId": "nowhere"}, name="nowhere")
        assert unknown["error"]["code"] == -32602
        _, wrong = await _rpc(port, "tasks/get", {"taskId": task_id}, name="demo_other")
        assert wrong["error"]["code"] == -32020
        _, listed = await _rpc(port, "tasks/list", {})
        assert listed["error"]["code"] == -32601
        status, cancelled = await _rpc(port, "tasks/cancel", {"taskId": task_id}, name=task_id)
        assert status == 200 and "error" not in cancelled
        # the shared session, and the 2026-07-28 one to the demo (paged does
        # not speak 2026-07-28: it is reached the usual way only)
        assert len(gw.sessions.sessions) == 2
