"""HTTP/1.1 values with no I/O: request-head checks, hop-by-hop headers.

How this works: h11 checks framing, not policy. Before a request head is fed
to h11, ``check_request_head`` scans the raw bytes of the whole head once and
refuses what a gateway must not pass on (request smuggling vectors and
oversized heads), each with its status: 400, 414, 431 or 505. h11 then parses
the same bytes, so the two never disagree about what was checked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import attrs

from agentgw.errors import ClientError

Headers = list[tuple[bytes, bytes]]

# RFC 9110 section 7.6.1, plus the headers every proxy drops.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_DIGITS = re.compile(rb"^[0-9]{1,18}$")
_VERSION = re.compile(rb"^HTTP/([0-9])\.([0-9])$")
_FIELD_VALUE = re.compile(rb"^[\t\x20-\x7e\x80-\xff]*$")
_TARGET = re.compile(rb"^[\x21-\x7e\x80-\xff]+$")


@attrs.frozen
class HeadLimits:
    max_request_line: int = 8192
    max_head: int = 65536


@attrs.frozen
class RequestHead:
    """What the raw scan learned; h11 parses the rest."""

    method: bytes
    target: bytes
    http_version: bytes
    content_length: int | None
    chunked: bool


def find_head_end(buf: bytes | bytearray, start: int = 0) -> int:
    """Index just past the blank line ending a head, or -1."""
    i = buf.find(b"\r\n\r\n", start)
    return -1 if i < 0 else i + 4


def check_request_line_length(buf: bytes | bytearray, limits: HeadLimits) -> None:
    """Raise 414 as soon as an incomplete request line is already too long."""
    body = bytes(buf).lstrip(b"\r\n")
    end = body.find(b"\r\n")
    length = len(body) if end < 0 else end
    if length > limits.max_request_line:
        raise ClientError("request line too long", status=414)


def check_request_head(head: bytes, limits: HeadLimits) -> RequestHead:
    """Refuse what h11 would let through. ``head`` ends with the blank line.

    Raises:
        ClientError: with the status to send; the connection must close.
    """
    if len(head) > limits.max_head:
        raise ClientError("request header block too large", status=431)
    lines = head.lstrip(b"\r\n").split(b"\r\n")
    request_line = lines[0]
    if len(request_line) > limits.max_request_line:
        raise ClientError("request line too long", status=414)
    parts = request_line.split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise ClientError("malformed request line")
    method, target, version = parts
    if not _TOKEN.match(method):
        raise ClientError("malformed request method")
    if not _TARGET.match(target):
        raise ClientError("malformed request target")
    match = _VERSION.match(version)
    if match is None:
        raise ClientError("malformed HTTP version")
    if match.group(1) != b"1" or match.group(2) not in (b"0", b"1"):
        raise ClientError("HTTP version not supported", status=505)
    http10 = match.group(2) == b"0"

    content_length: int | None = None
    transfer_encodings = 0
    chunked = False
    hosts = 0
    for line in lines[1:]:
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            raise ClientError("obsolete header line folding")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            raise ClientError("malformed header line")
        name = name.lower()
        value = value.strip(b" \t")
        if not _FIELD_VALUE.match(value):
            raise ClientError("control character in header value")
        if name == b"content-length":
            if content_length is not None:
                raise ClientError("duplicate Content-Length")
            if not _DIGITS.match(value):
                raise ClientError("malformed Content-Length")
            content_length = int(value)
        elif name == b"transfer-encoding":
            transfer_encodings += 1
            if transfer_encodings > 1:
                raise ClientError("multiple Transfer-Encoding headers")
            if value.lower() != b"chunked":
                raise ClientError("unsupported Transfer-Encoding")
            chunked = True
        elif name == b"host":
            hosts += 1
    if chunked and content_length is not None:
        raise ClientError("both Content-Length and Transfer-Encoding")
    if chunked and http10:
        raise ClientError("Transfer-Encoding on HTTP/1.0")
    if hosts > 1:
        raise ClientError("duplicate Host header")
    if hosts == 0 and not http10:
        raise ClientError("missing Host header")
    return RequestHead(method, target, version, content_length, chunked)


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """The lowercased tokens of every ``Connection`` header."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def strip_hop_by_hop(
    headers: Sequence[tuple[bytes, bytes]], *, keep_upgrade: bool = False
) -> Headers:
    """Drop hop-by-hop headers and the headers ``Connection`` names.

    With ``keep_upgrade`` the ``Connection: upgrade`` and ``Upgrade`` pair is
    kept, for a WebSocket tunnel.
    """
    drop = HOP_BY_HOP | connection_tokens(headers)
    out = [(n, v) for n, v in headers if n not in drop]
    if keep_upgrade:
        out.extend((n, v) for n, v in headers if n == b"upgrade")
        out.append((b"connection", b"upgrade"))
    return out


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of ``name`` (lowercase), or None."""
    for n, v in headers:
        if n == name:
            return v
    return None


def is_websocket_upgrade(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    upgrade = header_value(headers, b"upgrade")
    return (
        upgrade is not None
        and upgrade.strip().lower() == b"websocket"
        and b"upgrade" in connection_tokens(headers)
    )


def split_target(target: bytes) -> tuple[str, str]:
    """Split a request target into (path, query), decoded as latin-1."""
    text = target.decode("latin-1")
    if text.startswith(("http://", "https://")):
        # absolute-form: keep only the path
        rest = text.split("://", 1)[1]
        slash = rest.find("/")
        text = rest[slash:] if slash >= 0 else "/"
    path, _, query = text.partition("?")
    return path or "/", query


def simple_response_headers(
    body: bytes, content_type: bytes = b"text/plain; charset=utf-8"
) -> Headers:
    return [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
