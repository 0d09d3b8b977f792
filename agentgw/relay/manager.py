"""The owner of every MCP session's task."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from agentgw.errors import UpstreamUnavailable
from agentgw.mcp.ended import EndedSessions
from agentgw.relay.session import RelaySession
from agentgw.upstream.pool import ConnectionPool


@attrs.define(eq=False)
class SessionManager:
    """Owns every session's task. ``serve`` runs in the gateway's nursery."""

    pool: ConnectionPool
    ttl: float = 1800.0
    max_sessions: int = 10_000
    sessions: dict[str, RelaySession] = attrs.field(factory=dict)
    # Sessions that ended for good (DELETE, an upstream session gone): their
    # tokens never resume them in this process.
    ended: EndedSessions = attrs.field(
        default=attrs.Factory(lambda self: EndedSessions(self.ttl), takes_self=True)
    )
    _nursery: trio.Nursery | None = None

    def statistics(self) -> dict[str, int]:
        return {"sessions": len(self.sessions)}

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def start_soon(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run ``fn(*args)`` in the manager's nursery (work that outlives
        the exchange that started it: a suspended MRTR call)."""
        if self._nursery is None:
            raise UpstreamUnavailable("upstream unavailable", detail="the gateway is not serving")
        self._nursery.start_soon(fn, *args)

    async def start(self, session: RelaySession) -> RelaySession:
        """Start ``session``'s task; returns once its targets are open."""
        if self._nursery is None:
            raise UpstreamUnavailable("upstream unavailable", detail="the gateway is not serving")
        if len(self.sessions) >= self.max_sessions:
            raise UpstreamUnavailable("too many sessions", detail=f"{self.max_sessions} open")
        await self._nursery.start(self._run, session)
        return session

    def end(self, session: RelaySession) -> None:
        """End ``session`` for good (a DELETE)."""
        session.is_revoked = True
        self.ended.add(session.sid, time.monotonic())
        session.close()

    async def _run(self, session: RelaySession, *, task_status: trio.TaskStatus[None]) -> None:
        self.sessions[session.sid] = session
        try:
            await session.run(task_status=task_status)
        finally:
            if self.sessions.get(session.sid) is session:
                del self.sessions[session.sid]
            if session.is_revoked:
                self.ended.add(session.sid, time.monotonic())
