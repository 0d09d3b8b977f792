"""One MCP session in front of one or more targets.

How this works: a ``RelaySession`` runs as a task of the ``SessionManager``'s
nursery (itself under ``Gateway.serve``). The task opens one upstream
transport per target and starts a reader per transport; it lives until the
client deletes the session, the session idles past its TTL, or the gateway
stops, and then closes every transport (child processes included).

HTTP handlers talk to the session through ``request()``: the client's
request gets a session-unique upstream id, is sent to its target, and every
upstream message that belongs to it (progress for its token, server-to-client
requests and notifications from that target while it is in flight, and
finally its response) is delivered to that handler's channel. Messages that
belong to no in-flight request go to the session's GET stream, if any.
Server-to-client requests get gateway ids (``agw-<n>``) so that requests from
different targets cannot collide at the client; the client's answer is routed
back to the right target with the original id.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import trio

from agentgw.config.model import McpTarget
from agentgw.errors import UpstreamError
from agentgw.tls import ClientTLS
from agentgw.upstream.mcp.base import McpTransport, open_transport
from agentgw.upstream.pool import ConnectionPool

logger = logging.getLogger(__name__)

Message = dict[str, Any]
Headers = Sequence[tuple[bytes, bytes]] | Callable[[str], Sequence[tuple[bytes, bytes]]]
"""The client's headers for upstreams, or a function giving them per target
(when one target passes the client's token on and another does not)."""
CHANNEL_SIZE = 256
MAX_IN_FLIGHT = 10_000


@attrs.define(eq=False)
class Pending:
    """A client request in flight to one target."""

    target: str
    client_id: Any
    send: trio.MemorySendChannel[Message]
    progress_token: Any = None


@attrs.frozen
class SessionStatistics:
    pending: int
    streams: int
    idle_seconds: float


@attrs.define(eq=False)
class RelaySession:
    sid: str
    targets: tuple[McpTarget, ...]
    pool: ConnectionPool
    ttl: float
    tls: Mapping[str, ClientTLS] = attrs.field(factory=dict)  # by target name
    upstream_sessions: dict[str, str | None] = attrs.field(factory=dict)
    transports: dict[str, McpTransport] = attrs.field(factory=dict)
    dead: dict[str, str] = attrs.field(factory=dict)
    protocol_version: str | None = None
    last_active: float = attrs.field(factory=time.monotonic)
    closed: trio.Event = attrs.field(factory=trio.Event)
    has_ended: bool = False
    # A session shared by many clients (2026-07-28 requests): nothing that
    # is not tied to one request (by id or progress token) is relayed.
    is_shared: bool = False
    # Taken up from a sibling worker (``agentgw.workers``) for requests only:
    # no server-to-client stream, and the upstream sessions are never ended.
    is_replica: bool = False
    init_result: dict[str, Any] | None = None
    _ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    _pending: dict[tuple[str, int], Pending] = attrs.field(factory=dict)
    _progress: dict[tuple[str, Any], Pending] = attrs.field(factory=dict)
    _server_requests: dict[str, tuple[str, Any]] = attrs.field(factory=dict)
    _get_streams: list[trio.MemorySendChannel[Message]] = attrs.field(factory=list)

    def __repr__(self) -> str:
        targets = list(self.transports)
        return f"<RelaySession {self.sid[:8]} targets={targets} pending={len(self._pending)}>"

    @property
    def is_idle(self) -> bool:
        return not self._pending and not self._get_streams

    def statistics(self) -> SessionStatistics:
        idle = time.monotonic() - self.last_active
        return SessionStatistics(len(self._pending), len(self._get_streams), idle)

    def touch(self) -> None:
        self.last_active = time.monotonic()

    def close(self) -> None:
        self.closed.set()

    # ------------------------------------------------------------ lifetime

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open every target, serve until closed or idle, then close all."""
        try:
            async with AsyncExitStack() as stack:
                for target in self.targets:
                    try:
                        transport = await stack.enter_async_context(
                            open_transport(
                                target,
                                pool=self.pool,
                                tls=self.tls.get(target.name),
                                session_id=self.upstream_sessions.get(target.name),
                                protocol_version=self.protocol_version,
                                server_stream=not self.is_replica,
                            )
                        )
                    except UpstreamError as exc:
                        self.dead[target.name] = exc.reason
                        logger.warning("target %s failed to start: %s", target.name, exc.reason)
                        continue
                    self.transports[target.name] = transport
                # Runs before the transports close: a session that did not
                # end (the gateway is stopping) keeps its upstream sessions,
                # so another replica with the same key can resume them.
                stack.callback(self._keep_upstream_sessions_unless_ended)
                async with trio.open_nursery() as nursery:
                    for name, transport in self.transports.items():
                        nursery.start_soon(self._read, name, transport)
                    task_status.started()
                    await self._wait_until_done()
                    self.has_ended = True
                    nursery.cancel_scope.cancel()
        finally:
            self.closed.set()
            self._fail_all("session closed")

    def _keep_upstream_sessions_unless_ended(self) -> None:
        if not self.has_ended or self.is_replica:
            for transport in self.transports.values():
                if hasattr(transport, "keep_upstream_session"):
                    transport.keep_upstream_session = True

    async def _wait_until_done(self) -> None:
        while not self.closed.is_set():
            with trio.move_on_at(trio.current_time() + self.ttl / 4 + 0.01):
                await self.closed.wait()
            if self.is_idle and time.monotonic() - self.last_active > self.ttl:
                logger.info("session %s expired", self.sid[:8])
                return

    # ------------------------------------------------------------ upstream -> client

    async def _read(self, target: str, transport: McpTransport) -> None:
        while True:
            try:
                message = await transport.receive()
            except UpstreamError as exc:
                self.dead[target] = exc.reason
                self.transports.pop(target, None)
                self._fail_target(target, exc.reason)
                return
            await self._dispatch(target, message)

    async def _dispatch(self, target: str, message: Message) -> None:
        msg_id = message.get("id")
        if "method" not in message:  # a response to one of our requests
            if not isinstance(msg_id, int):
                logger.debug("target %s answered unknown id %r", target, msg_id)
                return
            pending = self._pending.pop((target, msg_id), None)
            if pending is None:
                return
            await self._deliver(pending.send, {**message, "id": pending.client_id})
            return
        if msg_id is not None:  # a server-to-client request
            gateway_id = f"agw-{next(self._ids)}"
            if len(self._server_requests) >= MAX_IN_FLIGHT:
                await self._answer_upstream_error(target, msg_id, "too many requests in flight")
                return
            self._server_requests[gateway_id] = (target, msg_id)
            message = {**message, "id": gateway_id}
            if self.is_shared or not await self._route(target, message):
                self._server_requests.pop(gateway_id, None)
                if message["method"] == "ping":
                    await self._send_upstream(
                        target, {"jsonrpc": "2.0", "id": msg_id, "result": {}}
                    )
                else:
                    await self._answer_upstream_error(target, msg_id, "no client stream is open")
            return
        # a notification
        params = message.get("params") or {}
        if message["method"] == "notifications/progress" and isinstance(params, dict):
            pending = self._progress.get((target, _hashable(params.get("progressToken"))))
            if pending is not None:
                params = {**params, "progressToken": pending.progress_token}
                await self._deliver(pending.send, {**message, "params": params})
                return
        if not self.is_shared:
            await self._route(target, message)

    async def _route(self, target: str, message: Message) -> bool:
        """Deliver to the newest request in flight to ``target``, else to the
        GET stream. False if nobody can take it."""
        for (t, _), pending in reversed(list(self._pending.items())):
            if t == target and await self._deliver(pending.send, message):
                return True
        for stream in list(self._get_streams):
            if await self._deliver(stream, message):
                return True
        return False

    async def _deliver(self, send: trio.MemorySendChannel[Message], message: Message) -> bool:
        try:
            await send.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def _answer_upstream_error(self, target: str, msg_id: Any, text: str) -> None:
        error = {"code": -32603, "message": f"agentgw: {text}"}
        await self._send_upstream(target, {"jsonrpc": "2.0", "id": msg_id, "error": error})

    async def _send_upstream(self, target: str, message: Message, headers: Headers = ()) -> None:
        transport = self.transports.get(target)
        if transport is None:
            raise UpstreamError(f"target {target}: {self.dead.get(target, 'not connected')}")
        # An answer the transport read at once skips its queue and our reader.
        answers: list[Message] = []
        own = headers(target) if callable(headers) else headers
        await transport.send(message, headers=own, answers=answers)
        for answer in answers:
            await self._dispatch(target, answer)

    def _fail_target(self, target: str, reason: str) -> None:
        for key, pending in list(self._pending.items()):
            if key[0] == target:
                del self._pending[key]
                error = {"code": -32603, "message": f"target {target}: {reason}"}
                err = {"jsonrpc": "2.0", "id": pending.client_id, "error": error}
                try:
                    pending.send.send_nowait(err)
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    pending.send.close()

    def _fail_all(self, reason: str) -> None:
        for target in {t for t, _ in self._pending}:
            self._fail_target(target, reason)
        for stream in self._get_streams:
            stream.close()

    # ------------------------------------------------------------ client -> upstream

    @asynccontextmanager
    async def request(
        self, target: str, message: Message, headers: Headers = ()
    ) -> AsyncIterator[trio.MemoryReceiveChannel[Message]]:
        """Send a client request to ``target``; yields the channel of every
        message that belongs to it, its response last. Leaving early (the
        client went away) tells the upstream the request is cancelled."""
        if len(self._pending) >= MAX_IN_FLIGHT:
            raise UpstreamError("too many requests in flight in this session")
        upstream_id = next(self._ids)
        send, receive = trio.open_memory_channel[Message](CHANNEL_SIZE)
        pending = Pending(target, message.get("id"), send)
        key = (target, upstream_id)
        self._pending[key] = pending
        params = message.get("params")
        token = None
        meta = params.get("_meta") if isinstance(params, dict) else None
        if (
            isinstance(params, dict)
            and isinstance(meta, dict)
            and meta.get("progressToken") is not None
        ):
            # Each upstream request gets its own token, so that tokens that
            # two clients (or two targets) chose alike cannot collide.
            pending.progress_token = meta["progressToken"]
            token = f"agw-p{upstream_id}"
            meta = {**meta, "progressToken": token}
            message = {**message, "params": {**params, "_meta": meta}}
            self._progress[(target, token)] = pending
        self.touch()
        answered = False
        try:
            await self._send_upstream(target, {**message, "id": upstream_id}, headers)
            async with receive:
                yield receive
            answered = key not in self._pending
        finally:
            self._pending.pop(key, None)
            if token is not None:
                self._progress.pop((target, token), None)
            send.close()
            self.touch()
            if not answered and target in self.transports:
                cancel = {
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": {"requestId": upstream_id, "reason": "client went away"},
                }
                with trio.move_on_after(2) as scope:
                    scope.shield = True
                    try:
                        await self._send_upstream(target, cancel)
                    except UpstreamError:
                        pass

    async def call(self, target: str, message: Message, headers: Headers = ()) -> Message:
        """Send a request and return its response, dropping anything else."""
        async with self.request(target, message, headers) as messages:
            async for reply in messages:
                if "method" not in reply:
                    return reply
        raise UpstreamError(f"target {target}: no response")

    async def notify(self, target: str, message: Message, headers: Headers = ()) -> None:
        self.touch()
        await self._send_upstream(target, message, headers)

    async def answer(self, message: Message, headers: Headers = ()) -> bool:
        """Route the client's response to a server-to-client request."""
        self.touch()
        routed = self._server_requests.pop(str(message.get("id")), None)
        if routed is None:
            return False
        target, original = routed
        await self._send_upstream(target, {**message, "id": original}, headers)
        return True

    def upstream_id_for(self, client_id: Any) -> tuple[str, int] | None:
        """The (target, upstream id) of an in-flight request, for cancels."""
        for key, pending in self._pending.items():
            if pending.client_id == client_id:
                return key
        return None

    @asynccontextmanager
    async def get_stream(self) -> AsyncIterator[trio.MemoryReceiveChannel[Message]]:
        send, receive = trio.open_memory_channel[Message](CHANNEL_SIZE)
        self._get_streams.append(send)
        try:
            async with receive:
                yield receive
        finally:
            self._get_streams.remove(send)
            send.close()
            self.touch()


def _hashable(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | None) else repr(value)


@attrs.define(eq=False)
class SessionManager:
    """Owns every session's task. ``serve`` runs in the gateway's nursery."""

    pool: ConnectionPool
    ttl: float = 1800.0
    max_sessions: int = 10_000
    sessions: dict[str, RelaySession] = attrs.field(factory=dict)
    _nursery: trio.Nursery | None = None

    def statistics(self) -> dict[str, int]:
        return {"sessions": len(self.sessions)}

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def start(self, session: RelaySession) -> RelaySession:
        """Start ``session``'s task; returns once its targets are open."""
        if self._nursery is None:
            raise UpstreamError("the gateway is not serving")
        if len(self.sessions) >= self.max_sessions:
            raise UpstreamError("too many sessions", status=503)
        await self._nursery.start(self._run, session)
        return session

    async def _run(self, session: RelaySession, *, task_status: trio.TaskStatus[None]) -> None:
        self.sessions[session.sid] = session
        try:
            await session.run(task_status=task_status)
        finally:
            self.sessions.pop(session.sid, None)
