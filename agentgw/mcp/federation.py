"""Federation, pure: which target a message goes to, and how names change.

How this works: an ``mcp`` backend compiles to an ``McpRoute``. A call
(``tools/call``, ``prompts/get``, ``resources/read`` and ``subscribe``,
``completion/complete``) names one target through its prefixed name or URI
(``mcp/names.py``); ``route_call`` finds that target and strips the prefix,
``outbound`` puts the prefix back on what the target says about its own
resources. List methods go to every target and are merged
(``mcp/merge.py``). Nothing here does I/O: the relay calls these functions.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from agentgw.config.model import McpBackend, McpTarget
from agentgw.errors import InvalidParams
from agentgw.mcp import names

if TYPE_CHECKING:
    from agentgw.policy.authz import ResourceKind
    from agentgw.policy.ratelimit import McpRateLimits

Message = dict[str, Any]
Headers = Sequence[tuple[bytes, bytes]]

LIST_METHODS = frozenset(
    {"tools/list", "prompts/list", "resources/list", "resources/templates/list"}
)
# list method -> (items key, the kind mcpAuthorization judges each item as)
LIST_KINDS: dict[str, tuple[str, ResourceKind]] = {
    "tools/list": ("tools", "tool"),
    "prompts/list": ("prompts", "prompt"),
    "resources/list": ("resources", "resource"),
    "resources/templates/list": ("resourceTemplates", "resource"),
}
# call method -> (the kind mcpAuthorization judges, the error text of a name
# that does not exist or is denied: the two look the same to the client)
CALL_KINDS: dict[str, tuple[ResourceKind, str]] = {
    "tools/call": ("tool", "Unknown tool"),
    "prompts/get": ("prompt", "Unknown prompt"),
    "resources/read": ("resource", "Unknown resource"),
    "resources/subscribe": ("resource", "Unknown resource"),
    "resources/unsubscribe": ("resource", "Unknown resource"),
}
_BY_NAME = ("tools/call", "prompts/get")
_BY_URI = ("resources/read", "resources/subscribe", "resources/unsubscribe")


@attrs.frozen
class McpRoute:
    """An ``mcp`` backend, compiled. Two routes compiled from equal config
    are equal; a reload that leaves a backend as it was even keeps its
    running route object (``app.Security.unchanged_mcp_route``), so its
    sessions, its shared session (found by identity) and its rate limits
    carry on. ``tls`` maps a target name to its TLS settings (``agentgw.tls``)."""

    targets: tuple[McpTarget, ...]
    prefix: bool
    prefix_uris: bool
    fail_open: bool
    stateful: bool
    dns_rebinding_protection: bool = False
    passthrough_targets: frozenset[str] = frozenset()
    tls: Mapping[str, Any] = attrs.field(factory=dict, eq=False)
    rate_limits: McpRateLimits | None = attrs.field(default=None, eq=False)

    @classmethod
    def compile(cls, backend: McpBackend, tls: Mapping[str, Any] | None = None) -> McpRoute:
        mode = backend.prefix_mode or "conditional"
        n = len(backend.targets)
        return cls(
            targets=backend.targets,
            prefix=names.should_prefix(mode, n),
            prefix_uris=names.should_prefix(mode, n, uris=True),
            fail_open=backend.failure_mode == "failOpen",
            stateful=backend.stateful_mode != "stateless",
            # None (not given) is resolved by the gateway before compiling.
            dns_rebinding_protection=bool(backend.dns_rebinding_protection),
            passthrough_targets=frozenset(
                t.name
                for t in backend.targets
                if t.policies is not None and t.policies.has_passthrough
            ),
            tls=dict(tls or {}),
        )

    @property
    def target_names(self) -> list[str]:
        return [t.name for t in self.targets]

    @property
    def resumable(self) -> bool:
        """Whether another process can take up a session of this route: only
        Streamable HTTP upstream sessions live outside this process."""
        return all(t.mcp is not None for t in self.targets)


def params_of(message: Message) -> dict[str, Any]:
    params = message.get("params")
    return params if isinstance(params, dict) else {}


def call_name(message: Message) -> str | None:
    """The tool or prompt name, or the resource URI, a call is about."""
    params = params_of(message)
    for key in ("name", "uri"):
        if isinstance(params.get(key), str):
            return str(params[key])
    ref = params.get("ref")
    if isinstance(ref, dict):
        value = ref.get("name") or ref.get("uri")
        return str(value) if value else None
    return None


def route_call(route: McpRoute, message: Message) -> tuple[str, Message]:
    """The target of a call, and the message with the target's own name.

    Raises:
        InvalidParams: the name or URI belongs to no target, or the method
            cannot be routed to one target.
    """
    targets = route.target_names
    params = dict(params_of(message))
    method = message.get("method")
    if method in _BY_NAME:
        split = names.split_name(str(params.get("name", "")), targets, route.prefix)
        if split is None:
            label = "Unknown tool" if method == "tools/call" else "Unknown prompt"
            raise InvalidParams(f"{label}: {params.get('name')}")
        target, params["name"] = split
    elif method in _BY_URI:
        split = names.split_uri(str(params.get("uri", "")), targets, route.prefix_uris)
        if split is None:
            raise InvalidParams(f"Unknown resource: {params.get('uri')}")
        target, params["uri"] = split
    elif method == "completion/complete":
        ref = dict(params.get("ref") or {})
        key = "name" if "name" in ref else "uri"
        if key == "name":
            split = names.split_name(str(ref["name"]), targets, route.prefix)
        else:
            split = names.split_uri(str(ref.get("uri", "")), targets, route.prefix_uris)
        if split is None:
            raise InvalidParams("unknown completion reference")
        target, ref[key] = split
        params["ref"] = ref
    elif len(targets) == 1:
        return targets[0], message
    else:
        raise InvalidParams(f"method {method!r} cannot be routed to one target")
    return target, {**message, "params": params}


def outbound(route: McpRoute, target: str, message: Message, method: str) -> Message:
    """What ``target`` says about its resources, with the gateway's prefix."""
    if not route.prefix_uris:
        return message
    if message.get("method") == "notifications/resources/updated":
        params = dict(params_of(message))
        if isinstance(params.get("uri"), str):
            params["uri"] = names.prefix_uri(target, params["uri"])
        return {**message, "params": params}
    result = message.get("result")
    if method == "resources/read" and isinstance(result, dict):
        contents = result.get("contents")
        if isinstance(contents, list):
            prefixed = [
                {**c, "uri": names.prefix_uri(target, c["uri"])}
                if isinstance(c, dict) and isinstance(c.get("uri"), str)
                else c
                for c in contents
            ]
            return {**message, "result": {**result, "contents": prefixed}}
    return message


def list_messages(message: Message, state: Mapping[str, str | None]) -> dict[str, Message]:
    """One list request per target, each with that target's own cursor."""
    base = {k: v for k, v in params_of(message).items() if k != "cursor"}
    return {
        target: {**message, "params": {**base, "cursor": cursor} if cursor else base}
        for target, cursor in state.items()
    }


# ---------------------------------------------------------------- DNS rebinding


def _is_localhost(host: str) -> bool:
    host = host.lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host in ("localhost", "127.0.0.1", "::1")


def is_localhost_request(headers: Headers) -> bool:
    """The MCP spec's DNS-rebinding rule for localhost servers: Host must be
    a loopback name, and Origin, if sent (once), a loopback http(s) origin."""
    hosts = [v for n, v in headers if n == b"host"]
    if len(hosts) != 1 or not _is_localhost(hosts[0].decode("latin-1").strip()):
        return False
    origins = [v for n, v in headers if n == b"origin"]
    if not origins:
        return True
    if len(origins) > 1:
        return False
    origin = urllib.parse.urlsplit(origins[0].decode("latin-1").strip())
    return (
        origin.scheme in ("http", "https")
        and origin.username is None
        and origin.path in ("", "/")
        and not origin.query
        and not origin.fragment
        and _is_localhost(origin.netloc)
    )


def legacy_session_id(query: str) -> str:
    """The ``sessionId`` of a legacy SSE POST's query."""
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name == "sessionId":
            return value
    return ""
