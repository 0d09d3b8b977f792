"""The policy pipeline: straight-line, pure steps over a request view.

Each step returns ``Continue`` or ``Respond``; the first ``Respond`` wins and
names its step in the access log. ``run_request`` lists every step in order.
Later issues insert authentication and authorization between CORS and the
direct response.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from agentgw.config.model import Cors, DirectResponse, HeaderModifier, Policies, TimeoutPolicy
from agentgw.wire.http import Headers, header_value


@attrs.frozen
class Continue:
    pass


CONTINUE = Continue()


@attrs.frozen
class Respond:
    status: int
    body: bytes
    step: str
    headers: Headers = attrs.field(factory=list)


@attrs.frozen
class RequestView:
    method: str
    path: str
    headers: Headers


@attrs.frozen
class RoutePolicies:
    """Policies in force on one route: the route's own, else the listener's."""

    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    direct_response: DirectResponse | None = None
    cors: Cors | None = None
    timeout: TimeoutPolicy | None = None

    @classmethod
    def merge(cls, *layers: Policies | None) -> RoutePolicies:
        """Later layers (more specific) override earlier ones per policy."""
        out = cls()
        for p in layers:
            if p is None:
                continue
            out = cls(
                request_headers=p.request_header_modifier or out.request_headers,
                response_headers=p.response_header_modifier or out.response_headers,
                direct_response=p.direct_response or out.direct_response,
                cors=p.cors or out.cors,
                timeout=p.timeout or out.timeout,
            )
        return out


def run_request(policies: RoutePolicies, req: RequestView) -> Continue | Respond:
    # 1. CORS preflight: browsers send it without credentials, so it is
    #    answered before any authentication step could refuse it.
    if policies.cors is not None:
        result = cors_preflight(policies.cors, req)
        if isinstance(result, Respond):
            return result
    # 2. Direct response: answers in place of the backend, after every check.
    if policies.direct_response is not None:
        d = policies.direct_response
        return Respond(d.status, d.body.encode(), "directResponse")
    return CONTINUE


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


def forwarded_headers(
    headers: Sequence[tuple[bytes, bytes]], client_ip: str, proto: bytes = b"http"
) -> Headers:
    """Append the client to ``X-Forwarded-For`` and set ``X-Forwarded-Proto``."""
    out: Headers = []
    prior: bytes | None = None
    for name, value in headers:
        if name == b"x-forwarded-for":
            prior = value if prior is None else prior + b", " + value
        elif name != b"x-forwarded-proto":
            out.append((name, value))
    ip = client_ip.encode()
    out.append((b"x-forwarded-for", prior + b", " + ip if prior else ip))
    out.append((b"x-forwarded-proto", proto))
    return out
