"""OpenTelemetry tracing against real OTLP receivers written here (HTTP/protobuf
and gRPC), decoded with the ``opentelemetry-proto`` package."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from concurrent import futures
from contextlib import asynccontextmanager
from typing import Any

import attrs
import grpc
import h11
import trio
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from agentgw.observability.tracing import (
    GatewaySampler,
    Tracing,
    TracingSettings,
    parse_traceparent,
    trace_upstream,
)
from tests.e2e.support import (
    Upstream,
    echo_handler,
    initialize_message,
    proxy_config,
    request,
    run_gateway,
    serve_upstream,
)
from tests.e2e.test_mcp_gateway import ACCEPT, DEMO, JSON_CT, mcp_config, stdio

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TOKEN = "Bearer top-secret-token-value"


@attrs.define
class Collector:
    """What a receiver got: every span, and the raw bodies."""

    port: int = 0
    spans: list[tuple[trace_pb2.Span, dict[str, Any]]] = attrs.field(factory=list)
    raw: list[bytes] = attrs.field(factory=list)
    paths: list[bytes] = attrs.field(factory=list)
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    def add(self, body: bytes) -> None:
        message = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        with self.lock:
            self.raw.append(body)
            for resource_spans in message.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((span, resource) for span in scope_spans.spans)

    def named(self, name: str) -> list[trace_pb2.Span]:
        with self.lock:
            return [span for span, _ in self.spans if span.name == name]

    async def wait_for(self, name: str, count: int = 1) -> list[trace_pb2.Span]:
        with trio.fail_after(15):
            while len(self.named(name)) < count:
                await trio.sleep(0.05)
        return self.named(name)


def attributes(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


@asynccontextmanager
async def otlp_http_receiver(jwks: bytes | None = None) -> AsyncIterator[Collector]:
    collector = Collector()

    async def handler(req: h11.Request, body: bytes, up: Upstream) -> Any:
        collector.paths.append(req.target)
        if req.target == b"/jwks" and jwks is not None:
            return 200, [(b"content-type", b"application/json")], jwks
        collector.add(body)
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return 200, [(b"content-type", b"application/x-protobuf")], answer

    async with serve_upstream(handler) as up:
        collector.port = up.port
        yield collector


def traced(config: dict[str, Any], port: int, **tracing: Any) -> dict[str, Any]:
    config.setdefault("config", {}).update(
        statsAddr="off",
        adminAddr="off",
        readinessAddr="off",
        tracing={"otlpEndpoint": f"http://127.0.0.1:{port}", "otlpProtocol": "http", **tracing},
    )
    return config


def hex_id(raw: bytes) -> str:
    return raw.hex()


async def post_mcp(port: int, message: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> Any:
    response = await request(
        port, "POST", "/mcp", headers=[ACCEPT, JSON_CT, *headers], body=json.dumps(message).encode()
    )
    assert response.status == 200, response.body
    return response


async def test_a_request_span_continues_the_callers_trace() -> None:
    async with otlp_http_receiver() as collector:
        config = traced(mcp_config(stdio("demo", DEMO)), collector.port)
        async with run_gateway(config) as (_, port):
            caller = [
                (b"traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01".encode()),
                (b"tracestate", b"vendor=value"),
                (b"authorization", TOKEN.encode()),
            ]
            init = initialize_message()
            answer = await post_mcp(port, init, caller)
            session = [(b"mcp-session-id", answer.header(b"mcp-session-id"))]
            call = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"message": "hi"}},
            }
            await post_mcp(port, call, caller + session)
            spans = await collector.wait_for("tools/call", count=2)
        (span,) = [s for s in spans if s.kind == trace_pb2.Span.SPAN_KIND_SERVER]
        (client,) = [s for s in spans if s.kind == trace_pb2.Span.SPAN_KIND_CLIENT]
        (init_span,) = [
            s for s in collector.named("initialize") if s.kind == trace_pb2.Span.SPAN_KIND_SERVER
        ]
        # The upstream call: the gateway's own CLIENT span under the request's
        # (each target's initialize too).
        assert client.parent_span_id == span.span_id and hex_id(client.trace_id) == TRACE_ID
        assert {s.kind for s in collector.named("initialize")} == {
            trace_pb2.Span.SPAN_KIND_SERVER,
            trace_pb2.Span.SPAN_KIND_CLIENT,
        }
        said = attributes(client.attributes)
        assert said["mcp.target"] == "demo" and said["gen_ai.tool.name"] == "echo"
        assert said["agentgateway.outbound.subtype"] == "Mcp"
    for each in (span, init_span):
        assert hex_id(each.trace_id) == TRACE_ID
        assert hex_id(each.parent_span_id) == PARENT_ID
        assert each.kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert span.span_id != init_span.span_id
    assert span.trace_state == "vendor=value"
    attrs_ = attributes(span.attributes)
    assert attrs_["mcp.method.name"] == "tools/call"
    assert attrs_["gen_ai.tool.name"] == "echo"
    assert attrs_["mcp.target"] == "demo"
    assert attrs_["http.method"] == "POST"
    assert attrs_["http.path"] == "/mcp"
    assert attrs_["http.status"] == 200
    assert (attrs_["gateway"], attrs_["listener"], attrs_["route"]) == ("bind/0", "mcp", "mcp")
    assert attrs_["url.scheme"] == "http"
    assert "mcp.session.id" in attrs_
    assert span.status.code != trace_pb2.Status.STATUS_CODE_ERROR
    resource = collector.spans[0][1]
    assert resource["service.name"] == "agentgw"
    # No token and no header value in anything the collector got.
    for body in collector.raw:
        assert b"top-secret-token" not in body
        assert b"vendor=value" not in body.replace(span.trace_state.encode(), b"")


async def test_a_proxied_exchange_has_an_upstream_span_whose_context_goes_upstream() -> None:
    async with otlp_http_receiver() as collector, serve_upstream(echo_handler) as up:
        config = traced(proxy_config(up.port), collector.port, randomSampling=1.0)
        async with run_gateway(config) as (_, port):
            caller = [(b"traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01".encode())]
            response = await request(port, "POST", "/x", headers=caller, body=b"hi")
            assert response.status == 200
            (client,) = await collector.wait_for("Http")
        (server,) = [s for s, _ in collector.spans if s.kind == trace_pb2.Span.SPAN_KIND_SERVER]
    assert client.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    assert client.parent_span_id == server.span_id and hex_id(client.trace_id) == TRACE_ID
    (seen, _) = up.seen[0]
    sent = dict(seen.headers)[b"traceparent"].decode()
    assert sent == f"00-{TRACE_ID}-{hex_id(client.span_id)}-01"
    assert attributes(client.attributes)["http.response.status_code"] == 200


async def test_sampling_follows_agentgateway() -> None:
    async with otlp_http_receiver() as collector, serve_upstream(echo_handler) as up:
        config = traced(proxy_config(up.port), collector.port)  # randomSampling: off
        async with run_gateway(config) as (_, port):
            unsampled = f"00-{TRACE_ID}-{PARENT_ID}-00".encode()
            await request(port, "GET", "/no-trace")
            await request(port, "GET", "/unsampled", headers=[(b"traceparent", unsampled)])
            await request(port, "GET", "/malformed", headers=[(b"traceparent", b"00-zz-yy-01")])
            sampled = f"00-{TRACE_ID}-{PARENT_ID}-01".encode()
            await request(port, "GET", "/sampled", headers=[(b"traceparent", sampled)])
            (span,) = await collector.wait_for("GET upstream")
        assert attributes(span.attributes)["http.path"] == "/sampled"
        # Its upstream span, and nothing of the others (spans leave in order).
        (upstream,) = await collector.wait_for("Http")
        assert upstream.parent_span_id == span.span_id
        assert len(collector.spans) == 2

    async with otlp_http_receiver() as collector, serve_upstream(echo_handler) as up:
        config = traced(proxy_config(up.port), collector.port, randomSampling=True)
        async with run_gateway(config) as (_, port):
            await request(port, "GET", "/root")
            (span,) = await collector.wait_for("GET upstream")
        assert span.parent_span_id == b""  # a new trace


async def test_frontend_policies_tracing_exports_too() -> None:
    async with otlp_http_receiver() as collector, serve_upstream(echo_handler) as up:
        config = proxy_config(up.port)
        config["frontendPolicies"] = {
            "tracing": {
                "host": f"127.0.0.1:{collector.port}",
                "protocol": "http",
                "randomSampling": 1.0,
            }
        }
        config["config"] = {"statsAddr": "off", "adminAddr": "off", "readinessAddr": "off"}
        async with run_gateway(config) as (_, port):
            await request(port, "GET", "/x")
            await collector.wait_for("GET upstream")
        assert collector.paths == [b"/v1/traces"]


async def test_each_jwks_fetch_is_a_span() -> None:
    from tests.test_jwt import rsa_jwk

    jwks = json.dumps({"keys": [rsa_jwk("k")]}).encode()
    async with otlp_http_receiver(jwks) as collector, serve_upstream(echo_handler) as up:
        config = proxy_config(up.port)
        url = f"http://127.0.0.1:{collector.port}/jwks"
        config["binds"][0]["listeners"][0]["routes"][0]["policies"] = {
            "jwtAuth": {"mode": "optional", "issuer": "https://i", "jwks": {"url": url}}
        }
        async with run_gateway(traced(config, collector.port)) as _:
            (span,) = await collector.wait_for("jwks fetch")
    assert span.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    assert span.parent_span_id == b""
    assert attributes(span.attributes)["url.full"] == url


# ---------------------------------------------------------------- gRPC (the default protocol)


class _Receiver(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def Export(self, request: Any, context: Any) -> Any:
        self.collector.add(request.SerializeToString())
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_otlp_over_grpc_is_the_default_protocol() -> None:
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Receiver(collector), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        async with serve_upstream(echo_handler) as up:
            config = proxy_config(up.port)
            config["config"] = {
                "statsAddr": "off",
                "adminAddr": "off",
                "readinessAddr": "off",
                "tracing": {
                    "otlpEndpoint": f"http://127.0.0.1:{grpc_port}",
                    "randomSampling": True,
                },
            }
            async with run_gateway(config) as (_, port):
                await request(port, "GET", "/over-grpc")
                (span,) = await collector.wait_for("GET upstream")
        assert attributes(span.attributes)["http.path"] == "/over-grpc"
    finally:
        server.stop(grace=None)


# ---------------------------------------------------------------- helpers for upstream calls


def memory_tracing(random_sampling: float = 0.0) -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    settings = TracingSettings("http://unused", "http", {}, random_sampling, 1.0)
    return Tracing.from_settings(settings, SimpleSpanProcessor(exporter)), exporter


def test_an_upstream_call_is_the_gateways_own_child_span() -> None:
    tracing, exporter = memory_tracing()
    incoming = [(b"traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01".encode()), (b"x", b"y")]
    downstream = tracing.start_request(incoming)
    with tracing.upstream_call(downstream, "tools/call", {"mcp.target": "demo"}) as call:
        headers = call.headers(incoming)
        message = call.meta({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}})
        call.finish(status=200)
    downstream.end()
    (client, server) = exporter.get_finished_spans()
    assert client.kind is SpanKind.CLIENT and server.kind is SpanKind.SERVER
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    assert client.context.trace_id == int(TRACE_ID, 16)
    sent = dict(headers)[b"traceparent"].decode()
    assert sent == f"00-{TRACE_ID}-{client.context.span_id:016x}-01"
    assert [n for n, _ in headers].count(b"traceparent") == 1 and (b"x", b"y") in headers
    assert message["params"]["_meta"]["traceparent"] == sent
    assert client.attributes["http.response.status_code"] == 200
    assert client.attributes["mcp.target"] == "demo"


def test_an_escaping_error_marks_the_upstream_span() -> None:
    tracing, exporter = memory_tracing(random_sampling=1.0)
    downstream = tracing.start_request([])
    try:
        with tracing.upstream_call(downstream, "POST /mcp"):
            raise TimeoutError
    except TimeoutError:
        pass
    (client,) = exporter.get_finished_spans()
    assert not client.status.is_ok


def test_without_tracing_upstream_headers_are_left_alone() -> None:
    headers = [(b"traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01".encode())]
    with trace_upstream(None, None, "x") as call:
        assert call.headers(headers) == headers
        assert call.meta({"id": 1}) == {"id": 1}
    tracing, exporter = memory_tracing()  # randomSampling 0
    for incoming in ([], [(b"traceparent", f"00-{TRACE_ID}-{PARENT_ID}-00".encode())]):
        downstream = tracing.start_request(incoming)  # not sampled
        with trace_upstream(tracing, downstream, "x") as call:
            assert call.headers(incoming) == incoming
            assert call.meta({"id": 1}) == {"id": 1}
    assert exporter.get_finished_spans() == ()


def context(flags: int | None, remote: bool = True) -> Any:
    if flags is None:
        return None
    header = f"00-{TRACE_ID}-{PARENT_ID}-{flags:02x}".encode()
    parent = parse_traceparent([(b"traceparent", header)])
    assert parent is not None
    if not remote:
        parent = trace.SpanContext(parent.trace_id, parent.span_id, False, parent.trace_flags)
    return trace.set_span_in_context(trace.NonRecordingSpan(parent))


def sampled(sampler: GatewaySampler, parent: Any, kind: SpanKind = SpanKind.SERVER) -> bool:
    result = sampler.should_sample(parent, int(TRACE_ID, 16), "x", kind)
    return bool(result.decision.is_sampled())


def test_the_sampling_rule() -> None:
    default = GatewaySampler(0.0, 1.0)
    assert not sampled(default, context(None))  # no trace: randomSampling, 0 by default
    assert sampled(default, context(1))  # sampled trace: clientSampling, 1 by default
    assert not sampled(default, context(0))  # the caller said not sampled
    assert sampled(default, context(1, remote=False), SpanKind.CLIENT)  # children follow
    assert not sampled(default, context(0, remote=False), SpanKind.CLIENT)
    assert sampled(default, context(None), SpanKind.CLIENT)  # background fetches
    assert sampled(GatewaySampler(1.0, 1.0), context(None))
    assert not sampled(GatewaySampler(1.0, 0.0), context(1))
    # Ratios go by the trace id, as TraceIdRatioBased does.
    low = int(TRACE_ID, 16) & 0xFFFFFFFFFFFFFFFF
    assert sampled(GatewaySampler(low / 2**64 + 1e-9, 1.0), context(None))
    assert not sampled(GatewaySampler(low / 2**64 - 1e-9, 1.0), context(None))


def test_malformed_and_doubled_traceparents_are_ignored() -> None:
    good = f"00-{TRACE_ID}-{PARENT_ID}-01".encode()
    assert parse_traceparent([(b"traceparent", good)]) is not None
    assert parse_traceparent([(b"traceparent", good), (b"traceparent", good)]) is None
    for bad in (b"ff-" + good[3:], b"00-" + b"0" * 32 + good[35:], good[:-1], b"junk"):
        assert parse_traceparent([(b"traceparent", bad)]) is None
