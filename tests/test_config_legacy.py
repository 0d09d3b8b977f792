"""The legacy static format of early agentgateway (``"type": "static"``)."""

from __future__ import annotations

import base64
import copy
import json
import logging
import pathlib
import subprocess
import sys
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from agentgw.config import config_from_dict, effective_binds, load_config, parse_config
from agentgw.config.converter import converter
from agentgw.config.legacy import MCP_MATCHES, convert_legacy, is_legacy
from agentgw.config.load import MCP_MATCHES as SHORTHAND_MATCHES
from agentgw.errors import ConfigError
from agentgw.policy import authz

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The example of issue 4, as agentgateway's examples/rbac/config.json had it
# (without the rbac).
EXAMPLE: dict[str, Any] = {
    "type": "static",
    "listeners": [
        {
            "name": "sse",
            "protocol": "MCP",
            "sse": {
                "address": "[::]",
                "port": 3000,
                "authn": {
                    "jwt": {
                        "issuer": ["me"],
                        "audience": ["me.com"],
                        "local_jwks": {"file_path": "manifests/jwt/pub-key"},
                    }
                },
            },
        }
    ],
    "targets": {
        "mcp": [
            {
                "name": "everything",
                "stdio": {"cmd": "npx", "args": ["@modelcontextprotocol/server-everything"]},
            }
        ]
    },
}

MATCHES = [
    {"path": {"pathPrefix": "/mcp"}},
    {"path": {"pathPrefix": "/sse"}},
    {"path": {"pathPrefix": "/.well-known"}},
]

EXPECTED: dict[str, Any] = {
    "binds": [
        {
            "port": 3000,
            "address": "::",
            "listeners": [
                {
                    "name": "sse",
                    "routes": [
                        {
                            "name": "mcp",
                            "matches": MATCHES,
                            "policies": {
                                "jwtAuth": {
                                    "mode": "strict",
                                    "issuer": "me",
                                    "audiences": ["me.com"],
                                    "jwks": {"file": "manifests/jwt/pub-key"},
                                }
                            },
                            "backends": [
                                {
                                    "mcp": {
                                        "targets": [
                                            {
                                                "name": "everything",
                                                "stdio": {
                                                    "cmd": "npx",
                                                    "args": [
                                                        "@modelcontextprotocol/server-everything"
                                                    ],
                                                },
                                            }
                                        ],
                                        "prefixMode": "always",
                                    }
                                }
                            ],
                        }
                    ],
                }
            ],
        }
    ]
}


def legacy(listeners: list[dict[str, Any]], targets: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "static", "listeners": listeners, "targets": {"mcp": targets}}


def sse_listener(name: str = "sse", port: int = 3000, **sse: Any) -> dict[str, Any]:
    return {"name": name, "protocol": "MCP", "sse": {"address": "0.0.0.0", "port": port, **sse}}


STDIO = {"name": "everything", "stdio": {"cmd": "npx", "args": ["server-everything"]}}


def route_of(doc: dict[str, Any], bind: int = 0) -> dict[str, Any]:
    route: dict[str, Any] = doc["binds"][bind]["listeners"][0]["routes"][0]
    return route


def targets_of(doc: dict[str, Any], bind: int = 0) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = route_of(doc, bind)["backends"][0]["mcp"]["targets"]
    return targets


def legacy_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "agentgw.config" and "legacy" in r.message]


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    return info.value.errors


# ---------------------------------------------------------------- the example


def test_example_converts_to_the_new_format() -> None:
    assert is_legacy(EXAMPLE)
    assert convert_legacy(EXAMPLE) == EXPECTED


def test_example_loads_as_its_new_config_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agentgw.config")
    config = config_from_dict(copy.deepcopy(EXAMPLE))
    (record,) = legacy_records(caplog)
    assert record.levelno == logging.WARNING
    head, _, shown = record.getMessage().partition("\n")
    assert head == (
        '<inline>: the legacy static format ("type": "static") is deprecated; '
        "the equivalent config in the current format is:"
    )
    assert yaml.safe_load(shown) == EXPECTED
    assert "  address: '::'\n" in shown  # block style, keys in document order
    assert config == config_from_dict(EXPECTED)
    (bind,) = effective_binds(config)
    assert (bind.address, bind.port) == ("::", 3000)


def test_the_new_format_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agentgw.config")
    config_from_dict(EXPECTED)
    assert not is_legacy(EXPECTED)
    assert legacy_records(caplog) == []


def test_matches_are_the_shorthands() -> None:
    assert list(MCP_MATCHES) == MATCHES
    assert [converter.unstructure(m) for m in SHORTHAND_MATCHES] == MATCHES


def test_yaml_and_json_files_load(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agentgw.config")
    expected = config_from_dict(EXPECTED)
    as_json = tmp_path / "legacy.json"
    as_json.write_text(json.dumps(EXAMPLE))
    as_yaml = tmp_path / "legacy.yaml"
    as_yaml.write_text(yaml.safe_dump(EXAMPLE))
    assert load_config(as_json) == expected
    assert load_config(as_yaml) == expected
    assert parse_config(json.dumps(EXAMPLE), source="--config") == expected
    sources = [r.getMessage().split(":")[0] for r in legacy_records(caplog)]
    assert sources == [str(as_json), str(as_yaml), "--config"]


# ---------------------------------------------------------------- variants


def test_no_authn_and_no_rbac_mean_no_policies() -> None:
    doc = convert_legacy(legacy([sse_listener()], [STDIO]))
    assert "policies" not in route_of(doc)
    assert targets_of(doc) == [STDIO]
    assert doc["binds"][0]["address"] == "0.0.0.0"


def test_listener_defaults() -> None:
    # protocol MCP and port 0 (any free port) were the proto defaults.
    doc = convert_legacy(legacy([{"name": "a", "sse": {"address": "127.0.0.1"}}], [STDIO]))
    assert (doc["binds"][0]["port"], doc["binds"][0]["address"]) == (0, "127.0.0.1")


def test_stdio_and_sse_targets() -> None:
    targets = [
        {"name": "local", "stdio": {"cmd": "python", "args": ["-m", "srv"], "env": {"A": "1"}}},
        {"name": "plain", "sse": {"host": "everything", "port": 3000, "path": "/sse"}},
        {"name": "no-path", "sse": {"host": "10.0.0.7", "port": "8080"}},
        {"name": "on-443", "sse": {"host": "mcp.example.com", "port": 443, "path": "/v1/sse"}},
        {"name": "tls", "sse": {"host": "internal", "port": 8443, "tls": {}}},
    ]
    doc = convert_legacy(legacy([sse_listener()], targets))
    assert targets_of(doc) == [
        {"name": "local", "stdio": {"cmd": "python", "args": ["-m", "srv"], "env": {"A": "1"}}},
        {"name": "plain", "sse": {"host": "everything", "port": 3000, "path": "/sse"}},
        {"name": "no-path", "sse": {"host": "10.0.0.7", "port": 8080, "path": "/sse"}},
        {"name": "on-443", "sse": {"host": "https://mcp.example.com/v1/sse"}},
        {"name": "tls", "sse": {"host": "https://internal:8443/sse"}},
    ]
    config = config_from_dict(legacy([sse_listener()], targets))
    mcp = config.binds[0].listeners[0].routes[0].backends[0].mcp
    assert mcp is not None and mcp.prefix_mode == "always"
    assert [t.name for t in mcp.targets] == ["local", "plain", "no-path", "on-443", "tls"]


def test_targets_go_to_the_listeners_they_name() -> None:
    targets = [
        {**STDIO, "listeners": ["inner"]},
        {
            "name": "inner",
            "listeners": ["outer"],
            "sse": {"host": "localhost", "port": 3001, "auth": {"passthrough": {}}},
        },
        {"name": "both", "stdio": {"cmd": "srv"}},
    ]
    doc = convert_legacy(legacy([sse_listener("outer"), sse_listener("inner", 3001)], targets))
    assert [t["name"] for t in targets_of(doc, 0)] == ["inner", "both"]
    assert [t["name"] for t in targets_of(doc, 1)] == ["everything", "both"]
    # Every HTTP target of "outer" passes the token on; "inner" has none.
    assert route_of(doc, 0)["policies"] == {"backendAuth": {"passthrough": {}}}
    assert "policies" not in route_of(doc, 1)
    assert [b["listeners"][0]["name"] for b in doc["binds"]] == ["outer", "inner"]


def test_remote_jwks_and_several_issuers() -> None:
    jwt = {
        "issuer": ["https://idp.example.com", "https://other.example.com"],
        "remote_jwks": {"host": "idp.example.com", "port": 443, "path": "/.well-known/jwks.json"},
    }
    doc = convert_legacy(legacy([sse_listener(authn={"jwt": jwt})], [STDIO]))
    jwks = {"url": "https://idp.example.com/.well-known/jwks.json"}
    assert route_of(doc)["policies"] == {
        "jwtAuth": {
            "mode": "strict",
            "providers": [
                {"issuer": "https://idp.example.com", "jwks": jwks},
                {"issuer": "https://other.example.com", "jwks": jwks},
            ],
        }
    }
    config_from_dict(legacy([sse_listener(authn={"jwt": jwt})], [STDIO]))


def test_remote_jwks_of_the_first_generation() -> None:
    # April-May 2025: {url, port, path}, fetched as "<url>:<port>/<path>".
    jwt = {
        "issuer": ["me"],
        "audience": ["a", "b"],
        "remoteJwks": {"url": "http://keycloak", "port": 8080, "path": "realms/r/certs"},
    }
    doc = convert_legacy(legacy([sse_listener(authn={"jwt": jwt})], [STDIO]))
    assert route_of(doc)["policies"]["jwtAuth"] == {
        "mode": "strict",
        "issuer": "me",
        "audiences": ["a", "b"],
        "jwks": {"url": "http://keycloak:8080/realms/r/certs"},
    }


def test_inline_jwks_is_base64() -> None:
    jwks = '{"keys": []}'
    inline = base64.b64encode(jwks.encode()).decode()
    jwt = {"issuer": ["me"], "localJwks": {"inline": inline}}
    doc = convert_legacy(legacy([sse_listener(authn={"jwt": jwt})], [STDIO]))
    assert route_of(doc)["policies"]["jwtAuth"]["jwks"] == jwks


def test_admin_and_metrics_addresses() -> None:
    data = {
        **legacy([sse_listener()], [STDIO]),
        "admin": {"host": "127.0.0.1", "port": 19000},
        "metrics": {"tags": {}},
    }
    config = config_from_dict(data)
    assert config.config.admin_addr == "127.0.0.1:19000"
    assert config.config.stats_addr == "0.0.0.0:9091"


# ---------------------------------------------------------------- rbac


RBAC = [
    {
        "name": "default",
        "rules": [
            {
                "key": "sub",
                "value": "me",
                "resource": {"type": "TOOL", "target": "everything", "id": "echo"},
                "matcher": "EQUALS",
            },
            {
                "key": "realm_access.roles",
                "value": "admin",
                "matcher": "CONTAINS",
                "resource": {"type": "prompt", "target": "*"},
            },
        ],
    }
]


def test_rbac_becomes_mcp_authorization_rules() -> None:
    doc = convert_legacy(legacy([sse_listener(rbac=RBAC)], [STDIO]))
    claim = "jwt.realm_access.roles"
    assert route_of(doc)["policies"] == {
        "mcpAuthorization": {
            "rules": [
                'has(mcp.tool) && mcp.tool.target == "everything" && mcp.tool.name == "echo"'
                ' && has(jwt.sub) && jwt.sub == "me"',
                "has(mcp.prompt) && has(jwt.realm_access) && type(jwt.realm_access) == map"
                f' && has({claim}) && (type({claim}) == string && {claim}.contains("admin")'
                f" || type({claim}) == list && {claim}.exists(x, type(x) == string"
                ' && x.contains("admin")))',
            ]
        }
    }


@pytest.mark.parametrize(
    ("claims", "kind", "name", "target", "allowed"),
    [
        ({"sub": "me"}, "tool", "echo", "everything", True),
        ({"sub": "me"}, "tool", "add", "everything", False),  # another tool
        ({"sub": "me"}, "tool", "echo", "other", False),  # another target
        ({"sub": "you"}, "tool", "echo", "everything", False),
        ({"sub": 1}, "tool", "echo", "everything", False),  # strings only
        (None, "tool", "echo", "everything", False),  # no token
        ({"realm_access": {"roles": ["x", "superadmin"]}}, "prompt", "p", "any", True),
        ({"realm_access": {"roles": "the-admins"}}, "prompt", "p", "any", True),
        ({"realm_access": {"roles": ["x", 1]}}, "prompt", "p", "any", False),
        ({"realm_access": "admin"}, "prompt", "p", "any", False),
        ({"realm_access": {"roles": ["admin"]}}, "resource", "p", "any", False),
    ],
)
def test_rbac_rules_decide_as_legacy_rbac(
    claims: dict[str, object] | None,
    kind: authz.ResourceKind,
    name: str,
    target: str,
    allowed: bool,
) -> None:
    doc = convert_legacy(legacy([sse_listener(rbac=RBAC)], [STDIO]))
    rules = authz.compile_rules(route_of(doc)["policies"]["mcpAuthorization"]["rules"], path="r")
    base = authz.http_variables("POST", "/mcp", "h", [], "127.0.0.1", 1, claims)
    variables = authz.mcp_variables(base, method="m", kind=kind, name=name, target=target)
    assert isinstance(rules.evaluate(variables), authz.Allow) is allowed


def test_odd_claim_names_and_values_are_quoted() -> None:
    rule = {
        "key": "https://example.com/claims|in",
        "keyDelimiter": "|",
        "value": 'say "hi"\\',
        "resource": {"type": "Resource", "id": "file:///a"},
    }
    doc = convert_legacy(legacy([sse_listener(rbac=[{"rules": [rule]}])], [STDIO]))
    (expression,) = route_of(doc)["policies"]["mcpAuthorization"]["rules"]
    rules = authz.compile_rules([expression], path="r")
    claims = {"https://example.com/claims": {"in": 'say "hi"\\'}}
    base = authz.http_variables("POST", "/mcp", "h", [], "127.0.0.1", 1, claims)
    variables = authz.mcp_variables(base, method="m", kind="resource", name="file:///a", target="t")
    assert isinstance(rules.evaluate(variables), authz.Allow)


def test_a_rule_set_without_rules_allows_everything() -> None:
    rbac = [*RBAC, {"name": "open", "rules": []}]
    doc = convert_legacy(legacy([sse_listener(rbac=rbac)], [STDIO]))
    assert "policies" not in route_of(doc)


# ---------------------------------------------------------------- broken documents


def test_broken_listeners() -> None:
    data = legacy(
        [
            {
                "name": "a",
                "protocol": "MCP",
                "sse": {"address": "localhost", "port": 70000},
                "x": 1,
            },
            {"name": "b", "protocol": "A2A", "sse": {"address": "0.0.0.0", "port": 3001}},
            {"name": "c", "stdio": {}},
            {"protocol": "MCP", "sse": {"address": "0.0.0.0", "tls": {"cert_pem": {}}}},
            sse_listener("e", 3002),
            sse_listener("f", 3002),
        ],
        [STDIO],
    )
    assert errors_of(data) == [
        "listeners[0].sse.address: expected an IP address like 0.0.0.0 or [::], got 'localhost'",
        "listeners[0].sse.port: expected a port 0..65535, got 70000",
        "listeners[0].x: unknown key",
        "listeners[1].protocol: protocol A2A is not supported by agentgw",
        "listeners[2].stdio: not supported by agentgw",
        "listeners[3].sse.tls: not supported by agentgw",
        "listeners[3].name: required",
        "listeners[5].sse.port: port 3002 is already used by listeners[4]",
    ]


def test_broken_targets() -> None:
    data = legacy(
        [sse_listener()],
        [
            {"name": "Everything", "stdio": {"cmd": "npx", "args": ["a", 1]}},
            {"name": "api", "openapi": {"host": "petstore", "port": 443}},
            {"name": "f", "stdio": {"cmd": "x"}, "filters": [{"match": "echo"}]},
            {"name": "remote", "sse": {"host": "http://h/sse", "headers": [{"key": "k"}]}},
            {"name": "remote", "sse": {"host": "h", "port": 1}, "listeners": ["nope"]},
            {"name": "both", "stdio": {"cmd": "x"}, "sse": {"host": "h", "port": 1}},
            {"name": "lost", "stdio": {"cmd": "x"}, "listeners": ["sse", "nope"]},
        ],
    )
    assert errors_of(data) == [
        "targets.mcp[0].name: expected a name of lowercase letters, digits, '-' and '.', "
        "got 'Everything'",
        "targets.mcp[0].stdio.args[1]: expected a string, got 1",
        "targets.mcp[1].openapi: not supported by agentgw",
        "targets.mcp[2].filters: not supported by agentgw",
        "targets.mcp[3].sse.headers: not supported by agentgw",
        "targets.mcp[3].sse.port: required",
        "targets.mcp[4].name: duplicate target name 'remote' (also targets.mcp[3])",
        "targets.mcp[5]: expected one of sse, stdio",
        "targets.mcp[6].listeners[1]: no listener named 'nope'",
    ]


def test_broken_authn() -> None:
    listeners = [
        sse_listener("a", 1, authn={"jwt": {"local_jwks": {"file_path": "k"}}}),
        sse_listener(
            "b",
            2,
            authn={
                "jwt": {
                    "issuer": ["me"],
                    "local_jwks": {"file_path": "k"},
                    "remote_jwks": {"host": "idp", "port": 443},
                }
            },
        ),
        sse_listener(
            "c",
            3,
            authn={
                "jwt": {
                    "issuer": "me",
                    "audience": ["x", 2],
                    "remote_jwks": {"host": "idp", "port": 8443, "refresh_interval": "60s"},
                }
            },
        ),
        sse_listener("d", 4, authn={"jwt": {"issuer": ["me"], "local_jwks": {"inline": "%%"}}}),
        sse_listener("e", 5, authn={"oidc": {}}),
    ]
    assert errors_of(legacy(listeners, [STDIO])) == [
        "listeners[0].sse.authn.jwt.issuer: "
        "expected at least one issuer (agentgw always checks iss)",
        "listeners[1].sse.authn.jwt: expected one of local_jwks, remote_jwks",
        "listeners[2].sse.authn.jwt.issuer: expected a list, got 'me'",
        "listeners[2].sse.authn.jwt.audience[1]: expected a string, got 2",
        "listeners[2].sse.authn.jwt.remote_jwks.port: expected 443 (https) or 80 (http), got 8443",
        "listeners[2].sse.authn.jwt.remote_jwks.refresh_interval: not supported by agentgw",
        "listeners[3].sse.authn.jwt.local_jwks.inline: expected the JWKS as base64 text, got '%%'",
        "listeners[4].sse.authn.oidc: unknown key",
    ]


def test_broken_rbac() -> None:
    rbac = [
        {
            "name": "default",
            "rules": [
                {"key": "sub", "value": "me", "resource": {"type": "TASK", "id": "t"}},
                {"value": "me", "matcher": "STARTS_WITH", "resource": {"type": "TOOL"}},
                {"key": "sub", "value": "me"},
                "sub == me",
            ],
        },
        {"name": 7, "rules": {}},
    ]
    assert errors_of(legacy([sse_listener(rbac=rbac)], [STDIO])) == [
        "listeners[0].sse.rbac[0].rules[0].resource.type: "
        "expected one of TOOL, PROMPT, RESOURCE, got 'TASK'",
        "listeners[0].sse.rbac[0].rules[1].matcher: expected EQUALS or CONTAINS, got 'STARTS_WITH'",
        "listeners[0].sse.rbac[0].rules[1].key: required",
        "listeners[0].sse.rbac[0].rules[2].resource: required",
        "listeners[0].sse.rbac[0].rules[3]: expected an object, got 'sub == me'",
        "listeners[0].sse.rbac[1].name: expected a string, got 7",
        "listeners[0].sse.rbac[1].rules: expected a list, got an object",
    ]


def test_broken_document() -> None:
    data = {
        "type": "static",
        "tracing": {"tracer": {"otlp": {"endpoint": "http://localhost:4317"}}},
        "listeners": [],
        "targets": {"mcp": [], "a2a": [{"name": "agent", "host": "127.0.0.1", "port": 1}]},
        "metrics": {"tags": {"cluster": "x"}},
        "xds_address": "http://127.0.0.1:9977",
    }
    assert errors_of(data) == [
        "tracing: not supported by agentgw",
        "listeners: expected at least one MCP listener",
        "targets.a2a: not supported by agentgw",
        "metrics.tags: not supported by agentgw",
        "xds_address: unknown key",
    ]


def test_unserved_listener_and_partial_passthrough() -> None:
    targets = [
        {"name": "one", "listeners": ["a"], "sse": {"host": "h", "port": 1}},
        {
            "name": "two",
            "listeners": ["a"],
            "sse": {"host": "h", "port": 2, "auth": {"passthrough": {}}},
        },
    ]
    data = legacy([sse_listener("a", 1), sse_listener("b", 2)], targets)
    assert errors_of(data) == [
        "listeners[1]: no target in targets.mcp is served on this listener",
        "targets.mcp[1].sse.auth.passthrough: "
        "passthrough on only some targets of listener 'a' is not supported by agentgw",
    ]


def test_convert_legacy_raises_its_problems() -> None:
    with pytest.raises(ConfigError) as info:
        convert_legacy(legacy([{"name": "a"}], [STDIO]))
    assert info.value.errors == ["listeners[0].sse: required"]


# ---------------------------------------------------------------- the command


def test_validate_only_accepts_a_legacy_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "legacy.json"
    path.write_text(json.dumps(EXAMPLE, indent=2))
    # The example's JWKS file, relative to the working directory.
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    n = numbers.public_numbers().n.to_bytes(256, "big")
    jwk = {"kty": "RSA", "kid": "k1", "alg": "RS256", "n": b64(n), "e": b64(b"\x01\x00\x01")}
    (tmp_path / "manifests" / "jwt").mkdir(parents=True)
    (tmp_path / "manifests" / "jwt" / "pub-key").write_text(json.dumps({"keys": [jwk]}))
    done = subprocess.run(
        [sys.executable, "-m", "agentgw", "--validate-only", "-f", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "configuration is valid\n"
    head, _, shown = done.stderr.partition("\n")
    assert head == (
        f'{path}: the legacy static format ("type": "static") is deprecated; '
        "the equivalent config in the current format is:"
    )
    assert yaml.safe_load(shown) == EXPECTED


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
