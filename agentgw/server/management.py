"""The gateway's own small HTTP servers: readiness, stats and admin.

How this works: ``serve_management`` opens one address and serves each
connection with the same ``ClientConnection`` as the traffic ports, under
tight limits and at most ``MAX_CONNECTIONS`` at once (one more is closed at
accept). ``resolve`` turns the config's ``readinessAddr``, ``statsAddr`` and
``adminAddr`` into addresses: agentgateway's defaults when unset, nothing
for ``off``. A default address that is taken is skipped with a warning (a
second gateway on the host still starts); a configured one that is taken
fails the start, as a traffic port does.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import attrs
import trio

from agentgw.config.model import HttpLimits, Settings
from agentgw.server.connection import ClientConnection, ServerRequest
from agentgw.server.listen import open_tcp_listeners

logger = logging.getLogger(__name__)

MAX_CONNECTIONS: Final = 64
LIMITS: Final = HttpLimits(
    max_header_bytes=16384,
    max_body_bytes=65536,
    header_timeout=5.0,
    body_timeout=5.0,
    idle_timeout=30.0,
    max_connections=MAX_CONNECTIONS,
)
# agentgateway's defaults: admin on localhost only, the others everywhere.
DEFAULTS: Final = {
    "readiness": "0.0.0.0:15021",
    "stats": "0.0.0.0:15020",
    "admin": "127.0.0.1:15000",
}

READY_PATH: Final = "/healthz/ready"  # agentgateway's
LIVE_PATH: Final = "/healthz/live"  # agentgw's: 200 while the process runs, draining too
METRICS_PATHS: Final = ("/metrics", "/stats/prometheus")  # agentgateway's

Handler = Callable[[ServerRequest], Awaitable[None]]


@attrs.frozen
class ManagementAddress:
    """Where one of the gateway's own servers listens."""

    name: str
    host: str
    port: int
    is_default: bool

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_address(text: str) -> tuple[str, int]:
    """``"127.0.0.1:15000"``, ``"[::1]:15000"`` or ``"localhost:15000"``."""
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def resolve(settings: Settings) -> list[ManagementAddress]:
    """The servers to run, in order readiness, stats, admin; ``off`` ones left out."""
    out = []
    for name, value in (
        ("readiness", settings.readiness_addr),
        ("stats", settings.stats_addr),
        ("admin", settings.admin_addr),
    ):
        if value == "off":
            continue
        host, port = parse_address(value or DEFAULTS[name])
        out.append(ManagementAddress(name, host, port, value is None))
    return out


async def open_listeners(
    addr: ManagementAddress, *, reuse_port: bool = False
) -> list[trio.SocketListener]:
    """The listeners for ``addr``; none if it is a default address already
    taken.

    Raises:
        OSError: a configured address cannot be bound.
    """
    try:
        return await open_tcp_listeners(addr.host, addr.port, reuse_port=reuse_port)
    except OSError as exc:
        if not addr.is_default or exc.errno != errno.EADDRINUSE:
            raise
        logger.warning(
            "%s server not started: the default address %s is in use (set config.%sAddr)",
            addr.name,
            addr,
            addr.name,
        )
        return []


async def serve_management(
    name: str,
    listeners: list[trio.SocketListener],
    handler: Handler,
) -> None:
    """Serve ``handler`` on ``listeners`` until cancelled. Never returns."""
    slots = trio.Semaphore(MAX_CONNECTIONS)

    async def serve_one(stream: trio.SocketStream) -> None:
        try:
            slots.acquire_nowait()
        except trio.WouldBlock:
            await stream.aclose()
            return
        try:
            try:
                peer = stream.socket.getpeername()
                client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ("unix", 0)
            except OSError:
                await stream.aclose()
                return
            await ClientConnection(stream, client, name, LIMITS, handler, access_log=False).serve()
        finally:
            slots.release()

    await trio.serve_listeners(serve_one, listeners)
