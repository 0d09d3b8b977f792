from __future__ import annotations

import json
import pathlib
import re
import sys
import textwrap

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from agentgw.config import (
    Backend,
    Bind,
    Config,
    Listener,
    McpTarget,
    PathMatch,
    Route,
    RouteMatch,
    SimpleMcp,
    StdioTarget,
    config_from_dict,
    default_config,
    effective_binds,
    load_config,
    parse_config,
)
from agentgw.config.converter import parse_duration, parse_size, unstructure_config
from agentgw.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = sorted(
    p for p in (ROOT / "examples").iterdir() if p.suffix in (".yaml", ".yml", ".json")
)


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text))
    return info.value.errors


def doc_blocks() -> list[tuple[str, str]]:
    """Every ```yaml block in docs/*.md that is a whole config."""
    blocks = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S)):
            lines = [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]
            if lines and lines[0].startswith(("binds:", "mcp:", "config:")):
                blocks.append((f"{doc.name}#{i}", block))
    return blocks


# ---------------------------------------------------------------- valid configs


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path: pathlib.Path) -> None:
    config = load_config(path)
    assert effective_binds(config)


def test_docs_have_config_blocks() -> None:
    assert len(doc_blocks()) >= 8


@pytest.mark.parametrize(("name", "block"), doc_blocks(), ids=[n for n, _ in doc_blocks()])
def test_doc_block_validates(name: str, block: str) -> None:
    config = parse_config(block, source=name)
    assert effective_binds(config)


def test_default_config() -> None:
    config = default_config()
    (bind,) = effective_binds(config)
    assert (bind.address, bind.port) == ("127.0.0.1", 3000)
    route = bind.listeners[0].routes[0]
    assert route.name == "mcp"
    (backend,) = route.backends
    assert backend.mcp is not None
    (target,) = backend.mcp.targets
    assert target.name == "demo" and target.stdio is not None
    assert target.stdio.cmd == sys.executable  # the Python that runs agentgw
    assert target.stdio.args == ("-m", "agentgw.demo")


def test_minimal_bind_gets_defaults() -> None:
    config = parse_config("binds: [{listeners: [{routes: [{backends: [{host: 'a:80'}]}]}]}]")
    bind = config.binds[0]
    assert (bind.port, bind.address) == (3000, "0.0.0.0")
    route = bind.listeners[0].routes[0]
    assert route.matches == (RouteMatch(path=PathMatch(path_prefix="/")),)
    assert route.backends == (Backend(host="a:80", weight=1),)
    assert config.config.http.max_header_bytes == 32768


def test_camel_case_keys_map_to_fields() -> None:
    config = parse_config(
        """
        binds:
        - listeners:
          - routes:
            - matches: [{path: {pathPrefix: /a}}]
              policies:
                requestHeaderModifier: {set: {x: "1"}}
                timeout: {backendRequestTimeout: 2s}
        config:
          adminAddr: 127.0.0.1:15000
          connectionTerminationDeadline: 1m
          http: {maxRequestLineBytes: 4KiB}
        """
    )
    route = config.binds[0].listeners[0].routes[0]
    assert route.matches[0].path.path_prefix == "/a"
    assert route.policies is not None
    assert route.policies.request_header_modifier is not None
    assert route.policies.request_header_modifier.set == {"x": "1"}
    assert route.policies.timeout is not None
    assert route.policies.timeout.backend_request_timeout == 2.0
    assert config.config.admin_addr == "127.0.0.1:15000"
    assert config.config.connection_termination_deadline == 60.0
    assert config.config.http.max_request_line_bytes == 4096


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_round_trip(path: pathlib.Path) -> None:
    config = load_config(path)
    data = unstructure_config(config)
    assert config_from_dict(data) == config
    assert config_from_dict(json.loads(json.dumps(data))) == config


def test_round_trip_uses_camel_case_and_drops_defaults() -> None:
    config = parse_config("mcp: {statefulMode: stateless, targets: [{name: a, stdio: {cmd: x}}]}")
    assert unstructure_config(config) == {
        "mcp": {"targets": [{"name": "a", "stdio": {"cmd": "x"}}], "statefulMode": "stateless"}
    }


def test_null_means_default() -> None:
    config = parse_config(
        """
        binds:
        - port: null
          listeners:
          - routes:
            - matches: null
              backends: [{host: 'a:1', weight: null}]
        config: null
        """
    )
    route = config.binds[0].listeners[0].routes[0]
    assert config.binds[0].port == 3000
    assert route.matches == (RouteMatch(),)
    assert route.backends[0].weight == 1
    assert config.config == Config().config


def test_json_is_yaml() -> None:
    text = json.dumps({"mcp": {"port": 3001, "targets": [{"name": "a", "stdio": {"cmd": "x"}}]}})
    assert parse_config(text).mcp == SimpleMcp(
        targets=(McpTarget(name="a", stdio=StdioTarget(cmd="x")),), port=3001
    )


# ---------------------------------------------------------------- broken configs

BROKEN = [
    pytest.param(
        """
        binds:
        - port: abc
          listeners: []
        """,
        ["binds[0].port: expected an integer, got 'abc'"],
        id="wrong-type",
    ),
    pytest.param(
        """
        binds:
        - port: 70000
          listeners: []
        - port: true
          listeners: []
        """,
        [
            "binds[0].port: expected a port 0..65535, got 70000",
            "binds[1].port: expected an integer, got true",
        ],
        id="port-range-and-bool",
    ),
    pytest.param(
        """
        binds:
        - port: 3000
        """,
        ["binds[0].listeners: required"],
        id="required",
    ),
    pytest.param(
        """
        binds:
        - listeners:
          - name: a
            foo: 1
        """,
        ["binds[0].listeners[0].foo: unknown key"],
        id="unknown-key",
    ),
    pytest.param(
        """
        gateways: {}
        binds:
        - listeners:
          - tcpRoutes: []
            routes:
            - policies:
                requestRedirect: {}
                retry: {attempts: 2}
                extAuthz: {host: x}
        config:
          metrics: {}
        """,
        [
            "gateways: not supported by agentgw",
            "binds[0].listeners[0].tcpRoutes: not supported by agentgw",
            "binds[0].listeners[0].routes[0].policies.requestRedirect: not supported by agentgw",
            "binds[0].listeners[0].routes[0].policies.retry: not supported by agentgw",
            "binds[0].listeners[0].routes[0].policies.extAuthz: not supported by agentgw",
            "config.metrics: not supported by agentgw",
        ],
        id="not-supported",
    ),
    pytest.param(
        """
        binds:
        - listeners:
          - routes:
            - matches:
              - path: {}
              - path: {exact: /a, pathPrefix: /b}
              - headers: [{name: x, value: {exact: a, regex: b}}]
        """,
        [
            "binds[0].listeners[0].routes[0].matches[0].path:"
            " expected one of exact, pathPrefix, regex",
            "binds[0].listeners[0].routes[0].matches[1].path:"
            " expected one of exact, pathPrefix, regex",
            "binds[0].listeners[0].routes[0].matches[2].headers[0].value:"
            " expected one of exact, regex",
        ],
        id="one-of-matches",
    ),
    pytest.param(
        """
        binds:
        - listeners:
          - routes:
            - backends:
              - weight: 1
              - {host: "a:1", mcp: {targets: [{name: a, stdio: {cmd: x}}]}}
              - service: {name: a, port: 80}
              - host: localhost
              - host: "a:99999"
              - {host: "a:1", weight: -1}
        """,
        [
            "binds[0].listeners[0].routes[0].backends[0]: expected one of host, mcp",
            "binds[0].listeners[0].routes[0].backends[1]: expected one of host, mcp",
            "binds[0].listeners[0].routes[0].backends[2].service: not supported by agentgw",
            "binds[0].listeners[0].routes[0].backends[3].host:"
            " expected host:port with a port 1..65535, got 'localhost'",
            "binds[0].listeners[0].routes[0].backends[4].host:"
            " expected host:port with a port 1..65535, got 'a:99999'",
            "binds[0].listeners[0].routes[0].backends[5].weight: expected a weight >= 0, got -1",
        ],
        id="backends",
    ),
    pytest.param(
        """
        binds:
        - listeners:
          - routes:
            - matches:
              - path: {regex: "/a("}
                method: "GE T"
              - path: {pathPrefix: /}
                query: [{name: q, value: {regex: "[z-a]"}}]
        """,
        [
            "binds[0].listeners[0].routes[0].matches[0].path.regex:"
            " invalid regex: missing ), unterminated subpattern at position 2",
            "binds[0].listeners[0].routes[0].matches[0].method:"
            " expected an HTTP method like GET, got 'GE T'",
            "binds[0].listeners[0].routes[0].matches[1].query[0].value.regex:"
            " invalid regex: bad character range z-a at position 1",
        ],
        id="regex-and-method",
    ),
    pytest.param(
        """
        mcp:
          targets:
          - name: Bad_Name
            stdio: {cmd: x}
          - name: dup
            stdio: {cmd: x}
          - name: dup
            sse: {host: "ftp://example.com/sse"}
          - name: both
            stdio: {cmd: x}
            mcp: {host: "http://a/mcp"}
          - name: half
            mcp: {host: a, port: 80}
          - name: bare
            mcp: {host: "http://a", port: 80, path: /mcp}
          - name: nothing
        """,
        [
            "mcp.targets[0].name: expected a name of lowercase letters, digits, '-' and '.',"
            " got 'Bad_Name'",
            "mcp.targets[2].name: duplicate target name 'dup' (also targets[1])",
            "mcp.targets[2].sse.host: expected a URL like http://host:port/path,"
            " or a host name with port and path, got 'ftp://example.com/sse'",
            "mcp.targets[3]: expected one of mcp, sse, stdio, websocket",
            "mcp.targets[4].mcp: expected both port and path, or neither",
            "mcp.targets[5].mcp.host: expected a bare host name, got 'http://a'",
            "mcp.targets[6]: expected one of mcp, sse, stdio, websocket",
        ],
        id="mcp-targets",
    ),
    pytest.param(
        """
        binds:
        - listeners:
          - protocol: TLS
          - protocol: FTP
          - routes:
            - policies:
                directResponse: {status: 99}
            - policies:
                directResponse: {body: x}
        """,
        [
            "binds[0].listeners[0].protocol: protocol TLS is not supported by agentgw",
            "binds[0].listeners[1].protocol: expected HTTP or HTTPS, got 'FTP'",
            "binds[0].listeners[2].routes[0].policies.directResponse.status:"
            " expected an HTTP status 100..599, got 99",
            "binds[0].listeners[2].routes[1].policies.directResponse.status: required",
        ],
        id="protocol-and-status",
    ),
    pytest.param(
        """
        binds:
        - port: 3000
          listeners: []
        - port: 0
          listeners: []
        - port: 0
          listeners: []
        - listeners: []
        mcp:
          port: 3000
          targets: [{name: a, stdio: {cmd: x}}]
        """,
        [
            "binds[3].port: port 3000 is already used by binds[0]",
            "mcp.port: port 3000 is already used by binds[0]",
        ],
        id="port-clashes",
    ),
    pytest.param(
        """
        mcp:
          targets: []
        config:
          session: {key: "c2hvcnQ="}
          logging: {format: xml, level: loud}
          backend: {connectTimeout: 10, poolIdleTimeout: soon}
          http: {maxHeaderBytes: 1 KB, maxBodyBytes: lots, maxConnections: 0}
        """,
        [
            "mcp.targets: expected at least one target",
            "config.session.key: expected 32 bytes, got 5 bytes (decoded as base64)",
            "config.logging.format: expected one of text, json, got 'xml'",
            "config.logging.level: expected one of error, warn, info, debug, got 'loud'",
            "config.backend.poolIdleTimeout: expected a duration like 10s or 1m30s, got 'soon'",
            "config.http.maxBodyBytes: expected a size like 65536 or 64KiB, got 'lots'",
            "config.http.maxConnections: expected an integer >= 1, got 0",
        ],
        id="settings",
    ),
    pytest.param(
        """
        config:
          session: {key: "not a key!"}
        """,
        [
            "config: nothing to serve (no binds and no mcp)",
            "config.session.key: expected 32 bytes encoded as 64 hex digits or base64, got neither",
        ],
        id="nothing-to-serve",
    ),
    pytest.param(
        """
        binds: {port: 3000}
        """,
        ["binds: expected a list, got an object"],
        id="list-expected",
    ),
    pytest.param(
        """
        binds:
        - listeners:
          - routes:
            - hostnames: api.example.com
              backends:
              - mcp:
                  statefulMode: sometimes
                  targets:
                  - name: a
                    stdio: {cmd: x, args: "--flag", env: {N: 1}}
        """,
        [
            "binds[0].listeners[0].routes[0].hostnames: expected a list, got 'api.example.com'",
            "binds[0].listeners[0].routes[0].backends[0].mcp.statefulMode:"
            " expected one of stateful, stateless, got 'sometimes'",
            "binds[0].listeners[0].routes[0].backends[0].mcp.targets[0].stdio.args:"
            " expected a list, got '--flag'",
            "binds[0].listeners[0].routes[0].backends[0].mcp.targets[0].stdio.env.N:"
            " expected a string, got 1",
        ],
        id="strict-types",
    ),
    pytest.param(
        """
        binds:
        - listeners:
          - routes:
            - policies:
                requestHeaderModifier:
                  add: {"bad name": x, x-ok: "a\\r\\nb"}
                  remove: [server, "no pe"]
              matches:
              - headers: [{name: "x:y", value: {exact: "1"}}]
        """,
        [
            "binds[0].listeners[0].routes[0].policies.requestHeaderModifier.add.bad name:"
            " expected a header name, got 'bad name'",
            "binds[0].listeners[0].routes[0].policies.requestHeaderModifier.add.x-ok:"
            " expected a header value without control characters, got 'a\\r\\nb'",
            "binds[0].listeners[0].routes[0].policies.requestHeaderModifier.remove[1]:"
            " expected a header name, got 'no pe'",
            "binds[0].listeners[0].routes[0].matches[0].headers[0].name:"
            " expected a header name, got 'x:y'",
        ],
        id="header-names",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BROKEN)
def test_broken_config(text: str, expected: list[str]) -> None:
    assert errors_of(text) == expected


# ---------------------------------------------------------------- agentgateway's schema

# Route policies agentgateway's schema (LocalGatewayPolicy) refuses on a listener.
ROUTE_ONLY_KEYS = [
    "requestHeaderModifier",
    "responseHeaderModifier",
    "directResponse",
    "timeout",
    "mcpAuthorization",
    "mcpAuthentication",
    "backendAuth",
    "requestRedirect",
    "urlRewrite",
    "requestMirror",
    "mcpGuardrails",
    "a2a",
    "ai",
    "backendTLS",
    "backendTunnel",
    "remoteRateLimit",
    "csrf",
    "buffer",
    "retry",
    "delay",
]


def _listener_with(policies: dict[str, object]) -> dict[str, object]:
    return {"binds": [{"listeners": [{"policies": policies, "routes": []}]}]}


@pytest.mark.parametrize("key", ROUTE_ONLY_KEYS)
def test_listener_refuses_route_only_policy(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(_listener_with({key: {}}))
    assert info.value.errors == [f"binds[0].listeners[0].policies.{key}: only valid on a route"]


def test_listener_takes_gateway_level_policies() -> None:
    config = config_from_dict(
        _listener_with(
            {
                "cors": {"allowOrigins": ["*"]},
                "jwtAuth": {"issuer": "i", "jwks": {"file": "keys.json"}},
                "authorization": {"rules": ["true"]},
            }
        )
    )
    policies = config.binds[0].listeners[0].policies
    assert policies is not None and policies.cors is not None
    assert policies.jwt_auth is not None and policies.authorization is not None
    with pytest.raises(ConfigError) as info:
        config_from_dict(_listener_with({"oidc": {}, "apiKey": {}, "extAuthz": {}, "cors": 1}))
    assert info.value.errors == [
        "binds[0].listeners[0].policies.oidc: not supported by agentgw",
        "binds[0].listeners[0].policies.apiKey: not supported by agentgw",
        "binds[0].listeners[0].policies.extAuthz: not supported by agentgw",
        "binds[0].listeners[0].policies.cors: expected an object, got 1",
    ]


def test_listener_policies_apply_to_its_routes() -> None:
    from agentgw.app import compile_binds

    config = parse_config(
        """
        binds:
        - port: 0
          listeners:
          - policies:
              cors: {allowOrigins: ["https://a.example"]}
            routes:
            - backends: [{host: "127.0.0.1:1"}]
            - policies:
                cors: {allowOrigins: ["https://b.example"]}
              backends: [{host: "127.0.0.1:1"}]
        """
    )
    (bind,) = compile_binds(config)
    first, second = (bind.routes[id(r)].policies.cors for r in config.binds[0].listeners[0].routes)
    assert first is not None and first.allow_origins == ("https://a.example",)
    assert second is not None and second.allow_origins == ("https://b.example",)


BACKEND_POLICIES_NOT_SUPPORTED = [
    "extAuthz",
    "authorization",
    "mcpGuardrails",
    "inferenceRouting",
    "sessionAffinity",
]


@pytest.mark.parametrize("key", BACKEND_POLICIES_NOT_SUPPORTED)
def test_backend_policy_refused_by_name(key: str) -> None:
    errors = errors_of(
        f"""
        binds:
        - listeners:
          - routes:
            - backends:
              - host: "127.0.0.1:1"
                policies: {{{key}: {{}}}}
              - mcp:
                  targets:
                  - name: a
                    mcp: {{host: "http://127.0.0.1:1/mcp"}}
                    policies: {{{key}: {{}}}}
        """
    )
    assert errors == [
        f"binds[0].listeners[0].routes[0].backends[0].policies.{key}: not supported by agentgw",
        f"binds[0].listeners[0].routes[0].backends[1].mcp.targets[0].policies.{key}:"
        " not supported by agentgw",
    ]


def test_backend_auth_kinds_refused_by_name() -> None:
    errors = errors_of(
        """
        binds:
        - listeners:
          - routes:
            - policies:
                backendAuth:
                  credentials: [{location: {header: {name: x}}, key: s}]
              backends:
              - host: "127.0.0.1:1"
                policies: {backendAuth: {key: secret}}
              - host: "127.0.0.1:1"
                policies: {backendAuth: copilot}
              - host: "127.0.0.1:1"
                policies: {backendAuth: {passthrough: {location: {header: {name: x}}}}}
              - host: "127.0.0.1:1"
                policies: {backendAuth: {gcp: {}}}
        """
    )
    at = "binds[0].listeners[0].routes[0]"
    assert errors == [
        f"{at}.policies.backendAuth.credentials: not supported by agentgw",
        f"{at}.backends[0].policies.backendAuth.key: not supported by agentgw",
        f"{at}.backends[1].policies.backendAuth: copilot is not supported by agentgw",
        f"{at}.backends[2].policies.backendAuth.passthrough.location: not supported by agentgw",
        f"{at}.backends[3].policies.backendAuth.gcp: not supported by agentgw",
    ]


def test_conditional_direct_response_refused_by_name_only() -> None:
    errors = errors_of(
        """
        binds:
        - listeners:
          - routes:
            - policies:
                directResponse:
                  conditional:
                  - condition: 'request.path == "/a"'
                    status: 200
                  - status: 404
        """
    )
    assert errors == [
        "binds[0].listeners[0].routes[0].policies.directResponse.conditional:"
        " not supported by agentgw"
    ]


def test_backend_auth_on_one_backend_is_that_backends() -> None:
    # agentgateway's route backends take backendAuth (LocalBackendPolicies),
    # and so does agentgw: docs/configuration.md and security.md say so.
    from agentgw.app import compile_binds

    config = parse_config(
        """
        binds:
        - port: 0
          listeners:
          - routes:
            - backends:
              - host: "127.0.0.1:1"
                policies: {backendAuth: {passthrough: {}}}
              - host: "127.0.0.1:2"
        """
    )
    backend = config.binds[0].listeners[0].routes[0].backends[0]
    assert backend.policies is not None and backend.policies.has_passthrough
    (bind,) = compile_binds(config)
    (route,) = bind.routes.values()
    assert route.policies_for(0).passthrough and not route.policies_for(1).passthrough
    docs = (ROOT / "docs" / "configuration.md").read_text()
    assert "backends[].policies.backendAuth" in docs
    assert "and backend `policies`" not in docs


def test_long_values_are_truncated() -> None:
    (error,) = errors_of(f"binds: [{{port: {'x' * 100}, listeners: []}}]")
    assert error == f"binds[0].port: expected an integer, got '{'x' * 40}...'"


def test_secret_key_is_not_echoed() -> None:
    key = "zz" * 32
    mcp = "mcp: {targets: [{name: a, stdio: {cmd: x}}]}"
    (error,) = errors_of(f"{mcp}\nconfig: {{session: {{key: '{key}'}}}}")
    assert key not in error


def test_all_errors_reported_in_document_order() -> None:
    errors = errors_of(
        """
        config:
          logging: {format: xml}
        binds:
        - listeners:
          - routes:
            - backends: [{host: nope}]
          bogus: 1
        - port: x
        mcp:
          targets: [{name: A}]
          port: 3001
        extra: true
        """
    )
    assert errors == [
        "config.logging.format: expected one of text, json, got 'xml'",
        "binds[0].listeners[0].routes[0].backends[0].host:"
        " expected host:port with a port 1..65535, got 'nope'",
        "binds[0].bogus: unknown key",
        "binds[1].port: expected an integer, got 'x'",
        "binds[1].listeners: required",
        # an object's own problem comes before its fields'
        "mcp.targets[0]: expected one of mcp, sse, stdio, websocket",
        "mcp.targets[0].name: expected a name of lowercase letters, digits, '-' and '.', got 'A'",
        "extra: unknown key",
    ]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


def _value_paths(node: object, at: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    found = [at] if at else []
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, child in items:
        found += _value_paths(child, (*at, key))
    return found


@given(st.sampled_from(EXAMPLES), st.data(), json_values)
def test_any_bad_value_gives_config_error(
    path: pathlib.Path, data: st.DataObject, value: object
) -> None:
    doc = yaml.safe_load(path.read_text())
    at = data.draw(st.sampled_from(_value_paths(doc)))
    node = doc
    for key in at[:-1]:
        node = node[key]
    node[at[-1]] = value
    try:
        config_from_dict(doc)
    except ConfigError as exc:
        assert exc.errors
        assert all(": " in e for e in exc.errors), exc.errors


def test_not_an_object() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(["binds"])
    assert info.value.errors == ["config: expected an object, got a list"]


def test_empty_document() -> None:
    assert errors_of("") == ["config: nothing to serve (no binds and no mcp)"]


# ---------------------------------------------------------------- durations and sizes


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("10s", 10.0),
        ("1m30s", 90.0),
        ("100ms", 0.1),
        ("2h", 7200.0),
        ("1.5s", 1.5),
        ("1h2m3s4ms", 3723.004),
        ("250us", 0.00025),
        ("0", 0.0),
        (".5s", 0.5),
        (5, 5.0),
        (2.5, 2.5),
    ],
)
def test_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["10", "s", "1x", "-1s", "1 m", "", True, None, -3, [1]])
def test_bad_duration(value: object) -> None:
    with pytest.raises(ValueError, match="expected a duration like 10s or 1m30s"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (65536, 65536),
        ("512", 512),
        ("64KiB", 65536),
        ("1MiB", 1048576),
        ("10MB", 10_000_000),
        ("1 GiB", 1 << 30),
        ("2kb", 2000),
        ("100B", 100),
        ("1.5KiB", 1536),
    ],
)
def test_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["", "KiB", "1XB", "-1", -1, 1.5, True, None])
def test_bad_size(value: object) -> None:
    with pytest.raises(ValueError, match="expected a size like 65536 or 64KiB"):
        parse_size(value)


def test_durations_in_config() -> None:
    config = parse_config(
        """
        mcp:
          targets: [{name: a, stdio: {cmd: x}}]
          policies:
            timeout: {requestTimeout: 1m30s}
            cors: {maxAge: 1h}
        config:
          mcp: {sessionTtl: 45m}
          http: {headerTimeout: 500ms, idleTimeout: 2}
        """
    )
    assert config.mcp is not None and config.mcp.policies is not None
    assert config.mcp.policies.timeout is not None
    assert config.mcp.policies.timeout.request_timeout == 90.0
    assert config.mcp.policies.cors is not None and config.mcp.policies.cors.max_age == 3600.0
    assert config.config.mcp.session_ttl == 2700.0
    assert (config.config.http.header_timeout, config.config.http.idle_timeout) == (0.5, 2.0)


def test_session_key_hex_and_base64() -> None:
    base = "mcp: {targets: [{name: a, stdio: {cmd: x}}]}\n"
    hexkey = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
    b64key = "ABEiM0RVZneImaq7zN3u/wARIjNEVWZ3iJmqu8zd7v8="
    for key in (hexkey, b64key):
        config = parse_config(base + f"config: {{session: {{key: '{key}'}}}}")
        assert config.config.session is not None and config.config.session.key == key


# ---------------------------------------------------------------- files


def test_json_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"binds": [{"port": 8080, "listeners": [{"routes": []}]}]}))
    assert load_config(path).binds[0].port == 8080
    assert load_config(str(path)).binds[0].port == 8080


def test_json_file_syntax_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{\n  "binds": [\n    {"port": 1,}\n  ]\n}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [f"{path}:3:16: Expecting property name enclosed in double quotes"]


def test_json_file_errors_are_structured(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"binds": [{"port": "80", "listeners": []}]}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == ["binds[0].port: expected an integer, got '80'"]


def test_file_not_found(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [f"{path}: No such file or directory"]


def test_yaml_syntax_error_has_line_and_column(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("binds:\n- port: 3000\n  listeners: [\n    {name: a}\n  - x\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (error,) = info.value.errors
    assert error.startswith(f"{path}:5:3: ")


def test_yaml_duplicate_key(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("binds:\n- port: 3000\n  listeners: []\n  port: 3001\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [f"{path}:4:3: duplicate key 'port'"]


def test_inline_source_name() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("binds: [", source="--config")
    (error,) = info.value.errors
    assert error.startswith("--config:1:")


# ---------------------------------------------------------------- effective binds


def test_mcp_shorthand_becomes_a_bind() -> None:
    config = parse_config(
        """
        binds:
        - port: 8080
          listeners: []
        mcp:
          port: 3001
          address: 127.0.0.1
          statefulMode: stateless
          prefixMode: always
          policies: {cors: {allowOrigins: ["*"]}}
          targets: [{name: a, stdio: {cmd: x}}]
        """
    )
    first, bind = effective_binds(config)
    assert first is config.binds[0]
    assert (bind.port, bind.address) == (3001, "127.0.0.1")
    (listener,) = bind.listeners
    (route,) = listener.routes
    assert (listener.name, route.name) == ("mcp", "mcp")
    assert [m.path for m in route.matches] == [
        PathMatch(path_prefix="/mcp"),
        PathMatch(path_prefix="/sse"),
        PathMatch(path_prefix="/.well-known"),
    ]
    assert config.mcp is not None and route.policies == config.mcp.policies
    (backend,) = route.backends
    assert backend.mcp is not None
    assert backend.mcp.targets == config.mcp.targets
    assert (backend.mcp.stateful_mode, backend.mcp.prefix_mode) == ("stateless", "always")


def test_effective_binds_checks_configs_built_in_python() -> None:
    listener = Listener(routes=(Route(),))
    target = McpTarget(name="a", stdio=StdioTarget(cmd="x"))
    config = Config(
        binds=(Bind(listeners=(listener,), port=3000),),
        mcp=SimpleMcp(targets=(target,), port=3000),
    )
    with pytest.raises(ConfigError) as info:
        effective_binds(config)
    assert info.value.errors == ["mcp.port: port 3000 is already used by binds[0]"]
    with pytest.raises(ConfigError) as info:
        effective_binds(Config())
    assert info.value.errors == ["config: nothing to serve (no binds and no mcp)"]


def test_security_policies_fail_at_compile_with_their_path() -> None:
    from agentgw import Gateway

    cfg = {
        "binds": [
            {
                "port": 0,
                "listeners": [
                    {
                        "policies": {"authorization": {"rules": ["jwt.sub == "]}},
                        "routes": [
                            {
                                "policies": {
                                    "jwtAuth": {"issuer": "i", "jwks": '{"keys": []}'},
                                    "mcpAuthorization": {"rules": [{"deny": "mcp.tool.name =="}]},
                                },
                                "backends": [{"host": "127.0.0.1:1"}],
                            }
                        ],
                    }
                ],
            }
        ]
    }
    with pytest.raises(ConfigError) as info:
        Gateway(config_from_dict(cfg))
    errors = info.value.errors
    assert errors[0] == (
        "binds[0].listeners[0].routes[0].policies.jwtAuth.jwks: no usable key (the set is empty)"
    )
    assert errors[1].startswith(
        "binds[0].listeners[0].policies.authorization.rules[0]: "
        "invalid CEL expression 'jwt.sub == '"
    )
    assert errors[2].startswith(
        "binds[0].listeners[0].routes[0].policies.mcpAuthorization.rules[0].deny: invalid CEL"
    )


# ---------------------------------------------------------------- DNS-rebinding default


def _protection(address: str, backend: str = "", route: str = "", listener: str = "") -> bool:
    from agentgw.app import compile_binds

    jwks = f"{{file: '{ROOT / 'tests' / 'configs' / 'agentgateway-examples' / 'jwks.json'}'}}"
    policies = {
        "": "",
        "strict": f"policies: {{jwtAuth: {{mode: strict, issuer: i, jwks: {jwks}}}}}",
        "optional": f"policies: {{jwtAuth: {{mode: optional, issuer: i, jwks: {jwks}}}}}",
        "mcpauth": "policies: {mcpAuthentication: {issuer: 'http://i', audiences: [a],"
        " resourceMetadata: {}}}",
    }
    config = parse_config(
        f"""
        binds:
        - port: 0
          address: "{address}"
          listeners:
          - {policies[listener] or "name: l"}
            routes:
            - {policies[route] or "name: r"}
              backends:
              - mcp:
                  targets: [{{name: a, stdio: {{cmd: x}}}}]
                  {backend}
        """
    )
    (bind,) = compile_binds(config)
    (route_,) = bind.routes.values()
    return route_.mcp[0].dns_rebinding_protection


@pytest.mark.parametrize(
    ("address", "protected"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("127.0.0.2", False),  # its clients' Host would be refused
    ],
)
def test_dns_rebinding_default_by_address(address: str, protected: bool) -> None:
    assert _protection(address) is protected


def test_dns_rebinding_default_follows_authentication() -> None:
    assert _protection("127.0.0.1", route="strict") is False
    assert _protection("127.0.0.1", listener="strict") is False
    assert _protection("127.0.0.1", route="mcpauth") is False  # strict by default
    # a token that may be left out protects nothing
    assert _protection("127.0.0.1", route="optional") is True


def test_dns_rebinding_explicit_value_wins() -> None:
    assert _protection("127.0.0.1", backend="dnsRebindingProtection: false") is False
    assert _protection("0.0.0.0", backend="dnsRebindingProtection: true") is True
    assert _protection("127.0.0.1", backend="dnsRebindingProtection: null") is True


def test_dns_rebinding_default_for_shorthand_and_legacy() -> None:
    from agentgw.app import compile_binds

    shorthand = parse_config(
        "mcp: {port: 0, address: 127.0.0.1, targets: [{name: a, stdio: {cmd: x}}]}"
    )
    legacy = config_from_dict(
        {
            "type": "static",
            "listeners": [{"name": "sse", "sse": {"address": "127.0.0.1", "port": 0}}],
            "targets": {"mcp": [{"name": "a", "stdio": {"cmd": "x"}}]},
        }
    )
    for config in (shorthand, legacy):
        (bind,) = compile_binds(config)
        (route,) = bind.routes.values()
        assert route.mcp[0].dns_rebinding_protection is True
