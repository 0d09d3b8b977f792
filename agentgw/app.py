"""Gateway: compiles a config and serves it.

How this works: ``Gateway(config)`` compiles the config into runtime objects
(routers, merged route policies, backend origins) and fails fast with
``ConfigError``. ``serve()`` owns the root nursery: accept loops, the upstream
pool's evictor, the readiness endpoint and the config watcher run there, and
connections run in a child nursery whose deadline is the drain deadline.
Each bind's sockets are a ``BindSlot`` whose ``current`` compiled bind a
reload swaps; a request reads it once, when it starts (the reload section
below, and ``agentgw/reload.py``). ``shutdown()`` starts a
graceful drain: listeners close, idle connections close, in-flight requests
get until ``config.connectionTerminationDeadline`` and are then cancelled
(a streaming response is ended cleanly). Cancelling the caller's scope
instead stops everything at once; either way nothing is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import logging
import os
import random
import time
import urllib.parse
from typing import Any

import attrs
import trio

from agentgw.config.load import effective_binds
from agentgw.config.model import (
    Backend,
    BackendPolicies,
    BackendTLS,
    Bind,
    Config,
    Jwks,
    JwtAuth,
    Listener,
    McpAuthentication,
    McpBackend,
    McpRateLimit,
    McpTarget,
    Policies,
    RateLimit,
    Route,
    RuleSet,
)
from agentgw.errors import ConfigError, HeldByWorker, InvalidParams, UpstreamError
from agentgw.mcp.federation import McpRoute
from agentgw.mcp.session_token import SessionCodec
from agentgw.observability.admin import Admin, RouteLabel
from agentgw.observability.metrics import Metrics, Sources
from agentgw.observability.tracing import Tracing, TracingSettings, check_exporter
from agentgw.policy import authz
from agentgw.policy.jwt import JwksError, KeySet, Provider, Verifier
from agentgw.policy.pipeline import (
    AUTHORIZATION_SERVER,
    METADATA_CORS,
    PROTECTED_RESOURCE,
    JwtStep,
    McpAuthStep,
    RequestView,
    Respond,
    RoutePolicies,
    external_base,
    is_oauth_metadata,
    merge_config,
    protected_resource_document,
    response_headers,
    run_request,
)
from agentgw.policy.ratelimit import McpRateLimits, RateLimiter, compile_mcp_limits
from agentgw.relay.context import RequestContext
from agentgw.relay.endpoint import McpEndpoint
from agentgw.relay.manager import SessionManager
from agentgw.relay.proxy import proxy_request, relay_to_worker
from agentgw.relay.resume import SseSettings
from agentgw.relay.sessions import SessionDirectory, SessionIds
from agentgw.reload import ConfigSource, ConfigWatcher, fixed_changes, keep_fixed
from agentgw.routing import Router, choose_backend
from agentgw.server import management
from agentgw.server.connection import ClientConnection, ServerRequest
from agentgw.server.listen import Acceptor, open_tcp_listeners
from agentgw.tls import ClientTLS, ServerTLS, TlsCompiler, accept_tls
from agentgw.upstream.client import simple_request
from agentgw.upstream.jwks import JwksSource
from agentgw.upstream.pool import ConnectionPool, Origin
from agentgw.wire.http import HeadLimits, header_value
from agentgw.wire.tls import decode_connection, encode_connection
from agentgw.workers import CLIENT_HEADER as WORKER_CLIENT_HEADER
from agentgw.workers import TLS_HEADER as WORKER_TLS_HEADER
from agentgw.workers import WorkerSpec, open_unix_listener

logger = logging.getLogger(__name__)

ACCEPT_BURST = 64  # connections taken per wake-up of an accept loop
_ACCEPT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


@attrs.frozen
class ListenAddress:
    """Where a bind listens. ``listeners`` names its listeners; ``scheme``
    is ``https`` for a bind of HTTPS listeners."""

    host: str
    port: int
    listeners: tuple[str, ...]
    scheme: str = "http"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@attrs.frozen
class CompiledRoute:
    policies: RoutePolicies
    backends: tuple[Backend, ...]
    origins: dict[int, Origin]
    mcp: dict[int, McpRoute]
    per_backend: dict[int, RoutePolicies] = attrs.field(factory=dict)

    def policies_for(self, index: int) -> RoutePolicies:
        return self.per_backend.get(index, self.policies)


@attrs.define(eq=False)
class CompiledBind:
    bind: Bind
    name: str
    router: Router
    routes: dict[int, CompiledRoute]
    tls: ServerTLS | None = None  # its listeners are HTTPS


def parse_origin(host: str, tls: ClientTLS | None = None) -> Origin:
    """``"127.0.0.1:8080"`` or ``"[::1]:8080"`` -> (host, port, tls)."""
    name, sep, port = host.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected host:port, got {host!r}")
    return Origin(name.strip("[]"), int(port), tls)


@attrs.define(eq=False)
class Security:
    """Compiles the security policies once per config object: a listener's
    ``jwtAuth`` shared by its routes is one verifier with one key set.

    On a reload, ``previous`` is the running config's: what did not change
    is taken from it, so MCP sessions keep matching their route and rate
    limits keep their buckets."""

    errors: list[str]
    steps: dict[int, JwtStep] = attrs.field(factory=dict)
    jwks: dict[str, JwksSource] = attrs.field(factory=dict)
    limiters: dict[int, RateLimiter] = attrs.field(factory=dict)
    rulesets: list[authz.RuleSet] = attrs.field(factory=list)
    mcp_limits: list[McpRateLimits] = attrs.field(factory=list)
    mcp_routes: list[tuple[object, McpRoute]] = attrs.field(factory=list)
    previous: Security | None = None

    def rate_limiter(self, specs: tuple[RateLimit, ...], path: str) -> RateLimiter:
        # A listener's policy is one set of buckets for all its routes.
        if id(specs) not in self.limiters:
            old = self.previous.limiters.values() if self.previous is not None else ()
            kept = next((r for r in old if r.path == path and r.specs == specs), None)
            self.limiters[id(specs)] = kept if kept is not None else RateLimiter(path, specs)
        return self.limiters[id(specs)]

    def unchanged_mcp_route(self, key: object) -> McpRoute | None:
        """The running config's MCP route compiled from an equal ``key``."""
        if self.previous is None:
            return None
        taken = {id(r) for _, r in self.mcp_routes}
        route = next(
            (r for k, r in self.previous.mcp_routes if k == key and id(r) not in taken), None
        )
        if route is not None:
            self.mcp_routes.append((key, route))
            if route.rate_limits is not None:
                self.mcp_limits.append(route.rate_limits)
        return route

    def mcp_rate_limits(self, specs: tuple[McpRateLimit, ...], path: str) -> McpRateLimits | None:
        try:
            limits = compile_mcp_limits(specs, path=path)
        except ConfigError as exc:
            self.errors.extend(exc.errors)
            return None
        if limits is not None:
            self.mcp_limits.append(limits)
        return limits

    def jwt_step(self, cfg: JwtAuth, path: str) -> JwtStep:
        if id(cfg) in self.steps:
            return self.steps[id(cfg)]
        providers = []
        remote: list[tuple[str, str]] = []
        for i, provider in enumerate(cfg.all_providers()):
            where = f"{path}.providers[{i}].jwks" if cfg.providers else f"{path}.jwks"
            keys = KeySet()
            try:
                if provider.jwks.inline is not None:
                    keys = KeySet.from_jwks(provider.jwks.inline)
                elif provider.jwks.file is not None:
                    with open(provider.jwks.file, "rb") as f:
                        keys = KeySet.from_jwks(f.read(1 << 20))
                elif provider.jwks.url is not None:
                    remote.append((provider.jwks.url, provider.issuer))
            except (OSError, JwksError) as exc:
                self.errors.append(f"{where}: {exc}")
            else:
                if provider.jwks.url is None and not len(keys):
                    reasons = "; ".join(k.reason for k in keys.skipped) or "the set is empty"
                    self.errors.append(f"{where}: no usable key ({reasons})")
            providers.append(Provider(provider.issuer, provider.audiences, keys))
        verifier = Verifier(providers)
        for url, issuer in remote:
            self.jwks.setdefault(url, JwksSource(url)).users.append((verifier, issuer))
        step = JwtStep(verifier, cfg.mode)
        self.steps[id(cfg)] = step
        return step

    def mcp_auth_step(self, cfg: McpAuthentication, path: str) -> McpAuthStep:
        provider = cfg.provider.name if cfg.provider is not None else None
        jwks = cfg.jwks
        if jwks is None:  # derived from the issuer, as agentgateway does
            issuer = cfg.issuer.rstrip("/")
            derived = (
                f"{issuer}/protocol/openid-connect/certs"
                if provider == "keycloak"
                else f"{issuer}/.well-known/jwks.json"
            )
            jwks = Jwks(url=derived)
        jwt_cfg = JwtAuth(mode=cfg.mode, issuer=cfg.issuer, audiences=cfg.audiences, jwks=jwks)
        step = self.jwt_step(jwt_cfg, path)
        return McpAuthStep(step, cfg.issuer, cfg.audiences, provider, cfg.resource_metadata)

    def rules(self, ruleset: RuleSet, path: str) -> authz.RuleSet | None:
        raw = [r.expression if r.kind == "allow" else {r.kind: r.expression} for r in ruleset.rules]
        try:
            compiled = authz.compile_rules(raw, path=f"{path}.rules")
        except ConfigError as exc:
            self.errors.extend(exc.errors)
            return None
        self.rulesets.append(compiled)
        return compiled


def _backend_tls(policies: BackendPolicies | Policies | None) -> BackendTLS | None:
    return policies.backend_tls if policies is not None else None


def _compile_backend_tls(
    route: Route, path: str, tls: TlsCompiler
) -> tuple[dict[int, ClientTLS | None], dict[int, dict[str, ClientTLS]]]:
    """The TLS settings of a route's host backends (by backend index) and
    of its MCP targets (by backend index, then target name). The most
    specific ``backendTLS`` wins: a target's, its backend's, the route's. A
    host backend speaks TLS only with a ``backendTLS``; an MCP target also
    for an https:// or wss:// URL (with the system's trust)."""
    own = _backend_tls(route.policies)
    hosts: dict[int, ClientTLS | None] = {}
    targets: dict[int, dict[str, ClientTLS]] = {}
    for i, backend in enumerate(route.backends):
        at = f"{path}.backends[{i}]"
        if backend.host is not None:
            cfg, where = own, f"{path}.policies.backendTLS"
            if _backend_tls(backend.policies) is not None:
                cfg, where = _backend_tls(backend.policies), f"{at}.policies.backendTLS"
            hosts[i] = tls.client(cfg, where) if cfg is not None else None
            continue
        if backend.mcp is None:
            continue
        found: dict[str, ClientTLS] = {}
        for t, target in enumerate(backend.mcp.targets):
            spec = target.mcp or target.sse or target.websocket
            if spec is None:
                continue
            candidates = [
                (_backend_tls(target.policies), f"{at}.mcp.targets[{t}].policies.backendTLS"),
                (_backend_tls(backend.policies), f"{at}.policies.backendTLS"),
                (own, f"{path}.policies.backendTLS"),
            ]
            cfg, where = next(((c, w) for c, w in candidates if c is not None), (None, ""))
            if (
                cfg is not None
                and target.websocket is not None
                and (cfg.hostname is not None or cfg.subject_alt_names is not None)
            ):
                tls.errors.append(
                    f"{where}: hostname and subjectAltNames are not supported by agentgw "
                    f"for websocket targets ({at}.mcp.targets[{t}])"
                )
                continue
            secure = spec.port is None and spec.host.startswith(("https://", "wss://"))
            if cfg is not None or secure:
                client = tls.client(cfg, where)
                if client is not None:
                    found[target.name] = client
        targets[i] = found
    return hosts, targets


def is_localhost_bind(address: str) -> bool:
    """A bind on the loopback addresses that DNS-rebinding protection takes as
    a request's Host (127.0.0.1, ::1, localhost)."""
    if address.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    return ip in (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


def resolve_dns_rebinding(backend: McpBackend, address: str, policies: Policies) -> McpBackend:
    """``dnsRebindingProtection`` left out is on for a localhost bind whose
    route takes requests without a token, as the MCP SDKs do for localhost
    servers: a web page the user visits could otherwise reach the gateway
    through a DNS name that resolves to 127.0.0.1."""
    if backend.dns_rebinding_protection is not None:
        return backend
    requires_token = (policies.jwt_auth is not None and policies.jwt_auth.mode == "strict") or (
        policies.mcp_authentication is not None and policies.mcp_authentication.mode == "strict"
    )
    protect = is_localhost_bind(address) and not requires_token
    return attrs.evolve(backend, dns_rebinding_protection=protect)


def _compile_route(
    address: str,
    listener: Listener,
    route: Route,
    path: str,
    errors: list[str],
    security: Security,
    tls: TlsCompiler,
    mcp_path: str | None = None,
) -> CompiledRoute:
    merged = merge_config(listener.policies, route.policies)
    origins: dict[int, Origin] = {}
    mcp: dict[int, McpRoute] = {}
    host_tls, target_tls = _compile_backend_tls(route, path, tls)
    for i, backend in enumerate(route.backends):
        if backend.mcp is not None:
            resolved = resolve_dns_rebinding(backend.mcp, address, merged)
            at = mcp_path or f"{path}.backends[{i}].mcp"
            # Everything the compiled route is made of (its limits carry the path).
            key = (
                resolved,
                backend.policies,
                _backend_tls(route.policies),
                at if backend.mcp.rate_limits else None,
            )
            kept = security.unchanged_mcp_route(key)
            if kept is not None:
                mcp[i] = kept
                continue
            mcp[i] = McpRoute.compile(resolved, target_tls.get(i))
            if backend.mcp.rate_limits:
                limits = security.mcp_rate_limits(backend.mcp.rate_limits, f"{at}.rateLimits")
                mcp[i] = attrs.evolve(mcp[i], rate_limits=limits)
            security.mcp_routes.append((key, mcp[i]))
        elif backend.host is not None:
            try:
                origins[i] = parse_origin(backend.host, host_tls.get(i))
            except ValueError as exc:
                errors.append(f"{path}.backends[{i}].host: {exc}")
    policies = RoutePolicies.from_config(merged)

    def where(name: str) -> str:
        own = route.policies is not None and getattr(route.policies, name) is not None
        return f"{path}.policies" if own else f"{path.rsplit('.routes', 1)[0]}.policies"

    if merged.jwt_auth is not None:
        step = security.jwt_step(merged.jwt_auth, f"{where('jwt_auth')}.jwtAuth")
        policies = attrs.evolve(policies, jwt=step)
    if merged.mcp_authentication is not None:
        at = f"{where('mcp_authentication')}.mcpAuthentication"
        policies = attrs.evolve(
            policies, mcp_auth=security.mcp_auth_step(merged.mcp_authentication, at)
        )
    if merged.authorization is not None:
        rules = security.rules(merged.authorization, f"{where('authorization')}.authorization")
        policies = attrs.evolve(policies, authorization=rules)
    if merged.mcp_authorization is not None:
        at = f"{where('mcp_authorization')}.mcpAuthorization"
        policies = attrs.evolve(
            policies, mcp_authorization=security.rules(merged.mcp_authorization, at)
        )
    limiters = []
    for base, layer in ((path.rsplit(".routes", 1)[0], listener.policies), (path, route.policies)):
        if layer is not None and layer.local_rate_limit:
            at = f"{mcp_path or base}.policies.localRateLimit"
            limiters.append(security.rate_limiter(layer.local_rate_limit, at))
    if limiters:
        policies = attrs.evolve(policies, rate_limits=tuple(limiters))
    # backendAuth on one backend: that backend's requests carry the token.
    per_backend = {
        i: attrs.evolve(policies, passthrough=True)
        for i, b in enumerate(route.backends)
        if b.policies is not None and b.policies.has_passthrough
    }
    return CompiledRoute(policies, route.backends, origins, mcp, per_backend)


def _compile_listeners(bind: Bind, path: str, config: Config, tls: TlsCompiler) -> ServerTLS | None:
    """The bind's HTTPS listeners, or None for a plain HTTP bind."""
    https = [li.protocol == "HTTPS" for li in bind.listeners]
    if not any(https):
        return None
    if not all(https):
        plain = https.index(False)
        tls.errors.append(
            f"{path}.listeners[{plain}].protocol: a bind serves HTTP or HTTPS listeners, "
            "not both (put them on two ports)"
        )
        return None
    server = tls.server(
        [li.tls for li in bind.listeners], [li.hostname or "" for li in bind.listeners], path
    )
    if server is None:
        return None
    return attrs.evolve(server, handshake_timeout=config.frontend_policies.tls.handshake_timeout)


def compile_binds(
    config: Config, security: Security | None = None, tls: TlsCompiler | None = None
) -> list[CompiledBind]:
    errors: list[str] = []
    security = security if security is not None else Security(errors)
    security.errors = errors
    tls = tls if tls is not None else TlsCompiler(errors)
    tls.errors = errors
    compiled = []
    for b, bind in enumerate(effective_binds(config)):
        routes: dict[int, CompiledRoute] = {}
        server = _compile_listeners(bind, f"binds[{b}]", config, tls)
        shorthand = "mcp" if b == len(config.binds) else None  # the ``mcp:`` shorthand's bind
        for li, listener in enumerate(bind.listeners):
            for ri, route in enumerate(listener.routes):
                path = f"binds[{b}].listeners[{li}].routes[{ri}]"
                routes[id(route)] = _compile_route(
                    bind.address, listener, route, path, errors, security, tls, shorthand
                )
        router = Router.from_bind(bind)
        compiled.append(CompiledBind(bind, f"bind/{bind.port}", router, routes, server))
    if errors:
        raise ConfigError(errors)
    return compiled


@attrs.define(eq=False)
class Compiled:
    """A config compiled into what serves it. A reload swaps in a whole one.

    ``warnings`` name the keys read at start-up only that a reloaded file
    changed (their running values were kept)."""

    config: Config
    binds: list[CompiledBind]
    security: Security
    tls: TlsCompiler
    tracing: TracingSettings | None
    warnings: list[str] = attrs.field(factory=list)


def compile_config(config: Config, previous: Compiled | None = None) -> Compiled:
    """Compile ``config``; with ``previous`` (a reload), unchanged MCP routes
    and rate limits are the running ones.

    Raises:
        ConfigError: every problem, each with its field path.
    """
    security = Security([], previous=previous.security if previous is not None else None)
    tls = TlsCompiler([])
    try:
        binds = compile_binds(config, security, tls)
    finally:
        security.previous = None  # no chain of every config ever loaded
    tracing = TracingSettings.from_config(config)
    if tracing is not None:
        check_exporter(tracing)
    return Compiled(config, binds, security, tls, tracing)


def prepare(source: ConfigSource | Config, previous: Compiled | None = None) -> Compiled:
    """Load, convert and compile a config: what ``--validate-only`` checks,
    what the gateway starts with and what a reload serves.

    Args:
        source: where the config comes from (or a config built in Python).
        previous: the running config, on a reload. Keys read at start-up
            only keep its values (``Compiled.warnings`` names those the new
            file changes).

    Raises:
        ConfigError: every problem, each with its field path.
    """
    config = source if isinstance(source, Config) else source.load()
    warnings: list[str] = []
    if previous is not None:
        warnings = fixed_changes(previous.config, config)
        config = keep_fixed(config, previous.config)
    compiled = compile_config(config, previous)
    compiled.warnings = warnings
    return compiled


@attrs.define(eq=False)
class BindSlot:
    """One bind's listening sockets and the compiled bind they serve now.

    A reload that keeps the port swaps ``current``; every request reads it
    once, when it starts, so it runs on one config from start to end."""

    current: CompiledBind
    listeners: list[trio.SocketListener]
    internal: trio.SocketListener | None = None  # under --workers
    address: ListenAddress | None = None
    connections: set[ClientConnection] = attrs.field(factory=set)
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    stopped: trio.Event = attrs.field(factory=trio.Event)
    is_closed: bool = False

    async def aclose(self) -> None:
        if self.is_closed:
            return
        self.is_closed = True
        for listener in self.listeners:
            await listener.aclose()
        if self.internal is not None:
            path = self.internal.socket.getsockname()
            await self.internal.aclose()
            with contextlib.suppress(OSError):
                os.unlink(path)


def _slot_keys(binds: list[CompiledBind]) -> list[tuple[int, int]]:
    """Binds are matched across reloads by port (port 0 binds by their order)."""
    zeros = 0
    keys = []
    for cb in binds:
        if cb.bind.port == 0:
            keys.append((0, zeros))
            zeros += 1
        else:
            keys.append((cb.bind.port, 0))
    return keys


class Gateway:
    """An agentgw gateway for one configuration.

    Args:
        config: a ``Config`` from ``agentgw.load_config`` or built in Python,
            or one compiled by ``prepare``.
        worker: this process's place under ``--workers``.
        source: where the config came from; with a file, ``serve`` watches
            it and reloads it when it changes (and on ``request_reload``).

    Raises:
        ConfigError: the config cannot be served (every problem listed).
    """

    def __init__(
        self,
        config: Config | Compiled,
        *,
        worker: WorkerSpec | None = None,
        source: ConfigSource | None = None,
    ) -> None:
        compiled = config if isinstance(config, Compiled) else compile_config(config)
        self._compiled = compiled
        self.config = config = compiled.config
        self.worker = worker
        self.source = source
        self._security = compiled.security
        tls = compiled.tls
        self._jwks_by_issuer = _jwks_by_issuer(self._security)
        settings = config.config
        self.limits = settings.http
        self.log_format = settings.logging.format
        self.pool = ConnectionPool(
            connect_timeout=settings.backend.connect_timeout,
            idle_timeout=settings.backend.pool_idle_timeout,
            max_idle_per_origin=settings.backend.pool_max_size or 64,
            # One trust store for https URLs the config names (JWKS, IdP
            # metadata): built now rather than on the first request.
            tls=tls.default() if tls.has_default or self._needs_default_tls() else None,
            head_limits=HeadLimits.from_config(settings.http),
        )
        self.sessions = SessionManager(self.pool, ttl=settings.mcp.session_ttl)
        key = settings.session.key if settings.session else None
        if key is None and worker is not None:
            key = worker.session_key  # one key for all workers
        directory = SessionDirectory(
            self.sessions,
            SessionCodec.from_config(key),
            self.pool,
            ids=SessionIds(worker.index, worker.count) if worker else SessionIds(),
            ttl=settings.mcp.session_ttl,
            idle_timeout=settings.mcp.stream_idle_timeout,
        )
        self.mcp = McpEndpoint(
            directory,
            response_timeout=self.limits.upstream_response_timeout,
            sse=SseSettings(
                retry_ms=round(settings.mcp.sse_retry * 1000),
                max_events=settings.mcp.sse_buffer_events,
                max_bytes=settings.mcp.sse_buffer_bytes,
                poll_after=settings.mcp.sse_poll_after,
                resume_window=settings.mcp.sse_resume_window,
            ),
        )
        self.is_draining = False
        self._connections: set[ClientConnection] = set()
        self._shutdown = trio.Event()
        self._slots = trio.Semaphore(self.limits.max_connections)
        self._last_accept_error = -1e9
        # Observability: metrics always, tracing when configured (its
        # exporter starts in serve()), the admin server's view.
        self._tracing_settings = compiled.tracing
        self.tracing: Tracing | None = None
        self._route_labels = _mcp_route_labels(compiled.binds)
        self.metrics = Metrics()
        self.metrics.sources = self._sources()
        # With statsAddr: off nobody can scrape: requests observe nothing.
        self.is_measured = any(a.name == "stats" for a in management.resolve(settings))
        if self.is_measured:
            self.pool.on_connect = self.metrics.upstream_connected
        self.admin = Admin(
            config,
            self.sessions,
            self._route_labels,
            lambda: not self.is_draining,
            self.pool,
            worker,
        )
        self.management_addresses: dict[str, tuple[str, int]] = {}
        # What serve() runs, and what a reload changes.
        self._bind_slots: dict[tuple[int, int], BindSlot] = {}
        self._jwks_running: dict[str, tuple[JwksSource, trio.CancelScope]] = {}
        self._root: trio.Nursery | None = None
        self._accepting: trio.Nursery | None = None
        self._conns: trio.Nursery | None = None
        self._reload_lock = trio.Lock()
        self.watcher = (
            ConfigWatcher(source.file) if source is not None and source.file is not None else None
        )

    def _sources(self) -> Sources:
        security = self._security
        route_of = {id(targets): label.route for targets, label in self._route_labels}
        return Sources(
            sessions=self.sessions,
            pool=self.pool,
            jwks=list(security.jwks.values()),
            verifiers=list({id(s.verifier): s.verifier for s in security.steps.values()}.values()),
            rulesets=security.rulesets,
            limiters=list(security.limiters.values()),
            mcp_limits=security.mcp_limits,
            session_route=lambda session: route_of.get(id(session.targets), "unknown"),
            connections=lambda: len(self._connections),
        )

    @property
    def _binds(self) -> list[CompiledBind]:
        return self._compiled.binds

    def _needs_default_tls(self) -> bool:
        urls = [*self._security.jwks]
        for cb in self._compiled.binds:
            for route in cb.routes.values():
                if route.policies.mcp_auth is not None:
                    urls.append(route.policies.mcp_auth.issuer)
        return any(url.startswith("https://") for url in urls)

    def __repr__(self) -> str:
        state = "draining" if self.is_draining else "serving"
        binds = len(self._compiled.binds)
        return f"<Gateway binds={binds} connections={len(self._connections)} {state}>"

    def shutdown(self) -> None:
        """Begin a graceful drain; ``serve()`` returns when it is done."""
        self._shutdown.set()

    async def serve(
        self, *, task_status: trio.TaskStatus[list[ListenAddress]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on every bind and serve until ``shutdown()`` or cancellation.

        Reports the bound addresses (one per bind, in config order; port 0
        binds a free port) through ``task_status``, so
        ``addrs = await nursery.start(gw.serve)``.
        """
        own: list[tuple[str, list[trio.SocketListener]]] = []  # readiness, stats, admin
        worker = self.worker
        try:
            for key, cb in zip(_slot_keys(self._compiled.binds), self._compiled.binds, strict=True):
                self._bind_slots[key] = await self._open_bind(cb)
            for addr in management.resolve(self.config.config):
                opened = await management.open_listeners(addr, reuse_port=worker is not None)
                if opened:
                    own.append((addr.name, opened))
                    self.management_addresses[addr.name] = opened[0].socket.getsockname()[:2]
            if worker is not None:
                path = worker.admin_socket_path(worker.index)
                own.append(("admin-local", [await open_unix_listener(path)]))
            addresses = [slot.address for slot in self._bind_slots.values() if slot.address]
            if self._tracing_settings is not None:
                self.tracing = Tracing.from_settings(self._tracing_settings)
            async with trio.open_nursery() as root:
                self._root = root
                root.start_soon(self.pool.serve_evictor)
                self._swap_jwks(self._security)
                await root.start(self.sessions.serve)
                handlers = {
                    "readiness": self._readiness,
                    "stats": self._stats,
                    "admin": self.admin.handle,
                    "admin-local": self.admin.handle_local,
                }
                for name, opened in own:
                    root.start_soon(management.serve_management, name, opened, handlers[name])
                if self.is_measured and self.metrics.is_multiprocess:
                    root.start_soon(self.metrics.serve_refresher)
                async with trio.open_nursery() as conns:
                    async with trio.open_nursery() as accepting:
                        self._accepting, self._conns = accepting, conns
                        for slot in self._bind_slots.values():
                            accepting.start_soon(self._serve_bind, slot, conns)
                        if self.watcher is not None:
                            await root.start(self.watcher.serve, self._reload_from_source)
                        task_status.started(addresses)
                        await self._shutdown.wait()
                        async with self._reload_lock:  # a reload under way ends first
                            self._accepting = None
                            accepting.cancel_scope.cancel()
                    await self._drain(conns)
                root.cancel_scope.cancel()
        finally:
            self._root = self._accepting = self._conns = None
            with trio.CancelScope(shield=True):
                for slot in self._bind_slots.values():
                    await slot.aclose()
                for _, opened in own:
                    for listener in opened:
                        await listener.aclose()
                if self.tracing is not None:
                    await self.tracing.aclose()
            self.pool.close_all()

    async def _open_bind(self, cb: CompiledBind) -> BindSlot:
        """Listen on ``cb``'s address (and, under --workers, its Unix socket).

        Raises:
            OSError: the address cannot be bound.
        """
        worker = self.worker
        opened = await open_tcp_listeners(
            cb.bind.address, cb.bind.port, reuse_port=worker is not None
        )
        slot = BindSlot(cb, opened)
        try:
            if worker is not None:
                path = worker.socket_path(worker.index, cb.bind.port)
                slot.internal = await open_unix_listener(path)
        except BaseException:
            with trio.CancelScope(shield=True):
                await slot.aclose()
            raise
        slot.address = self._address(cb, opened)
        return slot

    async def _serve_bind(self, slot: BindSlot, conns: trio.Nursery) -> None:
        try:
            with slot.scope:
                async with trio.open_nursery() as accepting:
                    for listener in slot.listeners:
                        accepting.start_soon(self._accept_loop, listener, slot, conns)
                    if slot.internal is not None:
                        accepting.start_soon(self._accept_loop, slot.internal, slot, conns, True)
        finally:
            slot.stopped.set()

    async def _drain(self, conns: trio.Nursery) -> None:
        self.is_draining = True
        self.mcp.start_drain()
        for slot in self._bind_slots.values():
            for listener in slot.listeners:
                await listener.aclose()
        for conn in list(self._connections):
            conn.start_drain()
        deadline = self.config.config.connection_termination_deadline
        logger.info("draining %d connections (deadline %.1fs)", len(self._connections), deadline)
        conns.cancel_scope.deadline = trio.current_time() + deadline

    def _address(self, cb: CompiledBind, opened: list[trio.SocketListener]) -> ListenAddress:
        host, port = opened[0].socket.getsockname()[:2]
        names = tuple(
            listener.name or f"listener{i}" for i, listener in enumerate(cb.bind.listeners)
        )
        return ListenAddress(host, port, names, "https" if cb.tls is not None else "http")

    async def _accept_loop(
        self,
        listener: trio.SocketListener,
        slot: BindSlot,
        conns: trio.Nursery,
        from_worker: bool = False,
    ) -> None:
        acceptor = Acceptor(listener)
        try:
            while True:
                await self._accept_some(acceptor, slot, conns, from_worker)
        finally:
            acceptor.close()

    async def _accept_some(
        self, acceptor: Acceptor, slot: BindSlot, conns: trio.Nursery, from_worker: bool
    ) -> None:
        """Wait for a connection, then take those queued behind it too."""
        await self._slots.acquire()
        try:
            stream = await acceptor.accept()
        except OSError as exc:
            self._slots.release()
            if exc.errno not in _ACCEPT_ERRNOS:
                raise
            now = time.monotonic()
            if now - self._last_accept_error >= 10:
                self._last_accept_error = now
                logger.error("accept failed (%s); backing off", errno.errorcode[exc.errno])
            await trio.sleep(0.1)
            return
        except BaseException:
            self._slots.release()
            raise
        conns.start_soon(self._serve_connection, stream, slot, from_worker)
        for _ in range(ACCEPT_BURST):
            try:
                self._slots.acquire_nowait()
            except trio.WouldBlock:
                return
            try:
                queued = acceptor.take_queued()
            except OSError:
                queued = None  # the next accept reports it
            if queued is None:
                self._slots.release()
                return
            conns.start_soon(self._serve_connection, queued, slot, from_worker)

    async def _serve_connection(
        self, stream: trio.SocketStream, slot: BindSlot, from_worker: bool = False
    ) -> None:
        try:
            try:
                peer = stream.socket.getpeername()
                client = ("worker", 0) if from_worker else (str(peer[0]), int(peer[1]))
            except OSError:
                await stream.aclose()
                return
            cb = slot.current
            served: trio.abc.Stream = stream
            tls = None
            if cb.tls is not None and not from_worker:
                # Here, in the connection's own task and slot: a slow or
                # hostile handshake holds up nobody else.
                accepted = await accept_tls(stream, cb.tls, f"{client[0]}:{client[1]}")
                if accepted is None:
                    await trio.aclose_forcefully(stream)
                    return
                served, tls = accepted
            handle = self._handle_relayed if from_worker else self._handle
            names = cb.tls.hostnames if cb.tls is not None else None

            async def handler(req: ServerRequest) -> None:
                current = slot.current  # the config as this request starts
                if tls is not None and (current.tls is None or current.tls.hostnames != names):
                    # A reload changed the listeners this handshake chose among.
                    conn.start_drain()
                    req.record.error = "HTTPS listeners changed since the TLS handshake"
                    await req.respond(421, "misdirected request\n")
                    return
                await handle(current, req)

            conn = ClientConnection(
                served,
                client,
                cb.name,
                self.limits,
                handler,
                self.log_format,
                tls=tls,
                metrics=self.metrics if self.is_measured else None,
                tracing=self.tracing,
                is_internal=from_worker,
            )
            self._connections.add(conn)
            slot.connections.add(conn)
            if self.is_draining:
                conn.start_drain()
            try:
                await conn.serve()
            finally:
                self._connections.discard(conn)
                slot.connections.discard(conn)
        finally:
            self._slots.release()

    # ---------------------------------------------------------------- reload
    # agentgw/reload.py has the watcher and says what a reload may change.

    def request_reload(self) -> None:
        """Read the config file again now (SIGHUP), changed or not."""
        if self.watcher is None:
            logger.warning("reload asked, but the config is not from a file: nothing to reload")
            return
        self.watcher.request()

    async def _reload_from_source(self) -> None:
        await self.reload()

    async def reload(self, config: Config | None = None) -> bool:
        """Serve a new config without dropping connections, streams or MCP
        sessions. Keys read at start-up only keep their running values.

        Args:
            config: the new config; None reads the source again.

        Returns:
            Whether it took effect. An invalid config, or a new bind that
            cannot listen, keeps the running one; every problem is logged
            with its field path.
        """
        async with self._reload_lock:
            if self.is_draining or self._accepting is None:
                logger.warning("reload skipped: the gateway is not serving")
                return False
            source = config if config is not None else self.source
            try:
                if source is None:
                    raise ConfigError(["config: nothing to reload (no config source)"])
                compiled = prepare(source, self._compiled)
                self._check_ports(compiled)
                changes = await self._apply(compiled)
            except ConfigError as exc:
                for error in exc.errors:
                    logger.error("config reload: %s", error)
                logger.error(
                    "config reload failed (%d problems): still serving the previous config",
                    len(exc.errors),
                )
                self.metrics.config_reloaded(success=False)
                return False
            for key in compiled.warnings:
                logger.warning(
                    "config reload: %s changed, but is read at start-up only: "
                    "keeping the running value until a restart",
                    key,
                )
            self.metrics.config_reloaded(success=True)
            logger.info("config reloaded: %s", changes)
            return True

    def _check_ports(self, compiled: Compiled) -> None:
        if self.worker is None:
            return
        shorthand = len(compiled.config.binds)
        problems = [
            f"{'mcp' if i == shorthand else f'binds[{i}]'}.port: --workers needs fixed ports"
            for i, cb in enumerate(compiled.binds)
            if cb.bind.port == 0
        ]
        if problems:
            raise ConfigError(problems)

    async def _apply(self, compiled: Compiled) -> str:
        """Open the sockets of new binds, swap the whole config in at once
        (no checkpoint), then close the binds that are gone. Returns what
        changed, in words.

        Raises:
            ConfigError: a new bind cannot listen; nothing changed.
        """
        assert self._accepting is not None and self._conns is not None
        new = dict(zip(_slot_keys(compiled.binds), compiled.binds, strict=True))
        old = self._bind_slots
        # A port that moves to another address is closed before it reopens.
        moved = [k for k in new if k in old and old[k].current.bind.address != new[k].bind.address]
        opened: dict[tuple[int, int], BindSlot] = {}
        try:
            for k in moved:
                await self._stop_bind(old[k])
            for i, (k, cb) in enumerate(new.items()):
                if k not in old or k in moved:
                    try:
                        opened[k] = await self._open_bind(cb)
                    except OSError as exc:
                        at = "mcp" if i == len(compiled.config.binds) else f"binds[{i}]"
                        raise ConfigError([f"{at}: cannot listen: {exc.strerror or exc}"]) from None
        except BaseException:
            with trio.CancelScope(shield=True):
                for slot in opened.values():
                    await slot.aclose()
                for k in moved:
                    await self._restore_bind(k)
            raise
        # The swap: no checkpoint until every reference is the new config's.
        if self.is_measured:
            self.metrics.refresh()  # what the old config's parts counted
        self._swap_jwks(compiled.security)
        gone = [slot for k, slot in old.items() if k not in new or k in moved]
        self._bind_slots = {}
        for k, cb in new.items():
            slot = opened[k] if k in opened else old[k]
            slot.current = cb
            self._bind_slots[k] = slot
            if k in opened:
                self._accepting.start_soon(self._serve_bind, slot, self._conns)
                logger.info("%s: listening on %s", cb.name, slot.address)
        self._compiled = compiled
        self.config = compiled.config
        self._security = compiled.security
        self._jwks_by_issuer = _jwks_by_issuer(compiled.security)
        # The sessions of a route that changed or went keep their labels.
        labels = _mcp_route_labels(compiled.binds)
        live = {id(s.targets) for s in self.sessions.sessions.values()}
        fresh = {id(targets) for targets, _ in labels}
        labels += [(t, lb) for t, lb in self._route_labels if id(t) in live and id(t) not in fresh]
        self._route_labels = labels
        self.metrics.sources = self._sources()
        self.admin.update(compiled.config, labels)
        for slot in gone:
            await self._stop_bind(slot)
            for conn in list(slot.connections):
                conn.start_drain()  # requests in flight finish; idle connections close
        added = [opened[k].current.name for k in opened if k not in moved]
        removed = [slot.current.name for k, slot in old.items() if k not in new]
        parts = [f"{len(new)} binds"]
        parts += [f"opened {', '.join(added)}"] if added else []
        parts += [f"closed {', '.join(removed)}"] if removed else []
        parts += [f"moved {', '.join(new[k].name for k in moved)}"] if moved else []
        return "; ".join(parts)

    async def _stop_bind(self, slot: BindSlot) -> None:
        """Stop accepting on ``slot`` and close its sockets."""
        slot.scope.cancel()
        await slot.stopped.wait()  # no accept() left that closing could race
        await slot.aclose()

    async def _restore_bind(self, key: tuple[int, int]) -> None:
        """A moved bind whose new address failed goes back to its old one."""
        assert self._accepting is not None and self._conns is not None
        slot = self._bind_slots[key]
        for conn in list(slot.connections):
            conn.start_drain()
        try:
            again = await self._open_bind(slot.current)
        except OSError as exc:
            logger.error(
                "%s: cannot listen on its old address again (%s); it serves nothing now",
                slot.current.name,
                exc.strerror or exc,
            )
            del self._bind_slots[key]
            return
        self._bind_slots[key] = again
        self._accepting.start_soon(self._serve_bind, again, self._conns)

    def _swap_jwks(self, security: Security) -> None:
        """Serve the JWKS URLs ``security`` names. A URL served already keeps
        its task, and its new users get its keys at once; a URL no longer
        named stops."""
        assert self._root is not None
        for url, source in list(security.jwks.items()):
            running = self._jwks_running.get(url)
            if running is None:
                scope = trio.CancelScope()
                self._jwks_running[url] = (source, scope)
                self._root.start_soon(self._serve_jwks, source, scope)
            elif running[0] is not source:
                kept = running[0]
                if kept.keys is not None:
                    for verifier, issuer in source.users:
                        verifier.replace_keys(issuer, kept.keys)
                kept.users = source.users
                security.jwks[url] = kept
        for url in [u for u in self._jwks_running if u not in security.jwks]:
            self._jwks_running.pop(url)[1].cancel()

    async def _serve_jwks(self, source: JwksSource, scope: trio.CancelScope) -> None:
        with scope:
            await source.serve(self.pool, self.tracing)

    async def _handle_relayed(self, cb: CompiledBind, req: ServerRequest) -> None:
        """A request a sibling worker relayed here (``agentgw.workers``): the
        client it names is the real one."""
        named = header_value(req.headers, WORKER_CLIENT_HEADER)
        tls = header_value(req.headers, WORKER_TLS_HEADER)
        req.headers = [
            (n, v) for n, v in req.headers if n not in (WORKER_CLIENT_HEADER, WORKER_TLS_HEADER)
        ]
        if named is not None:
            host, _, port = named.decode("latin-1").rpartition(":")
            req.client = (host, int(port) if port.isdigit() else 0)
            req.record.src_addr = f"{host}:{port}"
        if tls is not None:
            try:
                req.tls = decode_connection(tls)
                if req.tls.listener >= len(cb.bind.listeners):
                    raise ValueError(f"no listener {req.tls.listener}")
            except ValueError as exc:
                logger.error("relayed request with bad TLS facts: %s", exc)
                await req.respond(500, "internal error\n")
                return
        req.record.extra["worker.relayed"] = "true"
        await self._handle(cb, req, relayed=True)

    async def _handle(self, cb: CompiledBind, req: ServerRequest, relayed: bool = False) -> None:
        record = req.record
        selected = cb.router.select(req.host, req.path, req.method, req.headers, req.query)
        if selected is None:
            record.error = "route not found"
            await req.respond(404, "route not found\n")
            return
        record.listener, record.route = selected.listener_name, selected.route_name
        if req.tls is not None and cb.bind.listeners[req.tls.listener] is not selected.listener:
            record.error = "host does not match the TLS server name"
            await req.respond(421, "misdirected request\n")
            return
        route = cb.routes[id(selected.route)]
        worker = self.worker
        if worker is not None and len(route.mcp) == 1 and not relayed:
            (mcp_route,) = route.mcp.values()
            owner = self.mcp.owner_of(req, mcp_route)
            if owner is not None and owner != worker.index:
                path = worker.socket_path(owner, cb.bind.port)
                if await relay_to_worker(req, self.pool, path, _worker_facts(req)):
                    record.extra["worker.owner"] = str(owner)
                    return
                logger.info("worker %d is not there: serving its session here", owner)
        peer = req.tls.peer if req.tls is not None else None
        view = RequestView(
            req.method, req.path, req.headers, req.host, req.client, req.scheme, peer
        )
        decision = run_request(route.policies, view)
        if isinstance(decision, Respond):
            record.extra["policy"] = decision.step
            if decision.reason is not None:
                record.error = decision.reason
            if decision.refresh_issuer in self._jwks_by_issuer:
                self._jwks_by_issuer[decision.refresh_issuer].request_refresh()
            headers = response_headers(route.policies, view, decision.headers)
            await req.respond(decision.status, decision.body, headers, decision.content_type)
            return
        if route.policies.mcp_auth is not None and is_oauth_metadata(req.path):
            await self._oauth_metadata(req, view, route.policies.mcp_auth)
            return
        if decision.identity is not None and decision.identity.sub is not None:
            record.extra["jwt.sub"] = decision.identity.sub
        index = _choose(route.backends)
        if index is None:
            record.error = "no backend"
            await req.respond(503, "no backend available\n")
            return
        ctx = RequestContext(req, view, route.policies_for(index), decision.identity)
        if index in route.mcp:
            try:
                await self.mcp.handle(ctx, route.mcp[index])
            except HeldByWorker as held:
                await self._relay_held(cb, req, held)
            return
        await proxy_request(
            ctx,
            self.pool,
            route.origins[index],
            response_timeout=self.limits.upstream_response_timeout,
        )

    async def _relay_held(self, cb: CompiledBind, req: ServerRequest, held: HeldByWorker) -> None:
        """Relay a request to the worker that holds what it continues (an
        MRTR retry); refused as an invalid state if that worker is gone."""
        assert self.worker is not None
        path = self.worker.socket_path(held.worker, cb.bind.port)
        if await relay_to_worker(req, self.pool, path, _worker_facts(req)):
            req.record.extra["worker.owner"] = str(held.worker)
            return
        exc = InvalidParams("invalid requestState", detail=f"worker {held.worker} is not there")
        req.record.error = exc.log_text
        body = json.dumps(exc.rpc_error(held.msg_id)).encode()
        await req.respond(exc.status, body, exc.headers, b"application/json")

    async def _oauth_metadata(
        self, req: ServerRequest, view: RequestView, step: McpAuthStep
    ) -> None:
        """The documents an MCP client reads before it has a token."""
        req.record.extra["policy"] = "mcpAuthentication"
        if req.method == "OPTIONS":
            await req.respond(200, b"", METADATA_CORS)
            return
        try:
            if req.path.startswith(PROTECTED_RESOURCE):
                doc = protected_resource_document(step, view)
            elif req.path.endswith("/client-registration") and step.provider == "keycloak":
                await self._proxy_registration(req, step)
                return
            else:
                doc = await self._authorization_server_metadata(req, view, step)
        except UpstreamError as exc:
            req.record.error = exc.reason
            await req.respond(502, "authorization server metadata unavailable\n")
            return
        await req.respond(200, json.dumps(doc).encode(), METADATA_CORS, b"application/json")

    async def _authorization_server_metadata(
        self, req: ServerRequest, view: RequestView, step: McpAuthStep
    ) -> dict[str, Any]:
        issuer = step.issuer.rstrip("/")
        if step.provider == "keycloak":  # no RFC 8414; OpenID discovery instead
            url = f"{issuer}/.well-known/openid-configuration"
        else:
            parts = urllib.parse.urlsplit(step.issuer)
            path = parts.path.rstrip("/")
            url = f"{parts.scheme}://{parts.netloc}{AUTHORIZATION_SERVER}{path}"
        status, _, body = await simple_request(
            self.pool, b"GET", url, [(b"accept", b"application/json")]
        )
        try:
            doc = json.loads(body) if status == 200 else None
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise UpstreamError(f"{url} answered HTTP {status} without a metadata document")
        here = external_base(view) + req.path
        if step.provider == "auth0" and step.audiences and "authorization_endpoint" in doc:
            # Auth0 ignores RFC 8707's resource; it wants an audience.
            doc["authorization_endpoint"] = (
                f"{doc['authorization_endpoint']}?audience={step.audiences[0]}"
            )
        if step.provider == "keycloak":
            # Keycloak's registration endpoint sends no CORS headers: proxy it.
            doc["registration_endpoint"] = here.rstrip("/") + "/client-registration"
        if step.provider is not None:
            doc["issuer"] = external_base(view) + req.path[len(AUTHORIZATION_SERVER) :]
        return doc

    async def _proxy_registration(self, req: ServerRequest, step: McpAuthStep) -> None:
        body = await req.read_body()
        url = f"{step.issuer.rstrip('/')}/clients-registrations/openid-connect"
        ctype = next((v for n, v in req.headers if n == b"content-type"), b"application/json")
        status, headers, answer = await simple_request(
            self.pool, b"POST", url, [(b"content-type", ctype)], body
        )
        out_type = next((v for n, v in headers if n == b"content-type"), b"application/json")
        await req.respond(status, answer, METADATA_CORS, out_type)

    async def _readiness(self, req: ServerRequest) -> None:
        """``config.readinessAddr``: agentgateway's ``/healthz/ready``, and a
        liveness check (agentgw's ``/healthz/live``) that stays 200 while
        draining, so a draining pod is not killed early."""
        if req.path == management.READY_PATH:
            if self.is_draining:
                await req.respond(503, "draining\n")
            else:
                await req.respond(200, "ready\n")
        elif req.path == management.LIVE_PATH:
            await req.respond(200, "live\n")
        else:
            await req.respond(404, "not found\n")

    async def _stats(self, req: ServerRequest) -> None:
        """``config.statsAddr``: Prometheus metrics on agentgateway's paths."""
        if req.path not in management.METRICS_PATHS:
            await req.respond(404, "not found\n")
            return
        if req.method not in ("GET", "HEAD"):
            await req.respond(405, "method not allowed\n", [(b"allow", b"GET, HEAD")])
            return
        self.metrics.refresh()
        accept = header_value(req.headers, b"accept")
        body, content_type = self.metrics.exposition(accept.decode("latin-1") if accept else None)
        await req.respond(200, body, content_type=content_type.encode())


def _mcp_route_labels(
    binds: list[CompiledBind],
) -> list[tuple[tuple[McpTarget, ...], RouteLabel]]:
    """Each MCP route's targets (the tuple its sessions hold) with the names
    of its route, named as the router names them."""
    out: list[tuple[tuple[McpTarget, ...], RouteLabel]] = []
    for cb in binds:
        for li, listener in enumerate(cb.bind.listeners):
            listener_name = listener.name if listener.name is not None else f"listener{li}"
            for ri, route in enumerate(listener.routes):
                label = RouteLabel(cb.name, listener_name, route.name or f"route{ri}")
                out.extend((m.targets, label) for m in cb.routes[id(route)].mcp.values())
    return out


def _jwks_by_issuer(security: Security) -> dict[str, JwksSource]:
    return {issuer: source for source in security.jwks.values() for _, issuer in source.users}


def _worker_facts(req: ServerRequest) -> list[tuple[bytes, bytes]]:
    """What a worker relaying ``req`` tells the session's owner: the client
    (and its TLS connection), in headers only the workers' socket trusts."""
    facts = [(WORKER_CLIENT_HEADER, f"{req.client[0]}:{req.client[1]}".encode())]
    if req.tls is not None:
        facts.append((WORKER_TLS_HEADER, encode_connection(req.tls)))
    return facts


def _choose(backends: tuple[Backend, ...]) -> int | None:
    backend = choose_backend(backends, random.random())
    if backend is None:
        return None
    return next(i for i, b in enumerate(backends) if b is backend)
