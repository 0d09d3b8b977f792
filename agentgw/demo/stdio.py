"""The demo server on stdio: newline-delimited JSON-RPC on stdin and stdout.

How this works: one loop reads lines and hands each message to the core.
Quick requests are answered from the loop; a request that keeps running
(a tool that sleeps, reports progress or asks the client something) gets its
own task, so it does not hold up the others. Writes take a lock, one message
per line. A line over ``MAX_LINE`` bytes is refused with a JSON-RPC error and
skipped. The session ends when stdin closes (running calls are cancelled) or
when stdout breaks.

Requests that carry the 2026-07-28 ``_meta`` envelope are answered without
the session (``handle_stateless``); ``notifications/cancelled`` stops such a
call, or a ``subscriptions/listen`` subscription, by its request id.
"""

from __future__ import annotations

import json
import logging
import os
import time

import attrs
import trio

from agentgw.demo.modern import Hub, StateSealer, is_stateless_request
from agentgw.demo.runner import CallRunner
from agentgw.demo.server import (
    Answer,
    Call,
    Cancel,
    DemoSession,
    Listen,
    Start,
    StartTask,
    handle_stateless,
)
from agentgw.demo.wire import (
    INVALID_REQUEST,
    JSON,
    PARSE_ERROR,
    LineSplitter,
    RequestId,
    dumps,
    error_message,
)

logger = logging.getLogger(__name__)

MAX_LINE = 1 << 20
RECEIVE_SIZE = 65536
MAX_QUEUED = 64


@attrs.define(eq=False)
class _Output:
    stream: trio.abc.SendStream
    on_broken: trio.CancelScope
    lock: trio.Lock = attrs.field(factory=trio.Lock)

    async def write(self, message: JSON) -> None:
        data = dumps(message) + b"\n"
        async with self.lock:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                logger.info("stdout closed; stopping")
                self.on_broken.cancel()

    # The Sink interface: every call writes to the same stream.
    async def send(self, message: JSON) -> None:
        await self.write(message)

    def hang_up(self) -> None:
        pass

    def end(self) -> None:
        pass


@attrs.define(eq=False)
class _Stateless:
    """The 2026-07-28 requests of this connection that are still running:
    calls and subscriptions, by request id, so a cancellation finds them."""

    hub: Hub
    out: _Output
    runner: CallRunner
    nursery: trio.Nursery
    running: dict[RequestId, Call | trio.CancelScope] = attrs.field(factory=dict)

    async def handle(self, message: JSON) -> None:
        outcome = handle_stateless(self.hub, message)
        if isinstance(outcome, StartTask):
            self.runner.start_task(outcome.call, outcome.record, outcome.effect)
            outcome = Answer(outcome.message)
        if isinstance(outcome, Answer):
            await self.out.write(outcome.message)
        elif isinstance(outcome, Start):
            call = outcome.call
            self.running[call.request_id] = call
            self.runner.start(call, outcome.effect, _CallOutput(self, call.request_id))
        elif isinstance(outcome, Listen):
            scope = trio.CancelScope()
            self.running[outcome.request_id] = scope
            self.nursery.start_soon(self._listen, outcome, scope)

    def cancel(self, request_id: object) -> bool:
        if not isinstance(request_id, str | int) or isinstance(request_id, bool):
            return False
        running = self.running.pop(request_id, None)
        if isinstance(running, Call):
            self.runner.apply(Cancel(running))
        elif running is not None:
            running.cancel()
        return running is not None

    async def _listen(self, listen: Listen, scope: trio.CancelScope) -> None:
        send, receive = trio.open_memory_channel[JSON](MAX_QUEUED)

        def deliver(message: JSON) -> None:
            try:
                send.send_nowait(message)
            except trio.WouldBlock:
                logger.warning("subscription %r is not reading; closing it", listen.request_id)
                send.close()
            except trio.ClosedResourceError:
                pass

        token = self.hub.listen(listen.request_id, listen.filter, deliver)
        try:
            with scope:
                await self.out.write(listen.acknowledgment)
                async for message in receive:
                    await self.out.write(message)
        finally:
            self.hub.unlisten(token)
            self.running.pop(listen.request_id, None)
            send.close()


@attrs.define(eq=False)
class _CallOutput:
    """A stateless call's ``Sink``: stdout, and forgetting the call at its end."""

    owner: _Stateless
    request_id: RequestId

    async def send(self, message: JSON) -> None:
        await self.owner.out.write(message)

    def hang_up(self) -> None:
        pass

    def end(self) -> None:
        if isinstance(self.owner.running.get(self.request_id), Call):
            del self.owner.running[self.request_id]


async def serve_stdio(
    receive: trio.abc.ReceiveStream | None = None,
    send: trio.abc.SendStream | None = None,
    *,
    session: DemoSession | None = None,
    hub: Hub | None = None,
) -> None:
    """Serve one MCP session until the input ends.

    Args:
        receive: where messages come from; file descriptor 0 by default.
        send: where messages go; file descriptor 1 by default.
        session: the protocol core to use (a fresh one by default).
        hub: the state of 2026-07-28 requests (a fresh one by default).
    """
    owned: list[trio.lowlevel.FdStream] = []
    if receive is None:
        receive = trio.lowlevel.FdStream(os.dup(0))
        owned.append(receive)
    if send is None:
        send = trio.lowlevel.FdStream(os.dup(1))
        owned.append(send)
    core = session if session is not None else DemoSession()
    try:
        async with trio.open_nursery() as nursery:
            out = _Output(send, nursery.cancel_scope)
            runner = CallRunner(nursery, out.write)
            stateless = _Stateless(hub or Hub(StateSealer(time.time)), out, runner, nursery)
            splitter = LineSplitter(MAX_LINE)
            while True:
                try:
                    data = await receive.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                lines = splitter.feed(bytes(data)) if data else splitter.finish()
                for line in lines:
                    await _on_line(line, core, runner, out, stateless)
                if not data:
                    break
            logger.debug("stdin closed; cancelling %d running calls", runner.running)
            nursery.cancel_scope.cancel()
    finally:
        for stream in owned:
            stream.close()


async def _on_line(
    line: bytes | None, core: DemoSession, runner: CallRunner, out: _Output, stateless: _Stateless
) -> None:
    if line is None:
        await out.write(error_message(None, INVALID_REQUEST, f"message over {MAX_LINE} bytes"))
        return
    if not line.strip():
        return
    try:
        message = json.loads(line)
    except ValueError:
        await out.write(error_message(None, PARSE_ERROR, "parse error: not JSON"))
        return
    if isinstance(message, dict) and "id" in message and is_stateless_request(message):
        await stateless.handle(message)
        return
    if isinstance(message, dict) and message.get("method") == "notifications/cancelled":
        params = message.get("params")
        if isinstance(params, dict) and stateless.cancel(params.get("requestId")):
            return
    outcome = core.handle(message)
    if isinstance(outcome, Answer):
        await out.write(outcome.message)
    elif isinstance(outcome, Start):
        runner.start(outcome.call, outcome.effect, out)
    else:
        runner.apply(outcome)
