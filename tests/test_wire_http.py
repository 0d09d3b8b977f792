from __future__ import annotations

import h11
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from agentgw.errors import ClientError, UpstreamError
from agentgw.wire.http import (
    HeadLimits,
    check_request_head,
    check_response_head,
    check_response_head_start,
    fields_are_valid,
    split_target,
    strip_hop_by_hop,
    underscore_header_names,
)

LIMITS = HeadLimits(max_request_line=8192, max_head=32768)


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def refused(data: bytes) -> ClientError:
    with pytest.raises(ClientError) as info:
        check_request_head(data, LIMITS)
    return info.value


def test_plain_request_passes() -> None:
    h = check_request_head(head("POST /mcp HTTP/1.1", "Host: a", "Content-Length: 5"), LIMITS)
    assert h.content_length == 5 and not h.chunked


@pytest.mark.parametrize(
    "lines",
    [
        ["Content-Length: 5", "Transfer-Encoding: chunked"],
        ["Transfer-Encoding: chunked", "Content-Length: 5"],
        ["Transfer-Encoding: xchunked"],
        ["Transfer-Encoding: chunked, identity"],
        ["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"],
        ["Content-Length: 5", "Content-Length: 5"],
        ["Content-Length: +5"],
        ["Content-Length: -5"],
        ["Content-Length: 5, 5"],
        ["Content-Length: 0x5"],
        [" folded: x"],
        ["Bad Name: x"],
    ],
)
def test_framing_refusals(lines: list[str]) -> None:
    exc = refused(head("POST / HTTP/1.1", "Host: a", *lines))
    assert exc.status == 400


def test_te_on_http10() -> None:
    assert refused(head("POST / HTTP/1.0", "Transfer-Encoding: chunked")).status == 400


def test_host_rules() -> None:
    assert refused(head("GET / HTTP/1.1")).reason == "missing Host header"
    assert refused(head("GET / HTTP/1.1", "Host: a", "Host: b")).reason == "duplicate Host header"
    check_request_head(head("GET / HTTP/1.0"), LIMITS)


def test_sizes_and_versions() -> None:
    assert refused(head("GET /" + "a" * 9000 + " HTTP/1.1", "Host: a")).status == 414
    assert refused(head("GET / HTTP/1.1", "Host: a", "X: " + "a" * 40000)).status == 431
    assert refused(head("GET / HTTP/2.0", "Host: a")).status == 505
    assert refused(head("GET / HTTP/1.1 extra", "Host: a")).status == 400


def test_strip_hop_by_hop() -> None:
    headers = [
        (b"connection", b"keep-alive, x-secret"),
        (b"x-secret", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"te", b"trailers"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"h2c"),
        (b"proxy-authorization", b"Basic x"),
        (b"authorization", b"Bearer t"),
        (b"x-custom", b"y"),
        (b"content-length", b"3"),
    ]
    assert strip_hop_by_hop(headers) == [
        (b"authorization", b"Bearer t"),
        (b"x-custom", b"y"),
        (b"content-length", b"3"),
    ]


def test_split_target() -> None:
    assert split_target(b"/a/b?x=1") == ("/a/b", "x=1")
    assert split_target(b"http://h:1/p?q") == ("/p", "q")
    assert split_target(b"*") == ("*", "")


def test_log_escape() -> None:
    from agentgw.observability.access_log import AccessRecord, escape, format_json, format_text

    assert escape("a\r\nrequest forged=1") == "a\\r\\nrequest forged=1"
    assert escape("x" * 300).endswith("...") and len(escape("x" * 300)) == 259
    record = AccessRecord(gateway="bind/3000", src_addr="1.2.3.4:5", path='/p"\n', status=200)
    text = format_text(record)
    assert "\n" not in text and 'http.path="/p\\"\\n"' in text
    assert '"http.path":"/p\\\\\\"\\\\n"' in format_json(record)


def test_header_line_and_count_limits() -> None:
    limits = HeadLimits(max_header_line=100, max_headers=3)
    ok = head("GET / HTTP/1.1", "Host: a", "X-A: " + "v" * 95, "X-B: 1")
    check_request_head(ok, limits)
    long = refused_with(head("GET / HTTP/1.1", "Host: a", "X-A: " + "v" * 96), limits)
    assert long.status == 431 and long.reason == "header line too long"
    assert long.detail is not None and "X-A" in long.detail and "v" * 10 not in long.detail
    many = refused_with(head("GET / HTTP/1.1", "Host: a", "X-A: 1", "X-B: 1", "X-C: 1"), limits)
    assert many.status == 431 and many.reason == "too many header fields"


def refused_with(data: bytes, limits: HeadLimits) -> ClientError:
    with pytest.raises(ClientError) as info:
        check_request_head(data, limits)
    return info.value


@pytest.mark.parametrize(
    "value",
    ["", "a b", "a:b", "a:65536", "a:1:2", "user@a", "[::1", "a/b", "%zz", "a,b:"],
)
def test_invalid_host_values(value: str) -> None:
    exc = refused(head("GET / HTTP/1.1", f"Host: {value}"))
    assert exc.status == 400 and exc.reason == "invalid Host header"


@pytest.mark.parametrize(
    "value", ["a", "a:0", "a:65535", "127.0.0.1:80", "[::1]", "[::1]:3000", "a%41.b", "a_b.c"]
)
def test_valid_host_values(value: str) -> None:
    check_request_head(head("GET / HTTP/1.1", f"Host: {value}"), LIMITS)


def test_absolute_form_authority_replaces_host() -> None:
    h = check_request_head(head("GET http://gw.test:81/x?y HTTP/1.1", "Host: other"), LIMITS)
    assert h.authority == b"gw.test:81" and h.origin_target == b"/x?y"
    h = check_request_head(head("GET HTTPS://gw.test?q HTTP/1.0"), LIMITS)
    assert h.authority == b"gw.test" and h.origin_target == b"/?q"
    h = check_request_head(head("GET http://gw.test HTTP/1.1"), LIMITS)  # no Host needed
    assert h.origin_target == b"/"
    assert check_request_head(head("OPTIONS * HTTP/1.1", "Host: a"), LIMITS).authority is None


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("GET http://u@a/ HTTP/1.1", "invalid request target authority"),
        ("GET http:///x HTTP/1.1", "invalid request target authority"),
        ("GET ftp://a/ HTTP/1.1", "malformed request target"),
        ("CONNECT a:443 HTTP/1.1", "malformed request target"),
        ("GET * HTTP/1.1", "malformed request target"),
        ("GET a/b HTTP/1.1", "malformed request target"),
    ],
)
def test_target_forms_refused(line: str, reason: str) -> None:
    assert refused(head(line, "Host: a")).reason == reason


# ---------------------------------------------------------------- response heads


def response_refused(data: bytes, limits: HeadLimits = LIMITS) -> str:
    with pytest.raises(UpstreamError) as info:
        check_response_head(data, limits)
    assert info.value.reason == "upstream protocol error" and info.value.status == 502
    return info.value.detail or ""


def test_plain_responses_pass() -> None:
    for data in (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 204\r\n\r\n",
        b"HTTP/1.0 404 Not Found\r\nContent-Length: 2, 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n",
    ):
        check_response_head(data, LIMITS)


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", "both"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", "disagree"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\n", "malformed Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "unsupported"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "unsupported",
        ),
        (b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", "folding"),
        (b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n", "malformed response header line"),
        (b"HTTP/1.1 200 OK\r\nX: a\x7fb\r\n\r\n", "control character"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "malformed status line"),
        (b"HTTP/1.2 200 OK\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 200 OK\nX: a\r\n\r\n", "bare LF"),
        (b"SSH-2.0-x\r\n\r\n", "not an HTTP/1.x"),
    ],
)
def test_response_refusals(data: bytes, detail: str) -> None:
    assert detail in response_refused(data)


def test_response_head_limits() -> None:
    limits = HeadLimits(max_head=1000, max_header_line=100, max_headers=3)
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(3))
    check_response_head(b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n", limits)
    assert "more than 3" in response_refused(
        b"HTTP/1.1 200 OK\r\n" + fields + b"X-4: v\r\n\r\n", limits
    )
    assert "longer than 100" in response_refused(
        b"HTTP/1.1 200 OK\r\nX: " + b"v" * 98 + b"\r\n\r\n", limits
    )
    assert "larger than 1000" in response_refused(
        b"HTTP/1.1 200 OK\r\n" + b"X: v\r\n" * 200 + b"\r\n", limits
    )


def test_response_head_start_refuses_early() -> None:
    check_response_head_start(b"", LIMITS)
    check_response_head_start(b"HTT", LIMITS)
    check_response_head_start(b"HTTP/1.1 200 OK\r\nX: a", LIMITS)
    for data in (b"SSH-", b"\r\n", b"HTTP/2 ", b"HTTP/1.1 200 OK\nX"):
        with pytest.raises(UpstreamError):
            check_response_head_start(data, LIMITS)
    with pytest.raises(UpstreamError):
        check_response_head_start(b"HTTP/1.1 200 OK\r\nX: " + b"v" * 9000, LIMITS)


def test_underscore_header_names() -> None:
    headers = [(b"x_user", b"admin"), (b"x-user", b"a"), (b"_", b"")]
    assert underscore_header_names(headers) == [b"x_user", b"_"]


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-a", b"one\r\nx-injected: two")],  # a line end inside a value
        [(b"x-a: one\r\nx-injected", b"two")],  # ...inside a name
        [(b"x-a:b", b"c")],  # a colon inside a name
        [(b"!:", b"")],
        [(b"x-a", b"one\nx-b: two")],
    ],
)
def test_fields_that_would_parse_as_other_fields_are_not_valid(
    headers: list[tuple[bytes, bytes]],
) -> None:
    assert not fields_are_valid(headers)
    with pytest.raises(h11.LocalProtocolError):
        h11.Response(status_code=200, headers=headers)


@given(
    st.lists(
        st.tuples(
            st.one_of(st.binary(max_size=12), st.from_regex(rb"[a-zA-Z_!~-]{0,8}", fullmatch=True)),
            st.one_of(st.binary(max_size=20), st.from_regex(rb"[ \t!-~]{0,12}", fullmatch=True)),
        ),
        max_size=6,
    )
)
def test_fields_are_valid_agrees_with_h11(headers: list[tuple[bytes, bytes]]) -> None:
    # Framing fields have rules of their own, which h11 checks either way.
    assume(all(n.lower() not in (b"content-length", b"transfer-encoding") for n, _ in headers))
    try:
        h11.Response(status_code=200, headers=headers)
        h11_accepts = True
    except h11.LocalProtocolError:
        h11_accepts = False
    if fields_are_valid(headers):
        assert h11_accepts
    # Stricter than h11 on purpose: control characters in values are refused
    # (h11 then checks the block itself); otherwise the two agree.
    controls = any((c < 0x20 and c != 0x09) or c == 0x7F for _, v in headers for c in v)
    if h11_accepts and not controls:
        assert fields_are_valid(headers)
