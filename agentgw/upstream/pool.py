"""Upstream HTTP/1.1 connections and their pool.

How this works: the pool's bookkeeping is synchronous (take an idle
connection, put one back, evict the expired) and the I/O follows it, as in
httpcore. A connection goes back to the pool only when its exchange ended
cleanly: request and response both complete and h11 willing to reuse it.
Anything else (a client that went away, a timeout, a protocol error) closes
it. Before reuse, a connection that became readable while idle (the upstream
closed it, or sent garbage) is dropped.

An ``Exchange`` is one request/response on one connection. A reused
connection whose request head could not be written is retried once on a new
connection: the upstream never saw the request, so it cannot run twice.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import time
from collections.abc import AsyncGenerator, Callable

import attrs
import h11
import trio

from agentgw.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from agentgw.wire.http import Headers

logger = logging.getLogger(__name__)

RECEIVE_SIZE = 65536
Origin = tuple[str, int]


@attrs.frozen
class PoolStatistics:
    idle: int
    active: int
    opened: int
    reused: int


@attrs.define(eq=False)
class UpstreamConnection:
    origin: Origin
    stream: trio.SocketStream
    created_at: float = attrs.field(factory=time.monotonic)
    idle_since: float = attrs.field(factory=time.monotonic)
    requests: int = 0
    h11: h11.Connection = attrs.field(
        factory=lambda: h11.Connection(h11.CLIENT, max_incomplete_event_size=65536)
    )

    def __repr__(self) -> str:
        return f"<UpstreamConnection {self.origin[0]}:{self.origin[1]} requests={self.requests}>"

    def has_expired(self, now: float, idle_timeout: float, max_lifetime: float) -> bool:
        return now - self.idle_since > idle_timeout or now - self.created_at > max_lifetime

    def is_readable(self) -> bool:
        """True if the idle socket has data or EOF waiting: not reusable."""
        sock = self.stream.socket
        try:
            readable, _, _ = select.select([sock.fileno()], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def is_reusable(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    def close(self) -> None:
        self.stream.socket.close()


@attrs.define(eq=False)
class ConnectionPool:
    """Keep-alive connections per origin, bounded and expiring."""

    connect_timeout: float = 10.0
    idle_timeout: float = 90.0
    max_lifetime: float = 600.0
    max_idle_per_origin: int = 64
    # Told of every new connection: its transport and how long it took (metrics).
    on_connect: Callable[[str, float], None] | None = None
    _idle: dict[Origin, list[UpstreamConnection]] = attrs.field(factory=dict)
    _active: int = 0
    _opened: int = 0
    _reused: int = 0

    def statistics(self) -> PoolStatistics:
        idle = sum(len(conns) for conns in self._idle.values())
        return PoolStatistics(idle, self._active, self._opened, self._reused)

    def take_idle(self, origin: Origin) -> UpstreamConnection | None:
        conns = self._idle.get(origin)
        now = time.monotonic()
        while conns:
            conn = conns.pop()
            if conn.has_expired(now, self.idle_timeout, self.max_lifetime) or conn.is_readable():
                conn.close()
                continue
            self._reused += 1
            self._active += 1
            conn.h11.start_next_cycle()
            return conn
        return None

    def put_back(self, conn: UpstreamConnection) -> None:
        self._active -= 1
        conns = self._idle.setdefault(conn.origin, [])
        if not conn.is_reusable() or len(conns) >= self.max_idle_per_origin:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        conns.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        self._active -= 1
        conn.close()

    def evict_expired(self) -> None:
        now = time.monotonic()
        for origin, conns in list(self._idle.items()):
            keep = []
            for conn in conns:
                if conn.has_expired(now, self.idle_timeout, self.max_lifetime):
                    conn.close()
                else:
                    keep.append(conn)
            if keep:
                self._idle[origin] = keep
            else:
                del self._idle[origin]

    async def serve_evictor(self, interval: float = 5.0) -> None:
        """Close expired idle connections now and then. Never returns."""
        while True:
            await trio.sleep(interval)
            self.evict_expired()

    async def connect(self, origin: Origin) -> UpstreamConnection:
        """A new connection to ``origin``: (host, port), or (path, 0) for a
        Unix socket (a sibling worker)."""
        host, port = origin
        unix = host.startswith("/")
        started = time.monotonic()
        with trio.move_on_after(self.connect_timeout) as scope:
            try:
                if unix:
                    stream = await trio.open_unix_socket(host)
                else:
                    stream = await trio.open_tcp_stream(host, port)
            except OSError as exc:
                if _is_refused(exc) or unix:
                    raise UpstreamUnavailable(f"upstream {host}:{port} refused the connection")
                raise UpstreamUnavailable(f"upstream {host}:{port} unreachable: {exc}")
        if scope.cancelled_caught:
            raise UpstreamTimeout(f"upstream {host}:{port} connect timeout")
        if not unix:
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.on_connect is not None:
            self.on_connect("unix" if unix else "plaintext", time.monotonic() - started)
        self._opened += 1
        self._active += 1
        return UpstreamConnection(origin, stream)

    def open_exchange(self, origin: Origin) -> Exchange:
        return Exchange(self, origin)

    def close_all(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()


def _is_refused(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED:
            return True
        if isinstance(exc, BaseExceptionGroup):
            return any(_is_refused(e) for e in exc.exceptions)
        exc = exc.__cause__
    return False


@attrs.frozen
class UpstreamResponse:
    status: int
    headers: Headers
    reason: bytes
    http_version: bytes


@attrs.define(eq=False)
class Exchange:
    """One request and its response on one upstream connection.

    Use as: ``send_head``, ``send_body`` (any times), ``end_body``,
    ``receive_response``, ``body()``; always ``release()`` in a finally.
    """

    pool: ConnectionPool
    origin: Origin
    conn: UpstreamConnection | None = None
    _released: bool = False
    _took_idle: bool = False

    async def connect(self) -> None:
        """Have the connection ready before ``send_head``, so that an origin
        that is not there fails before anything was read or sent.

        Raises:
            UpstreamUnavailable: refused or unreachable.
            UpstreamTimeout: the connect timed out.
        """
        if self.conn is None:
            conn = self.pool.take_idle(self.origin)
            self._took_idle = conn is not None
            self.conn = conn or await self.pool.connect(self.origin)

    async def send_head(
        self, method: bytes, target: bytes, headers: Headers, body: bytes | None = None
    ) -> None:
        """Send the request head; with ``body``, the whole request in one
        write (then do not call ``send_body``/``end_body``)."""
        request = h11.Request(method=method, target=target, headers=headers)
        for attempt in (0, 1):
            conn: UpstreamConnection | None
            if attempt == 0 and self.conn is not None:  # from connect()
                conn, reused = self.conn, self._took_idle
            else:
                conn = self.pool.take_idle(self.origin) if attempt == 0 else None
                reused = conn is not None
            if conn is None:
                conn = await self.pool.connect(self.origin)
            self.conn = conn
            conn.requests += 1
            try:
                data = conn.h11.send(request) or b""
                if body is not None:
                    if body:
                        data += conn.h11.send(h11.Data(data=body)) or b""
                    data += conn.h11.send(h11.EndOfMessage()) or b""
                await conn.stream.send_all(data)
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.pool.discard(conn)
                self.conn = None
                if not reused:
                    raise UpstreamError(f"upstream {self._name} reset the connection") from exc
                logger.debug("stale pooled connection to %s, retrying once", self._name)
            except h11.LocalProtocolError as exc:
                raise UpstreamError(f"cannot forward request: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @property
    def _name(self) -> str:
        return f"{self.origin[0]}:{self.origin[1]}"

    def _live(self) -> UpstreamConnection:
        if self.conn is None:
            raise UpstreamError("no upstream connection")
        return self.conn

    async def _send(self, event: h11.Data | h11.EndOfMessage) -> None:
        conn = self._live()
        try:
            data = conn.h11.send(event)
            if data:
                await conn.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise UpstreamError(f"upstream {self._name} reset the connection") from exc
        except h11.LocalProtocolError as exc:
            raise UpstreamError(f"cannot forward request body: {exc}") from exc

    async def send_body(self, data: bytes) -> None:
        if data:
            await self._send(h11.Data(data=data))

    async def end_body(self) -> None:
        await self._send(h11.EndOfMessage())

    async def _next_event(self, timeout: float) -> object:
        conn = self._live()
        while True:
            try:
                event = conn.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise UpstreamError(f"upstream {self._name} protocol error: {exc}") from exc
            if event is not h11.NEED_DATA:
                return event
            with trio.move_on_after(timeout) as scope:
                try:
                    data = await conn.stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise UpstreamError(f"upstream {self._name} reset the connection") from exc
            if scope.cancelled_caught:
                raise UpstreamTimeout(f"upstream {self._name} timed out")
            conn.h11.receive_data(data)

    async def receive_response(self, timeout: float) -> UpstreamResponse:
        """The response head; informational responses other than 101 are
        skipped."""
        while True:
            event = await self._next_event(timeout)
            if isinstance(event, h11.InformationalResponse) and event.status_code != 101:
                continue
            if isinstance(event, h11.Response | h11.InformationalResponse):
                return UpstreamResponse(
                    event.status_code, list(event.headers), event.reason, event.http_version
                )
            if isinstance(event, h11.ConnectionClosed):
                raise UpstreamError(f"upstream {self._name} closed the connection")
            raise UpstreamError(f"upstream {self._name} sent an unexpected {type(event).__name__}")

    async def body(self, idle_timeout: float) -> AsyncGenerator[bytes, None]:
        """Yield the response body as it arrives.

        Raises:
            UpstreamError: the upstream truncated the body or broke framing.
        """
        while True:
            event = await self._next_event(idle_timeout)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            elif isinstance(event, h11.ConnectionClosed):
                raise UpstreamError(f"upstream {self._name} closed the connection mid-body")
            else:  # pragma: no cover
                raise UpstreamError(f"upstream {self._name} sent an unexpected event")

    def take_stream(self) -> tuple[trio.SocketStream, bytes]:
        """Hand over the raw stream after a 101 (for a tunnel)."""
        conn = self._live()
        self.conn = None
        self._released = True
        self.pool._active -= 1
        return conn.stream, bytes(conn.h11.trailing_data[0])

    def release(self) -> None:
        """Return the connection to the pool if the exchange completed,
        else close it. Safe to call more than once."""
        if self._released or self.conn is None:
            return
        self._released = True
        self.pool.put_back(self.conn)
        self.conn = None
