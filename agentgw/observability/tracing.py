"""OpenTelemetry traces: one span per downstream request, per upstream call, per JWKS fetch.

How this works. ``Tracing.from_settings`` builds an SDK tracer provider with a
batch span processor and an OTLP exporter (HTTP/protobuf, or gRPC when its
package is installed). The processor's own thread exports, with a bounded
queue and timeout, so the event loop never waits for the collector.

Sampling follows agentgateway: a request whose ``traceparent`` is sampled is
traced with probability ``clientSampling`` (default 1); a request whose
``traceparent`` is not sampled is not traced; a request without one starts a
trace with probability ``randomSampling`` (default 0). Child spans follow
their parent. Background calls (JWKS fetches) are always traced: they are rare.

The downstream span starts in ``server.connection`` before the handler runs
and ends after the access record is complete: its attributes are the access
log's fields under agentgateway's attribute names (``ATTRIBUTE_NAMES``). No
header value is ever an attribute, so no token can reach the collector.

Upstream calls (MCP or proxied) get a CLIENT span that is the gateway's own
child of the downstream span; when it is sampled, ``UpstreamCall.headers``
puts its ``traceparent`` on the upstream request in place of the client's, and
``UpstreamCall.meta`` puts it in a JSON-RPC ``_meta`` (SEP-414: 2026-07-28
clients, and stdio upstreams, which have no headers).
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final

import attrs
import trio
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.span import TraceFlags, TraceState
from opentelemetry.util.types import Attributes

from agentgw._version import __version__
from agentgw.config.model import Config
from agentgw.errors import ConfigError
from agentgw.observability.access_log import AccessRecord
from agentgw.wire.http import Headers

logger = logging.getLogger(__name__)

SERVICE_NAME: Final = "agentgw"
EXPORT_TIMEOUT: Final = 5.0
SCHEDULE_DELAY: Final = 1.0
MAX_QUEUE: Final = 4096
SHUTDOWN_TIMEOUT: Final = 10.0
MAX_TRACESTATE: Final = 512

# The access log's keys -> agentgateway's span attribute names.
ATTRIBUTE_NAMES: Final = {
    "mcp.method": "mcp.method.name",
    "mcp.resource": "mcp.resource.uri",
    "mcp.session": "mcp.session.id",
}
_SKIPPED: Final = frozenset({"duration", "error"})
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@attrs.frozen
class TracingSettings:
    """What ``config.tracing`` or ``frontendPolicies.tracing`` say, resolved."""

    url: str
    protocol: str
    headers: Mapping[str, str]
    random_sampling: float
    client_sampling: float

    @classmethod
    def from_config(cls, config: Config) -> TracingSettings | None:
        old = config.config.tracing
        if old is not None:
            parts = urllib.parse.urlsplit(old.otlp_endpoint)
            path = parts.path if parts.path not in ("", "/") else (old.path or "/v1/traces")
            return cls(
                f"{parts.scheme}://{parts.netloc}{path}",
                old.otlp_protocol,
                old.headers,
                old.random_sampling if old.random_sampling is not None else 0.0,
                old.client_sampling if old.client_sampling is not None else 1.0,
            )
        new = config.frontend_policies.tracing if config.frontend_policies else None
        if new is None:
            return None
        return cls(
            f"http://{new.host}{new.path}",
            new.protocol,
            {},
            new.random_sampling if new.random_sampling is not None else 0.0,
            new.client_sampling if new.client_sampling is not None else 1.0,
        )


def _ratio_says_yes(ratio: float, trace_id: int) -> bool:
    # As TraceIdRatioBased: the low 64 bits of the trace id decide.
    return ratio >= 1.0 or (ratio > 0.0 and (trace_id & 0xFFFFFFFFFFFFFFFF) < ratio * 2**64)


class GatewaySampler(Sampler):
    """agentgateway's sampling rule (see the module docstring)."""

    def __init__(self, random_sampling: float, client_sampling: float) -> None:
        self.random_sampling = random_sampling
        self.client_sampling = client_sampling

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Any] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if not parent.is_valid:
            sampled = kind is SpanKind.CLIENT or _ratio_says_yes(self.random_sampling, trace_id)
        elif not parent.trace_flags.sampled:
            sampled = False
        elif parent.is_remote:
            sampled = _ratio_says_yes(self.client_sampling, trace_id)
        else:
            sampled = True
        decision = Decision.RECORD_AND_SAMPLE if sampled else Decision.DROP
        state = parent.trace_state if parent.is_valid else None
        return SamplingResult(decision, attributes if sampled else None, state)

    def get_description(self) -> str:
        return f"GatewaySampler(random={self.random_sampling}, client={self.client_sampling})"


def parse_traceparent(headers: Headers) -> SpanContext | None:
    """The W3C trace context a request carries, or None (absent or malformed)."""
    parent = tracestate = None
    for name, value in headers:
        if name == b"traceparent":
            if parent is not None:
                return None  # two: ambiguous, ignore both (W3C)
            parent = value.strip().lower()
        elif name == b"tracestate" and len(value) <= MAX_TRACESTATE:
            tracestate = value
    if parent is None:
        return None
    found = _TRACEPARENT.fullmatch(parent)
    if found is None or found[1] == b"ff":
        return None
    trace_id, span_id = int(found[2], 16), int(found[3], 16)
    if not trace_id or not span_id:
        return None
    state = TraceState.from_header([tracestate.decode("latin-1")]) if tracestate else TraceState()
    return SpanContext(trace_id, span_id, True, TraceFlags(int(found[4], 16)), state)


def format_traceparent(ctx: SpanContext) -> bytes:
    return b"00-%032x-%016x-%02x" % (ctx.trace_id, ctx.span_id, int(ctx.trace_flags))


def check_exporter(settings: TracingSettings) -> None:
    """Raise ``ConfigError`` now if the exporter could not be built."""
    if settings.protocol == "grpc":
        try:
            import opentelemetry.exporter.otlp.proto.grpc.trace_exporter  # noqa: F401
        except ImportError:
            raise ConfigError([_NO_GRPC]) from None


_NO_GRPC: Final = (
    "config.tracing: OTLP over gRPC (agentgateway's default otlpProtocol) needs the package"
    " opentelemetry-exporter-otlp-proto-grpc (pip install 'agentgw[grpc]'), or set"
    " otlpProtocol: http"
)


def _exporter(settings: TracingSettings) -> SpanExporter:
    headers = dict(settings.headers)
    if settings.protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=settings.url, headers=headers, timeout=EXPORT_TIMEOUT)
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )
    except ImportError:
        raise ConfigError([_NO_GRPC]) from None
    parts = urllib.parse.urlsplit(settings.url)
    return GrpcExporter(
        endpoint=parts.netloc,
        insecure=parts.scheme != "https",
        headers=tuple(headers.items()),
        timeout=EXPORT_TIMEOUT,
    )


@attrs.define(eq=False)
class Tracing:
    """A gateway's tracer. Build it with ``from_settings``; ``aclose`` flushes."""

    provider: TracerProvider
    tracer: trace.Tracer = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.tracer = self.provider.get_tracer("agentgw", __version__)

    @classmethod
    def from_settings(
        cls, settings: TracingSettings, processor: SpanProcessor | None = None
    ) -> Tracing:
        """Args:
            settings: from ``TracingSettings.from_config``.
            processor: replaces the batch processor and its OTLP exporter.

        Raises:
            ConfigError: gRPC export without its package.
        """
        provider = TracerProvider(
            sampler=GatewaySampler(settings.random_sampling, settings.client_sampling),
            resource=Resource.create(
                {"service.name": SERVICE_NAME, "service.version": __version__}
            ),
            shutdown_on_exit=False,
        )
        if processor is None:
            processor = BatchSpanProcessor(
                _exporter(settings),
                max_queue_size=MAX_QUEUE,
                schedule_delay_millis=SCHEDULE_DELAY * 1000,
                export_timeout_millis=EXPORT_TIMEOUT * 1000,
            )
        provider.add_span_processor(processor)
        return cls(provider)

    async def aclose(self) -> None:
        """Export what is left and stop the exporter thread (bounded)."""
        with trio.move_on_after(SHUTDOWN_TIMEOUT):
            await trio.to_thread.run_sync(self.provider.shutdown, abandon_on_cancel=True)

    # ------------------------------------------------------------ downstream

    def start_request(self, headers: Headers) -> Span:
        """The SERVER span of one request, child of its ``traceparent``."""
        parent = parse_traceparent(headers)
        context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent else None
        return self.tracer.start_span("request", context, SpanKind.SERVER)

    @staticmethod
    def end_request(span: Span, record: AccessRecord) -> None:
        """Name the span, set its attributes from ``record`` and end it."""
        if span.is_recording():
            method = record.extra.get("mcp.method")
            if method is not None:
                span.update_name(method)
            elif record.route is not None:
                span.update_name(f"{record.method} {record.route}")
            elif record.method is not None:
                span.update_name(record.method)
            attributes: dict[str, str | int] = {"url.scheme": "http"}
            if record.version == "HTTP/1.1":
                attributes["network.protocol.version"] = "1.1"
            for key, value in record.fields():
                if value is not None and key not in _SKIPPED:
                    attributes[ATTRIBUTE_NAMES.get(key, key)] = value
            tool = record.extra.get("mcp.tool")
            if tool is not None:
                named = "gen_ai.prompt.name" if method == "prompts/get" else "gen_ai.tool.name"
                attributes[named] = attributes.pop("mcp.tool")
            span.set_attributes(attributes)
            failed = record.error is not None or (record.status or 0) >= 500
            if failed:
                span.set_status(Status(StatusCode.ERROR, record.error))
        span.end()

    # ------------------------------------------------------------ upstream

    @contextmanager
    def upstream_call(
        self,
        parent: Span | None,
        name: str,
        attributes: Mapping[str, str | int] | None = None,
    ) -> Iterator[UpstreamCall]:
        """A CLIENT span for one call to an upstream, the child of ``parent``
        (the downstream span, ``ServerRequest.span``).

        Use it around the call and put its trace context on what goes out::

            with trace_upstream(gateway.tracing, req.span, "tools/call",
                                {"mcp.target": target}) as call:
                headers = call.headers(headers)        # HTTP upstreams
                message = call.meta(message)           # stdio, and 2026-07-28 _meta
                ...
                call.finish(status=response.status)    # or error="upstream timeout"

        An exception that escapes marks the span as failed. Attribute values
        must never be header values or tokens.
        """
        context = trace.set_span_in_context(parent) if parent is not None else None
        span = self.tracer.start_span(name, context, SpanKind.CLIENT, attributes)
        # Not sampled: what the client sent goes on as it is.
        call = UpstreamCall(span, inject=span.get_span_context().trace_flags.sampled)
        try:
            yield call
        except BaseException as exc:
            if span.is_recording() and not call.is_finished:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()

    @contextmanager
    def background_call(self, name: str, url: str) -> Iterator[UpstreamCall]:
        """A root CLIENT span for the gateway's own fetches (JWKS)."""
        parts = urllib.parse.urlsplit(url)
        safe = urllib.parse.urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", ""))
        if parts.port:
            safe = safe.replace(parts.hostname or "", f"{parts.hostname}:{parts.port}", 1)
        with self.upstream_call(None, name, {"url.full": safe, "http.request.method": "GET"}) as c:
            yield c


@attrs.define(eq=False)
class UpstreamCall:
    """One upstream call's span (see ``Tracing.upstream_call``)."""

    span: Span
    inject: bool = True
    is_finished: bool = False

    def headers(self, headers: Headers) -> Headers:
        """``headers`` with this span's ``traceparent`` (and ``tracestate``)
        in place of the client's."""
        if not self.inject:
            return headers
        ctx = self.span.get_span_context()
        out = [(n, v) for n, v in headers if n not in (b"traceparent", b"tracestate")]
        out.append((b"traceparent", format_traceparent(ctx)))
        if ctx.trace_state:
            out.append((b"tracestate", ctx.trace_state.to_header().encode("latin-1")))
        return out

    def meta(self, message: dict[str, Any]) -> dict[str, Any]:
        """A JSON-RPC request or notification with this span's trace context
        in ``params._meta`` (SEP-414), replacing any the client put there."""
        if not self.inject:
            return message
        ctx = self.span.get_span_context()
        params = message.get("params")
        params = dict(params) if isinstance(params, dict) else {}
        meta = params.get("_meta")
        meta = {
            k: v
            for k, v in (meta.items() if isinstance(meta, dict) else ())
            if k not in ("traceparent", "tracestate")
        }
        meta["traceparent"] = format_traceparent(ctx).decode("ascii")
        if ctx.trace_state:
            meta["tracestate"] = ctx.trace_state.to_header()
        params["_meta"] = meta
        return {**message, "params": params}

    def finish(self, *, status: int | None = None, error: str | None = None) -> None:
        """Record the outcome: an HTTP status and/or a generic error reason."""
        self.is_finished = True
        if not self.span.is_recording():
            return
        if status is not None:
            self.span.set_attribute("http.response.status_code", status)
        if error is not None or (status is not None and status >= 500):
            self.span.set_status(Status(StatusCode.ERROR, error))


NOOP_CALL: Final = UpstreamCall(NonRecordingSpan(trace.INVALID_SPAN_CONTEXT), inject=False)


@contextmanager
def trace_upstream(
    tracing: Tracing | None,
    parent: Span | None,
    name: str,
    attributes: Mapping[str, str | int] | None = None,
) -> Iterator[UpstreamCall]:
    """``tracing.upstream_call(...)``, or a call that does nothing when
    tracing is off (then the client's ``traceparent`` goes on unchanged)."""
    if tracing is None:
        yield NOOP_CALL
        return
    with tracing.upstream_call(parent, name, attributes) as call:
        yield call
