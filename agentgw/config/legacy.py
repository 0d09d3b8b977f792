"""The legacy static format of early agentgateway (``"type": "static"``).

Before July 2025 agentgateway read a document of protobuf messages in JSON
(``crates/agentgateway/proto/{listener,common,rbac}.proto`` and
``mcp/target.proto``): ``listeners[]`` with an ``sse`` listener (address,
port, tls, authn, rbac) and ``targets.mcp[]`` with ``sse``, ``stdio`` or
``openapi`` targets. agentgw still loads it, by converting it to the current
format and warning once that the format is deprecated.

How this works:

* ``_convert`` walks the legacy document and builds the equivalent new
  document: each MCP listener becomes a bind with one listener and one route
  serving ``/mcp``, ``/sse`` and ``/.well-known`` (as the ``mcp:`` shorthand),
  whose backend holds the targets that listener may reach. ``authn.jwt``
  becomes ``jwtAuth`` and ``rbac`` becomes ``mcpAuthorization`` CEL rules.
  Problems are reported with legacy paths; a broken piece is left out of the
  new document so that its consequences are not reported twice.
* Along the way it records where each piece of the new document came from
  (``origins``: new path -> legacy path). The new document is then structured
  by the normal converter, so every usual check applies, and each of its
  errors is moved to the legacy path of the longest recorded prefix.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import re
from collections.abc import Mapping
from typing import Any, Final, TypeGuard

import attrs
import yaml

from agentgw.config import model as m
from agentgw.config.converter import Path, camel, render, show, structure_config
from agentgw.errors import ConfigError

logger = logging.getLogger("agentgw.config")

NOT_SUPPORTED: Final = "not supported by agentgw"

# As ``load.MCP_MATCHES`` (a test keeps them equal).
MCP_MATCHES: Final = (
    {"path": {"pathPrefix": "/mcp"}},
    {"path": {"pathPrefix": "/sse"}},
    {"path": {"pathPrefix": "/.well-known"}},
)


def is_legacy(data: object) -> TypeGuard[dict[str, Any]]:
    """Whether ``data`` is a legacy static document (top-level ``"type": "static"``)."""
    return isinstance(data, dict) and data.get("type") == "static"


def convert_legacy(data: Mapping[str, Any]) -> dict[str, Any]:
    """The current-format document equivalent to a legacy static document.

    Args:
        data: the parsed legacy document.

    Returns:
        The new document (camelCase keys, as written in a config file). It
        has not been through the converter yet: ``structure_legacy`` does both.

    Raises:
        ConfigError: the problems of the legacy document, by legacy path
            (the converter's checks of the result are ``structure_legacy``'s).
    """
    conv = _convert(data)
    if conv.problems:
        raise ConfigError(conv.messages(data, []))
    return conv.document


def structure_legacy(data: Mapping[str, Any], *, source: str = "<inline>") -> m.Config:
    """Convert a legacy static document and structure the result.

    Logs one warning on ``agentgw.config`` saying that the format is
    deprecated and showing the equivalent new config as YAML.

    Args:
        data: the parsed legacy document.
        source: what to call it in the warning (a file name, ``--config``).

    Returns:
        The configuration.

    Raises:
        ConfigError: every problem found, by legacy path, in document order.
    """
    conv = _convert(data)
    errors: list[str] = []
    if conv.probe is not None:
        try:
            structure_config(conv.probe)
        except ConfigError as exc:
            errors += exc.errors
    try:
        config = structure_config(conv.document)
    except ConfigError as exc:
        errors += exc.errors
    if conv.problems or errors:
        raise ConfigError(conv.messages(data, errors))
    text = yaml.safe_dump(conv.document, sort_keys=False, width=1000).rstrip("\n")
    logger.warning(
        '%s: the legacy static format ("type": "static") is deprecated; '
        "the equivalent config in the current format is:\n%s",
        source,
        text,
    )
    return config


# ---------------------------------------------------------------- reading legacy objects


@attrs.frozen
class _Fields:
    """The keys of one legacy object, by proto field name, each with the
    spelling the document used (proto JSON accepts ``file_path`` and
    ``filePath``). ``refused``: unsupported keys that were present."""

    at: Path
    found: dict[str, tuple[str, Any]]
    refused: frozenset[str] = frozenset()

    def __contains__(self, name: str) -> bool:
        return name in self.found

    def get(self, name: str) -> Any:
        return self.found[name][1] if name in self.found else None

    def path(self, name: str) -> Path:
        return (*self.at, self.found[name][0] if name in self.found else name)


@attrs.define(eq=False)
class _Conversion:
    document: dict[str, Any] = attrs.Factory(dict)
    # Every target, under the mcp: shorthand, so that the converter checks
    # the targets that no bind of ``document`` holds too.
    probe: dict[str, Any] | None = None
    problems: list[tuple[Path, str]] = attrs.Factory(list)
    origins: dict[Path, Path] = attrs.Factory(dict)

    def fail(self, at: Path, problem: str) -> None:
        self.problems.append((at, problem))

    def fields(
        self, value: object, at: Path, known: tuple[str, ...], refused: tuple[str, ...] = ()
    ) -> _Fields | None:
        """``None`` (after reporting) unless ``value`` is an object. A null
        value counts as absent, as in proto JSON; so does an absent object."""
        if value is None:
            return _Fields(at, {})
        if not isinstance(value, dict):
            self.fail(at, f"expected an object, got {show(value)}")
            return None
        names = {spelling: n for n in known + refused for spelling in (n, camel(n))}
        found: dict[str, tuple[str, Any]] = {}
        present: set[str] = set()
        for key, v in value.items():
            name = names.get(key) if isinstance(key, str) else None
            if name is None:
                self.fail((*at, str(key)), "unknown key")
            elif name in found or name in present:
                self.fail((*at, key), f"duplicate key (also {name})")
            elif v is None or v == []:
                continue
            elif name in refused:
                present.add(name)
                self.fail((*at, key), NOT_SUPPORTED)
            else:
                found[name] = (key, v)
        return _Fields(at, found, frozenset(present))

    def string(self, f: _Fields, name: str, *, required: bool = False) -> str | None:
        value = f.get(name)
        if value is None or value == "":
            if required:
                self.fail(f.path(name), "required")
            return None
        if not isinstance(value, str):
            self.fail(f.path(name), f"expected a string, got {show(value)}")
            return None
        return value

    def strings(self, f: _Fields, name: str) -> list[str] | None:
        value = f.get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(f.path(name), f"expected a list, got {show(value)}")
            return None
        bad = [i for i, v in enumerate(value) if not isinstance(v, str)]
        for i in bad:
            self.fail((*f.path(name), i), f"expected a string, got {show(value[i])}")
        return None if bad else list(value)

    def port(self, f: _Fields, name: str, *, lowest: int = 0) -> int | None:
        """A uint32 port; proto JSON also takes a number written as a string."""
        value = f.get(name)
        if isinstance(value, str) and value.isascii() and value.isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and lowest <= value <= 65535:
            return value
        if value is None:
            self.fail(f.path(name), "required")
        else:
            self.fail(f.path(name), f"expected a port {lowest}..65535, got {show(value)}")
        return None

    def one_of(self, f: _Fields, *names: str) -> str | None:
        given = [n for n in names if n in f]
        if len(given) == 1:
            return given[0]
        if not given and f.refused:
            return None  # the unsupported key is the real problem, already reported
        self.fail(f.at, f"expected one of {', '.join(names)}")
        return None

    def messages(self, data: object, errors: list[str]) -> list[str]:
        """Our problems and the converter's ``errors`` (moved to legacy paths),
        in legacy document order, each once."""
        found = [(at, render(at), problem) for at, problem in self.problems]
        mine = {text for _, text, _ in found}
        prefixes = sorted(((render(new), old) for new, old in self.origins.items()), reverse=True)
        for error in errors:
            where, _, problem = error.partition(": ")
            for new, old in prefixes:
                if where == new or (where.startswith(new) and where[len(new)] in ".["):
                    text = render(old) + where[len(new) :]
                    if text not in mine:
                        found.append((old, text, problem))
                    break
            else:
                if not self.problems and not where.startswith("mcp"):
                    found.append(((), where, problem))  # else a consequence of a piece left out
        order = sorted(range(len(found)), key=lambda i: (_position(data, found[i][0]), i))
        out: list[str] = []
        for i in order:
            message = f"{found[i][1]}: {found[i][2]}"
            if message not in out:
                out.append(message)
        return out


def _enum(value: object, names: tuple[str, ...]) -> str | None:
    """A proto enum in JSON: its name, or its number."""
    if isinstance(value, str):
        return value if value in names else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return names[value]
    return None


def _position(data: object, path: Path) -> tuple[int, ...]:
    pos: list[int] = []
    node = data
    for part in path:
        if isinstance(node, dict):
            keys = list(node)
            if part not in keys:
                pos.append(len(keys))
                break
            pos.append(keys.index(part))
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            pos.append(part)
            node = node[part]
        else:
            break
    return tuple(pos)


# ---------------------------------------------------------------- the conversion


@attrs.frozen
class _Target:
    """One legacy ``targets.mcp[]`` entry, converted."""

    at: Path
    name: str
    document: dict[str, Any]
    listeners: tuple[str, ...]  # empty: every listener
    passthrough: bool | None  # None: not an HTTP target


@attrs.frozen
class _Listener:
    """One legacy MCP listener, converted; ``origins`` relative to its bind."""

    at: Path
    name: str
    address: str
    port: int
    policies: dict[str, Any]
    origins: tuple[tuple[Path, Path], ...]


def _convert(data: Mapping[str, Any]) -> _Conversion:
    c = _Conversion()
    top = c.fields(data, (), ("type", "listeners", "targets", "admin", "metrics"), ("tracing",))
    assert top is not None  # a dict, by is_legacy
    before = len(c.problems)
    targets = _targets(c, top)
    all_targets_ok = len(c.problems) == before
    listeners = _listeners(c, top)
    raw = top.get("listeners")
    listed = raw if isinstance(raw, list) else []
    names = {x["name"] for x in listed if isinstance(x, dict) and isinstance(x.get("name"), str)}
    for t in targets:
        for i, name in enumerate(t.listeners):
            if name not in names:
                c.fail((*t.at, "listeners", i), f"no listener named {name!r}")
    if targets:
        c.probe = {"mcp": {"port": 0, "targets": [t.document for t in targets]}}
        for i, t in enumerate(targets):
            c.origins[("mcp", "targets", i)] = t.at
    binds: list[dict[str, Any]] = []
    for listener in listeners:
        bind = _bind(c, listener, targets, ("binds", len(binds)), all_targets_ok)
        if bind is not None:
            binds.append(bind)
    if binds:
        c.document["binds"] = binds
    settings = _settings(c, top)
    if settings:
        c.document["config"] = settings
    return c


def _targets(c: _Conversion, top: _Fields) -> list[_Target]:
    spec = c.fields(top.get("targets"), top.path("targets"), ("mcp",), ("a2a",))
    if spec is None or "mcp" not in spec:
        return []
    items, at = spec.get("mcp"), spec.path("mcp")
    if not isinstance(items, list):
        c.fail(at, f"expected a list, got {show(items)}")
        return []
    out: list[_Target] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        target = _target(c, item, (*at, i))
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str) and name in seen:
            also = render((*at, seen[name]))
            c.fail((*at, i, "name"), f"duplicate target name {name!r} (also {also})")
            continue
        if isinstance(name, str):
            seen[name] = i
        if target is not None:
            out.append(target)
    return out


def _target(c: _Conversion, item: object, at: Path) -> _Target | None:
    f = c.fields(item, at, ("name", "listeners", "sse", "stdio"), ("openapi", "filters"))
    if f is None:
        return None
    before = len(c.problems)
    name = c.string(f, "name", required=True)
    listeners = c.strings(f, "listeners")
    kind = c.one_of(f, "sse", "stdio")
    document: dict[str, Any] = {"name": name}
    passthrough = None
    if kind == "stdio":
        stdio = c.fields(f.get("stdio"), f.path("stdio"), ("cmd", "args", "env"))
        if stdio is not None and c.string(stdio, "cmd", required=True) is not None:
            # Passed on as they are: the converter checks them, at the same keys.
            document["stdio"] = {n: stdio.get(n) for n in ("cmd", "args", "env") if n in stdio}
    elif kind == "sse":
        found = _sse_target(c, f.get("sse"), f.path("sse"))
        if found is not None:
            document["sse"], passthrough = found
    if name is None or listeners is None or kind is None or len(c.problems) > before:
        return None
    return _Target(at, name, document, tuple(listeners), passthrough)


def _sse_target(c: _Conversion, value: object, at: Path) -> tuple[dict[str, Any], bool] | None:
    f = c.fields(value, at, ("host", "port", "path", "auth", "tls"), ("headers",))
    if f is None:
        return None
    host = c.string(f, "host", required=True)
    port = c.port(f, "port", lowest=1)
    # Legacy defaults: path /sse; https on port 443 or with tls.
    path = c.string(f, "path") or "/sse"
    auth = c.fields(f.get("auth"), f.path("auth"), ("passthrough",), ("GCP",))
    if auth is not None and "passthrough" in auth and auth.get("passthrough") != {}:
        c.fail(auth.path("passthrough"), f"expected {{}}, got {show(auth.get('passthrough'))}")
    tls = c.fields(f.get("tls"), f.path("tls"), ("insecure_skip_verify",))
    if tls is not None and "insecure_skip_verify" in tls:
        skip = tls.get("insecure_skip_verify")
        if skip is True:
            c.fail(tls.path("insecure_skip_verify"), NOT_SUPPORTED)
        elif skip is not False:
            c.fail(tls.path("insecure_skip_verify"), f"expected true or false, got {show(skip)}")
    if host is None or port is None or auth is None or tls is None:
        return None
    passthrough = "passthrough" in auth
    if port == 443 or "tls" in f:
        authority = host if port == 443 else f"{host}:{port}"
        return {"host": f"https://{authority}{path}"}, passthrough
    return {"host": host, "port": port, "path": path}, passthrough


def _listeners(c: _Conversion, top: _Fields) -> list[_Listener]:
    items, at = top.get("listeners"), top.path("listeners")
    if items is None or items == []:
        c.fail(at, "expected at least one MCP listener")
        return []
    if not isinstance(items, list):
        c.fail(at, f"expected a list, got {show(items)}")
        return []
    out: list[_Listener] = []
    names: dict[str, int] = {}
    ports: dict[int, int] = {}
    for i, item in enumerate(items):
        listener = _listener(c, item, (*at, i))
        if listener is None:
            continue
        if listener.name in names:
            also = render((*at, names[listener.name]))
            c.fail((*at, i, "name"), f"duplicate listener name {listener.name!r} (also {also})")
            continue
        if listener.port in ports:
            also = render((*at, ports[listener.port]))
            port_at = dict(listener.origins)[("port",)]
            c.fail(port_at, f"port {listener.port} is already used by {also}")
            continue
        names[listener.name] = i
        if listener.port != 0:
            ports[listener.port] = i
        out.append(listener)
    return out


def _listener(c: _Conversion, item: object, at: Path) -> _Listener | None:
    f = c.fields(item, at, ("name", "protocol", "sse"), ("stdio",))
    if f is None:
        return None
    before = len(c.problems)
    name = c.string(f, "name", required=True)
    protocol = _enum(f.get("protocol"), ("MCP", "A2A")) if "protocol" in f else "MCP"
    if protocol == "A2A":
        c.fail(f.path("protocol"), f"protocol A2A is {NOT_SUPPORTED}")
    elif protocol is None:
        c.fail(f.path("protocol"), f"expected MCP, got {show(f.get('protocol'))}")
    if "sse" not in f:
        if not f.refused:
            c.fail(f.path("sse"), "required")
        return None
    sse_at = f.path("sse")
    sse = c.fields(f.get("sse"), sse_at, ("address", "port", "authn", "rbac"), ("tls",))
    if sse is None:
        return None
    address = _address(c, sse)
    port = c.port(sse, "port") if "port" in sse else 0  # the legacy default
    origins: list[tuple[Path, Path]] = [
        ((), at),
        (("port",), sse.path("port")),
        (("address",), sse.path("address")),
        (("listeners", 0, "name"), f.path("name")),
    ]
    route: Path = ("listeners", 0, "routes", 0)
    policies: dict[str, Any] = {}
    authn = c.fields(sse.get("authn"), sse.path("authn"), ("jwt",))
    if authn is not None and "jwt" in authn:
        jwt = _jwt_auth(c, authn.get("jwt"), authn.path("jwt"))
        if jwt is not None:
            policies["jwtAuth"], jwt_origins = jwt
            origins += [((*route, "policies", "jwtAuth", *new), old) for new, old in jwt_origins]
    if "rbac" in sse:
        rbac = _rbac(c, sse.get("rbac"), sse.path("rbac"))
        if rbac is not None:
            rules, rule_origins = rbac
            policies["mcpAuthorization"] = {"rules": rules}
            at_rules = (*route, "policies", "mcpAuthorization", "rules")
            origins += [((*at_rules, n), old) for n, old in enumerate(rule_origins)]
    if name is None or address is None or port is None or len(c.problems) > before:
        return None
    return _Listener(at, name, address, port, policies, tuple(origins))


def _address(c: _Conversion, sse: _Fields) -> str | None:
    text = c.string(sse, "address", required=True)
    if text is None:
        return None
    # Legacy agentgateway parsed "<address>:<port>", so IPv6 came in brackets.
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        c.fail(
            sse.path("address"), f"expected an IP address like 0.0.0.0 or [::], got {show(text)}"
        )
        return None


def _jwt_auth(
    c: _Conversion, value: object, at: Path
) -> tuple[dict[str, Any], list[tuple[Path, Path]]] | None:
    f = c.fields(value, at, ("issuer", "audience", "local_jwks", "remote_jwks"))
    if f is None:
        return None
    before = len(c.problems)
    issuers = c.strings(f, "issuer")
    if issuers == []:
        c.fail(f.path("issuer"), "expected at least one issuer (agentgw always checks iss)")
    audiences = c.strings(f, "audience")
    kind = c.one_of(f, "local_jwks", "remote_jwks")
    jwks: _Jwks | None = None
    if kind == "local_jwks":
        jwks = _local_jwks(c, f.get(kind), f.path(kind))
    elif kind == "remote_jwks":
        jwks = _remote_jwks(c, f.get(kind), f.path(kind))
    if not issuers or audiences is None or jwks is None or len(c.problems) > before:
        return None
    # The legacy validator took a token whose iss is any of the issuers and
    # whose aud is any of the audiences, all signed by keys of one JWKS: one
    # provider per issuer, each with the same keys and audiences.
    provider: dict[str, Any] = {"audiences": audiences} if audiences else {}
    provider["jwks"] = jwks.value

    def provider_origins(where: Path, i: int) -> list[tuple[Path, Path]]:
        out = [
            ((*where, "issuer"), (*f.path("issuer"), i)),
            ((*where, "audiences"), f.path("audience")),
            ((*where, "jwks"), jwks.at),
        ]
        return [*out, ((*where, "jwks", *jwks.leaf), jwks.leaf_at)] if jwks.leaf else out

    origins: list[tuple[Path, Path]] = [((), at)]
    document: dict[str, Any] = {"mode": "strict"}
    if len(issuers) == 1:
        document |= {"issuer": issuers[0], **provider}
        origins += provider_origins((), 0)
    else:
        document["providers"] = [{"issuer": issuer, **provider} for issuer in issuers]
        for i in range(len(issuers)):
            origins += [(("providers", i), at), *provider_origins(("providers", i), i)]
    return document, origins


@attrs.frozen
class _Jwks:
    """A converted JWKS source: ``value`` for ``jwks`` (legacy path ``at``),
    and where its one leaf (``file``, ``url``) came from."""

    value: str | dict[str, str]
    at: Path
    leaf: Path = ()
    leaf_at: Path = ()


def _local_jwks(c: _Conversion, value: object, at: Path) -> _Jwks | None:
    f = c.fields(value, at, ("file_path", "inline"))
    if f is None:
        return None
    kind = c.one_of(f, "file_path", "inline")
    if kind == "file_path":
        path = c.string(f, kind, required=True)
        return _Jwks({"file": path}, at, ("file",), f.path(kind)) if path else None
    if kind == "inline":
        # A proto bytes field: base64 (standard or URL-safe) in JSON.
        text = f.get(kind)
        if isinstance(text, str):
            padded = text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4)
            try:
                return _Jwks(base64.b64decode(padded, validate=True).decode(), f.path(kind))
            except (binascii.Error, UnicodeDecodeError):
                pass
        c.fail(f.path(kind), f"expected the JWKS as base64 text, got {show(text)}")
    return None


def _remote_jwks(c: _Conversion, value: object, at: Path) -> _Jwks | None:
    refused = ("headers", "initial_timeout", "refresh_interval")
    f = c.fields(value, at, ("url", "host", "port", "path"), refused)
    if f is None:
        return None
    # Two generations: {url, port, path} fetched "<url>:<port>/<path>"
    # (April-May 2025), then {host, port, path} fetched https on 443 and
    # http on 80, refusing other ports.
    kind = c.one_of(f, "url", "host")
    base = c.string(f, kind, required=True) if kind else None
    port = c.port(f, "port", lowest=1)
    path = (c.string(f, "path") or "").lstrip("/")
    if kind == "host" and port is not None and port not in (80, 443):
        c.fail(f.path("port"), f"expected 443 (https) or 80 (http), got {port}")
        return None
    if kind is None or base is None or port is None or f.refused:
        return None
    if kind == "url":
        return _Jwks({"url": f"{base}:{port}/{path}"}, at, ("url",), f.path(kind))
    scheme = "https" if port == 443 else "http"
    return _Jwks({"url": f"{scheme}://{base}/{path}"}, at, ("url",), f.path(kind))


# ---------------------------------------------------------------- rbac -> mcpAuthorization

# CEL words that cannot follow a dot.
_RESERVED: Final = frozenset(
    {
        *("as", "break", "const", "continue", "else", "false", "for", "function", "if"),
        *("import", "in", "let", "loop", "namespace", "null", "package", "return", "true"),
        *("var", "void", "while"),
    }
)
_IDENT: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KINDS: Final = ("tool", "prompt", "resource")


def _rbac(c: _Conversion, value: object, at: Path) -> tuple[list[str], list[Path]] | None:
    """Legacy RBAC allows a call when any rule of any rule set matches both
    the resource and a claim; no rule sets, or one without rules, allow
    everything. Each rule becomes one CEL allow rule."""
    if not isinstance(value, list):
        c.fail(at, f"expected a list, got {show(value)}")
        return None
    before = len(c.problems)
    rules: list[str] = []
    origins: list[Path] = []
    allows_all = False
    for i, item in enumerate(value):
        f = c.fields(item, (*at, i), ("name", "namespace", "rules"))
        if f is None:
            continue
        c.string(f, "name")
        c.string(f, "namespace")
        items = f.get("rules")
        if items is None:
            allows_all = True
            continue
        if not isinstance(items, list):
            c.fail(f.path("rules"), f"expected a list, got {show(items)}")
            continue
        for j, rule in enumerate(items):
            expression = _rule(c, rule, (*f.path("rules"), j))
            if expression is not None:
                rules.append(expression)
                origins.append((*f.path("rules"), j))
    if len(c.problems) > before or allows_all or not rules:
        return None
    return rules, origins


def _rule(c: _Conversion, value: object, at: Path) -> str | None:
    f = c.fields(value, at, ("key", "key_delimiter", "value", "resource", "matcher"))
    if f is None:
        return None
    key = c.string(f, "key", required=True)
    # The proto says the delimiter defaults to "."; an empty one split
    # nothing usefully in legacy agentgateway.
    delimiter = c.string(f, "key_delimiter") or "."
    expected = c.string(f, "value") or ""
    matcher = _enum(f.get("matcher"), ("EQUALS", "CONTAINS")) if "matcher" in f else "EQUALS"
    if matcher is None:
        c.fail(f.path("matcher"), f"expected EQUALS or CONTAINS, got {show(f.get('matcher'))}")
    resource = _resource(c, f.get("resource"), f.path("resource"))
    if key is None or matcher is None or resource is None:
        return None
    return " && ".join([*resource, *_claim(key.split(delimiter), matcher, expected)])


def _resource(c: _Conversion, value: object, at: Path) -> list[str] | None:
    if value is None:
        c.fail(at, "required")
        return None
    f = c.fields(value, at, ("id", "target", "type"))
    if f is None:
        return None
    kind = c.string(f, "type", required=True)
    name, target = c.string(f, "id") or "", c.string(f, "target") or ""
    if kind is None:
        return None
    if kind.lower() not in _KINDS:
        c.fail(f.path("type"), f"expected one of TOOL, PROMPT, RESOURCE, got {show(kind)}")
        return None
    # An empty or "*" id or target matches any.
    var = f"mcp.{kind.lower()}"
    out = [f"has({var})"]
    if target not in ("", "*"):
        out.append(f"{var}.target == {_cel_string(target)}")
    if name not in ("", "*"):
        out.append(f"{var}.name == {_cel_string(name)}")
    return out


def _claim(parts: list[str], matcher: str, value: str) -> list[str]:
    # The legacy lookup walked nested objects and matched string values only;
    # a missing claim never matched. Guards keep a missing claim false rather
    # than an evaluation error.
    out: list[str] = []
    claim = "jwt"
    for i, part in enumerate(parts):
        if i:
            out.append(f"type({claim}) == map")
        if _IDENT.fullmatch(part) and part not in _RESERVED:
            out.append(f"has({claim}.{part})")
            claim = f"{claim}.{part}"
        else:
            out.append(f"{_cel_string(part)} in {claim}")
            claim = f"{claim}[{_cel_string(part)}]"
    v = _cel_string(value)
    if matcher == "EQUALS":
        out.append(f"{claim} == {v}")
    else:  # a string containing the value, or a list with such a string
        out.append(
            f"(type({claim}) == string && {claim}.contains({v})"
            f" || type({claim}) == list && {claim}.exists(x, type(x) == string && x.contains({v})))"
        )
    return out


def _cel_string(text: str) -> str:
    # JSON's escapes are a subset of CEL's.
    return json.dumps(text, ensure_ascii=False)


# ---------------------------------------------------------------- binds and settings


def _bind(
    c: _Conversion, listener: _Listener, targets: list[_Target], at: Path, all_targets_ok: bool
) -> dict[str, Any] | None:
    served = [t for t in targets if not t.listeners or listener.name in t.listeners]
    if not served:
        if all_targets_ok:  # else a broken target may be the one missing
            c.fail(listener.at, "no target in targets.mcp is served on this listener")
        return None
    # Legacy passthrough was per target; agentgw's is per route.
    http = [t for t in served if t.passthrough is not None]
    passing = [t for t in http if t.passthrough]
    if passing and len(passing) < len(http):
        for t in passing:
            problem = (
                f"passthrough on only some targets of listener {listener.name!r} is {NOT_SUPPORTED}"
            )
            c.fail((*t.at, "sse", "auth", "passthrough"), problem)
        return None
    policies = dict(listener.policies)
    if passing:
        policies["backendAuth"] = {"passthrough": {}}
    route: dict[str, Any] = {"name": "mcp", "matches": [dict(x) for x in MCP_MATCHES]}
    if policies:
        route["policies"] = policies
    backend = {"targets": [t.document for t in served], "prefixMode": "always"}
    route["backends"] = [{"mcp": backend}]
    for new, old in listener.origins:
        c.origins[(*at, *new)] = old
    at_targets = (*at, "listeners", 0, "routes", 0, "backends", 0, "mcp", "targets")
    for i, t in enumerate(served):
        c.origins[(*at_targets, i)] = t.at
    return {
        "port": listener.port,
        "address": listener.address,
        "listeners": [{"name": listener.name, "routes": [route]}],
    }


def _settings(c: _Conversion, top: _Fields) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # admin had no defaults; metrics defaulted to 0.0.0.0:9091.
    for key, setting, known, default in (
        ("admin", "adminAddr", ("host", "port"), None),
        ("metrics", "statsAddr", ("host", "port", "tags"), ("0.0.0.0", 9091)),
    ):
        if key not in top:
            continue
        f = c.fields(top.get(key), top.path(key), known)
        if f is None:
            continue
        tags = f.get("tags")
        if tags is not None and tags != {}:
            c.fail(f.path("tags"), NOT_SUPPORTED)
        if default is None or "host" in f:
            host = c.string(f, "host", required=True)
        else:
            host = default[0]
        port = c.port(f, "port") if default is None or "port" in f else default[1]
        if host is not None and port is not None:
            host = f"[{host}]" if ":" in host and not host.startswith("[") else host
            out[setting] = f"{host}:{port}"
            c.origins[("config", setting)] = top.path(key)
    return out
