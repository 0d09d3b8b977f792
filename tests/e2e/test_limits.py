"""Operational limits over real sockets and processes: connection caps,
idle timeouts, descriptor exhaustion, a stderr nobody reads, readiness."""

from __future__ import annotations

import json
import resource
from typing import Any

import trio

from tests.e2e.support import (
    echo_handler,
    gateway_subprocess,
    open_client,
    proxy_config,
    request,
    run_gateway,
    serve_upstream,
)


def inline(config: dict[str, Any]) -> str:
    return json.dumps(config)


async def test_max_connections_queues_the_rest() -> None:
    async with serve_upstream(echo_handler) as up:
        config = proxy_config(up.port, http={"maxConnections": 2})
        async with run_gateway(config) as (_, port):
            async with open_client(port) as a, open_client(port) as b:
                assert (await a.request()).status == 200
                assert (await b.request()).status == 200
                third = await trio.open_tcp_stream("127.0.0.1", port)
                await third.send_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                with trio.move_on_after(0.5) as waited:
                    await third.receive_some(1000)
                assert waited.cancelled_caught, "a third connection was served"
            # a and b closed: the third is accepted and answered now
            with trio.fail_after(3):
                reply = await third.receive_some(1000)
            assert reply.startswith(b"HTTP/1.1 200")
            await third.aclose()


async def test_idle_keep_alive_connection_is_closed() -> None:
    async with serve_upstream(echo_handler) as up:
        config = proxy_config(up.port, http={"idleTimeout": "300ms"})
        async with run_gateway(config) as (_, port), open_client(port) as client:
            assert (await client.request()).status == 200
            start = trio.current_time()
            with trio.fail_after(3):
                assert await client.stream.receive_some(1000) == b""
            assert 0.2 < trio.current_time() - start < 1.5


async def test_readiness_endpoint_reports_drain() -> None:
    async def slow(req: Any, body: bytes, up: Any) -> Any:
        await trio.sleep(1)
        return 200, [], b"done"

    async with serve_upstream(slow) as up:
        probe = trio.socket.socket()
        await probe.bind(("127.0.0.1", 0))
        ready_port = probe.getsockname()[1]
        probe.close()
        config = proxy_config(up.port, readinessAddr=f"127.0.0.1:{ready_port}")
        async with run_gateway(config) as (gw, port):
            resp = await request(ready_port, "GET", "/healthz/ready")
            assert (resp.status, resp.body) == (200, b"ready\n")
            assert (await request(ready_port, "GET", "/other")).status == 404
            async with trio.open_nursery() as nursery:
                nursery.start_soon(request, port, "GET", "/slow")
                await trio.sleep(0.2)
                gw.shutdown()
                await trio.sleep(0.1)
                resp = await request(ready_port, "GET", "/healthz/ready")
                assert resp.status == 503


async def test_stderr_nobody_reads_does_not_block_requests() -> None:
    async with serve_upstream(echo_handler) as up:
        args = ("-c", inline(proxy_config(up.port)))
        async with gateway_subprocess(*args, read_stderr=False) as (proc, ports):
            async with open_client(ports[0]) as client:
                with trio.fail_after(60):
                    # ~3000 access lines is far more than a pipe buffer holds
                    for i in range(3000):
                        resp = await client.request("GET", f"/{'p' * 100}/{i}")
                        assert resp.status == 200
            assert proc.poll() is None


async def test_json_access_log() -> None:
    async with serve_upstream(echo_handler) as up:
        args = ("-c", inline(proxy_config(up.port)), "--log-format", "json")
        async with gateway_subprocess(*args) as (proc, ports):
            resp = await request(ports[0], "POST", "/mcp", body=b"{}")
            assert resp.status == 200
            await trio.sleep(0.3)
        lines = [json.loads(x) for x in proc.stderr_data.decode().splitlines() if x.startswith("{")]
        access = [x for x in lines if x.get("msg") == "request"]
        assert access, proc.stderr_data
        entry = access[0]
        assert entry["http.method"] == "POST" and entry["http.path"] == "/mcp"
        assert entry["http.status"] == 200 and entry["route"] == "upstream"
        assert entry["listener"] == "test" and entry["gateway"].startswith("bind/")


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))


async def test_descriptor_exhaustion_backs_off_and_logs_once() -> None:
    async with serve_upstream(echo_handler) as up:
        args = ("-c", inline(proxy_config(up.port)))
        async with gateway_subprocess(*args, preexec_fn=_low_fd_limit) as (proc, ports):
            streams = []
            for _ in range(60):
                streams.append(await trio.open_tcp_stream("127.0.0.1", ports[0]))
            await trio.sleep(2.5)
            log = proc.stderr_data.decode()
            assert log.count("accept failed (EMFILE)") == 1, log
            assert proc.poll() is None
            for stream in streams:
                await stream.aclose()
            await trio.sleep(0.3)
            with trio.fail_after(5):
                resp = await request(ports[0], "GET", "/")
            assert resp.status == 200
