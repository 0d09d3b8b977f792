"""MCP protocol revisions: ordering, negotiation, and the stateless revision.

Revisions are dates (``YYYY-MM-DD``) and order as strings, as agentgateway
compares them. From 2026-07-28 on, clients start with ``server/discover``
instead of ``initialize``, send ``Mcp-Method``/``Mcp-Name`` headers, and there
are no sessions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

KNOWN_VERSIONS: tuple[str, ...] = (
    "2024-11-05",
    "2025-03-26",
    "2025-06-18",
    "2025-11-25",
    "2026-07-28",
)
STATELESS_REVISION = "2026-07-28"
LATEST = KNOWN_VERSIONS[-1]

# Methods a stateless-revision client must not send (agentgateway's
# REMOVED_METHODS_2026_07_28): they set up or use a session.
REMOVED_IN_STATELESS = frozenset(
    {"initialize", "ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"}
)

MCP_METHOD_HEADER = "Mcp-Method"
MCP_NAME_HEADER = "Mcp-Name"

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def is_stateless_revision(version: str) -> bool:
    """Whether ``version`` is 2026-07-28 or later (no sessions, no ``initialize``)."""
    return bool(_DATE.fullmatch(version)) and version >= STATELESS_REVISION


# What ``initialize`` can agree on: the stateless revision has no initialize.
INITIALIZE_VERSIONS: tuple[str, ...] = tuple(
    v for v in KNOWN_VERSIONS if not is_stateless_revision(v)
)


def negotiate(client_version: str | None, supported: Sequence[str] = KNOWN_VERSIONS) -> str:
    """The version a server answers with, as the MCP lifecycle says.

    Returns:
        ``client_version`` if it is in ``supported``, else the latest of
        ``supported``.

    Raises:
        ValueError: ``supported`` is empty.
    """
    if not supported:
        raise ValueError("no supported protocol versions")
    if client_version is not None and client_version in supported:
        return client_version
    return max(supported)


def lowest(versions: Iterable[str]) -> str:
    """The oldest of ``versions``.

    Raises:
        ValueError: ``versions`` is empty.
    """
    return min(versions)


# ---------------------------------------------------------------- 2026-07-28 results

META_PREFIX = "io.modelcontextprotocol/"
SERVER_INFO_META_KEY = META_PREFIX + "serverInfo"
PROTOCOL_VERSION_META_KEY = META_PREFIX + "protocolVersion"
_CACHEABLE = frozenset(
    {"tools/list", "prompts/list", "resources/list", "resources/templates/list", "resources/read"}
)


def to_stateless_result(method: str, result: dict[str, Any]) -> dict[str, Any]:
    """An older upstream's result in the 2026-07-28 shape: ``resultType``,
    and for lists and reads ``ttlMs`` and ``cacheScope`` (private: answers
    may depend on who asks, so no shared cache may reuse them)."""
    out = dict(result)
    out.setdefault("resultType", "complete")
    if method in _CACHEABLE:
        out.setdefault("ttlMs", 0)
        out.setdefault("cacheScope", "private")
    return out


def protocol_meta(params: dict[str, Any]) -> dict[str, Any]:
    """The 2026-07-28 envelope of a request: its ``_meta``'s
    ``io.modelcontextprotocol/*`` keys."""
    meta = params.get("_meta")
    if not isinstance(meta, dict):
        return {}
    return {k: v for k, v in meta.items() if str(k).startswith(META_PREFIX)}


def strip_protocol_meta(params: dict[str, Any]) -> dict[str, Any]:
    """Drop the 2026-07-28 envelope (``io.modelcontextprotocol/*`` keys of
    ``_meta``) before a request goes to an upstream on an older revision."""
    meta = params.get("_meta")
    if not isinstance(meta, dict):
        return params
    kept = {k: v for k, v in meta.items() if not str(k).startswith(META_PREFIX)}
    out = {k: v for k, v in params.items() if k != "_meta"}
    if kept:
        out["_meta"] = kept
    return out
