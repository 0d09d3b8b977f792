"""One MCP session in front of one or more targets.

How this works: a ``RelaySession`` runs as a task of the ``SessionManager``'s
nursery (itself under ``Gateway.serve``). The task opens one upstream
transport per target and a reader per transport; it lives until the client
deletes the session, the session idles past its TTL, or the gateway stops,
and then closes every transport (child processes included).

A client request goes through ``request()``: it gets a session-unique
upstream id and is sent to its target; the ``Call`` it yields
(``relay/calls.py``) gives its messages. What belongs to no request in
flight goes to the session's GET streams, if any.

Server-to-client requests get gateway ids (``agw-<n>``, ``mcp.ids.IdMap``)
so that requests from different targets cannot collide at the client; the
client's answer goes back to the right target with the original id.
Progress tokens are rewritten per request likewise.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import trio

from agentgw.config.model import McpTarget
from agentgw.errors import HTTPError, UpstreamError, UpstreamUnavailable
from agentgw.mcp.federation import McpRoute, outbound
from agentgw.mcp.ids import IdMap, IdMapFull
from agentgw.mcp.stateless import SUBSCRIPTION_ID_KEY
from agentgw.relay.calls import CHANNEL_SIZE, Call, Headers, Message, Pending, hashable, is_final
from agentgw.relay.resume import SessionStreams
from agentgw.upstream.mcp._common import UpstreamSessionGone
from agentgw.upstream.mcp.base import Answer, McpTransport, TransportOpener, open_transport
from agentgw.upstream.pool import ConnectionPool

logger = logging.getLogger(__name__)

MAX_IN_FLIGHT = 10_000
CANCEL_TIMEOUT = 2.0


@attrs.frozen
class SessionStatistics:
    pending: int
    streams: int
    idle_seconds: float


@attrs.define(eq=False)
class RelaySession:
    """One session. ``route`` is the route it was made for: after a reload
    changed that route, the session keeps its own targets until it ends."""

    sid: str
    route: McpRoute
    pool: ConnectionPool
    ttl: float
    upstream_sessions: dict[str, str | None] = attrs.field(factory=dict)
    transports: dict[str, McpTransport] = attrs.field(factory=dict)
    dead: dict[str, str] = attrs.field(factory=dict)
    protocol_version: str | None = None
    idle_timeout: float | None = None  # of upstream SSE streams
    last_active: float = attrs.field(factory=time.monotonic)
    closed: trio.Event = attrs.field(factory=trio.Event)
    has_ended: bool = False
    # A session shared by many clients (2026-07-28 requests): nothing that
    # is not tied to one request (by id or progress token) is relayed.
    is_shared: bool = False
    # Taken up from a sibling worker for requests only: no server-to-client
    # stream, and the upstream sessions are never ended.
    is_replica: bool = False
    # Ended for good (a DELETE, an upstream session gone): never resumed.
    is_revoked: bool = False
    # A shared session's targets' own initialize results (for server/discover).
    init_results: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    # What the 2026-07-28 relay keeps on a shared session (relay/stateless.py).
    extras: dict[str, Any] = attrs.field(factory=dict)
    # Targets this session does not open (a shared session leaves those that
    # speak 2026-07-28 to the route's native session, relay/tasks.py).
    skip: frozenset[str] = frozenset()
    _ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    _pending: dict[tuple[str, int], Pending] = attrs.field(factory=dict)
    _progress: dict[tuple[str, Any], Pending] = attrs.field(factory=dict)
    _server_requests: IdMap = attrs.field(factory=lambda: IdMap(MAX_IN_FLIGHT, prefix="agw-"))
    _get_streams: list[trio.MemorySendChannel[Message]] = attrs.field(factory=list)
    # How a target's transport is opened (tests give an in-memory one).
    opener: TransportOpener = open_transport
    # The session's resumable SSE streams (Last-Event-ID), gone with it.
    streams: SessionStreams = attrs.field(factory=SessionStreams)

    @property
    def targets(self) -> tuple[McpTarget, ...]:
        """The route's targets (the tuple itself: it names the route)."""
        return self.route.targets

    @property
    def opened_targets(self) -> tuple[McpTarget, ...]:
        """The targets this session opens: all but ``skip``."""
        return tuple(t for t in self.route.targets if t.name not in self.skip)

    def __repr__(self) -> str:
        return f"<RelaySession {self.sid[:8]} {list(self.transports)} {len(self._pending)} pending>"

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
                for target in self.opened_targets:
                    try:
                        transport = await stack.enter_async_context(
                            self.opener(
                                target,
                                pool=self.pool,
                                tls=self.route.tls.get(target.name),
                                session_id=self.upstream_sessions.get(target.name),
                                protocol_version=self.protocol_version,
                                server_stream=not self.is_replica,
                                idle_timeout=self.idle_timeout,
                            )
                        )
                    except UpstreamError as exc:
                        self.dead[target.name] = exc.reason
                        logger.warning("target %s failed to start: %s", target.name, exc.log_text)
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
            self.streams.close()

    def _keep_upstream_sessions_unless_ended(self) -> None:
        if not self.has_ended or self.is_replica:
            for transport in self.transports.values():
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
                if isinstance(exc, UpstreamSessionGone):
                    self._upstream_session_gone(target)
                return
            await self._from_reader(target, message)

    async def _from_reader(self, target: str, message: Message) -> None:
        """A message that came through the transport's reader."""
        msg_id = message.get("id")
        if is_final(message):  # a response to one of our requests
            pending = self._pending.pop((target, msg_id), None) if isinstance(msg_id, int) else None
            if pending is None:
                logger.debug("target %s answered unknown id %r", target, msg_id)
                return
            await pending.deliver({**message, "id": pending.client_id})
            return
        if msg_id is not None:  # a server-to-client request
            relayed = await self._server_request(target, message)
            if relayed is None:
                return
            if self.is_shared:
                delivered = await self._route_to_flight(target, relayed)
            else:
                delivered = await self._route(target, relayed)
            if not delivered:
                await self._refuse_server_request(target, relayed)
            return
        pending = self._progress_of(target, message)
        if pending is not None:
            await pending.deliver(self._client_progress(pending, message))
        elif (pending := self._subscription_of(target, message)) is not None:
            await pending.deliver(message)
        elif self.is_shared:
            self.broadcast(outbound(self.route, target, message, ""))
        else:
            await self._route(target, message)

    def settle(self, target: str, upstream_id: int) -> None:
        """A call's response came: it is no longer in flight."""
        self._pending.pop((target, upstream_id), None)

    async def own_message(self, call: Call, message: Message) -> Message | None:
        """A message of a request's own answer, as the client gets it; None
        for one that is not the client's (the response to another id)."""
        msg_id = message.get("id")
        if is_final(message):
            if msg_id != call.upstream_id:
                logger.debug("target %s answered unknown id %r", call.target, msg_id)
                return None
            self.settle(call.target, call.upstream_id)
            return {**message, "id": call.pending.client_id}
        if msg_id is not None:
            # In a shared session too: the 2026-07-28 relay decides.
            return await self._server_request(call.target, message)
        if self._progress_of(call.target, message) is call.pending:
            return self._client_progress(call.pending, message)
        return message

    async def _server_request(self, target: str, message: Message) -> Message | None:
        """A server-to-client request with its gateway id; None if refused."""
        try:
            gateway_id = self._server_requests.allocate(target, message["id"])
        except (IdMapFull, ValueError):
            await self._answer_upstream_error(target, message["id"], "too many requests in flight")
            return None
        return {**message, "id": gateway_id}

    async def _refuse_server_request(self, target: str, relayed: Message) -> None:
        route = self._server_requests.pop(relayed["id"])
        if route is None:
            return
        if relayed.get("method") == "ping":
            await self._send_upstream(
                target, {"jsonrpc": "2.0", "id": route.original, "result": {}}
            )
        else:
            await self._answer_upstream_error(target, route.original, "no client stream is open")

    def _progress_of(self, target: str, message: Message) -> Pending | None:
        params = message.get("params")
        if message.get("method") != "notifications/progress" or not isinstance(params, dict):
            return None
        return self._progress.get((target, hashable(params.get("progressToken"))))

    def _subscription_of(self, target: str, message: Message) -> Pending | None:
        """The listen request (2026-07-28) that a notification belongs to:
        a target that answers through a reader tags it with that request's
        id, as the gateway sent it."""
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        tag = meta.get(SUBSCRIPTION_ID_KEY) if isinstance(meta, dict) else None
        if isinstance(tag, str) and tag.isdigit():
            tag = int(tag)
        return self._pending.get((target, tag)) if isinstance(tag, int) else None

    @staticmethod
    def _client_progress(pending: Pending, message: Message) -> Message:
        params = {**message["params"], "progressToken": pending.progress_token}
        return {**message, "params": params}

    async def _route(self, target: str, message: Message) -> bool:
        """Deliver to the newest request in flight to ``target`` that reads
        through the reader, else to a GET stream. False if nobody can."""
        for (t, _), pending in reversed(list(self._pending.items())):
            if t == target and not pending.is_inline and await pending.deliver(message):
                return True
        if self.is_shared:  # its streams are listen streams, for notifications only
            return False
        for stream in list(self._get_streams):
            try:
                await stream.send(message)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                continue
            return True
        return False

    def broadcast(self, message: Message) -> None:
        """Hand a notification to every server stream of the session; a
        stream that is not reading loses it rather than stall the others."""
        for stream in list(self._get_streams):
            try:
                stream.send_nowait(message)
            except trio.WouldBlock:
                logger.info("session %s: a slow stream lost a notification", self.sid[:8])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                continue

    async def _route_to_flight(self, target: str, message: Message) -> bool:
        """Shared session, through a reader (stdio, SSE): the newest request
        to ``target`` that takes server-to-client requests gets it; a
        2025-11-25 target does not say which of its requests it is about."""
        for (t, _), pending in reversed(list(self._pending.items())):
            if t == target and pending.takes_server_requests and await pending.deliver(message):
                return True
        return False

    def server_request_origin(self, gateway_id: Any) -> Any:
        """The id a target gave a server-to-client request in flight, or None."""
        route = self._server_requests.get(gateway_id)
        return None if route is None else route.original

    async def _answer_upstream_error(self, target: str, msg_id: Any, text: str) -> None:
        error = HTTPError(f"agentgw: {text}")
        await self._send_upstream(target, error.rpc_error(msg_id))

    async def _send_upstream(
        self, target: str, message: Message, headers: Headers = ()
    ) -> Answer | None:
        transport = self.transports.get(target)
        if transport is None:
            reason = self.dead.get(target, "upstream unavailable")
            raise UpstreamUnavailable(f"target {target}: upstream unavailable", detail=reason)
        own = headers(target) if callable(headers) else headers
        try:
            return await transport.send(message, headers=own)
        except UpstreamSessionGone:
            self._upstream_session_gone(target)
            raise

    def _upstream_session_gone(self, target: str) -> None:
        """A target ended its upstream session: the client's session ends
        too (404 from now on), and the client re-initializes. A new upstream
        session behind its back would lose what the handshake set up."""
        if not self.is_revoked:
            logger.info("session %s: target %s ended its session", self.sid[:8], target)
        self.is_revoked = True
        self.close()

    def _fail_target(self, target: str, reason: str) -> None:
        for key, pending in list(self._pending.items()):
            if key[0] == target and not pending.is_inline:
                del self._pending[key]
                error = UpstreamUnavailable(f"target {target}: upstream unavailable")
                pending.fail(error.rpc_error(pending.client_id))
        self._server_requests.discard_target(target)
        logger.info("session %s: target %s is gone: %s", self.sid[:8], target, reason)

    def _fail_all(self, reason: str) -> None:
        for target in {t for t, _ in self._pending}:
            self._fail_target(target, reason)
        for stream in self._get_streams:
            stream.close()

    # ------------------------------------------------------------ client -> upstream

    @asynccontextmanager
    async def request(
        self,
        target: str,
        message: Message,
        headers: Headers = (),
        *,
        takes_server_requests: bool = False,
    ) -> AsyncIterator[Call]:
        """Send a client request to ``target``; the ``Call`` gives what
        belongs to it. Leaving before its response (the client went away, a
        timeout) tells the upstream the request is cancelled.

        Raises:
            UpstreamError: the request could not be sent.
        """
        if len(self._pending) >= MAX_IN_FLIGHT:
            raise UpstreamUnavailable(
                "upstream unavailable", detail="too many requests in flight in this session"
            )
        upstream_id = next(self._ids)
        pending = Pending(target, message.get("id"), takes_server_requests=takes_server_requests)
        key = (target, upstream_id)
        self._pending[key] = pending
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        if token is not None and isinstance(params, dict) and isinstance(meta, dict):
            # Each upstream request gets its own token, so that tokens that
            # two clients (or two targets) chose alike cannot collide.
            pending.progress_token = token
            token = f"agw-p{upstream_id}"
            message = {**message, "params": {**params, "_meta": {**meta, "progressToken": token}}}
            self._progress[(target, token)] = pending
        self.touch()
        call = Call(self, target, upstream_id, pending)
        try:
            call.answer = await self._send_upstream(target, {**message, "id": upstream_id}, headers)
            pending.is_inline = call.answer is not None
            yield call
        finally:
            self._pending.pop(key, None)
            if token is not None:
                self._progress.pop((target, token), None)
            pending.close()
            if call.answer is not None:
                call.answer.close()
            self.touch()
            if not call.is_answered and target in self.transports:
                await self._cancel_upstream(target, upstream_id)

    async def _cancel_upstream(self, target: str, upstream_id: int) -> None:
        cancel = {
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": upstream_id, "reason": "client went away"},
        }
        with trio.move_on_after(CANCEL_TIMEOUT) as scope:
            scope.shield = True
            try:
                await self._send_upstream(target, cancel)
            except UpstreamError as exc:
                logger.debug("cancelling a request of %s: %s", target, exc.log_text)

    async def call(self, target: str, message: Message, headers: Headers = ()) -> Message:
        """Send a request and return its response, dropping anything else."""
        async with self.request(target, message, headers) as call:
            while True:
                reply = await call.next()
                if is_final(reply):
                    return reply

    async def notify(self, target: str, message: Message, headers: Headers = ()) -> None:
        self.touch()
        await self._send_upstream(target, message, headers)

    async def answer(self, message: Message, headers: Headers = ()) -> bool:
        """Route the client's response to a server-to-client request."""
        self.touch()
        route = self._server_requests.pop(message.get("id"))
        if route is None:
            return False
        await self._send_upstream(route.target, {**message, "id": route.original}, headers)
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
