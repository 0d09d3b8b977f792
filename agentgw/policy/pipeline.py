"""The policy pipeline: straight-line, pure steps over a request view.

Each step returns ``Continue`` or ``Respond``; the first ``Respond`` wins and
names its step in the access log. ``run_request`` lists every step in order:
CORS preflight, JWT authentication, authorization, local rate limits, direct
response.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from agentgw.config.model import (
    Cors,
    DirectResponse,
    HeaderModifier,
    ListenerPolicies,
    Policies,
    TimeoutPolicy,
)
from agentgw.policy import authz, jwt, ratelimit
from agentgw.wire.http import Headers, header_value
from agentgw.wire.tls import PeerCertificate


@attrs.frozen
class Identity:
    """Who a validated token says the caller is. ``token`` is kept only to
    pass it on (``backendAuth: passthrough``); it is never logged."""

    claims: Mapping[str, Any]
    sub: str | None
    token: str = attrs.field(repr=False)


@attrs.frozen
class Continue:
    identity: Identity | None = None


CONTINUE = Continue()


@attrs.frozen
class Respond:
    status: int
    body: bytes
    step: str
    headers: Headers = attrs.field(factory=list)
    reason: str | None = None  # for the access log
    refresh_issuer: str | None = None  # an unknown key id: keys may have rotated
    content_type: bytes = b"text/plain; charset=utf-8"
    bearer_error: str | None = None  # RFC 6750 error code when a token was refused


@attrs.frozen
class RequestView:
    """``scheme`` is how the client reached the gateway (``https`` over an
    HTTPS listener); ``peer`` its verified client certificate (mTLS)."""

    method: str
    path: str
    headers: Headers
    host: str = ""
    source: tuple[str, int] = ("", 0)
    scheme: str = "http"
    peer: PeerCertificate | None = None


@attrs.frozen
class JwtStep:
    verifier: jwt.Verifier
    mode: jwt.Mode


@attrs.frozen
class McpAuthStep:
    """``mcpAuthentication``, compiled: the token check plus what the OAuth
    metadata documents say."""

    jwt: JwtStep
    issuer: str
    audiences: tuple[str, ...]
    provider: str | None
    resource_metadata: Mapping[str, Any]


PROTECTED_RESOURCE = "/.well-known/oauth-protected-resource"
AUTHORIZATION_SERVER = "/.well-known/oauth-authorization-server"
MCP_UNAUTHORIZED = b'{"error":"unauthorized","error_description":"JWT token required"}'
JSON = b"application/json"
METADATA_CORS: Headers = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
    (b"access-control-allow-headers", b"content-type"),
]


def is_oauth_metadata(path: str) -> bool:
    return any(
        path == prefix or path.startswith(prefix + "/")
        for prefix in (PROTECTED_RESOURCE, AUTHORIZATION_SERVER)
    )


def external_base(req: RequestView, resource: object = None) -> str:
    """``scheme://host`` as the client sees the gateway: the configured
    ``resource``'s origin, else X-Forwarded-Proto/-Host, else the scheme it
    used and Host."""
    if isinstance(resource, str) and "://" in resource:
        scheme, rest = resource.split("://", 1)
        return f"{scheme}://{rest.split('/', 1)[0]}"
    proto = header_value(req.headers, b"x-forwarded-proto")
    host = header_value(req.headers, b"x-forwarded-host") or header_value(req.headers, b"host")
    scheme = proto.decode("latin-1").split(",")[0].strip() if proto else req.scheme
    return f"{scheme}://{(host or b'localhost').decode('latin-1').split(',')[0].strip()}"


def _snake(key: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in key).lstrip("_")


def protected_resource_document(step: McpAuthStep, req: RequestView) -> dict[str, Any]:
    """RFC 9728 metadata for the resource at the path after the prefix."""
    base = external_base(req)
    resource = base + req.path[len(PROTECTED_RESOURCE) :]
    # With a provider adapter the gateway serves the authorization server
    # metadata itself (at the resource's own path), so it is named as the AS.
    server = resource if step.provider is not None else step.issuer
    doc: dict[str, Any] = {
        "resource": resource,
        "authorization_servers": [server],
        "mcp_protocol_version": "2025-06-18",
        "resource_type": "mcp-server",
    }
    for key, value in step.resource_metadata.items():
        doc[_snake(key)] = value
    return doc


def bearer_challenge(error: str | None, *params: str) -> bytes:
    """A ``WWW-Authenticate: Bearer`` value (RFC 6750 section 3): ``error``
    only when a token was presented, then any other ``name="value"``."""
    items = ([f'error="{error}"'] if error else []) + list(params)
    return ("Bearer " + ", ".join(items) if items else "Bearer").encode("latin-1")


def _bearer_error(failure: jwt.Failure) -> str | None:
    if failure.is_missing_token:
        return None
    if failure.reason == jwt.MULTIPLE_HEADERS:
        return "invalid_request"
    return "invalid_token"


def mcp_unauthorized(step: McpAuthStep, req: RequestView, failure: Respond) -> Respond:
    base = external_base(req, step.resource_metadata.get("resource"))
    metadata = f'resource_metadata="{base}{PROTECTED_RESOURCE}{req.path}"'
    challenge = bearer_challenge(failure.bearer_error, metadata)
    return Respond(
        401,
        MCP_UNAUTHORIZED,
        "mcpAuthentication",
        [(b"www-authenticate", challenge)],
        reason=failure.reason,
        refresh_issuer=failure.refresh_issuer,
        content_type=JSON,
        bearer_error=failure.bearer_error,
    )


@attrs.frozen
class RoutePolicies:
    """Policies in force on one route: the route's own, else the listener's."""

    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    direct_response: DirectResponse | None = None
    cors: Cors | None = None
    timeout: TimeoutPolicy | None = None
    jwt: JwtStep | None = None
    mcp_auth: McpAuthStep | None = None
    authorization: authz.RuleSet | None = None
    mcp_authorization: authz.RuleSet | None = None
    passthrough: bool = False
    rate_limits: tuple[ratelimit.RateLimiter, ...] = ()  # the listener's, then the route's

    @classmethod
    def from_config(cls, p: Policies) -> RoutePolicies:
        """The plain policies of merged config (``merge_config``); the
        security steps are compiled by the gateway and added after."""
        return cls(
            request_headers=p.request_header_modifier,
            response_headers=p.response_header_modifier,
            direct_response=p.direct_response,
            cors=p.cors,
            timeout=p.timeout,
            passthrough=p.backend_auth is not None and p.backend_auth.passthrough is not None,
        )


def run_request(policies: RoutePolicies, req: RequestView) -> Continue | Respond:
    # 1. CORS preflight: browsers send it without credentials, so it is
    #    answered before any authentication step could refuse it.
    if policies.cors is not None:
        result = cors_preflight(policies.cors, req)
        if isinstance(result, Respond):
            return result
    # 2. The OAuth metadata an MCP client needs before it has a token is
    #    public: the gateway serves it (after this function) to anyone.
    if policies.mcp_auth is not None and is_oauth_metadata(req.path):
        return CONTINUE
    # 3. JWT authentication: who is calling, before anything decides on it.
    identity = None
    if policies.jwt is not None:
        found = authenticate(policies.jwt, req)
        if isinstance(found, Respond):
            return found
        identity = found
    # 4. MCP authentication (RFC 9728): a failure points the client to the
    #    protected-resource metadata. A token already taken by jwtAuth cannot
    #    be checked against the MCP audience, so that is a failure too.
    if policies.mcp_auth is not None:
        step = policies.mcp_auth
        if identity is not None:
            taken = Respond(
                401, b"", "", reason="token taken by jwtAuth", bearer_error="invalid_token"
            )
            return mcp_unauthorized(step, req, taken)
        found = authenticate(step.jwt, req)
        if isinstance(found, Respond):
            return mcp_unauthorized(step, req, found)
        identity = found
    # 5. Authorization (CEL) on the request and the claims.
    if policies.authorization is not None:
        variables = request_variables(req, identity)
        if isinstance(policies.authorization.evaluate(variables), authz.Deny):
            return Respond(403, b"authorization failed", "authorization", reason="denied by rule")
    # 6. Local rate limits, after authentication and authorization as in
    #    agentgateway: a request refused there spends no token of the
    #    route's budget. Before the direct response and the backend, so a
    #    limited request never reaches the upstream.
    if policies.rate_limits:
        limited = ratelimit.check_all(policies.rate_limits)
        if isinstance(limited, ratelimit.Limited):
            return Respond(
                429, b"rate limited\n", "localRateLimit", limited.headers(), reason="rate limited"
            )
    # 7. Direct response: answers in place of the backend, after every check.
    if policies.direct_response is not None:
        d = policies.direct_response
        return Respond(d.status, d.body.encode(), "directResponse")
    return Continue(identity) if identity is not None else CONTINUE


def authenticate(step: JwtStep, req: RequestView) -> Identity | Respond | None:
    values = [v for n, v in req.headers if n == b"authorization"]
    result = step.verifier.verify(values)
    decision = jwt.decide(step.mode, result)
    if isinstance(decision, jwt.Deny):
        # A Deny always comes from a Failure.
        assert isinstance(result, jwt.Failure)
        body = f"authentication failure: {decision.reason}".encode()
        error = _bearer_error(result)
        # RFC 9110 section 11.6.1: every 401 carries a challenge.
        return Respond(
            401,
            body,
            "jwtAuth",
            [(b"www-authenticate", bearer_challenge(error))],
            reason=decision.reason,
            refresh_issuer=result.refresh_issuer,
            bearer_error=error,
        )
    if decision.claims is None:
        return None
    token = values[0].decode("latin-1").split(None, 1)[-1].strip()
    return Identity(decision.claims.payload, decision.claims.sub, token)


def request_variables(req: RequestView, identity: Identity | None) -> dict[str, object]:
    claims = identity.claims if identity is not None else None
    return authz.http_variables(
        req.method, req.path, req.host, req.headers, req.source[0], req.source[1], claims, req.peer
    )


def upstream_credentials(
    policies: RoutePolicies, identity: Identity | None, headers: Headers
) -> Headers:
    """Once ``jwtAuth`` validated a token, the upstream does not get it,
    unless ``backendAuth: passthrough`` puts it back."""
    if identity is None:
        return headers
    out = [(n, v) for n, v in headers if n != b"authorization"]
    if policies.passthrough:
        out.append((b"authorization", b"Bearer " + identity.token.encode("latin-1")))
    return out


def merge_config(*layers: ListenerPolicies | Policies | None) -> Policies:
    """Later layers (more specific) override earlier ones, key by key."""
    out = Policies()
    for layer in layers:
        if layer is None:
            continue
        changes = {
            a.name: getattr(layer, a.name)
            for a in attrs.fields(type(layer))
            if getattr(layer, a.name) is not None
        }
        out = attrs.evolve(out, **changes)
    return out


def _origin_allowed(cors: Cors, origin: bytes) -> bool:
    text = origin.decode("latin-1")
    for allowed in cors.allow_origins:
        if allowed == "*" or allowed == text:
            return True
        if allowed.startswith("*.") and text.split("://", 1)[-1].endswith(allowed[1:]):
            return True
    return False


def _allow_origin_headers(cors: Cors, origin: bytes) -> Headers:
    wildcard = "*" in cors.allow_origins and not cors.allow_credentials
    out: Headers = [(b"access-control-allow-origin", b"*" if wildcard else origin)]
    if cors.allow_credentials:
        out.append((b"access-control-allow-credentials", b"true"))
    if not wildcard:
        out.append((b"vary", b"origin"))
    return out


def cors_preflight(cors: Cors, req: RequestView) -> Continue | Respond:
    if req.method != "OPTIONS":
        return CONTINUE
    origin = header_value(req.headers, b"origin")
    if origin is None or header_value(req.headers, b"access-control-request-method") is None:
        return CONTINUE
    if not _origin_allowed(cors, origin):
        return Respond(200, b"", "cors")
    headers = _allow_origin_headers(cors, origin)
    if cors.allow_methods:
        headers.append((b"access-control-allow-methods", ", ".join(cors.allow_methods).encode()))
    if cors.allow_headers:
        headers.append((b"access-control-allow-headers", ", ".join(cors.allow_headers).encode()))
    if cors.max_age is not None:
        headers.append((b"access-control-max-age", str(int(cors.max_age)).encode()))
    return Respond(200, b"", "cors", headers)


def modify_headers(mod: HeaderModifier | None, headers: Headers) -> Headers:
    if mod is None:
        return headers
    drop = {n.lower().encode() for n in (*mod.remove, *mod.set)}
    out = [(n, v) for n, v in headers if n not in drop]
    out.extend((n.lower().encode(), v.encode()) for n, v in mod.set.items())
    out.extend((n.lower().encode(), v.encode()) for n, v in mod.add.items())
    return out


def response_headers(policies: RoutePolicies, req: RequestView, headers: Headers) -> Headers:
    """Headers of any response on this route, upstream or direct."""
    headers = modify_headers(policies.response_headers, headers)
    cors = policies.cors
    if cors is not None:
        origin = header_value(req.headers, b"origin")
        if origin is not None and _origin_allowed(cors, origin):
            headers = [*headers, *_allow_origin_headers(cors, origin)]
            if cors.expose_headers:
                exposed = ", ".join(cors.expose_headers).encode()
                headers.append((b"access-control-expose-headers", exposed))
    return headers
