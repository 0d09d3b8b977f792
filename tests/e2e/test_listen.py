"""Binds on real sockets: ``::`` is dual-stack (IPv4 clients too), as
agentgateway's ``[::]`` listener is on Linux; ``0.0.0.0`` stays IPv4-only."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio

from agentgw import Gateway
from agentgw.config.load import config_from_dict
from agentgw.server.listen import Acceptor, is_dual_stack, open_tcp_listeners
from tests.e2e.support import Client, run_gateway


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback on this machine")


def _config(address: str) -> dict[str, Any]:
    route = {"policies": {"directResponse": {"status": 200, "body": "here\n"}}}
    return {"binds": [{"port": 0, "address": address, "listeners": [{"routes": [route]}]}]}


async def _get(host: str, port: int) -> int:
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, port)
        client = Client(stream)
        try:
            return (await client.request("GET", "/", host="localhost")).status
        finally:
            await client.aclose()


@pytest.mark.parametrize("address", ["::", "[::]"])
async def test_ipv6_unspecified_bind_takes_ipv4_and_ipv6_clients(address: str) -> None:
    async with run_gateway(_config(address)) as (_, port):
        assert await _get("127.0.0.1", port) == 200
        assert await _get("::1", port) == 200


async def test_legacy_bracketed_address_takes_ipv4_and_ipv6_clients() -> None:
    legacy = {
        "type": "static",
        "listeners": [{"name": "sse", "sse": {"address": "[::]", "port": 0}}],
        "targets": {"mcp": [{"name": "t", "stdio": {"cmd": "true"}}]},
    }
    config = config_from_dict(legacy)
    assert config.binds[0].address == "::"
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(Gateway(config).serve)
        port = addresses[0].port
        # No route matches "/": a 404 from the gateway is an answer all the same.
        assert await _get("127.0.0.1", port) == 404
        assert await _get("::1", port) == 404
        nursery.cancel_scope.cancel()


async def test_ipv4_unspecified_bind_stays_ipv4_only() -> None:
    async with run_gateway(_config("0.0.0.0")) as (_, port):
        assert await _get("127.0.0.1", port) == 200
        with pytest.raises(OSError):
            await _get("::1", port)


async def test_ipv6_loopback_bind_stays_ipv6_only() -> None:
    async with run_gateway(_config("::1")) as (_, port):
        assert await _get("::1", port) == 200
        with pytest.raises(OSError):
            await _get("127.0.0.1", port)


@pytest.mark.parametrize("reuse_port", [False, True])
async def test_listener_socket_options(reuse_port: bool) -> None:
    # The --workers path (SO_REUSEPORT) gets the same dual-stack socket.
    (listener,) = await open_tcp_listeners("::", 0, reuse_port=reuse_port)
    try:
        sock = listener.socket
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        assert bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)) == reuse_port
        port = sock.getsockname()[1]
        for host in ("127.0.0.1", "::1"):
            with trio.fail_after(10):
                client = await trio.open_tcp_stream(host, port)
                server = await listener.accept()
            await client.aclose()
            await server.aclose()
        if reuse_port:
            # A second worker binds the same port.
            (sibling,) = await open_tcp_listeners("::", port, reuse_port=True)
            await sibling.aclose()
    finally:
        await listener.aclose()


def test_which_addresses_are_dual_stack() -> None:
    assert is_dual_stack("::") and is_dual_stack("[::]") and is_dual_stack("0:0::0")
    assert not any(is_dual_stack(a) for a in ("0.0.0.0", "::1", "127.0.0.1", "localhost", None))


async def test_bind_error_names_the_address() -> None:
    (taken,) = await open_tcp_listeners("127.0.0.1", 0)
    port = taken.socket.getsockname()[1]
    try:
        with pytest.raises(OSError, match=rf"binding 127\.0\.0\.1:{port}"):
            await open_tcp_listeners("127.0.0.1", port)
    finally:
        await taken.aclose()


async def test_an_acceptor_takes_every_queued_connection_without_waiting() -> None:
    (listener,) = await open_tcp_listeners("127.0.0.1", 0)
    port = listener.socket.getsockname()[1]
    acceptor = Acceptor(listener)
    clients = []
    try:
        for _ in range(5):
            clients.append(await trio.open_tcp_stream("127.0.0.1", port))
        first = await acceptor.accept()
        queued = []
        with trio.fail_after(5):
            while len(queued) < 4:  # the kernel may still be completing handshakes
                taken = acceptor.take_queued()
                if taken is None:
                    await trio.sleep(0.01)
                else:
                    queued.append(taken)
        assert acceptor.take_queued() is None
        # They are real connections: bytes go through each.
        for client, server in zip(clients, [first, *queued], strict=True):
            await client.send_all(b"x")
            assert await server.receive_some(1) == b"x"
        for stream in [first, *queued]:
            await stream.aclose()
    finally:
        acceptor.close()
        for client in clients:
            await client.aclose()
        await listener.aclose()
