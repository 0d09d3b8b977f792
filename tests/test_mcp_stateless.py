"""The 2026-07-28 revision's rules, pure: the ``_meta`` envelope, the
standard headers and ``Mcp-Param-*`` (SEP-2243), error statuses, listen
filters."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from agentgw.errors import ClientError, InvalidParams
from agentgw.mcp import stateless
from agentgw.mcp.stateless import ListenFilter

VERSION = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": VERSION,
    "io.modelcontextprotocol/clientCapabilities": {},
}


def request(method: str, params: dict[str, Any] | None = None, meta: Any = META) -> dict[str, Any]:
    body = dict(params or {})
    if meta is not None:
        body["_meta"] = meta
    return {"jsonrpc": "2.0", "id": 7, "method": method, "params": body}


def headers(method: str, name: str | None = None, **extra: str) -> list[tuple[bytes, bytes]]:
    out = [(b"mcp-protocol-version", VERSION.encode()), (b"mcp-method", method.encode())]
    if name is not None:
        out.append((b"mcp-name", name.encode()))
    out += [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in extra.items()]
    return out


def b64(text: str) -> str:
    return "=?base64?" + base64.b64encode(text.encode()).decode() + "?="


# ---------------------------------------------------------------- _meta


@pytest.mark.parametrize(
    "meta",
    [
        None,
        "not an object",
        {"io.modelcontextprotocol/clientCapabilities": {}},
        {"io.modelcontextprotocol/protocolVersion": VERSION},
        {**META, "io.modelcontextprotocol/clientCapabilities": []},
        {**META, "io.modelcontextprotocol/clientInfo": "me"},
        {**META, "io.modelcontextprotocol/logLevel": "loud"},
    ],
)
def test_a_bad_envelope_is_invalid_params(meta: Any) -> None:
    with pytest.raises(InvalidParams) as caught:
        stateless.check_request(headers("tools/list"), request("tools/list", meta=meta))
    assert caught.value.code == -32602
    assert stateless.status_of(caught.value.code) == 400


def test_client_info_is_optional_and_the_envelope_is_read() -> None:
    meta = {**META, "io.modelcontextprotocol/logLevel": "warning"}
    meta["io.modelcontextprotocol/clientCapabilities"] = {"sampling": {}}
    envelope = stateless.check_request(headers("tools/list"), request("tools/list", meta=meta))
    assert envelope.version == VERSION and envelope.has_capability("sampling")
    assert not envelope.has_capability("elicitation")
    info = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info"}}
    error = {**info, "params": {"level": "error"}}
    assert not envelope.wants_log(info) and envelope.wants_log(error)
    quiet = stateless.parse_envelope(request("tools/list"))
    assert not quiet.wants_log(error)  # no logLevel: no logs at all


def test_unsupported_version_names_the_requested_and_the_supported() -> None:
    meta = {**META, "io.modelcontextprotocol/protocolVersion": "v999.0.0"}
    hdrs = [(b"mcp-protocol-version", b"v999.0.0"), (b"mcp-method", b"server/discover")]
    with pytest.raises(ClientError) as caught:
        stateless.check_request(hdrs, request("server/discover", meta=meta))
    assert caught.value.code == -32022 and caught.value.status == 400
    assert caught.value.data == {"supported": [VERSION], "requested": "v999.0.0"}


@pytest.mark.parametrize("header", [None, b"v999.0.0", b"2025-11-25"])
def test_protocol_version_header_must_match_meta(header: bytes | None) -> None:
    hdrs = [(b"mcp-method", b"tools/list")]
    if header is not None:
        hdrs.append((b"mcp-protocol-version", header))
    with pytest.raises(ClientError) as caught:
        stateless.check_request(hdrs, request("tools/list"))
    assert caught.value.code == -32020


# ---------------------------------------------------------------- Mcp-Method, Mcp-Name


@pytest.mark.parametrize(
    ("hdrs", "problem"),
    [
        (headers("tools/list"), None),
        ([(b"mcp-protocol-version", VERSION.encode())], "Mcp-Method header is required"),
        (headers("prompts/list"), "Mcp-Method header does not match the body"),
        (headers("TOOLS/LIST"), "Mcp-Method header does not match the body"),
        (headers(" tools/list\t"), None),
    ],
)
def test_mcp_method(hdrs: list[tuple[bytes, bytes]], problem: str | None) -> None:
    assert stateless.standard_header_problem(hdrs, request("tools/list")) == problem


@pytest.mark.parametrize(
    ("method", "params", "name", "ok"),
    [
        ("tools/call", {"name": "echo"}, "echo", True),
        ("tools/call", {"name": "echo"}, "  echo  ", True),
        ("tools/call", {"name": "echo"}, "wrong_tool_name", False),
        ("tools/call", {"name": "echo"}, None, False),
        ("tools/call", {"name": "héllo"}, b64("héllo"), True),
        ("tools/call", {"name": "echo"}, "=?base64?ZWNobw?=", False),  # bad padding
        ("prompts/get", {"name": "greet"}, "greet", True),
        ("resources/read", {"uri": "demo://a"}, "demo://a", True),
        ("resources/read", {"uri": "demo://a"}, "demo://b", False),
        ("tasks/get", {"taskId": "t1"}, "t2", False),
        ("tools/list", {}, None, True),
    ],
)
def test_mcp_name(method: str, params: dict[str, Any], name: str | None, ok: bool) -> None:
    problem = stateless.standard_header_problem(headers(method, name), request(method, params))
    assert (problem is None) is ok


def test_header_values_decode() -> None:
    assert stateless.decode_header_value(b64("Hello")) == "Hello"
    assert stateless.decode_header_value("=?base64?SGVsbG8?=") is None  # padding
    assert stateless.decode_header_value("=?base64?SGVs!!!bG8=?=") is None  # alphabet
    assert stateless.decode_header_value("SGVsbG8=") == "SGVsbG8="  # literal
    assert stateless.decode_header_value("=?base64?SGVsbG8=") == "=?base64?SGVsbG8="  # no ?=


# ---------------------------------------------------------------- Mcp-Param-*

SCHEMA = {
    "type": "object",
    "properties": {
        "region": {"type": "string", "x-mcp-header": "Region"},
        "count": {"type": "integer", "x-mcp-header": "Count"},
        "note": {"type": "string"},
    },
}


def param_problem(args: dict[str, Any], **given: str) -> str | None:
    found = {f"mcp-param-{k.lower()}": v for k, v in given.items()}
    return stateless.param_header_problem(SCHEMA, args, found.get)


def test_param_headers_match_the_arguments() -> None:
    assert param_problem({"region": "eu", "count": 3}, Region="eu", Count="3") is None
    assert param_problem({"region": "Hello"}, Region=b64("Hello")) is None
    assert param_problem({"region": "SGVsbG8="}, Region="SGVsbG8=") is None
    assert param_problem({"note": "x"}) is None  # nothing sent that needs a header
    assert param_problem({"region": " eu "}, Region=b64(" eu ")) is None


@pytest.mark.parametrize(
    ("args", "given", "problem"),
    [
        ({"region": "Hello"}, {"Region": "=?base64?SGVsbG8?="}, "not valid Base64"),
        ({"region": "Hello"}, {"Region": "=?base64?SGVs!!!bG8=?="}, "not valid Base64"),
        ({"region": "test-value"}, {}, "Mcp-Param-Region header is required"),
        ({"region": "eu"}, {"Region": "us"}, "does not match"),
        ({}, {"Region": "eu"}, "does not match"),
        ({"count": 3}, {"Count": "4"}, "does not match"),
    ],
)
def test_param_headers_refused(args: dict[str, Any], given: dict[str, str], problem: str) -> None:
    found = param_problem(args, **given)
    assert found is not None and problem in found


def test_a_tool_without_a_schema_has_no_param_headers() -> None:
    assert stateless.param_header_problem(None, {"region": "eu"}, lambda _: None) is None


# ---------------------------------------------------------------- what a request is


def test_which_posts_are_2026_requests() -> None:
    v2026 = [(b"mcp-protocol-version", b"2026-07-28")]
    v2025 = [(b"mcp-protocol-version", b"2025-11-25")]
    plain = request("tools/list", meta=None)
    assert stateless.is_stateless_request(v2026, plain, has_session=False)
    assert stateless.is_stateless_request([], request("tools/list"), has_session=False)
    assert stateless.is_stateless_request(v2025, request("server/discover"), has_session=False)
    assert not stateless.is_stateless_request(v2025, plain, has_session=False)
    assert not stateless.is_stateless_request(v2026, plain, has_session=True)
    initialize = request("initialize", meta=None)
    assert not stateless.is_stateless_request([], initialize, has_session=False)


def test_error_statuses() -> None:
    assert [stateless.status_of(c) for c in (-32601, -32602, -32020, -32021, -32022)] == [
        404,
        400,
        400,
        400,
        400,
    ]
    assert stateless.status_of(-32603) == 200 and stateless.status_of("x") == 200
    missing = stateless.missing_capability("sampling")
    assert missing.code == -32021 and missing.status == 400
    assert missing.data == {"requiredCapabilities": {"sampling": {}}}


def test_an_unknown_resource_is_invalid_params() -> None:
    error = {"code": -32002, "message": "Resource not found", "data": {"uri": "x://y"}}
    translated = stateless.to_stateless_error("resources/read", error, "x://y")
    assert translated == {**error, "code": -32602}
    assert stateless.to_stateless_error("tools/call", error) == error
    bare = {"code": -32602, "message": "Resource x://z not found"}
    assert stateless.to_stateless_error("resources/read", bare, "x://z") == {
        **bare,
        "data": {"uri": "x://z"},
    }
    internal = {"code": -32603, "message": "boom"}
    assert stateless.to_stateless_error("resources/read", internal, "x://z") == internal


# ---------------------------------------------------------------- subscriptions/listen


def note(method: str, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params}


def test_listen_filter_honors_only_what_the_targets_offer() -> None:
    wanted = ListenFilter.from_params(
        {
            "notifications": {
                "toolsListChanged": True,
                "promptsListChanged": True,
                "resourceSubscriptions": ["a://1"],
            }
        }
    )
    caps = {"tools": {"listChanged": True}, "resources": {"subscribe": True}}
    honored = wanted.honored(caps)
    assert honored.describe() == {"toolsListChanged": True, "resourceSubscriptions": ["a://1"]}
    assert honored.accepts(note("notifications/tools/list_changed"))
    assert not honored.accepts(note("notifications/prompts/list_changed"))
    assert honored.accepts(note("notifications/resources/updated", uri="a://1"))
    assert not honored.accepts(note("notifications/resources/updated", uri="a://2"))
    assert not honored.accepts(note("notifications/message", level="info"))
    assert wanted.honored({}).describe() == {}


@pytest.mark.parametrize(
    "params", [{}, {"notifications": []}, {"notifications": {"resourceSubscriptions": "a"}}]
)
def test_listen_filter_refuses_malformed(params: dict[str, Any]) -> None:
    with pytest.raises(InvalidParams):
        ListenFilter.from_params(params)


def test_listen_messages_carry_the_subscription_id() -> None:
    ack = stateless.acknowledgment("listen-1", ListenFilter(tools=True))
    assert ack["method"] == "notifications/subscriptions/acknowledged"
    assert ack["params"]["notifications"] == {"toolsListChanged": True}
    assert ack["params"]["_meta"] == {"io.modelcontextprotocol/subscriptionId": "listen-1"}
    updated = note("notifications/resources/updated", uri="a://1", _meta={"k": 1})
    tagged = stateless.tagged(updated, 5)
    assert tagged["params"] == {
        "uri": "a://1",
        "_meta": {"k": 1, "io.modelcontextprotocol/subscriptionId": 5},
    }
