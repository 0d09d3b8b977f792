"""Prometheus metrics on ``config.statsAddr``, scraped after real MCP traffic
(the SDK's client, the demo server as a stdio target), in one process and
under ``--workers 2``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from mcp import Client
from mcp.shared.exceptions import MCPError
from prometheus_client.parser import text_string_to_metric_families

from agentgw._version import __version__
from agentgw.config.model import Settings
from agentgw.observability.access_log import AccessRecord
from agentgw.observability.metrics import MAX_NAMES_PER_TARGET, Metrics, label_mcp_name
from agentgw.server import management
from tests.e2e.support import free_port, gateway_subprocess, request, run_gateway
from tests.e2e.test_mcp_gateway import DEMO, PEER, _call, _initialize, mcp_config, stdio

Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for got, v in samples.get(name, []) if labels.items() <= got.items())


def with_stats(config: dict[str, Any], **settings: str) -> dict[str, Any]:
    config.setdefault("config", {}).update(
        {
            "statsAddr": "127.0.0.1:0",
            "adminAddr": "127.0.0.1:0",
            "readinessAddr": "127.0.0.1:0",
            **settings,
        }
    )
    return config


async def scrape(port: int, path: str = "/metrics", accept: str | None = None) -> Samples:
    headers = [(b"accept", accept.encode())] if accept else []
    response = await request(port, "GET", path, headers=headers)
    assert response.status == 200, response.body
    return parse(response.body.decode())


async def test_metrics_after_mcp_traffic() -> None:
    config = with_stats(mcp_config(stdio("demo", DEMO), stdio("paged", PEER)))
    async with run_gateway(config) as (gw, port):
        stats = gw.management_addresses["stats"][1]
        async with Client(f"http://127.0.0.1:{port}/mcp") as client:
            await client.list_tools()
            for text in ("one", "two"):
                await client.call_tool("demo_echo", {"message": text})
            await client.call_tool("paged_echo", {"message": "three"})
            with pytest.raises(MCPError, match="Unknown tool"):  # no target lists it
                await client.call_tool("nosuchtarget_tool", {})
            samples = await scrape(stats)
            bind = "bind/0"  # named by the configured port
            http = {"bind": bind, "gateway": bind, "listener": "mcp", "route": "mcp"}
            posts = value(samples, "agentgateway_requests_total", method="POST", **http)
            assert posts >= 5
            assert value(samples, "agentgateway_requests_total", status="200", **http) >= 5
            assert (
                value(samples, "agentgateway_request_duration_seconds_count", method="POST", **http)
                == posts
            )
            calls = {"method": "tools/call", "resource_type": "tool", **http}
            mcp = "agentgateway_mcp_requests_total"
            assert value(samples, mcp, server="demo", resource="demo_echo", **calls) == 2
            assert value(samples, mcp, server="paged", resource="paged_echo", **calls) == 1
            assert value(samples, mcp, resource="unknown", **calls) == 1
            assert value(samples, mcp, method="tools/list") >= 1
            # Every label value is bounded: no series carries the made-up name.
            names = {labels.get("resource") for labels, _ in samples[mcp]}
            assert "nosuchtarget_tool" not in names
            # Read at scrape time from the gateway's parts.
            assert value(samples, "agentgw_mcp_sessions", route="mcp") >= 1
            assert value(samples, "agentgw_stdio_processes") >= 2
            assert value(samples, "agentgw_downstream_connections_open") >= 1
            assert value(samples, "agentgw_tasks") > 10
            assert value(samples, "agentgateway_downstream_connections_total", bind=bind) >= 1
            assert value(samples, "agentgateway_build_info", tag=__version__) == 1
            assert "agentgw_upstream_pool_connections" in samples
        # agentgateway's other path, and OpenMetrics when asked for.
        again = await scrape(stats, "/stats/prometheus")
        assert value(again, mcp, server="demo", resource="demo_echo", **calls) == 2
        openmetrics = [(b"accept", b"application/openmetrics-text")]
        om = await request(stats, "GET", "/metrics", headers=openmetrics)
        assert (om.header(b"content-type") or b"").startswith(b"application/openmetrics-text")
        assert om.body.rstrip().endswith(b"# EOF")
        assert (await request(stats, "GET", "/nothing")).status == 404
        assert (await request(stats, "POST", "/metrics")).status == 405


async def test_the_session_gauge_falls_when_sessions_end() -> None:
    config = with_stats(mcp_config(stdio("demo", DEMO)))
    async with run_gateway(config) as (gw, port):
        stats = gw.management_addresses["stats"][1]
        token = await _initialize(port)
        assert value(await scrape(stats), "agentgw_mcp_sessions", route="mcp") == 1
        response = await request(
            port, "DELETE", "/mcp", headers=[(b"mcp-session-id", token.encode())]
        )
        assert response.status in (200, 202, 204)
        with trio.fail_after(10):
            while value(await scrape(stats), "agentgw_mcp_sessions", route="mcp") != 0:
                await trio.sleep(0.05)
        assert value(await scrape(stats), "agentgw_stdio_processes") == 0


# ---------------------------------------------------------------- bounded labels


def record(**extra: str) -> AccessRecord:
    rec = AccessRecord("bind/1", "1.2.3.4:5", listener="l", route="r", method="POST", status=200)
    rec.extra.update(extra)
    return rec


def test_a_name_counts_only_when_routed_without_error() -> None:
    routed = record(**{"mcp.method": "tools/call", "mcp.target": "a", "mcp.tool": "echo"})
    assert label_mcp_name(routed) == "echo"
    unrouted = record(**{"mcp.method": "tools/call", "mcp.tool": "echo"})
    assert label_mcp_name(unrouted) == "unknown"
    failed = record(**{"mcp.method": "tools/call", "mcp.target": "a", "mcp.tool": "x"})
    failed.error = "upstream unavailable"
    assert label_mcp_name(failed) == "unknown"
    denied = record(**{"mcp.target": "a", "mcp.tool": "x", "error": "denied by mcpAuthorization"})
    assert label_mcp_name(denied) == "unknown"
    said = record(**{"mcp.method": "tools/call", "mcp.target": "a", "mcp.tool": "typo"})
    said.mcp_name_known = False  # the relay's word wins
    assert label_mcp_name(said) == "unknown"


def test_names_per_target_are_capped() -> None:
    metrics = Metrics()
    for i in range(MAX_NAMES_PER_TARGET + 50):
        metrics.observe(
            record(**{"mcp.method": "tools/call", "mcp.target": "a", "mcp.tool": f"t{i}"})
        )
    metrics.observe(record(**{"mcp.method": "made/up", "mcp.target": "a", "mcp.tool": "t0"}))
    samples = parse(metrics.exposition(None)[0].decode())
    series = samples["agentgateway_mcp_requests_total"]
    names = {labels["resource"] for labels, _ in series}
    assert len(names) == MAX_NAMES_PER_TARGET + 1  # and "unknown"
    assert value(samples, "agentgateway_mcp_requests_total", resource="unknown") == 50
    assert value(samples, "agentgateway_mcp_requests_total", method="unknown") == 1


def test_http_methods_outside_the_standard_are_unknown() -> None:
    metrics = Metrics()
    for method in ("GET", "BREW", "X" * 50):
        rec = record()
        rec.method = method
        metrics.observe(rec)
    samples = parse(metrics.exposition(None)[0].decode())
    methods = {labels["method"] for labels, _ in samples["agentgateway_requests_total"]}
    assert methods == {"GET", "unknown"}
    assert value(samples, "agentgateway_requests_total", method="unknown") == 2


def test_default_addresses_are_agentgateways() -> None:
    found = {a.name: (a.host, a.port, a.is_default) for a in management.resolve(Settings())}
    assert found == {
        "readiness": ("0.0.0.0", 15021, True),
        "stats": ("0.0.0.0", 15020, True),
        "admin": ("127.0.0.1", 15000, True),  # never a public address by default
    }
    off = Settings(admin_addr="off", stats_addr="[::1]:9000", readiness_addr="off")
    assert [(a.name, a.host, a.port) for a in management.resolve(off)] == [("stats", "::1", 9000)]


async def test_a_taken_default_address_is_skipped_a_configured_one_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    holder = trio.socket.socket()
    await holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        default = management.ManagementAddress("stats", "127.0.0.1", port, is_default=True)
        assert await management.open_listeners(default) == []
        assert "stats server not started" in caplog.text
        configured = management.ManagementAddress("stats", "127.0.0.1", port, is_default=False)
        with pytest.raises(OSError):
            await management.open_listeners(configured)
    finally:
        holder.close()


# ---------------------------------------------------------------- --workers 2


def _counter_files(directory: Path) -> set[str]:
    return {p.name for p in directory.glob("agentgw-*/metrics/counter_*.db")}


def _admin_sockets(directory: Path) -> int:
    return len(list(directory.glob("agentgw-*/w*-admin.sock")))


async def test_any_workers_scrape_shows_every_worker(tmp_path: Path) -> None:
    config = mcp_config(stdio("paged", PEER))
    port, stats, admin = await free_port(), await free_port(), await free_port()
    config["binds"][0]["port"] = port
    config["config"].update(
        statsAddr=f"127.0.0.1:{stats}", adminAddr=f"127.0.0.1:{admin}", readinessAddr="off"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    args = ("-c", json.dumps(config), "--workers", "2")
    async with gateway_subprocess(*args, env=env) as (proc, _):
        with trio.fail_after(20):
            while _admin_sockets(tmp_path) < 2:
                await trio.sleep(0.05)
        sessions = 8
        tokens = [await _initialize(port) for _ in range(sessions)]  # new connection each
        for token in tokens:
            status, body = await _call(port, token, "echo", {"message": "m"})
            assert status == 200, body
        # Both workers counted something (so a scrape must merge two files)...
        with trio.fail_after(10):
            while len(_counter_files(tmp_path)) < 2:
                await trio.sleep(0.05)
        # A call is counted once its answer went out: wait for the last one.
        with trio.fail_after(10):
            while (
                value(await scrape(stats), "agentgateway_mcp_requests_total", method="tools/call")
                != sessions
            ):
                await trio.sleep(0.05)
        # ...and every scrape, whichever worker answers it, sees all calls.
        for _ in range(6):
            samples = await scrape(stats)
            calls = value(samples, "agentgateway_mcp_requests_total", method="tools/call")
            assert calls == sessions
            inits = value(samples, "agentgateway_mcp_requests_total", method="initialize")
            assert inits == sessions
        # Gauges: each worker's sessions, summed (a sibling's within its refresh).
        with trio.fail_after(10):
            while value(await scrape(stats), "agentgw_mcp_sessions", route="mcp") != sessions:
                await trio.sleep(0.2)
        # The admin port answers for both workers too.
        listed = json.loads((await request(admin, "GET", "/sessions")).body)["sessions"]
        assert len(listed) == sessions
        assert {s["worker"] for s in listed} == {0, 1}
        proc.terminate()
        with trio.fail_after(15):
            assert await proc.wait() == 0


async def test_with_stats_off_requests_observe_nothing() -> None:
    config = with_stats(mcp_config(stdio("demo", DEMO)), statsAddr="off")
    async with run_gateway(config) as (gw, port):
        await _initialize(port)
        assert "stats" not in gw.management_addresses
        samples = parse(gw.metrics.exposition(None)[0].decode())
        assert "agentgateway_requests_total" not in samples
        assert "agentgateway_mcp_requests_total" not in samples
