"""The no-I/O core of MCP federation: SSE, JSON-RPC, names, merging, ids,
session tokens, protocol versions. Synchronous, no sockets."""

from __future__ import annotations

import base64
import json
import os
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentgw._version import __version__
from agentgw.errors import UpstreamError
from agentgw.mcp import merge, names, versions
from agentgw.mcp.ids import IdMap, IdMapFull, Route
from agentgw.mcp.session_token import (
    MAX_TOKEN_CHARS,
    InvalidSession,
    SessionCodec,
    SessionState,
    parse_key,
)
from agentgw.upstream.mcp.streamable import JsonLines
from agentgw.wire import jsonrpc
from agentgw.wire.sse import SSEDecoder, SSEError, SSEEvent, encode_comment, encode_event

# ---------------------------------------------------------------- SSE


def decode_all(data: bytes, **kwargs: Any) -> list[SSEEvent]:
    return SSEDecoder(**kwargs).feed(data)


def decode_split(chunks: list[bytes], **kwargs: Any) -> list[SSEEvent]:
    decoder = SSEDecoder(**kwargs)
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def test_sse_fields() -> None:
    stream = (
        b": a comment\n"
        b"event: endpoint\n"
        b"id: 7\n"
        b"retry: 1500\n"
        b"data: first\n"
        b"data:  two spaces\n"
        b"data\n"
        b"unknown: x\n"
        b"\n"
    )
    assert decode_all(stream) == [
        SSEEvent(event="endpoint", data="first\n two spaces\n", id="7", retry=1500)
    ]


def test_sse_defaults_and_line_ends() -> None:
    events = decode_all(b"data: a\r\n\r\ndata: b\r\rdata: c\n\n")
    assert events == [SSEEvent(data="a"), SSEEvent(data="b"), SSEEvent(data="c")]
    assert events[0].event == "message" and events[0].id is None and events[0].retry is None


def test_sse_cr_at_chunk_end_then_lf() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\r") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\r") == [SSEEvent(data="x")]
    assert decoder.feed(b"\ndata: y\n\n") == [SSEEvent(data="y")]


def test_sse_block_without_data_is_not_an_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 3\nretry: 10\nevent: x\n\n: ping\n\n") == []
    assert decoder.last_event_id == "3" and decoder.retry == 10
    # The id carries over as Last-Event-ID; the event's own id is per event.
    assert decoder.feed(b"data:\n\n") == [SSEEvent(data="")]
    assert decoder.last_event_id == "3"


def test_sse_ignored_values() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: a\0b\nretry: 1s\ndata: x\n\n") == [SSEEvent(data="x")]
    assert decoder.last_event_id == "" and decoder.retry is None


def test_sse_bom_and_utf8() -> None:
    data = "\ufeffdata: héllo ✓\n\n".encode()
    assert decode_all(data) == [SSEEvent(data="héllo ✓")]
    assert decode_split([data[i : i + 1] for i in range(len(data))]) == [SSEEvent(data="héllo ✓")]
    assert decode_all(b"data: \xff\n\n") == [SSEEvent(data="\ufffd")]


def test_sse_event_too_large() -> None:
    decoder = SSEDecoder(max_event_bytes=16)
    with pytest.raises(SSEError) as info:
        decoder.feed(b"data: ok\n\ndata: 0123456789\ndata: 0123456789\n\n")
    assert info.value.events == [SSEEvent(data="ok")]
    assert info.value.status == 502
    with pytest.raises(SSEError):
        decoder.feed(b"data: x\n\n")


def test_sse_unterminated_line_too_large() -> None:
    decoder = SSEDecoder(max_event_bytes=16)
    decoder.feed(b"data: 0123")
    with pytest.raises(SSEError):
        decoder.feed(b"456789abcdef")


def test_sse_limit_is_per_event() -> None:
    decoder = SSEDecoder(max_event_bytes=16)
    for _ in range(100):
        assert decoder.feed(b"data: 0123456789\n\n") == [SSEEvent(data="0123456789")]


def test_encode_event() -> None:
    assert encode_event("x") == b"data: x\n\n"
    assert encode_event("a\nb\r\nc\rd", event="e", id="1", retry=5) == (
        b"event: e\nid: 1\nretry: 5\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
    )
    assert encode_event("") == b"data:\n\n"
    assert encode_comment() == b": ping\n\n"
    assert encode_comment("a\nb") == b": a\n: b\n\n"
    assert encode_event("x", event="\0") == b"event: \0\ndata: x\n\n"
    for event, id in (("a\nb", None), (None, "a\rb"), (None, "a\0")):
        with pytest.raises(ValueError):
            encode_event("x", event=event, id=id)
    with pytest.raises(ValueError):
        encode_event("x", retry=-1)


_line_text = st.text(st.characters(blacklist_characters="\r\n", codec="utf-8"), max_size=12)
_field = st.sampled_from(["data", "data:", "data: ", "event: ", "id: ", "retry: ", ":", "x: ", ""])
_eol = st.sampled_from(["\n", "\r", "\r\n"])
_streams = st.lists(st.tuples(_field, _line_text, _eol), max_size=30).map(
    lambda parts: "".join(f + t + e for f, t, e in parts).encode()
)


@given(_streams, st.lists(st.integers(min_value=0, max_value=400), max_size=10))
def test_sse_invariant_under_splitting(stream: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert decode_split(chunks) == decode_all(stream)


@given(_streams, st.lists(st.integers(min_value=0, max_value=400), max_size=10))
def test_sse_limit_invariant_under_splitting(stream: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]

    def outcome(parts: list[bytes]) -> bool:
        try:
            decode_split(parts, max_event_bytes=24)
        except SSEError:
            return False
        return True

    assert outcome(chunks) == outcome([stream])


@given(
    st.text(st.characters(codec="utf-8", blacklist_characters="\r"), max_size=50),
    st.none() | _line_text.filter(bool),
    st.none() | st.text(st.characters(codec="utf-8", blacklist_characters="\r\n\0"), max_size=9),
)
def test_sse_round_trip(data: str, event: str | None, id: str | None) -> None:
    (decoded,) = decode_all(encode_event(data, event=event, id=id))
    assert decoded == SSEEvent(data=data, event=event or "message", id=id)


@given(
    st.lists(st.text(alphabet='ab{}:" é', min_size=1), max_size=5),
    st.lists(st.integers(min_value=1, max_value=40), max_size=10),
    st.booleans(),
)
def test_json_lines_give_each_line_once_however_the_body_is_cut(
    texts: list[str], cuts: list[int], last_line_end: bool
) -> None:
    lines = [t for t in texts if t.strip()]
    body = "\n".join(lines).encode() + (b"\n" if last_line_end else b"")
    decoder = JsonLines()
    seen: list[SSEEvent] = []
    rest = body
    for cut in cuts:
        seen += decoder.feed(rest[:cut])
        rest = rest[cut:]
    seen += decoder.feed(rest)
    seen += decoder.finish()
    assert [e.data for e in seen] == lines
    assert all(e.event == "message" for e in seen)


def test_json_lines_refuse_an_endless_line() -> None:
    with pytest.raises(UpstreamError, match="larger than 8 bytes"):
        JsonLines(max_line_bytes=8).feed(b"x" * 9)


# ---------------------------------------------------------------- JSON-RPC


def parse(body: Any) -> tuple[list[dict[str, Any]], bool]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return jsonrpc.parse_messages(raw)


def refused(body: Any) -> jsonrpc.JsonRpcError:
    with pytest.raises(jsonrpc.JsonRpcError) as info:
        parse(body)
    return info.value


def test_jsonrpc_kinds() -> None:
    request = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    result = {"jsonrpc": "2.0", "id": "a", "result": {}}
    error = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "x"}}
    assert parse(request) == ([request], False)
    assert parse([request, note, result, error]) == ([request, note, result, error], True)
    assert jsonrpc.is_request(request) and not jsonrpc.is_notification(request)
    assert jsonrpc.is_notification(note) and not jsonrpc.is_request(note)
    assert jsonrpc.is_response(result) and jsonrpc.is_response(error)
    assert not jsonrpc.is_response(request)


@pytest.mark.parametrize(
    "body",
    [b"{", b"", b"[1,", b'{"a": NaN}', b"\xff\xfe", b"\xef\xbb\xbf{}", b'{"a": Infinity}'],
)
def test_jsonrpc_parse_errors(body: bytes) -> None:
    assert refused(body).code == jsonrpc.PARSE_ERROR


def test_jsonrpc_depth() -> None:
    def nested(depth: int) -> bytes:
        inner = '"x"'
        for _ in range(depth - 1):
            inner = '{"a":' + inner + "}"
        return ('{"jsonrpc":"2.0","id":1,"method":"m","params":' + inner + "}").encode()

    parse(nested(64))  # the message and 63 objects inside it
    assert refused(nested(65)).code == jsonrpc.PARSE_ERROR
    assert refused(b"[" * 100_000 + b"]" * 100_000).code == jsonrpc.PARSE_ERROR
    # Many brackets but shallow: fine.
    parse([{"jsonrpc": "2.0", "method": "m", "params": [[]] * 200}])


@pytest.mark.parametrize(
    "message",
    [
        [],
        1,
        "x",
        {"id": 1, "method": "m"},
        {"jsonrpc": "1.0", "id": 1, "method": "m"},
        {"jsonrpc": "2.0", "id": 1.5, "method": "m"},
        {"jsonrpc": "2.0", "id": True, "method": "m"},
        {"jsonrpc": "2.0", "id": None, "method": "m"},
        {"jsonrpc": "2.0", "id": [1], "method": "m"},
        {"jsonrpc": "2.0", "id": 1, "method": 5},
        {"jsonrpc": "2.0", "id": 1, "method": "m", "params": 3},
        {"jsonrpc": "2.0", "id": 1, "method": "m", "result": {}},
        {"jsonrpc": "2.0", "id": 1},
        {"jsonrpc": "2.0", "id": 1, "result": 1, "error": {"code": 1, "message": "m"}},
        {"jsonrpc": "2.0", "result": {}},
        {"jsonrpc": "2.0", "id": None, "result": {}},
        {"jsonrpc": "2.0", "id": 1, "error": {"code": "1", "message": "m"}},
        {"jsonrpc": "2.0", "id": 1, "error": {"code": 1}},
        [{"jsonrpc": "2.0", "method": "m"}, 3],
    ],
)
def test_jsonrpc_invalid_requests(message: Any) -> None:
    assert refused(message).code == jsonrpc.INVALID_REQUEST


def test_jsonrpc_error_keeps_valid_id() -> None:
    error = refused({"jsonrpc": "2.0", "id": "r1", "method": "m", "params": 3})
    assert error.id == "r1" and error.status == 400
    assert error.to_message() == jsonrpc.make_error("r1", jsonrpc.INVALID_REQUEST, error.message)


def test_jsonrpc_builders() -> None:
    assert jsonrpc.make_result(3, {"a": 1}) == {"jsonrpc": "2.0", "id": 3, "result": {"a": 1}}
    assert jsonrpc.make_error(None, -32600, "bad") == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32600, "message": "bad"},
    }
    assert jsonrpc.make_error("x", 1, "m", {"d": 1})["error"]["data"] == {"d": 1}
    escaped = b'{"jsonrpc":"2.0","id":1,"result":"\\u00e9"}'
    assert jsonrpc.dumps(jsonrpc.make_result(1, "é")) == escaped
    # A lone surrogate is valid JSON but not UTF-8: it stays escaped.
    lone = jsonrpc.parse_messages(b'{"jsonrpc":"2.0","id":1,"result":"\\ud800"}')[0][0]
    assert jsonrpc.dumps(lone) == b'{"jsonrpc":"2.0","id":1,"result":"\\ud800"}'


# ---------------------------------------------------------------- names

TARGETS = ("alpha", "beta", "beta.2")


@pytest.mark.parametrize(
    ("mode", "n", "names_", "uris"),
    [
        (None, 1, False, False),
        ("conditional", 1, False, False),
        ("conditional", 2, True, True),
        (None, 3, True, True),
        ("always", 1, True, True),
        ("always", 2, True, True),
        ("never", 1, False, False),
        ("never", 2, False, True),
    ],
)
def test_should_prefix(mode: Any, n: int, names_: bool, uris: bool) -> None:
    assert names.should_prefix(mode, n) is names_
    assert names.should_prefix(mode, n, uris=True) is uris


def test_split_name() -> None:
    assert names.prefix_name("alpha", "get_weather") == "alpha_get_weather"
    assert names.split_name("alpha_get_weather", TARGETS) == ("alpha", "get_weather")
    assert names.split_name("beta.2_x", TARGETS) == ("beta.2", "x")
    assert names.split_name("gamma_x", TARGETS) is None
    assert names.split_name("alpha_", TARGETS) is None
    assert names.split_name("alpha", TARGETS) is None
    assert names.split_name("x_y", ["only"], prefix=False) == ("only", "x_y")
    assert names.split_name("x", TARGETS, prefix=False) is None


_target_names = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?", fullmatch=True)


@given(st.lists(_target_names, min_size=1, max_size=5, unique=True), st.data())
def test_prefix_split_round_trip(targets: list[str], data: st.DataObject) -> None:
    target = data.draw(st.sampled_from(targets))
    name = data.draw(st.text(min_size=1, max_size=20))
    assert names.split_name(names.prefix_name(target, name), targets) == (target, name)
    uri = data.draw(st.from_regex(r"[a-zA-Z][a-zA-Z0-9+.-]{0,5}:[^\s]{0,15}", fullmatch=True))
    assert names.split_uri(names.prefix_uri(target, uri), targets) == (
        target,
        "ui://" + uri[5:] if uri[:5].lower() == "ui://" else uri,
    )


def test_uris_like_agentgateway() -> None:
    assert names.prefix_uri("svc", "http://example.com/x") == "svc+http://example.com/x"
    assert names.prefix_uri("svc", "memo:insights") == "svc+memo:insights"
    assert names.prefix_uri("svc", "svn+ssh://host/repo") == "svc+svn+ssh://host/repo"
    assert names.prefix_uri("svc", "relative/path") == "relative/path"
    assert names.prefix_uri("svc", "ui://weather/d.html") == "ui://svc+weather/d.html"
    assert names.split_uri("svc+svn+ssh://host/repo", ["svc"]) == ("svc", "svn+ssh://host/repo")
    assert names.split_uri("ui://svc+weather/d.html", ["svc"]) == ("svc", "ui://weather/d.html")
    assert names.split_uri("ui://weather/a+b", ["svc"]) is None  # + outside the authority
    assert names.split_uri("svc+ui://weather/d.html", ["svc"]) is None
    assert names.split_uri("other+memo:x", ["svc"]) is None
    assert names.split_uri("memo:x", ["svc", "b"]) is None
    assert names.split_uri("memo:x", ["svc"], prefix=False) == ("svc", "memo:x")


def test_rewrite_list_result() -> None:
    tools: dict[str, Any] = {
        "tools": [{"name": "echo", "inputSchema": {}}, "junk"],
        "_meta": {"k": 1},
    }
    out = names.rewrite_list_result("tools/list", tools, "alpha", True)
    assert out == {"tools": [{"name": "alpha_echo", "inputSchema": {}}, "junk"], "_meta": {"k": 1}}
    assert tools["tools"][0] == {"name": "echo", "inputSchema": {}}  # not modified
    assert names.rewrite_list_result("tools/list", tools, "alpha", False) == tools
    prompts = names.rewrite_list_result("prompts/list", {"prompts": [{"name": "p"}]}, "a", True)
    assert prompts == {"prompts": [{"name": "a_p"}]}
    resources = {"resources": [{"uri": "file:///x", "name": "x"}], "nextCursor": "c"}
    assert names.rewrite_list_result("resources/list", resources, "a", True) == {
        "resources": [{"uri": "a+file:///x", "name": "x"}],
        "nextCursor": "c",
    }
    templates = {"resourceTemplates": [{"uriTemplate": "db://{table}", "name": "t"}]}
    assert names.rewrite_list_result("resources/templates/list", templates, "a", True) == {
        "resourceTemplates": [{"uriTemplate": "a+db://{table}", "name": "t"}]
    }
    with pytest.raises(ValueError):
        names.rewrite_list_result("tools/call", {}, "a", True)


# ---------------------------------------------------------------- merging


def init_result(version: str, caps: dict[str, Any], instructions: str | None = None) -> Any:
    result: dict[str, Any] = {
        "protocolVersion": version,
        "capabilities": caps,
        "serverInfo": {"name": "up", "version": "9"},
    }
    if instructions is not None:
        result["instructions"] = instructions
    return result


def test_merge_initialize_single_target_passes_through() -> None:
    one = init_result("2025-06-18", {"tools": {}}, "hi")
    assert merge.merge_initialize({"a": one}, client_version="2025-11-25") == one


def test_merge_initialize_several_targets() -> None:
    merged = merge.merge_initialize(
        {
            "a": init_result("2025-11-25", {"tools": {"listChanged": False}}, "Use a."),
            "b": init_result(
                "2025-06-18",
                {"tools": {"listChanged": True}, "resources": {"subscribe": True}},
            ),
            "c": init_result("2025-11-25", {"logging": {}, "experimental": {"x": {"y": 1}}}, "C!"),
        },
        client_version="2025-11-25",
    )
    assert merged["protocolVersion"] == "2025-06-18"
    assert merged["capabilities"] == {
        "tools": {"listChanged": True},
        "resources": {"subscribe": True},
        "logging": {},
        "experimental": {"x": {"y": 1}},
    }
    assert merged["serverInfo"] == {"name": "agentgw", "version": __version__}
    assert merged["instructions"].endswith("\n\n[a]\nUse a.\n\n[c]\nC!")
    older = merge.merge_initialize(
        {"a": init_result("2025-06-18", {}), "b": init_result("2025-06-18", {})},
        client_version="2025-03-26",
    )
    assert older["protocolVersion"] == "2025-03-26"


def test_merge_initialize_bad_result() -> None:
    with pytest.raises(merge.MergeError) as info:
        merge.merge_initialize({"a": init_result("2025-06-18", {}), "b": {"x": 1}})
    assert info.value.errors == {"b": "invalid initialize result"}
    with pytest.raises(ValueError):
        merge.merge_initialize({})


_state = st.dictionaries(_target_names, st.none() | st.text(max_size=30), min_size=1)


@given(_state)
def test_cursor_round_trip(state: dict[str, str | None]) -> None:
    if all(v is None for v in state.values()):
        with pytest.raises(ValueError):
            merge.decode_cursor(merge.encode_cursor(state))
    else:
        cursor = merge.encode_cursor(state)
        assert re.fullmatch(r"[A-Za-z0-9_-]+", cursor)
        assert merge.decode_cursor(cursor) == state


def b64(doc: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "abc",
        "a=",
        "not base64!",
        b64([1]),
        b64({"v": 2, "c": {"a": "x"}}),
        b64({"v": 1, "c": {"a": 1}}),
        b64({"v": 1, "c": ["a"]}),
        b64({"v": 1, "c": {"a": "x"}, "extra": 1}),
        b64({"v": 1, "c": {"a": None}}),
        "A" * (merge.MAX_CURSOR_CHARS + 4),
    ],
)
def test_invalid_cursors(cursor: str) -> None:
    with pytest.raises(ValueError):
        merge.decode_cursor(cursor)


def page(method: str, items: list[Any], cursor: str | None = None) -> dict[str, Any]:
    key, field, _ = names.LIST_FIELDS[method]
    result: dict[str, Any] = {key: [{field: item} for item in items]}
    if cursor is not None:
        result["nextCursor"] = cursor
    return result


def test_merge_list_prefixes_and_concatenates() -> None:
    merged = merge.merge_list(
        "tools/list",
        {"a": page("tools/list", ["x", "y"]), "b": page("tools/list", ["x"])},
        True,
    )
    assert merged == {"tools": [{"name": "a_x"}, {"name": "a_y"}, {"name": "b_x"}]}
    merged = merge.merge_list(
        "resources/list",
        {"a": page("resources/list", ["m:1"], cursor="n"), "b": page("resources/list", ["m:1"])},
        True,
    )
    assert [r["uri"] for r in merged["resources"]] == ["a+m:1", "b+m:1"]
    assert merge.decode_cursor(merged["nextCursor"]) == {"a": "n", "b": None}


def test_merge_list_failure_modes() -> None:
    pages = {"a": page("prompts/list", ["p"])}
    with pytest.raises(merge.MergeError) as info:
        merge.merge_list("prompts/list", pages, True, errors={"b": "timed out"})
    assert info.value.errors == {"b": "timed out"} and "'b'" in str(info.value)
    assert info.value.status == 502
    merged = merge.merge_list(
        "prompts/list", pages, True, errors={"b": "timed out"}, failure_mode="failOpen"
    )
    assert merged == {"prompts": [{"name": "a_p"}]}
    with pytest.raises(merge.MergeError):
        merge.merge_list("prompts/list", {}, True, errors={"b": "x"}, failure_mode="failOpen")
    # A malformed page is its target's failure.
    bad = {"a": page("prompts/list", ["p"]), "b": {"prompts": [{"nom": 1}]}}
    with pytest.raises(merge.MergeError) as info:
        merge.merge_list("prompts/list", bad, True)
    assert set(info.value.errors) == {"b"}
    assert merge.merge_list("prompts/list", bad, True, failure_mode="failOpen") == {
        "prompts": [{"name": "a_p"}]
    }
    assert merge.merge_list("prompts/list", {}, True) == {"prompts": []}
    with pytest.raises(ValueError):
        merge.merge_list("tools/call", {}, True)


def test_merge_list_drop_duplicates() -> None:
    pages = {"a": page("tools/list", ["x", "y"]), "b": page("tools/list", ["x", "z"])}
    merged = merge.merge_list("tools/list", pages, False, drop_duplicates=True)
    assert merged == {"tools": [{"name": "y"}, {"name": "z"}]}


def test_targets_to_query() -> None:
    assert merge.targets_to_query(None, ["a", "b"]) == {"a": None, "b": None}
    cursor = merge.encode_cursor({"a": None, "b": "p2", "gone": "p9"})
    assert merge.targets_to_query(cursor, ["a", "b"]) == {"b": "p2"}
    with pytest.raises(ValueError):
        merge.targets_to_query("!", ["a"])


_catalogs = st.dictionaries(
    _target_names,
    st.lists(st.integers(min_value=0, max_value=4), max_size=5),  # page sizes
    min_size=1,
    max_size=4,
)


@given(_catalogs, st.sampled_from(sorted(names.LIST_FIELDS)))
def test_paging_through_the_gateway_sees_every_item_once(
    catalog: dict[str, list[int]], method: str
) -> None:
    key, field, is_uri = names.LIST_FIELDS[method]

    def upstream(target: str, cursor: str | None) -> dict[str, Any]:
        sizes = catalog[target] or [0]
        index = 0 if cursor is None else int(cursor)
        start = sum(sizes[:index])
        items = [f"x:{target}-{i}" for i in range(start, start + sizes[index])]
        more = index + 1 < len(sizes)
        return page(method, items, cursor=str(index + 1) if more else None)

    targets = list(catalog)
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(100):
        queries = merge.targets_to_query(cursor, targets)
        pages = {t: upstream(t, c) for t, c in queries.items()}
        result = merge.merge_list(method, pages, True)
        seen += [item[field] for item in result[key]]
        cursor = result.get("nextCursor")
        if cursor is None:
            break
    rename = names.prefix_uri if is_uri else names.prefix_name
    expected = [rename(t, f"x:{t}-{i}") for t, sizes in catalog.items() for i in range(sum(sizes))]
    assert sorted(seen) == sorted(expected)
    assert len(seen) == len(set(seen))


# ---------------------------------------------------------------- ids


def test_idmap_client_to_upstream() -> None:
    ids = IdMap()
    # Two clients of one session both use id 1; the upstream sees 1 and 2.
    first, second = ids.allocate("a", 1), ids.allocate("a", 1)
    third = ids.allocate("b", "1")
    assert (first, second, third) == (1, 2, 3)
    assert ids.pop(second) == Route("a", 1)
    assert ids.pop(second) is None
    assert ids.pop(True) is None and ids.pop(1.0) is None and ids.pop("1") is None
    route = ids.pop(3)
    assert route == Route("b", "1") and isinstance(route.original, str)
    assert len(ids) == 1


def test_idmap_upstream_to_client() -> None:
    ids = IdMap(prefix="agw-")
    from_a, from_b = ids.allocate("a", 0), ids.allocate("b", 0)
    assert (from_a, from_b) == ("agw-1", "agw-2")
    assert ids.pop(1) is None and ids.pop("agw-01") is None and ids.pop("agw-x") is None
    assert ids.pop("agw-2", target="a") is None  # answered by the wrong side
    assert ids.get("agw-2") == Route("b", 0)
    assert ids.pop("agw-2", target="b") == Route("b", 0)
    assert ids.pop("agw-1") == Route("a", 0)


def test_idmap_capacity_find_discard() -> None:
    ids = IdMap(capacity=3)
    gids = [ids.allocate("a", "r1"), ids.allocate("b", 5), ids.allocate("a", "r2")]
    assert ids.is_full()
    with pytest.raises(IdMapFull) as info:
        ids.allocate("a", 9)
    assert info.value.status == 503
    assert ids.find("a", "r2") == gids[2]
    assert ids.find("b", "5") is None and ids.find("b", 5) == gids[1]
    assert ids.discard_target("a") == [gids[0], gids[2]]
    assert ids.find("a", "r1") is None and len(ids) == 1
    assert ids.allocate("a", 9) == 4
    stats = ids.statistics()
    assert (stats.in_flight, stats.capacity, stats.allocated_total) == (2, 3, 4)
    with pytest.raises(ValueError):
        ids.allocate("a", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        IdMap(capacity=0)


def test_idmap_find_latest_of_reused_id() -> None:
    ids = IdMap()
    old, new = ids.allocate("a", 7), ids.allocate("a", 7)
    assert ids.find("a", 7) == new
    ids.pop(old)
    assert ids.find("a", 7) == new
    ids.pop(new)
    assert ids.find("a", 7) is None


# ---------------------------------------------------------------- session tokens

KEY = bytes(range(32))


def state(**kwargs: Any) -> SessionState:
    base: dict[str, Any] = {
        "targets": {"a": "up-1", "b": None},
        "protocol_version": "2025-06-18",
    }
    return SessionState(**{**base, **kwargs})


def test_session_round_trip() -> None:
    codec = SessionCodec(KEY)
    s = state()
    token = codec.encode(s)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert codec.decode(token) == s
    assert codec.encode(s) != token  # fresh nonce
    made = SessionState.new(targets={"a": None}, protocol_version="2025-11-25", sid="x")
    assert codec.decode(codec.encode(made)) == made
    assert made.version == 1 and made.created > 0


def test_session_rejections() -> None:
    codec = SessionCodec(KEY)
    token = codec.encode(state())
    for bad in [
        "",
        token[:-1],
        token[:20],
        token + "A",
        token + "=",
        " " + token,
        token.replace(token[5], "A" if token[5] != "A" else "B", 1),
        "x" * (MAX_TOKEN_CHARS + 1),
    ]:
        with pytest.raises(InvalidSession) as info:
            codec.decode(bad)
        assert info.value.status == 404
    with pytest.raises(InvalidSession):
        SessionCodec(bytes(32)).decode(token)
    with pytest.raises(InvalidSession, match="version"):
        codec.decode(codec.encode(state(version=2)))
    with pytest.raises(ValueError):
        codec.encode(state(targets={f"t{i}": "s" * 40 for i in range(80)}))


@given(
    st.dictionaries(_target_names, st.none() | st.text(max_size=20), max_size=3),
    st.data(),
)
def test_session_any_bit_flip_is_rejected(targets: dict[str, str | None], data: Any) -> None:
    codec = SessionCodec(KEY)
    raw = codec.encode(state(targets=targets, sid="s", created=1.0)).encode("ascii")
    bit = data.draw(st.integers(min_value=0, max_value=len(raw) * 8 - 1))
    flipped = bytearray(raw)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(InvalidSession):
        codec.decode(flipped.decode("latin-1"))


def test_session_every_bit_flip_of_one_token_is_rejected() -> None:
    codec = SessionCodec(KEY)
    raw = codec.encode(state()).encode("ascii")
    for bit in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(InvalidSession):
            codec.decode(flipped.decode("latin-1"))


def test_session_codec_from_config() -> None:
    hex_codec = SessionCodec.from_config(KEY.hex())
    b64_codec = SessionCodec.from_config(base64.b64encode(KEY).decode())
    s = state()
    assert hex_codec.decode(b64_codec.encode(s)) == s
    random_a, random_b = SessionCodec.from_config(None), SessionCodec.from_config(None)
    with pytest.raises(InvalidSession):
        random_b.decode(random_a.encode(s))
    assert KEY.hex() not in repr(hex_codec)
    for bad in ["abc", "00" * 31, base64.b64encode(os.urandom(16)).decode()]:
        with pytest.raises(ValueError):
            parse_key(bad)


# ---------------------------------------------------------------- versions


def test_versions() -> None:
    assert versions.KNOWN_VERSIONS == (
        "2024-11-05",
        "2025-03-26",
        "2025-06-18",
        "2025-11-25",
        "2026-07-28",
    )
    assert versions.negotiate("2025-03-26") == "2025-03-26"
    assert versions.negotiate("2099-01-01") == "2026-07-28"
    assert versions.negotiate(None, versions.INITIALIZE_VERSIONS) == "2025-11-25"
    assert versions.negotiate("2026-07-28", versions.INITIALIZE_VERSIONS) == "2025-11-25"
    with pytest.raises(ValueError):
        versions.negotiate("2025-03-26", ())
    assert versions.is_stateless_revision("2026-07-28")
    assert versions.is_stateless_revision("2027-01-01")
    assert not versions.is_stateless_revision("2025-11-25")
    assert not versions.is_stateless_revision("zzz")
    assert versions.lowest(["2025-11-25", "2024-11-05", "2025-06-18"]) == "2024-11-05"
    with pytest.raises(ValueError):
        versions.lowest([])
    assert "initialize" in versions.REMOVED_IN_STATELESS


def _walked_depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_walked_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_walked_depth, value), default=0)
    return 0


def _json_containers(inner: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.lists(inner, max_size=3) | st.dictionaries(
        st.text(alphabet='[]{}"\\x'), inner, max_size=3
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab,:'),
    _json_containers,
    max_leaves=20,
)


@given(json_values)
def test_nesting_depth_counts_what_a_walk_counts(value: object) -> None:
    text = json.dumps(value, ensure_ascii=False).encode()
    assert jsonrpc.nesting_depth(text) == _walked_depth(value)


def test_too_deep_a_body_is_a_parse_error() -> None:
    deep = b'{"jsonrpc": "2.0", "id": 1, "result": ' + b"[" * 70 + b"]" * 70 + b"}"
    with pytest.raises(jsonrpc.JsonRpcError, match=r"^parse error$") as caught:
        jsonrpc.parse_messages(deep)
    assert caught.value.detail is not None and "nested deeper" in caught.value.detail
    fine = b'{"jsonrpc": "2.0", "id": 1, "result": {"s": "' + b"[" * 200 + b'"}}'
    assert jsonrpc.parse_messages(fine)[0][0]["result"]["s"] == "[" * 200
