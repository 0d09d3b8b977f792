"""The one small interface every MCP upstream transport offers.

How this works: ``open_transport`` opens the transport a target's config
names, as an async context manager owning a nursery for the transport's
long-lived tasks (a child's stdout reader, the SSE or GET stream reader).
What the upstream sends outside any request's own answer goes into one
bounded channel that ``receive`` reads in order; when it is full the readers
wait, so a slow consumer slows the upstream down rather than growing a
queue. A request's own answer on a Streamable HTTP POST is not queued:
``send`` returns it as an ``Answer`` that the caller reads in its own task.
Leaving the context closes everything: no task, socket or process outlives
it.

A request whose answer cannot come (the upstream failed after taking it) is
answered on the upstream's behalf with a JSON-RPC error for its id, whose
message names the target; a failure to hand the upstream a message at all
is raised by ``send``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

from agentgw.config.model import McpTarget
from agentgw.errors import ConfigError
from agentgw.tls import ClientTLS
from agentgw.upstream.mcp._common import Answer, TransportClosed
from agentgw.upstream.mcp.sse import open_sse_transport
from agentgw.upstream.mcp.stdio import open_stdio_transport
from agentgw.upstream.mcp.streamable import open_streamable_transport
from agentgw.upstream.mcp.websocket import open_websocket_transport
from agentgw.upstream.pool import ConnectionPool

__all__ = ["Answer", "McpTransport", "TransportClosed", "TransportOpener", "open_transport"]


class McpTransport(Protocol):
    target: str
    """The target's name."""
    session_id: str | None
    """The upstream's ``Mcp-Session-Id`` once known (Streamable HTTP only)."""

    keep_upstream_session: bool
    """Leave the upstream session open when the transport closes (the
    gateway stops, and another replica may resume it)."""

    async def send(
        self, message: dict[str, Any], *, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> Answer | None:
        """Send one JSON-RPC message.

        Args:
            message: the message, sent as is.
            headers: the client's headers for the upstream, already filtered
                (``RequestContext.mcp_headers``). Ignored by stdio.

        Returns:
            For a request answered on the same exchange (Streamable HTTP),
            its ``Answer``, to read and close in the caller's task; else
            None (what comes back arrives through ``receive``).

        Raises:
            TransportClosed: the upstream is gone.
            UpstreamError: the upstream could not be reached or refused the
                message.
        """
        ...

    async def receive(self) -> dict[str, Any]:
        """The next message from the upstream, in order.

        Raises:
            TransportClosed: the upstream is gone, and every message it sent
                before was received.
        """
        ...


class TransportOpener(Protocol):
    """What opens a target's transport: ``open_transport``, or a test's own."""

    def __call__(
        self,
        target: McpTarget,
        *,
        pool: ConnectionPool,
        tls: ClientTLS | None = None,
        session_id: str | None = None,
        protocol_version: str | None = None,
        log_prefix: str = "",
        server_stream: bool = True,
        idle_timeout: float | None = None,
    ) -> AbstractAsyncContextManager[McpTransport]: ...


def open_transport(
    target: McpTarget,
    *,
    pool: ConnectionPool,
    tls: ClientTLS | None = None,
    session_id: str | None = None,
    protocol_version: str | None = None,
    log_prefix: str = "",
    server_stream: bool = True,
    idle_timeout: float | None = None,
) -> AbstractAsyncContextManager[McpTransport]:
    """Open the transport to ``target``.

    Args:
        target: the configured target.
        pool: the HTTP connection pool (Streamable HTTP and SSE), and the
            default trust for https:// and wss:// URLs.
        tls: the target's TLS settings (its ``backendTLS``, compiled): TLS
            even to an http:// or ws:// URL.
        session_id: resume this upstream session without initializing
            again (Streamable HTTP).
        protocol_version: the protocol version already negotiated, sent as
            ``MCP-Protocol-Version`` until an initialize result says
            otherwise (Streamable HTTP).
        log_prefix: put before every log line, to tell sessions apart.
        server_stream: hold the standalone server-to-client stream open once
            initialized (Streamable HTTP); False where another process does.
        idle_timeout: how long an upstream SSE stream may stay silent before
            it is dropped (Streamable HTTP answers and GET stream).

    Returns:
        An async context manager yielding the transport. Stdio starts the
        child on entering; the network transports connect on the first
        ``send``, whose headers they need.

    Raises:
        UpstreamError: on entering: the child cannot be started, or the URL
            is one agentgw cannot reach (https through the pool).
        ConfigError: the target names no transport.
    """
    return _open_transport(
        target,
        pool=pool,
        tls=tls,
        session_id=session_id,
        protocol_version=protocol_version,
        log_prefix=log_prefix,
        server_stream=server_stream,
        idle_timeout=idle_timeout,
    )


@asynccontextmanager
async def _open_transport(
    target: McpTarget,
    *,
    pool: ConnectionPool,
    tls: ClientTLS | None,
    session_id: str | None,
    protocol_version: str | None,
    log_prefix: str,
    server_stream: bool,
    idle_timeout: float | None,
) -> AsyncIterator[McpTransport]:
    transport: AbstractAsyncContextManager[McpTransport]
    if target.stdio is not None:
        transport = open_stdio_transport(target.name, target.stdio, log_prefix=log_prefix)
    elif target.mcp is not None:
        transport = open_streamable_transport(
            target.name,
            target.mcp,
            pool=pool,
            tls=tls,
            session_id=session_id,
            protocol_version=protocol_version,
            log_prefix=log_prefix,
            server_stream=server_stream,
            idle_timeout=idle_timeout,
        )
    elif target.sse is not None:
        transport = open_sse_transport(
            target.name, target.sse, pool=pool, tls=tls, log_prefix=log_prefix
        )
    elif target.websocket is not None:
        transport = open_websocket_transport(
            target.name, target.websocket, pool=pool, tls=tls, log_prefix=log_prefix
        )
    else:
        raise ConfigError([f"target {target.name}: expected one of mcp, sse, stdio, websocket"])
    async with transport as opened:
        yield opened
