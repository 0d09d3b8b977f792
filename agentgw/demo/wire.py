"""Wire values for the demo server, with no I/O: JSON-RPC, SSE, HTTP checks.

Everything here is a pure function of its arguments, shared by the protocol
core (``server.py``) and both transports.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs

from agentgw.wire.jsonrpc import INTERNAL_ERROR as INTERNAL_ERROR
from agentgw.wire.jsonrpc import INVALID_PARAMS as INVALID_PARAMS
from agentgw.wire.jsonrpc import INVALID_REQUEST as INVALID_REQUEST
from agentgw.wire.jsonrpc import METHOD_NOT_FOUND as METHOD_NOT_FOUND
from agentgw.wire.jsonrpc import PARSE_ERROR as PARSE_ERROR
from agentgw.wire.jsonrpc import RESOURCE_NOT_FOUND as RESOURCE_NOT_FOUND

JSON = dict[str, Any]
RequestId = str | int

# The handshake-era protocol revisions, oldest first.
SUPPORTED_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]
# Streamable HTTP requests without an MCP-Protocol-Version header are 2025-03-26.
DEFAULT_HTTP_VERSION = "2025-03-26"
# The revisions with no handshake: every request carries its own ``_meta``.
STATELESS_VERSIONS = ("2026-07-28",)

SESSION_NOT_FOUND = -32001
REQUEST_TIMEOUT = -32001
HEADER_MISMATCH = -32020
MISSING_CAPABILITY = -32021
UNSUPPORTED_VERSION = -32022

# The HTTP status of a 2026-07-28 error response, by JSON-RPC code (others get 200).
ERROR_STATUS = {
    PARSE_ERROR: 400,
    INVALID_REQUEST: 400,
    INVALID_PARAMS: 400,
    HEADER_MISMATCH: 400,
    MISSING_CAPABILITY: 400,
    UNSUPPORTED_VERSION: 400,
    METHOD_NOT_FOUND: 404,
}

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})

MessageKind = Literal["request", "notification", "response", "invalid"]


def negotiate_version(requested: str) -> str:
    """The client's version when we speak it, else our latest (the spec's rule)."""
    return requested if requested in SUPPORTED_VERSIONS else LATEST_VERSION


def is_request_id(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def classify(message: object) -> MessageKind:
    """What a parsed JSON-RPC 2.0 message is; ``invalid`` for anything else."""
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return "invalid"
    if "method" in message:
        if not isinstance(message["method"], str):
            return "invalid"
        if "id" not in message:
            return "notification"
        return "request" if is_request_id(message["id"]) else "invalid"
    if is_request_id(message.get("id")) and ("result" in message) != ("error" in message):
        return "response"
    return "invalid"


def id_of(message: object) -> RequestId | None:
    """The message's id when it has a valid one (for error replies)."""
    if isinstance(message, dict) and is_request_id(message.get("id")):
        value: RequestId = message["id"]
        return value
    return None


def result_message(request_id: RequestId, result: JSON) -> JSON:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def error_message(request_id: RequestId | None, code: int, message: str, data: Any = None) -> JSON:
    error: JSON = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def notification(method: str, params: JSON | None = None) -> JSON:
    out: JSON = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        out["params"] = params
    return out


def request(request_id: RequestId, method: str, params: JSON | None = None) -> JSON:
    out: JSON = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        out["params"] = params
    return out


def dumps(message: JSON) -> bytes:
    """Compact JSON on one line (``json.dumps`` escapes newlines in strings)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


# ---------------------------------------------------------------- stdio framing


@attrs.define
class LineSplitter:
    """Splits a byte stream into lines of at most ``limit`` bytes.

    ``feed`` returns the complete lines; ``None`` stands for a line that was
    too long: it is dropped as it arrives, up to its newline.
    """

    limit: int
    _buf: bytearray = attrs.field(factory=bytearray)
    _is_skipping: bool = False

    def feed(self, data: bytes) -> list[bytes | None]:
        self._buf += data
        out: list[bytes | None] = []
        while (end := self._buf.find(b"\n")) >= 0:
            line = bytes(self._buf[:end]).rstrip(b"\r")
            del self._buf[: end + 1]
            if self._is_skipping:
                self._is_skipping = False
            elif len(line) > self.limit:
                out.append(None)
            else:
                out.append(line)
        if len(self._buf) > self.limit:
            self._buf.clear()
            if not self._is_skipping:
                self._is_skipping = True
                out.append(None)
        return out

    def finish(self) -> list[bytes | None]:
        """The last line when the stream ends without a newline."""
        if self._is_skipping or not self._buf:
            return []
        line, self._buf = bytes(self._buf), bytearray()
        return [line]


# ---------------------------------------------------------------- SSE


def encode_sse(data: str, *, event_id: str | None = None, retry_ms: int | None = None) -> bytes:
    """One SSE event. Empty ``data`` with an id is a priming event."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if retry_ms is not None:
        lines.append(f"retry: {retry_ms}")
    lines.extend(f"data: {line}" for line in data.split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


SSE_KEEPALIVE = b": keepalive\n\n"


def event_id(stream_key: str, seq: int) -> str:
    return f"{stream_key}-{seq}"


def parse_event_id(value: str) -> tuple[str, int] | None:
    """``(stream key, sequence number)`` from an id we issued, else None."""
    key, sep, seq = value.rpartition("-")
    if not sep or not key or not seq.isdigit() or len(seq) > 18:
        return None
    return key, int(seq)


# ---------------------------------------------------------------- HTTP values


def media_type(content_type: str | None) -> str:
    """``application/json`` from ``Application/JSON; charset=utf-8``."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def accepts(accept: str | None, wanted: str) -> bool:
    """Whether an Accept header admits ``wanted`` (wildcards count)."""
    if not accept:
        return False
    kind = wanted.split("/", 1)[0]
    for item in accept.split(","):
        mt = media_type(item)
        if mt in (wanted, "*/*", f"{kind}/*"):
            return True
    return False


def _quality(item: str) -> float:
    for param in item.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value.strip())
            except ValueError:
                return 0.0
    return 1.0


def prefers_sse(accept: str | None) -> bool:
    """Whether an Accept header ranks ``text/event-stream`` above
    ``application/json`` (by q-value, then by order)."""
    ranks: dict[str, tuple[float, int]] = {}
    for position, item in enumerate((accept or "").split(",")):
        mt = media_type(item)
        if mt in ("application/json", "text/event-stream"):
            ranks.setdefault(mt, (_quality(item), -position))
    sse = ranks.get("text/event-stream")
    return sse is not None and sse > ranks.get("application/json", (0.0, 0))


def host_name(authority: str) -> str:
    """``127.0.0.1`` from ``127.0.0.1:8080``, ``[::1]`` from ``[::1]:80``."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        end = authority.find("]")
        return authority[: end + 1] if end > 0 else authority
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


def origin_host(origin: str) -> str | None:
    """The host of an Origin header value, None if it has none (``null``)."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return host_name(parts.netloc)


def is_allowed_origin(
    host: str | None, origin: str | None, allowed: Iterable[str] = LOCAL_HOSTS
) -> bool:
    """DNS-rebinding protection: the Host header, and the Origin header when
    present, must name an allowed host (by default only loopback names)."""
    names = set(allowed)
    if host is None or host_name(host) not in names:
        return False
    if origin is None:
        return True
    return origin_host(origin) in names
