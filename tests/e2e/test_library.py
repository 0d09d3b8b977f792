"""The library API: gateways embedded in a Trio program."""

from __future__ import annotations

import trio

import agentgw
from tests.e2e.support import echo_handler, proxy_config, request, serve_upstream


async def test_two_gateways_in_one_nursery_cancel_cleanly() -> None:
    async with serve_upstream(echo_handler) as up:
        gw1 = agentgw.Gateway(agentgw.config_from_dict(proxy_config(up.port)))
        gw2 = agentgw.Gateway(agentgw.config_from_dict(proxy_config(up.port)))
        async with trio.open_nursery() as nursery:
            addrs1 = await nursery.start(gw1.serve)
            addrs2 = await nursery.start(gw2.serve)
            ports = [addrs1[0].port, addrs2[0].port]
            assert ports[0] != ports[1] and all(ports)
            assert addrs1[0].listeners == ("test",)
            for port in ports:
                resp = await request(port, "POST", "/", body=b"x")
                assert resp.body == b"echo:x"
            nursery.cancel_scope.cancel()
        # Every listening socket is closed: connecting now is refused.
        for port in ports:
            try:
                await trio.open_tcp_stream("127.0.0.1", port)
                refused = False
            except OSError:
                refused = True
            assert refused
        assert gw1.pool.statistics().idle == 0 and gw2.pool.statistics().idle == 0


async def test_graceful_shutdown_returns_from_serve() -> None:
    async with serve_upstream(echo_handler) as up:
        gw = agentgw.Gateway(agentgw.config_from_dict(proxy_config(up.port)))
        async with trio.open_nursery() as nursery:
            addrs = await nursery.start(gw.serve)
            resp = await request(addrs[0].port, "GET", "/")
            assert resp.status == 200
            gw.shutdown()
        # serve() returned by itself: the nursery closed without a cancel.
        assert gw.is_draining


def test_docs_example_runs() -> None:
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).parents[2] / "examples" / "embed.py"
    out = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "200 hello from agentgw" in out.stdout
