"""A stdio MCP server that speaks 2026-07-28 and offers the tasks
extension, for tests of task status notifications on listen streams: a
``subscriptions/listen`` whose filter has ``taskIds`` is acknowledged with
those ids, then gets one ``notifications/tasks`` per id (status
``completed``), and a ``notifications/message`` it did not ask for. The
stream stays open."""

from __future__ import annotations

import json
import sys

TASKS = "io.modelcontextprotocol/tasks"
SUBSCRIPTION = "io.modelcontextprotocol/subscriptionId"
CAPABILITIES = {"tools": {}, "extensions": {TASKS: {}}}


def send(message: dict) -> None:
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
    sys.stdout.flush()


def notify(method: str, params: dict, subscription: object) -> None:
    send({"method": method, "params": {**params, "_meta": {SUBSCRIPTION: subscription}}})


def handle(message: dict) -> None:
    method, msg_id = message.get("method"), message.get("id")
    params = message.get("params") or {}
    if method == "initialize":
        info = {"name": "tasks-listen", "version": "1"}
        result = {"protocolVersion": "2025-11-25", "capabilities": CAPABILITIES, "serverInfo": info}
        send({"id": msg_id, "result": result})
    elif method == "server/discover":
        result = {"supportedVersions": ["2026-07-28"], "capabilities": CAPABILITIES}
        send({"id": msg_id, "result": result})
    elif method == "tools/list":
        send({"id": msg_id, "result": {"tools": []}})
    elif method == "subscriptions/listen":
        ids = params.get("notifications", {}).get("taskIds", [])
        notify(
            "notifications/subscriptions/acknowledged", {"notifications": {"taskIds": ids}}, msg_id
        )
        for task_id in ids:
            notify("notifications/tasks", {"taskId": task_id, "status": "completed"}, msg_id)
        notify("notifications/message", {"level": "info", "data": "not asked for"}, msg_id)
    elif msg_id is not None:
        send({"id": msg_id, "error": {"code": -32601, "message": "method not found"}})


for line in sys.stdin:
    if line.strip():
        handle(json.loads(line))
