"""A stdio MCP server that speaks only 2025-11-25, for tests of the gateway
as a 2026-07-28 server in front of it. Every method it gets goes to
$PEER_LOG, one line each (``<method> <uri or name>``).

- ``touch``: says the tool list changed and that every subscribed resource
  was updated (notifications about no request, as a session's stream has);
- ``ask_model``: asks the client's model (``sampling/createMessage``) and
  answers with what came back;
- ``chatty``: logs one ``info`` message during the call;
- ``regional``: takes a ``region`` argument sent as ``Mcp-Param-Region``;
- ``echo_meta``: answers with the ``_meta`` of its request.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

TOOLS = [
    {"name": "touch", "inputSchema": {"type": "object"}},
    {"name": "ask_model", "inputSchema": {"type": "object"}},
    {"name": "chatty", "inputSchema": {"type": "object"}},
    {
        "name": "regional",
        "inputSchema": {
            "type": "object",
            "properties": {"region": {"type": "string", "x-mcp-header": "Region"}},
        },
    },
    {"name": "echo_meta", "inputSchema": {"type": "object"}},
]
COUNTER = "peer://counter"
subscribed: set[str] = set()
waiting: dict[str, Any] = {}  # our request id -> the client's call id


def log(text: str) -> None:
    path = os.environ.get("PEER_LOG")
    if path:
        with open(path, "a") as f:
            f.write(text + "\n")


def send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def text(value: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": value}]}


def call(msg_id: Any, params: dict[str, Any]) -> dict[str, Any] | None:
    name = params.get("name")
    if name == "touch":
        send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        for uri in sorted(subscribed):
            send(
                {
                    "jsonrpc": "2.0",
                    "method": "notifications/resources/updated",
                    "params": {"uri": uri},
                }
            )
        return text("touched")
    if name == "ask_model":
        ask = f"ask-{msg_id}"
        waiting[ask] = msg_id
        params = {"messages": [{"role": "user", "content": {"type": "text", "text": "hi"}}]}
        send({"jsonrpc": "2.0", "id": ask, "method": "sampling/createMessage", "params": params})
        return None
    if name == "chatty":
        log_params = {"level": "info", "data": "chatty says hello"}
        send({"jsonrpc": "2.0", "method": "notifications/message", "params": log_params})
        return text("chatted")
    if name == "regional":
        return text(f"region {params.get('arguments', {}).get('region')}")
    if name == "echo_meta":
        return text(json.dumps(params.get("_meta")))
    return None


def handle(message: dict[str, Any]) -> None:
    method = message.get("method")
    msg_id = message.get("id")
    params = message.get("params") or {}
    if method is None:  # the answer to our sampling request
        call_id = waiting.pop(str(msg_id), None)
        if call_id is not None:
            reply = message.get("result") or message.get("error")
            send({"jsonrpc": "2.0", "id": call_id, "result": text(json.dumps(reply))})
        return
    log(f"{method} {params.get('uri') or params.get('name') or ''}".strip())
    result: dict[str, Any] | None
    if method == "initialize":
        result = {
            "protocolVersion": "2025-11-25",
            "capabilities": {
                "tools": {"listChanged": True},
                "resources": {"subscribe": True},
                "logging": {},
            },
            "serverInfo": {"name": "older", "version": "1"},
        }
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        result = call(msg_id, params)
        if result is None:
            return
    elif method == "resources/read" and params.get("uri") == COUNTER:
        result = {"contents": [{"uri": COUNTER, "text": "1"}]}
    elif method == "resources/read":
        error = {"code": -32002, "message": "Resource not found", "data": {"uri": params["uri"]}}
        send({"jsonrpc": "2.0", "id": msg_id, "error": error})
        return
    elif method == "resources/subscribe":
        subscribed.add(params["uri"])
        result = {}
    elif method == "resources/unsubscribe":
        subscribed.discard(params["uri"])
        result = {}
    elif method == "ping":
        result = {}
    elif msg_id is None:
        return
    else:
        send({"jsonrpc": "2.0", "id": msg_id, "error": {"code": -32601, "message": "not found"}})
        return
    send({"jsonrpc": "2.0", "id": msg_id, "result": result})


def main() -> None:
    for line in sys.stdin:
        if line.strip():
            handle(json.loads(line))


if __name__ == "__main__":
    main()
