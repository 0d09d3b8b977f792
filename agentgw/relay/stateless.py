"""The 2026-07-28 revision, served: requests without a session.

How this works: ``streamable.post`` sends here every POST that is a
2026-07-28 request (``mcp.stateless.is_stateless_request``). ``serve``
checks its ``_meta`` envelope and its standard headers (``mcp/stateless.py``),
refuses the methods the revision removed, and runs the rest through one
upstream session per route that the gateway initialized itself
(``SessionDirectory.shared``): the targets may speak only older revisions.
A ``StatelessOutbox`` gives the answer this revision's shape: an error
answered as JSON gets its status (400, 404), results get ``resultType``,
logs go out only to a request that asked for them, list changes go to the
``subscriptions/listen`` streams, and a server-to-client request that needs
a capability the client did not declare ends the call with -32021.
``subscriptions/listen`` is translated to the shared session's server
stream and ``resources/subscribe`` (``listen``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import attrs
import trio

from agentgw.errors import ClientGone, HTTPError, MethodNotFound
from agentgw.mcp import merge, stateless, versions
from agentgw.mcp.federation import McpRoute, outbound, params_of, route_call
from agentgw.mcp.mrtr import INPUT_METHODS
from agentgw.mcp.replay import prefers_event_stream
from agentgw.mcp.stateless import Envelope, ListenFilter
from agentgw.relay import mrtr, tasks
from agentgw.relay.calls import Message, is_final
from agentgw.relay.context import RequestContext, UpstreamHeaders, with_routing
from agentgw.relay.dispatch import NativeTargets, dispatch, list_all
from agentgw.relay.outbox import JSON, SSE_HEADERS, Outbox, PostOutbox, dumps, respond_json
from agentgw.relay.session import RelaySession
from agentgw.wire.http import header_value
from agentgw.wire.sse import encode_event

if TYPE_CHECKING:
    from agentgw.relay.endpoint import McpEndpoint

logger = logging.getLogger(__name__)

SCHEMA_TTL = 60.0  # how long the tool schemas seen in a list stay trusted
SCHEMA_REFRESH = 5.0  # the least time between two fetches of the tool list
SCHEMA_PAGES = 20  # pages read when fetching the tool list
SCHEMA_TIMEOUT = 10.0  # the wait for each target's page of it
SUBSCRIBE_TIMEOUT = 10.0  # the wait for a target's answer to resources/(un)subscribe
UNSUBSCRIBE_TIMEOUT = 5.0
LISTEN_QUEUE = 64


async def respond_error(ctx: RequestContext, exc: HTTPError, msg_id: Any) -> None:
    """An error as this revision answers it: the request's id, and its
    status (400 or 404 for the client's errors, 5xx for the upstream's)."""
    ctx.record.error = exc.log_text
    message = exc.rpc_error(msg_id)
    await ctx.req.respond(exc.status, dumps(message), exc.headers, content_type=JSON)


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
            await self.session.answer(_result(message["id"], {}), self.headers)
            return
        needed = stateless.REQUEST_CAPABILITY.get(method)
        refusal = _error(message["id"], f"agentgw: {method} is not relayed to this client")
        await self.session.answer(refusal, self.headers)
        if needed is not None and not self.envelope.has_capability(needed):
            raise stateless.missing_capability(needed)


def _result(msg_id: Any, result: Any) -> Message:
    return {"jsonrpc": "2.0", "id": msg_id, "result": result}


def _error(msg_id: Any, text: str) -> Message:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": -32603, "message": text}}


# ---------------------------------------------------------------- subscriptions/listen


async def listen(
    ep: McpEndpoint,
    ctx: RequestContext,
    route: McpRoute,
    session: RelaySession,
    native: tasks.Native | None,
    capabilities: object,
    message: Message,
    headers: UpstreamHeaders,
) -> None:
    """A ``subscriptions/listen`` stream, filtered to what the client asked
    for and tagged with its id. It hears the shared session's server stream;
    resource subscriptions there are made with ``resources/subscribe``,
    counted per session, and dropped with ``resources/unsubscribe`` when the
    last stream that wanted them ends. A target that speaks 2026-07-28 is
    also listened to as it is (``subscriptions/listen`` on the route's native
    session, ``relay/tasks.py``): the calls that change its lists go there,
    and so do its notifications. The client's acknowledgment waits for the
    targets' own, so that nothing said after it is missed."""
    msg_id = message["id"]
    try:
        wanted = ListenFilter.from_params(message.get("params"))
    except HTTPError as exc:
        await respond_error(ctx, exc, msg_id)
        return
    honored = wanted.honored(capabilities)
    extra = stateless.extension_filter(message.get("params"))
    ctx.record.extra["mcp.subscription"] = str(msg_id)
    natives = native.discovered if native is not None else {}
    readable = _readable(ctx, route, honored.uris)
    subscribed: list[str] = []
    async with session.get_stream() as upstream:
        try:
            for uri in sorted(readable):
                if readable[uri][0] in natives:
                    continue
                if await _subscribe(route, session, uri, headers):
                    subscribed.append(uri)
            send, receive = trio.open_memory_channel[Message](LISTEN_QUEUE)
            ended = _result(msg_id, stateless.listen_result(msg_id))

            async def pump() -> None:
                async for note in upstream:
                    if not honored.accepts(note):
                        continue
                    if not await _put(send, stateless.tagged(note, msg_id)):
                        return
                # The shared session ended: the listen request's result
                # tells the client the stream closed on purpose.
                await _end(send, ended)

            gone: ClientGone | None = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump)
                heard = list(subscribed)
                acks: dict[str, dict[str, Any]] = {}
                for target in sorted(natives):
                    assert native is not None
                    mine = {u: inner for u, (t, inner) in readable.items() if t == target}
                    asked = attrs.evolve(honored, uris=frozenset(mine))
                    theirs = tasks.listen_filter_for(route, target, extra)
                    if not asked.describe() and not theirs:
                        continue
                    listening = ListenTo(native.session, route, target, message, headers)
                    ack = await nursery.start(
                        listening.run, asked, sorted(mine.values()), theirs, send, ended
                    )
                    if ack is not None:
                        heard.extend(mine)
                        acks[target] = ack
                honored = attrs.evolve(honored, uris=frozenset(heard))
                acknowledgment = stateless.acknowledgment(msg_id, honored)
                acknowledgment["params"]["notifications"].update(
                    tasks.honored_extensions(route, extra, acks)
                )
                first = encode_event(dumps(acknowledgment).decode())
                try:
                    await ep.streams.serve_sse(ctx.req, receive, first=first)
                except ClientGone as exc:  # raised after the nursery, not in a group
                    gone = exc
                finally:
                    nursery.cancel_scope.cancel()
            if gone is not None:
                raise gone
        finally:
            with trio.move_on_after(UNSUBSCRIBE_TIMEOUT) as scope:
                scope.shield = True
                for uri in subscribed:
                    await _unsubscribe(route, session, uri, headers)


async def _native(
    ep: McpEndpoint, route: McpRoute, headers: UpstreamHeaders
) -> tasks.Native | None:
    """The route's native session, or None if it could not start."""
    try:
        return await ep.natives.get(route, headers)
    except HTTPError as exc:
        logger.info("listening without the native session: %s", exc.log_text)
        return None


async def _put(send: trio.MemorySendChannel[Message], message: Message) -> bool:
    """Queue ``message`` for the client; False once the stream has ended."""
    try:
        await send.send(message)
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        return False
    return True


async def _end(send: trio.MemorySendChannel[Message], ended: Message) -> None:
    """End the client's stream with the listen request's result (once)."""
    if await _put(send, ended):
        send.close()


@attrs.frozen
class ListenTo:
    """A client's listen stream, relayed to one native target."""

    session: RelaySession
    route: McpRoute
    target: str
    request: Message
    headers: UpstreamHeaders

    async def run(
        self,
        asked: ListenFilter,
        target_uris: list[str],
        extra: dict[str, Any],
        send: trio.MemorySendChannel[Message],
        ended: Message,
        *,
        task_status: trio.TaskStatus[dict[str, Any] | None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Started with what the target acknowledged (its ``notifications``),
        or None if it did not. ``extra``: the extension keys of the client's
        filter, for this target; task notifications, when it asked for
        ``taskIds``, are relayed with their ids federated. When the
        target ends its stream, so does the client's, which may listen
        again."""
        wanted = {**extra, **asked.describe()}
        if target_uris:
            wanted["resourceSubscriptions"] = target_uris
        meta = params_of(self.request).get("_meta")
        ask = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "subscriptions/listen",
            "params": {"_meta": meta, "notifications": wanted},
        }
        routed = with_routing(self.headers, "subscriptions/listen", None)
        started = False
        try:
            async with self.session.request(self.target, ask, routed) as call:
                acknowledged = None
                with trio.move_on_after(tasks.DISCOVER_TIMEOUT):
                    while acknowledged is None:
                        first = await call.next()
                        if is_final(first):
                            break
                        if first.get("method") == stateless.ACKNOWLEDGED:
                            honored = params_of(first).get("notifications")
                            acknowledged = honored if isinstance(honored, dict) else {}
                if acknowledged is None:
                    logger.info("target %s did not acknowledge subscriptions/listen", self.target)
                    task_status.started(None)
                    return
                started = True
                task_status.started(acknowledged)
                while not is_final(note := await call.next()):
                    if stateless.is_filtered_kind(note.get("method")):
                        note = outbound(self.route, self.target, note, "")
                        if not asked.accepts(note):
                            continue
                    elif tasks.is_task_notification(note) and tasks.TASK_IDS in extra:
                        note = tasks.federate(self.route, self.target, note)
                    else:
                        continue
                    if not await _put(send, stateless.tagged(note, self.request["id"])):
                        return
        except HTTPError as exc:
            logger.info("target %s: subscriptions/listen failed: %s", self.target, exc.log_text)
            if not started:
                task_status.started(None)
                return
        await _end(send, ended)


def _readable(
    ctx: RequestContext, route: McpRoute, uris: frozenset[str]
) -> dict[str, tuple[str, str]]:
    """Of ``uris``, those the route knows and ``mcpAuthorization`` lets the
    caller read, each with its target and the target's own URI: a resource
    the caller may not read is not subscribed to."""
    out = {}
    for uri in uris:
        ask: Message = {"jsonrpc": "2.0", "method": "resources/subscribe", "params": {"uri": uri}}
        try:
            target, ask = route_call(route, ask)
        except HTTPError:
            continue
        inner = params_of(ask)["uri"]
        if ctx.allows("resources/subscribe", "resource", inner, target):
            out[uri] = (target, inner)
    return out


def _subscription_counts(session: RelaySession) -> dict[str, int]:
    counts = session.extras.get("listened_uris")
    if not isinstance(counts, dict):
        counts = session.extras["listened_uris"] = {}
    return counts


async def _subscribe(
    route: McpRoute, session: RelaySession, uri: str, headers: UpstreamHeaders
) -> bool:
    counts = _subscription_counts(session)
    counts[uri] = counts.get(uri, 0) + 1
    if counts[uri] > 1:
        return True
    if await _upstream(route, session, "resources/subscribe", uri, headers):
        return True
    counts[uri] -= 1
    if not counts[uri]:
        del counts[uri]
    return False


async def _unsubscribe(
    route: McpRoute, session: RelaySession, uri: str, headers: UpstreamHeaders
) -> None:
    counts = _subscription_counts(session)
    counts[uri] = counts.get(uri, 1) - 1
    if counts[uri] > 0:
        return
    del counts[uri]
    if not session.closed.is_set():
        await _upstream(route, session, "resources/unsubscribe", uri, headers)


async def _upstream(
    route: McpRoute, session: RelaySession, method: str, uri: str, headers: UpstreamHeaders
) -> bool:
    """Send ``method`` for ``uri`` to its target; whether it succeeded."""
    ask: Message = {"jsonrpc": "2.0", "id": 0, "method": method, "params": {"uri": uri}}
    reply = None
    with trio.move_on_after(SUBSCRIBE_TIMEOUT):
        try:
            target, ask = route_call(route, ask)
            reply = await session.call(target, ask, headers)
        except HTTPError as exc:
            logger.info("%s %s failed: %s", method, uri, exc.log_text)
            return False
    if reply is None:
        logger.info("%s %s: no answer in %gs", method, uri, SUBSCRIBE_TIMEOUT)
        return False
    if "error" in reply:
        logger.info("%s %s refused: %s", method, uri, reply["error"])
        return False
    return True
