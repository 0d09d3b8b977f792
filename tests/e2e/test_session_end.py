"""A session that ended stays ended: after a DELETE, and after a target
ended its upstream session (2025-11-25 ``server-session-lifecycle``)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import attrs
import h11
import trio

from tests.e2e.support import Upstream, recording_mcp_upstream, request, run_gateway, serve_upstream
from tests.e2e.test_mcp_gateway import _call, _initialize, mcp_config


@attrs.define
class SessionServer:
    """A Streamable HTTP MCP server in JSON mode that knows its sessions:
    404 for one it does not have (never made, DELETEd or dropped)."""

    sessions: set[str] = attrs.field(factory=set)
    ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))

    async def __call__(self, req: h11.Request, body: bytes, up: Upstream) -> Any:
        sid = dict(req.headers).get(b"mcp-session-id", b"").decode()
        message = json.loads(body) if body else {}
        if message.get("method") == "initialize":
            sid = f"s{next(self.ids)}"
            self.sessions.add(sid)
            result = {
                "protocolVersion": "2025-11-25",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "sessions", "version": "1"},
            }
            answer = {"jsonrpc": "2.0", "id": message["id"], "result": result}
            headers = [(b"content-type", b"application/json"), (b"mcp-session-id", sid.encode())]
            return 200, headers, json.dumps(answer).encode()
        if sid not in self.sessions:
            return 404, [], b""
        if req.method == b"DELETE":
            self.sessions.discard(sid)
            return 200, [], b""
        if req.method == b"GET":
            return 405, [], b""
        if "id" not in message:
            return 202, [], b""
        result: dict[str, Any] = {"content": [{"type": "text", "text": "ok"}]}
        if message.get("method") == "tools/list":
            result = {"tools": [{"name": "who", "inputSchema": {"type": "object"}}]}
        answer = {"jsonrpc": "2.0", "id": message["id"], "result": result}
        return 200, [(b"content-type", b"application/json")], json.dumps(answer).encode()


def _target(up: Upstream) -> dict[str, Any]:
    return {"name": "t", "mcp": {"host": f"http://127.0.0.1:{up.port}/mcp"}}


async def _status(port: int, method: str, token: str) -> int:
    headers = [(b"mcp-session-id", token.encode()), (b"accept", b"text/event-stream")]
    return (await request(port, method, "/mcp", headers=headers)).status


def _methods(up: Upstream) -> list[str]:
    return [json.loads(body).get("method", "reply") for _, body in up.seen if body]


async def test_after_delete_every_request_of_the_session_is_404() -> None:
    # The recording upstream ignores DELETE: only the gateway's own memory of
    # the ended session keeps its still-decodable token from resuming it.
    async with serve_upstream(recording_mcp_upstream) as up:
        async with run_gateway(mcp_config(_target(up))) as (_, port):
            token = await _initialize(port)
            status, _ = await _call(port, token, "who", {})
            assert status == 200
            assert await _status(port, "DELETE", token) == 200
            for _ in range(2):
                status, body = await _call(port, token, "who", {})
                assert status == 404 and b"-32001" in body, body
                assert await _status(port, "GET", token) == 404
                assert await _status(port, "DELETE", token) == 404
    assert _methods(up).count("initialize") == 1
    assert _methods(up).count("tools/call") == 1


async def test_a_deleted_sessions_token_does_not_resume_on_another_replica() -> None:
    # Two gateways with one session key: replica B could resume any session
    # of A's. B has no memory of A's DELETE, but the target ended its
    # upstream session, so B's resume meets a 404 and ends there.
    server = SessionServer()
    async with serve_upstream(server) as up:
        config = mcp_config(_target(up))
        async with run_gateway(config) as (_, a), run_gateway(config) as (_, b):
            token = await _initialize(a)
            assert (await _call(b, token, "who", {}))[0] == 200  # B takes it up
            assert await _status(a, "DELETE", token) == 200
            with trio.fail_after(5):  # the session's end DELETEs the upstream's
                while server.sessions:
                    await trio.sleep(0.02)
            for port in (b, a, b):
                status, body = await _call(port, token, "who", {})
                assert status == 404 and b"-32001" in body, body
    assert _methods(up).count("initialize") == 1


async def test_a_target_ending_its_session_ends_the_clients_session() -> None:
    server = SessionServer()
    async with serve_upstream(server) as up:
        async with run_gateway(mcp_config(_target(up))) as (_, port):
            token = await _initialize(port)
            assert (await _call(port, token, "who", {}))[0] == 200
            server.sessions.clear()  # the upstream session expired
            status, body = await _call(port, token, "who", {})
            assert status == 404 and b"-32001" in body, body
            # The client must re-initialize: nothing was set up behind its back.
            assert (await _call(port, token, "who", {}))[0] == 404
            assert await _status(port, "GET", token) == 404
            token = await _initialize(port)
            assert (await _call(port, token, "who", {}))[0] == 200
    assert _methods(up).count("initialize") == 2
