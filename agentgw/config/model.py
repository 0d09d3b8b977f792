"""The configuration model: agentgateway's standalone config format.

Frozen attrs classes, one per object in the YAML/JSON file. Field names are
snake_case here and camelCase in the file (``path_prefix`` <-> ``pathPrefix``);
the converter in ``converter.py`` does the mapping, forbids unknown keys and
reports every error with its field path. Durations are parsed to seconds
(float) and sizes to bytes (int) by the converter. These are config values,
not runtime objects: ``agentgw.app.Gateway`` compiles them.

Where agentgateway has a key that agentgw does not implement, the converter
refuses it by name with "not supported by agentgw" rather than ignoring it.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

# ---------------------------------------------------------------- matches


@attrs.frozen
class PathMatch:
    """Exactly one of ``exact``, ``path_prefix`` (``pathPrefix``), ``regex``."""

    exact: str | None = None
    path_prefix: str | None = None
    regex: str | None = None


@attrs.frozen
class ValueMatch:
    """Exactly one of ``exact``, ``regex``."""

    exact: str | None = None
    regex: str | None = None


@attrs.frozen
class HeaderMatch:
    name: str
    value: ValueMatch


@attrs.frozen
class QueryMatch:
    name: str
    value: ValueMatch


@attrs.frozen
class RouteMatch:
    path: PathMatch = PathMatch(path_prefix="/")
    method: str | None = None
    headers: tuple[HeaderMatch, ...] = ()
    query: tuple[QueryMatch, ...] = ()


# ---------------------------------------------------------------- policies


@attrs.frozen
class HeaderModifier:
    add: dict[str, str] = attrs.field(factory=dict)
    set: dict[str, str] = attrs.field(factory=dict)
    remove: tuple[str, ...] = ()


@attrs.frozen
class DirectResponse:
    status: int
    body: str = ""


@attrs.frozen
class TimeoutPolicy:
    """Seconds. ``request_timeout`` bounds the whole exchange,
    ``backend_request_timeout`` the wait for the upstream's response head."""

    request_timeout: float | None = None
    backend_request_timeout: float | None = None


@attrs.frozen
class Cors:
    allow_origins: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    allow_methods: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    allow_credentials: bool = False
    max_age: float | None = None


@attrs.frozen
class Jwks:
    """Where keys come from: exactly one of ``inline`` (the JSON text, written
    as a plain string in the file), ``file`` (``{file: path}``) or ``url``
    (``{url: ...}``, fetched and refreshed)."""

    inline: str | None = None
    file: str | None = None
    url: str | None = None


@attrs.frozen
class JwtProvider:
    issuer: str
    jwks: Jwks
    audiences: tuple[str, ...] | None = None


@attrs.frozen
class JwtAuth:
    """``jwtAuth``: one provider inline (``issuer``, ``jwks``, ``audiences``)
    or several under ``providers``."""

    mode: Literal["strict", "optional", "permissive"] = "optional"
    issuer: str | None = None
    audiences: tuple[str, ...] | None = None
    jwks: Jwks | None = None
    providers: tuple[JwtProvider, ...] = ()

    def all_providers(self) -> tuple[JwtProvider, ...]:
        if self.providers:
            return self.providers
        assert self.issuer is not None and self.jwks is not None
        return (JwtProvider(self.issuer, self.jwks, self.audiences),)


@attrs.frozen
class Rule:
    """A CEL rule: a plain string in the file is an ``allow`` rule."""

    kind: Literal["allow", "deny", "require"]
    expression: str


@attrs.frozen
class RuleSet:
    rules: tuple[Rule, ...]


@attrs.frozen
class Passthrough:
    pass


@attrs.frozen
class BackendAuth:
    """``backendAuth: {passthrough: {}}``: send the client's validated token
    to the upstream as ``Authorization: Bearer <token>``."""

    passthrough: Passthrough | None = None


@attrs.frozen
class BackendTLS:
    """``backendTLS``: speak TLS to the upstream. Files are PEM, read when
    the config is compiled. ``root`` replaces the system trust store;
    ``cert`` and ``key`` (both or neither) are a client certificate;
    ``hostname`` is the name sent as SNI and verified; ``insecure`` skips
    all verification, ``insecureHost`` only the name check;
    ``subjectAltNames`` are the names accepted instead of the host's; agentgw
    speaks HTTP/1.1 only, so ``alpn`` may only offer ``http/1.1``."""

    root: str | None = None
    cert: str | None = None
    key: str | None = None
    hostname: str | None = None
    insecure: bool = False
    insecure_host: bool = False
    alpn: tuple[str, ...] | None = None
    subject_alt_names: tuple[str, ...] | None = None


@attrs.frozen
class BackendPolicies:
    """Policies on one backend or one MCP target (agentgateway's backend
    policies); agentgw supports ``backendAuth`` and ``backendTLS`` there."""

    backend_auth: BackendAuth | None = None
    backend_tls: BackendTLS | None = None

    @property
    def has_passthrough(self) -> bool:
        return self.backend_auth is not None and self.backend_auth.passthrough is not None


@attrs.frozen
class Empty:
    pass


@attrs.frozen
class McpProvider:
    """Exactly one of ``auth0: {}`` or ``keycloak: {}``."""

    auth0: Empty | None = None
    keycloak: Empty | None = None

    @property
    def name(self) -> str:
        return "auth0" if self.auth0 is not None else "keycloak"


@attrs.frozen
class McpAuthentication:
    """``mcpAuthentication``: the MCP authorization spec (RFC 9728)."""

    issuer: str
    audiences: tuple[str, ...]
    resource_metadata: dict[str, Any]
    provider: McpProvider | None = None
    jwks: Jwks | None = None
    mode: Literal["strict", "optional", "permissive"] = "strict"


@attrs.frozen
class RateLimit:
    """One token bucket of ``localRateLimit``: it starts full with
    ``max_tokens`` and gets ``tokens_per_fill`` back every ``fill_interval``
    seconds (never above ``max_tokens``); each request takes one."""

    fill_interval: float
    max_tokens: int = 0
    tokens_per_fill: int = 0
    type: Literal["requests"] = "requests"


@attrs.frozen
class Policies:
    """Route policies (``routes[].policies`` and the ``mcp:`` shorthand's)."""

    request_header_modifier: HeaderModifier | None = None
    response_header_modifier: HeaderModifier | None = None
    direct_response: DirectResponse | None = None
    cors: Cors | None = None
    timeout: TimeoutPolicy | None = None
    jwt_auth: JwtAuth | None = None
    authorization: RuleSet | None = None
    mcp_authorization: RuleSet | None = None
    backend_auth: BackendAuth | None = None
    mcp_authentication: McpAuthentication | None = None
    backend_tls: BackendTLS | None = None  # on a route only
    local_rate_limit: tuple[RateLimit, ...] | None = None


@attrs.frozen
class ListenerPolicies:
    """A listener's policies, for all its routes: agentgateway takes only
    gateway-level policies here; the converter refuses route-only keys with
    "only valid on a route"."""

    cors: Cors | None = None
    jwt_auth: JwtAuth | None = None
    authorization: RuleSet | None = None
    local_rate_limit: tuple[RateLimit, ...] | None = None


# ---------------------------------------------------------------- backends


@attrs.frozen
class StdioTarget:
    cmd: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class HttpTarget:
    """``host`` is either a full URL (``http://h:p/path``) or, with ``port``
    and ``path``, a bare host name."""

    host: str
    port: int | None = None
    path: str | None = None


@attrs.frozen
class McpTarget:
    """Exactly one of ``mcp`` (Streamable HTTP), ``sse``, ``stdio``,
    ``websocket``. ``name``: lowercase letters, digits, ``-`` and ``.``."""

    name: str
    mcp: HttpTarget | None = None
    sse: HttpTarget | None = None
    stdio: StdioTarget | None = None
    websocket: HttpTarget | None = None
    policies: BackendPolicies | None = None


@attrs.frozen
class McpRateLimit:
    """agentgw's per-target and per-tool MCP limit (``rateLimits``): a token
    bucket like ``localRateLimit``'s for the calls it matches, one bucket per
    value of the CEL ``key`` (one bucket for all callers without a key)."""

    fill_interval: float
    max_tokens: int = 0
    tokens_per_fill: int = 0
    target: str | None = None
    tool: str | None = None
    key: str | None = None


@attrs.frozen
class McpBackend:
    """``dns_rebinding_protection``: None (not given) lets the gateway decide:
    on for a bind on 127.0.0.1, ::1 or localhost whose route does not require
    a token."""

    targets: tuple[McpTarget, ...]
    stateful_mode: Literal["stateful", "stateless"] = "stateful"
    prefix_mode: Literal["conditional", "always", "never"] | None = None
    failure_mode: Literal["failClosed", "failOpen"] | None = None
    dns_rebinding_protection: bool | None = None
    rate_limits: tuple[McpRateLimit, ...] = ()


@attrs.frozen
class Backend:
    """Exactly one of ``host`` (``"127.0.0.1:8080"``) or ``mcp``."""

    host: str | None = None
    mcp: McpBackend | None = None
    weight: int = 1
    policies: BackendPolicies | None = None


# ---------------------------------------------------------------- routes and binds


@attrs.frozen
class Route:
    name: str | None = None
    hostnames: tuple[str, ...] = ()
    matches: tuple[RouteMatch, ...] = (RouteMatch(),)
    policies: Policies | None = None
    backends: tuple[Backend, ...] = ()


TLSVersion = Literal["TLS_V1_2", "TLS_V1_3"]


@attrs.frozen
class ListenerTLS:
    """A listener's ``tls``: its certificate chain and key (PEM files), and
    with ``root`` the CAs that client certificates must chain to (mTLS: a
    client without a valid certificate is refused)."""

    cert: str
    key: str
    root: str | None = None
    min_tls_version: TLSVersion | None = None
    max_tls_version: TLSVersion | None = None


@attrs.frozen
class Listener:
    """``protocol: HTTPS`` needs ``tls``; a bind's listeners are all HTTP or
    all HTTPS."""

    name: str | None = None
    hostname: str | None = None
    protocol: Literal["HTTP", "HTTPS"] = "HTTP"
    tls: ListenerTLS | None = None
    routes: tuple[Route, ...] = ()
    policies: ListenerPolicies | None = None


@attrs.frozen
class Bind:
    """``address`` is agentgw's own key (agentgateway listens on every
    interface); port 0 picks a free port."""

    listeners: tuple[Listener, ...]
    port: int = 3000
    address: str = "0.0.0.0"


@attrs.frozen
class SimpleMcp:
    """The top-level ``mcp:`` shorthand: one bind on ``port`` serving
    ``/mcp``, ``/sse`` and ``/.well-known/*`` in front of ``targets``."""

    targets: tuple[McpTarget, ...]
    port: int = 3000
    address: str = "0.0.0.0"
    stateful_mode: Literal["stateful", "stateless"] = "stateful"
    prefix_mode: Literal["conditional", "always", "never"] | None = None
    failure_mode: Literal["failClosed", "failOpen"] | None = None
    dns_rebinding_protection: bool | None = None
    policies: Policies | None = None
    rate_limits: tuple[McpRateLimit, ...] = ()


# ---------------------------------------------------------------- global settings


@attrs.frozen
class Session:
    key: str


@attrs.frozen
class McpSettings:
    """``config.mcp``: ``session_ttl`` ends a session idle that long;
    ``stream_idle_timeout`` drops an upstream's SSE stream (a call's answer
    or the GET stream) that says nothing for that long (keep-alive comments
    count). The ``sse_*`` keys shape the resumable SSE streams the gateway
    serves: the ``retry`` delay it asks of clients, how many events and bytes
    each stream keeps for a resume, after how long it hangs up a POST's
    stream to make the client poll (None: only when the upstream did), and
    how long a call whose client left runs on for a client that resumes."""

    session_ttl: float = 1800.0
    stream_idle_timeout: float = 300.0
    sse_retry: float = 1.0
    sse_buffer_events: int = 1000
    sse_buffer_bytes: int = 1 << 20
    sse_poll_after: float | None = None
    sse_resume_window: float = 300.0


@attrs.frozen
class BackendSettings:
    """Upstream client settings (agentgateway's ``config.backend``)."""

    connect_timeout: float = 10.0
    pool_idle_timeout: float = 90.0
    pool_max_size: int | None = None


@attrs.frozen
class HttpLimits:
    """agentgw's own server limits (``config.http``); every one is bounded."""

    max_header_bytes: int = 32768
    max_request_line_bytes: int = 8192
    max_header_line_bytes: int = 8192
    max_headers: int = 100
    allow_underscore_headers: bool = False
    max_body_bytes: int | None = None
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 60.0
    max_connections: int = 10000
    upstream_response_timeout: float = 300.0


@attrs.frozen
class Logging:
    format: Literal["text", "json"] = "text"
    level: str = "info"


Sampling = float
"""A sampling ratio from 0.0 to 1.0; the file may say ``true`` (1.0),
``false`` (0.0), a number, or a string holding one of those."""


@attrs.frozen
class Tracing:
    """``config.tracing``: OpenTelemetry traces exported over OTLP.

    ``random_sampling`` is the share of requests without a ``traceparent``
    that start a trace (default none); ``client_sampling`` the share of
    requests with a sampled ``traceparent`` that are traced (default all).
    """

    otlp_endpoint: str
    headers: dict[str, str] = attrs.field(factory=dict)
    otlp_protocol: Literal["grpc", "http"] = "grpc"
    random_sampling: Sampling | None = None
    client_sampling: Sampling | None = None
    path: str | None = None


@attrs.frozen
class FrontendTracing:
    """``frontendPolicies.tracing``: the same, with the collector named as a
    backend (``host: collector:4317``)."""

    host: str
    protocol: Literal["grpc", "http"] = "grpc"
    random_sampling: Sampling | None = None
    client_sampling: Sampling | None = None
    path: str = "/v1/traces"


@attrs.frozen
class Settings:
    """The top-level ``config:`` block. ``admin_addr``, ``stats_addr`` and
    ``readiness_addr`` are ``host:port`` or ``off``; ``None`` means the
    default (see ``agentgw.observability.addresses``)."""

    admin_addr: str | None = None
    stats_addr: str | None = None
    readiness_addr: str | None = None
    sensitive_headers: tuple[str, ...] = ()
    tracing: Tracing | None = None
    session: Session | None = None
    mcp: McpSettings = McpSettings()
    backend: BackendSettings = BackendSettings()
    connection_termination_deadline: float = 5.0
    http: HttpLimits = HttpLimits()
    logging: Logging = Logging()


@attrs.frozen
class FrontendTLS:
    """``frontendPolicies.tls``: how long a client may take to finish the
    TLS handshake on an HTTPS listener (seconds; agentgateway's default)."""

    handshake_timeout: float = 15.0


@attrs.frozen
class FrontendPolicies:
    """``frontendPolicies``: settings for every incoming connection."""

    tls: FrontendTLS = FrontendTLS()
    tracing: FrontendTracing | None = None


@attrs.frozen
class Config:
    """A whole configuration file."""

    binds: tuple[Bind, ...] = ()
    mcp: SimpleMcp | None = None
    config: Settings = Settings()
    frontend_policies: FrontendPolicies = FrontendPolicies()
