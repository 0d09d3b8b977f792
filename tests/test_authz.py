from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentgw.errors import ConfigError
from agentgw.policy.authz import (
    ALLOW,
    MAX_CLAIM_DEPTH,
    UNREPRESENTABLE,
    Allow,
    Deny,
    RuleSet,
    compile_rules,
    filter_list,
    http_variables,
    mcp_variables,
)

PATH = "binds[0].listeners[0].routes[0].policies.authorization.rules"
LOGGER = "agentgw.policy.authz"


def rules(*items: object) -> RuleSet:
    return compile_rules(list(items), path=PATH)


def variables(
    claims: Mapping[str, object] | None = None,
    *,
    method: str = "POST",
    path: str = "/mcp",
    host: str = "gw.example:3000",
    headers: list[tuple[bytes, bytes]] | None = None,
    address: str = "10.1.2.3",
    port: int = 40000,
) -> dict[str, object]:
    return http_variables(method, path, host, headers or [], address, port, claims)


def tool(name: str, claims: Mapping[str, object] | None = None, target: str = "a") -> Any:
    return mcp_variables(
        variables(claims), method="tools/call", kind="tool", name=name, target=target
    )


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


# ---------------------------------------------------------------- semantics


def test_empty_rule_set_allows() -> None:
    rs = rules()
    assert not rs.has_rules()
    assert not rs.has_variable("jwt")
    assert rs.evaluate(variables()) == ALLOW
    assert rs.evaluate({}) == ALLOW


def test_plain_strings_are_allow_rules() -> None:
    rs = rules('jwt.sub == "alice"', '{"allow": 1}.allow == 2')
    assert rs.has_rules() and rs.has_variable("jwt") and not rs.has_variable("request")
    assert rs.evaluate(variables({"sub": "alice"})) == ALLOW
    assert rs.evaluate(variables({"sub": "bob"})) == Deny(None, "allow")


def test_allow_rules_are_ored() -> None:
    rs = rules({"allow": 'jwt.sub == "alice"'}, {"allow": 'jwt.sub == "bob"'})
    assert rs.evaluate(variables({"sub": "alice"})) == ALLOW
    assert rs.evaluate(variables({"sub": "bob"})) == ALLOW
    assert rs.evaluate(variables({"sub": "eve"})) == Deny(None, "allow")
    assert rs.evaluate(variables(None)) == Deny(None, "allow")


def test_deny_wins_over_allow() -> None:
    rs = rules("true", {"deny": 'jwt.sub == "eve"'}, {"allow": "true"})
    assert rs.evaluate(variables({"sub": "alice"})) == ALLOW
    assert rs.evaluate(variables({"sub": "eve"})) == Deny(1, "deny")


def test_only_deny_rules_allow_the_rest() -> None:
    rs = rules({"deny": 'jwt.sub == "eve"'}, {"deny": 'request.method == "DELETE"'})
    assert rs.evaluate(variables({"sub": "alice"})) == ALLOW
    assert rs.evaluate(variables({"sub": "eve"})) == Deny(0, "deny")
    assert rs.evaluate(variables({"sub": "alice"}, method="DELETE")) == Deny(1, "deny")


def test_require_false_denies_even_when_an_allow_holds() -> None:
    rs = rules("true", {"require": "has(jwt.sub)"}, {"require": 'jwt.iss == "idp"'})
    assert rs.evaluate(variables({"sub": "alice", "iss": "idp"})) == ALLOW
    assert rs.evaluate(variables({"iss": "idp"})) == Deny(1, "require")
    assert rs.evaluate(variables({"sub": "alice", "iss": "other"})) == Deny(2, "require")


def test_only_require_rules_allow_when_met() -> None:
    rs = rules({"require": "has(jwt.sub)"})
    assert rs.evaluate(variables({"sub": "alice"})) == ALLOW
    assert rs.evaluate(variables(None)) == Deny(0, "require")


def test_require_and_allow_both_apply() -> None:
    rs = rules({"require": "has(jwt.sub)"}, {"allow": 'jwt.sub == "alice"'})
    assert rs.evaluate(variables({"sub": "alice"})) == ALLOW
    assert rs.evaluate(variables({"sub": "bob"})) == Deny(None, "allow")


def test_deny_is_checked_before_require() -> None:
    rs = rules({"require": "false"}, {"deny": "true"})
    assert rs.evaluate(variables()) == Deny(1, "deny")


def test_deny_reasons() -> None:
    assert Deny(2, "deny").reason == "deny rule 2 matched"
    assert Deny(0, "require").reason == "require rule 0 not met"
    assert Deny(None, "allow").reason == "no allow rule matched"
    assert "cannot" in Deny(None, "error").reason


# ---------------------------------------------------------------- runtime errors


def test_failing_rules_count_as_false() -> None:
    v = variables({"sub": "alice"})  # no "groups" claim
    missing = '"admins" in jwt.groups'
    # A failing deny does not deny.
    assert rules({"deny": missing}).evaluate(v) == ALLOW
    # A failing require denies.
    assert rules({"require": missing}).evaluate(v) == Deny(0, "require")
    # A failing allow does not allow; another allow still can.
    assert rules(missing).evaluate(v) == Deny(None, "allow")
    assert rules(missing, 'jwt.sub == "alice"').evaluate(v) == ALLOW


@pytest.mark.parametrize(
    "expr",
    [
        "jwt.sub > 1",  # no overload: string > int
        "1 / jwt.zero == 1",  # division by zero
        "jwt.list[5] == 1",  # index out of range
        "jwt.missing.deeper == 1",  # no such key
        "int(jwt.sub) == 1",  # function error
        "cidr('10.0.0.0/8').containsIP(source.address)",  # agentgateway-only function
        "jwt.sub",  # not a bool
    ],
)
def test_every_kind_of_runtime_failure_is_false(expr: str) -> None:
    v = variables({"sub": "alice", "zero": 0, "list": [1]})
    assert rules(expr).evaluate(v) == Deny(None, "allow")
    assert rules({"deny": expr}).evaluate(v) == ALLOW
    assert rules({"require": expr}).evaluate(v) == Deny(0, "require")


def test_a_failing_rule_warns_once_without_values(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    rs = rules('jwt.sub == "alice"', {"require": "jwt.tenants[jwt.tenant] == 1"})
    secret = "tenant-s3cr3t"
    v = variables({"sub": "alice", "tenant": secret, "tenants": {}})
    for _ in range(3):
        assert rs.evaluate(v) == Deny(1, "require")
    messages = warnings_of(caplog)
    assert len(messages) == 1
    assert f"{PATH}[1]" in messages[0]
    assert "jwt.tenants[jwt.tenant] == 1" in messages[0]
    assert "KeyError" in messages[0]
    # The CEL library's own message is KeyError('tenant-s3cr3t'): never logged.
    assert secret not in caplog.text


def test_each_failing_rule_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    rs = rules("jwt.a == 1", "jwt.b == 1", "jwt.c")
    for _ in range(2):
        assert rs.evaluate(variables({"c": "not a bool"})) == Deny(None, "allow")
    messages = warnings_of(caplog)
    assert len(messages) == 3
    assert [f"{PATH}[{i}]" in m for i, m in enumerate(messages)] == [True] * 3
    assert "not a bool" in messages[2] and "str" in messages[2]
    # Another rule set keeps its own record.
    rules("jwt.a == 1").evaluate(variables({}))
    assert len(warnings_of(caplog)) == 4


def test_successful_rules_do_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    rs = rules("has(jwt.sub) && jwt.sub == 'alice'", {"deny": "has(jwt.banned)"})
    rs.evaluate(variables({}))
    rs.evaluate(variables({"sub": "alice"}))
    assert warnings_of(caplog) == []


# ---------------------------------------------------------------- compile errors


def test_compile_error_names_path_expression_and_position() -> None:
    with pytest.raises(ConfigError) as info:
        rules("true", {"deny": "false"}, {"require": "jwt.sub == "}, 'jwt.sub == "x" &&& 1')
    errors = info.value.errors
    assert len(errors) == 2
    assert errors[0].startswith(f"{PATH}[2].require: invalid CEL expression 'jwt.sub == ': 1:12:")
    assert "Syntax error" in errors[0]
    assert errors[1].startswith(
        f"{PATH}[3]: invalid CEL expression 'jwt.sub == \"x\" &&& 1': 1:18:"
    )
    assert "^" in errors[1]


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        (1, "[0]: must be a CEL string or a mapping"),
        (None, "[0]: must be a CEL string or a mapping"),
        ({"permit": "true"}, "[0]: unknown key 'permit'"),
        ({}, "[0]: a rule has exactly one of allow, deny, require (found none)"),
        (
            {"allow": "true", "deny": "false"},
            "[0]: a rule has exactly one of allow, deny, require (found allow, deny)",
        ),
        ({"deny": 3}, "[0].deny: must be a CEL string"),
        ({"allow": ""}, "[0].allow: invalid CEL expression ''"),
    ],
)
def test_malformed_rules(rule: object, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        rules(rule)
    assert info.value.errors[0].startswith(PATH + problem)


@pytest.mark.parametrize("value", ["true", {"rules": []}, None, 3])
def test_rules_must_be_a_list(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        compile_rules(value, path=PATH)
    assert info.value.errors == [f"{PATH}: must be a list of rules"]


def test_every_expression_is_compiled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import cel

    calls: list[str] = []
    real = cel.compile

    def counting(expr: str) -> cel.Program:
        calls.append(expr)
        return real(expr)

    monkeypatch.setattr(cel, "compile", counting)
    rs = rules('mcp.tool.name == "echo"', {"deny": "jwt.sub == 'eve'"})
    assert len(calls) == 2
    for name in ["echo", "add", "echo"]:
        rs.evaluate(tool(name))
    filter_list(rs, variables(), "tools/list", [{"name": "echo"}], "tool", "a")
    assert len(calls) == 2


# ---------------------------------------------------------------- HTTP variables


def test_http_variables_shape() -> None:
    v = variables(
        {"sub": "alice"},
        method="GET",
        path="/mcp/x?a=1",
        headers=[(b"X-Tenant", b"t1"), (b"accept", b"a"), (b"accept", b"b")],
    )
    assert v == {
        "request": {
            "method": "GET",
            "path": "/mcp/x",
            "pathAndQuery": "/mcp/x?a=1",
            "host": "gw.example:3000",
            "headers": {"x-tenant": "t1", "accept": "a, b"},
        },
        "source": {"address": "10.1.2.3", "port": 40000},
        "jwt": {"sub": "alice"},
    }


def test_request_variables() -> None:
    v = variables(
        method="GET",
        path="/admin?x=1",
        headers=[(b"x-tenant", b"acme"), (b"x-multi", b"a"), (b"x-multi", b"b")],
    )
    assert rules('request.headers["x-tenant"] == "acme"').evaluate(v) == ALLOW
    assert rules('request.headers["x-tenant"] == "other"').evaluate(v) == Deny(None, "allow")
    assert rules('request.headers["x-multi"] == "a, b"').evaluate(v) == ALLOW
    assert rules('!("x-absent" in request.headers)').evaluate(v) == ALLOW
    assert rules('request.method == "GET" && request.path == "/admin"').evaluate(v) == ALLOW
    assert rules('request.host == "gw.example:3000"').evaluate(v) == ALLOW
    assert rules('request.pathAndQuery.endsWith("?x=1")').evaluate(v) == ALLOW


def test_a_header_value_that_is_not_utf8_is_left_out() -> None:
    v: Any = variables(headers=[(b"x-a", b"ok"), (b"x-b", b"\xff"), (b"x-b", b"fine")])
    assert v["request"]["headers"] == {"x-a": "ok"}


def test_source_variables() -> None:
    v = variables(address="192.168.0.7", port=5555)
    assert rules('source.address == "192.168.0.7" && source.port == 5555').evaluate(v) == ALLOW
    assert rules('source.address.startsWith("10.")').evaluate(v) == Deny(None, "allow")


def test_nested_claims() -> None:
    claims = {"sub": "alice", "groups": ["dev", "admins"], "org": {"id": "o-1", "tier": 3}}
    v = variables(claims)
    assert rules('"admins" in jwt.groups').evaluate(v) == ALLOW
    assert rules('jwt.org.id == "o-1" && jwt.org.tier >= 2').evaluate(v) == ALLOW
    assert rules('jwt.groups.exists(g, g.startsWith("adm"))').evaluate(v) == ALLOW
    assert rules('"ops" in jwt.groups').evaluate(v) == Deny(None, "allow")


def test_without_a_token_jwt_is_an_empty_map() -> None:
    v = variables(None)
    assert rules("!has(jwt.sub)").evaluate(v) == ALLOW
    assert rules("size(jwt) == 0").evaluate(v) == ALLOW


def test_claims_are_made_representable() -> None:
    v: Any = variables({"name": "a\ud800b", "big": 2**80, "huge": 10**400, "t": ("x",)})
    jwt = v["jwt"]
    assert jwt["name"] == "a\ufffdb"
    assert jwt["big"] == float(2**80)
    assert jwt["huge"] == float("inf")
    assert jwt["t"] == ["x"]
    assert rules('jwt.name.startsWith("a")', {"require": "jwt.huge > 0.0"}).evaluate(v) == ALLOW


def test_claims_nested_too_deep_deny_rule_sets_that_read_jwt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    deep: dict[str, object] = {}
    cur = deep
    for _ in range(20_000):  # would crash the CEL library's conversion
        nxt: dict[str, object] = {}
        cur["a"] = nxt
        cur = nxt
    v = variables(deep)
    assert v["jwt"] is UNREPRESENTABLE
    # Fail closed, even for a deny-only rule set.
    rs = rules({"deny": 'jwt.sub == "eve"'})
    assert rs.evaluate(v) == Deny(None, "error")
    rs.evaluate(v)
    assert len(warnings_of(caplog)) == 1
    # A rule set that does not read jwt is unaffected.
    assert rules('request.method == "POST"').evaluate(v) == ALLOW


def test_claims_at_the_depth_limit_are_kept() -> None:
    nested: object = "x"
    for _ in range(MAX_CLAIM_DEPTH - 1):
        nested = {"a": nested}
    v = variables({"a": nested})
    assert v["jwt"] is not UNREPRESENTABLE
    assert rules("has(jwt.a.a.a)").evaluate(v) == ALLOW


def test_non_json_claims_are_unrepresentable() -> None:
    assert variables({"s": {1, 2}})["jwt"] is UNREPRESENTABLE
    assert variables({"m": {1: "x"}})["jwt"] is UNREPRESENTABLE


def test_unconvertible_variables_fail_closed() -> None:
    # Variables built by hand, bypassing http_variables' checks.
    rs = rules({"deny": "jwt.x == 1"})
    assert rs.evaluate({"jwt": {"x": object()}}) == Deny(None, "error")


def test_only_variables_the_rules_name_are_converted() -> None:
    # request holds something CEL cannot take; rules that never read it work.
    v = {"request": object(), "jwt": {"sub": "alice"}}
    assert rules('jwt.sub == "alice"').evaluate(v) == ALLOW
    assert rules('request.method == "GET"').evaluate(v) == Deny(None, "error")


# ---------------------------------------------------------------- MCP variables


def test_mcp_variables_shape() -> None:
    base = variables({"sub": "alice"})
    v = mcp_variables(base, method="resources/read", kind="resource", name="file:///a", target="fs")
    assert v["mcp"] == {
        "methodName": "resources/read",
        "resource": {"name": "file:///a", "target": "fs"},
    }
    assert v["jwt"] == {"sub": "alice"}
    assert "mcp" not in base


def test_mcp_tool_name_and_target() -> None:
    rs = rules('mcp.tool.name == "echo"', 'mcp.tool.target == "b"')
    assert rs.evaluate(tool("echo", target="a")) == ALLOW
    assert rs.evaluate(tool("add", target="b")) == ALLOW
    assert rs.evaluate(tool("add", target="a")) == Deny(None, "allow")
    assert rules('mcp.tool.target == "a"').evaluate(tool("anything")) == ALLOW


def test_mcp_claims_based_rules() -> None:
    rs = rules('mcp.tool.name == "echo"', '"admins" in jwt.groups')
    assert rs.evaluate(tool("delete", {"groups": ["admins"]})) == ALLOW
    assert rs.evaluate(tool("delete", {"groups": ["dev"]})) == Deny(None, "allow")
    assert rs.evaluate(tool("delete", None)) == Deny(None, "allow")
    assert rs.evaluate(tool("echo", None)) == ALLOW


def test_mcp_prompt_and_resource() -> None:
    base = variables()
    prompt = mcp_variables(base, method="prompts/get", kind="prompt", name="greet", target="a")
    resource = mcp_variables(
        base, method="resources/read", kind="resource", name="file:///etc/motd", target="a"
    )
    rs = rules('mcp.prompt.name == "greet"', 'mcp.resource.name.startsWith("file:///etc/")')
    assert rs.evaluate(prompt) == ALLOW
    assert rs.evaluate(resource) == ALLOW
    # A tool rule fails (no mcp.tool) on a prompt: false.
    assert rules('mcp.tool.name == "greet"').evaluate(prompt) == Deny(None, "allow")


def test_mcp_method_name() -> None:
    rs = rules({"deny": 'mcp.methodName == "tools/call" && mcp.tool.name == "rm"'})
    assert rs.evaluate(tool("rm")) == Deny(0, "deny")
    listed = mcp_variables(variables(), method="tools/list", kind="tool", name="rm", target="a")
    assert rs.evaluate(listed) == ALLOW


def test_mcp_rules_at_http_level_are_false() -> None:
    # authorization (HTTP level) has no mcp variable.
    assert rules('mcp.tool.name == "echo"').evaluate(variables()) == Deny(None, "allow")


# ---------------------------------------------------------------- filter_list


TOOLS = [{"name": "echo"}, {"name": "add"}, {"name": "delete"}, {"description": "no name"}]


def test_filter_list_by_name() -> None:
    rs = rules('mcp.tool.name == "echo"', {"allow": 'mcp.tool.name == "add"'})
    kept = filter_list(rs, variables(), "tools/list", TOOLS, "tool", "a")
    assert kept == [{"name": "echo"}, {"name": "add"}]


def test_filter_list_by_claims_and_target() -> None:
    rs = rules(
        'mcp.tool.name == "echo"',
        '"admins" in jwt.groups && mcp.tool.target == "a"',
    )
    admin = variables({"groups": ["admins"]})
    assert filter_list(rs, admin, "tools/list", TOOLS, "tool", "a") == TOOLS[:3]
    assert filter_list(rs, admin, "tools/list", TOOLS, "tool", "b") == [{"name": "echo"}]
    assert filter_list(rs, variables(None), "tools/list", TOOLS, "tool", "a") == [{"name": "echo"}]


def test_filter_list_deny_only() -> None:
    rs = rules({"deny": 'mcp.tool.name == "delete"'})
    kept = filter_list(rs, variables(), "tools/list", TOOLS, "tool", "a")
    assert kept == [{"name": "echo"}, {"name": "add"}]  # nameless item dropped


def test_filter_list_without_rules_keeps_everything() -> None:
    assert filter_list(rules(), variables(), "tools/list", TOOLS, "tool", "a") == TOOLS


def test_filter_list_rules_independent_of_the_item() -> None:
    assert filter_list(rules("has(jwt.sub)"), variables({"sub": "x"}), "m", TOOLS, "tool", "a") == (
        TOOLS
    )
    assert filter_list(rules("has(jwt.sub)"), variables(), "m", TOOLS, "tool", "a") == []


def test_filter_list_resources_prompts_and_custom_names() -> None:
    resources = [{"uri": "file:///a"}, {"uri": "file:///b"}, {"uriTemplate": "file:///{x}"}]
    rs = rules('mcp.resource.name != "file:///b"')
    kept = filter_list(rs, variables(), "resources/list", resources, "resource", "fs")
    assert kept == [{"uri": "file:///a"}, {"uriTemplate": "file:///{x}"}]

    prompts = ["greet", "shout"]
    rs = rules('mcp.prompt.name == "greet" && mcp.methodName == "prompts/list"')
    kept_names = filter_list(
        rs, variables(), "prompts/list", prompts, "prompt", "a", name_of=lambda p: p
    )
    assert kept_names == ["greet"]


def test_filter_list_fails_closed_on_unrepresentable_claims() -> None:
    v = variables({"s": {1, 2}})
    # jwt is not read: filtering works.
    rs = rules({"deny": 'mcp.tool.name == "delete"'})
    assert filter_list(rs, v, "tools/list", TOOLS, "tool", "a") == TOOLS[:2]
    rs = rules({"deny": 'jwt.sub == "eve"'})
    assert filter_list(rs, v, "tools/list", TOOLS, "tool", "a") == []


def test_filter_list_agrees_with_evaluate() -> None:
    rs = rules(
        {"deny": 'mcp.tool.name == "delete"'},
        {"require": "has(jwt.sub)"},
        'mcp.tool.name.startsWith("e") || "admins" in jwt.groups',
    )
    for claims in [None, {"sub": "a"}, {"sub": "a", "groups": ["admins"]}]:
        base = variables(claims)
        expected = [
            t
            for t in TOOLS[:3]
            if isinstance(
                rs.evaluate(
                    mcp_variables(
                        base, method="tools/list", kind="tool", name=t["name"], target="a"
                    )
                ),
                Allow,
            )
        ]
        assert filter_list(rs, base, "tools/list", TOOLS, "tool", "a") == expected


# ---------------------------------------------------------------- never raises

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(st.characters(exclude_categories=()), max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(st.characters(exclude_categories=()), max_size=6), children, max_size=4
        )
    ),
    max_leaves=20,
)
claim_dicts = st.dictionaries(
    st.sampled_from(["sub", "groups", "org", "aud", "exp", "x"])
    | st.text(st.characters(exclude_categories=()), max_size=6),
    json_values,
    max_size=6,
)

FUZZ_RULES = rules(
    {"deny": 'jwt.sub == "eve"'},
    {"deny": "jwt.exp < 0"},
    {"require": "size(jwt) >= 0"},
    '"admins" in jwt.groups',
    'jwt.org.id == "o" && jwt.org.tier > 2',
    "jwt.aud.exists(a, a == 'x')",
    "jwt.x",
    "jwt.x + 1 == 2",
    'mcp.tool.name == "echo" && jwt.sub.startsWith("a")',
    "jwt.groups[0] == jwt.sub",
)


@settings(max_examples=300, deadline=None)
@given(claims=claim_dicts, name=st.text(max_size=6))
def test_evaluation_of_arbitrary_claims_never_raises(claims: dict[str, Any], name: str) -> None:
    base = variables(claims)
    decision = FUZZ_RULES.evaluate(
        mcp_variables(base, method="tools/call", kind="tool", name=name, target="a")
    )
    assert isinstance(decision, Allow | Deny)
    kept = filter_list(FUZZ_RULES, base, "tools/list", TOOLS, "tool", "a")
    assert all(t in TOOLS for t in kept)
