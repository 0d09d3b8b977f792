from __future__ import annotations

import pytest

from agentgw.errors import ClientError
from agentgw.wire.http import (
    HeadLimits,
    check_request_head,
    split_target,
    strip_hop_by_hop,
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
