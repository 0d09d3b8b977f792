"""Structure a plain dict (parsed YAML or JSON) into ``Config``.

How this works:

* One ``cattrs.Converter`` with ``forbid_extra_keys`` and
  ``detailed_validation``. Every attrs class of ``model.py`` gets a hook from
  ``_class_hook``: it checks that the value is a mapping, runs the class's
  whole-object checks (``CHECKS``: "exactly one of", duplicate target names,
  port clashes) on the raw dict, then runs cattrs' generated function. Field
  names are renamed to camelCase, and fields listed in ``FIELDS`` (durations,
  sizes, ports, regexes...) are parsed by their own functions.
* Strings, ints, bools, lists, string maps and ``Literal`` get strict hooks of
  our own: cattrs' defaults would take ``"1"`` as an int or iterate a string
  as a list.
* Every problem is an ``Invalid`` exception. cattrs gathers the failures of
  an object into exception groups and notes which attribute or index each
  came from; ``_collect`` walks that tree into ``(path, problem)`` pairs and
  ``structure_config`` sorts them into document order, using the key order of
  the input mappings, before raising one ``ConfigError`` with all of them.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import AttributeValidationNote, ForbiddenExtraKeysError, IterableValidationNote
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from agentgw.config import model as m
from agentgw.errors import ConfigError

Path = tuple[str | int, ...]
Hook = Callable[[Any, Any], Any]

# ---------------------------------------------------------------- keys agentgw refuses by name

# Policies that agentgw will implement next; drop a name here when it lands.
LATER_POLICIES: frozenset[str] = frozenset()


# Keys agentgateway knows that agentgw does not implement: "not supported by
# agentgw" rather than "unknown key".
def _keys(names: str) -> frozenset[str]:
    return frozenset(names.split())


UNSUPPORTED: dict[type, frozenset[str]] = {
    m.Config: _keys(
        "policies workloads services backends routeGroups gateways routes tcpRoutes llm ui"
    ),
    m.FrontendPolicies: _keys(
        "http tcp networkAuthorization networkExtAuthz proxy proxyProtocol connect accessLog"
        " logging"
    ),
    m.FrontendTLS: _keys("alpn minVersion maxVersion cipherSuites keyExchangeGroups"),
    m.Settings: _keys(
        "enableIpv6 dns localXdsPath modelCatalog database storage caAddress caAuthToken"
        " xdsAddress xdsAuthToken spiffe namespace gateway trustDomain additionalTrustDomains"
        " skipValidateTrustDomain serviceAccount clusterId network standardAttributes histograms"
        " customFunctions connectionMinTerminationDeadline workerThreads metrics hbone"
    ),
    m.Bind: _keys("tunnelProtocol mode"),
    m.Listener: _keys("namespace tcpRoutes"),
    m.ListenerPolicies: _keys("oidc extAuthz extProc transformations basicAuth apiKey"),
    m.ListenerTLS: _keys("mode spiffe cipherSuites keyExchangeGroups"),
    m.BackendTLS: _keys("keyExchangeGroups spiffe"),
    m.Route: _keys("namespace ruleName"),
    m.Policies: LATER_POLICIES
    | _keys(
        "requestRedirect urlRewrite requestMirror mcpGuardrails a2a ai backendTunnel"
        " remoteRateLimit oidc basicAuth apiKey extAuthz extProc transformations"
        " csrf buffer retry delay"
    ),
    m.Backend: _keys("service backend internal dynamic ai aws routeGroup"),
    # Backend and MCP target policies (a target takes a subset of these).
    m.BackendPolicies: _keys(
        "requestHeaderModifier responseHeaderModifier requestRedirect backendTunnel"
        " transformations http tcp health extAuthz authorization mcpAuthorization mcpGuardrails"
        " a2a ai inferenceRouting sessionAffinity"
    ),
    m.SimpleMcp: _keys("gateways"),
    m.McpTarget: _keys("openapi"),
    m.HttpTarget: _keys("backend"),
    m.StdioTarget: _keys("clear_env"),
    m.DirectResponse: _keys("bodyExpression headers"),
    m.BackendSettings: _keys("keepalives"),
    m.Logging: _keys("filter fields database"),
    m.BackendAuth: _keys("key credentials gcp aws azure jwtSign oauthTokenExchange crossAppAccess"),
    m.Passthrough: _keys("location"),
    m.JwtAuth: _keys("location jwtValidationOptions"),
    m.JwtProvider: _keys("jwtValidationOptions"),
    m.McpProvider: _keys("okta descope authentik entra"),
    m.McpAuthentication: _keys("authorizationLocation jwtValidationOptions clientId clientSecret"),
    m.Tracing: _keys("fields"),
    m.FrontendTracing: _keys("policies attributes resources remove filter backend service"),
}

# Route policies agentgateway refuses on a listener, which takes only
# gateway-level policies (authentication, authorization, CORS...).
ROUTE_ONLY: dict[type, frozenset[str]] = {
    m.ListenerPolicies: _keys(
        "requestHeaderModifier responseHeaderModifier requestRedirect urlRewrite requestMirror"
        " directResponse mcpAuthorization mcpGuardrails mcpAuthentication a2a ai backendTLS"
        " backendTunnel backendAuth remoteRateLimit csrf buffer timeout retry"
        " delay"
    ),
}

# Other forms of an object, written as one key, that agentgw does not
# implement: the key is refused by name and the rest of the object is not
# checked (the form has other required keys).
UNSUPPORTED_FORMS: dict[type, frozenset[str]] = {
    m.DirectResponse: _keys("conditional"),
}

# agentgateway's plain-string forms of an object that agentgw does not implement.
UNSUPPORTED_STRINGS: dict[type, frozenset[str]] = {
    m.BackendAuth: _keys("copilot"),
}


def _refusal(cls: type, key: object) -> str:
    if key in UNSUPPORTED.get(cls, ()) or key in UNSUPPORTED_FORMS.get(cls, ()):
        return "not supported by agentgw"
    if key in ROUTE_ONLY.get(cls, ()):
        return "only valid on a route"
    return "unknown key"


class Invalid(ValueError):
    """One problem, at ``at`` relative to the value being structured."""

    def __init__(self, problem: str, at: Path = ()) -> None:
        super().__init__(problem)
        self.problem = problem
        self.at = at


def show(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, str) and len(v) > 40:
        return repr(v[:40] + "...")
    return repr(v)


# Where agentgateway's key is not plain camelCase of the field name.
_KEYS = {
    "backend_tls": "backendTLS",
    "min_tls_version": "minTLSVersion",
    "max_tls_version": "maxTLSVersion",
}

# Other spellings agentgateway accepts for a key: {class: {alias: key}}.
ALIASES: dict[type, dict[str, str]] = {
    m.ListenerTLS: {"minTlsVersion": "minTLSVersion", "maxTlsVersion": "maxTLSVersion"},
}


def camel(name: str) -> str:
    if name in _KEYS:
        return _KEYS[name]
    first, *rest = name.split("_")
    return first + "".join(w.title() for w in rest)


def render(path: Path) -> str:
    if not path:
        return "config"
    text = str(path[0])
    for part in path[1:]:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


# ---------------------------------------------------------------- value parsers


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_str(v: object) -> str:
    if isinstance(v, str):
        return v
    raise Invalid(f"expected a string, got {show(v)}")


def parse_int(v: object) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    raise Invalid(f"expected an integer, got {show(v)}")


def parse_bool(v: object) -> bool:
    if isinstance(v, bool):
        return v
    raise Invalid(f"expected true or false, got {show(v)}")


def parse_float(v: object) -> float:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    raise Invalid(f"expected a number, got {show(v)}")


def _int_between(lo: int, hi: int | None, what: str) -> Callable[[object], int]:
    def parse(v: object) -> int:
        n = parse_int(v)
        if n < lo or (hi is not None and n > hi):
            raise Invalid(f"expected {what}, got {n}")
        return n

    return parse


parse_port = _int_between(0, 65535, "a port 0..65535")
_upstream_port = _int_between(1, 65535, "a port 1..65535")
_weight = _int_between(0, None, "a weight >= 0")
_status = _int_between(100, 599, "an HTTP status 100..599")
_positive = _int_between(1, None, "an integer >= 1")
_non_negative = _int_between(0, None, "an integer >= 0")

_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0}
_DURATION_UNIT |= {"m": 60.0, "h": 3600.0}


def parse_duration(v: object) -> float:
    """Go-style ``"1m30s"``, ``"100ms"``, ``"1.5h"`` (as agentgateway), or a
    plain number of seconds, to float seconds."""
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0:
        return float(v)
    if isinstance(v, str):
        text = v.strip()
        if text == "0":
            return 0.0
        pos, total = 0, 0.0
        while pos < len(text) and (part := _DURATION_PART.match(text, pos)):
            total += float(part[1]) * _DURATION_UNIT[part[2]]
            pos = part.end()
        if text and pos == len(text):
            return total
    raise Invalid(f"expected a duration like 10s or 1m30s, got {show(v)}")


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)")
_SIZE_UNIT = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def parse_size(v: object) -> int:
    """``65536``, ``"512"``, ``"64KiB"``, ``"10MB"`` to bytes."""
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    if isinstance(v, str) and (found := _SIZE.fullmatch(v.strip())):
        unit = _SIZE_UNIT.get(found[2].lower())
        if unit is not None:
            return int(float(found[1]) * unit)
    raise Invalid(f"expected a size like 65536 or 64KiB, got {show(v)}")


def _positive_size(v: object) -> int:
    n = parse_size(v)
    if n < 1:
        raise Invalid(f"expected a size of at least 1 byte, got {show(v)}")
    return n


def _regex(v: object) -> str:
    text = parse_str(v)
    try:
        re.compile(text)
    except re.error as exc:
        raise Invalid(f"invalid regex: {exc}")
    return text


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _method(v: object) -> str:
    text = parse_str(v)
    if not _TOKEN.fullmatch(text):
        raise Invalid(f"expected an HTTP method like GET, got {show(v)}")
    return text


def parse_str_map(v: object) -> dict[str, str]:
    if not isinstance(v, dict):
        raise Invalid(f"expected an object, got {show(v)}")
    errors = [
        Invalid(f"expected a string, got {show(x)}", at=(str(k),))
        for k, x in v.items()
        if not isinstance(x, str)
    ]
    errors += [Invalid("expected a string key", at=(str(k),)) for k in v if not isinstance(k, str)]
    if errors:
        raise ExceptionGroup("While structuring a string map", errors)
    return dict(v)


_FIELD_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")


def _header_name(v: object) -> str:
    text = parse_str(v)
    if not _TOKEN.fullmatch(text):
        raise Invalid(f"expected a header name, got {show(v)}")
    return text


def _header_map(v: object) -> dict[str, str]:
    if not isinstance(v, dict):
        raise Invalid(f"expected an object, got {show(v)}")
    errors = []
    for name, value in v.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            errors.append(Invalid(f"expected a header name, got {show(name)}", at=(str(name),)))
        elif not isinstance(value, str):
            errors.append(Invalid(f"expected a string, got {show(value)}", at=(name,)))
        elif not _FIELD_VALUE.fullmatch(value):
            problem = f"expected a header value without control characters, got {show(value)}"
            errors.append(Invalid(problem, at=(name,)))
    if errors:
        raise ExceptionGroup("While structuring headers", errors)
    return dict(v)


def _header_names(v: object) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise Invalid(f"expected a list, got {show(v)}")
    errors = [
        Invalid(f"expected a header name, got {show(name)}", at=(i,))
        for i, name in enumerate(v)
        if not isinstance(name, str) or not _TOKEN.fullmatch(name)
    ]
    if errors:
        raise ExceptionGroup("While structuring header names", errors)
    return tuple(v)


# agentgateway's rule for MCP target names (a Gateway API SectionName).
_TARGET_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _target_name(v: object) -> str:
    text = parse_str(v)
    if len(text) > 253 or not _TARGET_NAME.fullmatch(text):
        raise Invalid(f"expected a name of lowercase letters, digits, '-' and '.', got {show(v)}")
    return text


def _protocol(v: object) -> str:
    text = parse_str(v)
    if text in ("TLS", "TCP", "HBONE"):
        raise Invalid(f"protocol {text} is not supported by agentgw")
    if text not in ("HTTP", "HTTPS"):
        raise Invalid(f"expected HTTP or HTTPS, got {show(v)}")
    return text


_TLS_VERSIONS = ("TLS_V1_2", "TLS_V1_3")


def _tls_version(v: object) -> str:
    text = parse_str(v)
    if text in ("TLS_V1_0", "TLS_V1_1"):
        raise Invalid(f"{text} is not supported (only TLS_V1_2 and TLS_V1_3)")
    if text not in _TLS_VERSIONS:
        raise Invalid(f"expected TLS_V1_2 or TLS_V1_3, got {show(v)}")
    return text


def _alpn(v: object) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise Invalid(f"expected a list, got {show(v)}")
    errors = [
        Invalid(f"agentgw speaks HTTP/1.1 only: expected http/1.1, got {show(p)}", at=(i,))
        for i, p in enumerate(v)
        if p != "http/1.1"
    ]
    if errors:
        raise ExceptionGroup("While structuring alpn", errors)
    return tuple(v)


def _names(v: object) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise Invalid(f"expected a list, got {show(v)}")
    if not v:  # no name would match, as agentgateway: say so now
        raise Invalid("expected at least one name")
    errors = [
        Invalid(f"expected a name, got {show(n)}", at=(i,))
        for i, n in enumerate(v)
        if not isinstance(n, str) or not n.strip()
    ]
    if errors:
        raise ExceptionGroup("While structuring names", errors)
    return tuple(v)


def _non_empty(v: object) -> str:
    text = parse_str(v)
    if not text.strip():
        raise Invalid("expected a non-empty string")
    return text


def _positive_duration(v: object) -> float:
    seconds = parse_duration(v)
    if seconds <= 0:
        raise Invalid(f"expected a duration above zero, got {show(v)}")
    return seconds


_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]/\s]+):([0-9]{1,5})")


def _host_port(v: object) -> str:
    text = parse_str(v)
    found = _HOST_PORT.fullmatch(text)
    if not found or not 1 <= int(found[2]) <= 65535:
        raise Invalid(f"expected host:port with a port 1..65535, got {show(v)}")
    return text


def session_key(v: object) -> str:
    """A session key as the config holds it; ``Invalid`` never shows the key."""
    return _session_key(v)


def _session_key(v: object) -> str:
    # Never echo the key itself.
    text = parse_str(v).strip()
    if re.fullmatch(r"(?:[0-9A-Fa-f]{2})+", text):
        key, kind = bytes.fromhex(text), "hex"
    else:
        try:
            key, kind = base64.b64decode(text, validate=True), "base64"
        except binascii.Error:
            raise Invalid("expected 32 bytes encoded as 64 hex digits or base64, got neither")
    if len(key) != 32:
        raise Invalid(f"expected 32 bytes, got {len(key)} bytes (decoded as {kind})")
    return text


_LEVELS = ("error", "warn", "info", "debug")


def _level(v: object) -> str:
    text = parse_str(v)
    if text.lower() not in _LEVELS:
        raise Invalid(f"expected one of {', '.join(_LEVELS)}, got {show(v)}")
    return text


def _jwks(v: object) -> m.Jwks:
    if isinstance(v, str):
        return m.Jwks(inline=v)
    if isinstance(v, dict):
        given = [k for k in ("file", "url") if k in v]
        extra = sorted(set(v) - {"file", "url"})
        if extra:
            raise Invalid("unknown key", at=(extra[0],))
        if len(given) == 1:
            value = v[given[0]]
            if not isinstance(value, str) or not value:
                raise Invalid(f"expected a string, got {show(value)}", at=(given[0],))
            if given[0] == "url" and (problem := _url_problem(value, ("http", "https"))):
                raise Invalid(problem.split(", or a host")[0], at=("url",))
            return m.Jwks(**{given[0]: value})
    raise Invalid("expected the JWKS as a JSON string, {file: path} or {url: ...}")


def _json_object(v: object) -> dict[str, Any]:
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise Invalid(f"expected an object, got {show(v)}")
    return dict(v)


_RULE_KINDS = ("allow", "deny", "require")


def _rules(v: object) -> tuple[m.Rule, ...]:
    if not isinstance(v, list):
        raise Invalid(f"expected a list, got {show(v)}")
    out = []
    for i, item in enumerate(v):
        if isinstance(item, str) and item.strip():
            out.append(m.Rule("allow", item))
            continue
        if isinstance(item, dict) and len(item) == 1:
            kind, expr = next(iter(item.items()))
            if kind in _RULE_KINDS and isinstance(expr, str) and expr.strip():
                out.append(m.Rule(kind, expr))
                continue
        raise Invalid("expected a CEL string or one of allow, deny, require", at=(i,))
    return tuple(out)


def _listen_address(v: object) -> str:
    text = parse_str(v)
    if text == "off":
        return text
    found = _HOST_PORT.fullmatch(text)
    if not found or int(found[2]) > 65535:
        raise Invalid(f"expected host:port (port 0..65535) or off, got {show(v)}")
    return text


def _rate_limit_type(v: object) -> str:
    if v == "tokens":
        raise Invalid("type tokens (LLM tokens) is not supported by agentgw")
    if v != "requests":
        raise Invalid(f"expected requests, got {show(v)}")
    return "requests"


def _local_rate_limit(v: object) -> tuple[m.RateLimit, ...]:
    if isinstance(v, dict) and "conditional" in v:
        raise Invalid("not supported by agentgw", at=("conditional",))
    limits: tuple[m.RateLimit, ...] = converter.structure(v, tuple[m.RateLimit, ...])
    return limits


_SAMPLING_HELP = "expected true, false or a number from 0.0 to 1.0"


def _sampling(v: object) -> float:
    """agentgateway takes a CEL expression here; agentgw takes the constant
    ones: a bool, a ratio, or a string holding either."""
    if isinstance(v, str):
        text = v.strip()
        if text in ("true", "false"):
            return 1.0 if text == "true" else 0.0
        try:
            v = float(text)
        except ValueError:
            raise Invalid(f"{_SAMPLING_HELP} (CEL expressions are not supported by agentgw)")
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, int | float) and 0.0 <= v <= 1.0:
        return float(v)
    raise Invalid(f"{_SAMPLING_HELP}, got {show(v)}")


def _otlp_endpoint(v: object) -> str:
    text = parse_str(v)
    if problem := _url_problem(text, ("http", "https")):
        raise Invalid(problem.split(", or a host")[0])
    return text


def _otlp_path(v: object) -> str:
    text = parse_str(v)
    if not text.startswith("/"):
        raise Invalid(f"expected a path starting with /, got {show(v)}")
    return text


def _durations(cls: type, *names: str) -> dict[tuple[type, str], Callable[[Any], Any]]:
    return {(cls, name): parse_duration for name in names}


# Fields parsed by a function of their own; the rest go by their type.
FIELDS: dict[tuple[type, str], Callable[[Any], Any]] = {
    (m.Bind, "port"): parse_port,
    (m.SimpleMcp, "port"): parse_port,
    (m.HttpTarget, "port"): _upstream_port,
    (m.Backend, "host"): _host_port,
    (m.Backend, "weight"): _weight,
    (m.PathMatch, "regex"): _regex,
    (m.ValueMatch, "regex"): _regex,
    (m.RouteMatch, "method"): _method,
    (m.HeaderMatch, "name"): _header_name,
    (m.HeaderModifier, "add"): _header_map,
    (m.HeaderModifier, "set"): _header_map,
    (m.HeaderModifier, "remove"): _header_names,
    (m.McpTarget, "name"): _target_name,
    (m.Listener, "protocol"): _protocol,
    (m.DirectResponse, "status"): _status,
    (m.Session, "key"): _session_key,
    (m.Logging, "level"): _level,
    (m.JwtAuth, "jwks"): _jwks,
    (m.JwtProvider, "jwks"): _jwks,
    (m.RuleSet, "rules"): _rules,
    (m.McpAuthentication, "jwks"): _jwks,
    (m.McpAuthentication, "resource_metadata"): _json_object,
    (m.BackendSettings, "pool_max_size"): _non_negative,
    (m.BackendTLS, "alpn"): _alpn,
    (m.BackendTLS, "subject_alt_names"): _names,
    (m.BackendTLS, "hostname"): _non_empty,
    (m.BackendTLS, "root"): _non_empty,
    (m.BackendTLS, "cert"): _non_empty,
    (m.BackendTLS, "key"): _non_empty,
    (m.ListenerTLS, "cert"): _non_empty,
    (m.ListenerTLS, "key"): _non_empty,
    (m.ListenerTLS, "root"): _non_empty,
    (m.ListenerTLS, "min_tls_version"): _tls_version,
    (m.ListenerTLS, "max_tls_version"): _tls_version,
    (m.FrontendTLS, "handshake_timeout"): _positive_duration,
    (m.HttpLimits, "max_connections"): _positive,
    (m.HttpLimits, "max_header_bytes"): parse_size,
    (m.HttpLimits, "max_request_line_bytes"): parse_size,
    (m.HttpLimits, "max_header_line_bytes"): _positive_size,
    (m.HttpLimits, "max_headers"): _positive,
    (m.HttpLimits, "max_body_bytes"): parse_size,
    (m.Settings, "admin_addr"): _listen_address,
    (m.Settings, "stats_addr"): _listen_address,
    (m.Settings, "readiness_addr"): _listen_address,
    (m.Settings, "sensitive_headers"): _header_names,
    (m.Tracing, "otlp_endpoint"): _otlp_endpoint,
    (m.Tracing, "headers"): _header_map,
    (m.Tracing, "random_sampling"): _sampling,
    (m.Tracing, "client_sampling"): _sampling,
    (m.Tracing, "path"): _otlp_path,
    (m.FrontendTracing, "host"): _host_port,
    (m.FrontendTracing, "random_sampling"): _sampling,
    (m.FrontendTracing, "client_sampling"): _sampling,
    (m.FrontendTracing, "path"): _otlp_path,
    (m.Policies, "local_rate_limit"): _local_rate_limit,
    (m.RateLimit, "fill_interval"): _positive_duration,
    (m.RateLimit, "max_tokens"): _non_negative,
    (m.RateLimit, "tokens_per_fill"): _non_negative,
    (m.RateLimit, "type"): _rate_limit_type,
    (m.McpRateLimit, "fill_interval"): _positive_duration,
    (m.McpRateLimit, "max_tokens"): _non_negative,
    (m.McpRateLimit, "tokens_per_fill"): _non_negative,
    **_durations(m.TimeoutPolicy, "request_timeout", "backend_request_timeout"),
    **_durations(m.Cors, "max_age"),
    **_durations(m.McpSettings, "session_ttl", "stream_idle_timeout", "sse_retry"),
    **_durations(m.McpSettings, "sse_poll_after", "sse_resume_window"),
    (m.McpSettings, "sse_buffer_events"): _positive,
    (m.McpSettings, "sse_buffer_bytes"): _positive_size,
    **_durations(m.BackendSettings, "connect_timeout", "pool_idle_timeout"),
    **_durations(m.Settings, "connection_termination_deadline"),
    **_durations(m.HttpLimits, "header_timeout", "body_timeout", "idle_timeout"),
    **_durations(m.HttpLimits, "upstream_response_timeout"),
}

# ---------------------------------------------------------------- whole-object checks

Check = Callable[[dict[Any, Any]], list[Invalid]]


def _one_of(cls: type, *keys: str) -> Check:
    expected = f"expected one of {', '.join(keys)}"

    def check(d: dict[Any, Any]) -> list[Invalid]:
        given = [k for k in keys if d.get(k) is not None]
        if len(given) == 1:
            return []
        if not given and UNSUPPORTED.get(cls, frozenset()) & d.keys():
            return []  # the unsupported key is the real problem, already reported
        return [Invalid(expected)]

    return check


def _url_problem(url: str, schemes: Sequence[str]) -> str | None:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError when out of range
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in schemes or not parts.hostname:
        example = f"{schemes[0]}://host:port/path"
        return f"expected a URL like {example}, or a host name with port and path, got {show(url)}"
    return None


def _mcp_target(d: dict[Any, Any]) -> list[Invalid]:
    problems = _one_of(m.McpTarget, "mcp", "sse", "stdio", "websocket")(d)
    for kind in ("mcp", "sse", "websocket"):
        spec = d.get(kind)
        if not isinstance(spec, dict) or not isinstance(spec.get("host"), str):
            continue
        host, port, path = spec["host"], spec.get("port"), spec.get("path")
        schemes = ("ws", "wss", "http", "https") if kind == "websocket" else ("http", "https")
        if port is None and path is None:
            if problem := _url_problem(host, schemes):
                problems.append(Invalid(problem, at=(kind, "host")))
        elif port is None or path is None:
            problems.append(Invalid("expected both port and path, or neither", at=(kind,)))
        elif "://" in host or "/" in host:
            problems.append(Invalid(f"expected a bare host name, got {show(host)}", (kind, "host")))
        elif isinstance(path, str) and not path.startswith("/"):
            problem = f"expected a path starting with /, got {show(path)}"
            problems.append(Invalid(problem, (kind, "path")))
    return problems


def _targets(d: dict[Any, Any]) -> list[Invalid]:
    targets = d.get("targets")
    if not isinstance(targets, list):
        return []
    if not targets:
        return [Invalid("expected at least one target", at=("targets",))]
    problems: list[Invalid] = []
    seen: dict[str, int] = {}
    for i, target in enumerate(targets):
        name = target.get("name") if isinstance(target, dict) else None
        if not isinstance(name, str):
            continue
        if name in seen:
            problem = f"duplicate target name {name!r} (also targets[{seen[name]}])"
            problems.append(Invalid(problem, at=("targets", i, "name")))
        else:
            seen[name] = i
    return problems


def port_clashes(bind_ports: Sequence[int | None], mcp_port: int | None) -> list[tuple[Path, str]]:
    """Binds sharing a port, and the ``mcp:`` shorthand's port clashing with a
    bind. ``None`` stands for a port that is invalid (reported elsewhere);
    port 0 (any free port) never clashes."""
    first: dict[int, int] = {}
    problems: list[tuple[Path, str]] = []
    for i, port in enumerate(bind_ports):
        if port is None or port == 0:
            continue
        if port in first:
            problem = f"port {port} is already used by binds[{first[port]}]"
            problems.append((("binds", i, "port"), problem))
        else:
            first[port] = i
    if mcp_port is not None and mcp_port in first:
        problem = f"port {mcp_port} is already used by binds[{first[mcp_port]}]"
        problems.append((("mcp", "port"), problem))
    return problems


NOTHING_TO_SERVE = "nothing to serve (no binds and no mcp)"


def _raw_port(d: object) -> int | None:
    if not isinstance(d, dict):
        return None
    port = d.get("port")
    if port is None:
        return 3000
    return port if _is_int(port) and 0 <= port <= 65535 else None


def _config(d: dict[Any, Any]) -> list[Invalid]:
    binds, mcp = d.get("binds"), d.get("mcp")
    ports = [_raw_port(b) for b in binds] if isinstance(binds, list) else []
    mcp_port = _raw_port(mcp) if mcp is not None else None
    problems = [Invalid(problem, at) for at, problem in port_clashes(ports, mcp_port)]
    if not binds and mcp is None:
        problems.append(Invalid(NOTHING_TO_SERVE))
    return problems


def _jwt_auth(d: dict[Any, Any]) -> list[Invalid]:
    inline = [k for k in ("issuer", "jwks", "audiences") if k in d]
    if "providers" in d:
        if inline:
            return [Invalid(f"expected providers or issuer/jwks, not both ({inline[0]})")]
        if isinstance(d["providers"], list) and not d["providers"]:
            return [Invalid("expected at least one provider", at=("providers",))]
        return []
    missing = [k for k in ("issuer", "jwks") if d.get(k) is None]
    return [Invalid("required", at=(k,)) for k in missing]


def _listener(d: dict[Any, Any]) -> list[Invalid]:
    protocol, tls = d.get("protocol") or "HTTP", d.get("tls")
    if protocol == "HTTPS" and tls is None:
        return [Invalid("required with protocol HTTPS", at=("tls",))]
    if protocol == "HTTP" and tls is not None:
        return [Invalid("only valid with protocol HTTPS", at=("tls",))]
    return []


def _backend_tls(d: dict[Any, Any]) -> list[Invalid]:
    given = [k for k in ("cert", "key") if d.get(k) is not None]
    if len(given) == 1:
        missing = "key" if given == ["cert"] else "cert"
        return [Invalid(f"required with {given[0]} (a client certificate needs both)", (missing,))]
    return []


_VERSION_ORDER = {"TLS_V1_2": 0, "TLS_V1_3": 1}


def _listener_tls(d: dict[Any, Any]) -> list[Invalid]:
    low = _VERSION_ORDER.get(str(d.get("minTLSVersion")))
    high = _VERSION_ORDER.get(str(d.get("maxTLSVersion")))
    if low is not None and high is not None and low > high:
        return [Invalid("minTLSVersion is above maxTLSVersion", at=("minTLSVersion",))]
    return []


def _bucket(d: dict[Any, Any]) -> list[Invalid]:
    # agentgateway refuses a fill larger than the bucket.
    most, fill = d.get("maxTokens", 0), d.get("tokensPerFill", 0)
    if _is_int(most) and _is_int(fill) and fill > most:
        problem = f"tokensPerFill ({fill}) exceeds maxTokens ({most})"
        return [Invalid(problem, at=("tokensPerFill",))]
    return []


def _mcp_backend(d: dict[Any, Any]) -> list[Invalid]:
    problems = _targets(d)
    targets, limits = d.get("targets"), d.get("rateLimits")
    if not isinstance(targets, list) or not isinstance(limits, list):
        return problems
    names = {t.get("name") for t in targets if isinstance(t, dict)}
    for i, limit in enumerate(limits):
        target = limit.get("target") if isinstance(limit, dict) else None
        if isinstance(target, str) and target not in names:
            problem = f"no target is named {target!r}"
            problems.append(Invalid(problem, at=("rateLimits", i, "target")))
    return problems


def _config_tracing(d: dict[Any, Any]) -> list[Invalid]:
    settings, frontend = d.get("config"), d.get("frontendPolicies")
    if (
        isinstance(settings, dict)
        and settings.get("tracing") is not None
        and isinstance(frontend, dict)
        and frontend.get("tracing") is not None
    ):
        problem = "cannot be used together with config.tracing (as in agentgateway)"
        return [Invalid(problem, at=("frontendPolicies", "tracing"))]
    return []


CHECKS: dict[type, Check] = {
    m.PathMatch: _one_of(m.PathMatch, "exact", "pathPrefix", "regex"),
    m.ValueMatch: _one_of(m.ValueMatch, "exact", "regex"),
    m.Backend: _one_of(m.Backend, "host", "mcp"),
    m.McpTarget: _mcp_target,
    m.McpBackend: _mcp_backend,
    m.SimpleMcp: _mcp_backend,
    m.Config: lambda d: _config(d) + _config_tracing(d),
    m.RateLimit: _bucket,
    m.McpRateLimit: _bucket,
    m.JwtAuth: _jwt_auth,
    m.McpProvider: _one_of(m.McpProvider, "auth0", "keycloak"),
    m.Listener: _listener,
    m.BackendTLS: _backend_tls,
    m.ListenerTLS: _listener_tls,
}

# ---------------------------------------------------------------- the converter

converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)


def _primitive(parse: Callable[[object], Any]) -> Hook:
    return lambda v, _t: parse(v)


converter.register_structure_hook(str, _primitive(parse_str))
converter.register_structure_hook(int, _primitive(parse_int))
converter.register_structure_hook(bool, _primitive(parse_bool))
converter.register_structure_hook(float, _primitive(parse_float))


def _literal_hook(t: Any) -> Hook:
    allowed = get_args(t)
    expected = f"expected one of {', '.join(map(str, allowed))}"

    def hook(v: object, _t: object) -> object:
        if isinstance(v, str) and v in allowed:
            return v
        raise Invalid(f"{expected}, got {show(v)}")

    return hook


def _tuple_hook(t: Any) -> Hook:
    item = get_args(t)[0]
    structure = converter.get_structure_hook(item)

    def hook(v: object, _t: object) -> tuple[Any, ...]:
        if not isinstance(v, list):
            raise Invalid(f"expected a list, got {show(v)}")
        out, errors = [], []
        for i, x in enumerate(v):
            try:
                out.append(structure(x, item))
            except Exception as exc:
                exc.add_note(IterableValidationNote(f"Structuring {t} @ index {i}", i, item))
                errors.append(exc)
        if errors:
            raise ExceptionGroup(f"While structuring {t}", errors)
        return tuple(out)

    return hook


def _origin(t: Any) -> Any:
    return get_origin(t)


converter.register_structure_hook_factory(lambda t: _origin(t) is Literal, _literal_hook)
converter.register_structure_hook_factory(lambda t: _origin(t) is tuple, _tuple_hook)
converter.register_structure_hook_func(lambda t: t == dict[str, str], _primitive(parse_str_map))


def _field_hook(cls: type, a: attrs.Attribute[Any]) -> Hook | None:
    parse = FIELDS.get((cls, a.name))
    default: Any = a.default
    if default is attrs.NOTHING:
        return _primitive(parse) if parse else None

    # ``null`` means "the default", as for agentgateway's optional keys.
    def hook(v: object, t: Any) -> object:
        if v is None:
            return default.factory() if hasattr(default, "factory") else default
        return parse(v) if parse else converter.structure(v, t)

    return hook


def _class_hook(cls: type) -> Hook:
    attrs.resolve_types(cls)
    fields: dict[str, Any] = {
        a.name: override(rename=camel(a.name), struct_hook=_field_hook(cls, a))
        for a in attrs.fields(cls)
    }
    structure: Hook = make_dict_structure_fn(cls, converter, **fields)
    check = CHECKS.get(cls)
    # Modelled keys that are still refused (a policy not enforced yet).
    refused = UNSUPPORTED.get(cls, frozenset()) & {camel(a.name) for a in attrs.fields(cls)}
    aliases = ALIASES.get(cls, {})

    def hook(v: object, t: Any) -> object:
        if not isinstance(v, dict):
            if isinstance(v, str) and v in UNSUPPORTED_STRINGS.get(cls, ()):
                raise Invalid(f"{v} is not supported by agentgw")
            raise Invalid(f"expected an object, got {show(v)}")
        if forms := [k for k in v if k in UNSUPPORTED_FORMS.get(cls, ())]:
            raise ExceptionGroup(
                f"While structuring {cls.__name__}",
                [Invalid("not supported by agentgw", at=(k,)) for k in forms],
            )
        problems: list[Exception] = []
        if aliases.keys() & v.keys():
            v, problems = _unalias(v, aliases)
        if refused & v.keys():
            problems = [Invalid("not supported by agentgw", at=(k,)) for k in v if k in refused]
            v = {k: x for k, x in v.items() if k not in refused}
        problems += list(check(v)) if check else []
        try:
            obj = structure(v, t)
        except Exception as exc:
            raise ExceptionGroup(f"While structuring {cls.__name__}", [*problems, exc])
        if problems:
            raise ExceptionGroup(f"While structuring {cls.__name__}", problems)
        return obj

    return hook


def _unalias(v: dict[Any, Any], aliases: dict[str, str]) -> tuple[dict[Any, Any], list[Exception]]:
    out: dict[Any, Any] = {}
    problems: list[Exception] = []
    for key, value in v.items():
        name = aliases.get(key, key)
        if name != key and name in v:
            problems.append(Invalid(f"expected {name} or {key}, not both", at=(key,)))
            continue
        out[name] = value
    return out, problems


converter.register_structure_hook_factory(attrs.has, _class_hook)


def _class_unhook(cls: type) -> Callable[[Any], dict[str, Any]]:
    fields: dict[str, Any] = {a.name: override(rename=camel(a.name)) for a in attrs.fields(cls)}
    return make_dict_unstructure_fn(cls, converter, _cattrs_omit_if_default=True, **fields)


converter.register_unstructure_hook_factory(attrs.has, _class_unhook)

# ---------------------------------------------------------------- errors


def _collect(exc: BaseException, path: Path, out: list[tuple[Path, str]]) -> None:
    if isinstance(exc, Invalid):
        out.append(((*path, *exc.at), exc.problem))
    elif isinstance(exc, ForbiddenExtraKeysError):
        for key in exc.extra_fields:
            out.append(((*path, str(key)), _refusal(exc.cl, key)))
    elif isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            sub_path = path
            for note in getattr(sub, "__notes__", ()):
                if isinstance(note, AttributeValidationNote):
                    sub_path = (*sub_path, camel(note.name))
                elif isinstance(note, IterableValidationNote):
                    sub_path = (*sub_path, note.index)
            if isinstance(sub, KeyError) and sub_path != path:
                out.append((sub_path, "required"))  # cattrs' lookup of a missing key
            else:
                _collect(sub, sub_path, out)
    else:
        raise exc  # a bug, not a config problem


def _position(data: object, path: Path) -> tuple[int, ...]:
    """Where ``path`` is in the document; a missing key sorts after its siblings."""
    pos: list[int] = []
    node = data
    for part in path:
        if isinstance(node, dict):
            keys = [str(k) for k in node]
            if part not in keys:
                pos.append(len(keys))
                break
            pos.append(keys.index(str(part)))
            node = list(node.values())[pos[-1]]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            pos.append(part)
            node = node[part]
        else:
            break
    return tuple(pos)


def unstructure_config(config: m.Config) -> dict[str, Any]:
    """The document for ``config``: camelCase keys, defaults left out,
    durations as seconds. ``structure_config`` of it gives ``config`` back."""
    data: dict[str, Any] = converter.unstructure(config)
    return data


def structure_config(data: object) -> m.Config:
    """Structure parsed YAML/JSON into a ``Config``.

    Args:
        data: the document, as plain dicts, lists and scalars. ``None`` (an
            empty document) counts as an empty mapping.

    Returns:
        The configuration.

    Raises:
        ConfigError: with every problem found, as ``"<path>: <problem>"``,
            in document order.
    """
    if data is None:
        data = {}
    try:
        return converter.structure(data, m.Config)
    except Exception as exc:
        found: list[tuple[Path, str]] = []
        _collect(ExceptionGroup("", [exc]), (), found)
        order = sorted(range(len(found)), key=lambda i: (_position(data, found[i][0]), i))
        raise ConfigError([f"{render(found[i][0])}: {found[i][1]}" for i in order]) from None
