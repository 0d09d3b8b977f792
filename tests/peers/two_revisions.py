"""A stdio MCP server that speaks 2025-11-25 (after ``initialize``) and
2026-07-28 (requests with the ``_meta`` envelope, ``server/discover``), and
says in its answers which way a request came: ``tools/list`` lists one
tool named ``modern`` or ``older``, ``completion/complete`` completes to
that word."""

from __future__ import annotations

import json
import sys

ENVELOPE = "io.modelcontextprotocol/protocolVersion"


def answer(msg_id: object, result: dict) -> None:
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg_id, "result": result}) + "\n")
    sys.stdout.flush()


def handle(message: dict) -> None:
    method, msg_id = message.get("method"), message.get("id")
    params = message.get("params") or {}
    way = "modern" if ENVELOPE in (params.get("_meta") or {}) else "older"
    capabilities = {"tools": {}, "prompts": {}, "completions": {}}
    if method == "initialize":
        info = {"name": "two-revisions", "version": "1"}
        answer(
            msg_id,
            {"protocolVersion": "2025-11-25", "capabilities": capabilities, "serverInfo": info},
        )
    elif method == "server/discover":
        answer(
            msg_id,
            {"supportedVersions": ["2025-11-25", "2026-07-28"], "capabilities": capabilities},
        )
    elif method == "tools/list":
        answer(msg_id, {"tools": [{"name": way, "inputSchema": {"type": "object"}}]})
    elif method == "prompts/list":
        answer(msg_id, {"prompts": [{"name": "ask"}]})
    elif method == "completion/complete":
        answer(msg_id, {"completion": {"values": [way]}})
    elif msg_id is not None:
        error = {"code": -32601, "message": "method not found"}
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg_id, "error": error}) + "\n")
        sys.stdout.flush()


for line in sys.stdin:
    if line.strip():
        handle(json.loads(line))
