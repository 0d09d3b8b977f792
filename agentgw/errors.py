"""The one error tree, and the one place an error becomes an answer.

Every error says whose fault it was and what to send. ``reason`` is the short,
generic text the client may see ("upstream unavailable", "invalid JSON");
``detail`` is what only the log line gets (addresses, library messages).
Each class knows its HTTP status and its JSON-RPC code, and ``http_body`` /
``rpc_error`` render it: nothing else in agentgw maps an error to a status or
a code. Library exceptions (h11, cattrs, jose, OSError, ssl) are mapped to
these at the edge only.
"""

from __future__ import annotations

from typing import Any

# JSON-RPC 2.0
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Implementation-defined server errors (-32000 to -32099)
SERVER_ERROR = -32000
SESSION_NOT_FOUND = -32001
# MCP
RESOURCE_NOT_FOUND = -32002
HEADER_MISMATCH = -32020
MISSING_CAPABILITY = -32021
UNSUPPORTED_VERSION = -32022
URL_ELICITATION_REQUIRED = -32042


class AgentgwError(Exception):
    """Base of every error agentgw raises on purpose."""


class ConfigError(AgentgwError):
    """The configuration is invalid.

    Attributes:
        errors: every problem found, each as ``"<field path>: <problem>"``.
    """

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors) if self.errors else "invalid configuration")


class HTTPError(AgentgwError):
    """An error with an answer: an HTTP status, a JSON-RPC code, a short text.

    Args:
        reason: the short, generic text the client gets.
        status: overrides the class's HTTP status.
        detail: what went wrong inside, for the log line only.
        code: overrides the class's JSON-RPC code.
        data: the JSON-RPC error's ``data``.
        headers: extra response headers (``Allow``, ``Retry-After``...).
    """

    status: int = 500
    code: int = INTERNAL_ERROR

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        detail: str | None = None,
        code: int | None = None,
        data: Any = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.data = data
        self.headers = headers or []
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code

    @property
    def log_text(self) -> str:
        """The reason with its detail: for the log, never for the client."""
        return f"{self.reason}: {self.detail}" if self.detail else self.reason

    def http_body(self) -> bytes:
        """The plain-text body of an HTTP answer."""
        return f"{self.reason}\n".encode()

    def rpc_error(self, id: Any) -> dict[str, Any]:
        """The JSON-RPC error response for request ``id`` (None if unknown)."""
        error: dict[str, Any] = {"code": self.code, "message": self.reason}
        if self.data is not None:
            error["data"] = self.data
        return {"jsonrpc": "2.0", "id": id, "error": error}


class ClientError(HTTPError):
    """The client sent something we refuse (4xx, 505)."""

    status = 400
    code = INVALID_REQUEST


class NotFound(ClientError):
    """No route, session or method for this request (404)."""

    status = 404


class InvalidParams(ClientError):
    """A well-formed message whose parameters we cannot serve: an unknown
    tool or resource name, a bad cursor (-32602)."""

    code = INVALID_PARAMS


class MethodNotFound(ClientError):
    """A method agentgw or the protocol revision does not have (-32601)."""

    status = 404
    code = METHOD_NOT_FOUND


class RateLimited(ClientError):
    """Over a rate limit (429 with Retry-After, or -32000)."""

    status = 429
    code = SERVER_ERROR


class UpstreamError(HTTPError):
    """The upstream failed us: a protocol error or a reset (502)."""

    status = 502
    code = INTERNAL_ERROR


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached: refused, unresolvable, TLS (503)."""

    status = 503


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time (504)."""

    status = 504


class ClientGone(AgentgwError):
    """The client closed its connection or stopped reading; nothing to send."""


class HeldByWorker(AgentgwError):
    """The request belongs to another worker of the gateway (an MRTR retry of
    a call that worker holds): it is relayed there as it came."""

    def __init__(self, worker: int, msg_id: Any) -> None:
        super().__init__(f"held by worker {worker}")
        self.worker = worker
        self.msg_id = msg_id


class AbortResponse(AgentgwError):
    """The response was started and cannot be completed; the client's
    connection is closed without ending the message, so the client sees a
    truncated response rather than a complete one."""
