"""The 2026-07-28 revision in the demo server, with no I/O: the per-request
``_meta`` envelope, sealed ``requestState``, result decoration and the
``subscriptions/listen`` hub.

How this works: a 2026-07-28 request has no session. ``parse_envelope``
checks its ``_meta`` (protocol version, client capabilities, optional client
info and log level) and the transport runs it in a throwaway ``DemoSession``
built from that envelope. A request that needs input from the client ends
with an ``input_required`` result (MRTR): the inputs to ask, and a
``requestState`` sealed by ``StateSealer`` (an HMAC over the answers so far,
the method, the tool or prompt name and an expiry), so a retry can only
carry state this process issued for that same request. What used to go to a
session's standalone stream (list changes, resource updates) goes through
the ``Hub`` to the open ``subscriptions/listen`` streams that asked for it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

import attrs

from agentgw._version import __version__
from agentgw.demo.effects import RpcError
from agentgw.demo.tasks import TaskStore
from agentgw.demo.wire import (
    HEADER_MISMATCH,
    INVALID_PARAMS,
    JSON,
    STATELESS_VERSIONS,
    UNSUPPORTED_VERSION,
    RequestId,
    dumps,
    notification,
)

logger = logging.getLogger(__name__)

SERVER_NAME = "agentgw-demo"
SERVER_INFO = {"name": SERVER_NAME, "version": __version__}

META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"
META_SUBSCRIPTION = "io.modelcontextprotocol/subscriptionId"

LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")

# The methods of 2026-07-28 this server serves; everything else is -32601
# (initialize, ping, logging/setLevel and resources/(un)subscribe are gone).
METHODS = frozenset(
    {
        "server/discover",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "subscriptions/listen",
        "tasks/get",
        "tasks/update",
        "tasks/cancel",
    }
)
# The methods whose result may be an input_required result (SEP-2322).
INPUT_METHODS = frozenset({"tools/call", "prompts/get", "resources/read"})
# Caching hints (SEP-2549): how long a client may keep each result.
CACHE_TTL_MS = {
    "server/discover": 60_000,
    "tools/list": 60_000,
    "prompts/list": 60_000,
    "resources/list": 60_000,
    "resources/templates/list": 60_000,
    "resources/read": 0,
}
# The client capability each kind of input needs.
INPUT_CAPABILITY = {
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
}


def is_stateless_request(message: JSON) -> bool:
    """Whether a request carries the 2026-07-28 envelope (or is the probe)."""
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return message.get("method") == "server/discover" or (
        isinstance(meta, dict) and META_VERSION in meta
    )


@attrs.frozen
class Envelope:
    """The per-request context of a 2026-07-28 request."""

    version: str
    capabilities: JSON
    client_info: JSON | None
    log_level: str | None


def parse_envelope(params: object, header_version: str | None = None) -> Envelope:
    """The request's ``_meta`` envelope.

    Args:
        params: the request's params.
        header_version: the MCP-Protocol-Version header over HTTP, else None.

    Raises:
        RpcError: -32602 for a missing or malformed envelope, -32020 when
            the header names another version than ``_meta``, -32022 for a
            version this server does not serve statelessly.
    """
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict):
        raise RpcError(INVALID_PARAMS, "invalid params: _meta is required")
    version = meta.get(META_VERSION)
    capabilities = meta.get(META_CAPABILITIES)
    if not isinstance(version, str) or not version:
        raise RpcError(INVALID_PARAMS, f"invalid params: _meta needs {META_VERSION}")
    if not isinstance(capabilities, dict):
        raise RpcError(INVALID_PARAMS, f"invalid params: _meta needs {META_CAPABILITIES}")
    info = meta.get(META_CLIENT_INFO)
    if info is not None and not isinstance(info, dict):
        raise RpcError(INVALID_PARAMS, f"invalid params: {META_CLIENT_INFO} must be an object")
    level = meta.get(META_LOG_LEVEL)
    if level is not None and level not in LOG_LEVELS:
        raise RpcError(INVALID_PARAMS, f"invalid params: {META_LOG_LEVEL} must be a log level")
    if header_version is not None and header_version != version:
        raise RpcError(HEADER_MISMATCH, "MCP-Protocol-Version header does not match _meta")
    if version not in STATELESS_VERSIONS:
        data = {"supported": list(STATELESS_VERSIONS), "requested": version}
        raise RpcError(UNSUPPORTED_VERSION, "unsupported protocol version", data)
    return Envelope(version, capabilities, info, level)


def _header_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def decode_param_header(value: str) -> str | None:
    """An ``Mcp-Param-*`` header's value: ``=?base64?...?=`` is Base64 of
    UTF-8 (None when it is not valid Base64), anything else is literal."""
    if not (value.startswith("=?base64?") and value.endswith("?=") and len(value) >= 11):
        return value
    try:
        return base64.b64decode(value[9:-2], validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def param_header_problem(
    schema: JSON, args: object, header: Callable[[str], str | None]
) -> str | None:
    """Why the ``Mcp-Param-*`` headers of a tool's ``x-mcp-header``
    arguments do not match the body (SEP-2243), or None.

    Args:
        schema: the tool's input schema.
        args: the call's arguments.
        header: the request's header by (lowercase) name, None if absent.
    """
    properties = schema.get("properties", {})
    given = args if isinstance(args, dict) else {}
    for name, spec in properties.items():
        suffix = spec.get("x-mcp-header") if isinstance(spec, dict) else None
        if not isinstance(suffix, str):
            continue
        raw = header(f"mcp-param-{suffix.lower()}")
        if raw is None and name not in given:
            continue
        if raw is None:
            return f"missing Mcp-Param-{suffix} header"
        value = decode_param_header(raw.strip())
        if value is None:
            return f"Mcp-Param-{suffix} is not valid Base64"
        if name not in given or value != _header_text(given[name]):
            return f"Mcp-Param-{suffix} does not match the arguments"
    return None


def decorate(method: str, result: JSON) -> JSON:
    """A result in the 2026-07-28 shape: ``resultType``, the server's
    identity in ``_meta``, and caching hints where the method is cacheable."""
    out = dict(result)
    out.setdefault("resultType", "complete")
    meta = out.get("_meta")
    out["_meta"] = {**(meta if isinstance(meta, dict) else {}), META_SERVER_INFO: SERVER_INFO}
    ttl = CACHE_TTL_MS.get(method)
    if ttl is not None and out["resultType"] == "complete":
        out.setdefault("ttlMs", ttl)
        out.setdefault("cacheScope", "public")
    return out


# ---------------------------------------------------------------- requestState


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@attrs.define(eq=False)
class StateSealer:
    """Seals and opens ``requestState``: the answers a request has gathered
    so far, bound to its method and target, with an expiry.

    Args:
        key: the HMAC key; a fresh random one by default (state does not
            outlive the process).
        clock: seconds since the epoch, for the expiry.
        ttl: how long a sealed state stays valid, in seconds.
    """

    clock: Callable[[], float]
    key: bytes = attrs.field(factory=lambda: secrets.token_bytes(32), repr=False)
    ttl: float = 600.0

    def seal(self, method: str, target: str, answers: JSON) -> str:
        body = {
            "m": method,
            "t": target,
            "a": answers,
            "exp": int(self.clock() + self.ttl),
            "n": secrets.token_hex(8),
        }
        payload = dumps(body)
        mac = hmac.new(self.key, payload, hashlib.sha256).digest()
        return f"{_b64(payload)}.{_b64(mac)}"

    def open(self, state: str, method: str, target: str) -> JSON:
        """The answers sealed in ``state``.

        Raises:
            RpcError: -32602 when the state was not sealed here, was altered,
                has expired or belongs to another request.
        """
        invalid = RpcError(INVALID_PARAMS, "invalid requestState")
        payload_text, sep, mac_text = state.partition(".")
        try:
            payload, mac = _unb64(payload_text), _unb64(mac_text)
        except ValueError:
            raise invalid from None
        expected = hmac.new(self.key, payload, hashlib.sha256).digest()
        if not sep or not hmac.compare_digest(mac, expected):
            logger.info("requestState failed its integrity check")
            raise invalid
        body: Any = json.loads(payload)
        if body.get("m") != method or body.get("t") != target:
            logger.info("requestState was issued for another request")
            raise invalid
        if body.get("exp", 0) < self.clock():
            logger.info("requestState has expired")
            raise invalid
        answers: JSON = body.get("a", {})
        return answers


# ---------------------------------------------------------------- subscriptions


@attrs.frozen
class SubscriptionFilter:
    """What a ``subscriptions/listen`` stream asked for and this server honors."""

    tools: bool = False
    prompts: bool = False
    resources: frozenset[str] = frozenset()

    @classmethod
    def from_params(cls, params: JSON) -> SubscriptionFilter:
        """Raises RpcError (-32602) for a malformed ``notifications`` filter."""
        wanted = params.get("notifications")
        if not isinstance(wanted, dict):
            raise RpcError(INVALID_PARAMS, "invalid params: notifications must be an object")
        uris = wanted.get("resourceSubscriptions", [])
        if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
            raise RpcError(INVALID_PARAMS, "invalid params: resourceSubscriptions must be URIs")
        return cls(
            tools=wanted.get("toolsListChanged") is True,
            prompts=wanted.get("promptsListChanged") is True,
            resources=frozenset(uris),
        )

    def describe(self) -> JSON:
        out: JSON = {}
        if self.tools:
            out["toolsListChanged"] = True
        if self.prompts:
            out["promptsListChanged"] = True
        if self.resources:
            out["resourceSubscriptions"] = sorted(self.resources)
        return out


Deliver = Callable[[JSON], None]


@attrs.define(eq=False)
class Listener:
    request_id: RequestId
    filter: SubscriptionFilter
    deliver: Deliver


@attrs.define(eq=False)
class Hub:
    """State shared by every 2026-07-28 request: the counter resource, the
    open ``subscriptions/listen`` streams, the requestState sealer and the
    tasks.

    ``deliver`` callbacks are the transports' (a non-blocking put); the hub
    calls them synchronously.
    """

    sealer: StateSealer
    tasks: TaskStore = attrs.field(
        default=attrs.Factory(lambda self: TaskStore(self.sealer.clock), takes_self=True)
    )
    max_listeners: int = 1000
    counter: int = 0
    _listeners: dict[int, Listener] = attrs.field(factory=dict)
    _next: int = 0

    def __repr__(self) -> str:
        return f"<Hub listeners={len(self._listeners)} counter={self.counter}>"

    @property
    def listening(self) -> int:
        return len(self._listeners)

    def listen(self, request_id: RequestId, wanted: SubscriptionFilter, deliver: Deliver) -> int:
        """Register a stream; returns its token. The acknowledgment must be
        the stream's first message (``acknowledgment``)."""
        if len(self._listeners) >= self.max_listeners:
            raise RpcError(-32603, "too many subscriptions")
        self._next += 1
        self._listeners[self._next] = Listener(request_id, wanted, deliver)
        return self._next

    def unlisten(self, token: int) -> None:
        self._listeners.pop(token, None)

    def tools_changed(self) -> int:
        return self._publish(lambda f: f.tools, "notifications/tools/list_changed", None)

    def prompts_changed(self) -> int:
        return self._publish(lambda f: f.prompts, "notifications/prompts/list_changed", None)

    def resource_updated(self, uri: str) -> int:
        params = {"uri": uri}
        return self._publish(
            lambda f: uri in f.resources, "notifications/resources/updated", params
        )

    def _publish(
        self, wants: Callable[[SubscriptionFilter], bool], method: str, params: JSON | None
    ) -> int:
        sent = 0
        for listener in list(self._listeners.values()):
            if wants(listener.filter):
                listener.deliver(tagged(method, params, listener.request_id))
                sent += 1
        return sent


def tagged(method: str, params: JSON | None, subscription: RequestId) -> JSON:
    """A notification for a listen stream, tagged with its subscription id."""
    body = dict(params or {})
    body["_meta"] = {META_SUBSCRIPTION: subscription}
    return notification(method, body)


def acknowledgment(request_id: RequestId, wanted: SubscriptionFilter) -> JSON:
    params = {"notifications": wanted.describe()}
    return tagged("notifications/subscriptions/acknowledged", params, request_id)
