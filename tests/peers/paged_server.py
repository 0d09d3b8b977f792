"""A small stdio MCP server for tests: 250 tools served 100 per page, an echo
tool, and a slow tool that records cancellation in $PEER_LOG."""

from __future__ import annotations

import json
import os
import sys
import threading
import time

TOOLS = [
    {"name": f"tool{i:03d}", "description": f"tool number {i}", "inputSchema": {"type": "object"}}
    for i in range(250)
]
TOOLS[0] = {
    "name": "echo",
    "description": "echo the message",
    "inputSchema": {"type": "object", "properties": {"message": {"type": "string"}}},
}
TOOLS[1] = {"name": "slow", "description": "sleeps", "inputSchema": {"type": "object"}}
PAGE = 100
lock = threading.Lock()
cancelled: set[object] = set()


def log(text: str) -> None:
    path = os.environ.get("PEER_LOG")
    if path:
        with open(path, "a") as f:
            f.write(text + "\n")


def send(message: dict) -> None:
    with lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def slow(msg_id: object, params: dict) -> None:
    log(f"slow started {msg_id}")
    for _ in range(100):
        time.sleep(0.05)
        if msg_id in cancelled:
            log(f"cancelled {msg_id}")
            return
    send(
        {"jsonrpc": "2.0", "id": msg_id, "result": {"content": [{"type": "text", "text": "done"}]}}
    )


def handle(message: dict) -> None:
    method = message.get("method")
    msg_id = message.get("id")
    params = message.get("params") or {}
    if method == "initialize":
        result = {
            "protocolVersion": params.get("protocolVersion", "2025-06-18"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "paged", "version": "1"},
        }
    elif method == "tools/list":
        start = int(params.get("cursor") or 0)
        result = {"tools": TOOLS[start : start + PAGE]}
        if start + PAGE < len(TOOLS):
            result["nextCursor"] = str(start + PAGE)
    elif method == "tools/call" and params.get("name") == "echo":
        text = params.get("arguments", {}).get("message", "")
        result = {"content": [{"type": "text", "text": f"paged echo: {text}"}]}
    elif method == "tools/call" and params.get("name") == "crash":
        log("crashing")
        os._exit(3)
    elif method == "tools/call" and params.get("name") == "slow":
        threading.Thread(target=slow, args=(msg_id, params), daemon=True).start()
        return
    elif method == "notifications/cancelled":
        cancelled.add(params.get("requestId"))
        return
    elif method == "ping":
        result = {}
    elif msg_id is None:
        return
    else:
        send({"jsonrpc": "2.0", "id": msg_id, "error": {"code": -32601, "message": "not found"}})
        return
    send({"jsonrpc": "2.0", "id": msg_id, "result": result})


def main() -> None:
    log(f"pid {os.getpid()}")
    for line in sys.stdin:
        if line.strip():
            handle(json.loads(line))
    log("stdin closed")


if __name__ == "__main__":
    main()
