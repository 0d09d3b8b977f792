"""MRTR (2026-07-28 ``input_required`` rounds) for the session-less requests
that may need input: ``tools/call``, ``prompts/get``, ``resources/read``.

How this works: such a request runs as a ``Flight``, a task of the session
manager's nursery (so it outlives the HTTP exchange that started it), which
sends the call to its target over the route's shared upstream session and
reads what comes back. The client's exchange follows the flight
(``follow``): notifications go out as they come, the response last.

- A 2025-11-25 target asks the client something in the middle of the call
  (``sampling/createMessage``, ``elicitation/create``, ``roots/list``): the
  flight gathers the requests the target sends together, answers at once
  those the request already brought (``inputResponses``, under the key
  ``mcp.mrtr.input_key`` gives) or that the client cannot answer (it did not
  declare the capability: an error, so the target goes on without), and
  hands the rest to the client as an ``input_required`` result whose sealed
  ``requestState`` names this flight and its round. The flight then waits,
  suspended, for the retry (at most the call's first-reply timeout; what
  expires is logged and the upstream call cancelled). The retry's
  ``inputResponses`` answer the target's requests and the flight goes on,
  for as many rounds as the target asks.
- A target that answers ``input_required`` itself (it speaks 2026-07-28):
  its ``requestState`` is sealed in the gateway's, with the target's name,
  so the retry goes to that target with that state, whatever the client
  says.

A suspended flight lives in this process: with ``--workers`` its state names
its worker, and a retry that lands on another worker is refused (-32602).
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from typing import Any

import attrs
import trio

from agentgw.errors import (
    HeldByWorker,
    HTTPError,
    InvalidParams,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from agentgw.mcp import mrtr, stateless, versions
from agentgw.mcp.federation import McpRoute, call_name, outbound, params_of
from agentgw.relay.calls import Message, is_final
from agentgw.relay.context import RequestContext, UpstreamHeaders
from agentgw.relay.dispatch import Timeouts, judge_call, note_failure
from agentgw.relay.manager import SessionManager
from agentgw.relay.outbox import Outbox
from agentgw.relay.session import RelaySession

logger = logging.getLogger(__name__)

MAX_FLIGHTS = 1000
EVENTS = 64
# Requests a target sends together (one right after the other) make one round.
GATHER_WINDOW = 0.05


@attrs.frozen
class Note:
    message: Message


@attrs.frozen
class NeedInput:
    requests: dict[str, dict[str, Any]]


@attrs.frozen
class Finished:
    message: Message


@attrs.frozen
class Failed:
    error: HTTPError


Event = Note | NeedInput | Finished | Failed


def client_capabilities(message: Message) -> dict[str, Any]:
    meta = params_of(message).get("_meta")
    caps = meta.get(versions.META_PREFIX + "clientCapabilities") if isinstance(meta, dict) else None
    return caps if isinstance(caps, dict) else {}


@attrs.define(eq=False)
class Flight:
    """One call that may take several rounds of client input."""

    fid: str
    target: str
    method: str
    name: str
    session: RelaySession
    headers: UpstreamHeaders
    capabilities: dict[str, Any]
    prefilled: dict[str, dict[str, Any]]
    wait_for_client: float
    round: int = 0
    is_suspended: bool = False
    # key -> the target's request (with its gateway id), not yet answered
    asked: dict[str, Message] = attrs.field(factory=dict)
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    _events: tuple[trio.MemorySendChannel[Event], trio.MemoryReceiveChannel[Event]] = attrs.field(
        factory=lambda: trio.open_memory_channel[Event](EVENTS)
    )
    _inbox: tuple[
        trio.MemorySendChannel[dict[str, Any]], trio.MemoryReceiveChannel[dict[str, Any]]
    ] = attrs.field(factory=lambda: trio.open_memory_channel[dict[str, Any]](1))

    def __repr__(self) -> str:
        return f"<Flight {self.fid[:8]} {self.method} {self.name!r} -> {self.target} r{self.round}>"

    async def run(self, message: Message, flights: Flights) -> None:
        try:
            with self.scope:
                await self._run(message)
        except HTTPError as exc:
            self._emit_nowait(Failed(exc))
        finally:
            flights.forget(self)
            self._events[0].close()

    def _emit_nowait(self, event: Event) -> None:
        try:
            self._events[0].send_nowait(event)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _emit(self, event: Event) -> None:
        try:
            await self._events[0].send(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.scope.cancel()

    async def _run(self, message: Message) -> None:
        async with self.session.request(
            self.target, message, self.headers, takes_server_requests=True
        ) as call:
            reply = call.next_nowait()
            while True:
                if reply is None:
                    reply = await call.next()
                if is_final(reply):
                    await self._emit(Finished(reply))
                    return
                if "id" not in reply:
                    await self._emit(Note(reply))
                    reply = None
                    continue
                asks, reply = [reply], None
                with trio.move_on_after(GATHER_WINDOW):
                    while True:
                        more = await call.next()
                        if is_final(more) or "id" not in more:
                            reply = more
                            break
                        asks.append(more)
                await self._round(asks)

    async def _answer(self, ask: Message, body: dict[str, Any]) -> None:
        await self.session.answer({"jsonrpc": "2.0", "id": ask["id"], **body}, self.headers)

    async def _round(self, asks: list[Message]) -> None:
        refused: HTTPError | None = None
        given = False  # the client's retry already answered one of them
        for ask in asks:
            method = str(ask.get("method"))
            origin = self.session.server_request_origin(ask["id"])
            key = mrtr.input_key(origin, ask.get("params"), self.asked)
            if method == "ping":
                await self._answer(ask, {"result": {}})
            elif not mrtr.client_declares(self.capabilities, method):
                # Refused to the target (-32021), which may go on without it.
                refusal = stateless.missing_capability(mrtr.INPUT_CAPABILITY.get(method, method))
                await self._answer(ask, {"error": refusal.rpc_error(None)["error"]})
                if method != "roots/list":  # a target asks for roots unprompted, too
                    refused = refusal
            elif key in self.prefilled:
                given = True
                await self._answer(ask, {"result": self.prefilled.pop(key)})
            else:
                self.asked[key] = ask
        if refused is not None and not self.asked and not given:
            # Nothing in this round the client can give: the call needs what
            # it did not declare, and ends for it too (-32021).
            raise refused
        while self.asked:
            requests = {
                key: mrtr.request_for_client(ask["method"], ask.get("params"))
                for key, ask in self.asked.items()
            }
            await self._emit(NeedInput(requests))
            self.is_suspended = True
            responses = None
            with trio.move_on_after(self.wait_for_client):
                responses = await self._inbox[1].receive()
            self.is_suspended = False
            if responses is None:
                logger.info(
                    "%r: no retry came in %gs; the upstream call is cancelled",
                    self,
                    self.wait_for_client,
                )
                self.scope.cancel()
                await trio.lowlevel.checkpoint()
                return
            for key in [k for k in self.asked if k in responses]:
                await self._answer(self.asked.pop(key), {"result": responses[key]})

    def resume(self, round_: int, responses: dict[str, dict[str, Any]]) -> None:
        """Hand the flight the retry of round ``round_``.

        Raises:
            InvalidParams: not that round, or not waiting (a state used twice).
        """
        if round_ != self.round or not self.is_suspended:
            raise InvalidParams("invalid requestState", detail=f"{self!r}: not round {round_}")
        self.round += 1
        try:
            self._inbox[0].send_nowait(responses)
        except trio.WouldBlock:
            raise InvalidParams("invalid requestState", detail=f"{self!r}: busy") from None

    async def next_event(self) -> Event | None:
        try:
            return await self._events[1].receive()
        except trio.EndOfChannel:
            return None


@attrs.define(eq=False)
class Flights:
    """The flights of this process, and the sealer of their states."""

    sealer: mrtr.StateSealer
    manager: SessionManager
    worker: int | None = None
    limit: int = MAX_FLIGHTS
    _flights: dict[str, Flight] = attrs.field(factory=dict)

    def __repr__(self) -> str:
        return f"<Flights {len(self._flights)}>"

    def forget(self, flight: Flight) -> None:
        self._flights.pop(flight.fid, None)

    def start(self, flight: Flight, message: Message) -> None:
        if len(self._flights) >= self.limit:
            raise UpstreamUnavailable("upstream unavailable", detail="too many MRTR calls")
        self._flights[flight.fid] = flight
        self.manager.start_soon(flight.run, message, self)

    def find(self, state: mrtr.GatewayState) -> tuple[Flight, int]:
        fid, _, round_text = (state.flight or "").partition(".")
        flight = self._flights.get(fid)
        if flight is None or flight.target != state.target or not round_text.isdigit():
            raise InvalidParams("invalid requestState", detail="no such suspended call")
        return flight, int(round_text)

    def seal(self, flight: Flight) -> str:
        return self.sealer.seal(
            mrtr.GatewayState(
                target=flight.target,
                method=flight.method,
                name=flight.name,
                expires=mrtr.expiry(flight.wait_for_client),
                flight=f"{flight.fid}.{flight.round}",
                worker=self.worker,
            )
        )

    def seal_upstream(self, flight: Flight, upstream_state: str) -> str:
        return self.sealer.seal(
            mrtr.GatewayState(
                target=flight.target,
                method=flight.method,
                name=flight.name,
                expires=mrtr.expiry(flight.wait_for_client),
                upstream_state=upstream_state,
                worker=self.worker,
            )
        )


async def call(
    flights: Flights,
    ctx: RequestContext,
    route: McpRoute,
    session: RelaySession,
    message: Message,
    headers: UpstreamHeaders,
    outbox: Outbox,
    timeouts: Timeouts,
    *,
    native: bool = False,
) -> None:
    """A 2026-07-28 request that may need input (``message`` still has its
    ``_meta`` envelope); its answers go to ``outbox``. ``native``: the
    target speaks 2026-07-28 and gets the request as it is."""
    msg_id = message.get("id")
    method = str(message.get("method"))
    params = params_of(message)
    wait = timeouts.first_reply if timeouts.first_reply != math.inf else 300.0
    try:
        retry = mrtr.parse_retry(params)
        name = call_name(message) or ""
        if native:
            bare, fresh = message, message
        else:
            bare = {**message, "params": versions.strip_protocol_meta(params)}
            fresh = _without_retry(bare)
        if retry.state is None:
            target, rewritten = judge_call(ctx, route, fresh)
            flight = _flight(session, target, method, name, headers, message, wait)
            flight.prefilled = dict(retry.responses)
            flights.start(flight, rewritten)
        else:
            state = flights.sealer.open(retry.state)
            state.check_call(method, name, time.time())
            if state.upstream_state is not None:
                target, rewritten = judge_call(ctx, route, bare)
                if target != state.target:
                    raise InvalidParams("invalid requestState", detail="another target")
                rewritten = {
                    **rewritten,
                    "params": {**params_of(rewritten), "requestState": state.upstream_state},
                }
                flight = _flight(session, target, method, name, headers, message, wait)
                flights.start(flight, rewritten)
            else:
                if state.worker != flights.worker:
                    # Another worker's call: relayed there (app.py), unless a
                    # sibling sent it here already or there are no workers.
                    if state.worker is None or flights.worker is None or ctx.req.is_relayed:
                        raise InvalidParams(
                            "invalid requestState", detail=f"held by worker {state.worker}"
                        )
                    raise HeldByWorker(state.worker, msg_id)
                judge_call(ctx, route, fresh)  # policies, again
                flight, round_ = flights.find(state)
                flight.resume(round_, retry.responses)
        await follow(flights, flight, route, outbox, msg_id, timeouts)
    except HTTPError as exc:
        note_failure(ctx, exc)
        await outbox.send(exc.rpc_error(msg_id), final=True)


def _without_retry(message: Message) -> Message:
    return {**message, "params": mrtr.without_retry(params_of(message))}


def _flight(
    session: RelaySession,
    target: str,
    method: str,
    name: str,
    headers: UpstreamHeaders,
    message: Message,
    wait: float,
) -> Flight:
    return Flight(
        fid=secrets.token_urlsafe(12),
        target=target,
        method=method,
        name=name,
        session=session,
        headers=headers,
        capabilities=client_capabilities(message),
        prefilled={},
        wait_for_client=wait,
    )


async def follow(
    flights: Flights,
    flight: Flight,
    route: McpRoute,
    outbox: Outbox,
    msg_id: Any,
    timeouts: Timeouts,
) -> None:
    """Relay the flight's events to this exchange until its response or
    its next ``input_required`` round. Leaving early (the client went away)
    ends the flight.

    Raises:
        UpstreamError: the flight failed or said nothing in time.
    """
    handed_off = False
    try:
        while True:
            event = None
            waited = 0.0
            while event is None:
                with trio.move_on_after(timeouts.keepalive):
                    event = await flight.next_event()
                    if event is None:
                        raise UpstreamUnavailable(
                            f"target {flight.target}: upstream unavailable",
                            detail="the call ended",
                        )
                if event is None:
                    waited += timeouts.keepalive
                    if waited >= timeouts.first_reply:
                        raise UpstreamTimeout(
                            f"target {flight.target}: upstream timeout",
                            detail=f"nothing in {timeouts.first_reply:g}s",
                        )
                    await outbox.ping()
            if isinstance(event, Note):
                await outbox.send(
                    outbound(route, flight.target, event.message, flight.method), final=False
                )
            elif isinstance(event, NeedInput):
                result = mrtr.input_required(event.requests, flights.seal(flight))
                handed_off = True
                await outbox.send({"jsonrpc": "2.0", "id": msg_id, "result": result}, final=True)
                return
            elif isinstance(event, Finished):
                handed_off = True
                reply = {**event.message, "id": msg_id}
                answer = reply.get("result")
                if mrtr.is_input_required(answer) and isinstance(answer.get("requestState"), str):
                    state = flights.seal_upstream(flight, answer["requestState"])
                    reply = {**reply, "result": {**answer, "requestState": state}}
                await outbox.send(outbound(route, flight.target, reply, flight.method), final=True)
                return
            else:
                handed_off = True
                raise event.error
    finally:
        if not handed_off:
            flight.scope.cancel()
