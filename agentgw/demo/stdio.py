"""The demo server on stdio: newline-delimited JSON-RPC on stdin and stdout.

How this works: one loop reads lines and hands each message to the core.
Quick requests are answered from the loop; a request that keeps running
(a tool that sleeps, reports progress or asks the client something) gets its
own task, so it does not hold up the others. Writes take a lock, one message
per line. A line over ``MAX_LINE`` bytes is refused with a JSON-RPC error and
skipped. The session ends when stdin closes (running calls are cancelled) or
when stdout breaks.
"""

from __future__ import annotations

import json
import logging
import os

import attrs
import trio

from agentgw.demo.runner import CallRunner
from agentgw.demo.server import Answer, DemoSession, Start
from agentgw.demo.wire import (
    INVALID_REQUEST,
    JSON,
    PARSE_ERROR,
    LineSplitter,
    dumps,
    error_message,
)

logger = logging.getLogger(__name__)

MAX_LINE = 1 << 20
RECEIVE_SIZE = 65536


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


async def serve_stdio(
    receive: trio.abc.ReceiveStream | None = None,
    send: trio.abc.SendStream | None = None,
    *,
    session: DemoSession | None = None,
) -> None:
    """Serve one MCP session until the input ends.

    Args:
        receive: where messages come from; file descriptor 0 by default.
        send: where messages go; file descriptor 1 by default.
        session: the protocol core to use (a fresh one by default).
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
            splitter = LineSplitter(MAX_LINE)
            while True:
                try:
                    data = await receive.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                lines = splitter.feed(bytes(data)) if data else splitter.finish()
                for line in lines:
                    await _on_line(line, core, runner, out)
                if not data:
                    break
            logger.debug("stdin closed; cancelling %d running calls", runner.running)
            nursery.cancel_scope.cancel()
    finally:
        for stream in owned:
            stream.close()


async def _on_line(line: bytes | None, core: DemoSession, runner: CallRunner, out: _Output) -> None:
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
    outcome = core.handle(message)
    if isinstance(outcome, Answer):
        await out.write(outcome.message)
    elif isinstance(outcome, Start):
        runner.start(outcome.call, outcome.effect, out)
    else:
        runner.apply(outcome)
