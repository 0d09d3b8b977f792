"""Prometheus metrics: agentgateway's names where it has them, ``agentgw_*`` otherwise.

How this works. Request metrics are observed once per request, from its
access record (``Metrics.observe``, called where the access line is
written). Label values are first cut down to bounded sets (``label_*``
below), and the prometheus-client children of each label tuple are cached,
so a request costs a few dict lookups, one counter increment and one
histogram observation.

Everything the gateway's parts already count (MCP sessions, stdio children,
the upstream pool, JWKS fetches, verified-token caches, authorization
denials, rate-limited requests, live Trio tasks) is read from them when
``refresh`` runs, never pushed from the request path. A counter read that
way is advanced by the difference since the last read.

Under ``--workers N`` the supervisor gives every worker one
``PROMETHEUS_MULTIPROC_DIR``: prometheus-client's multiprocess mode keeps
each worker's values in memory-mapped files there, and a scrape of any
worker reads all of them. Each worker refreshes its scrape-time values every
``REFRESH_INTERVAL`` seconds and right before it answers a scrape, so a
sibling's gauges are at most that old.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Final

import attrs
import prometheus_client
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from agentgw._version import __version__
from agentgw.observability.access_log import AccessRecord
from agentgw.policy.authz import RuleSet
from agentgw.policy.jwt import Verifier
from agentgw.policy.ratelimit import McpRateLimits, RateLimiter
from agentgw.relay.manager import SessionManager
from agentgw.relay.session import RelaySession
from agentgw.upstream.jwks import JwksSource
from agentgw.upstream.pool import ConnectionPool

logger = logging.getLogger(__name__)

# A counter's ``_created`` series doubles the output for nothing here.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
REFRESH_INTERVAL: Final = 2.0
UNKNOWN: Final = "unknown"
MAX_NAMES_PER_TARGET: Final = 500
"""Distinct tool/prompt/resource names counted per target; later ones are
``unknown``. A safety net behind ``label_mcp_name``."""

# agentgateway's buckets (crates/agentgateway/src/telemetry/metrics.rs).
HTTP_REQUEST_DURATION_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 80.0,
)  # fmt: skip
CONNECT_DURATION_BUCKETS: Final = (
    0.0005, 0.0015, 0.0043, 0.0126, 0.0368, 0.108, 0.316, 0.924, 2.71, 8.0,
)  # fmt: skip

HTTP_LABELS: Final = ("bind", "gateway", "listener", "route", "method", "status")
MCP_LABELS: Final = (
    "method", "resource_type", "server", "resource", "bind", "gateway", "listener", "route",
)  # fmt: skip
TCP_LABELS: Final = ("bind", "gateway", "listener", "protocol")

_HTTP_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
_MCP_METHODS: Final = {
    "initialize": "",
    "ping": "",
    "logging/setLevel": "",
    "completion/complete": "",
    "tools/list": "tool",
    "tools/call": "tool",
    "prompts/list": "prompt",
    "prompts/get": "prompt",
    "resources/list": "resource",
    "resources/read": "resource",
    "resources/subscribe": "resource",
    "resources/unsubscribe": "resource",
    "resources/templates/list": "templates",
    "tasks/get": "task",
    "tasks/list": "task",
    "tasks/result": "task",
    "tasks/cancel": "task",
    "notifications/initialized": "",
    "notifications/cancelled": "",
    "notifications/progress": "",
    "notifications/roots/list_changed": "",
    "response": "",  # the client's answer to a server-to-client request
}


def label_method(method: str | None) -> str:
    """An HTTP method, or ``unknown`` for one outside RFC 9110 and PATCH."""
    return method if method is not None and method in _HTTP_METHODS else UNKNOWN


def label_mcp_method(method: str) -> str:
    """A JSON-RPC method of the MCP specification, else ``unknown``."""
    return method if method in _MCP_METHODS else UNKNOWN


def label_mcp_name(record: AccessRecord) -> str:
    """The tool, prompt or resource name a call's metrics carry.

    The one rule that keeps this label bounded: the name counts only when a
    target lists it. The relay says so in ``record.mcp_name_known``; when it
    does not (``None``), a name counts when the call was routed to a target
    (``mcp.target`` is set) and did not end in an error. Anything else,
    including a client's made-up name, is ``unknown``.
    """
    extra = record.extra
    name = extra.get("mcp.tool") or extra.get("mcp.resource")
    if name is None:
        return UNKNOWN
    known = record.mcp_name_known
    if known is None:
        known = "mcp.target" in extra and record.error is None and "error" not in extra
    return name if known else UNKNOWN


def count_tasks() -> int:
    """Live Trio tasks in this run, counted by walking the task tree."""
    count = 0
    root = trio.lowlevel.current_root_task()
    stack = [root] if root is not None else []
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


@attrs.define(eq=False)
class Sources:
    """What ``refresh`` reads: the gateway's parts, registered at start-up."""

    sessions: SessionManager | None = None
    pool: ConnectionPool | None = None
    jwks: Sequence[JwksSource] = ()
    verifiers: Sequence[Verifier] = ()
    rulesets: Sequence[RuleSet] = ()
    limiters: Sequence[RateLimiter] = ()
    mcp_limits: Sequence[McpRateLimits] = ()
    session_route: Callable[[RelaySession], str] = lambda _: UNKNOWN
    connections: Callable[[], int] = lambda: 0


@attrs.define(eq=False, slots=False)
class Metrics:
    """One gateway's metrics.

    Args:
        registry: where the metrics register; a fresh one by default, so two
            gateways in one process do not mix.
        multiprocess_dir: with ``--workers``, the shared directory (from
            ``PROMETHEUS_MULTIPROC_DIR``); a scrape then reads every worker.
    """

    registry: CollectorRegistry = attrs.field(factory=CollectorRegistry)
    multiprocess_dir: str | None = attrs.field(factory=lambda: os.environ.get(MULTIPROC_ENV))
    sources: Sources = attrs.field(factory=Sources)
    _http: dict[tuple[str | int | None, ...], tuple[Counter, Histogram]] = attrs.field(
        factory=dict, repr=False
    )
    _mcp: dict[tuple[str, ...], Counter] = attrs.field(factory=dict, repr=False)
    _names: dict[str, set[str]] = attrs.field(factory=dict, repr=False)
    _last: dict[tuple[object, ...], float] = attrs.field(factory=dict, repr=False)
    _session_routes: set[str] = attrs.field(factory=set, repr=False)

    def __attrs_post_init__(self) -> None:
        r = self.registry
        # ---- agentgateway's
        self.build = Gauge(
            "agentgateway_build_info",
            "Agentgateway build information",
            ["tag"],
            registry=r,
            multiprocess_mode="max",
        )
        self.build.labels(__version__).set(1)
        self.requests = Counter(
            "agentgateway_requests",
            "The total number of HTTP requests sent",
            HTTP_LABELS,
            registry=r,
        )
        self.request_duration = Histogram(
            "agentgateway_request_duration_seconds",
            "Duration of HTTP requests (seconds)",
            HTTP_LABELS,
            registry=r,
            buckets=HTTP_REQUEST_DURATION_BUCKETS,
        )
        self.mcp_requests = Counter(
            "agentgateway_mcp_requests", "Total number of MCP tool calls", MCP_LABELS, registry=r
        )
        self.downstream_connections = Counter(
            "agentgateway_downstream_connections",
            "The total number of downstream connections established",
            TCP_LABELS,
            registry=r,
        )
        self.upstream_connect_duration = Histogram(
            "agentgateway_upstream_connect_duration_seconds",
            "Duration to establish upstream connection (seconds)",
            ["transport"],
            registry=r,
            buckets=CONNECT_DURATION_BUCKETS,
        )
        self.tls_handshake_duration = Histogram(
            "agentgateway_tls_handshake_duration_seconds",
            "Duration to complete inbound TLS/HTTPS handshake (seconds)",
            TCP_LABELS,
            registry=r,
            buckets=CONNECT_DURATION_BUCKETS,
        )
        self.config_synchronized = Gauge(
            "agentgateway_config_synchronized",
            "Whether the last configuration load/reload was successful or not, being "
            "synchronized with the on-disk configuration",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.config_synchronized.set(1)
        # ---- agentgw's own, counted where they happen
        self.config_reloads = Counter(
            "agentgw_config_reload",
            "Config reloads (file change or SIGHUP), by result (success or failure)",
            ["result"],
            registry=r,
        )
        # ---- agentgw's own, read at scrape time
        self.mcp_sessions = Gauge(
            "agentgw_mcp_sessions",
            "MCP sessions open",
            ["route"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.stdio_processes = Gauge(
            "agentgw_stdio_processes",
            "stdio MCP server processes running",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.pool_connections = Gauge(
            "agentgw_upstream_pool_connections",
            "Upstream HTTP connections in the pool, idle or busy",
            ["state"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.connections_open = Gauge(
            "agentgw_downstream_connections_open",
            "Client connections open",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.tasks = Gauge(
            "agentgw_tasks",
            "Live Trio tasks in the gateway process",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.jwks_fetches = Counter(
            "agentgw_jwks_fetches", "JWKS fetches that succeeded", ["url"], registry=r
        )
        self.jwks_failures = Counter(
            "agentgw_jwks_fetch_failures", "JWKS fetches that failed", ["url"], registry=r
        )
        self.token_cache = Counter(
            "agentgw_token_cache_lookups",
            "Bearer tokens looked up in the verified-token cache, by result (hit or miss)",
            ["result"],
            registry=r,
        )
        self.denials = Counter(
            "agentgw_authorization_denials",
            "Requests and MCP calls denied by authorization or mcpAuthorization, by rule",
            ["policy", "rule"],
            registry=r,
        )
        self.rate_limited = Counter(
            "agentgw_rate_limited_requests",
            "Requests and MCP calls refused by a rate limit",
            ["policy"],
            registry=r,
        )

    @property
    def is_multiprocess(self) -> bool:
        return self.multiprocess_dir is not None

    # ------------------------------------------------------------ hot path

    def observe(self, record: AccessRecord, *, relayed: bool = False) -> None:
        """Count one finished request (and its MCP call, if any).

        A request a sibling worker relayed here (``relayed``) was counted as
        an HTTP request there; only its MCP call is counted here.
        """
        if relayed:
            method = record.extra.get("mcp.method")
            if method is not None:
                self._observe_mcp(record, method)
            return
        key = (record.gateway, record.listener, record.route, record.method, record.status)
        children = self._http.get(key)
        if children is None:
            children = self._http_children(record)
            if record.method in _HTTP_METHODS:  # else not cached: the key is the client's
                self._http[key] = children
        children[0].inc()
        children[1].observe(record.duration_ms / 1000)
        if record.extra:
            method = record.extra.get("mcp.method")
            if method is not None:
                self._observe_mcp(record, method)

    def _http_children(self, record: AccessRecord) -> tuple[Counter, Histogram]:
        status = str(record.status) if record.status is not None else UNKNOWN
        labels = (
            record.gateway,
            record.gateway,
            record.listener or UNKNOWN,
            record.route or UNKNOWN,
            label_method(record.method),
            status,
        )
        return self.requests.labels(*labels), self.request_duration.labels(*labels)

    def _observe_mcp(self, record: AccessRecord, method: str) -> None:
        target = record.extra.get("mcp.target", UNKNOWN)
        name = label_mcp_name(record)
        if name != UNKNOWN:
            seen = self._names.setdefault(target, set())
            if name not in seen:
                if len(seen) >= MAX_NAMES_PER_TARGET:
                    name = UNKNOWN
                else:
                    seen.add(name)
        method = label_mcp_method(method)
        gateway = record.gateway
        key = (method, target, name, gateway, record.listener or "", record.route or "")
        child = self._mcp.get(key)
        if child is None:
            kind = _MCP_METHODS.get(method) or UNKNOWN
            child = self.mcp_requests.labels(
                method,
                kind,
                target,
                name,
                gateway,
                gateway,
                record.listener or UNKNOWN,
                record.route or UNKNOWN,
            )
            self._mcp[key] = child
        child.inc()

    def connection_opened(self, bind: str, listener: str | None) -> None:
        self.downstream_connections.labels(bind, bind, listener or UNKNOWN, "HTTP").inc()

    def config_reloaded(self, *, success: bool) -> None:
        self.config_reloads.labels("success" if success else "failure").inc()
        self.config_synchronized.set(1 if success else 0)

    def upstream_connected(self, transport: str, seconds: float) -> None:
        """An upstream connection was made (``transport``: ``plaintext``,
        ``tls`` or ``unix``)."""
        self.upstream_connect_duration.labels(transport).observe(seconds)

    def tls_handshake(self, bind: str, listener: str | None, seconds: float) -> None:
        """An inbound TLS handshake finished (HTTPS listeners)."""
        self.tls_handshake_duration.labels(bind, bind, listener or UNKNOWN, "HTTPS").observe(
            seconds
        )

    # ------------------------------------------------------------ scrape time

    def refresh(self) -> None:
        """Read what the gateway's parts count. Call in the gateway's Trio run."""
        src = self.sources
        if src.sessions is not None:
            by_route: dict[str, int] = {}
            stdio = 0
            for session in list(src.sessions.sessions.values()):
                route = src.session_route(session)
                by_route[route] = by_route.get(route, 0) + 1
                stdio += sum(
                    1
                    for t in session.targets
                    if t.stdio is not None and t.name in session.transports
                )
            self._session_routes.update(by_route)
            for route in self._session_routes:
                self.mcp_sessions.labels(route).set(by_route.get(route, 0))
            self.stdio_processes.set(stdio)
        if src.pool is not None:
            stats = src.pool.statistics()
            self.pool_connections.labels("idle").set(stats.idle)
            self.pool_connections.labels("busy").set(stats.active)
        self.connections_open.set(src.connections())
        self.tasks.set(count_tasks())
        for source in src.jwks:
            self._advance(self.jwks_fetches, (source.url,), source.fetches)
            self._advance(self.jwks_failures, (source.url,), source.failures)
        hits = sum(v.statistics().hits for v in src.verifiers)
        misses = sum(v.statistics().misses for v in src.verifiers)
        self._advance(self.token_cache, ("hit",), hits)
        self._advance(self.token_cache, ("miss",), misses)
        for ruleset in src.rulesets:
            for rule, count in list(ruleset.denials.items()):
                self._advance(self.denials, (ruleset.path, rule), count)
        for limiter in src.limiters:
            self._advance(self.rate_limited, (limiter.path,), limiter.limited)
        for limits in src.mcp_limits:
            for limit in limits.limits:
                self._advance(self.rate_limited, (limit.path,), limit.limited)

    def _advance(self, counter: Counter, labels: tuple[str, ...], total: float) -> None:
        key = (id(counter), *labels)
        delta = total - self._last.get(key, 0.0)
        if delta > 0:
            counter.labels(*labels).inc(delta)
        self._last[key] = total

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape's body and content type, by the ``Accept`` header
        (Prometheus text, or OpenMetrics when asked for)."""
        encoder, content_type = choose_encoder(accept or "")
        if self.multiprocess_dir is None:
            return encoder(self.registry), content_type
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return encoder(registry), content_type

    async def serve_refresher(self, interval: float = REFRESH_INTERVAL) -> None:
        """With ``--workers``: refresh now and then, so a sibling's scrape
        sees this worker's gauges. Never returns."""
        while True:
            self.refresh()
            await trio.sleep(interval)
