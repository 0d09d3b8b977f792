"""The 2026-07-28 revision, served: requests without a session.

How this works: ``streamable.post`` sends here every POST that is a
2026-07-28 request (``mcp.stateless.is_stateless_request``). ``serve``
checks its ``_meta`` envelope and its standard headers (``mcp/stateless.py``),
refuses the methods the revision removed, answers ``server/discover``, and
sends the rest one of two ways. A target that speaks 2026-07-28 gets the
request as it is, on the route's native session (``relay/tasks.py``; lists
through ``dispatch.NativeTargets``). The others are reached through an
upstream session per route that the gateway initialized itself
(``SessionDirectory.shared``), and a ``StatelessOutbox`` gives their answers
this revision's shape: an error answered as JSON gets its status (400,
404), results get ``resultType``, logs go out only to a request that asked
for them, list changes go to the listen streams, and a server-to-client
request that needs a capability the client did not declare ends the call
with -32021. ``subscriptions/listen`` is in ``relay/subscriptions.py``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import attrs

from agentgw.errors import HTTPError, MethodNotFound
from agentgw.mcp import merge, stateless, versions
from agentgw.mcp.federation import McpRoute, params_of
from agentgw.mcp.mrtr import INPUT_METHODS
from agentgw.mcp.replay import prefers_event_stream
from agentgw.mcp.stateless import Envelope
from agentgw.relay import mrtr, tasks
from agentgw.relay.calls import Message
from agentgw.relay.context import RequestContext, UpstreamHeaders
from agentgw.relay.dispatch import NativeTargets, dispatch, list_all, make_result
from agentgw.relay.outbox import (
    JSON,
    SSE_HEADERS,
    Outbox,
    PostOutbox,
    dumps,
    respond_error,
    respond_json,
)
from agentgw.relay.session import RelaySession
from agentgw.relay.subscriptions import listen
from agentgw.wire.http import header_value

if TYPE_CHECKING:
    from agentgw.relay.endpoint import McpEndpoint

logger = logging.getLogger(__name__)

SCHEMA_TTL = 60.0  # how long the tool schemas seen in a list stay trusted
SCHEMA_REFRESH = 5.0  # the least time between two fetches of the tool list
SCHEMA_PAGES = 20  # pages read when fetching the tool list
SCHEMA_TIMEOUT = 10.0  # the wait for each target's page of it


async def serve(
    ep: McpEndpoint,
    ctx: RequestContext,
    route: McpRoute,
    message: Message,
    headers: UpstreamHeaders,
) -> None:
    """Answer one 2026-07-28 POST."""
    method = message.get("method")
    msg_id = message.get("id")
    if not isinstance(method, str) or msg_id is None:
        # Notifications and responses have nothing to act on in this
        # revision (a client cancels by closing its request).
        await ctx.req.respond(202, b"")
        return
    try:
        envelope = stateless.check_request(ctx.req.headers, message)
        if method in versions.REMOVED_IN_STATELESS or (
            method not in stateless.METHODS and len(route.targets) > 1
        ):
            raise MethodNotFound(f"method {method!r} is not in 2026-07-28")
        # The targets that speak 2026-07-28 get requests as they are, on the
        # route's native session; the shared one opens only the others.
        found = await _native(ep, route, headers)
        skip = frozenset(found.discovered) if found is not None else frozenset()
        session = await ep.directory.shared(route, headers, skip)
        native = None
        if found is not None and found.discovered:
            meta = versions.protocol_meta(params_of(message))
            native = NativeTargets(found.session, frozenset(found.discovered), meta)
        if method == "tools/call":
            await _check_param_headers(ctx, route, session, message, headers, native)
    except HTTPError as exc:
        await respond_error(ctx, exc, msg_id)
        return
    if method == "server/discover":
        result = _discover(_initialized(route, session, found))
        extensions = tasks.extensions_of(found) if found is not None else {}
        if extensions:
            result["capabilities"] = {**result["capabilities"], "extensions": extensions}
        await respond_json(ctx.req, {"jsonrpc": "2.0", "id": msg_id, "result": result})
        return
    if method == "subscriptions/listen":
        capabilities = _initialized(route, session, found).get("capabilities")
        await listen(ep, ctx, route, session, found, capabilities, message, headers)
        return
    outbox = StatelessOutbox(PostOutbox(ctx.req), message, envelope, session, headers)
    timeouts = ep.timeouts(ctx)
    if tasks.is_native_method(message):  # to targets that speak 2026-07-28 (relay/tasks.py)
        relayed = False

        async def as_it_is() -> None:
            nonlocal relayed
            relayed = await tasks.relay(
                ep.natives, ep.flights, ctx, route, message, headers, outbox, timeouts
            )

        await ctx.req.run_watched(as_it_is)
        if relayed:
            return
    if method in INPUT_METHODS:  # may take input_required rounds (relay/mrtr.py)

        async def rounds() -> None:
            await mrtr.call(ep.flights, ctx, route, session, message, headers, outbox, timeouts)

        await ctx.req.run_watched(rounds)
        return
    # Without the envelope: the other targets speak an older revision.
    bare = {**message, "params": versions.strip_protocol_meta(params_of(message))}

    async def work() -> None:
        await dispatch(ctx, route, session, bare, headers, outbox, timeouts, native)

    await ctx.req.run_watched(work)


def _initialized(
    route: McpRoute, session: RelaySession, native: tasks.Native | None
) -> dict[str, Any]:
    """What the route's targets said of themselves, merged as an
    ``initialize`` result is: the older targets' initialize results and the
    native targets' ``server/discover`` results."""
    results: dict[str, Any] = dict(session.init_results)
    for target, found in (native.discovered if native is not None else {}).items():
        caps = found.get("capabilities")
        meta = found.get("_meta")
        info = meta.get(versions.SERVER_INFO_META_KEY) if isinstance(meta, dict) else None
        results[target] = {
            "protocolVersion": versions.STATELESS_REVISION,
            "capabilities": caps if isinstance(caps, dict) else {},
            **({"instructions": found["instructions"]} if found.get("instructions") else {}),
            **({"serverInfo": info} if isinstance(info, dict) else {}),
        }
    ordered = {t: results[t] for t in route.target_names if t in results}
    if not ordered:
        return {}
    return merge.merge_initialize(ordered, multiplexing=len(route.target_names) > 1)


def _discover(init: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "supportedVersions": list(stateless.SUPPORTED),
        "capabilities": init.get("capabilities", {}),
        "cacheScope": "private",
        "ttlMs": 0,
        "resultType": "complete",
    }
    if init.get("instructions"):
        result["instructions"] = init["instructions"]
    if isinstance(init.get("serverInfo"), dict):
        result["_meta"] = {versions.SERVER_INFO_META_KEY: init["serverInfo"]}
    return result


# ---------------------------------------------------------------- Mcp-Param-* headers


@attrs.define(eq=False)
class ToolSchemas:
    """The input schemas of a shared session's tools, by the name clients
    call them, from the lists that went through it."""

    schemas: dict[str, Any] = attrs.field(factory=dict)
    seen_at: float = -float("inf")
    fetched_at: float = -float("inf")

    def learn(self, result: object) -> None:
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(tools, list):
            return
        for tool in tools:
            if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                self.schemas[tool["name"]] = tool.get("inputSchema")
        self.seen_at = time.monotonic()

    def is_fresh(self, name: str) -> bool:
        return name in self.schemas and time.monotonic() - self.seen_at < SCHEMA_TTL

    def can_fetch(self) -> bool:
        return time.monotonic() - self.fetched_at >= SCHEMA_REFRESH


def _schemas(session: RelaySession) -> ToolSchemas:
    found = session.extras.get("tool_schemas")
    if not isinstance(found, ToolSchemas):
        found = session.extras["tool_schemas"] = ToolSchemas()
    return found


async def _check_param_headers(
    ctx: RequestContext,
    route: McpRoute,
    session: RelaySession,
    message: Message,
    headers: UpstreamHeaders,
    native: NativeTargets | None,
) -> None:
    """Refuse a call whose ``Mcp-Param-*`` headers do not match its
    arguments (-32020), for tools whose schema names such headers."""
    params = params_of(message)
    name = params.get("name")
    if not isinstance(name, str):
        return
    schemas = _schemas(session)
    if not schemas.is_fresh(name) and schemas.can_fetch():
        schemas.fetched_at = time.monotonic()
        await _fetch_schemas(ctx, route, session, schemas, headers, native)
    lookup = stateless.header_lookup(ctx.req.headers)
    problem = stateless.param_header_problem(
        schemas.schemas.get(name), params.get("arguments"), lookup
    )
    if problem is not None:
        raise stateless.header_mismatch(problem)


async def _fetch_schemas(
    ctx: RequestContext,
    route: McpRoute,
    session: RelaySession,
    schemas: ToolSchemas,
    headers: UpstreamHeaders,
    native: NativeTargets | None,
) -> None:
    cursor: Any = None
    for _ in range(SCHEMA_PAGES):
        ask = {"jsonrpc": "2.0", "id": 0, "method": "tools/list", "params": {}}
        if cursor:
            ask["params"] = {"cursor": cursor}
        try:
            listed = await list_all(
                ctx, route, session, ask, headers, native, timeout=SCHEMA_TIMEOUT
            )
            result = listed.get("result")
        except HTTPError as exc:
            logger.info("listing tools for their Mcp-Param headers: %s", exc.log_text)
            return
        schemas.learn(result)
        cursor = result.get("nextCursor") if isinstance(result, dict) else None
        if not cursor:
            return


# ---------------------------------------------------------------- answers


@attrs.define(eq=False)
class StatelessOutbox(Outbox):
    """The answer to one 2026-07-28 request, from a shared session whose
    targets speak an older revision."""

    inner: PostOutbox
    request: Message
    envelope: Envelope
    session: RelaySession
    headers: UpstreamHeaders

    @property
    def method(self) -> str:
        return str(self.request.get("method"))

    async def send(self, message: Message, *, final: bool) -> None:
        if final:
            await self._final(message)
            return
        method = message.get("method")
        if "id" in message:
            await self._server_request(message)
        elif method in stateless.LISTEN_NOTIFICATIONS:
            self.session.broadcast(message)
        elif method != "notifications/message" or self.envelope.wants_log(message):
            await self.inner.send(message, final=False)

    async def ping(self) -> None:
        await self.inner.ping()

    async def _final(self, message: Message) -> None:
        error = message.get("error")
        if isinstance(error, dict):
            uri = params_of(self.request).get("uri")
            error = stateless.to_stateless_error(self.method, error, uri)
            message = {**message, "error": error}
            if not self.inner.is_stream:
                status = stateless.status_of(error.get("code"))
                await self.inner.req.respond(status, dumps(message), content_type=JSON)
                return
        result = message.get("result")
        if isinstance(result, dict):
            if self.method == "tools/list":
                _schemas(self.session).learn(result)
            message = {**message, "result": versions.to_stateless_result(self.method, result)}
            accept = header_value(self.inner.req.headers, b"accept")
            if not self.inner.is_stream and prefers_event_stream(accept):
                await self.inner.req.send_head(200, list(SSE_HEADERS))
                self.inner.is_stream = True
        await self.inner.send(message, final=True)

    async def _server_request(self, message: Message) -> None:
        """A target's request to the client in the middle of this call. This
        revision has no such requests on a response stream: one that needs a
        capability the client did not declare ends the call (-32021); others
        are refused to the target, which goes on without them."""
        method = str(message.get("method"))
        if method == "ping":
            await self.session.answer(make_result(message["id"], {}), self.headers)
            return
        needed = stateless.REQUEST_CAPABILITY.get(method)
        refusal = _error(message["id"], f"agentgw: {method} is not relayed to this client")
        await self.session.answer(refusal, self.headers)
        if needed is not None and not self.envelope.has_capability(needed):
            raise stateless.missing_capability(needed)


def _error(msg_id: Any, text: str) -> Message:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": -32603, "message": text}}


async def _native(
    ep: McpEndpoint, route: McpRoute, headers: UpstreamHeaders
) -> tasks.Native | None:
    """The route's native session, or None if it could not start."""
    try:
        return await ep.natives.get(route, headers)
    except HTTPError as exc:
        logger.info("the native session could not start: %s", exc.log_text)
        return None
