"""A small stdio MCP server for tests whose ``confirm`` tool answers with an
``input_required`` result itself (as a 2026-07-28 server does), with its own
``requestState``; the retry completes only with that exact state and an
answer under ``ok``."""

from __future__ import annotations

import json
import sys

STATE = "peer-state-42"


def result(msg_id: object, result: dict) -> None:
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg_id, "result": result}) + "\n")
    sys.stdout.flush()


def handle(message: dict) -> None:
    method, msg_id = message.get("method"), message.get("id")
    params = message.get("params") or {}
    if method == "initialize":
        result(
            msg_id,
            {
                "protocolVersion": params.get("protocolVersion", "2025-11-25"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "mrtr-peer", "version": "1"},
            },
        )
    elif method == "tools/list":
        tool = {"name": "confirm", "inputSchema": {"type": "object"}}
        result(msg_id, {"tools": [tool]})
    elif method == "tools/call":
        answer = (params.get("inputResponses") or {}).get("ok")
        if params.get("requestState") == STATE and isinstance(answer, dict):
            text = f"confirmed with {STATE}: {json.dumps(answer, sort_keys=True)}"
            result(msg_id, {"content": [{"type": "text", "text": text}]})
            return
        ask = {"method": "elicitation/create", "params": {"message": "OK?", "requestedSchema": {}}}
        result(
            msg_id,
            {"resultType": "input_required", "inputRequests": {"ok": ask}, "requestState": STATE},
        )
    elif msg_id is not None:
        error = {"code": -32601, "message": "method not found"}
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg_id, "error": error}) + "\n")
        sys.stdout.flush()


for line in sys.stdin:
    if line.strip():
        handle(json.loads(line))
