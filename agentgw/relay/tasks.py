"""2026-07-28 requests relayed as they are to the targets that speak it,
and the tasks extension (``io.modelcontextprotocol/tasks``, SEP-2663).

How this works: the shared 2025-11-25 session cannot carry what only
2026-07-28 has (tasks, a target's own ``input_required`` rounds, its
``-32021`` refusals, its listen streams), so each route gets one more
upstream session (``NativeSessions``), never initialized: its transports
send 2026-07-28 requests as they are (their ``_meta`` envelope,
``Mcp-Method`` and ``Mcp-Name``), and at its start each target is asked
``server/discover``; those that list 2026-07-28 are native. A native
target gets every request of a 2026-07-28 client there: ``tasks/*``, calls
and completions here (``relay``), lists in the fan-out
(``dispatch.NativeTargets``), listen streams in ``relay/stateless.py``. Task
ids are federated like names: with several targets, ``<target>_<id>``
(``mcp/names.py``); with one, as the target says. A target's
``input_required`` results are relayed with a sealed ``requestState``
(``relay/mrtr.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

import attrs
import trio

from agentgw.errors import (
    HEADER_MISMATCH,
    ClientError,
    HTTPError,
    InvalidParams,
    MethodNotFound,
    UpstreamError,
)
from agentgw.mcp import mrtr as mrtr_core
from agentgw.mcp import names, versions
from agentgw.mcp.federation import LIST_METHODS, McpRoute, params_of, route_call
from agentgw.relay import mrtr
from agentgw.relay.calls import Message
from agentgw.relay.context import RequestContext, UpstreamHeaders, with_routing
from agentgw.relay.dispatch import Timeouts, forward, judge_call, note_failure
from agentgw.relay.manager import SessionManager
from agentgw.relay.outbox import Outbox
from agentgw.relay.session import RelaySession
from agentgw.upstream.pool import ConnectionPool
from agentgw.wire.http import header_value

logger = logging.getLogger(__name__)

EXTENSION = "io.modelcontextprotocol/tasks"
TASK_METHODS = frozenset(
    {"tasks/get", "tasks/update", "tasks/cancel", "tasks/result", "tasks/list"}
)
NOT_AS_IS = LIST_METHODS | {"server/discover", "subscriptions/listen"}
TASK_IDS = "taskIds"  # the extension's key in a subscriptions/listen filter
DISCOVER_TIMEOUT = 10.0
REPROBE_AFTER = 30.0
# JSON-RPC errors that answer a probe for good: the target does not know
# server/discover, or wants its session initialized first (2025-11-25).
NOT_NATIVE_CODES = frozenset({-32601, -32600, -32602})


def is_native_method(message: Message) -> bool:
    """A request that goes to its target as it is when the target speaks
    2026-07-28: all but those agentgw answers itself (``server/discover``),
    fans out (the lists: ``dispatch.NativeTargets``) or listens for
    (``subscriptions/listen``, in ``relay/stateless.py``)."""
    return message.get("method") not in NOT_AS_IS


@attrs.frozen
class Native:
    """A route's 2026-07-28 upstream session and what its targets discovered.
    ``undecided``: the remote targets that gave no answer (down, timed out,
    or refused the caller's credentials), asked again after
    ``REPROBE_AFTER``."""

    session: RelaySession
    discovered: dict[str, dict[str, Any]]
    undecided: frozenset[str] = frozenset()
    probed_at: float = 0.0

    def is_stale(self) -> bool:
        return bool(self.undecided) and trio.current_time() - self.probed_at >= REPROBE_AFTER


@attrs.define(eq=False)
class NativeSessions:
    manager: SessionManager
    pool: ConnectionPool
    _natives: dict[int, Native] = attrs.field(factory=dict)
    _locks: dict[int, trio.Lock] = attrs.field(factory=dict)

    def __repr__(self) -> str:
        return f"<NativeSessions {len(self._natives)}>"

    async def get(self, route: McpRoute, headers: UpstreamHeaders) -> Native:
        native = self._natives.get(id(route))
        if native is not None and self._serves(native, route):
            return native
        lock = self._locks.setdefault(id(route), trio.Lock())
        async with lock:
            native = self._natives.get(id(route))
            if native is not None and self._serves(native, route):
                return native
            for key, old in list(self._natives.items()):
                if old.session.route is not route and old.session.closed.is_set():
                    del self._natives[key]
            if native is not None and native.session.route is route and native.discovered:
                # Running, with targets still undecided: ask those again.
                session = native.session
                again = native.undecided & set(session.transports)
                found, undecided = await _discover(session, headers, again)
                native = Native(
                    session,
                    {**native.discovered, **found},
                    frozenset(undecided | (native.undecided - again)),
                    trio.current_time(),
                )
                self._natives[id(route)] = native
                return native
            session = await self._start(route, frozenset())
            dead = frozenset(t for t in route.target_names if t not in session.transports)
            discovered, undecided = await _discover(session, headers, set(session.transports))
            # A stdio target takes no credentials, and asking it again would
            # start a child process: its first answer stands.
            remote = frozenset(t.name for t in route.targets if t.stdio is None)
            again = (frozenset(undecided) | dead) & remote
            if not discovered:
                # No target speaks 2026-07-28: nothing goes this way, and the
                # probe's session (a child process, for stdio) ends now.
                session.close()
            elif older := frozenset(session.transports) - set(discovered) - again:
                # The older targets are reached on the shared session only:
                # the probe's session ends, and one without them starts.
                session.close()
                session = await self._start(route, older)
            native = Native(session, discovered, again, trio.current_time())
            self._natives[id(route)] = native
            return native

    async def _start(self, route: McpRoute, skip: frozenset[str]) -> RelaySession:
        session = RelaySession(
            sid=f"native-{id(route):x}",
            route=route,
            pool=self.pool,
            ttl=1800.0,
            protocol_version=versions.STATELESS_REVISION,
            is_shared=True,
            is_replica=True,  # no server-to-client stream, no session to end
            skip=skip,
        )
        try:
            return await self.manager.start(session)
        except UpstreamError as exc:
            raise UpstreamError(exc.reason, status=503, detail=exc.detail) from exc

    @staticmethod
    def _serves(native: Native, route: McpRoute) -> bool:
        """Whether ``native`` is the running answer for ``route`` (one that
        found no native target is kept, closed, so as not to probe again
        until its undecided targets are due another probe)."""
        return (
            native.session.route is route
            and (not native.discovered or not native.session.closed.is_set())
            and not native.is_stale()
        )


async def _discover(
    session: RelaySession, headers: UpstreamHeaders, targets: Collection[str]
) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """Ask ``targets`` ``server/discover``: those that list 2026-07-28, and
    those that gave no answer."""
    meta = {
        versions.META_PREFIX + "protocolVersion": versions.STATELESS_REVISION,
        versions.META_PREFIX + "clientCapabilities": {},
    }
    probe = {"jsonrpc": "2.0", "id": 0, "method": "server/discover", "params": {"_meta": meta}}
    found: dict[str, dict[str, Any]] = {}
    undecided = set(targets)

    async def one(target: str) -> None:
        with trio.move_on_after(DISCOVER_TIMEOUT):
            try:
                reply = await session.call(
                    target, probe, with_routing(headers, "server/discover", None)
                )
            except UpstreamError as exc:
                logger.info("target %s: server/discover failed: %s", target, exc.log_text)
                return
            result = reply.get("result")
            error = reply.get("error")
            if isinstance(result, dict):
                undecided.discard(target)
                if versions.STATELESS_REVISION in (result.get("supportedVersions") or ()):
                    found[target] = result
            elif isinstance(error, dict) and error.get("code") in NOT_NATIVE_CODES:
                undecided.discard(target)
            else:
                logger.info("target %s: no answer to server/discover: %s", target, error)

    async with trio.open_nursery() as nursery:
        for target in targets:
            nursery.start_soon(one, target)
    return found, undecided


def extensions_of(native: Native) -> dict[str, Any]:
    """The extensions the native targets offer (for ``server/discover``)."""
    out: dict[str, Any] = {}
    for result in native.discovered.values():
        caps = result.get("capabilities")
        extensions = caps.get("extensions") if isinstance(caps, dict) else None
        if isinstance(extensions, dict):
            out.update(extensions)
    return out


def _task_target(route: McpRoute, task_id: str) -> tuple[str, str]:
    """The target of a federated task id, and the target's own id.

    Raises:
        InvalidParams: the id names no target.
    """
    targets = route.target_names
    if len(targets) == 1:
        return targets[0], task_id
    split = names.split_name(task_id, targets)
    if split is None:
        raise InvalidParams("invalid params: unknown taskId", detail=f"taskId {task_id!r}")
    return split


def federate(route: McpRoute, target: str, message: Message) -> Message:
    """A target's task ids as the client knows them."""
    if len(route.target_names) == 1:
        return message
    for field in ("result", "params"):
        body = message.get(field)
        if isinstance(body, dict) and isinstance(body.get("taskId"), str):
            body = {**body, "taskId": names.prefix_name(target, body["taskId"])}
            return {**message, field: body}
    return message


def is_task_notification(message: Message) -> bool:
    """A task's status notification (``notifications/tasks``)."""
    method = message.get("method")
    return isinstance(method, str) and (
        method == "notifications/tasks" or method.startswith("notifications/tasks/")
    )


def listen_filter_for(route: McpRoute, target: str, extra: dict[str, Any]) -> dict[str, Any]:
    """The extension keys of a client's listen filter as ``target`` knows
    them: of ``taskIds``, that target's own ids only."""
    out = dict(extra)
    ids = out.pop(TASK_IDS, None)
    if isinstance(ids, list):
        mine = []
        for task_id in ids:
            try:
                owner, inner = _task_target(route, str(task_id))
            except InvalidParams:
                continue
            if owner == target:
                mine.append(inner)
        if mine:
            out[TASK_IDS] = mine
    return out


def honored_extensions(
    route: McpRoute, extra: dict[str, Any], acks: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """What the targets' acknowledgments honored of the client's extension
    keys, task ids federated."""
    out: dict[str, Any] = {}
    for target, ack in sorted(acks.items()):
        for key, value in ack.items():
            if key not in extra:
                continue
            if key == TASK_IDS and isinstance(value, list):
                federated = [
                    names.prefix_name(target, str(v)) if len(route.target_names) > 1 else v
                    for v in value
                ]
                out.setdefault(TASK_IDS, []).extend(federated)
            else:
                out.setdefault(key, value)
    return out


@attrs.define(eq=False)
class TaskIdOutbox(Outbox):
    inner: Outbox
    route: McpRoute
    target: str

    async def send(self, message: Message, *, final: bool) -> None:
        await self.inner.send(federate(self.route, self.target, message), final=final)

    async def ping(self) -> None:
        await self.inner.ping()


async def relay(
    natives: NativeSessions,
    flights: mrtr.Flights,
    ctx: RequestContext,
    route: McpRoute,
    message: Message,
    headers: UpstreamHeaders,
    outbox: Outbox,
    timeouts: Timeouts,
) -> bool:
    """Relay a 2026-07-28 request to its target as it is; False when the
    request is not of those or its target does not speak 2026-07-28."""
    if not is_native_method(message):
        return False
    method = str(message.get("method"))
    msg_id = message.get("id")
    params = params_of(message)
    try:
        native = await natives.get(route, headers)
        if method == "tasks/list":
            raise MethodNotFound("method 'tasks/list' is not in 2026-07-28")
        if method in TASK_METHODS:
            task_id = params.get("taskId")
            if not isinstance(task_id, str):
                raise InvalidParams("invalid params: taskId must be a string")
            named = header_value(ctx.req.headers, b"mcp-name")
            if named is not None and named.decode("latin-1") != task_id:
                raise ClientError("Mcp-Name header does not match the body", code=HEADER_MISMATCH)
            target, inner = _task_target(route, task_id)
            if target not in native.discovered:
                raise InvalidParams(
                    "invalid params: unknown taskId", detail=f"{target} is not native"
                )
            rewritten = {**message, "params": {**params, "taskId": inner}}
            await forward(
                route,
                native.session,
                target,
                rewritten,
                with_routing(headers, method, inner),
                TaskIdOutbox(outbox, route, target),
                timeouts,
            )
            return True
        try:
            target, rewritten = route_call(route, message)
        except InvalidParams:
            return False
        if target not in native.discovered:
            return False
        if method not in mrtr_core.INPUT_METHODS:  # a completion; another method, one target
            _, rewritten = judge_call(ctx, route, message)
            routed = with_routing(headers, method, None)
            await forward(route, native.session, target, rewritten, routed, outbox, timeouts)
            return True
        name = mrtr_core_name(rewritten)
        await mrtr.call(
            flights,
            ctx,
            route,
            native.session,
            message,
            with_routing(headers, method, name),
            TaskIdOutbox(outbox, route, target),
            timeouts,
            native=True,
        )
        return True
    except HTTPError as exc:
        note_failure(ctx, exc)
        await outbox.send(exc.rpc_error(msg_id), final=True)
        return True


def mrtr_core_name(message: Message) -> str | None:
    params = params_of(message)
    value = params.get("uri") if message.get("method") == "resources/read" else params.get("name")
    return value if isinstance(value, str) else None
