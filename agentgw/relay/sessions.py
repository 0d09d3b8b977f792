"""Finding the session a request names, or making one.

How this works: the id a client gets (``Mcp-Session-Id``) is a sealed token
(``mcp/session_token.py``) holding the session's id and its targets' upstream
session ids. A token that decoded once is remembered (bounded LRU), so steady
traffic does not pay for AES-GCM on every request; forged ones never are. A
token naming a session this process does not hold is resumed when every
target is Streamable HTTP (the upstream sessions live outside this process):
that is how another replica takes a session up (or a sibling worker, when
the session's own worker is not there). A session that ended for good (a
DELETE, or a target's 404 for its upstream session) is never resumed here:
``SessionManager.ended`` keeps its id for the session TTL.

With ``--workers``, a session id names the worker that made it
(``SessionIds``); the gateway hands the directory that object, so the relay
knows nothing else of workers.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections import OrderedDict

import attrs
import trio

from agentgw._version import __version__
from agentgw.errors import SESSION_NOT_FOUND, HTTPError, NotFound, UpstreamError
from agentgw.mcp import versions
from agentgw.mcp.federation import McpRoute
from agentgw.mcp.session_token import InvalidSession, SessionCodec, SessionState
from agentgw.relay.context import UpstreamHeaders
from agentgw.relay.dispatch import initialize
from agentgw.relay.manager import SessionManager
from agentgw.relay.session import RelaySession
from agentgw.upstream.mcp.base import TransportOpener, open_transport
from agentgw.upstream.pool import ConnectionPool

logger = logging.getLogger(__name__)

TOKEN_CACHE_SIZE = 10_000
# Shared upstream sessions of one route: one per set of caller credentials
# that reach its targets (``credentials_key``), at most this many.
MAX_SHARED_PER_ROUTE = 1000


def credentials_key(route: McpRoute, headers: UpstreamHeaders) -> str:
    """Whose shared session a request goes through: a digest of the
    ``Authorization`` values that reach the route's targets, or "" when
    none does (everyone shares one)."""
    found: list[bytes] = []
    for target in route.target_names:
        own = headers(target) if callable(headers) else headers
        found += [b"%s=%s" % (target.encode(), v) for n, v in own if n == b"authorization"]
    if not found:
        return ""
    return hashlib.sha256(b"\n".join(found)).hexdigest()


@attrs.frozen
class SessionIds:
    """Session ids that name their worker (``<random>.w<index>``).

    ``index`` is None in a gateway of one process.
    """

    index: int | None = None
    count: int = 1

    def new(self) -> str:
        sid = secrets.token_urlsafe(16)
        return sid if self.index is None else f"{sid}.w{self.index}"

    def owner_of(self, sid: str) -> int | None:
        """The worker a session id names, or None."""
        if self.index is None:
            return None
        _, dot, tail = sid.rpartition(".w")
        if not dot or not tail.isdigit():
            return None
        index = int(tail)
        return index if index < self.count else None

    def is_mine(self, sid: str) -> bool:
        owner = self.owner_of(sid)
        return owner is None or owner == self.index


def session_not_found(detail: str) -> NotFound:
    return NotFound("session not found", code=SESSION_NOT_FOUND, detail=detail)


@attrs.define(eq=False)
class SessionDirectory:
    manager: SessionManager
    codec: SessionCodec
    pool: ConnectionPool
    ids: SessionIds = SessionIds()
    ttl: float = 1800.0
    idle_timeout: float | None = None
    opener: TransportOpener = open_transport
    _tokens: OrderedDict[str, str] = attrs.field(factory=OrderedDict)
    # By ``id(route)`` and the callers' credentials (``credentials_key``),
    # and checked to be that route (an id is unique only while its object
    # lives); a changed route gets new shared sessions.
    _shared: dict[tuple[int, str, frozenset[str]], RelaySession] = attrs.field(factory=dict)
    _shared_locks: dict[tuple[int, str, frozenset[str]], trio.Lock] = attrs.field(factory=dict)

    def sid_of(self, token: str) -> str | None:
        """The session id a token holds; None for a token this gateway did
        not seal."""
        sid = self._tokens.get(token)
        if sid is not None:
            self._tokens.move_to_end(token)
            return sid
        try:
            sid = self.codec.decode(token).sid
        except InvalidSession:
            return None
        self._remember(token, sid)
        return sid

    def _remember(self, token: str, sid: str) -> None:
        self._tokens[token] = sid
        if len(self._tokens) > TOKEN_CACHE_SIZE:
            self._tokens.popitem(last=False)

    def token_for(self, session: RelaySession) -> str:
        state = SessionState.new(
            sid=session.sid,
            targets={t: tr.session_id for t, tr in session.transports.items()},
            protocol_version=str(session.protocol_version or ""),
        )
        token = self.codec.encode(state)
        self._remember(token, session.sid)
        return token

    def _session(
        self,
        route: McpRoute,
        sid: str,
        *,
        ttl: float | None = None,
        upstream_sessions: dict[str, str | None] | None = None,
        protocol_version: str | None = None,
        is_shared: bool = False,
        is_replica: bool = False,
        skip: frozenset[str] = frozenset(),
    ) -> RelaySession:
        return RelaySession(
            sid=sid,
            route=route,
            pool=self.pool,
            ttl=ttl or self.ttl,
            idle_timeout=self.idle_timeout,
            upstream_sessions=upstream_sessions or {},
            protocol_version=protocol_version,
            is_shared=is_shared,
            is_replica=is_replica,
            opener=self.opener,
            skip=skip,
        )

    async def _start(self, session: RelaySession) -> RelaySession:
        try:
            return await self.manager.start(session)
        except UpstreamError as exc:
            raise UpstreamError(exc.reason, status=503, detail=exc.detail) from exc

    async def new(self, route: McpRoute, ttl: float | None = None) -> RelaySession:
        """A new session of ``route``, its targets open."""
        return await self._start(self._session(route, self.ids.new(), ttl=ttl))

    async def find(self, token: str, route: McpRoute) -> RelaySession:
        """The session ``token`` names, taken up here if need be.

        Raises:
            NotFound: no such session (404, -32001).
        """
        sid = self._tokens.get(token)
        if sid is not None:
            session = self.manager.sessions.get(sid)
            if session is not None and not session.closed.is_set():
                self._tokens.move_to_end(token)
                return session
        try:
            state = self.codec.decode(token)
        except InvalidSession as exc:
            raise session_not_found("the token does not decode") from exc
        self._remember(token, state.sid)
        session = self.manager.sessions.get(state.sid)
        if session is not None and not session.closed.is_set():
            return session
        if (session is not None and session.is_revoked) or self.manager.ended.has(
            state.sid, time.monotonic()
        ):
            raise session_not_found("the session ended")
        # Resume a session issued by this or another replica with the same key.
        if set(state.targets) != set(route.target_names) or not route.resumable:
            raise session_not_found("not held here and not resumable")
        session = self._session(
            route,
            state.sid,
            upstream_sessions=dict(state.targets),
            protocol_version=state.protocol_version or None,
            # A sibling worker's session is taken up here for requests
            # only: its owner keeps the server-to-client stream and ends it.
            is_replica=not self.ids.is_mine(state.sid),
        )
        return await self._start(session)

    def end(self, session: RelaySession) -> None:
        """End ``session`` for good: its token never resumes it here."""
        self.manager.end(session)

    async def shared(
        self, route: McpRoute, headers: UpstreamHeaders, skip: frozenset[str] = frozenset()
    ) -> RelaySession:
        """The session that 2026-07-28 requests (which have no session) go
        through, initialized by the gateway. Callers share it only when no
        credentials of theirs reach the targets: callers whose
        ``Authorization`` does (``backendAuth: passthrough``, or a route
        that passes it on) each get their own, initialized with their own
        headers, so that no caller rides on another's upstream session.
        ``skip``: the targets it leaves to the route's native session.

        Raises:
            UpstreamError: the targets could not be initialized, or the
                route has ``MAX_SHARED_PER_ROUTE`` busy ones already (503).
        """
        key = (id(route), credentials_key(route, headers), skip)
        session = self._shared.get(key)
        if session is not None and session.route is route and not session.closed.is_set():
            return session
        lock = self._shared_locks.setdefault(key, trio.Lock())
        async with lock:
            session = self._shared.get(key)
            if session is not None and session.route is route and not session.closed.is_set():
                return session
            self._make_room_for_shared(route)
            session = await self._start(
                self._session(route, secrets.token_urlsafe(16), is_shared=True, skip=skip)
            )
            if not session.opened_targets:  # every target speaks 2026-07-28
                self._shared[key] = session
                return session
            init = {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": versions.INITIALIZE_VERSIONS[-1],
                    # Whatever the target asks in a call becomes an MRTR
                    # round (relay/mrtr.py); each client says what it takes.
                    "capabilities": {"sampling": {}, "elicitation": {}, "roots": {}},
                    "clientInfo": {"name": "agentgw", "version": __version__},
                },
            }
            try:
                await initialize(session, route, init, headers)
            except HTTPError:
                session.close()
                raise
            for target in list(session.transports):
                await session.notify(
                    target, {"jsonrpc": "2.0", "method": "notifications/initialized"}
                )
            self._shared[key] = session
            return session

    def _make_room_for_shared(self, route: McpRoute) -> None:
        """Forget the shared sessions that ended (a reload dropped their
        route, or they expired), and end the longest idle of ``route``'s
        when it has ``MAX_SHARED_PER_ROUTE`` already."""
        for key, old in list(self._shared.items()):
            if old.closed.is_set():
                del self._shared[key]
                lock = self._shared_locks.get(key)
                if lock is not None and not lock.locked():
                    del self._shared_locks[key]
        mine = [s for (rid, _, _), s in self._shared.items() if rid == id(route)]
        if len(mine) < MAX_SHARED_PER_ROUTE:
            return
        idle = [s for s in mine if s.is_idle]
        if not idle:
            raise UpstreamError(
                "upstream unavailable", status=503, detail="too many shared upstream sessions"
            )
        min(idle, key=lambda s: s.last_active).close()
