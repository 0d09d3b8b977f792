"""Gateway: compiles a config and serves it.

How this works: ``Gateway(config)`` compiles the config into runtime objects
(routers, merged route policies, backend origins) and fails fast with
``ConfigError``. ``serve()`` owns the root nursery: accept loops, the upstream
pool's evictor and the readiness endpoint run there, and connections run in a
child nursery whose deadline is the drain deadline. ``shutdown()`` starts a
graceful drain: listeners close, idle connections close, in-flight requests
get until ``config.connectionTerminationDeadline`` and are then cancelled
(a streaming response is ended cleanly). Cancelling the caller's scope
instead stops everything at once; either way nothing is left behind.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import random
import time
import urllib.parse
from functools import partial
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
from agentgw.errors import ConfigError, UpstreamError
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
from agentgw.relay.proxy import proxy_request, relay_to_worker
from agentgw.relay.resume import SseSettings
from agentgw.relay.session import SessionManager
from agentgw.relay.sessions import SessionDirectory, SessionIds
from agentgw.routing import Router, choose_backend
from agentgw.server import management
from agentgw.server.connection import ClientConnection, ServerRequest
from agentgw.server.listen import open_tcp_listeners
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
    ``jwtAuth`` shared by its routes is one verifier with one key set."""

    errors: list[str]
    steps: dict[int, JwtStep] = attrs.field(factory=dict)
    jwks: dict[str, JwksSource] = attrs.field(factory=dict)
    limiters: dict[int, RateLimiter] = attrs.field(factory=dict)
    rulesets: list[authz.RuleSet] = attrs.field(factory=list)
    mcp_limits: list[McpRateLimits] = attrs.field(factory=list)

    def rate_limiter(self, specs: tuple[RateLimit, ...], path: str) -> RateLimiter:
        # A listener's policy is one set of buckets for all its routes.
        if id(specs) not in self.limiters:
            self.limiters[id(specs)] = RateLimiter(path, specs)
        return self.limiters[id(specs)]

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
            mcp[i] = McpRoute.compile(
                resolve_dns_rebinding(backend.mcp, address, merged), target_tls.get(i)
            )
            if backend.mcp.rate_limits:
                at = mcp_path or f"{path}.backends[{i}].mcp"
                limits = security.mcp_rate_limits(backend.mcp.rate_limits, f"{at}.rateLimits")
                mcp[i] = attrs.evolve(mcp[i], rate_limits=limits)
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


class Gateway:
    """An agentgw gateway for one configuration.

    Args:
        config: a ``Config`` from ``agentgw.load_config`` or built in Python.

    Raises:
        ConfigError: the config cannot be served (every problem listed).
    """

    def __init__(self, config: Config, *, worker: WorkerSpec | None = None) -> None:
        self.config = config
        self.worker = worker
        self._security = Security([])
        tls = TlsCompiler([])
        self._binds = compile_binds(config, self._security, tls)
        self._jwks_by_issuer = {
            issuer: source for source in self._security.jwks.values() for _, issuer in source.users
        }
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
            ),
        )
        self.is_draining = False
        self._connections: set[ClientConnection] = set()
        self._shutdown = trio.Event()
        self._slots = trio.Semaphore(self.limits.max_connections)
        self._last_accept_error = -1e9
        # Observability: metrics always, tracing when configured (its
        # exporter starts in serve()), the admin server's view.
        self._tracing_settings = TracingSettings.from_config(config)
        if self._tracing_settings is not None:
            check_exporter(self._tracing_settings)
        self.tracing: Tracing | None = None
        mcp_routes = _mcp_route_labels(config)
        route_of = {id(targets): label.route for targets, label in mcp_routes}
        self.metrics = Metrics()
        self.metrics.sources = Sources(
            sessions=self.sessions,
            pool=self.pool,
            jwks=list(self._security.jwks.values()),
            verifiers=list(
                {id(s.verifier): s.verifier for s in self._security.steps.values()}.values()
            ),
            rulesets=self._security.rulesets,
            limiters=list(self._security.limiters.values()),
            mcp_limits=self._security.mcp_limits,
            session_route=lambda session: route_of.get(id(session.targets), "unknown"),
            connections=lambda: len(self._connections),
        )
        # With statsAddr: off nobody can scrape: requests observe nothing.
        self.is_measured = any(a.name == "stats" for a in management.resolve(settings))
        if self.is_measured:
            self.pool.on_connect = self.metrics.upstream_connected
        self.admin = Admin(
            config, self.sessions, mcp_routes, lambda: not self.is_draining, self.pool, worker
        )
        self.management_addresses: dict[str, tuple[str, int]] = {}

    def _needs_default_tls(self) -> bool:
        urls = [*self._security.jwks]
        for cb in self._binds:
            for route in cb.routes.values():
                if route.policies.mcp_auth is not None:
                    urls.append(route.policies.mcp_auth.issuer)
        return any(url.startswith("https://") for url in urls)

    def __repr__(self) -> str:
        state = "draining" if self.is_draining else "serving"
        return f"<Gateway binds={len(self._binds)} connections={len(self._connections)} {state}>"

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
        listeners: list[tuple[CompiledBind, list[trio.SocketListener]]] = []
        internal: list[tuple[CompiledBind, trio.SocketListener]] = []
        own: list[tuple[str, list[trio.SocketListener]]] = []  # readiness, stats, admin
        worker = self.worker
        try:
            for b, cb in enumerate(self._binds):
                host, port = cb.bind.address, cb.bind.port
                opened = await open_tcp_listeners(host, port, reuse_port=worker is not None)
                if worker is not None:
                    path = worker.socket_path(worker.index, b)
                    internal.append((cb, await open_unix_listener(path)))
                listeners.append((cb, opened))
            for addr in management.resolve(self.config.config):
                opened = await management.open_listeners(addr, reuse_port=worker is not None)
                if opened:
                    own.append((addr.name, opened))
                    self.management_addresses[addr.name] = opened[0].socket.getsockname()[:2]
            if worker is not None:
                path = worker.admin_socket_path(worker.index)
                own.append(("admin-local", [await open_unix_listener(path)]))
            addresses = [self._address(cb, opened) for cb, opened in listeners]
            if self._tracing_settings is not None:
                self.tracing = Tracing.from_settings(self._tracing_settings)
            async with trio.open_nursery() as root:
                root.start_soon(self.pool.serve_evictor)
                for source in self._security.jwks.values():
                    root.start_soon(source.serve, self.pool, self.tracing)
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
                        for cb, opened in listeners:
                            for listener in opened:
                                accepting.start_soon(self._accept_loop, listener, cb, conns)
                        for cb, listener in internal:
                            accepting.start_soon(self._accept_loop, listener, cb, conns, True)
                        task_status.started(addresses)
                        await self._shutdown.wait()
                        accepting.cancel_scope.cancel()
                    await self._drain(listeners, conns)
                root.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for _, opened in listeners:
                    for listener in opened:
                        await listener.aclose()
                for _, listener in internal:
                    await listener.aclose()
                for _, opened in own:
                    for listener in opened:
                        await listener.aclose()
                if self.tracing is not None:
                    await self.tracing.aclose()
            self.pool.close_all()

    async def _drain(
        self, listeners: list[tuple[CompiledBind, list[trio.SocketListener]]], conns: trio.Nursery
    ) -> None:
        self.is_draining = True
        self.mcp.start_drain()
        for _, opened in listeners:
            for listener in opened:
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
        cb: CompiledBind,
        conns: trio.Nursery,
        from_worker: bool = False,
    ) -> None:
        while True:
            await self._slots.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:
                self._slots.release()
                if exc.errno not in _ACCEPT_ERRNOS:
                    raise
                now = time.monotonic()
                if now - self._last_accept_error >= 10:
                    self._last_accept_error = now
                    logger.error("accept failed (%s); backing off", errno.errorcode[exc.errno])
                await trio.sleep(0.1)
                continue
            except BaseException:
                self._slots.release()
                raise
            conns.start_soon(self._serve_connection, stream, cb, from_worker)

    async def _serve_connection(
        self, stream: trio.SocketStream, cb: CompiledBind, from_worker: bool = False
    ) -> None:
        try:
            try:
                peer = stream.socket.getpeername()
                client = ("worker", 0) if from_worker else (str(peer[0]), int(peer[1]))
            except OSError:
                await stream.aclose()
                return
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
            conn = ClientConnection(
                served,
                client,
                cb.name,
                self.limits,
                partial(self._handle_relayed if from_worker else self._handle, cb),
                self.log_format,
                tls=tls,
                metrics=self.metrics if self.is_measured else None,
                tracing=self.tracing,
                is_internal=from_worker,
            )
            self._connections.add(conn)
            if self.is_draining:
                conn.start_drain()
            try:
                await conn.serve()
            finally:
                self._connections.discard(conn)
        finally:
            self._slots.release()

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
                path = worker.socket_path(owner, self._binds.index(cb))
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
            await self.mcp.handle(ctx, route.mcp[index])
            return
        await proxy_request(
            ctx,
            self.pool,
            route.origins[index],
            response_timeout=self.limits.upstream_response_timeout,
        )

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


def _mcp_route_labels(config: Config) -> list[tuple[tuple[McpTarget, ...], RouteLabel]]:
    """Each MCP backend's targets with the names of its route, named as the
    router names them."""
    out: list[tuple[tuple[McpTarget, ...], RouteLabel]] = []
    for bind in effective_binds(config):
        for li, listener in enumerate(bind.listeners):
            listener_name = listener.name if listener.name is not None else f"listener{li}"
            for ri, route in enumerate(listener.routes):
                label = RouteLabel(f"bind/{bind.port}", listener_name, route.name or f"route{ri}")
                out.extend((b.mcp.targets, label) for b in route.backends if b.mcp is not None)
    return out


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
