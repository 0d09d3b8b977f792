"""HTTP/1.1 values with no I/O: request- and response-head checks, hop-by-hop headers.

How this works: h11 checks framing, not policy. Before a request head is fed
to h11, ``check_request_head`` scans the raw bytes of the whole head once and
refuses what a gateway must not pass on (request smuggling vectors, ambiguous
targets and hosts, oversized heads), each with its status: 400, 414, 431 or
505. h11 then parses the same bytes, so the two never disagree about what was
checked. An upstream's response head gets the same treatment from
``check_response_head`` (and ``check_response_head_start`` while it is still
arriving) before the pool feeds it to h11: anything refused there is an
``UpstreamError`` (502) and is never relayed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from agentgw.errors import ClientError, UpstreamError

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
# A header block as h11 would send it: token names; values with no control
# characters and no whitespace at their edges.
_FIELDS = re.compile(
    rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:"
    rb"(?:[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?\r\n)*"
)
_TARGET = re.compile(rb"^[\x21-\x7e]+$")  # h11's too: no obs-text
# RFC 9112 section 3.2 Host = uri-host [ ":" port ]; uri-host is an IP literal
# in brackets or a reg-name (IPv4 addresses are reg-names too). No userinfo.
_HOST = re.compile(
    rb"^(?:\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+)(?::([0-9]{1,5}))?$"
)
_ABSOLUTE = re.compile(rb"^(?i:https?)://([^/?#]*)")
_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] [0-9]{3}(?: [\t\x20-\x7e\x80-\xff]*)?$")


@attrs.frozen
class HeadLimits:
    """Bounds of one message head: the request (or status) line, each header
    line, the number of header lines, and the whole head."""

    max_request_line: int = 8192
    max_head: int = 65536
    max_header_line: int = 8192
    max_headers: int = 100

    @classmethod
    def from_config(cls, http: Any) -> HeadLimits:
        """From ``config.http`` (an ``agentgw.config.model.HttpLimits``)."""
        return cls(
            max_request_line=http.max_request_line_bytes,
            max_head=http.max_header_bytes,
            max_header_line=http.max_header_line_bytes,
            max_headers=http.max_headers,
        )


@attrs.frozen
class RequestHead:
    """What the raw scan learned; h11 parses the rest."""

    method: bytes
    target: bytes
    http_version: bytes
    content_length: int | None
    chunked: bool
    authority: bytes | None = None  # of an absolute-form target: it replaces Host

    @property
    def origin_target(self) -> bytes:
        """The target in origin form (an absolute-form target without its
        scheme and authority)."""
        if self.authority is None:
            return self.target
        rest = self.target.split(b"://", 1)[1][len(self.authority) :]
        return rest if rest.startswith(b"/") else b"/" + rest


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
    shown = repr(request_line[:128])  # for the log line only
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise ClientError("malformed request line", detail=shown)
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise ClientError("malformed request method", detail=shown)
    if not _TARGET.fullmatch(target):
        raise ClientError("malformed request target", detail=shown)
    authority = _target_authority(method, target)
    match = _VERSION.fullmatch(version)
    if match is None:
        raise ClientError("malformed HTTP version")
    if match.group(1) != b"1" or match.group(2) not in (b"0", b"1"):
        raise ClientError("HTTP version not supported", status=505)
    http10 = match.group(2) == b"0"

    content_length: int | None = None
    transfer_encodings = 0
    chunked = False
    hosts = 0
    fields = 0
    for line in lines[1:]:
        if not line:
            continue
        fields += 1
        # Details name the header, never show a value: it may be a credential.
        if fields > limits.max_headers:
            raise ClientError(
                "too many header fields", status=431, detail=f"over {limits.max_headers}"
            )
        name, sep, value = line.partition(b":")
        if len(line) > limits.max_header_line:
            detail = f"{name[:64]!r}: {len(line)} bytes, over {limits.max_header_line}"
            raise ClientError("header line too long", status=431, detail=detail)
        if line[:1] in (b" ", b"\t"):
            raise ClientError("obsolete header line folding", detail=f"header line {fields}")
        if not sep or not _TOKEN.fullmatch(name):
            raise ClientError("malformed header line", detail=f"header line {fields}")
        name = name.lower()
        value = value.strip(b" \t")
        if not _FIELD_VALUE.fullmatch(value):
            raise ClientError("control character in header value", detail=f"{name[:64]!r}")
        if name == b"content-length":
            if content_length is not None:
                raise ClientError("duplicate Content-Length")
            if not _DIGITS.fullmatch(value):
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
            if not is_valid_host(value):
                raise ClientError("invalid Host header", detail=repr(value[:128]))
    if chunked and content_length is not None:
        raise ClientError("both Content-Length and Transfer-Encoding")
    if chunked and http10:
        raise ClientError("Transfer-Encoding on HTTP/1.0")
    if hosts > 1:
        raise ClientError("duplicate Host header")
    if hosts == 0 and not http10 and authority is None:
        raise ClientError("missing Host header")
    return RequestHead(method, target, version, content_length, chunked, authority)


def is_valid_host(value: bytes) -> bool:
    """A Host value (RFC 9112 section 3.2): a host name, IPv4 address or
    bracketed IPv6 address, optionally ``:port`` (0-65535). Empty is invalid:
    an ``http`` URI has a host (RFC 9110 section 4.2.1)."""
    match = _HOST.fullmatch(value)
    if match is None:
        return False
    port = match.group(1)
    return port is None or int(port) <= 65535


def _target_authority(method: bytes, target: bytes) -> bytes | None:
    """The authority of an absolute-form target, None for origin form.

    Raises:
        ClientError: authority-form (CONNECT), a misplaced ``*``, another
            scheme, or an absolute-form target without a valid authority.
    """
    if target.startswith(b"/"):
        return None
    if target == b"*" and method == b"OPTIONS":
        return None
    match = _ABSOLUTE.match(target)
    if match is None:
        raise ClientError("malformed request target", detail=repr(target[:128]))
    authority = match.group(1)
    if not is_valid_host(authority):
        raise ClientError("invalid request target authority", detail=repr(authority[:128]))
    return authority


def check_response_head_start(buf: bytes | bytearray, limits: HeadLimits) -> None:
    """Refuse a response head that is still arriving as soon as it is
    already wrong: not starting like ``HTTP/1.x`` (an SSH banner, say), a bare
    LF, too large, too many lines, or a line too long. Only C-speed scans:
    it runs again on every read of a head that arrives in pieces.

    Raises:
        UpstreamError: "upstream protocol error"; ``detail`` says why.
    """
    if len(buf) > limits.max_head:
        raise _bad_response(f"response head larger than {limits.max_head} bytes")
    prefix = bytes(buf[:7])
    if prefix != b"HTTP/1."[: len(prefix)]:
        raise _bad_response(f"not an HTTP/1.x response: starts with {prefix!r}")
    lines = buf.count(b"\n")
    if lines != buf.count(b"\r\n"):
        raise _bad_response("bare LF in the response head")
    if lines > limits.max_headers + 2:  # the status line, the fields, the blank line
        raise _bad_response(f"more than {limits.max_headers} header fields")
    line_start = buf.rfind(b"\n") + 1
    if len(buf) - line_start > limits.max_header_line:
        raise _bad_response(f"a response head line longer than {limits.max_header_line} bytes")


def check_response_head(head: bytes, limits: HeadLimits) -> None:
    """Refuse what a gateway must not relay. ``head`` ends with the blank line.

    Beyond h11's own checks: the head limits of requests, no obsolete line
    folding, no bare LF, a field syntax h11 also demands, and framing that
    cannot be read two ways: Content-Length and Transfer-Encoding together,
    Content-Length values that disagree, or a Transfer-Encoding other than
    one ``chunked``.

    Raises:
        UpstreamError: "upstream protocol error"; ``detail`` says why.
    """
    check_response_head_start(head, limits)
    lines = head.split(b"\r\n")
    status_line = lines[0]
    if len(status_line) > limits.max_header_line or not _STATUS_LINE.fullmatch(status_line):
        raise _bad_response(f"malformed status line {status_line[:64]!r}")
    lengths: set[bytes] = set()
    encodings = 0
    fields = 0
    for line in lines[1:]:
        if not line:
            continue
        fields += 1
        if fields > limits.max_headers:
            raise _bad_response(f"more than {limits.max_headers} header fields")
        if len(line) > limits.max_header_line:
            raise _bad_response(f"a response head line longer than {limits.max_header_line} bytes")
        if line[:1] in (b" ", b"\t"):
            raise _bad_response("obsolete line folding in the response head")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise _bad_response(f"malformed response header line {line[:64]!r}")
        name = name.lower()
        value = value.strip(b" \t")
        if not _FIELD_VALUE.fullmatch(value):
            raise _bad_response(f"control character in response header {name.decode()}")
        if name == b"content-length":
            for item in value.split(b","):
                item = item.strip(b" \t")
                if not _DIGITS.fullmatch(item):
                    raise _bad_response(f"malformed Content-Length {value[:64]!r}")
                lengths.add(item.lstrip(b"0") or b"0")
        elif name == b"transfer-encoding":
            encodings += 1
            if encodings > 1 or value.lower() != b"chunked":
                raise _bad_response(f"unsupported Transfer-Encoding {value[:64]!r}")
    if len(lengths) > 1:
        raise _bad_response("Content-Length values that disagree")
    if lengths and encodings:
        raise _bad_response("both Content-Length and Transfer-Encoding")


def _bad_response(detail: str) -> UpstreamError:
    return UpstreamError("upstream protocol error", detail=detail)


def underscore_header_names(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """The names with an underscore (``X_User``): many frameworks read them
    as their dashed twin (``X-User``), so they can spoof a header a policy or
    an upstream trusts."""
    return [name for name, _ in headers if b"_" in name]


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


# What an MCP upstream never gets from the client: the transports set these
# themselves, or they describe the client's own hop (its session id at the
# gateway, the body the relay may rewrite: prefixed names in Mcp-Name), or
# we would have to undo them (Accept-Encoding: agentgw does not decompress).
# Mcp-Protocol-Version passes: the Streamable HTTP transport forwards it on
# initialize and puts the negotiated version on every later request.
MCP_NOT_FORWARDED = frozenset(
    {
        b"host",
        b"content-length",
        b"content-type",
        b"content-encoding",
        b"accept",
        b"accept-encoding",
        b"mcp-session-id",
        b"mcp-method",
        b"mcp-name",
        b"last-event-id",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-protocol",
        b"sec-websocket-extensions",
        b"sec-websocket-accept",
    }
)


def forward_headers(
    headers: Sequence[tuple[bytes, bytes]],
    client_ip: str,
    *,
    proto: bytes = b"http",
    drop: frozenset[bytes] = frozenset(),
    keep_upgrade: bool = False,
) -> Headers:
    """The client's headers as an upstream gets them: the one filter of
    agentgw, for host backends and every MCP transport alike.

    Hop-by-hop headers, the headers ``Connection`` names and ``drop`` are
    removed; the client's address is appended to ``X-Forwarded-For`` (the
    last entry is always the real peer) and ``X-Forwarded-Proto`` is set.
    With ``keep_upgrade`` the ``Connection: upgrade``/``Upgrade`` pair of a
    WebSocket tunnel is kept.
    """
    removed = HOP_BY_HOP | drop
    if any(n == b"connection" for n, _ in headers):
        removed = removed | connection_tokens(headers)
    out: Headers = []
    prior: bytes | None = None
    for name, value in headers:
        if name in removed:
            continue
        if name == b"x-forwarded-for":
            prior = value if prior is None else prior + b", " + value
        elif name != b"x-forwarded-proto":
            out.append((name, value))
    if keep_upgrade:
        out.extend((n, v) for n, v in headers if n == b"upgrade")
        out.append((b"connection", b"upgrade"))
    ip = client_ip.encode()
    out.append((b"x-forwarded-for", prior + b", " + ip if prior else ip))
    out.append((b"x-forwarded-proto", proto))
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


def fields_are_valid(headers: Headers) -> bool:
    """Whether h11 would accept every field of ``headers`` as it is: one
    regex over the whole block, where h11 runs two per field. A block that
    passes may be given to h11 as already validated (``_parsed=True``)."""
    try:
        block = b"".join([name + b":" + value + b"\r\n" for name, value in headers])
    except TypeError:
        return False
    # One line per field: a line end inside a value, or a colon inside a
    # name, would make the block parse as other fields than these.
    if block.count(b"\n") != len(headers) or any(b":" in name for name, _ in headers):
        return False
    return _FIELDS.fullmatch(block) is not None
