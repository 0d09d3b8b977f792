"""Local rate limits on HTTP routes and listeners, and agentgw's MCP per-tool limits."""

from __future__ import annotations

import json
from typing import Any

from tests.e2e.support import (
    echo_handler,
    proxy_config,
    recording_mcp_upstream,
    request,
    run_gateway,
    serve_upstream,
)
from tests.e2e.test_mcp_gateway import ACCEPT, JSON_CT, _initialize, mcp_config
from tests.e2e.test_metrics import scrape, value, with_stats

LIMIT = {"maxTokens": 2, "tokensPerFill": 1, "fillInterval": "60s"}


async def test_a_route_over_its_limit_gets_429_and_the_upstream_sees_nothing() -> None:
    async with serve_upstream(echo_handler) as up:
        config = proxy_config(up.port)
        config["binds"][0]["listeners"][0]["routes"][0]["policies"] = {"localRateLimit": [LIMIT]}
        async with run_gateway(with_stats(config)) as (gw, port):
            answers = [await request(port, "GET", "/") for _ in range(3)]
            assert [a.status for a in answers] == [200, 200, 429]
            refused = answers[2]
            assert refused.body == b"rate limited\n"
            retry = int(refused.header(b"retry-after") or b"0")
            assert 55 <= retry <= 60
            assert refused.header(b"x-ratelimit-limit") == b"2"
            assert refused.header(b"x-ratelimit-remaining") == b"0"
            assert up.requests == 2
            samples = await scrape(gw.management_addresses["stats"][1])
            policy = "binds[0].listeners[0].routes[0].policies.localRateLimit"
            assert value(samples, "agentgw_rate_limited_requests_total", policy=policy) == 1
            assert value(samples, "agentgateway_requests_total", status="429") == 1


async def test_a_listener_limit_is_shared_by_its_routes() -> None:
    async with serve_upstream(echo_handler) as up:
        config = proxy_config(up.port)
        listener = config["binds"][0]["listeners"][0]
        route = listener["routes"][0]
        other = {**route, "name": "other", "matches": [{"path": {"pathPrefix": "/other"}}]}
        listener["routes"] = [other, route]
        listener["policies"] = {"localRateLimit": [LIMIT]}
        async with run_gateway(config) as (_, port):
            first = await request(port, "GET", "/other")
            second = await request(port, "GET", "/")
            third = await request(port, "GET", "/other/x")
            assert [first.status, second.status, third.status] == [200, 200, 429]
            assert up.requests == 2


def _rpc(body: bytes) -> dict[str, Any]:
    if body.startswith(b"event") or body.startswith(b"data"):
        body = body.split(b"data: ")[-1]
    answer: dict[str, Any] = json.loads(body)
    return answer


async def _call_as(port: int, token: str, user: str, name: str, msg_id: int) -> dict[str, Any]:
    message = {
        "jsonrpc": "2.0",
        "id": msg_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": {}},
    }
    response = await request(
        port,
        "POST",
        "/mcp",
        headers=[ACCEPT, JSON_CT, (b"mcp-session-id", token.encode()), (b"x-user", user.encode())],
        body=json.dumps(message).encode(),
    )
    assert response.status == 200, response.body
    return _rpc(response.body)


async def test_a_tool_over_its_limit_gets_a_json_rpc_error_and_the_upstream_sees_nothing() -> None:
    async with serve_upstream(recording_mcp_upstream) as up:
        target = {"name": "rec", "mcp": {"host": f"http://127.0.0.1:{up.port}/mcp"}}
        limit = {
            "target": "rec",
            "tool": "who",
            "key": 'request.headers["x-user"]',
            "maxTokens": 1,
            "tokensPerFill": 1,
            "fillInterval": "30s",
        }
        config = with_stats(mcp_config(target, rateLimits=[limit]))
        async with run_gateway(config) as (gw, port):
            token = await _initialize(port)
            first = await _call_as(port, token, "alice", "who", 10)
            assert "result" in first
            second = await _call_as(port, token, "alice", "who", 11)
            assert second["id"] == 11
            assert second["error"]["code"] == -32000
            assert second["error"]["message"] == "rate limited"
            assert 25 <= second["error"]["data"]["retryAfter"] <= 30
            # Another caller has a bucket of its own; another tool is not limited.
            assert "result" in await _call_as(port, token, "bob", "who", 12)
            assert "result" in await _call_as(port, token, "alice", "other", 13)
            calls = [json.loads(b) for _, b in up.seen if b and b'"tools/call"' in b]
            assert [c["params"]["name"] for c in calls] == ["who", "who", "other"]
            samples = await scrape(gw.management_addresses["stats"][1])
            policy = "binds[0].listeners[0].routes[0].backends[0].mcp.rateLimits[0]"
            assert value(samples, "agentgw_rate_limited_requests_total", policy=policy) == 1
