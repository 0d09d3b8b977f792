"""bench/'s own network pieces over real loopback sockets: the `floor` relay,
the soak's reading of agentgw's task gauge, and the OTLP sink that counts the
spans of `gateway-1-tracing`."""

from __future__ import annotations

import http.client
from functools import partial
from typing import Any

import h11
import trio
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from bench.floor import relay
from bench.launch import sink_stats, start_otlp_sink
from bench.scenario_soak import scrape_tasks
from tests.e2e.support import Upstream, echo_handler, free_port, open_client, serve_upstream


async def test_floor_relays_each_client_over_one_kept_alive_upstream_connection() -> None:
    async with serve_upstream(echo_handler) as up, trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, partial(relay, up.port), 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        for client_no in range(2):
            async with open_client(port) as client:
                for i in range(3):
                    body = f"call {client_no}.{i}".encode()
                    headers = [(b"mcp-session-id", b"s-1"), (b"content-type", b"application/json")]
                    resp = await client.request("POST", "/mcp", headers=headers, body=body)
                    assert (resp.status, resp.body) == (200, b"echo:" + body)
        assert (up.connections, up.requests) == (2, 6)
        request, _ = up.seen[-1]
        assert (b"mcp-session-id", b"s-1") in list(request.headers)
        nursery.cancel_scope.cancel()


async def metrics_handler(request: h11.Request, body: bytes, up: Upstream) -> Any:
    if request.target != b"/metrics":
        return 404, [], b""
    text = (
        b"# HELP agentgw_tasks Live Trio tasks in the gateway process\n"
        b"# TYPE agentgw_tasks gauge\n"
        b"agentgw_tasks 42.0\n"
        b"agentgw_tasks_other 7.0\n"
    )
    return 200, [(b"content-type", b"text/plain; version=0.0.4")], text


async def test_the_soak_reads_the_task_gauge_or_says_there_is_none() -> None:
    async with serve_upstream(metrics_handler) as up:
        assert await trio.to_thread.run_sync(scrape_tasks, up.port) == 42.0
    async with serve_upstream(echo_handler) as up:
        # An answer without the gauge.
        assert await trio.to_thread.run_sync(scrape_tasks, up.port) is None
    # Nothing listening.
    assert await trio.to_thread.run_sync(scrape_tasks, await free_port()) is None


def test_the_otlp_sink_counts_what_the_sdk_exports_by_kind() -> None:
    sink = start_otlp_sink(None)
    try:
        url = f"http://127.0.0.1:{sink.port}/v1/traces"
        for compression in (Compression.NoCompression, Compression.Gzip):
            provider = TracerProvider()
            exporter = OTLPSpanExporter(endpoint=url, compression=compression, timeout=5)
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            tracer = provider.get_tracer("bench-test")
            with tracer.start_as_current_span("request", kind=SpanKind.SERVER):
                with tracer.start_as_current_span("tools/call", kind=SpanKind.CLIENT):
                    pass
                with tracer.start_as_current_span("work"):
                    pass
            provider.shutdown()
        stats = sink_stats(sink)
        # One export per span (SimpleSpanProcessor), plain then gzipped.
        assert {k: stats[k] for k in ("exports", "spans", "server", "client", "other")} == {
            "exports": 6,
            "spans": 6,
            "server": 2,
            "client": 2,
            "other": 2,
        }
        assert stats["rejected"] == 0
        conn = http.client.HTTPConnection("127.0.0.1", sink.port, timeout=5)
        conn.request("POST", "/v1/traces", body=b"\x0a\xff\xff", headers={})
        response = conn.getresponse()
        assert (response.status, response.read()) == (400, b"truncated varint\n")
        conn.close()
        assert sink_stats(sink)["rejected"] == 1
    finally:
        sink.stop()
