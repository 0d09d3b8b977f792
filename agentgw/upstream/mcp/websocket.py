"""An MCP server over WebSocket (subprotocol ``mcp``): one JSON-RPC message
per text message.

How this works: the first ``send`` connects, forwarding that send's headers
in the handshake (the client's Authorization among them); the connection
lives in a task of the transport's nursery, which reads every message into
the inbox. When the connection closes, so does the transport. Closing the
transport closes the connection, bounded in time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import attrs
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from agentgw.config.model import HttpTarget
from agentgw.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from agentgw.tls import ClientTLS
from agentgw.upstream.mcp._common import (
    MAX_MESSAGE_SIZE,
    Inbox,
    Message,
    TransportClosed,
    decode,
    encode,
    open_task_nursery,
    printable,
    session_headers,
)
from agentgw.upstream.mcp._http import Url, target_url
from agentgw.upstream.pool import ConnectionPool
from agentgw.wire.http import Headers

logger = logging.getLogger(__name__)

SUBPROTOCOL = "mcp"
CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0
_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


@attrs.define(eq=False)
class WebSocketTransport:
    target: str
    url: str
    nursery: trio.Nursery
    tls: ClientTLS | None = None
    inbox: Inbox = attrs.field(factory=Inbox.create)
    log_prefix: str = ""
    session_id: str | None = None
    keep_upstream_session: bool = False  # (no upstream session to keep)
    _connection: WebSocketConnection | None = None
    _connect_lock: trio.Lock = attrs.field(factory=trio.Lock)

    def __repr__(self) -> str:
        return f"<WebSocketTransport {self.target} {self.url} {self.inbox!r}>"

    async def send(
        self,
        message: Message,
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        """Raises UpstreamError if the upstream cannot be reached,
        TransportClosed once the connection is gone."""
        self.inbox.check_open()
        connection = await self._connect(headers)
        try:
            await connection.send_message(encode(message).decode())
        except ConnectionClosed as exc:
            self.inbox.check_open()
            raise TransportClosed(f"target {self.target}: {_closed(exc)}") from None

    async def receive(self) -> Message:
        return await self.inbox.get()

    async def _connect(self, headers: Sequence[tuple[bytes, bytes]]) -> WebSocketConnection:
        async with self._connect_lock:
            self.inbox.check_open()
            if self._connection is None:
                self._connection = await self.nursery.start(self._serve, session_headers(headers))
            return self._connection

    async def _serve(
        self, headers: Headers, *, task_status: trio.TaskStatus[WebSocketConnection]
    ) -> None:
        """Connect and report the connection, then read it until it closes.
        Raises (to the caller of ``start``) only while connecting."""
        started = False
        reason = f"target {self.target}: WebSocket closed"
        try:
            async with open_websocket_url(
                self.url,
                self.tls.context if self.tls is not None else None,
                subprotocols=[SUBPROTOCOL],
                extra_headers=headers,
                max_message_size=MAX_MESSAGE_SIZE,
                connect_timeout=CONNECT_TIMEOUT,
                disconnect_timeout=CLOSE_TIMEOUT,
            ) as connection:
                if connection.subprotocol != SUBPROTOCOL:
                    logger.info(
                        "%starget %s chose WebSocket subprotocol %r",
                        self.log_prefix,
                        self.target,
                        connection.subprotocol,
                    )
                started = True
                task_status.started(connection)
                reason = await self._read(connection)
        except ConnectionRejected as exc:
            raise UpstreamError(
                f"target {self.target}: WebSocket handshake refused with HTTP {exc.status_code}"
            ) from None
        except ConnectionTimeout:
            raise UpstreamTimeout(f"target {self.target}: WebSocket connect timeout") from None
        except (HandshakeError, OSError, trio.BrokenResourceError) as exc:
            if not started:
                cause = exc.__cause__ or exc
                raise UpstreamUnavailable(
                    f"target {self.target}: cannot connect to {self.url}: {cause}"
                ) from None
            logger.debug("%starget %s: %r while closing", self.log_prefix, self.target, exc)
        finally:
            if started:
                self.inbox.close(reason)

    async def _read(self, connection: WebSocketConnection) -> str:
        while True:
            try:
                data = await connection.get_message()
            except ConnectionClosed as exc:
                return f"target {self.target}: {_closed(exc)}"
            try:
                messages = decode(data)
            except ValueError:
                logger.warning(
                    "%starget %s sent a WebSocket message that is not JSON-RPC: %s",
                    self.log_prefix,
                    self.target,
                    printable(data if isinstance(data, str) else bytes(data), 200),
                )
                continue
            for message in messages:
                if not await self.inbox.put(message):
                    return self.inbox.reason or "closed"

    async def aclose(self) -> None:
        self.inbox.close(f"target {self.target}: transport closed")
        if self._connection is not None:
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self._connection.aclose()


def _closed(exc: ConnectionClosed) -> str:
    reason = exc.reason
    if reason is None:
        return "WebSocket closed"
    text = f" {printable(reason.reason, 200)}" if reason.reason else ""
    return f"WebSocket closed ({reason.code}{text})"


def websocket_url(target: str, spec: HttpTarget, tls: bool = False) -> str:
    """The ws:// or wss:// URL (wss:// with ``tls``).

    Raises:
        UpstreamError: not a ws(s) or http(s) URL.
    """
    try:
        url = Url.parse(target_url(spec, scheme="ws"))
    except ValueError as exc:
        raise UpstreamError(f"target {target}: {exc}") from None
    return str(attrs.evolve(url, scheme="wss" if tls else _SCHEMES[url.scheme]))


@asynccontextmanager
async def open_websocket_transport(
    target: str,
    spec: HttpTarget,
    *,
    pool: ConnectionPool,
    tls: ClientTLS | None = None,
    log_prefix: str = "",
) -> AsyncIterator[WebSocketTransport]:
    """A WebSocket client of ``spec``; it connects on the first ``send``.
    ``tls`` (a target's ``backendTLS``) means wss:// even for ws://; a
    wss:// URL without it trusts the pool's default roots. ``tls.hostname``
    and ``subjectAltNames`` are refused for WebSocket targets when the config
    is compiled."""
    url = websocket_url(target, spec, tls=tls is not None)
    if tls is None and url.startswith("wss://"):
        tls = pool.default_tls()
    async with open_task_nursery() as nursery:
        transport = WebSocketTransport(target, url, nursery, tls, log_prefix=log_prefix)
        try:
            yield transport
        finally:
            with trio.CancelScope(shield=True):
                await transport.aclose()
            nursery.cancel_scope.cancel()
