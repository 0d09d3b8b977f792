"""The 2026-07-28 revision as the gateway serves it, pure: the per-request
``_meta`` envelope, the standard headers (SEP-2243), the HTTP status of an
error, and ``subscriptions/listen`` filters.

How this works: a 2026-07-28 request carries its own context in
``params._meta`` (protocol version, client capabilities, log level), and
its routing facts in headers (``Mcp-Method``, ``Mcp-Name``, ``Mcp-Param-*``)
that must match the body. ``check_request`` refuses a request whose envelope
or headers are wrong, with the error the revision names; the relay
(``relay/stateless.py``) renders it with the status ``status_of`` gives.
Nothing here does I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from agentgw.errors import (
    HEADER_MISMATCH,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    MISSING_CAPABILITY,
    PARSE_ERROR,
    RESOURCE_NOT_FOUND,
    UNSUPPORTED_VERSION,
    ClientError,
    InvalidParams,
)
from agentgw.mcp import versions

Message = dict[str, Any]
Headers = Sequence[tuple[bytes, bytes]]

CLIENT_CAPABILITIES_KEY = versions.META_PREFIX + "clientCapabilities"
CLIENT_INFO_KEY = versions.META_PREFIX + "clientInfo"
LOG_LEVEL_KEY = versions.META_PREFIX + "logLevel"
SUBSCRIPTION_ID_KEY = versions.META_PREFIX + "subscriptionId"
ACKNOWLEDGED = "notifications/subscriptions/acknowledged"  # a listen stream's first message
SUPPORTED = (versions.STATELESS_REVISION,)

# RFC 5424 severities, least severe first (MCP logging levels).
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")

# The methods of 2026-07-28 that the gateway serves or routes to a target.
METHODS = frozenset(
    {
        "server/discover",
        "subscriptions/listen",
        "tools/list",
        "tools/call",
        "prompts/list",
        "prompts/get",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "completion/complete",
        "tasks/get",
        "tasks/update",
        "tasks/cancel",
        "tasks/list",
        "tasks/result",
    }
)

# The body field ``Mcp-Name`` repeats, by method (SEP-2243).
NAME_FIELDS = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
    "tasks/get": "taskId",
    "tasks/update": "taskId",
    "tasks/cancel": "taskId",
}

# What an error code is over HTTP in this revision (else 200).
ERROR_STATUS = {
    PARSE_ERROR: 400,
    INVALID_REQUEST: 400,
    INVALID_PARAMS: 400,
    HEADER_MISMATCH: 400,
    MISSING_CAPABILITY: 400,
    UNSUPPORTED_VERSION: 400,
    METHOD_NOT_FOUND: 404,
}

# The client capability a server-to-client request needs.
REQUEST_CAPABILITY = {
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
}

# Notifications that belong on a ``subscriptions/listen`` stream, never on
# the answer to a request; with the filter field that asks for each.
LISTEN_NOTIFICATIONS = {
    "notifications/tools/list_changed": "toolsListChanged",
    "notifications/prompts/list_changed": "promptsListChanged",
    "notifications/resources/list_changed": "resourcesListChanged",
    "notifications/resources/updated": "resourceSubscriptions",
}


def status_of(code: object) -> int:
    """The HTTP status of an error answered as JSON."""
    return ERROR_STATUS.get(code, 200) if isinstance(code, int) else 200


@attrs.frozen
class Envelope:
    """The context a 2026-07-28 request carries in ``_meta``."""

    version: str
    capabilities: Mapping[str, Any]
    log_level: str | None = None

    def has_capability(self, name: str) -> bool:
        return isinstance(self.capabilities.get(name), dict)

    def wants_log(self, message: Message) -> bool:
        """Whether a ``notifications/message`` is at or above the level the
        request asked for (none without ``logLevel``)."""
        if self.log_level is None:
            return False
        params = message.get("params")
        level = params.get("level") if isinstance(params, dict) else None
        if level not in LOG_LEVELS:
            return True
        return LOG_LEVELS.index(level) >= LOG_LEVELS.index(self.log_level)


def _meta_of(message: Message) -> dict[str, Any] | None:
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return meta if isinstance(meta, dict) else None


def is_stateless_request(headers: Headers, message: Message, *, has_session: bool) -> bool:
    """Whether a POST is a 2026-07-28 request: no session, and
    ``server/discover``, or a 2026-07-28 version in ``_meta`` or in the
    ``MCP-Protocol-Version`` header."""
    if has_session:
        return False
    if message.get("method") == "server/discover":
        return True
    meta = _meta_of(message) or {}
    version = meta.get(versions.PROTOCOL_VERSION_META_KEY)
    header = _header(headers, b"mcp-protocol-version")
    return any(
        isinstance(v, str) and versions.is_stateless_revision(v.strip()) for v in (version, header)
    )


def parse_envelope(message: Message) -> Envelope:
    """The request's ``_meta`` envelope.

    Raises:
        InvalidParams: ``_meta`` is missing or lacks the protocol version or
            the client capabilities, or a field has the wrong type.
    """
    meta = _meta_of(message)
    if meta is None:
        raise InvalidParams("invalid params: _meta is required")
    version = meta.get(versions.PROTOCOL_VERSION_META_KEY)
    if not isinstance(version, str) or not version:
        raise InvalidParams(f"invalid params: _meta needs {versions.PROTOCOL_VERSION_META_KEY}")
    capabilities = meta.get(CLIENT_CAPABILITIES_KEY)
    if not isinstance(capabilities, dict):
        raise InvalidParams(f"invalid params: _meta needs {CLIENT_CAPABILITIES_KEY}")
    info = meta.get(CLIENT_INFO_KEY)
    if info is not None and not isinstance(info, dict):
        raise InvalidParams(f"invalid params: {CLIENT_INFO_KEY} must be an object")
    level = meta.get(LOG_LEVEL_KEY)
    if level is not None and level not in LOG_LEVELS:
        raise InvalidParams(f"invalid params: {LOG_LEVEL_KEY} must be a log level")
    return Envelope(version, capabilities, level)


def unsupported_version(requested: str) -> ClientError:
    data = {"supported": list(SUPPORTED), "requested": requested}
    return ClientError("unsupported protocol version", code=UNSUPPORTED_VERSION, data=data)


def header_mismatch(text: str) -> ClientError:
    return ClientError(text, code=HEADER_MISMATCH)


def check_request(headers: Headers, message: Message) -> Envelope:
    """The envelope of a 2026-07-28 request whose headers match its body.

    Raises:
        InvalidParams: a bad envelope (-32602).
        ClientError: -32020 when a standard header is missing or does not
            match the body; -32022 for a protocol version not served.
    """
    envelope = parse_envelope(message)
    header = _header(headers, b"mcp-protocol-version")
    if header is None:
        raise header_mismatch("MCP-Protocol-Version header is required")
    if header.strip() != envelope.version:
        raise header_mismatch("MCP-Protocol-Version header does not match _meta")
    problem = standard_header_problem(headers, message)
    if problem is not None:
        raise header_mismatch(problem)
    if envelope.version not in SUPPORTED:
        raise unsupported_version(envelope.version)
    return envelope


def _header(headers: Headers, name: bytes) -> str | None:
    """A header's value (repeats joined, as HTTP folds them), or None."""
    values = [v for n, v in headers if n == name]
    return b", ".join(values).decode("latin-1") if values else None


def decode_header_value(raw: str) -> str | None:
    """A header value as text: ``=?base64?...?=`` is strict Base64 of UTF-8
    (None when it is not), anything else is the value itself, its optional
    whitespace trimmed (RFC 9110 5.5)."""
    value = raw.strip(" \t")
    if not (value.startswith("=?base64?") and value.endswith("?=") and len(value) >= 11):
        return value
    try:
        return base64.b64decode(value[9:-2], validate=True).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None


def standard_header_problem(headers: Headers, message: Message) -> str | None:
    """Why ``Mcp-Method`` or ``Mcp-Name`` do not match the body, or None."""
    method = message.get("method")
    declared = _header(headers, b"mcp-method")
    if declared is None:
        return "Mcp-Method header is required"
    if declared.strip(" \t") != method:
        return "Mcp-Method header does not match the body"
    field = NAME_FIELDS.get(str(method))
    params = message.get("params")
    value = params.get(field) if field is not None and isinstance(params, dict) else None
    if not isinstance(value, str):
        return None
    named = _header(headers, b"mcp-name")
    if named is None:
        return "Mcp-Name header is required"
    if decode_header_value(named) != value:
        return "Mcp-Name header does not match the body"
    return None


def _header_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def param_header_problem(
    schema: object, arguments: object, header: Callable[[str], str | None]
) -> str | None:
    """Why the ``Mcp-Param-*`` headers of a tool's ``x-mcp-header``
    arguments do not match the call's arguments (SEP-2243), or None.

    Args:
        schema: the tool's ``inputSchema``.
        arguments: the call's ``arguments``.
        header: a request header by lowercase name, None when absent.
    """
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return None
    given = arguments if isinstance(arguments, dict) else {}
    for name, spec in properties.items():
        suffix = spec.get("x-mcp-header") if isinstance(spec, dict) else None
        if not isinstance(suffix, str) or not suffix:
            continue
        raw = header(f"mcp-param-{suffix.lower()}")
        if raw is None:
            if name in given and given[name] is not None:
                return f"Mcp-Param-{suffix} header is required"
            continue
        value = decode_header_value(raw)
        if value is None:
            return f"Mcp-Param-{suffix} is not valid Base64"
        if name not in given or value != _header_text(given[name]):
            return f"Mcp-Param-{suffix} does not match the arguments"
    return None


def header_lookup(headers: Headers) -> Callable[[str], str | None]:
    return lambda name: _header(headers, name.encode("latin-1"))


def missing_capability(capability: str) -> ClientError:
    """The refusal of a request that needs a capability the client did not
    declare (-32021, 400)."""
    return ClientError(
        f"the client did not declare the {capability} capability",
        code=MISSING_CAPABILITY,
        data={"requiredCapabilities": {capability: {}}},
    )


def to_stateless_error(method: str, error: dict[str, Any], uri: object = None) -> dict[str, Any]:
    """An older upstream's error in this revision: an unknown resource is
    -32602 (SEP-2164), no longer -32002, and its ``data`` names the URI
    asked for."""
    if method != "resources/read" or error.get("code") not in (RESOURCE_NOT_FOUND, INVALID_PARAMS):
        return error
    out = {**error, "code": INVALID_PARAMS}
    data = error.get("data")
    if isinstance(uri, str) and (data is None or (isinstance(data, dict) and "uri" not in data)):
        out["data"] = {**(data or {}), "uri": uri}
    return out


# ---------------------------------------------------------------- subscriptions/listen


@attrs.frozen
class ListenFilter:
    """What a ``subscriptions/listen`` stream asked for and is given."""

    tools: bool = False
    prompts: bool = False
    resources: bool = False
    uris: frozenset[str] = frozenset()

    @classmethod
    def from_params(cls, params: object) -> ListenFilter:
        """Raises InvalidParams for a missing or malformed ``notifications``."""
        wanted = params.get("notifications") if isinstance(params, dict) else None
        if not isinstance(wanted, dict):
            raise InvalidParams("invalid params: notifications must be an object")
        uris = wanted.get("resourceSubscriptions", [])
        if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
            raise InvalidParams("invalid params: resourceSubscriptions must be a list of URIs")
        return cls(
            tools=wanted.get("toolsListChanged") is True,
            prompts=wanted.get("promptsListChanged") is True,
            resources=wanted.get("resourcesListChanged") is True,
            uris=frozenset(uris),
        )

    def honored(self, capabilities: object) -> ListenFilter:
        """The part of this filter that the targets' capabilities can serve."""
        caps = capabilities if isinstance(capabilities, dict) else {}

        def has(kind: str, flag: str) -> bool:
            value = caps.get(kind)
            return isinstance(value, dict) and value.get(flag) is True

        return ListenFilter(
            tools=self.tools and has("tools", "listChanged"),
            prompts=self.prompts and has("prompts", "listChanged"),
            resources=self.resources and has("resources", "listChanged"),
            uris=self.uris if has("resources", "subscribe") else frozenset(),
        )

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.tools:
            out["toolsListChanged"] = True
        if self.prompts:
            out["promptsListChanged"] = True
        if self.resources:
            out["resourcesListChanged"] = True
        if self.uris:
            out["resourceSubscriptions"] = sorted(self.uris)
        return out

    def accepts(self, message: Message) -> bool:
        method = message.get("method")
        if method == "notifications/resources/updated":
            params = message.get("params")
            uri = params.get("uri") if isinstance(params, dict) else None
            return isinstance(uri, str) and uri in self.uris
        field = LISTEN_NOTIFICATIONS.get(str(method))
        return field is not None and bool(
            {
                "toolsListChanged": self.tools,
                "promptsListChanged": self.prompts,
                "resourcesListChanged": self.resources,
            }.get(field)
        )


FILTER_KEYS = frozenset(
    {"toolsListChanged", "promptsListChanged", "resourcesListChanged", "resourceSubscriptions"}
)


def extension_filter(params: object) -> dict[str, Any]:
    """The keys that extensions add to a listen request's filter (the tasks
    extension's ``taskIds``), as the client sent them."""
    wanted = params.get("notifications") if isinstance(params, dict) else None
    if not isinstance(wanted, dict):
        return {}
    return {k: v for k, v in wanted.items() if k not in FILTER_KEYS}


def is_filtered_kind(method: object) -> bool:
    """A notification a ``ListenFilter`` says yes or no to."""
    return method == "notifications/resources/updated" or method in LISTEN_NOTIFICATIONS


def tagged(message: Message, subscription_id: Any) -> Message:
    """A notification carrying its subscription's id in ``_meta``."""
    params = message.get("params")
    params = dict(params) if isinstance(params, dict) else {}
    meta = params.get("_meta")
    meta = dict(meta) if isinstance(meta, dict) else {}
    params["_meta"] = {**meta, SUBSCRIPTION_ID_KEY: subscription_id}
    return {"jsonrpc": "2.0", "method": message.get("method"), "params": params}


def acknowledgment(subscription_id: Any, honored: ListenFilter) -> Message:
    """The first message of a listen stream."""
    message = {
        "jsonrpc": "2.0",
        "method": ACKNOWLEDGED,
        "params": {"notifications": honored.describe()},
    }
    return tagged(message, subscription_id)


def listen_result(subscription_id: Any) -> dict[str, Any]:
    """The result of a listen request, sent when the gateway ends its stream."""
    return {"_meta": {SUBSCRIPTION_ID_KEY: subscription_id}, "resultType": "complete"}
