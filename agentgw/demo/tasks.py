"""The tasks extension (``io.modelcontextprotocol/tasks``, SEP-2663) in the
demo server, with no I/O: task records and their store.

How this works: when a 2026-07-28 client declares the extension, a
``tools/call`` of a tool that supports tasks is answered at once with a
``CreateTaskResult`` (``resultType: "task"``) and the tool goes on running
in the background (the transport drives it). ``tasks/get`` reports the
task; ``tasks/update`` brings the answers to the inputs it waits for (its
status is then ``input_required``, with ``inputRequests``); ``tasks/cancel``
stops it. A tool error ends a task ``completed`` with ``result.isError``; a
JSON-RPC error ends it ``failed`` with ``error``. Records expire ``ttl_ms``
after their creation; the store holds at most ``max_tasks``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime

import attrs

from agentgw.demo.effects import InputRequest, RpcError
from agentgw.demo.wire import INTERNAL_ERROR, INVALID_PARAMS, JSON

EXTENSION = "io.modelcontextprotocol/tasks"
TERMINAL = frozenset({"completed", "failed", "cancelled"})
POLL_INTERVAL_MS = 200


def iso(seconds: float) -> str:
    """``2026-07-28T12:00:00.000Z``."""
    stamp = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def _ignore() -> None:
    pass


@attrs.define(eq=False)
class TaskRecord:
    """One task: its status, what it waits for, and how it ended.

    ``on_change`` and ``on_cancel`` are the transport's: wake the task's
    driver, and stop it.
    """

    task_id: str
    created: float
    ttl_ms: int
    clock: Callable[[], float] = attrs.field(repr=False)
    status: str = "working"
    updated: float = 0.0
    result: JSON | None = None
    error: JSON | None = None
    pending: dict[str, InputRequest] = attrs.field(factory=dict)
    answers: dict[str, JSON] = attrs.field(factory=dict)
    on_change: Callable[[], None] = attrs.field(default=_ignore, repr=False)
    on_cancel: Callable[[], None] = attrs.field(default=_ignore, repr=False)

    def __attrs_post_init__(self) -> None:
        self.updated = self.created

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def expires(self) -> float:
        return self.created + self.ttl_ms / 1000

    def describe(self) -> JSON:
        """The task as ``tasks/get`` and ``CreateTaskResult`` show it."""
        out: JSON = {
            "taskId": self.task_id,
            "status": self.status,
            "createdAt": iso(self.created),
            "lastUpdatedAt": iso(self.updated),
            "ttlMs": self.ttl_ms,
            "pollIntervalMs": POLL_INTERVAL_MS,
        }
        if self.status == "input_required":
            out["inputRequests"] = {
                key: {"method": r.method, "params": r.params} for key, r in self.pending.items()
            }
        if self.result is not None:
            out["result"] = self.result
        if self.error is not None:
            out["error"] = self.error
        return out

    def created_result(self) -> JSON:
        """The ``CreateTaskResult`` that answers the ``tools/call``."""
        out = self.describe()
        out["resultType"] = "task"
        return out

    # -- what the driver reports

    def wait_for(self, requests: tuple[InputRequest, ...]) -> bool:
        """The task needs these inputs; returns whether it has them all."""
        self.pending = {r.key: r for r in requests if r.key not in self.answers}
        self._set("input_required" if self.pending else "working")
        return not self.pending

    def replies(self, requests: tuple[InputRequest, ...]) -> dict[str, JSON]:
        return {r.key: {"result": self.answers[r.key]} for r in requests}

    def finish(self, message: JSON) -> None:
        """The tool's response: a result, or a JSON-RPC error."""
        if self.is_terminal:
            return
        if "error" in message:
            self.error = message["error"]
            self._set("failed")
        else:
            self.result = message.get("result", {})
            self._set("completed")

    def abandon(self) -> None:
        """The driver stopped before the tool answered."""
        if not self.is_terminal:
            self._set("cancelled")

    # -- what the client asks

    def update(self, responses: JSON) -> None:
        """``tasks/update``: answers by key; unknown keys are ignored."""
        for key, value in responses.items():
            if key in self.pending:
                self.answers[key] = value
                del self.pending[key]
        if self.status == "input_required" and not self.pending:
            self._set("working")
        self.on_change()

    def cancel(self) -> None:
        """``tasks/cancel``; a task that has ended stays as it is."""
        if not self.is_terminal:
            self._set("cancelled")
            self.pending.clear()
            self.on_cancel()

    def _set(self, status: str) -> None:
        self.status = status
        self.updated = max(self.clock(), self.updated)


@attrs.define(eq=False)
class TaskStore:
    """The tasks of every client, by id (ids are unguessable)."""

    clock: Callable[[], float]
    ttl_ms: int = 600_000
    max_tasks: int = 1000
    _tasks: dict[str, TaskRecord] = attrs.field(factory=dict)

    def __repr__(self) -> str:
        return f"<TaskStore tasks={len(self._tasks)}>"

    def __len__(self) -> int:
        return len(self._tasks)

    def create(self) -> TaskRecord:
        self.expire()
        if len(self._tasks) >= self.max_tasks:
            raise RpcError(INTERNAL_ERROR, "too many tasks")
        record = TaskRecord(secrets.token_hex(16), self.clock(), self.ttl_ms, self.clock)
        self._tasks[record.task_id] = record
        return record

    def get(self, task_id: object) -> TaskRecord:
        """Raises RpcError (-32602) for an id this store does not hold."""
        self.expire()
        record = self._tasks.get(task_id) if isinstance(task_id, str) else None
        if record is None:
            raise RpcError(INVALID_PARAMS, "unknown taskId")
        return record

    def expire(self) -> None:
        """Forget the tasks past their TTL, cancelling those still running."""
        now = self.clock()
        for task_id, record in list(self._tasks.items()):
            if record.expires <= now:
                record.cancel()
                del self._tasks[task_id]
