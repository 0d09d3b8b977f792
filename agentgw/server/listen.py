"""Listening sockets for binds.

Like ``trio.open_tcp_listeners``, but a bind on the IPv6 unspecified address
(``::``, or ``[::]`` as legacy configs write it) is dual-stack: it also takes
IPv4 clients (``IPV6_V6ONLY`` off), as agentgateway's ``[::]`` listener does
on Linux. Trio sets ``IPV6_V6ONLY`` on every IPv6 socket on purpose. Any
other IPv6 address stays IPv6-only, and ``0.0.0.0`` stays IPv4-only.
"""

from __future__ import annotations

import ipaddress
import socket

import attrs
import trio

BACKLOG = 0xFFFF  # as trio's default; the kernel caps it at somaxconn


def is_dual_stack(host: str | None) -> bool:
    """Whether a bind on ``host`` takes IPv4 clients on an IPv6 socket."""
    if host is None:
        return False
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return ip.version == 6 and ip.is_unspecified


async def open_tcp_listeners(
    host: str | None, port: int, *, reuse_port: bool = False
) -> list[trio.SocketListener]:
    """Listen on ``host``:``port``, one socket per address ``host`` resolves to.

    Args:
        host: an address or name; ``::`` or ``[::]`` listens dual-stack;
            None listens on every interface (IPv4 and IPv6 sockets).
        port: 0 picks a free port (for each socket).
        reuse_port: set ``SO_REUSEPORT``, so that several processes bind the
            same port (``--workers``).

    Raises:
        OSError: the address cannot be resolved or bound; the message names
            the address.
    """
    dual = is_dual_stack(host)
    infos = await trio.socket.getaddrinfo(
        host.strip("[]") if host else host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    listeners: list[trio.SocketListener] = []
    try:
        for family, kind, proto, _, address in infos:
            sock = trio.socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual else 1)
                try:
                    await sock.bind(address)
                except OSError as exc:
                    ip = str(address[0])
                    name = f"[{ip}]" if family == socket.AF_INET6 else ip
                    problem = f"{exc.strerror} (binding {name}:{port})"
                    raise OSError(exc.errno, problem) from None
                sock.listen(BACKLOG)
            except BaseException:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


@attrs.define(eq=False)
class Acceptor:
    """Accepts a listener's connections in bursts.

    Trio's ``accept`` passes through the scheduler twice per connection, so
    when the gateway is busy, connections queued in the kernel are taken a
    few per scheduling batch and new clients wait seconds. ``take_queued``
    takes one more that is already queued, with no checkpoint, from a
    duplicate of the listening descriptor (``close`` closes it).
    """

    listener: trio.SocketListener
    _raw: socket.socket = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        sock = self.listener.socket
        self._raw = socket.fromfd(sock.fileno(), sock.family, sock.type)
        self._raw.setblocking(False)

    async def accept(self) -> trio.SocketStream:
        """The next connection, waiting for one."""
        return await self.listener.accept()

    def take_queued(self) -> trio.SocketStream | None:
        """A connection already queued, or None.

        Raises:
            OSError: accepting failed (``EMFILE``...).
        """
        try:
            sock, _ = self._raw.accept()
        except (BlockingIOError, InterruptedError):
            return None
        return trio.SocketStream(trio.socket.from_stdlib_socket(sock))

    def close(self) -> None:
        self._raw.close()
