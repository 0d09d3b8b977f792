"""One client message in a session: what the gateway does with it.

How this works: ``dispatch`` looks at the method. ``initialize`` and the list
methods fan out to every target (``fan_out``) and are merged
(``mcp/merge.py``), lists filtered item by item by ``mcpAuthorization``;
``ping`` is answered here; a call is routed to its target
(``mcp.federation.route_call``), judged by ``mcpAuthorization`` and the
rate limits, and forwarded. A forwarded request's messages go to the outbox
as they come, its response last; the wait for the first one is bounded by
the route's ``backendRequestTimeout`` (else ``upstreamResponseTimeout``),
the whole call by its ``requestTimeout``, and an idle stream gets keep-alive
comments. Every failure is an error of ``agentgw.errors``, rendered once, as
the JSON-RPC error for the message's id.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import attrs
import trio

from agentgw.errors import (
    SESSION_NOT_FOUND,
    HTTPError,
    InvalidParams,
    NotFound,
    UpstreamError,
    UpstreamTimeout,
)
from agentgw.mcp import merge
from agentgw.mcp.federation import (
    CALL_KINDS,
    LIST_KINDS,
    LIST_METHODS,
    McpRoute,
    call_name,
    list_messages,
    outbound,
    params_of,
    route_call,
)
from agentgw.observability.tracing import NOOP_CALL, UpstreamCall
from agentgw.policy import authz
from agentgw.relay.calls import Message, is_final
from agentgw.relay.context import RequestContext, UpstreamHeaders, with_routing
from agentgw.relay.outbox import Outbox
from agentgw.relay.session import RelaySession
from agentgw.server.connection import ServerRequest
from agentgw.upstream.mcp.hangup import interruptible

logger = logging.getLogger(__name__)


FIRST_REPLY = 300.0  # the wait for a target's first reply, unless configured


@attrs.frozen
class Timeouts:
    """Bounds of one forwarded call (seconds; ``math.inf``: none)."""

    first_reply: float = FIRST_REPLY
    whole: float = math.inf
    keepalive: float = 15.0


@attrs.frozen
class NativeTargets:
    """The targets of a shared session's fan-out that speak 2026-07-28: they
    get the client's request as it is, envelope and routing headers
    included, on their own session (``relay/tasks.py``)."""

    session: RelaySession
    names: frozenset[str]
    envelope: dict[str, Any]  # the protocol keys of the client's ``_meta``

    def has(self, target: str) -> bool:
        return target in self.names and target in self.session.transports

    def message(self, message: Message) -> Message:
        params = params_of(message)
        meta = params.get("_meta")
        meta = {**(meta if isinstance(meta, dict) else {}), **self.envelope}
        return {**message, "params": {**params, "_meta": meta}}


def make_result(msg_id: Any, result: Any) -> Message:
    return {"jsonrpc": "2.0", "id": msg_id, "result": result}


def note_failure(ctx: RequestContext, exc: HTTPError) -> None:
    ctx.record.error = exc.log_text


async def dispatch(
    ctx: RequestContext,
    route: McpRoute,
    session: RelaySession,
    message: Message,
    headers: UpstreamHeaders,
    outbox: Outbox,
    timeouts: Timeouts,
    native: NativeTargets | None = None,
) -> None:
    """Handle one client message; answers go to ``outbox``. ``native``: the
    targets that a list goes to as it came (a 2026-07-28 request)."""
    method = message.get("method")
    if method is None:  # the client's answer to a server-to-client request
        await session.answer(message, headers)
        return
    if "id" not in message:
        await notification(session, message, headers)
        return
    msg_id = message["id"]
    try:
        if method == "initialize":
            if session.protocol_version is not None:
                raise InvalidParams("session already initialized")
            answer = await initialize(
                session, route, message, headers, req=ctx.req, timeout=timeouts.first_reply
            )
            await outbox.send(answer, final=True)
        elif method == "ping":
            await outbox.send(make_result(msg_id, {}), final=True)
        elif method in LIST_METHODS:
            listed = await list_all(
                ctx, route, session, message, headers, native, timeout=timeouts.first_reply
            )
            if session.is_revoked:
                raise session_gone()
            await outbox.send(listed, final=True)
        elif method == "logging/setLevel":
            messages = dict.fromkeys(session.transports, message)
            await fan_out(session, messages, headers, req=ctx.req, timeout=timeouts.first_reply)
            await outbox.send(make_result(msg_id, {}), final=True)
        else:
            target, rewritten = judge_call(ctx, route, message)
            with upstream_span(ctx.req, target, rewritten, headers) as (call, out, own):
                try:
                    await forward(route, session, target, out, own, outbox, timeouts)
                except HTTPError as exc:
                    call.finish(error=exc.reason)
                    raise
                call.finish()
    except HTTPError as exc:
        note_failure(ctx, exc)
        if session.is_revoked:  # a target ended its session: so does the client's
            raise session_gone() from exc
        await outbox.send(exc.rpc_error(msg_id), final=True)


@contextmanager
def upstream_span(
    req: ServerRequest | None, target: str, message: Message, headers: UpstreamHeaders
) -> Iterator[tuple[UpstreamCall, Message, UpstreamHeaders]]:
    """One call to ``target`` inside the gateway's own CLIENT span (when
    tracing is on): yields the span, and the message and headers that carry
    its trace context (``params._meta``, ``traceparent``)."""
    tracing = req.tracing() if req is not None else None
    if tracing is None or req is None:
        yield NOOP_CALL, message, headers
        return
    method = str(message.get("method"))
    attributes = _span_attributes(method, target)
    if method == "tools/call":
        attributes["gen_ai.tool.name"] = call_name(message) or ""
    with tracing.upstream_call(req.span, method, attributes) as call:
        own = headers(target) if callable(headers) else headers
        yield call, call.meta(message), call.headers(list(own))


def _span_attributes(method: str, target: str) -> dict[str, str | int]:
    return {
        "agentgateway.outbound.kind": "Primary",
        "agentgateway.outbound.subtype": "Mcp",
        "mcp.method.name": method,
        "mcp.target": target,
    }


def session_gone() -> NotFound:
    return NotFound("session not found", code=SESSION_NOT_FOUND, detail="the session ended")


def judge_call(ctx: RequestContext, route: McpRoute, message: Message) -> tuple[str, Message]:
    """The call's target and rewritten message, once routing,
    ``mcpAuthorization`` and the rate limits let it through."""
    method = str(message["method"])
    log = ctx.record.extra
    try:
        target, rewritten = route_call(route, message)
    except InvalidParams:
        ctx.record.mcp_name_known = False
        raise
    log["mcp.target"] = target
    name = call_name(message)
    if name is not None:
        log["mcp.resource" if "uri" in params_of(message) else "mcp.tool"] = name
    if method in CALL_KINDS:
        kind, label = CALL_KINDS[method]
        if not ctx.allows(method, kind, call_name(rewritten) or "", target):
            # Indistinguishable from a name that does not exist.
            raise InvalidParams(f"{label}: {name}", detail="denied by mcpAuthorization")
    limits = route.rate_limits
    if limits is not None:
        tool = call_name(rewritten) if method == "tools/call" else None
        variables = ctx.variables()
        if tool is not None:
            variables = authz.mcp_variables(
                variables, method=method, kind="tool", name=tool, target=target
            )
        limited = limits.check(method=method, target=target, tool=tool, variables=variables)
        if limited is not None:
            raise limited.error()
    return target, rewritten


async def notification(session: RelaySession, message: Message, headers: UpstreamHeaders) -> None:
    params = params_of(message)
    if message.get("method") == "notifications/cancelled":
        found = session.upstream_id_for(params.get("requestId"))
        if found is not None:
            target, upstream_id = found
            cancel = {**message, "params": {**params, "requestId": upstream_id}}
            await session.notify(target, cancel, headers)
        return
    for target in list(session.transports):
        try:
            await session.notify(target, message, headers)
        except UpstreamError as exc:
            logger.info("notification to %s failed: %s", target, exc.log_text)


async def initialize(
    session: RelaySession,
    route: McpRoute,
    message: Message,
    headers: UpstreamHeaders,
    *,
    req: ServerRequest | None = None,
    timeout: float = FIRST_REPLY,
) -> Message:
    """Initialize every target (that the session opens) and merge what they say."""
    messages = dict.fromkeys((t.name for t in session.opened_targets), message)
    results, errors = await fan_out(session, messages, headers, req=req, timeout=timeout)
    if errors and (not route.fail_open or not results):
        text = "; ".join(f"target {t}: {e}" for t, e in sorted(errors.items()))
        raise UpstreamError(text)
    version = params_of(message).get("protocolVersion")
    if session.is_shared:
        session.init_results = results
    merged = merge.merge_initialize(results, client_version=version)
    session.protocol_version = merged.get("protocolVersion")
    return make_result(message["id"], merged)


async def list_all(
    ctx: RequestContext,
    route: McpRoute,
    session: RelaySession,
    message: Message,
    headers: UpstreamHeaders,
    native: NativeTargets | None = None,
    *,
    timeout: float = FIRST_REPLY,
) -> Message:
    """A list method, from every target, merged with federated cursors."""
    method = str(message["method"])
    cursor = params_of(message).get("cursor")
    try:
        state = merge.targets_to_query(cursor or None, route.target_names)
    except ValueError:
        raise InvalidParams("invalid cursor") from None
    messages = list_messages(message, state)
    pages, errors = await fan_out(
        session, messages, headers, req=ctx.req, native=native, timeout=timeout
    )
    rules = ctx.rules
    if rules is not None:  # mcpAuthorization: each item judged on its own
        key, kind = LIST_KINDS[method]
        variables = ctx.variables()
        for target, page in pages.items():
            items = page.get(key)
            if isinstance(items, list):
                kept = authz.filter_list(rules, variables, method, items, kind, target)
                pages[target] = {**page, key: kept}
    prefix = route.prefix_uris if method.startswith("resources/") else route.prefix
    result = merge.merge_list(
        method,
        pages,
        prefix,
        errors=errors,
        failure_mode="failOpen" if route.fail_open else "failClosed",
    )
    return make_result(message["id"], result)


async def fan_out(
    session: RelaySession,
    messages: dict[str, Message],
    headers: UpstreamHeaders,
    *,
    req: ServerRequest | None = None,
    native: NativeTargets | None = None,
    timeout: float = FIRST_REPLY,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Send each target its message at once; collect results and errors.
    With ``req`` and tracing on, each call is an upstream span of its own.
    ``native`` targets get theirs on their own session. A target that has
    not answered in ``timeout`` seconds is an error (its call cancelled)."""
    results: dict[str, dict[str, Any]] = {}
    errors = {t: session.dead[t] for t in messages if t in session.dead}
    natives = {t for t in messages if native is not None and native.has(t)}
    for target in natives:
        errors.pop(target, None)

    async def one(target: str, message: Message) -> None:
        with trio.move_on_after(timeout) as waited:
            await ask(target, message)
        if waited.cancelled_caught:
            logger.info("target %s: no answer to %s in %gs", target, message.get("method"), timeout)
            errors[target] = "upstream timeout"

    async def ask(target: str, message: Message) -> None:
        try:
            if target in natives:
                assert native is not None
                message = native.message(message)
                method = str(message.get("method"))
                routed = with_routing(headers, method, None)
                with upstream_span(req, target, message, routed) as (_, out, own):
                    reply = await native.session.call(target, out, own)
            else:
                with upstream_span(req, target, message, headers) as (_, out, own):
                    reply = await session.call(target, out, own)
        except UpstreamError as exc:
            logger.info("%s", exc.log_text)
            errors[target] = exc.reason
            return
        error = reply.get("error")
        if isinstance(error, dict):
            errors[target] = str(error.get("message"))
        else:
            result = reply.get("result")
            results[target] = result if isinstance(result, dict) else {}

    if len(messages) == 1:  # no nursery for one target
        ((target, message),) = messages.items()
        if target in session.transports or target in natives:
            await one(target, message)
        elif target not in errors:
            errors[target] = "upstream unavailable"
        return results, errors
    async with trio.open_nursery() as nursery:
        for target, message in messages.items():
            if target in session.transports or target in natives:
                nursery.start_soon(one, target, message)
            elif target not in errors:
                errors[target] = "upstream unavailable"
    return results, errors


async def forward(
    route: McpRoute,
    session: RelaySession,
    target: str,
    message: Message,
    headers: UpstreamHeaders,
    outbox: Outbox,
    timeouts: Timeouts,
) -> None:
    """Forward one request; everything that belongs to it goes to
    ``outbox``, its response last.

    Raises:
        UpstreamError: no response came (a timeout included).
    """
    method = str(message.get("method"))
    whole = timeouts.whole
    # Bounds the wait for the first message, the answer's head included:
    # lifted once it came.
    first_wait = trio.CancelScope(deadline=trio.current_time() + timeouts.first_reply)
    try:
        with trio.fail_after(whole) if whole != math.inf else nullcontext(), first_wait:
            async with session.request(target, message, headers) as call:
                reply = call.next_nowait()
                while reply is None:
                    with interruptible(math.inf) as wait:
                        reply = await call.next()
                    if wait.is_interrupted:  # the target hung up: so does the outbox
                        await outbox.ping()
                first_wait.deadline = math.inf
                while True:
                    final = is_final(reply)
                    await outbox.send(outbound(route, target, reply, method), final=final)
                    if final:
                        return
                    next_reply = None
                    while next_reply is None:
                        with interruptible(timeouts.keepalive):
                            next_reply = await call.next()
                        if next_reply is None:
                            await outbox.ping()
                    reply = next_reply
    except trio.TooSlowError:
        raise UpstreamTimeout(
            f"target {target}: upstream timeout", detail=f"no response in {whole:g}s"
        ) from None
    if first_wait.cancelled_caught:
        raise UpstreamTimeout(
            f"target {target}: upstream timeout",
            detail=f"no answer in {timeouts.first_reply:g}s",
        )
