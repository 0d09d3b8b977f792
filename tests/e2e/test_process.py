"""The gateway as a real process: memory under large and slow streams, drain."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

import h11
import pytest
import trio

from tests.e2e.support import (
    Upstream,
    gateway_subprocess,
    open_client,
    proxy_config,
    rss_kib,
    serve_raw,
    serve_upstream,
)

MB = 1 << 20


def inline(config: dict[str, Any]) -> str:
    return json.dumps(config)


async def test_50mb_bodies_stream_with_flat_memory() -> None:
    received = {"bytes": 0}

    async def handler(req: h11.Request, body: bytes, up: Upstream) -> Any:
        received["bytes"] += len(body)

        async def download() -> Any:
            block = b"d" * (256 * 1024)
            for _ in range(200):  # 50 MiB
                yield block

        return 200, [(b"content-type", b"application/octet-stream")], download()

    async with serve_upstream(handler) as up:
        # The upstream in this test keeps the request body; count only.
        async with gateway_subprocess("-c", inline(proxy_config(up.port))) as (proc, ports):
            baseline = rss_kib(proc.pid)
            async with open_client(ports[0]) as client:
                await client.send(
                    h11.Request(
                        method="POST",
                        target="/upload",
                        headers=[(b"host", b"a"), (b"content-length", str(50 * MB).encode())],
                    )
                )
                block = b"u" * (256 * 1024)
                for _ in range(200):
                    await client.send(h11.Data(data=block))
                await client.send(h11.EndOfMessage())
                event = await client.next_event()
                assert event.status_code == 200
                total = 0
                while not isinstance(ev := await client.next_event(), h11.EndOfMessage):
                    total += len(ev.data)
            peak = rss_kib(proc.pid, "VmHWM")
        assert received["bytes"] == 50 * MB
        assert total == 50 * MB
        assert peak - baseline < 20 * 1024, (baseline, peak)


async def test_client_that_stops_reading_pauses_the_upstream() -> None:
    sent = {"bytes": 0}

    async def firehose(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        event = b"data: " + b"x" * 8000 + b"\n\n"
        chunk = b"%x\r\n%s\r\n" % (len(event), event)
        while True:
            await stream.send_all(chunk)
            sent["bytes"] += len(chunk)

    async with serve_raw(firehose) as up_port:
        async with gateway_subprocess("-c", inline(proxy_config(up_port))) as (proc, ports):
            baseline = rss_kib(proc.pid)
            stream = await trio.open_tcp_stream("127.0.0.1", ports[0])
            await stream.send_all(b"GET /sse HTTP/1.1\r\nHost: a\r\n\r\n")
            await stream.receive_some(1000)  # then never read again
            await trio.sleep(1.5)
            first = sent["bytes"]
            await trio.sleep(1.0)
            assert sent["bytes"] == first, "the upstream kept writing"
            assert first < 64 * MB  # socket buffers only, not an unbounded queue
            assert rss_kib(proc.pid) - baseline < 20 * 1024
            await stream.aclose()


async def test_sigterm_drains_in_flight_and_streams() -> None:
    async def handler(req: h11.Request, body: bytes, up: Upstream) -> Any:
        if req.target == b"/slow":
            await trio.sleep(0.8)
            return 200, [], b"finished"
        if req.target == b"/sse":

            async def events() -> Any:
                i = 0
                while True:
                    yield f"data: {i}\n\n".encode()
                    i += 1
                    await trio.sleep(0.1)

            return 200, [(b"content-type", b"text/event-stream")], events()
        return 200, [], b"ok"

    async with serve_upstream(handler) as up:
        config = proxy_config(up.port, connectionTerminationDeadline="1500ms")
        async with gateway_subprocess("-c", inline(config)) as (proc, ports):
            port = ports[0]
            idle = await trio.open_tcp_stream("127.0.0.1", port)
            await idle.send_all(b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n")
            first = b""
            while not first.endswith(b"0\r\n\r\n"):
                first += await idle.receive_some(65536)  # now an idle keep-alive connection

            results: dict[str, Any] = {}

            async def slow() -> None:
                async with open_client(port) as client:
                    results["slow"] = await client.request("GET", "/slow")

            async def sse() -> None:
                async with open_client(port) as client:
                    await client.send(
                        h11.Request(method="GET", target="/sse", headers=[(b"host", b"a")])
                    )
                    await client.send(h11.EndOfMessage())
                    await client.next_event()
                    n = 0
                    while not isinstance(ev := await client.next_event(), h11.EndOfMessage):
                        n += ev.data.count(b"data:")
                    results["sse_events"] = n
                    results["sse_clean"] = True

            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow)
                nursery.start_soon(sse)
                await trio.sleep(0.3)
                start = trio.current_time()
                proc.send_signal(signal.SIGTERM)
                with trio.fail_after(2):
                    assert await idle.receive_some(65536) == b""  # idle closed at once
                idle_closed = trio.current_time() - start
                await idle.aclose()
                with trio.fail_after(5):
                    code = await proc.wait()
            assert code == 0
            assert idle_closed < 0.5
            assert results["slow"].status == 200 and results["slow"].body == b"finished"
            assert results["sse_clean"] and results["sse_events"] >= 10
            # new connections are refused once draining started
            try:
                await trio.open_tcp_stream("127.0.0.1", port)
                refused = False
            except OSError:
                refused = True
            assert refused


def test_cli_version_and_validate(tmp_path: Any) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agentgw", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("agentgw ")
    good = tmp_path / "good.yaml"
    good.write_text(
        "binds:\n- port: 0\n  listeners:\n  - routes:\n    - backends:\n      - host: 127.0.0.1:1\n"
    )
    ok = subprocess.run(
        [sys.executable, "-m", "agentgw", "--validate-only", "-f", str(good)],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and ok.stdout.strip() == "configuration is valid"
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "binds:\n- port: x\n  listeners:\n  - routes:\n    - matches:\n      - path: {}\n"
    )
    err = subprocess.run(
        [sys.executable, "-m", "agentgw", "--validate-only", "-f", str(bad)],
        capture_output=True,
        text=True,
    )
    assert err.returncode == 1
    assert "binds[0].port" in err.stderr
    assert "binds[0].listeners[0].routes[0].matches[0].path" in err.stderr


async def test_default_config_serves() -> None:
    # The embedded default listens on 127.0.0.1:3000; run it only if free.
    try:
        probe = await trio.open_tcp_stream("127.0.0.1", 3000)
    except OSError:
        probe = None
    if probe is not None:
        await probe.aclose()
        pytest.skip("port 3000 is in use on this machine")
    async with gateway_subprocess() as (proc, ports):
        assert ports == [3000]
        body = (
            b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":'
            b'"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}'
        )
        async with open_client(3000) as client:
            resp = await client.request(
                "POST",
                "/mcp",
                headers=[
                    (b"accept", b"application/json, text/event-stream"),
                    (b"content-type", b"application/json"),
                ],
                body=body,
            )
        assert resp.status == 200, resp.body
        assert resp.header(b"mcp-session-id")
        assert b'"serverInfo"' in resp.body
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            assert await proc.wait() == 0
