"""Runs the core's calls as Trio tasks; shared by the stdio and HTTP transports.

How this works: ``CallRunner.start`` spawns one task per running call in the
transport's nursery. The task performs each effect (send, sleep, ask and
wait for the reply, hang up) and advances the call. Replies and
cancellations from the client reach the task through ``apply``: a reply
wakes the task waiting on it, a cancellation cancels the task's scope.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, assert_never

import attrs
import trio

from agentgw.demo.server import (
    Ask,
    Call,
    Cancel,
    Done,
    Effect,
    Emit,
    Gather,
    HangUp,
    Outcome,
    Resume,
    Sleep,
    Step,
    Wait,
)
from agentgw.demo.tasks import TaskRecord
from agentgw.demo.wire import JSON

logger = logging.getLogger(__name__)


class Sink(Protocol):
    """Where one call's messages go."""

    async def send(self, message: JSON) -> None:
        """Send a message about the call; the last one is its response."""

    def hang_up(self) -> None:
        """End the call's response stream; later messages wait for the client
        to resume it (HTTP only)."""

    def end(self) -> None:
        """The call is over: finished, cancelled or abandoned."""


@attrs.define(eq=False)
class TaskSink:
    """A task's ``Sink``: its response goes to its record, not to a stream
    (its notifications are dropped). ``tasks/update`` wakes a task that
    gathers input; ``tasks/cancel`` cancels its call."""

    record: TaskRecord
    _changed: trio.Event = attrs.field(factory=trio.Event)

    def __attrs_post_init__(self) -> None:
        self.record.on_change = self._wake

    async def gather(self, wanted: Gather) -> dict[str, JSON]:
        while not self.record.wait_for(wanted.requests):
            await self._changed.wait()
        return self.record.replies(wanted.requests)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def send(self, message: JSON) -> None:
        if "id" in message and "method" not in message:
            self.record.finish(message)

    def hang_up(self) -> None:
        pass

    def end(self) -> None:
        self.record.abandon()


_TIMED_OUT = object()


@attrs.define(eq=False)
class _Waiter:
    event: trio.Event = attrs.field(factory=trio.Event)
    replies: list[JSON] = attrs.field(factory=list)

    def set(self, reply: JSON) -> None:
        self.replies.append(reply)
        self.event.set()

    def take(self) -> JSON | None:
        if not self.replies:
            return None
        reply = self.replies.pop(0)
        if not self.replies:
            self.event = trio.Event()
        return reply


@attrs.define(eq=False)
class CallRunner:
    """Drives calls of one session. ``broadcast`` sends messages that are not
    about any call (``Emit(is_related=False)``)."""

    nursery: trio.Nursery
    broadcast: Callable[[JSON], Awaitable[None]]
    _scopes: dict[Call, trio.CancelScope] = attrs.field(factory=dict)
    _waiters: dict[Call, _Waiter] = attrs.field(factory=dict)

    def __repr__(self) -> str:
        return f"<CallRunner running={len(self._scopes)}>"

    @property
    def running(self) -> int:
        return len(self._scopes)

    def start(self, call: Call, effect: Effect, sink: Sink) -> None:
        # The scope exists before the task runs, so a cancellation that
        # arrives first still stops it.
        scope = self._scopes[call] = trio.CancelScope()
        self.nursery.start_soon(self._drive, call, effect, sink, scope)

    def start_task(self, call: Call, record: TaskRecord, effect: Effect) -> None:
        """Drive a call that became a task; ``tasks/cancel`` stops it."""
        if isinstance(effect, Done):
            return  # it finished at once: its record has the outcome
        record.on_cancel = lambda: self.apply(Cancel(call))
        self.start(call, effect, TaskSink(record))

    def apply(self, outcome: Outcome) -> None:
        """Deliver a ``Resume`` or ``Cancel`` from the core; ignore others."""
        if isinstance(outcome, Resume):
            waiter = self._waiters.get(outcome.call)
            if waiter is not None:
                waiter.set(outcome.reply)
        elif isinstance(outcome, Cancel):
            scope = self._scopes.get(outcome.call)
            if scope is not None:
                scope.cancel()

    def cancel_all(self) -> None:
        for scope in self._scopes.values():
            scope.cancel()

    async def _drive(self, call: Call, effect: Effect, sink: Sink, scope: trio.CancelScope) -> None:
        try:
            with scope:
                while not isinstance(effect, Done):
                    value = await self._perform(call, effect, sink)
                    if call.is_cancelled:
                        return  # the client cancelled it before this task woke up
                    effect = call.time_out() if value is _TIMED_OUT else call.advance(value)
                await sink.send(effect.message)
        finally:
            self._scopes.pop(call, None)
            self._waiters.pop(call, None)
            call.close()
            sink.end()

    async def _perform(self, call: Call, effect: Step, sink: Sink) -> object:
        """Perform one effect; return what to advance the call with."""
        if isinstance(effect, Emit):
            if effect.is_related:
                await sink.send(effect.message)
            else:
                await self.broadcast(effect.message)
        elif isinstance(effect, Sleep):
            await trio.sleep(effect.seconds)
        elif isinstance(effect, HangUp):
            sink.hang_up()
        elif isinstance(effect, Gather):
            assert isinstance(sink, TaskSink), "only a task gathers its input"
            return await sink.gather(effect)
        elif isinstance(effect, Ask | Wait):
            # One waiter for the whole call: replies to requests sent together
            # may come before the call waits for them.
            waiter = self._waiters.setdefault(call, _Waiter())
            if isinstance(effect, Ask):
                await sink.send(effect.message)
                for message in effect.more:
                    await sink.send(message)
            with trio.move_on_after(effect.timeout):
                await waiter.event.wait()
            reply = waiter.take()
            if reply is None:
                logger.info("%s %r: the client did not answer", call.method, call.request_id)
                return _TIMED_OUT
            return reply
        else:
            assert_never(effect)
        return None
