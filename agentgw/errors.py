"""The one error tree.

Every error says whose fault it was and, for HTTP, what to send. Library
exceptions (h11, cattrs, jose, OSError) are mapped to these at the edge only.
"""

from __future__ import annotations


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
    """An error answered with an HTTP status and a short text body."""

    status: int = 500

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if status is not None:
            self.status = status


class ClientError(HTTPError):
    """The client sent something we refuse (4xx, 505). The connection closes."""

    status = 400


class UpstreamError(HTTPError):
    """The upstream failed us: 502 protocol error or reset."""

    status = 502


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached: connection refused (503)."""

    status = 503


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time (504)."""

    status = 504


class ClientGone(AgentgwError):
    """The client closed its connection or stopped reading; nothing to send."""


class AbortResponse(AgentgwError):
    """The response was started and cannot be completed; the client's
    connection is closed without ending the message, so the client sees a
    truncated response rather than a complete one."""
