"""``subscriptions/listen`` (2026-07-28): the client's listen stream.

How this works: a listen stream hears the route's shared session's server
stream (the older targets' notifications), with the resources it asks for
subscribed there with ``resources/subscribe``, counted per session and
dropped with ``resources/unsubscribe`` when the last stream that wanted them
ends. A target that speaks 2026-07-28 is listened to as it is instead
(``ListenTo``: a ``subscriptions/listen`` of the gateway's own on the
route's native session, ``relay/tasks.py``), and its notifications are
relayed, names prefixed, task ids federated. Everything goes out tagged
with the client's subscription id, on one SSE stream whose first event,
the acknowledgment, waits for the native targets' own.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import attrs
import trio

from agentgw.errors import ClientGone, HTTPError
from agentgw.mcp import stateless
from agentgw.mcp.federation import McpRoute, outbound, params_of, route_call
from agentgw.mcp.stateless import ListenFilter
from agentgw.relay import tasks
from agentgw.relay.calls import Message, is_final
from agentgw.relay.context import RequestContext, UpstreamHeaders, with_routing
from agentgw.relay.dispatch import make_result
from agentgw.relay.outbox import dumps, respond_error
from agentgw.relay.session import RelaySession
from agentgw.wire.sse import encode_event

if TYPE_CHECKING:
    from agentgw.relay.endpoint import McpEndpoint

logger = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT = 10.0  # the wait for a target's answer to resources/(un)subscribe
UNSUBSCRIBE_TIMEOUT = 5.0
LISTEN_QUEUE = 64


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
            ended = make_result(msg_id, stateless.listen_result(msg_id))

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

                async def listen_to(session: RelaySession, target: str) -> None:
                    """Start listening to ``target``; its stream runs on in
                    ``nursery``, once the target acknowledged it."""
                    mine = {u: inner for u, (t, inner) in readable.items() if t == target}
                    asked = attrs.evolve(honored, uris=frozenset(mine))
                    theirs = tasks.listen_filter_for(route, target, extra)
                    if not asked.describe() and not theirs:
                        return
                    listening = ListenTo(session, route, target, message, headers)
                    ack = await nursery.start(
                        listening.run, asked, sorted(mine.values()), theirs, send, ended
                    )
                    if ack is not None:
                        heard.extend(mine)
                        acks[target] = ack

                async with trio.open_nursery() as starting:  # all targets at once
                    for target in sorted(natives):
                        assert native is not None
                        starting.start_soon(listen_to, native.session, target)
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
